#pragma once
// Standard base64 (RFC 4648 §4, with padding) on top of OpenSSL's EVP encoder.
#include <optional>
#include <string>
#include <string_view>

namespace xo {

std::string base64_encode(std::string_view in);
// Strict: only the alphabet and correct '=' padding; no whitespace, no line breaks.
std::optional<std::string> base64_decode(std::string_view in);
// URL-safe alphabet without padding (RFC 4648 §5), as PKCE and JWT use.
std::string base64url_encode(std::string_view in);

}  // namespace xo
