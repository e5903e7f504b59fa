// Sliding-window failure counts: each entry keeps the times of its failures inside the window
// (at most the threshold, so an entry stays small). The pair and the address live in one map and
// one recency list, so max_entries bounds both together.
#include "auth/login_guard.hpp"

#include <algorithm>

namespace xo::auth {

std::string_view to_string(login_guard::scope s) {
  switch (s) {
    case login_guard::scope::none:
      return "none";
    case login_guard::scope::pair:
      return "pair";
    case login_guard::scope::address:
      return "address";
  }
  return "?";
}

login_guard::login_guard(settings s) { update(s); }

void login_guard::update(settings s) {
  s_ = s;
  s_.max_entries = std::max<std::size_t>(s_.max_entries, 2);  // a failure touches two entries
  if (!enabled()) {
    map_.clear();
    lru_.clear();
  }
  while (map_.size() > s_.max_entries) erase(lru_.back());
}

// '\0' cannot occur in a login the flows accept, nor in an address: the keys cannot collide.
std::string login_guard::pair_key(std::string_view account_key, std::string_view ip) {
  account_key = account_key.substr(0, max_key_bytes);
  std::string k;
  k.reserve(2 + account_key.size() + 1 + ip.size());
  k.append("p", 1).push_back('\0');
  k.append(account_key).push_back('\0');
  k.append(ip.substr(0, max_key_bytes));
  return k;
}

std::string login_guard::address_key(std::string_view ip) {
  std::string k{"a"};
  k.push_back('\0');
  k.append(ip.substr(0, max_key_bytes));
  return k;
}

bool login_guard::expired(const entry& e, time_point now) const {
  if (e.locked_until > now) return false;
  return e.failures.empty() || e.failures.back() <= now - s_.window;
}

void login_guard::erase(const std::string& key) {
  auto it = map_.find(key);
  if (it == map_.end()) return;
  lru_.erase(it->second.lru);
  map_.erase(it);
}

// Drops expired entries from the old end of the recency list; stops at the first live one (the
// list is ordered by last failure, which is close enough to expiry order).
void login_guard::prune(time_point now) {
  while (!lru_.empty()) {
    auto it = map_.find(lru_.back());
    if (it != map_.end() && !expired(it->second, now)) return;
    if (it != map_.end()) map_.erase(it);
    lru_.pop_back();
  }
}

login_guard::entry* login_guard::find(const std::string& key, time_point now) {
  auto it = map_.find(key);
  if (it == map_.end()) return nullptr;
  if (expired(it->second, now)) {
    lru_.erase(it->second.lru);
    map_.erase(it);
    return nullptr;
  }
  return &it->second;
}

login_guard::entry& login_guard::touch(const std::string& key, time_point now) {
  auto it = map_.find(key);
  if (it == map_.end()) {
    if (map_.size() >= s_.max_entries) prune(now);
    // Still full of live entries: forget the one that failed longest ago.
    while (map_.size() >= s_.max_entries && !lru_.empty()) erase(lru_.back());
    lru_.push_front(key);
    it = map_.emplace(key, entry{}).first;
    it->second.lru = lru_.begin();
  } else {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
  }
  it->second.touched = now;
  return it->second;
}

unsigned login_guard::count(entry* e, time_point now) const {
  if (!e) return 0;
  const auto since = now - s_.window;
  auto first = std::upper_bound(e->failures.begin(), e->failures.end(), since);
  return static_cast<unsigned>(e->failures.end() - first);
}

bool login_guard::add_failure(entry& e, unsigned threshold, time_point now) {
  const auto since = now - s_.window;
  std::erase_if(e.failures, [since](time_point t) { return t <= since; });
  e.failures.push_back(now);
  if (e.failures.size() > threshold)  // more only after update() lowered the threshold
    e.failures.erase(e.failures.begin(), e.failures.end() - threshold);
  if (e.locked_until > now || e.failures.size() < threshold) return false;
  // Locked: the count starts again from zero once the lockout is over.
  e.locked_until = now + s_.lockout;
  e.failures.clear();
  return true;
}

login_guard::duration login_guard::delay_for(unsigned failures) const {
  if (failures <= s_.free_failures) return duration::zero();
  duration d = s_.first_delay;
  for (unsigned i = s_.free_failures + 1; i < failures && d < s_.max_delay; ++i) d *= 2;
  return std::min(d, s_.max_delay);
}

login_guard::decision login_guard::check(std::string_view account_key, std::string_view ip,
                                         time_point now) {
  decision d;
  if (!enabled()) return d;
  entry* pair = find(pair_key(account_key, ip), now);
  entry* addr = s_.address_failures > 0 ? find(address_key(ip), now) : nullptr;
  if (pair && pair->locked_until > now) {
    d.allowed = false;
    d.locked = scope::pair;
    d.remaining = pair->locked_until - now;
    d.delay = delay_for(s_.pair_failures);  // what the failure that locked it waited
    return d;
  }
  if (addr && addr->locked_until > now) {
    d.allowed = false;
    d.locked = scope::address;
    d.remaining = addr->locked_until - now;
    d.delay = delay_for(s_.address_failures);
    return d;
  }
  d.delay = delay_for(std::max(count(pair, now), count(addr, now)));
  return d;
}

login_guard::failure_result login_guard::failure(std::string_view account_key,
                                                 std::string_view ip, time_point now) {
  failure_result r;
  if (!enabled()) return r;
  prune(now);
  entry& pair = touch(pair_key(account_key, ip), now);
  r.pair_locked = add_failure(pair, s_.pair_failures, now);
  r.pair_failures = r.pair_locked ? s_.pair_failures : count(&pair, now);
  if (s_.address_failures > 0) {
    entry& addr = touch(address_key(ip), now);  // never evicts `pair`: it is the newest
    r.address_locked = add_failure(addr, s_.address_failures, now);
    r.address_failures = r.address_locked ? s_.address_failures : count(&addr, now);
  }
  r.lockout = s_.lockout;
  return r;
}

void login_guard::success(std::string_view account_key, std::string_view ip, time_point now) {
  if (!enabled()) return;
  const std::string key = pair_key(account_key, ip);
  auto it = map_.find(key);
  if (it == map_.end()) return;
  if (it->second.locked_until > now) {
    it->second.failures.clear();  // callers do not report successes while locked; stay locked
    return;
  }
  erase(key);
}

}  // namespace xo::auth
