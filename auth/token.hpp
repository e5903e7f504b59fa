#pragma once
// Results of asking the identity platform for a token.
#include "common/secret.hpp"

#include <chrono>
#include <optional>
#include <string>

namespace xo::auth {

using steady = std::chrono::steady_clock;

struct access_token {
  secret value;
  steady::time_point expires_at;                   // request start + expires_in
  std::chrono::system_clock::time_point expires_wall;
  std::string scope;                               // as granted, if the IdP said
  secret refresh_token;                            // empty for client credentials
};

// How a failure should be treated (protocol-notes §1.6).
enum class failure_kind {
  transient,     // IdP 5xx/429/timeout/network: keep tokens, tell the client "try later"
  reauth,        // grant unusable (revoked, expired, consent, MFA): needs an admin/user
  bad_password,  // ROPC: the user's password was wrong
  config,        // invalid_client, unknown app or tenant, bad scope: an admin must fix config
};
std::string_view to_string(failure_kind k);

struct token_error {
  failure_kind kind = failure_kind::transient;
  std::string error;        // OAuth "error" ("invalid_client"), or "network", "timeout", "http_500"
  long aadsts = 0;          // first of error_codes, 0 if none
  std::string summary;      // safe for logs: error, AADSTS code, first line of the description
                            // (never a secret), trace/correlation id when present
  std::optional<std::chrono::seconds> retry_after;  // from a 429/503 Retry-After header
  std::string fix;  // what an administrator should do, in plain words; empty when unknown
  // summary, plus "; fix: ..." when a fix is known: for logs, the status page and the CLI.
  std::string describe() const { return fix.empty() ? summary : summary + "; fix: " + fix; }
};

// The fix for a known identity-platform error (by AADSTS code, then by `error`); "" if none.
std::string_view fix_for(long aadsts, std::string_view error);

struct token_result {
  std::optional<access_token> token;
  token_error error;  // meaningful when !token
  bool ok() const { return token.has_value(); }
};

// Counts one identity-platform request in the metrics: by grant and outcome, its duration, and
// the error code when it failed (never a token).
void record_request(std::string_view grant, const token_result& r, steady::duration took);
void record_request(std::string_view grant, const token_error* error, steady::duration took);

}  // namespace xo::auth
