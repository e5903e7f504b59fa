#include "protocol/smtp/sender_filter.hpp"

#include <charconv>

namespace xo::protocol::smtp {

namespace {

constexpr std::size_t max_command_line = 64 * 1024;

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

std::string verb_of(std::string_view line) {
  std::string v{line.substr(0, line.find_first_of(" :"))};
  for (char& c : v)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return v;
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
      case mode::bdat:
        data_bytes(out);
        break;
      case mode::command: {
        auto lf = held_.find('\n');
        if (lf == std::string::npos) {
          if (held_.size() > max_command_line) {
            out.append(held_);  // not a command we understand; let the server judge it
            held_.clear();
          }
          return;
        }
        std::string line = held_.substr(0, lf + 1);
        held_.erase(0, lf + 1);
        command_line(std::move(line), out);
        break;
      }
    }
  }
}

void sender_filter::command_line(std::string line, std::string& out) {
  std::string_view text{line};
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
  std::string verb = verb_of(text);
  if (verb == "MAIL") {
    std::string sender = reverse_path(text);
    if (!sender_allowed(sender, allowed_)) {
      ++refused_;
      last_refused_ = sender;
      out.append("NOOP\r\n");
      expected_.push_back(expect::substitute);
      substitutes_.push_back("550 5.7.1 Sender address <" + sender.substr(0, 256) +
                             "> is not allowed for this login\r\n");
      return;
    }
  }
  out.append(line);
  if (verb == "DATA") {
    expected_.push_back(expect::data);
    mode_ = mode::data_reply;
  } else if (verb == "BDAT") {
    auto rest = text.substr(std::min(text.size(), std::size_t{5}));
    std::uint64_t n = 0;
    auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), n);
    (void)p;
    expected_.push_back(expect::normal);
    if (ec == std::errc{} && n > 0) {
      bdat_left_ = n;
      mode_ = mode::bdat;
    }
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
  static constexpr std::string_view eod = "\r\n.\r\n";
  std::size_t i = 0;
  for (; i < held_.size(); ++i) {
    char c = held_[i];
    if (c == eod[static_cast<std::size_t>(eod_state_)]) {
      ++eod_state_;
    } else {
      eod_state_ = c == '\r' ? 1 : 0;
    }
    if (eod_state_ == 5) {
      ++i;
      out.append(held_, 0, i);
      held_.erase(0, i);
      eod_state_ = 2;
      mode_ = mode::command;
      expected_.push_back(expect::normal);  // the reply to the message
      return;
    }
  }
  out.append(held_);
  held_.clear();
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
    if (e == expect::data && mode_ == mode::data_reply) {
      mode_ = r.code == 354 ? mode::data : mode::command;
      eod_state_ = 2;
    }
    out.append(r.raw);
  }
}

}  // namespace xo::protocol::smtp
