// Single flight per key (protocol-notes §1.7): legacy clients open several connections at once,
// and one token request must serve them all. Waiters park on a timer set to time_point::max();
// the fetch cancels it to wake them. A wake-up is only believed when the fetch counter moved, so a
// stray cancel never hands out a stale answer.
#include "auth/token_cache.hpp"

#include "common/log.hpp"
#include "common/metrics.hpp"

#include <exception>

namespace xo::auth {

namespace {

std::shared_ptr<spdlog::logger> log() { return logger("auth"); }

long long seconds_between(steady::time_point from, steady::time_point to) {
  return std::chrono::duration_cast<std::chrono::seconds>(to - from).count();
}

token_result transient_error(std::string error, std::string summary) {
  token_result r;
  r.error = token_error{failure_kind::transient, std::move(error), 0, std::move(summary), {}, {}};
  return r;
}

token_result ok(const access_token& t) {
  token_result r;
  r.token = t;
  return r;
}

}  // namespace

struct token_cache::entry {
  explicit entry(const asio::any_io_executor& ex) : wake(ex, steady::time_point::max()) {}

  std::optional<access_token> token;
  steady::duration lifetime{};         // of the current token, as seen when it arrived
  std::optional<token_error> failure;  // of the last fetch, if it failed
  steady::time_point failed_at{};
  bool refreshing = false;
  std::uint64_t started = 0;   // fetches started
  std::uint64_t finished = 0;  // fetches finished
  asio::steady_timer wake;     // never expires; cancel() wakes every waiter
};

token_cache::token_cache(asio::any_io_executor ex, options opt, clock_fn now)
    : ex_(std::move(ex)), opt_(opt), now_(std::move(now)) {}

token_cache::~token_cache() = default;

token_cache::entry& token_cache::slot(const std::string& key) {
  auto& e = entries_[key];
  if (!e) e = std::make_unique<entry>(ex_);
  return *e;
}

namespace {

// A token is handed out while more than the margin is left. The margin is capped at half the
// token's lifetime, so a provider issuing short-lived tokens does not cause a fetch per login.
bool fresh(const std::optional<access_token>& t, steady::duration lifetime, steady::duration margin,
           steady::time_point now) {
  return t && t->expires_at - now >= std::min(margin, lifetime / 2);
}

// A transient failure does not make a token that has not expired yet useless.
token_result answer_failure(const std::optional<access_token>& t, const token_error& failure,
                            steady::time_point now) {
  if (failure.kind == failure_kind::transient && t && t->expires_at > now) return ok(*t);
  token_result r;
  r.error = failure;
  return r;
}

// How long a failed fetch is answered from memory: longer for config faults (an admin must act;
// hammering the IdP only gets the app throttled), and never shorter than the IdP's Retry-After.
steady::duration hold_for(const token_error& f, const token_cache::options& opt) {
  steady::duration hold =
      f.kind == failure_kind::config ? opt.config_failure_hold : opt.failure_hold;
  if (f.retry_after && *f.retry_after > hold) hold = *f.retry_after;
  return hold;
}

// co_spawn completion for fetches: log, never rethrow into io_context::run().
struct log_fetch_exception {
  std::string key;
  void operator()(std::exception_ptr ep) const {
    if (!ep) return;
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& ex) {
      log()->error("token fetch for {}: {}", key, ex.what());
    } catch (...) {
      log()->error("token fetch for {}: unknown exception", key);
    }
  }
};

}  // namespace

awaitable<token_result> token_cache::get(std::string key, token_source& source) {
  auto& e = slot(key);
  const auto now = now_();
  if (fresh(e.token, e.lifetime, opt_.refresh_margin, now)) co_return ok(*e.token);
  if (!e.refreshing) {
    if (e.failure && now - e.failed_at < hold_for(*e.failure, opt_))
      co_return answer_failure(e.token, *e.failure, now);
    e.refreshing = true;
    ++e.started;
    // Detached from the caller: a client hanging up must not abort a fetch others wait on.
    asio::co_spawn(ex_, fetch(key, source), log_fetch_exception{key});
  }

  const auto awaited = e.finished;
  while (e.finished == awaited) {
    // The caller gave up (client gone, its deadline passed): leave, the fetch goes on.
    auto cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none)
      co_return transient_error("cancelled", "cancelled while waiting for a token");
    co_await e.wake.async_wait(use_nothrow);
  }
  const auto after = now_();
  if (!e.failure && e.token) co_return ok(*e.token);
  if (e.failure) co_return answer_failure(e.token, *e.failure, after);
  co_return transient_error("invalid_response", "token fetch ended without a result");
}

void token_cache::invalidate(const std::string& key) {
  if (auto it = entries_.find(key); it != entries_.end()) it->second->token.reset();
}

void token_cache::put(const std::string& key, access_token t) {
  auto& e = slot(key);
  e.lifetime = t.expires_at - now_();
  e.token = std::move(t);
  e.failure.reset();
}

void token_cache::prefetch(const std::string& key, token_source& source) {
  auto& e = slot(key);
  if (e.refreshing) return;
  e.refreshing = true;
  ++e.started;
  asio::co_spawn(ex_, fetch(key, source), log_fetch_exception{key});
}

std::optional<access_token> token_cache::peek(const std::string& key) const {
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  return it->second->token;
}

void record_request(std::string_view grant, const token_result& r, steady::duration took) {
  record_request(grant, r.ok() ? nullptr : &r.error, took);
}

void record_request(std::string_view grant, const token_error* error, steady::duration took) {
  // A request that never left (not authorized, cancelled) is not an identity-platform request.
  if (error && (error->error == "not_authorized" || error->error == "needs_authorization" ||
                error->error == "store_error" || error->error == "cancelled"))
    return;
  const std::string_view outcome = error ? to_string(error->kind) : "ok";
  metrics::counter_add("xoauth_token_requests_total", {{"grant", grant}, {"outcome", outcome}});
  metrics::observe("xoauth_token_request_seconds", {{"grant", grant}},
                   std::chrono::duration<double>(took).count());
  if (error) {
    const std::string code = error->aadsts ? "AADSTS" + std::to_string(error->aadsts) : "none";
    metrics::counter_add("xoauth_idp_errors_total", {{"error", error->error}, {"code", code}});
  }
}

std::uint64_t token_cache::fetch_count(const std::string& key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? 0 : it->second->started;
}

awaitable<void> token_cache::fetch(std::string key, token_source& source) {
  auto& e = slot(key);
  log()->debug("token fetch started: key={} grant={}", key, source.grant());
  token_result r;
  const auto t0 = steady::now();
  try {
    r = co_await source.acquire();
  } catch (const std::exception& ex) {
    // Waiters must still be woken, so the exception ends here as a transient failure.
    log()->error("token source {} threw: {}", source.grant(), ex.what());
    r = transient_error("internal", "token source failed unexpectedly");
  } catch (...) {
    log()->error("token source {} threw a non-standard exception", source.grant());
    r = transient_error("internal", "token source failed unexpectedly");
  }
  record_request(source.grant(), r, steady::now() - t0);
  const auto now = now_();
  if (r.token) {
    e.lifetime = r.token->expires_at - now;
    log()->info("token obtained: key={} grant={} expires in {} s fingerprint={}", key,
                source.grant(), seconds_between(now, r.token->expires_at),
                r.token->value.fingerprint());
    e.token = std::move(r.token);
    e.failure.reset();
  } else {
    log()->warn("token fetch failed: key={} grant={} kind={} {}", key, source.grant(),
                to_string(r.error.kind), r.error.describe());
    if (r.error.kind != failure_kind::transient) {
      e.token.reset();  // the grant itself is unusable: stop handing out what it produced
    } else if (e.token && e.token->expires_at > now) {
      log()->warn("keeping the current token for key={} until it expires in {} s", key,
                  seconds_between(now, e.token->expires_at));
    }
    e.failure = std::move(r.error);
    e.failed_at = now;
  }
  e.refreshing = false;
  ++e.finished;
  e.wake.cancel();
}

}  // namespace xo::auth
