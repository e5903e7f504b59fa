#include "protocol/smtp/reply_parser.hpp"

#include <utility>

namespace xo::protocol::smtp {

namespace {

char upper(char c) { return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c; }

bool keyword_matches(std::string_view line, std::string_view keyword) {
  if (line.size() < keyword.size()) return false;
  for (std::size_t i = 0; i < keyword.size(); ++i)
    if (upper(line[i]) != upper(keyword[i])) return false;
  return line.size() == keyword.size() || line[keyword.size()] == ' ' ||
         line[keyword.size()] == '=';
}

}  // namespace

reply_parser::status reply_parser::poll() {
  for (;;) {
    auto lf = buf_.find('\n');
    if (lf == std::string::npos) {
      if (buf_.size() > limits_.max_line + 1) {  // +1: the CR may have arrived without its LF
        error_ = "reply line too long";
        return status::error;
      }
      return status::need_more;
    }
    std::size_t end = (lf > 0 && buf_[lf - 1] == '\r') ? lf - 1 : lf;
    std::string_view line{buf_.data(), end};
    bool digits = line.size() >= 3 && line[0] >= '2' && line[0] <= '5' && line[1] >= '0' &&
                  line[1] <= '9' && line[2] >= '0' && line[2] <= '9';
    char sep = line.size() > 3 ? line[3] : ' ';
    if (!digits || (sep != ' ' && sep != '-') || end > limits_.max_line) {
      error_ = "malformed reply line";
      return status::error;
    }
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (cur_.code != 0 && cur_.code != code) {
      error_ = "reply code changed within a multi-line reply";
      return status::error;
    }
    cur_.code = code;
    cur_.lines.emplace_back(line.size() > 4 ? line.substr(4) : std::string_view{});
    cur_.raw.append(line).append("\r\n");
    buf_.erase(0, lf + 1);
    if (sep == ' ') return status::ready;
    if (cur_.lines.size() >= limits_.max_lines) {
      error_ = "too many reply lines";
      return status::error;
    }
  }
}

reply reply_parser::take() { return std::exchange(cur_, {}); }
std::string reply_parser::take_buffered() { return std::exchange(buf_, {}); }

bool ehlo_info::has(std::string_view keyword) const {
  for (const auto& l : lines)
    if (keyword_matches(l, keyword)) return true;
  return false;
}

std::optional<std::string> ehlo_info::params(std::string_view keyword) const {
  for (const auto& l : lines)
    if (keyword_matches(l, keyword))
      return l.size() > keyword.size() ? l.substr(keyword.size() + 1) : std::string{};
  return std::nullopt;
}

ehlo_info parse_ehlo(const reply& r) {
  ehlo_info info;
  for (std::size_t i = 1; i < r.lines.size(); ++i) info.lines.push_back(r.lines[i]);
  return info;
}

}  // namespace xo::protocol::smtp
