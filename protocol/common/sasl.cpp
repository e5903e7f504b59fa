#include "protocol/common/sasl.hpp"

#include "common/base64.hpp"

#include <openssl/crypto.h>

namespace xo::protocol {

namespace {
constexpr std::size_t max_field = 1024;
}

plain_result decode_plain(std::string_view b64) {
  plain_result r;
  auto raw = base64_decode(b64);
  if (!raw) {
    r.error = sasl_error::bad_base64;
    return r;
  }
  std::string_view m{*raw};
  auto first = m.find('\0');
  auto second = first == std::string_view::npos ? first : m.find('\0', first + 1);
  bool ok = second != std::string_view::npos && m.find('\0', second + 1) == std::string_view::npos;
  if (ok) {
    auto authzid = m.substr(0, first);
    auto authcid = m.substr(first + 1, second - first - 1);
    auto pass = m.substr(second + 1);
    ok = !authcid.empty() && !pass.empty() && authzid.size() <= max_field &&
         authcid.size() <= max_field && pass.size() <= max_field;
    if (ok) r.creds = plain_credentials{std::string{authzid}, std::string{authcid}, secret{std::string{pass}}};
  }
  OPENSSL_cleanse(raw->data(), raw->size());
  r.error = sasl_error::malformed;
  return r;
}

secret xoauth2_initial_response(std::string_view user, const secret& token) {
  std::string raw;
  raw.reserve(user.size() + token.size() + 24);
  raw.append("user=").append(user).append("\x01" "auth=Bearer ").append(token.reveal()).append("\x01\x01");
  secret out{base64_encode(raw)};
  OPENSSL_cleanse(raw.data(), raw.size());
  return out;
}

}  // namespace xo::protocol
