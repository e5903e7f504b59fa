#include "auth/token_cache.hpp"

#include <gtest/gtest.h>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>

#include <deque>
#include <stdexcept>

namespace xo::auth {
namespace {

using namespace std::chrono_literals;
using std::chrono::seconds;

// A scripted source: each acquire() takes `delay` of real time, then returns the next scripted
// result (or a fresh token of `lifetime` when the script is empty). Expiry uses the fake clock.
class fake_source final : public token_source {
 public:
  explicit fake_source(const steady::time_point* now) : now_(now) {}

  awaitable<token_result> acquire() override {
    ++calls;
    co_await sleep_for(delay);
    if (throws) throw std::runtime_error("boom");
    if (!script.empty()) {
      auto r = std::move(script.front());
      script.pop_front();
      co_return r;
    }
    token_result r;
    r.token = access_token{secret{"token-" + std::to_string(calls)}, *now_ + lifetime, {}, {}, {}};
    co_return r;
  }
  std::string_view grant() const override { return "fake"; }

  void fail_next(failure_kind kind, std::optional<seconds> retry_after = {}) {
    token_result r;
    r.error = token_error{kind, "some_error", 0, "some_error: test", retry_after, {}};
    script.push_back(std::move(r));
  }

  int calls = 0;
  bool throws = false;
  steady::duration delay = 5ms;
  steady::duration lifetime = 3600s;
  std::deque<token_result> script;

 private:
  const steady::time_point* now_;
};

class TokenCache : public ::testing::Test {
 protected:
  token_cache make(token_cache::options opt = {}) {
    return token_cache{io.get_executor(), opt, [this] { return now; }};
  }

  token_result get(token_cache& c, const std::string& key) {
    std::optional<token_result> out;
    asio::co_spawn(io, c.get(key, source), [&](std::exception_ptr e, token_result r) {
      if (e) std::rethrow_exception(e);
      out = std::move(r);
    });
    io.restart();
    io.run();
    return std::move(out.value());
  }

  asio::io_context io;
  steady::time_point now = steady::time_point{} + 1000h;
  fake_source source{&now};
};

TEST_F(TokenCache, ConcurrentCallersShareOneFetch) {
  auto cache = make();
  source.delay = 20ms;
  std::vector<std::string> got;
  for (int i = 0; i < 50; ++i)
    asio::co_spawn(io, cache.get("acct", source), [&](std::exception_ptr e, token_result r) {
      ASSERT_FALSE(e);
      ASSERT_TRUE(r.ok());
      got.emplace_back(r.token->value.reveal());
    });
  io.run();
  EXPECT_EQ(source.calls, 1);
  EXPECT_EQ(cache.fetch_count("acct"), 1u);
  ASSERT_EQ(got.size(), 50u);
  for (const auto& g : got) EXPECT_EQ(g, "token-1");
}

TEST_F(TokenCache, CachedTokenIsServedWithoutFetch) {
  auto cache = make();
  EXPECT_TRUE(get(cache, "acct").ok());
  now += 3000s;  // 600 s left, margin 300 s
  auto r = get(cache, "acct");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.token->value.reveal(), "token-1");
  EXPECT_EQ(source.calls, 1);
  EXPECT_EQ(cache.fetch_count("other"), 0u);
}

TEST_F(TokenCache, KeysAreIndependent) {
  auto cache = make();
  EXPECT_TRUE(get(cache, "a").ok());
  EXPECT_TRUE(get(cache, "b").ok());
  EXPECT_EQ(cache.fetch_count("a"), 1u);
  EXPECT_EQ(cache.fetch_count("b"), 1u);
}

TEST_F(TokenCache, RefetchesInsideTheMargin) {
  auto cache = make();
  EXPECT_TRUE(get(cache, "acct").ok());
  now += 3301s;  // 299 s left
  auto r = get(cache, "acct");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.token->value.reveal(), "token-2");
  EXPECT_EQ(cache.fetch_count("acct"), 2u);
}

TEST_F(TokenCache, ShortLivedTokensDoNotCauseAFetchPerCall) {
  auto cache = make();
  source.lifetime = 200s;  // shorter than the margin: the margin shrinks to half the lifetime
  EXPECT_TRUE(get(cache, "acct").ok());
  now += 50s;
  EXPECT_TRUE(get(cache, "acct").ok());
  EXPECT_EQ(source.calls, 1);
  now += 60s;  // 90 s left < 100 s
  EXPECT_TRUE(get(cache, "acct").ok());
  EXPECT_EQ(source.calls, 2);
}

TEST_F(TokenCache, FailureIsHeldBriefly) {
  auto cache = make();
  source.fail_next(failure_kind::transient);
  auto r = get(cache, "acct");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.error, "some_error");
  now += 4s;
  EXPECT_FALSE(get(cache, "acct").ok());
  EXPECT_EQ(source.calls, 1);
  now += 2s;
  EXPECT_TRUE(get(cache, "acct").ok());
  EXPECT_EQ(source.calls, 2);
}

TEST_F(TokenCache, ConfigFailureIsHeldLonger) {
  auto cache = make();
  source.fail_next(failure_kind::config);
  EXPECT_EQ(get(cache, "acct").error.kind, failure_kind::config);
  now += 59s;
  EXPECT_EQ(get(cache, "acct").error.kind, failure_kind::config);
  EXPECT_EQ(source.calls, 1);
  now += 2s;
  EXPECT_TRUE(get(cache, "acct").ok());
}

TEST_F(TokenCache, RetryAfterExtendsTheHold) {
  auto cache = make();
  source.fail_next(failure_kind::transient, 30s);
  EXPECT_FALSE(get(cache, "acct").ok());
  now += 29s;
  EXPECT_FALSE(get(cache, "acct").ok());
  EXPECT_EQ(source.calls, 1);
  now += 2s;
  EXPECT_TRUE(get(cache, "acct").ok());
}

TEST_F(TokenCache, TransientRefreshFailureKeepsTheOldTokenUntilItExpires) {
  auto cache = make();
  EXPECT_TRUE(get(cache, "acct").ok());
  now += 3400s;  // inside the margin, 200 s left
  source.fail_next(failure_kind::transient);
  auto r = get(cache, "acct");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.token->value.reveal(), "token-1");
  EXPECT_EQ(source.calls, 2);
  now += 1s;  // within the hold: old token, no request
  EXPECT_TRUE(get(cache, "acct").ok());
  EXPECT_EQ(source.calls, 2);
  now += 200s;  // expired; the next refresh fails too
  source.fail_next(failure_kind::transient);
  EXPECT_FALSE(get(cache, "acct").ok());
}

TEST_F(TokenCache, NonTransientRefreshFailureDropsTheToken) {
  auto cache = make();
  EXPECT_TRUE(get(cache, "acct").ok());
  now += 3400s;
  source.fail_next(failure_kind::reauth);
  auto r = get(cache, "acct");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::reauth);
}

TEST_F(TokenCache, InvalidateForcesAFetch) {
  auto cache = make();
  EXPECT_TRUE(get(cache, "acct").ok());
  cache.invalidate("acct");
  cache.invalidate("unknown");
  auto r = get(cache, "acct");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.token->value.reveal(), "token-2");
}

TEST_F(TokenCache, CallerCancellationDoesNotCancelTheFetch) {
  auto cache = make();
  source.delay = 50ms;
  asio::cancellation_signal cancel;
  std::optional<token_result> cancelled, patient;
  asio::co_spawn(
      io, cache.get("acct", source),
      asio::bind_cancellation_slot(cancel.slot(), [&](std::exception_ptr e, token_result r) {
        ASSERT_FALSE(e);
        cancelled = std::move(r);
      }));
  asio::co_spawn(io, cache.get("acct", source), [&](std::exception_ptr e, token_result r) {
    ASSERT_FALSE(e);
    patient = std::move(r);
  });
  asio::steady_timer t{io, 5ms};
  t.async_wait([&](error_code) { cancel.emit(asio::cancellation_type::terminal); });
  io.run();
  ASSERT_TRUE(cancelled && patient);
  ASSERT_FALSE(cancelled->ok());
  EXPECT_EQ(cancelled->error.error, "cancelled");
  EXPECT_EQ(cancelled->error.kind, failure_kind::transient);
  ASSERT_TRUE(patient->ok());
  EXPECT_TRUE(get(cache, "acct").ok());
  EXPECT_EQ(source.calls, 1);
}

TEST_F(TokenCache, ThrowingSourceWakesWaitersWithAnError) {
  auto cache = make();
  source.throws = true;
  auto r = get(cache, "acct");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::transient);
  source.throws = false;
  now += 6s;
  EXPECT_TRUE(get(cache, "acct").ok());
}

}  // namespace
}  // namespace xo::auth
