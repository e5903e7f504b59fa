#pragma once
// A value that must never reach a log, a metric or an error message: passwords, access and
// refresh tokens, client secrets. It formats as "[redacted]"; the only way to the bytes is
// reveal(), which is easy to grep for in review.
#include <fmt/format.h>

#include <string>
#include <string_view>

namespace xo {

class secret {
 public:
  secret() = default;
  explicit secret(std::string v) : value_(std::move(v)) {}
  secret(const secret&) = default;
  secret(secret&&) noexcept = default;
  secret& operator=(const secret& o) {
    if (this != &o) {
      wipe();
      value_ = o.value_;
    }
    return *this;
  }
  secret& operator=(secret&& o) noexcept {
    if (this != &o) {
      wipe();
      value_ = std::move(o.value_);
    }
    return *this;
  }
  ~secret() { wipe(); }

  std::string_view reveal() const noexcept { return value_; }
  bool empty() const noexcept { return value_.empty(); }
  std::size_t size() const noexcept { return value_.size(); }
  // First 8 hex digits of SHA-256: lets logs correlate a value without exposing it.
  std::string fingerprint() const;

 private:
  void wipe() noexcept;
  std::string value_;
};

// Constant-time comparison of two byte strings (length is not hidden).
bool constant_time_equal(std::string_view a, std::string_view b) noexcept;

}  // namespace xo

template <>
struct fmt::formatter<xo::secret> : fmt::formatter<std::string_view> {
  auto format(const xo::secret&, fmt::format_context& ctx) const {
    return fmt::formatter<std::string_view>::format("[redacted]", ctx);
  }
};
