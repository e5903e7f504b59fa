#pragma once
// The authentication hand-over shared by every protocol: maps a login to an [[account]], checks
// the local password (argon2id, off the I/O thread, cached), and obtains the account's access
// token from the token engine (single flight per grant). Answers with a protocol-neutral
// auth_outcome; the flows turn it into their own replies. Logs every decision, never a secret.
// Password guessing (issue 8): a login_guard delays and locks out per (login, client address) and
// per client address; a locked-out login is answered like a wrong password (bad_credentials,
// after the same argon2 work) and every failure and lockout gets an "audit" log line.
#include "auth/credential_checker.hpp"
#include "auth/login_guard.hpp"
#include "auth/token_engine.hpp"
#include "config/config.hpp"
#include "protocol/common/action.hpp"

#include <map>
#include <memory>

namespace xo::proxy {

class login_service {
 public:
  // `cfg` must outlive the service.
  login_service(asio::any_io_executor ex, const config::config& cfg);
  ~login_service();

  // client_ip: the client's address as text (the lockout key and the audit log).
  awaitable<protocol::auth_outcome> authorize(std::string sid, std::string client_ip,
                                              protocol::authorize req);
  // The upstream refused a token this service handed out for `user`: drop it from the cache.
  void token_rejected(const std::string& sid, const std::string& user,
                      const protocol::token_rejected& why);

  auth::token_engine& engine() noexcept { return engine_; }

  // Adopts a reloaded configuration (SIGHUP; server.cpp): the token engine's reconfigure(), then
  // the new accounts and lockout settings (failure counts are kept). Returns "" when adopted,
  // else why not, and then nothing changed. `next` must outlive the service.
  std::string reconfigure(const config::config& next);

 private:
  // The password was right (or the identity platform is to check it: idp_checks): the token.
  awaitable<protocol::auth_outcome> issue(std::string sid, std::string client_ip,
                                          std::string guard_key, const config::account& acct,
                                          protocol::authorize req, bool idp_checks);
  // A failed login: an audit line; counted by the guard unless it was refused by the guard.
  void failed(const std::string& sid, const std::string& user, const std::string& guard_key,
              const std::string& client_ip, std::string_view reason, bool count = true);
  // Refused by the guard (before or after the password check): answered like a wrong password.
  protocol::auth_outcome locked_out(const std::string& sid, const std::string& user,
                                    const std::string& client_ip,
                                    const auth::login_guard::decision& d);

  const config::config* cfg_;  // the current configuration
  auth::login_guard guard_;
  auth::credential_checker checker_;
  auth::token_engine engine_;
};

}  // namespace xo::proxy
