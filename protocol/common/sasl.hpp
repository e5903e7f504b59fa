#pragma once
// SASL pieces shared by the protocols: PLAIN decoding (RFC 4616) and the XOAUTH2 initial response.
#include "common/secret.hpp"

#include <optional>
#include <string>
#include <string_view>

namespace xo::protocol {

struct plain_credentials {
  std::string authzid;
  std::string authcid;
  secret password;
};

enum class sasl_error { bad_base64, malformed };

struct plain_result {
  std::optional<plain_credentials> creds;
  sasl_error error = sasl_error::malformed;  // when !creds
};

// Decodes a base64 PLAIN response: [authzid] NUL authcid NUL passwd, exactly two NULs, non-empty
// authcid and password, each field at most 255 octets... relaxed to 1024 (RFC 4616 §2 says 255).
plain_result decode_plain(std::string_view b64);

// base64("user=" user ^A "auth=Bearer " token ^A ^A): the one line sent upstream. A secret.
secret xoauth2_initial_response(std::string_view user, const secret& token);

// True if the line is the SASL cancel response "*" (RFC 4954 §4, RFC 3501 §6.2.2).
inline bool is_sasl_cancel(std::string_view line) { return line == "*"; }

}  // namespace xo::protocol
