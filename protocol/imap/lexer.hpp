#pragma once
// IMAP command reader for the not-authenticated state (RFC 9051 §9, RFC 7888 literals).
// Tokenizes one command at a time from a byte stream that may arrive in any chunks:
//   tag SP name *(SP arg) CRLF, arg = atom | quoted | literal | "(" | ")"
// Literals: "{n}" CRLF (synchronizing: the server must send a continuation first) and "{n+}"
// (LITERAL+). Quoted strings allow only \" and \\ escapes. Sizes are bounded.
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace xo::protocol::imap {

struct token {
  enum class kind { atom, quoted, literal, lparen, rparen };
  kind type = kind::atom;
  std::string value;  // decoded (quotes and escapes removed, literal bytes as sent)
};

struct command {
  std::string tag;
  std::string name;  // upper-cased ASCII
  std::vector<token> args;
};

struct limits {
  std::size_t max_line = 8192;      // one line of a command (outside literals)
  std::size_t max_literal = 8192;   // one literal
  std::size_t max_command = 32768;  // a whole command with its literals
};

class command_reader {
 public:
  enum class status {
    need_more,          // read more bytes
    need_continuation,  // a synchronizing literal was announced: send "+ ..." then read more
    ready,              // take() the command
    error,              // take_error(); the bytes of the bad command were consumed
  };
  struct error_info {
    std::string tag;  // empty if the tag itself was bad or missing: answer with "*"
    std::string text;
    bool fatal = false;  // close the connection after the reply (stream is out of sync)
  };

  explicit command_reader(limits l = {}) : limits_(l) {}

  void append(std::string_view bytes) { buf_.append(bytes); }
  // Parses as far as the buffered bytes allow. Call again after append() or after acting.
  status poll();
  command take();
  error_info take_error();
  // Bytes buffered beyond the last command taken (pipelined input).
  const std::string& buffered() const noexcept { return buf_; }
  std::string take_buffered();
  // For SASL continuation lines: pops one line (without CRLF/LF) from the buffered bytes.
  // Returns false when no complete line is buffered; sets overflow when the partial line is
  // longer than max_line (the caller should refuse and close).
  bool pop_line(std::string& line, bool& overflow);

 private:
  enum class parse_result { need_more, need_continuation, done, bad };
  parse_result parse(std::size_t& consumed);
  parse_result parse_literal(std::size_t& pos, bool& line_done);
  void fail(std::string text, bool fatal);

  limits limits_;
  std::string buf_;
  command cmd_;
  error_info err_;
  std::size_t continuations_sent_ = 0;  // synchronizing literals acknowledged in this command
  std::size_t literal_index_ = 0;       // literals seen so far in the current parse
};

// Tag grammar: 1*<ASTRING-CHAR except "+"> (RFC 9051 §9).
bool is_valid_tag(std::string_view tag);
bool is_atom_char(unsigned char c);

}  // namespace xo::protocol::imap
