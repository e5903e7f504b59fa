#include "auth/credential_checker.hpp"

#include "auth/password_hash.hpp"

#include <gtest/gtest.h>

#include <thread>

namespace xo::auth {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

steady::time_point fake_time = steady::time_point{} + 1000h;
steady::time_point fake_now() { return fake_time; }

class CredentialChecker : public ::testing::Test {
 protected:
  bool verify(credential_checker& c, std::string hash, std::string password) {
    std::optional<bool> out;
    asio::co_spawn(io, check(&c, std::move(hash), secret{std::move(password)}),
                   [&](std::exception_ptr e, bool ok) {
                     if (e) std::rethrow_exception(e);
                     out = ok;
                   });
    io.restart();
    io.run();
    return out.value();
  }

  // Also checks that verify() completes on the caller's thread, not on the pool.
  static awaitable<bool> check(credential_checker* c, std::string hash, secret password) {
    const auto before = std::this_thread::get_id();
    bool ok = co_await c->verify(std::move(hash), std::move(password));
    EXPECT_EQ(std::this_thread::get_id(), before);
    co_return ok;
  }

  asio::io_context io;
  const std::string good_hash = hash_password(secret{"s3cret"}, {1, 64, 1});
};

TEST_F(CredentialChecker, CachesSuccesses) {
  credential_checker c{io.get_executor(), 2, 300s, &fake_now};
  EXPECT_TRUE(verify(c, good_hash, "s3cret"));
  EXPECT_EQ(c.slow_checks(), 1u);
  EXPECT_TRUE(verify(c, good_hash, "s3cret"));
  EXPECT_EQ(c.slow_checks(), 1u);
}

TEST_F(CredentialChecker, DoesNotCacheFailures) {
  credential_checker c{io.get_executor(), 1, 300s, &fake_now};
  EXPECT_FALSE(verify(c, good_hash, "wrong"));
  EXPECT_FALSE(verify(c, good_hash, "wrong"));
  EXPECT_EQ(c.slow_checks(), 2u);
  EXPECT_TRUE(verify(c, good_hash, "s3cret"));
  EXPECT_FALSE(verify(c, good_hash, "wrong"));  // a cached success does not leak to other passwords
  EXPECT_EQ(c.slow_checks(), 4u);
}

TEST_F(CredentialChecker, CacheEntriesExpire) {
  credential_checker c{io.get_executor(), 1, 300s, &fake_now};
  EXPECT_TRUE(verify(c, good_hash, "s3cret"));
  fake_time += 299s;
  EXPECT_TRUE(verify(c, good_hash, "s3cret"));
  EXPECT_EQ(c.slow_checks(), 1u);
  fake_time += 2s;
  EXPECT_TRUE(verify(c, good_hash, "s3cret"));
  EXPECT_EQ(c.slow_checks(), 2u);
}

TEST_F(CredentialChecker, ChangedHashMissesTheCache) {
  credential_checker c{io.get_executor(), 1, 300s, &fake_now};
  EXPECT_TRUE(verify(c, good_hash, "s3cret"));
  const auto other = hash_password(secret{"new"}, {1, 64, 1});
  EXPECT_FALSE(verify(c, other, "s3cret"));
  EXPECT_EQ(c.slow_checks(), 2u);
}

TEST_F(CredentialChecker, UnknownAccountIsFalseAfterADummyCheck) {
  credential_checker c{io.get_executor(), 1, 300s, &fake_now};
  EXPECT_FALSE(verify(c, "", "s3cret"));
  EXPECT_FALSE(verify(c, "", "s3cret"));
  EXPECT_EQ(c.slow_checks(), 2u);
}

TEST_F(CredentialChecker, MalformedHashIsFalse) {
  credential_checker c{io.get_executor(), 1, 300s, &fake_now};
  EXPECT_FALSE(verify(c, "$argon2id$nonsense", "s3cret"));
}

TEST_F(CredentialChecker, ManyConcurrentChecks) {
  credential_checker c{io.get_executor(), 2, 300s, &fake_now};
  int ok = 0, bad = 0;
  for (int i = 0; i < 20; ++i)
    asio::co_spawn(io, check(&c, good_hash, secret{i % 2 ? "s3cret" : "nope"}),
                   [&](std::exception_ptr e, bool r) {
                     ASSERT_FALSE(e);
                     (r ? ok : bad)++;
                   });
  io.run();
  EXPECT_EQ(ok, 10);
  EXPECT_EQ(bad, 10);
}

}  // namespace
}  // namespace xo::auth

namespace xo::auth {
namespace {

// A login storm of one account costs one argon2 run, not one per connection; a different
// (wrong) password is never answered from that shared run.
TEST_F(CredentialChecker, ConcurrentChecksOfOneCredentialShareOneRun) {
  credential_checker c{io.get_executor(), 2, 300s, &fake_now};
  int ok = 0, bad = 0;
  for (int i = 0; i < 20; ++i) {
    asio::co_spawn(io, check(&c, good_hash, secret{"s3cret"}), [&](std::exception_ptr e, bool r) {
      if (e) std::rethrow_exception(e);
      ok += r;
    });
  }
  asio::co_spawn(io, check(&c, good_hash, secret{"wrong"}), [&](std::exception_ptr e, bool r) {
    if (e) std::rethrow_exception(e);
    bad += !r;
  });
  io.restart();
  io.run();
  EXPECT_EQ(ok, 20);
  EXPECT_EQ(bad, 1);
  EXPECT_EQ(c.slow_checks(), 2u);
}

}  // namespace
}  // namespace xo::auth
