#pragma once
// The token engine: every account's token lifecycle in one place.
//
// - App-only accounts (client_credentials) share one token per provider.
// - Delegated accounts (authorization_code, device_code, password) each hold a grant: a refresh
//   token plus the current access token, kept in memory and in the encrypted token store
//   (auth/token_store.hpp). Refreshes go through the single-flight token cache, detached from
//   any client's cancellation; every rotated refresh token is stored before the new access token
//   is handed out, so a crash can never leave only a redeemed refresh token on disk.
// - A sweeper refreshes ahead of expiry (with jitter) for accounts in use, and refreshes idle
//   grants every token_keepalive so they never reach the 90-day inactivity limit.
// - Identity-platform failures are classified: transient keeps everything and retries later;
//   reauth marks the account "needs authorization" (old grant kept for inspection) and answers
//   its sessions at once; config faults are reported with the fix.
//
// Keys: with [proxy] token_key_file every account's entry opens at start-up. Without it an
// entry is encrypted with a key derived from the account's local password: it opens at the
// account's first login after a start (until then the account is "waiting for its password"),
// and tokens obtained by an authorization are kept in memory and stored at that first login.
//
// Single-threaded: every call on the io_context thread that runs `ex`.
#include "auth/token.hpp"
#include "config/config.hpp"
#include "net/asio.hpp"

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace xo::auth {

using wall_clock = std::chrono::system_clock;

// What the admin page, the authorize CLI and /readyz show about one account. Never a token.
struct account_status {
  std::string login;
  std::string provider;
  config::flow_kind flow = config::flow_kind::client_credentials;
  // "app_only" (client_credentials: no grant to keep), "not_authorized" (no grant yet),
  // "authorizing" (a sign-in is pending), "authorized", "needs_authorization" (the grant was
  // refused: revoked, expired, consent or MFA — an administrator must authorize again),
  // "locked" (stored entry present but its key is not known yet: opens at the next login),
  // "store_error" (the stored entry is corrupt or unreadable: see last_error; never replaced
  // silently).
  std::string state;
  std::optional<wall_clock::time_point> access_expires;  // current access token, if any
  std::optional<wall_clock::time_point> refreshed;       // last successful token request
  std::optional<wall_clock::time_point> authorized;      // when the grant was obtained
  std::string last_error;  // safe summary (AADSTS code, first line), empty when healthy
  bool stored = false;     // the store holds the current grant (false: memory only)
  // A pending device-code sign-in (state "authorizing", flow device_code):
  std::string user_code;
  std::string verification_uri;
  std::optional<wall_clock::time_point> pending_expires;
  std::uint64_t token_requests = 0;  // requests made for this account since start
};

struct provider_status {
  std::string name;
  std::string tenant;
  std::string client_id;
  std::string client_credential;  // client_auth::describe()
  std::string redirect_uri;       // what to register in Azure (Web platform)
};

// The start of an interactive authorization.
struct authorization_start {
  bool ok = false;
  std::string error;  // why it could not start (unknown account, wrong flow, IdP error ...)
  // authorization_code: the URL to open in a browser.
  std::string authorize_url;
  // device_code: where to go and what to type.
  std::string verification_uri;
  std::string user_code;
  std::string message;
  std::chrono::seconds expires_in{0};
};

// The outcome of the redirect to /sso/oauth_callback.
struct callback_outcome {
  bool ok = false;
  unsigned http_status = 200;  // 200 ok, 400 bad/unknown state, 502 the IdP refused the code
  std::string account;         // empty when the state was unknown
  std::string message;         // for the person in the browser; safe to show
};

class token_engine {
 public:
  struct options {
    // How often the sweeper looks; 0 = a quarter of [proxy] refresh_ahead, between 5 and 30 s.
    std::chrono::seconds sweep_interval{0};
  };

  // `cfg` must outlive the engine. Throws std::runtime_error with a clear message when a
  // provider's certificate or the token key file cannot be used.
  token_engine(asio::any_io_executor ex, const config::config& cfg, options opt);
  token_engine(asio::any_io_executor ex, const config::config& cfg);
  ~token_engine();

  // Loads what the store holds (key-file accounts open now; password-keyed ones stay "locked")
  // and starts the sweeper. Call once, on the io_context thread.
  void start();
  // Stops the sweeper and pending device-code polls (shutdown).
  void stop();

  // Adopts a reloaded configuration (SIGHUP). Accounts that still exist with the same flow and
  // the same app (client id, tenant, authority) keep their tokens, grants, keys and pending
  // sign-ins; the others drop theirs (sessions already relaying are not affected). `cfg` must
  // outlive the engine (the server keeps every configuration it loaded). Returns "" when
  // adopted, else why not, and then nothing changed: a different state_dir or token_key_file
  // needs a restart, and a provider certificate must be readable.
  std::string reconfigure(const config::config& cfg);

  // The redirect URI: public_base_url (or http://localhost:<port>) + "/sso/oauth_callback".
  // Call after the admin listener is bound, with its actual port.
  void set_admin_port(std::uint16_t port);
  std::string redirect_uri() const;

  // An access token for a session that logged in as `login` on account `a`. For flow "password"
  // `password` is the user's own password (sent to the IdP if needed; a token obtained with the
  // same password is reused without a request); for the other flows the caller has already
  // checked the local password and passes it so a password-keyed store entry can be opened.
  awaitable<token_result> token_for(const config::account& a, std::string login, secret password);

  // Opens (or prepares) the password-keyed store entry of an interactive account with its
  // local password, already verified by the caller, so an authorization completed afterwards is
  // stored encrypted (the authorize CLI with the proxy stopped and no token_key_file).
  awaitable<void> open_store(const config::account& a, secret password);

  // The upstream refused a token handed out for (a, login): drop the access token so the next
  // login refreshes.
  void token_rejected(const config::account& a, const std::string& login);

  // Interactive authorization of an exact account login (flow authorization_code or
  // device_code; `device` forces the device-code flow for either).
  awaitable<authorization_start> begin_authorization(std::string login, bool device);
  // The browser came back to /sso/oauth_callback with these query parameters (code, state,
  // error, error_description ...).
  awaitable<callback_outcome> complete_authorization(std::map<std::string, std::string> query);

  std::vector<account_status> status() const;
  std::optional<account_status> status_of(const std::string& login) const;
  std::vector<provider_status> providers() const;

  // Called whenever an account's state changes (authorized, needs_authorization ...).
  void on_change(std::function<void(const account_status&)> fn);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace xo::auth
