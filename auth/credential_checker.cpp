// argon2id costs tens of milliseconds of CPU and 19 MiB: it runs on a small pool, never on the
// I/O thread. Only successes are cached, so a wrong password always pays the full price.
// Digests of passwords are only ever compared with CRYPTO_memcmp: the cache and the single-flight
// table are looked up by the stored hash (not secret), then the digest is compared.
#include "auth/credential_checker.hpp"

#include "auth/password_hash.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <vector>

namespace xo::auth {

namespace {

constexpr std::size_t max_cached = 10'000;
constexpr std::size_t hmac_key_bytes = 32;

}  // namespace

struct credential_checker::impl {
  impl(asio::any_io_executor e, std::size_t threads, std::chrono::seconds t, clock_fn n)
      : io(std::move(e)), ttl(t), now(n), pool(threads == 0 ? 1 : threads) {
    if (RAND_bytes(hmac_key, sizeof hmac_key) != 1) throw std::runtime_error("RAND_bytes failed");
  }
  ~impl() {
    pool.join();  // pool work refers to this object
    OPENSSL_cleanse(hmac_key, sizeof hmac_key);
  }

  std::string digest(const std::string& encoded_hash, const secret& password) const;
  bool cached(const std::string& encoded_hash, const std::string& key);
  void remember(const std::string& encoded_hash, std::string key);
  const std::string& dummy_hash();
  // Runs on the pool. Parameters by value: the coroutine outlives the caller's expressions.
  static awaitable<bool> slow_verify(impl* self, std::string encoded_hash, secret password);

  asio::any_io_executor io;
  std::chrono::seconds ttl;
  clock_fn now;
  unsigned char hmac_key[hmac_key_bytes];
  std::atomic<std::uint64_t> slow{0};

  std::mutex mu;  // the cache, in case callers run on several I/O threads
  struct cached_entry {
    std::string digest;  // of the verified (hash, password)
    std::chrono::steady_clock::time_point expiry;
  };
  std::unordered_map<std::string, cached_entry> cache;  // by encoded hash: one password verifies

  std::once_flag dummy_once;
  std::string dummy;

  // Single flight: concurrent checks of the same (hash, password) share one argon2 run.
  // Touched on the callers' (I/O) executor only.
  struct inflight {
    inflight(asio::any_io_executor ex, std::string d) : digest(std::move(d)), done(std::move(ex)) {
      done.expires_at(std::chrono::steady_clock::time_point::max());
    }
    std::string digest;
    asio::steady_timer done;  // cancelled when the result is known
    bool finished = false;
    bool result = false;
  };
  using flights = std::vector<std::shared_ptr<inflight>>;
  std::unordered_map<std::string, flights> running;  // by encoded hash
  std::shared_ptr<inflight> find_running(const std::string& encoded_hash, const std::string& key);
  void finish_running(const std::string& encoded_hash, const std::shared_ptr<inflight>& f);

  asio::thread_pool pool;  // last: joined (in ~impl) before the members its work uses go away
};

// HMAC-SHA-256(process key, encoded_hash || 0x00 || password): useless outside this process, and
// tied to the stored hash, so a changed hash in the config never matches an old entry.
std::string credential_checker::impl::digest(const std::string& encoded_hash,
                                             const secret& password) const {
  std::string buf;
  buf.reserve(encoded_hash.size() + 1 + password.size());  // one allocation: no stray copies
  buf.append(encoded_hash).push_back('\0');
  buf.append(password.reveal());
  const secret input{std::move(buf)};
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  const auto in = input.reveal();
  if (!HMAC(EVP_sha256(), hmac_key, sizeof hmac_key,
            reinterpret_cast<const unsigned char*>(in.data()), in.size(), md, &len))
    throw std::runtime_error("HMAC failed");
  return std::string(reinterpret_cast<const char*>(md), len);
}

namespace {

bool same_digest(const std::string& a, const std::string& b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace

bool credential_checker::impl::cached(const std::string& encoded_hash, const std::string& key) {
  std::lock_guard lock{mu};
  auto it = cache.find(encoded_hash);
  if (it == cache.end()) return false;
  if (it->second.expiry <= now()) {
    cache.erase(it);
    return false;
  }
  return same_digest(it->second.digest, key);
}

void credential_checker::impl::remember(const std::string& encoded_hash, std::string key) {
  std::lock_guard lock{mu};
  const auto t = now();
  if (cache.size() >= max_cached && !cache.contains(encoded_hash)) {
    std::erase_if(cache, [t](const auto& kv) { return kv.second.expiry <= t; });
    // Still full of live entries: drop the one closest to expiry (the oldest).
    if (cache.size() >= max_cached) {
      auto oldest = std::min_element(cache.begin(), cache.end(), [](const auto& a, const auto& b) {
        return a.second.expiry < b.second.expiry;
      });
      cache.erase(oldest);
    }
  }
  cache[encoded_hash] = cached_entry{std::move(key), t + ttl};
}

std::shared_ptr<credential_checker::impl::inflight> credential_checker::impl::find_running(
    const std::string& encoded_hash, const std::string& key) {
  auto it = running.find(encoded_hash);
  if (it == running.end()) return nullptr;
  for (const auto& f : it->second)
    if (same_digest(f->digest, key)) return f;
  return nullptr;
}

void credential_checker::impl::finish_running(const std::string& encoded_hash,
                                              const std::shared_ptr<inflight>& f) {
  auto it = running.find(encoded_hash);
  if (it == running.end()) return;
  std::erase(it->second, f);
  if (it->second.empty()) running.erase(it);
}

// Same parameters as real hashes, so an unknown login costs what a wrong password costs.
const std::string& credential_checker::impl::dummy_hash() {
  std::call_once(dummy_once, [this] { dummy = hash_password(secret{"xoauth-proxy dummy"}); });
  return dummy;
}

awaitable<bool> credential_checker::impl::slow_verify(impl* self, std::string encoded_hash,
                                                      secret password) {
  ++self->slow;
  if (encoded_hash.empty()) {
    (void)verify_password(self->dummy_hash(), password);
    co_return false;
  }
  co_return verify_password(encoded_hash, password);
}

credential_checker::credential_checker(asio::any_io_executor io, std::size_t threads,
                                       std::chrono::seconds cache_ttl, clock_fn now)
    : impl_(std::make_unique<impl>(std::move(io), threads, cache_ttl, now)) {}

credential_checker::~credential_checker() = default;

awaitable<bool> credential_checker::verify(std::string encoded_hash, secret password) {
  std::string key;
  std::shared_ptr<impl::inflight> flight;
  if (!encoded_hash.empty()) {
    key = impl_->digest(encoded_hash, password);
    if (impl_->cached(encoded_hash, key)) co_return true;
    // f keeps the shared state alive after the leader removed it from the table.
    if (auto f = impl_->find_running(encoded_hash, key)) {
      while (!f->finished) {
        co_await f->done.async_wait(use_nothrow);
        auto cs = co_await asio::this_coro::cancellation_state;
        if (cs.cancelled() != asio::cancellation_type::none) co_return false;
      }
      co_return f->result;
    }
    flight = std::make_shared<impl::inflight>(co_await asio::this_coro::executor, key);
    impl_->running[encoded_hash].push_back(flight);
  }
  struct finish {
    impl* self;
    const std::string& encoded_hash;
    std::shared_ptr<impl::inflight>& flight;
    bool ok = false;
    ~finish() {
      if (!flight) return;
      flight->finished = true;
      flight->result = ok;
      flight->done.cancel();
      self->finish_running(encoded_hash, flight);
    }
  } fin{impl_.get(), encoded_hash, flight};
  // co_spawn on the pool, awaited with use_awaitable: the completion comes back on this
  // coroutine's executor, so the caller never continues on a pool thread.
  const bool ok = co_await asio::co_spawn(
      impl_->pool.get_executor(), impl::slow_verify(impl_.get(), encoded_hash, std::move(password)),
      asio::use_awaitable);
  fin.ok = ok;
  if (ok) impl_->remember(encoded_hash, std::move(key));
  co_return ok;
}

std::uint64_t credential_checker::slow_checks() const { return impl_->slow.load(); }

}  // namespace xo::auth
