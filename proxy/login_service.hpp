#pragma once
// The authentication hand-over shared by every protocol: maps a login to an [[account]], checks
// the local password (argon2id, off the I/O thread, cached), and obtains the account's access
// token from the token engine (single flight per grant). Answers with a protocol-neutral
// auth_outcome; the flows turn it into their own replies. Logs every decision, never a secret.
#include "auth/credential_checker.hpp"
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

  awaitable<protocol::auth_outcome> authorize(std::string sid, protocol::authorize req);
  // The upstream refused a token this service handed out for `user`: drop it from the cache.
  void token_rejected(const std::string& sid, const std::string& user,
                      const protocol::token_rejected& why);

  auth::token_engine& engine() noexcept { return engine_; }

 private:
  const config::config& cfg_;
  auth::credential_checker checker_;
  auth::token_engine engine_;
};

}  // namespace xo::proxy
