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

// Classifies an OAuth error answer (exposed for unit tests).
failure_kind classify(unsigned http_status, std::string_view error, long aadsts);

}  // namespace xo::auth
