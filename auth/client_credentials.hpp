#pragma once
// OAuth2 client credentials grant (app-only access). POST {authority}/{tenant}/oauth2/v2.0/token
// grant_type=client_credentials, client_id, client_secret or client_assertion, scope (default
// "https://outlook.office365.com/.default", or the provider's `scopes` joined by spaces).
#include "auth/client_auth.hpp"
#include "auth/https_client.hpp"
#include "auth/token_source.hpp"
#include "config/config.hpp"

namespace xo::auth {

inline constexpr std::string_view default_app_scope = "https://outlook.office365.com/.default";

class client_credentials final : public token_source {
 public:
  // `p`, `http` and `client` must outlive this object.
  client_credentials(const config::provider& p, https_client& http, const client_auth& client);
  awaitable<token_result> acquire() override;
  std::string_view grant() const override { return "client_credentials"; }

 private:
  const config::provider& provider_;
  https_client& http_;
  const client_auth& client_;
};

}  // namespace xo::auth
