#pragma once
// Caches access tokens per key and fetches at most one at a time per key (single flight): any
// number of sessions waiting on one key cause one request. The fetch runs detached from the
// callers' cancellation, so a client hanging up does not abort a request others wait on.
// Single-threaded: all calls on the one io_context thread, so no locks.
#include "auth/token_source.hpp"

#include <functional>
#include <map>
#include <memory>

namespace xo::auth {

class token_cache {
 public:
  using clock_fn = std::function<steady::time_point()>;
  struct options {
    std::chrono::seconds refresh_margin{300};   // refetch when less than this is left
    std::chrono::seconds failure_hold{5};       // a failed fetch is answered from memory this long
    std::chrono::seconds config_failure_hold{60};  // ... and this long for config faults
  };

  // Fetches run on ex. Destroy the cache only once ex's io_context has stopped running (fetches
  // and waiters refer to it).
  token_cache(asio::any_io_executor ex, options opt, clock_fn now = &steady::now);
  ~token_cache();

  // A token valid for at least refresh_margin (capped at half the token's lifetime), or the error
  // of the last fetch. After a transient failure, a token that has not expired yet is still
  // returned. When the calling coroutine is cancelled while waiting, returns a transient error
  // "cancelled" and the fetch continues for the other waiters.
  // `source` must outlive the fetch (owned by the caller's long-lived registry).
  awaitable<token_result> get(std::string key, token_source& source);

  // Drops the cached token (e.g. the upstream rejected it); the next get() fetches again.
  void invalidate(const std::string& key);

  // Installs a token obtained elsewhere (an authorization just completed, the token store) and
  // forgets any held failure, so the next get() answers with it at once.
  void put(const std::string& key, access_token t);
  // Starts a fetch now unless one is running, keeping the current token for callers meanwhile
  // (proactive refresh ahead of expiry). `source` must outlive the fetch.
  void prefetch(const std::string& key, token_source& source);
  // The cached token, if any (status pages; never logged).
  std::optional<access_token> peek(const std::string& key) const;

  // Number of fetches started for key (tests, metrics).
  std::uint64_t fetch_count(const std::string& key) const;

 private:
  struct entry;
  awaitable<void> fetch(std::string key, token_source& source);
  entry& slot(const std::string& key);

  asio::any_io_executor ex_;
  options opt_;
  clock_fn now_;
  std::map<std::string, std::unique_ptr<entry>> entries_;
};

}  // namespace xo::auth
