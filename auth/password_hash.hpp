#pragma once
// Local passwords: argon2id (libargon2), PHC string format "$argon2id$v=19$m=...,t=...,p=...$salt$hash".
#include "common/secret.hpp"

#include <string>

namespace xo::auth {

struct argon2_params {
  unsigned t_cost = 2;
  unsigned m_cost_kib = 19 * 1024;
  unsigned parallelism = 1;
};

// Random 16-byte salt from OpenSSL RAND_bytes. Throws std::runtime_error on library failure.
std::string hash_password(const secret& password, argon2_params p = {});
// False for a wrong password or a malformed hash (never throws). Slow by design: call it off the
// I/O thread.
bool verify_password(const std::string& encoded, const secret& password);
// True when `encoded` is a well-formed argon2id PHC string (config validation).
bool is_argon2id_hash(const std::string& encoded);

}  // namespace xo::auth
