#pragma once
// One process at a time owns a state_dir: the running proxy, or `xoauth-proxy authorize` while
// the proxy is stopped. An exclusive flock on <state_dir>/xoauth-proxy.lock, released by the
// kernel when the process ends however it ends (no stale lock after a crash).
#include <string>

namespace xo::proxy {

class state_lock {
 public:
  // Creates state_dir (mode 0700) if needed. Never throws; check held().
  explicit state_lock(const std::string& state_dir);
  ~state_lock();
  state_lock(const state_lock&) = delete;
  state_lock& operator=(const state_lock&) = delete;

  bool held() const { return fd_ >= 0; }
  // Why it is not held: "in use by another process" or the system error.
  const std::string& why() const { return why_; }
  bool busy() const { return busy_; }  // another process holds it

 private:
  int fd_ = -1;
  bool busy_ = false;
  std::string why_;
};

}  // namespace xo::proxy
