#pragma once
// The admin HTTP listener (Boost.Beast, HTTP/1.1, loopback by default):
//   GET  /                      status page: providers with their redirect URIs, accounts with
//                               state and token expiry (never a token), an "Authorize" button per
//                               interactive account. Server-rendered HTML, no JavaScript.
//   POST /authorize             form (account, kind=code|device, csrf): starts a sign-in; code →
//                               303 to the identity platform, device → a page with the code.
//   GET  /sso/oauth_callback    the OAuth redirect (code, state | error, error_description).
//   GET  /healthz               "ok": the process is up.
//   GET  /readyz                200 when listeners are bound and the config is loaded, with a
//                               JSON summary of account states; 503 otherwise.
//   POST /api/authorize         JSON {"account": ..., "device": bool} → authorization_start as
//                               JSON. Needs the admin token (X-Admin-Token).
//   GET  /api/accounts[/LOGIN]  account_status as JSON.
// State-changing requests (POST) need the per-process admin token (X-Admin-Token header, or for
// the page's forms a CSRF field derived from it) — and forms must also come from loopback or
// carry the token. The admin token and the bound URL are written to <state_dir>/admin.json
// (mode 0600) for the authorize CLI. Query strings are never logged (they carry codes).
#include "auth/token_engine.hpp"
#include "config/config.hpp"
#include "net/asio.hpp"

#include <functional>
#include <memory>
#include <string>

namespace xo::proxy {

class admin_server {
 public:
  // ready(): whether the proxy's mail listeners are bound (for /readyz); may be empty (the
  // authorize CLI's own callback server), then /readyz answers 503 "not a proxy".
  admin_server(asio::any_io_executor ex, const config::config& cfg, auth::token_engine& engine,
               std::function<bool()> ready);
  ~admin_server();
  admin_server(const admin_server&) = delete;
  admin_server& operator=(const admin_server&) = delete;

  // Binds cfg.proxy.admin_address and returns the bound port (port 0 picks one). Throws
  // std::runtime_error("admin listener 127.0.0.1:8025: Address already in use") on failure.
  std::uint16_t bind();
  // Starts accepting; writes <state_dir>/admin.json {"url": "http://127.0.0.1:PORT",
  // "pid": N, "token": "..."}; logs "admin listening on http://IP:PORT".
  void start();
  // Stops accepting, closes open connections, removes admin.json.
  void stop();

  std::string url() const;          // "http://127.0.0.1:PORT"
  const std::string& token() const;  // the per-process admin token

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace xo::proxy
