#pragma once
// The authentication hand-over shared by every protocol: maps a login to an [[account]], checks
// the local password (argon2id, off the I/O thread, cached), and obtains the account's access
// token through the token cache (single flight per provider). Answers with a protocol-neutral
// auth_outcome; the flows turn it into their own replies. Logs every decision, never a secret.
#include "auth/client_credentials.hpp"
#include "auth/credential_checker.hpp"
#include "auth/https_client.hpp"
#include "auth/token_cache.hpp"
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

  auth::token_cache& tokens() noexcept { return tokens_; }

 private:
  struct provider_state {
    std::unique_ptr<auth::https_client> http;
    std::unique_ptr<auth::token_source> source;
  };
  static std::string token_key(const config::account& a);

  const config::config& cfg_;
  auth::credential_checker checker_;
  auth::token_cache tokens_;
  std::map<std::string, provider_state> providers_;
};

}  // namespace xo::proxy
