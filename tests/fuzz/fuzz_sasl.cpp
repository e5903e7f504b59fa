// SASL helpers (protocol/common/sasl.hpp) and base64 (common/base64.hpp).
//
// The whole input is used three ways: as bytes to encode, as base64 text to decode, and as a
// PLAIN response. Byte 0 also splits it into a user and a token for the XOAUTH2 response.
//
// Invariants (ids for XO_FUZZ_ALLOW):
//   base64-roundtrip   decode(encode(x)) != x, or encode(decode(s)) is not as long as s, or
//                      decode(encode(decode(s))) != decode(s), or base64url differs from base64
//                      by more than its alphabet and padding
//   sasl-plain         decode_plain disagrees with base64_decode + RFC 4616 split (exactly two
//                      NULs, non-empty authcid and password, fields of at most 1024 octets)
//   sasl-xoauth2       the XOAUTH2 response does not decode to user=..^Aauth=Bearer ..^A^A
#include "fuzz_common.hpp"

#include "common/base64.hpp"
#include "protocol/common/sasl.hpp"

XO_FUZZ_ENTRY(sasl) {
  using namespace xo;
  std::string_view in{reinterpret_cast<const char*>(data), size};

  // Bytes → base64 → bytes.
  const std::string enc = base64_encode(in);
  XO_FUZZ_CHECK("base64-roundtrip", enc.size() == 4 * ((in.size() + 2) / 3), enc);
  auto dec = base64_decode(enc);
  XO_FUZZ_CHECK("base64-roundtrip", dec && *dec == in, enc);
  std::string url = enc;
  while (!url.empty() && url.back() == '=') url.pop_back();
  for (char& c : url) c = c == '+' ? '-' : c == '/' ? '_' : c;
  XO_FUZZ_CHECK("base64-roundtrip", base64url_encode(in) == url, url);

  // Text → bytes → text.
  auto raw = base64_decode(in);
  if (raw) {
    const std::string again = base64_encode(*raw);
    XO_FUZZ_CHECK("base64-roundtrip", again.size() == in.size(), again);
    auto twice = base64_decode(again);
    XO_FUZZ_CHECK("base64-roundtrip", twice && *twice == *raw, again);
  }

  // PLAIN, checked against a straightforward reading of RFC 4616.
  auto plain = protocol::decode_plain(in);
  if (!raw) {
    XO_FUZZ_CHECK("sasl-plain", !plain.creds && plain.error == protocol::sasl_error::bad_base64, in);
  } else {
    const std::string& m = *raw;
    std::size_t nuls = 0;
    for (char c : m) nuls += c == '\0';
    bool expect = false;
    std::string_view z, c, p;
    if (nuls == 2) {
      auto a = m.find('\0');
      auto b = m.find('\0', a + 1);
      z = std::string_view{m}.substr(0, a);
      c = std::string_view{m}.substr(a + 1, b - a - 1);
      p = std::string_view{m}.substr(b + 1);
      expect = !c.empty() && !p.empty() && z.size() <= 1024 && c.size() <= 1024 && p.size() <= 1024;
    }
    XO_FUZZ_CHECK("sasl-plain", plain.creds.has_value() == expect, m);
    if (expect) {
      XO_FUZZ_CHECK("sasl-plain", plain.creds->authzid == z && plain.creds->authcid == c &&
                                      plain.creds->password.reveal() == p, m);
    } else {
      XO_FUZZ_CHECK("sasl-plain", plain.error == protocol::sasl_error::malformed, m);
    }
  }

  // XOAUTH2 initial response.
  const std::size_t split = size ? std::min<std::size_t>(data[0], size - 1) : 0;
  auto user = in.substr(0, split);
  secret token{std::string{in.substr(split)}};
  auto ir = protocol::xoauth2_initial_response(user, token);
  auto ir_raw = base64_decode(ir.reveal());
  const std::string want = "user=" + std::string{user} + "\x01" "auth=Bearer " +
                           std::string{token.reveal()} + "\x01\x01";
  XO_FUZZ_CHECK("sasl-xoauth2", ir_raw && *ir_raw == want, ir.reveal());
  (void)protocol::is_sasl_cancel(in);
  return 0;
}
