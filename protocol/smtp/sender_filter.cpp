#include "protocol/smtp/sender_filter.hpp"

#include <charconv>
#include <limits>

namespace xo::protocol::smtp {

namespace {

constexpr std::size_t max_command_line = 8 * 1024;

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

// What a server may take as a word separator (Postfix splits commands with isspace()).
constexpr std::string_view blanks = " \t\r\n\v\f";

std::string_view trim_blanks(std::string_view s) {
  while (!s.empty() && blanks.find(s.front()) != std::string_view::npos) s.remove_prefix(1);
  while (!s.empty() && blanks.find(s.back()) != std::string_view::npos) s.remove_suffix(1);
  return s;
}

// The first word, ending at any blank or ':' (a superset of what servers take as the verb, so a
// MAIL the server would accept is always seen here).
std::string verb_of(std::string_view line) {
  std::string v{line.substr(0, line.find_first_of(" \t\r\n\v\f:"))};
  for (char& c : v)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return v;
}

// RFC 3030, exactly: "BDAT" SP chunk-size [SP "LAST"] (the line without its CRLF). Anything else
// is not forwarded: a server that refuses the syntax would read the chunk as commands.
bool parse_bdat(std::string_view line, std::uint64_t& size) {
  if (line.size() < 6 || line[4] != ' ') return false;
  std::string_view args = line.substr(5);
  auto sp = args.find(' ');
  std::string_view num = args.substr(0, sp);
  if (num.empty() || num.find_first_not_of("0123456789") != std::string_view::npos) return false;
  // Any size a server can hold in an off_t (Postfix: off_cvt_string), leading zeros included.
  auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), size);
  if (ec != std::errc{} || end != num.data() + num.size() ||
      size > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    return false;
  if (sp == std::string_view::npos) return true;
  std::string_view last = args.substr(sp + 1);
  return last.size() == 4 && (last[0] | 0x20) == 'l' && (last[1] | 0x20) == 'a' &&
         (last[2] | 0x20) == 's' && (last[3] | 0x20) == 't';
}

// "MAIL FROM:<a@b.c> SIZE=10" → "a@b.c"; "MAIL FROM:<>" → "".
std::string reverse_path(std::string_view line) {
  auto lt = line.find('<');
  auto gt = lt == std::string_view::npos ? lt : line.find('>', lt);
  if (gt == std::string_view::npos) return std::string{line.substr(std::min(line.size(), std::size_t{10}))};
  return std::string{line.substr(lt + 1, gt - lt - 1)};
}

}  // namespace

bool sender_allowed(std::string_view address, const std::vector<std::string>& patterns) {
  auto at = address.rfind('@');
  for (const auto& p : patterns) {
    if (p.starts_with("*@")) {
      if (at != std::string_view::npos && iequals(address.substr(at + 1), std::string_view{p}.substr(2)))
        return true;
    } else if (iequals(address, p)) {
      return true;
    }
  }
  return false;
}

sender_filter::sender_filter(std::vector<std::string> allowed) : allowed_(std::move(allowed)) {}

void sender_filter::from_client(std::string_view in, std::string& out) {
  held_.append(in);
  process(out);
}

void sender_filter::resume(std::string& out) { process(out); }

void sender_filter::process(std::string& out) {
  while (!held_.empty() && !broken_) {
    switch (mode_) {
      case mode::data_reply:
        return;  // wait for the server's answer to DATA
      case mode::data:
      case mode::bdat: {
        std::size_t before = held_.size();
        data_bytes(out);
        if (held_.size() == before && mode_ == mode::data) return;  // needs more input
        break;
      }
      case mode::command: {
        auto lf = held_.find('\n');
        if (discarding_) {
          // The rest of an overlong line: dropped here, answered once it ends.
          held_.erase(0, lf == std::string::npos ? held_.size() : lf + 1);
          if (lf == std::string::npos) return;
          discarding_ = false;
          substitute("500 5.5.6 Line too long\r\n", out);
          break;
        }
        if (lf == std::string::npos) {
          if (held_.size() > max_command_line) {
            discarding_ = true;
            held_.clear();
          }
          return;
        }
        if (lf > max_command_line) {
          held_.erase(0, lf + 1);
          substitute("500 5.5.6 Line too long\r\n", out);
          break;
        }
        std::string line = held_.substr(0, lf + 1);
        held_.erase(0, lf + 1);
        command_line(std::move(line), out);
        break;
      }
    }
  }
}

void sender_filter::substitute(std::string reply, std::string& out) {
  out.append("NOOP\r\n");
  expected_.push_back(expect::substitute);
  substitutes_.push_back(std::move(reply));
}

void sender_filter::command_line(std::string line, std::string& out) {
  std::string_view text{line};
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
  const std::string_view exact = text;  // only the line terminator removed
  text = trim_blanks(text);
  std::string verb = verb_of(text);
  if (verb == "MAIL") {
    std::string sender = reverse_path(text);
    if (!sender_allowed(sender, allowed_)) {
      ++refused_;
      last_refused_ = sender;
      substitute("550 5.7.1 Sender address <" + sender.substr(0, 256) +
                     "> is not allowed for this login\r\n",
                 out);
      return;
    }
  }
  if (verb == "BDAT") {
    std::uint64_t n = 0;
    if (!parse_bdat(exact, n)) {
      substitute("501 5.5.4 Syntax: BDAT chunk-size [LAST]\r\n", out);
      return;
    }
    out.append(line);
    expected_.push_back(expect::normal);
    if (n > 0) {
      bdat_left_ = n;
      mode_ = mode::bdat;
    }
    return;
  }
  out.append(line);
  if (verb == "DATA") {
    expected_.push_back(expect::data);
    mode_ = mode::data_reply;
    // The body starts at a line start, however DATA itself ended: the filter holds the body until
    // the server has answered 354, and a server that answered is reading a fresh line. (Treating
    // the first line as "after a bare LF" would dot-stuff a "." that ends the data for that
    // server, and the filter would take the commands after it for body text.)
    line_start_ = 1;
    prev_ = '\n';
  } else {
    expected_.push_back(expect::normal);
  }
}

// DATA bodies up to CRLF "." CRLF (RFC 5321 §4.1.1.4), BDAT chunks by count (RFC 3030).
void sender_filter::data_bytes(std::string& out) {
  if (mode_ == mode::bdat) {
    auto n = static_cast<std::size_t>(std::min<std::uint64_t>(bdat_left_, held_.size()));
    out.append(held_, 0, n);
    held_.erase(0, n);
    bdat_left_ -= n;
    if (bdat_left_ == 0) mode_ = mode::command;
    return;
  }
  dot_bytes(out);
}

void sender_filter::dot_bytes(std::string& out) {
  std::size_t i = 0;
  const std::size_t n = held_.size();
  while (i < n) {
    char c = held_[i];
    if (line_start_ != 0 && c == '.') {
      if (i + 1 >= n) break;  // need the next byte to decide
      char c1 = held_[i + 1];
      if (c1 == '\r') {
        if (i + 2 >= n) break;
        if (held_[i + 2] == '\n') {
          if (line_start_ == 1) {  // CRLF "." CRLF: the end of the data
            out.append(".\r\n");
            held_.erase(0, i + 3);
            mode_ = mode::command;
            expected_.push_back(expect::normal);  // the reply to the message
            return;
          }
          out.append("..\r\n");  // bare LF "." CRLF: ambiguous, neutralised
          i += 3;
          line_start_ = 1;
          prev_ = '\n';
          continue;
        }
      } else if (c1 == '\n') {
        out.append("..\n");  // "." bare LF: ambiguous, neutralised
        i += 2;
        line_start_ = 2;
        prev_ = '\n';
        continue;
      }
    }
    out.push_back(c);
    ++i;
    line_start_ = c == '\n' ? (prev_ == '\r' ? 1 : 2) : 0;
    prev_ = c;
  }
  held_.erase(0, i);
}

void sender_filter::from_upstream(std::string_view in, std::string& out) {
  replies_.append(in);
  for (;;) {
    auto st = replies_.poll();
    if (st == reply_parser::status::need_more) return;
    if (st == reply_parser::status::error) {
      broken_ = true;
      out.append(replies_.take_buffered());
      return;
    }
    reply r = replies_.take();
    expect e = expect::normal;
    if (!expected_.empty()) {
      e = expected_.front();
      expected_.pop_front();
    }
    if (e == expect::substitute) {
      out.append(substitutes_.front());
      substitutes_.pop_front();
      continue;
    }
    if (e == expect::data && mode_ == mode::data_reply)
      mode_ = r.code == 354 ? mode::data : mode::command;
    out.append(r.raw);
  }
}

}  // namespace xo::protocol::smtp
