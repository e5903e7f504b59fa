#include "protocol/imap/lexer.hpp"

#include <charconv>
#include <utility>

namespace xo::protocol::imap {

namespace {
constexpr auto npos = std::string::npos;

bool is_ctl(unsigned char c) { return c < 0x20 || c == 0x7f; }

// Lenient astring content for arguments: 8-bit bytes allowed (UTF-8 user names and passwords);
// stops at the characters that delimit tokens.
bool is_arg_char(unsigned char c) {
  return !is_ctl(c) && c != ' ' && c != '(' && c != ')' && c != '"';
}

char upper(char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c; }
}  // namespace

bool is_atom_char(unsigned char c) {
  if (c >= 0x80 || is_ctl(c)) return false;
  switch (c) {
    case '(': case ')': case '{': case ' ': case '%': case '*': case '"': case '\\': case ']':
      return false;
    default:
      return true;
  }
}

bool is_valid_tag(std::string_view tag) {
  if (tag.empty()) return false;
  for (unsigned char c : tag)
    if (c == '+' || !(is_atom_char(c) || c == ']')) return false;
  return true;
}

void command_reader::fail(std::string text, bool fatal) {
  err_.tag = cmd_.tag;
  err_.text = std::move(text);
  err_.fatal = fatal;
}

command_reader::status command_reader::poll() {
  std::size_t consumed = 0;
  switch (parse(consumed)) {
    case parse_result::need_more:
      return status::need_more;
    case parse_result::need_continuation:
      return status::need_continuation;
    case parse_result::done:
      buf_.erase(0, consumed);
      continuations_sent_ = 0;
      return status::ready;
    case parse_result::bad:
      if (err_.fatal) buf_.clear();
      else buf_.erase(0, consumed);
      continuations_sent_ = 0;
      return status::error;
  }
  return status::need_more;
}

command command_reader::take() { return std::exchange(cmd_, {}); }
command_reader::error_info command_reader::take_error() { return std::exchange(err_, {}); }
std::string command_reader::take_buffered() { return std::exchange(buf_, {}); }

bool command_reader::pop_line(std::string& line, bool& overflow) {
  overflow = false;
  auto lf = buf_.find('\n');
  if (lf == npos) {
    overflow = buf_.size() > limits_.max_line;
    return false;
  }
  std::size_t end = (lf > 0 && buf_[lf - 1] == '\r') ? lf - 1 : lf;
  line.assign(buf_, 0, end);
  buf_.erase(0, lf + 1);
  return true;
}

// Reads "{n}" or "{n+}" CRLF and the n bytes after it. pos is at '{'.
command_reader::parse_result command_reader::parse_literal(std::size_t& pos, bool& line_done) {
  line_done = false;
  std::size_t close = buf_.find('}', pos);
  std::size_t lf = buf_.find('\n', pos);
  if (close == npos || lf == npos || close > lf) {
    if (lf == npos) return parse_result::need_more;
    fail("Invalid literal", false);
    pos = lf + 1;
    return parse_result::bad;
  }
  std::string_view spec{buf_.data() + pos + 1, close - pos - 1};
  bool sync = true;
  if (!spec.empty() && spec.back() == '+') {
    sync = false;
    spec.remove_suffix(1);
  }
  std::size_t n = 0;
  auto [p, ec] = std::from_chars(spec.data(), spec.data() + spec.size(), n);
  bool header_ok = !spec.empty() && ec == std::errc{} && p == spec.data() + spec.size() &&
                   (lf == close + 1 || (lf == close + 2 && buf_[close + 1] == '\r'));
  if (!header_ok) {
    fail("Invalid literal", false);
    pos = lf + 1;
    return parse_result::bad;
  }
  if (ec == std::errc::result_out_of_range || n > limits_.max_literal ||
      lf + 1 + n > limits_.max_command) {
    // RFC 7888: a synchronizing literal can be refused before the client sends it; a
    // non-synchronizing one is already on its way, so the stream cannot be resynchronized.
    fail("Literal too large", !sync);
    pos = lf + 1;
    return parse_result::bad;
  }
  std::size_t start = lf + 1;
  if (buf_.size() - start < n) {
    if (sync && literal_index_ >= continuations_sent_) {
      // One continuation per literal, counted by literal position: literals that needed none
      // (LITERAL+, or bytes that arrived early) must not make a later one ask twice.
      continuations_sent_ = literal_index_ + 1;
      return parse_result::need_continuation;
    }
    return parse_result::need_more;
  }
  ++literal_index_;
  std::string_view bytes{buf_.data() + start, n};
  if (bytes.find('\0') != std::string_view::npos) {
    pos = start + n;
    std::size_t end = buf_.find('\n', pos);
    if (end == npos) return parse_result::need_more;
    fail("NUL in literal", false);
    pos = end + 1;
    return parse_result::bad;
  }
  cmd_.args.push_back({token::kind::literal, std::string{bytes}});
  pos = start + n;
  line_done = true;
  return parse_result::done;
}

command_reader::parse_result command_reader::parse(std::size_t& consumed) {
  cmd_ = {};
  err_ = {};
  literal_index_ = 0;
  std::size_t line_start = 0;
  std::size_t pos = 0;
  auto line_end = [&]() { return buf_.find('\n', pos); };
  // The limit holds however the line arrived: complete in one read or in pieces (+1 for a CR).
  auto too_long = [&]() {
    std::size_t lf_at = buf_.find('\n', line_start);
    std::size_t len = (lf_at == npos ? buf_.size() : lf_at) - line_start;
    return len > limits_.max_line + (lf_at == npos ? 0 : 1);
  };
  std::size_t lf = line_end();
  if (too_long()) {
    fail("Line too long", true);
    return parse_result::bad;
  }
  if (lf == npos) return parse_result::need_more;
  // tag SP name
  std::size_t sp = buf_.find_first_of(" \r\n", 0);
  std::string_view tag{buf_.data(), sp};
  if (!is_valid_tag(tag)) {
    fail(tag.empty() ? "Empty command" : "Invalid tag", false);
    consumed = lf + 1;
    return parse_result::bad;
  }
  cmd_.tag = std::string{tag};
  pos = sp;
  if (buf_[pos] != ' ') {
    fail("Missing command", false);
    consumed = lf + 1;
    return parse_result::bad;
  }
  ++pos;
  while (pos < buf_.size() && is_atom_char(static_cast<unsigned char>(buf_[pos])))
    cmd_.name.push_back(upper(buf_[pos++]));
  if (cmd_.name.empty()) {
    fail("Missing command", false);
    consumed = lf + 1;
    return parse_result::bad;
  }
  for (;;) {
    if (pos >= buf_.size()) return parse_result::need_more;
    if (pos > limits_.max_command) {
      fail("Command too long", true);
      return parse_result::bad;
    }
    unsigned char c = static_cast<unsigned char>(buf_[pos]);
    if (c == '\r' || c == '\n') {
      if (c == '\r' && (pos + 1 >= buf_.size() || buf_[pos + 1] != '\n')) {
        if (pos + 1 >= buf_.size()) return parse_result::need_more;
        fail("Bare CR in command", false);
        consumed = line_end() + 1;
        return parse_result::bad;
      }
      consumed = buf_.find('\n', pos) + 1;
      return parse_result::done;
    }
    if (c == ' ') {
      ++pos;
      continue;
    }
    if (c == '(' || c == ')') {
      cmd_.args.push_back({c == '(' ? token::kind::lparen : token::kind::rparen, {}});
      ++pos;
      continue;
    }
    if (c == '"') {
      std::string value;
      std::size_t i = pos + 1;
      bool closed = false;
      for (; i < buf_.size(); ++i) {
        char q = buf_[i];
        if (q == '"') { closed = true; break; }
        if (q == '\r' || q == '\n' || q == '\0') break;
        if (q == '\\') {
          if (i + 1 >= buf_.size()) break;
          char e = buf_[i + 1];
          if (e != '"' && e != '\\') { fail("Invalid escape in quoted string", false); consumed = line_end() + 1; return parse_result::bad; }
          value.push_back(e);
          ++i;
          continue;
        }
        value.push_back(q);
      }
      if (!closed) {
        fail("Unterminated quoted string", false);
        consumed = line_end() + 1;
        return parse_result::bad;
      }
      cmd_.args.push_back({token::kind::quoted, std::move(value)});
      pos = i + 1;
      continue;
    }
    if (c == '{') {
      bool line_done = false;
      auto r = parse_literal(pos, line_done);
      if (r == parse_result::bad) {
        consumed = err_.fatal ? buf_.size() : pos;
        return r;
      }
      if (r != parse_result::done) return r;
      line_start = pos;
      if (too_long()) {
        fail("Line too long", true);
        return parse_result::bad;
      }
      if (line_end() == npos) return parse_result::need_more;
      continue;
    }
    if (!is_arg_char(c)) {
      fail("Invalid character in command", false);
      consumed = line_end() + 1;
      return parse_result::bad;
    }
    std::string value;
    while (pos < buf_.size() && is_arg_char(static_cast<unsigned char>(buf_[pos])))
      value.push_back(buf_[pos++]);
    cmd_.args.push_back({token::kind::atom, std::move(value)});
  }
}

}  // namespace xo::protocol::imap
