// argon2id via the reference library. Parameters follow OWASP's minimum for argon2id
// (m = 19 MiB, t = 2, p = 1); the PHC string records them, so verification uses whatever the
// stored hash says.
#include "auth/password_hash.hpp"

#include <argon2.h>
#include <openssl/rand.h>

#include <cctype>
#include <cstring>
#include <stdexcept>
#include <string_view>

namespace xo::auth {

namespace {

constexpr std::size_t salt_bytes = 16;
constexpr std::size_t hash_bytes = 32;
constexpr std::string_view argon2id_prefix = "$argon2id$v=19$";

bool is_b64_nopad(std::string_view s) {
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/')) return false;
  return s.size() % 4 != 1;  // a length of 4k+1 cannot come from whole bytes
}

// "name=<1..10 digits>"; the value must fit in 32 bits.
bool param(std::string_view s, std::string_view name) {
  if (!s.starts_with(name) || s.size() <= name.size() || s.size() > name.size() + 10) return false;
  s.remove_prefix(name.size());
  if (s.find_first_not_of("0123456789") != std::string_view::npos) return false;
  return std::stoull(std::string{s}) <= 0xffffffffULL;
}

}  // namespace

std::string hash_password(const secret& password, argon2_params p) {
  unsigned char salt[salt_bytes];
  if (RAND_bytes(salt, sizeof salt) != 1) throw std::runtime_error("RAND_bytes failed");
  const auto pw = password.reveal();
  std::string out(
      argon2_encodedlen(p.t_cost, p.m_cost_kib, p.parallelism, salt_bytes, hash_bytes, Argon2_id),
      '\0');
  const int rc = argon2id_hash_encoded(p.t_cost, p.m_cost_kib, p.parallelism, pw.data(), pw.size(),
                                       salt, salt_bytes, hash_bytes, out.data(), out.size());
  if (rc != ARGON2_OK)
    throw std::runtime_error(std::string{"argon2id: "} + argon2_error_message(rc));
  out.resize(std::strlen(out.c_str()));
  return out;
}

bool verify_password(const std::string& encoded, const secret& password) {
  if (!is_argon2id_hash(encoded)) return false;
  const auto pw = password.reveal();
  return argon2id_verify(encoded.c_str(), pw.data(), pw.size()) == ARGON2_OK;
}

// Syntax only: "$argon2id$v=19$m=<n>,t=<n>,p=<n>$<salt b64>$<hash b64>" (PHC string format, as
// argon2_encode_string writes it). libargon2 does not export its decoder.
bool is_argon2id_hash(const std::string& encoded) {
  std::string_view s = encoded;
  if (!s.starts_with(argon2id_prefix)) return false;
  s.remove_prefix(argon2id_prefix.size());
  std::string_view parts[3];  // parameters, salt, hash
  for (int i = 0; i < 3; ++i) {
    const auto end = s.find('$');
    if ((i < 2) != (end != std::string_view::npos)) return false;
    parts[i] = s.substr(0, end);
    if (i < 2) s.remove_prefix(end + 1);
  }
  std::string_view params[3];
  std::string_view rest = parts[0];
  for (auto& one : params) {
    auto end = rest.find(',');
    one = rest.substr(0, end);
    rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
  }
  if (!rest.empty() || !param(params[0], "m=") || !param(params[1], "t=") ||
      !param(params[2], "p="))
    return false;
  // libargon2 minimums: salt of 8 bytes (11 base64 chars), output of 4 bytes (6 chars).
  return parts[1].size() >= 11 && parts[2].size() >= 6 && is_b64_nopad(parts[1]) &&
         is_b64_nopad(parts[2]);
}

}  // namespace xo::auth
