#pragma once
// SMTP reply parsing (RFC 5321 §4.2): "ddd-text" continuation lines up to the "ddd text" (or bare
// "ddd") final line. Bytes in any chunks; bounded line length and line count.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace xo::protocol::smtp {

struct reply {
  int code = 0;                    // 200..599
  std::vector<std::string> lines;  // text after "ddd-" / "ddd " of each line
  // The reply as received, CRLF-terminated lines (for relaying it verbatim).
  std::string raw;
  bool positive() const { return code >= 200 && code < 400; }
  bool transient() const { return code >= 400 && code < 500; }
};

class reply_parser {
 public:
  struct limits {
    std::size_t max_line = 4096;
    std::size_t max_lines = 128;
  };
  reply_parser() = default;
  explicit reply_parser(limits l) : limits_(l) {}

  void append(std::string_view bytes) { buf_.append(bytes); }
  enum class status { need_more, ready, error };
  // ready: take() the reply; error: the peer is not speaking SMTP (or exceeded the limits).
  status poll();
  reply take();
  const std::string& buffered() const noexcept { return buf_; }
  std::string take_buffered();
  const std::string& error() const noexcept { return error_; }

 private:
  limits limits_{};
  std::string buf_;
  reply cur_;
  std::string error_;
};

// EHLO keywords from a 250 reply: each line after the first, upper-cased keyword plus params.
struct ehlo_info {
  std::vector<std::string> lines;  // e.g. "SIZE 157286400", "AUTH LOGIN XOAUTH2"
  bool has(std::string_view keyword) const;
  std::optional<std::string> params(std::string_view keyword) const;  // text after "KEYWORD "
};
ehlo_info parse_ehlo(const reply& r);

}  // namespace xo::protocol::smtp
