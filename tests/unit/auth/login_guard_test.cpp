#include "auth/login_guard.hpp"

#include <gtest/gtest.h>

#include <string>

namespace xo::auth {
namespace {

using namespace std::chrono_literals;
using clock = login_guard::clock;
using scope = login_guard::scope;

constexpr std::string_view alice = "alice@contoso.com";
constexpr std::string_view ip_a = "192.0.2.1";
constexpr std::string_view ip_b = "192.0.2.2";

class LoginGuard : public ::testing::Test {
 protected:
  static login_guard::settings small() {
    login_guard::settings s;
    s.pair_failures = 3;
    s.address_failures = 5;
    s.window = 60s;
    s.lockout = 30s;
    return s;
  }
  // n failures of (account, ip), one second apart.
  void fail(login_guard& g, std::string_view account, std::string_view ip, int n) {
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(g.check(account, ip, now).allowed);
      g.failure(account, ip, now);
      now += 1s;
    }
  }

  clock::time_point now = clock::time_point{} + 1000h;
};

TEST_F(LoginGuard, CountsFailuresAndLocksAtTheThreshold) {
  login_guard g{small()};
  auto r = g.failure(alice, ip_a, now);
  EXPECT_EQ(r.pair_failures, 1u);
  EXPECT_EQ(r.address_failures, 1u);
  EXPECT_FALSE(r.pair_locked);
  r = g.failure(alice, ip_a, now + 1s);
  EXPECT_EQ(r.pair_failures, 2u);
  EXPECT_FALSE(r.pair_locked);
  EXPECT_TRUE(g.check(alice, ip_a, now + 2s).allowed);
  r = g.failure(alice, ip_a, now + 2s);
  EXPECT_TRUE(r.pair_locked);
  EXPECT_FALSE(r.address_locked);
  EXPECT_EQ(r.pair_failures, 3u);
  EXPECT_EQ(r.lockout, 30s);
  auto d = g.check(alice, ip_a, now + 3s);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.locked, scope::pair);
  EXPECT_EQ(d.remaining, 29s);
}

TEST_F(LoginGuard, FailuresOutsideTheWindowDoNotCount) {
  login_guard g{small()};
  g.failure(alice, ip_a, now);
  g.failure(alice, ip_a, now + 10s);
  // The first failure left the window (60 s) just before the third arrives.
  auto r = g.failure(alice, ip_a, now + 61s);
  EXPECT_FALSE(r.pair_locked);
  EXPECT_EQ(r.pair_failures, 2u);
  EXPECT_TRUE(g.check(alice, ip_a, now + 62s).allowed);
  // Exactly at the window's edge a failure no longer counts: 10 s drops out at 70 s.
  r = g.failure(alice, ip_a, now + 70s);
  EXPECT_FALSE(r.pair_locked);
  EXPECT_EQ(r.pair_failures, 2u);
  r = g.failure(alice, ip_a, now + 71s);
  EXPECT_TRUE(r.pair_locked);
}

TEST_F(LoginGuard, LockoutLastsItsDurationThenStartsAfresh) {
  login_guard::settings s = small();
  s.address_failures = 0;  // the pair alone (the address count would still ask for a delay)
  login_guard g{s};
  fail(g, alice, ip_a, 3);
  const auto locked_at = now - 1s;
  EXPECT_FALSE(g.check(alice, ip_a, locked_at + 29s).allowed);
  auto d = g.check(alice, ip_a, locked_at + 30s);
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.delay, clock::duration::zero()) << "the count restarts after a lockout";
  // One more failure does not lock again at once.
  EXPECT_FALSE(g.failure(alice, ip_a, locked_at + 31s).pair_locked);
  EXPECT_TRUE(g.check(alice, ip_a, locked_at + 32s).allowed);
}

TEST_F(LoginGuard, EvenTheRightPasswordIsRefusedWhileLocked) {
  // The guard knows nothing about passwords: refusal is decided before the check, and a success
  // reported while locked (a caller's race) does not lift the lockout.
  login_guard g{small()};
  fail(g, alice, ip_a, 3);
  g.success(alice, ip_a, now);
  EXPECT_FALSE(g.check(alice, ip_a, now + 1s).allowed);
}

TEST_F(LoginGuard, FailuresFromAnotherAddressNeverLockThisPair) {
  login_guard::settings s = small();
  s.address_failures = 100;
  login_guard g{s};
  fail(g, alice, ip_b, 3);  // a guesser on B
  EXPECT_FALSE(g.check(alice, ip_b, now).allowed);
  auto d = g.check(alice, ip_a, now);  // the real device on A
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.delay, clock::duration::zero());
  // Many guessers, each below the threshold on its own address: A still logs in.
  for (int i = 0; i < 50; ++i) g.failure(alice, "198.51.100." + std::to_string(i), now);
  EXPECT_TRUE(g.check(alice, ip_a, now).allowed);
}

TEST_F(LoginGuard, AnAddressIsLockedAfterFailuresAcrossManyAccounts) {
  login_guard g{small()};  // 3 per pair, 5 per address
  for (int i = 0; i < 4; ++i) {
    auto r = g.failure("user" + std::to_string(i) + "@contoso.com", ip_a, now);
    EXPECT_FALSE(r.pair_locked);
    EXPECT_FALSE(r.address_locked);
  }
  auto r = g.failure("user4@contoso.com", ip_a, now);
  EXPECT_FALSE(r.pair_locked);
  EXPECT_TRUE(r.address_locked);
  EXPECT_EQ(r.address_failures, 5u);
  auto d = g.check("someone-else@contoso.com", ip_a, now + 1s);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.locked, scope::address);
  EXPECT_EQ(d.remaining, 29s);
  EXPECT_TRUE(g.check("someone-else@contoso.com", ip_b, now + 1s).allowed);
  EXPECT_TRUE(g.check(alice, ip_a, now + 30s).allowed);
}

TEST_F(LoginGuard, PairLockWinsOverAddressLockInTheDecision) {
  login_guard::settings s = small();
  s.address_failures = 3;
  login_guard g{s};
  g.failure(alice, ip_a, now);
  g.failure(alice, ip_a, now);
  auto r = g.failure(alice, ip_a, now);
  EXPECT_TRUE(r.pair_locked);
  EXPECT_TRUE(r.address_locked);
  EXPECT_EQ(g.check(alice, ip_a, now).locked, scope::pair);
  EXPECT_EQ(g.check("bob@contoso.com", ip_a, now).locked, scope::address);
}

TEST_F(LoginGuard, AddressCountingCanBeTurnedOff) {
  login_guard::settings s = small();
  s.address_failures = 0;
  login_guard g{s};
  for (int i = 0; i < 20; ++i) g.failure("u" + std::to_string(i), ip_a, now);
  EXPECT_TRUE(g.check("another", ip_a, now).allowed);
  EXPECT_EQ(g.check("another", ip_a, now).delay, clock::duration::zero());
}

TEST_F(LoginGuard, DelayGrowsAndIsCapped) {
  login_guard::settings s;  // defaults: 10 failures, 2 free, 250 ms doubling, 4 s cap
  login_guard g{s};
  const clock::duration expected[] = {0ms, 0ms, 0ms, 250ms, 500ms, 1000ms, 2000ms, 4000ms, 4000ms,
                                      4000ms};
  for (int i = 0; i < 10; ++i) {
    auto d = g.check(alice, ip_a, now);
    ASSERT_TRUE(d.allowed) << i;
    EXPECT_EQ(d.delay, expected[i]) << "after " << i << " failures";
    g.failure(alice, ip_a, now);
  }
  auto d = g.check(alice, ip_a, now);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.delay, 4000ms) << "a refusal waits like the failure that caused it";
}

TEST_F(LoginGuard, DelayFollowsTheAddressCountToo) {
  login_guard g{login_guard::settings{}};
  for (int i = 0; i < 4; ++i) g.failure("u" + std::to_string(i), ip_a, now);
  EXPECT_EQ(g.check("new@contoso.com", ip_a, now).delay, 500ms);
  EXPECT_EQ(g.check("new@contoso.com", ip_b, now).delay, 0ms);
}

TEST_F(LoginGuard, SuccessClearsThePairButNotTheAddress) {
  login_guard g{small()};
  g.failure(alice, ip_a, now);
  g.failure(alice, ip_a, now);
  g.failure("bob@contoso.com", ip_a, now);
  g.success(alice, ip_a, now);
  EXPECT_FALSE(g.failure(alice, ip_a, now).pair_locked);
  EXPECT_FALSE(g.failure(alice, ip_a, now).pair_locked);
  // Address: 3 before the success + 2 after = 5: locked, the success did not wipe it.
  EXPECT_FALSE(g.check("carol@contoso.com", ip_a, now).allowed);
}

TEST_F(LoginGuard, ZeroFailuresDisablesTheGuard) {
  login_guard::settings s = small();
  s.pair_failures = 0;
  login_guard g{s};
  EXPECT_FALSE(g.enabled());
  for (int i = 0; i < 50; ++i) g.failure(alice, ip_a, now);
  auto d = g.check(alice, ip_a, now);
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.delay, clock::duration::zero());
  EXPECT_EQ(g.entries(), 0u);
}

TEST_F(LoginGuard, MemoryIsCappedOldestEvictedFirst) {
  login_guard::settings s = small();
  s.max_entries = 100;
  login_guard g{s};
  g.failure(alice, ip_a, now);
  g.failure(alice, ip_a, now);  // alice/A: 2, one short of a lockout
  for (int i = 0; i < 1000; ++i) {
    now += 1ms;
    g.failure("u" + std::to_string(i), "203.0.113." + std::to_string(i % 200), now);
    ASSERT_LE(g.entries(), 100u);
  }
  // alice/A was the oldest: forgotten, so one more failure does not lock it.
  EXPECT_FALSE(g.failure(alice, ip_a, now).pair_locked);
}

TEST_F(LoginGuard, EntriesExpireAfterTheWindow) {
  login_guard g{small()};
  for (int i = 0; i < 40; ++i)
    g.failure("u" + std::to_string(i), "203.0.113." + std::to_string(i), now);
  EXPECT_EQ(g.entries(), 80u);
  g.failure(alice, ip_a, now + 61s);  // prunes everything that left the window
  EXPECT_EQ(g.entries(), 2u);
}

TEST_F(LoginGuard, LockedEntriesOutliveTheWindowUntilTheLockoutEnds) {
  login_guard::settings s = small();
  s.window = 10s;
  s.lockout = 100s;
  login_guard g{s};
  fail(g, alice, ip_a, 3);
  g.failure("x", ip_b, now + 50s);  // prunes
  EXPECT_FALSE(g.check(alice, ip_a, now + 50s).allowed);
  EXPECT_TRUE(g.check(alice, ip_a, now + 100s).allowed);
}

TEST_F(LoginGuard, LongKeysAreTruncated) {
  login_guard g{small()};
  const std::string base(login_guard::max_key_bytes, 'x');
  g.failure(base + "1", ip_a, now);
  g.failure(base + "2", ip_a, now);
  EXPECT_TRUE(g.failure(base + "3", ip_a, now).pair_locked);
  EXPECT_EQ(to_string(scope::pair), "pair");
  EXPECT_EQ(to_string(scope::address), "address");
}

}  // namespace
}  // namespace xo::auth

namespace xo::auth {
namespace {

TEST(LoginGuardUpdate, NewSettingsJudgeTheCountsSoFar) {
  auto now = login_guard::clock::time_point{} + 1000h;
  login_guard::settings s;
  s.pair_failures = 10;
  s.address_failures = 10;
  login_guard g{s};
  for (int i = 0; i < 4; ++i) g.failure("alice", "192.0.2.1", now);
  s.pair_failures = 3;
  g.update(s);
  EXPECT_TRUE(g.failure("alice", "192.0.2.1", now).pair_locked);
  s.pair_failures = 0;
  g.update(s);
  EXPECT_EQ(g.entries(), 0u);
  EXPECT_TRUE(g.check("alice", "192.0.2.1", now).allowed);
}

}  // namespace
}  // namespace xo::auth
