#pragma once
// Shared pieces of the fuzz targets (style.md §4.12).
//
// Every target is one .cpp whose entry point is written as
//     XO_FUZZ_ENTRY(imap_lexer) { ... data, size ... }
// Built as a libFuzzer binary (-DXO_FUZZ_LIBFUZZER) that is LLVMFuzzerTestOneInput; built into
// fuzz_replay (any compiler) it is xo_fuzz_imap_lexer, called by fuzz_replay.cpp's main() for every
// file in corpus/fuzz_imap_lexer/.
//
// A broken invariant prints what broke and aborts (libFuzzer records a crash; ctest sees the
// replay fail). Known findings can be silenced one by one while they are being fixed:
//     XO_FUZZ_ALLOW=sender-ws,reply-cr-boundary  fuzz_smtp_sender_filter ...
// (the ids are printed with every failure; see README.md).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

// All targets, for fuzz_replay's table; a new target is added here and in CMakeLists.txt.
#define XO_FUZZ_TARGETS(X) \
  X(imap_lexer)            \
  X(imap_flow)             \
  X(smtp_flow)             \
  X(pop3_flow)             \
  X(smtp_reply_parser)     \
  X(smtp_sender_filter)    \
  X(sasl)                  \
  X(token_response)        \
  X(config)

#ifdef XO_FUZZ_LIBFUZZER
#define XO_FUZZ_ENTRY(name) \
  extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
#else
#define XO_FUZZ_DECLARE(name) int xo_fuzz_##name(const std::uint8_t* data, std::size_t size);
XO_FUZZ_TARGETS(XO_FUZZ_DECLARE)
#undef XO_FUZZ_DECLARE
#define XO_FUZZ_ENTRY(name) int xo_fuzz_##name(const std::uint8_t* data, std::size_t size)
#endif

namespace xo::fuzz {

// True when `id` is listed in $XO_FUZZ_ALLOW (comma-separated): that known finding is not
// reported. Read once per process.
inline bool allowed(std::string_view id) {
  static const std::string list = [] {
    const char* v = std::getenv("XO_FUZZ_ALLOW");
    return std::string{","} + (v ? v : "") + ",";
  }();
  return list.find(std::string{","}.append(id).append(",")) != std::string::npos;
}

[[noreturn]] inline void fail(const char* file, int line, const char* id, const char* what,
                              std::string_view detail) {
  std::fprintf(stderr, "\n*** fuzz invariant [%s] broken at %s:%d: %s\n", id, file, line, what);
  if (!detail.empty()) {
    std::fprintf(stderr, "    detail: ");
    for (unsigned char c : detail.substr(0, 400)) {
      if (c >= 0x20 && c < 0x7f && c != '\\') std::fputc(c, stderr);
      else std::fprintf(stderr, "\\x%02x", c);
    }
    std::fputc('\n', stderr);
  }
  std::fflush(stderr);
  std::abort();
}

// A flow that needs far more steps than it got bytes is spinning: a finding.
[[noreturn]] inline void spin(const char* file, int line, std::size_t steps) {
  std::fprintf(stderr, "\n*** fuzz: no progress after %zu steps at %s:%d (the flow spins)\n", steps,
               file, line);
  std::fflush(stderr);
  __builtin_trap();
}

// Input bytes, consumed from the front.
class bytes {
 public:
  bytes(const std::uint8_t* d, std::size_t n) : rest_{reinterpret_cast<const char*>(d), n} {}
  bool empty() const noexcept { return rest_.empty(); }
  std::size_t size() const noexcept { return rest_.size(); }
  std::uint8_t byte(std::uint8_t fallback = 0) {
    if (rest_.empty()) return fallback;
    auto b = static_cast<std::uint8_t>(rest_.front());
    rest_.remove_prefix(1);
    return b;
  }
  std::string_view take(std::size_t n) {
    n = std::min(n, rest_.size());
    auto s = rest_.substr(0, n);
    rest_.remove_prefix(n);
    return s;
  }
  std::string_view rest() const noexcept { return rest_; }

 private:
  std::string_view rest_;
};

// Chunk header byte: bit 7 = peer (0 client, 1 upstream), bits 0-5 = length - 1 (1..64),
// bit 6 = length in units of 64 bytes (64..4096, the proxy reads at most 4096 at a time).
inline std::size_t chunk_length(std::uint8_t h) {
  std::size_t n = static_cast<std::size_t>(h & 0x3f) + 1;
  return (h & 0x40) ? n * 64 : n;
}
inline bool chunk_is_upstream(std::uint8_t h) { return (h & 0x80) != 0; }

}  // namespace xo::fuzz

// XO_FUZZ_CHECK(id, condition, detail): `id` names the invariant (for XO_FUZZ_ALLOW).
#define XO_FUZZ_CHECK(id, cond, detail)                                              \
  do {                                                                              \
    if (!(cond) && !::xo::fuzz::allowed(id))                                        \
      ::xo::fuzz::fail(__FILE__, __LINE__, id, #cond, std::string_view{detail});     \
  } while (0)

#define XO_FUZZ_SPIN(steps) ::xo::fuzz::spin(__FILE__, __LINE__, steps)
