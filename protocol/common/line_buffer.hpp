#pragma once
// Bounded line framing over a byte stream. Lines end in LF (CRLF or a bare LF from a sloppy
// client); the terminator is stripped. Bytes after the last complete line stay buffered.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

namespace xo::protocol {

class line_buffer {
 public:
  explicit line_buffer(std::size_t max_line) : max_line_(max_line) {}

  void append(std::string_view bytes) { buf_.append(bytes); }
  // The next complete line without its CRLF/LF, or nullopt if none is complete yet or the next
  // line is longer than the limit (then overflow() is true).
  std::optional<std::string> pop_line();
  // True when the next line, complete or not, is longer than the limit (caller should refuse).
  bool overflow() const;
  bool empty() const noexcept { return buf_.empty(); }
  std::string& data() noexcept { return buf_; }
  std::string take_all() { return std::exchange(buf_, {}); }

 private:
  std::size_t max_line_;
  std::string buf_;
};

}  // namespace xo::protocol
