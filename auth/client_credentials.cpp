// Client credentials grant (RFC 6749 §4.4; Microsoft identity platform v2.0, app-only access).
#include "auth/client_credentials.hpp"

#include "auth/token_response.hpp"

namespace xo::auth {

namespace {

std::string scope_of(const config::provider& p) {
  if (p.scopes.empty()) return std::string{default_app_scope};
  std::string s;
  for (const auto& one : p.scopes) {
    if (!s.empty()) s += ' ';
    s += one;
  }
  return s;
}

}  // namespace

client_credentials::client_credentials(const config::provider& p, https_client& http,
                                       const client_auth& client)
    : provider_(p), http_(http), client_(client) {}

awaitable<token_result> client_credentials::acquire() {
  std::vector<form_field> form;
  form.push_back({"grant_type", secret{"client_credentials"}});
  form.push_back({"scope", secret{scope_of(provider_)}});
  client_.add_to(form, provider_.token_endpoint());
  // Expiry counts from the moment the request leaves (protocol-notes §1.5): the round trip can
  // only make the token look older than it is, never younger.
  const auto start = steady::now();
  const auto wall = std::chrono::system_clock::now();
  auto out = co_await http_.post_form(provider_.token_endpoint(), std::move(form));
  co_return parse_token_response(out, start, wall);
}

}  // namespace xo::auth
