#pragma once
// Checks a login's local password against the account's argon2id hash on a small thread pool (off
// the I/O thread), and remembers verified credentials in memory for a while so a device that
// reconnects every minute does not pay the hash each time. The cache keeps only a keyed digest
// (HMAC-SHA-256 with a per-process random key) of (hash, password), never the password.
// An unknown account is checked against a dummy hash, so it costs the same time as a wrong password.
#include "common/secret.hpp"
#include "net/asio.hpp"

#include <chrono>
#include <memory>
#include <string>

namespace xo::auth {

class credential_checker {
 public:
  using clock_fn = std::chrono::steady_clock::time_point (*)();
  credential_checker(asio::any_io_executor io, std::size_t threads, std::chrono::seconds cache_ttl,
                     clock_fn now = &std::chrono::steady_clock::now);
  ~credential_checker();

  // encoded_hash empty means "unknown account": always false, after a dummy verification.
  // Completes on the caller's executor.
  awaitable<bool> verify(std::string encoded_hash, secret password);

  std::uint64_t slow_checks() const;  // argon2 runs so far (tests)

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace xo::auth
