#include "auth/password_hash.hpp"

#include <gtest/gtest.h>

namespace xo::auth {
namespace {

// Cheap parameters: the tests check behaviour, not cost.
constexpr argon2_params cheap{1, 64, 1};

TEST(PasswordHash, RoundTrip) {
  auto h = hash_password(secret{"correct horse"}, cheap);
  EXPECT_TRUE(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$")) << h;
  EXPECT_TRUE(is_argon2id_hash(h));
  EXPECT_TRUE(verify_password(h, secret{"correct horse"}));
}

TEST(PasswordHash, DefaultParameters) {
  auto h = hash_password(secret{"pw"});
  EXPECT_TRUE(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$")) << h;
  EXPECT_TRUE(verify_password(h, secret{"pw"}));
}

TEST(PasswordHash, SaltsDiffer) {
  EXPECT_NE(hash_password(secret{"pw"}, cheap), hash_password(secret{"pw"}, cheap));
}

TEST(PasswordHash, WrongPasswordIsFalse) {
  auto h = hash_password(secret{"correct horse"}, cheap);
  EXPECT_FALSE(verify_password(h, secret{"correct horsE"}));
  EXPECT_FALSE(verify_password(h, secret{""}));
  EXPECT_FALSE(verify_password(h, secret{std::string("correct horse\0x", 15)}));
}

TEST(PasswordHash, EmptyPasswordWorks) {
  auto h = hash_password(secret{""}, cheap);
  EXPECT_TRUE(verify_password(h, secret{""}));
  EXPECT_FALSE(verify_password(h, secret{"x"}));
}

TEST(PasswordHash, MalformedHashesAreFalse) {
  auto good = hash_password(secret{"pw"}, cheap);
  const std::string bad[] = {
      "",
      "pw",
      "$argon2i$v=19$m=64,t=1,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
      "$argon2id$v=16$m=64,t=1,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
      "$argon2id$v=19$m=64,t=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
      "$argon2id$v=19$m=64,t=1,p=1,x=2$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
      "$argon2id$v=19$m=x,t=1,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
      "$argon2id$v=19$m=99999999999,t=1,p=1$c29tZXNhbHQ$"
      "iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
      "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ",
      "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$",
      "$argon2id$v=19$m=64,t=1,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A$",
      "$argon2id$v=19$m=64,t=1,p=1$c29t!XNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
      "$argon2id$v=19$m=64,t=1,p=1$c2$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A",
      good.substr(0, good.size() - 1) + "=",
      good + "\n",
  };
  for (const auto& b : bad) {
    EXPECT_FALSE(is_argon2id_hash(b)) << b;
    EXPECT_FALSE(verify_password(b, secret{"pw"})) << b;
  }
  // Well-formed but with a damaged digest: syntactically fine, verification false.
  auto damaged = good;
  damaged[damaged.size() - 2] = damaged[damaged.size() - 2] == 'A' ? 'B' : 'A';
  EXPECT_TRUE(is_argon2id_hash(damaged));
  EXPECT_FALSE(verify_password(damaged, secret{"pw"}));
}

TEST(PasswordHash, VerifiesTheReferenceTestVector) {
  // Known answer from the argon2 reference implementation's test suite (argon2id, t=2, 64 MiB).
  const std::string h =
      "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc";
  EXPECT_TRUE(is_argon2id_hash(h));
  EXPECT_TRUE(verify_password(h, secret{"password"}));
  EXPECT_FALSE(verify_password(h, secret{"Password"}));
}

}  // namespace
}  // namespace xo::auth
