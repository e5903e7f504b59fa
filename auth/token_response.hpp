#pragma once
// Parsing of identity-platform token responses and errors (Boost.JSON), and their classification
// (protocol-notes §1.6): by `error` first, then by the AADSTS code.
#include "auth/https_client.hpp"
#include "auth/token.hpp"

namespace xo::auth {

// Turns an HTTP outcome into a token or a classified error.
// request_start: steady time when the request was sent (expiry = request_start + expires_in).
token_result parse_token_response(const http_outcome& out, steady::time_point request_start,
                                  std::chrono::system_clock::time_point wall_start);

// The classified error of an identity-platform answer that is not a usable success, for endpoints
// other than /token (the devicecode endpoint): no answer at all, an OAuth error object (whatever
// the status), a non-2xx status; a 2xx answer without an error object is "invalid_response" with
// `why` in the summary. Same rules and same safe summary as parse_token_response.
token_error parse_error_response(const http_outcome& out, std::string_view why);

// Classifies an OAuth error answer (exposed for unit tests).
failure_kind classify(unsigned http_status, std::string_view error, long aadsts);

}  // namespace xo::auth
