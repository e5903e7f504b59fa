#pragma once
// Password-guessing guard (issue 8): counts failed logins per (account, source address) and per
// source address over a sliding window, asks for a growing delay before answering, and refuses a
// pair (or an address) for a while after too many failures. The caller answers a refused login
// exactly like a wrong password.
//
// Pure logic: no I/O, no clock (callers pass `now`), not thread-safe (one io thread). The account
// key is opaque here: the caller normalizes it (login_service lowercases the login as typed).
// Never keyed by account alone, so failures from one address never refuse another address.
//
// Memory is bounded: at most `max_entries` pairs plus addresses, the least recently failed
// evicted first; an entry whose failures left the window and whose lockout ended is dropped.
// Keys longer than max_key_bytes are truncated (no mail login is that long).
#include <chrono>
#include <cstddef>
#include <list>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace xo::auth {

class login_guard {
 public:
  using clock = std::chrono::steady_clock;
  using time_point = clock::time_point;
  using duration = clock::duration;

  struct settings {
    unsigned pair_failures = 10;     // failures within `window` that lock a pair; 0: guard off
    unsigned address_failures = 10;  // ... that lock an address (every account); 0: never
    std::chrono::seconds window{900};
    std::chrono::seconds lockout{900};
    // Delay before answering, from the failures counted so far (the larger of pair and address):
    // none for the first `free_failures`, then first_delay doubling per failure up to max_delay.
    unsigned free_failures = 2;
    duration first_delay = std::chrono::milliseconds{250};
    duration max_delay = std::chrono::seconds{4};
    std::size_t max_entries = 100'000;
  };

  enum class scope { none, pair, address };

  struct decision {
    bool allowed = true;
    duration delay{};           // wait this long before answering (allowed or not)
    scope locked = scope::none;  // why not allowed
    duration remaining{};       // how long the lockout still lasts
  };

  struct failure_result {
    unsigned pair_failures = 0;     // in the window, this one included
    unsigned address_failures = 0;
    bool pair_locked = false;       // this failure started a lockout of the pair ...
    bool address_locked = false;    // ... of the address
    std::chrono::seconds lockout{};  // its length
  };

  static constexpr std::size_t max_key_bytes = 320;

  explicit login_guard(settings s);

  // New settings (a configuration reload): the counts so far are kept and judged by them.
  void update(settings s);

  bool enabled() const noexcept { return s_.pair_failures > 0; }
  const settings& config() const noexcept { return s_; }

  // May this attempt be checked, and how long to wait before answering. Records nothing.
  decision check(std::string_view account_key, std::string_view ip, time_point now);
  // A failed attempt (that check() allowed). Starts a lockout when a threshold is reached; the
  // count then starts again from zero. Attempts refused by check() are not to be reported.
  failure_result failure(std::string_view account_key, std::string_view ip, time_point now);
  // A successful login: forgets the pair's failures. The address count stays (a guesser with one
  // valid account must not be able to wipe it).
  void success(std::string_view account_key, std::string_view ip, time_point now);

  std::size_t entries() const noexcept { return map_.size(); }  // pairs + addresses (tests)

 private:
  struct entry {
    std::vector<time_point> failures;  // ascending, within the window, at most the threshold
    time_point locked_until{};
    time_point touched{};              // last failure: the eviction order
    std::list<std::string>::iterator lru;
  };

  static std::string pair_key(std::string_view account_key, std::string_view ip);
  static std::string address_key(std::string_view ip);
  entry* find(const std::string& key, time_point now);
  entry& touch(const std::string& key, time_point now);
  bool expired(const entry& e, time_point now) const;
  void prune(time_point now);
  void erase(const std::string& key);
  unsigned count(entry* e, time_point now) const;
  // Adds a failure; true when this one reached `threshold` and started a lockout.
  bool add_failure(entry& e, unsigned threshold, time_point now);
  duration delay_for(unsigned failures) const;

  settings s_;
  std::unordered_map<std::string, entry> map_;
  std::list<std::string> lru_;  // front: most recently failed
};

std::string_view to_string(login_guard::scope s);

}  // namespace xo::auth
