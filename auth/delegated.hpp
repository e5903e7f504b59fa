#pragma once
// The delegated (per-user) grants of the Microsoft identity platform v2.0, one request each:
// authorization code with PKCE (RFC 7636, S256), device code (RFC 8628), resource owner password
// (ROPC), and refresh token (with rotation: the answer's refresh_token replaces the old one).
// No caching, no retries, no storage here: the token engine (auth/token_engine.hpp) does that.
// Errors come back classified (auth/token.hpp) and never carry a secret.
#include "auth/client_auth.hpp"
#include "auth/https_client.hpp"
#include "auth/token.hpp"
#include "config/config.hpp"

#include <chrono>
#include <optional>
#include <string>

namespace xo::auth {

// Default scopes (protocol-notes §1): delegated flows ask for offline_access (a refresh token)
// plus Exchange Online's IMAP, POP and SMTP scopes; app-only asks for ".default".
inline constexpr std::string_view default_delegated_scope =
    "offline_access https://outlook.office.com/IMAP.AccessAsUser.All "
    "https://outlook.office.com/POP.AccessAsUser.All https://outlook.office.com/SMTP.Send";
// The provider's `scopes` joined by spaces, or the flow's default.
std::string scope_for(const config::provider& p, config::flow_kind flow);

// PKCE: a 43..128 character verifier of unreserved characters (here 64 random bytes, base64url
// = 86 characters) and its S256 challenge, base64url(SHA-256(verifier)) without padding.
struct pkce_pair {
  secret verifier;
  std::string challenge;
};
pkce_pair make_pkce();
std::string pkce_challenge(std::string_view verifier);  // for tests
// 32 random bytes, base64url: the OAuth `state` (and any other unguessable handle).
std::string random_token();

// {authority}/{tenant}/oauth2/v2.0/authorize?client_id&response_type=code&redirect_uri
// &response_mode=query&scope&state&code_challenge&code_challenge_method=S256[&login_hint]
// Every value percent-encoded.
std::string authorize_url(const config::provider& p, config::flow_kind flow,
                          const std::string& redirect_uri, const std::string& state,
                          const std::string& code_challenge, const std::string& login_hint);

// grant_type=authorization_code with code, redirect_uri (exactly as in the authorize request),
// code_verifier and scope.
awaitable<token_result> redeem_code(https_client& http, const config::provider& p,
                                    const client_auth& client, config::flow_kind flow,
                                    secret code, std::string redirect_uri, secret verifier);

// grant_type=refresh_token. The result's refresh_token is empty when the IdP did not rotate it
// (keep the old one then).
awaitable<token_result> refresh(https_client& http, const config::provider& p,
                                const client_auth& client, config::flow_kind flow,
                                secret refresh_token);

// grant_type=password (ROPC): the user's own username and password.
awaitable<token_result> password_grant(https_client& http, const config::provider& p,
                                       const client_auth& client, std::string username,
                                       secret password);

// POST {authority}/{tenant}/oauth2/v2.0/devicecode with client_id and scope.
struct device_authorization {
  secret device_code;
  std::string user_code;
  std::string verification_uri;
  std::string message;  // the IdP's own instruction text
  std::chrono::seconds expires_in{900};
  std::chrono::seconds interval{5};
};
struct device_start_result {
  std::optional<device_authorization> ok;
  token_error error;  // meaningful when !ok
};
awaitable<device_start_result> start_device_code(https_client& http, const config::provider& p,
                                                 const client_auth& client,
                                                 config::flow_kind flow);

// One poll of grant_type=urn:ietf:params:oauth:grant-type:device_code. While the user has not
// finished, the error is "authorization_pending" (keep polling) or "slow_down" (add 5 s to the
// interval); "expired_token", "authorization_declined" and "bad_verification_code" end the flow.
awaitable<token_result> poll_device_code(https_client& http, const config::provider& p,
                                         const client_auth& client, const secret& device_code);

// Claims of a JWT access token, decoded without verifying the signature (diagnostics only:
// the proxy never trusts these for access decisions). Empty optional when not a JWT.
struct token_claims {
  std::string aud, tid, upn, scp, oid;
  std::vector<std::string> roles;
  long long exp = 0;
};
std::optional<token_claims> peek_claims(const secret& jwt);

}  // namespace xo::auth
