// SMTP sender filter (protocol/smtp/sender_filter.hpp): the relay after an SMTP login that
// refuses MAIL FROM addresses outside the account's allowed_from.
//
// Input: byte 0 = mode
//   bit 0 clear: RAW mode. The chunks (fuzz_common.hpp header: peer bit 0 = client → upstream,
//     1 = upstream → client) go through the filter as the relay does (from_client/from_upstream,
//     then resume). Checks robustness and what can be said without knowing the server:
//       sender-transparency-raw  the bytes sent upstream are not the client's bytes with some
//                                whole MAIL/BDAT lines replaced by "NOOP\r\n" and some "." lines
//                                dot-stuffed (plus a held tail)
//       sender-down-shape        bytes to the client that are not CRLF-terminated reply lines
//                                (while the filter is not broken)
//   bit 0 set: MODEL mode. Every chunk is client input; the upstream is a model SMTP server
//     (below) that answers what the filter forwards, one reply per command, DATA with 354 (or
//     554 when byte 1 says so), BDAT after its chunk. A second model server reads the client's
//     bytes unfiltered: what the client meant.
//       sender-bypass            the filtered server accepted MAIL FROM with an address (of a
//                                plain local@domain form) that allowed_from does not allow
//       sender-replies           the client did not get the filtered server's replies in order
//                                (a NOOP's reply may be replaced by the filter's 5xx)
//       sender-transparency      index by index, the two servers did not see the same commands
//                                and bodies, up to a MAIL/BDAT line replaced by NOOP and "." lines
//                                dot-stuffed (not checked with the lenient end of DATA)
//       (each with the suffix -lenient when the server model is lenient, bits 1-2)
//     bit 1: lenient end of DATA: bare LF line ends, so "\n.\n" ends the message (Postfix with
//            smtpd_forbid_bare_newline = no, the default up to 3.8 and in Debian 12's 3.7.11)
//     bit 2: lenient command words: split on any white space (SP, HT, VT, FF, CR), leading white
//            space skipped, unbracketed MAIL FROM:addr accepted (Postfix smtpd_token(),
//            strict_rfc821_envelopes = no)
//     XO_FUZZ_ALLOW=sender-lenient-eod / sender-lenient-ws switch a leniency off;
//     XO_FUZZ_ALLOW=sender-bdat-syntax makes the model take BDAT sizes the way the filter does.
//   byte 1 (MODEL): bit i set = the server refuses the (i mod 8)-th DATA/BDAT.
#include "fuzz_common.hpp"

#include "protocol/smtp/sender_filter.hpp"

#include <algorithm>
#include <charconv>
#include <optional>
#include <utility>
#include <vector>

namespace {

using xo::protocol::smtp::sender_allowed;
using xo::protocol::smtp::sender_filter;

const std::vector<std::string>& patterns() {
  static const std::vector<std::string> p{"scanner@contoso.com", "*@fabrikam.com"};
  return p;
}

char lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (lower(a[i]) != lower(b[i])) return false;
  return true;
}

bool istarts_with(std::string_view s, std::string_view p) {
  return s.size() >= p.size() && iequals(s.substr(0, p.size()), p);
}

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\v' || c == '\f' || c == '\r'; }

// Lines the filter may replace by NOOP (answering 5xx itself): MAIL with a refused sender, a
// BDAT whose size it cannot be sure of, an overlong line.
bool filter_may_refuse(std::string_view line) {
  if (line.size() > 8 * 1024) return true;
  while (!line.empty() && is_ws(line.front())) line.remove_prefix(1);
  return istarts_with(line, "MAIL") || istarts_with(line, "BDAT");
}

// A body with every line ".." (a dot-stuffed ".") read as ".": the filter may dot-stuff a "."
// line that some server would take as the end of the data.
std::string undot(std::string_view body) {
  std::string out;
  std::size_t pos = 0;
  while (pos < body.size()) {
    auto lf = body.find('\n', pos);
    auto line = body.substr(pos, lf == std::string_view::npos ? std::string_view::npos : lf - pos);
    if (line == ".." || line == "..\r") line.remove_prefix(1);
    out.append(line);
    if (lf == std::string_view::npos) break;
    out.push_back('\n');
    pos = lf + 1;
  }
  return out;
}

// "local@domain" of plain characters, or empty (the null reverse-path): addresses every server
// takes at face value, so accepting one that allowed_from refuses is a bypass, not a parser quirk.
bool plausible_address(std::string_view a) {
  if (a.empty()) return true;
  auto at = a.find('@');
  if (at == 0 || at == std::string_view::npos || at + 1 == a.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char c = a[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    bool ok = alnum || c == '.' || c == '-' || (i < at && (c == '_' || c == '+')) || i == at;
    if (!ok) return false;
  }
  return true;
}

// Postfix's smtpd_token(), simplified: words split on white space, except inside <...> and "...";
// a word ends right after "from:" / "to:".
std::vector<std::string> postfix_words(std::string_view s) {
  std::vector<std::string> out;
  std::string cur;
  std::size_t i = 0;
  while (i < s.size()) {
    char c = s[i++];
    if (is_ws(c)) {
      if (!cur.empty()) out.push_back(std::exchange(cur, {}));
    } else if (c == '<' || c == '"') {
      const char close = c == '<' ? '>' : '"';
      cur += c;
      while (i < s.size()) {
        char d = s[i++];
        cur += d;
        if (d == '\\' && i < s.size()) {
          cur += s[i++];
          continue;
        }
        if (d == close) break;
      }
    } else if (c == ':') {
      cur += c;
      if (iequals(cur, "from:") || iequals(cur, "to:")) out.push_back(std::exchange(cur, {}));
    } else {
      cur += c;
      if (c == '\\' && i < s.size()) cur += s[i++];
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

// RFC 5321 §4.1.2 esmtp-param: keyword ["=" value]. A server refuses MAIL with anything else.
bool esmtp_param(std::string_view p) {
  auto eq = p.find('=');
  auto key = p.substr(0, eq);
  if (key.empty()) return false;
  for (std::size_t i = 0; i < key.size(); ++i) {
    char c = key[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && !(i > 0 && c == '-')) return false;
  }
  if (eq == std::string_view::npos) return true;
  auto value = p.substr(eq + 1);
  if (value.empty()) return false;
  for (char c : value)
    if (c < 33 || c > 126 || c == '=') return false;
  return true;
}

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  return true;
}

std::optional<std::uint64_t> chunk_size(std::string_view s) {
  if (!all_digits(s)) return std::nullopt;
  std::uint64_t n = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
  if (ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
  return n;
}

struct record {
  bool body = false;         // a message (DATA or a BDAT chunk) rather than a command line
  std::string text;          // the command line with its terminator, or the message bytes
  bool mail = false;         // a MAIL the server accepted
  std::string sender;
  std::string reply;         // what the server answered (to the command, or after the body)
};

// A small SMTP server: pipelining, DATA, BDAT; one reply per command, in order. Replies carry a
// sequence number so that a reordering shows.
class model_server {
 public:
  model_server(bool lenient_eod, bool lenient_ws, std::uint8_t refusals)
      : lenient_eod_(lenient_eod), lenient_ws_(lenient_ws), refusals_(refusals) {}

  void feed(std::string_view in, std::string& replies) {
    buf_.append(in);
    for (;;) {
      if (mode_ == mode::command) {
        auto lf = buf_.find('\n');
        if (lf == std::string::npos) return;
        std::string line = buf_.substr(0, lf + 1);
        buf_.erase(0, lf + 1);
        command(std::move(line), replies);
      } else if (mode_ == mode::bdat) {
        auto n = static_cast<std::size_t>(std::min<std::uint64_t>(bdat_left_, buf_.size()));
        body_.append(buf_, 0, n);
        buf_.erase(0, n);
        bdat_left_ -= n;
        if (bdat_left_ != 0) return;
        end_transfer(replies);
      } else if (!data_bytes(replies)) {
        return;
      }
    }
  }

  std::vector<record> records;

 private:
  enum class mode { command, data, bdat };

  std::string reply(std::string code_text) {
    return code_text + " #" + std::to_string(++seq_) + "\r\n";
  }
  bool refuse_transfer() { return (refusals_ >> (transfers_++ % 8)) & 1; }

  void command(std::string line, std::string& replies) {
    std::string_view text{line};
    text.remove_suffix(1);  // LF
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    record r;
    r.text = line;
    std::vector<std::string> w;
    if (lenient_ws_) {
      w = postfix_words(text);
    } else {
      // RFC 5321 as written: single spaces, no leading white space.
      std::size_t pos = 0;
      while (pos <= text.size()) {
        auto sp = text.find(' ', pos);
        if (sp == std::string_view::npos) sp = text.size();
        w.emplace_back(text.substr(pos, sp - pos));
        pos = sp + 1;
      }
    }
    const std::string verb = w.empty() ? std::string{} : w[0];
    if (iequals(verb, "MAIL")) {
      if (auto s = mail_sender(text, w)) {
        r.mail = true;
        r.sender = *s;
        r.reply = reply("250 2.1.0 Ok");
      } else {
        r.reply = reply("501 5.5.4 Syntax: MAIL FROM:<address>");
      }
    } else if (iequals(verb, "DATA") && w.size() == 1) {
      if (refuse_transfer()) {
        r.reply = reply("554 5.5.1 No valid recipients");
      } else {
        r.reply = reply("354 End data with <CR><LF>.<CR><LF>");
        mode_ = mode::data;
        eod_ = 2;
        body_.clear();
      }
    } else if (auto n = bdat_size(text, w)) {
      // The reply comes after the chunk.
      refuse_bdat_ = refuse_transfer();
      bdat_left_ = *n;
      body_.clear();
      records.push_back(std::move(r));
      mode_ = mode::bdat;
      if (bdat_left_ == 0) end_transfer(replies);
      return;
    } else if (iequals(verb, "DATA") || iequals(verb, "BDAT")) {
      r.reply = reply("501 5.5.4 Syntax error");
    } else {
      r.reply = reply("250 2.0.0 Ok");
    }
    replies += r.reply;
    records.push_back(std::move(r));
  }

  // RFC 3030: "BDAT" SP chunk-size [SP "LAST"]; anything else is a syntax error, after which
  // the server reads the next bytes as commands. XO_FUZZ_ALLOW=sender-bdat-syntax makes the
  // model read BDAT the way the filter does (a number after the first five characters).
  static std::optional<std::uint64_t> bdat_size(std::string_view text,
                                                const std::vector<std::string>& w) {
    if (xo::fuzz::allowed("sender-bdat-syntax")) {
      if (!iequals(text.substr(0, text.find_first_of(" :")), "BDAT")) return std::nullopt;
      auto rest = text.substr(std::min<std::size_t>(text.size(), 5));
      std::uint64_t n = 0;
      auto [p, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), n);
      (void)p;
      if (ec != std::errc{}) return std::nullopt;
      return n;
    }
    if (w.empty() || !iequals(w[0], "BDAT")) return std::nullopt;
    if (!(w.size() == 2 || (w.size() == 3 && iequals(w[2], "LAST")))) return std::nullopt;
    return chunk_size(w[1]);
  }

  std::optional<std::string> mail_sender(std::string_view text, const std::vector<std::string>& w) {
    if (lenient_ws_) {
      if (w.size() < 3 || !iequals(w[1], "FROM:")) return std::nullopt;
      for (std::size_t i = 3; i < w.size(); ++i)
        if (!esmtp_param(w[i])) return std::nullopt;
      std::string_view a = w[2];
      if (a.size() >= 2 && a.front() == '<' && a.back() == '>') a = a.substr(1, a.size() - 2);
      return std::string{a};
    }
    if (!istarts_with(text, "MAIL FROM:")) return std::nullopt;
    auto rest = text.substr(10);
    while (rest.starts_with(' ')) rest.remove_prefix(1);
    if (!rest.starts_with('<')) return std::nullopt;
    auto gt = rest.find('>');
    if (gt == std::string_view::npos) return std::nullopt;
    if (gt + 1 < rest.size()) {
      if (rest[gt + 1] != ' ') return std::nullopt;
      auto params = rest.substr(gt + 2);
      std::size_t pos = 0;
      while (pos <= params.size()) {
        auto sp = params.find(' ', pos);
        if (sp == std::string_view::npos) sp = params.size();
        if (!esmtp_param(params.substr(pos, sp - pos))) return std::nullopt;
        pos = sp + 1;
      }
    }
    return std::string{rest.substr(1, gt - 1)};
  }

  // DATA body up to the end-of-data line. False when more bytes are needed.
  bool data_bytes(std::string& replies) {
    std::size_t i = 0;
    for (; i < buf_.size(); ++i) {
      char c = buf_[i];
      body_ += c;
      bool end = false;
      if (lenient_eod_) {
        // Lines end in LF (an optional CR before it); a line "." ends the message.
        if (c == '\n') {
          std::string_view b{body_};
          b.remove_suffix(1);
          if (b.ends_with('\r')) b.remove_suffix(1);
          // The body starts at the beginning of a line: a first line "." ends an empty message.
          end = b.ends_with('.') && (b.size() == 1 || b[b.size() - 2] == '\n');
        }
      } else {
        static constexpr std::string_view eod = "\r\n.\r\n";
        if (c == eod[static_cast<std::size_t>(eod_)]) ++eod_;
        else eod_ = c == '\r' ? 1 : 0;
        end = eod_ == 5;
      }
      if (end) {
        buf_.erase(0, i + 1);
        end_transfer(replies);
        return true;
      }
    }
    buf_.clear();
    return false;
  }

  void end_transfer(std::string& replies) {
    record r;
    r.body = true;
    r.text = std::exchange(body_, {});
    const bool refused = mode_ == mode::bdat && refuse_bdat_;
    r.reply = reply(refused ? "554 5.7.1 Chunk refused" : "250 2.0.0 Ok: queued");
    replies += r.reply;
    records.push_back(std::move(r));
    if (mode_ == mode::bdat) {
      // The BDAT command's record carries the reply (sent after the chunk).
      records[records.size() - 2].reply = records.back().reply;
      records.back().reply.clear();
    }
    mode_ = mode::command;
  }

  bool lenient_eod_, lenient_ws_;
  std::uint8_t refusals_;
  unsigned transfers_ = 0, seq_ = 0;
  mode mode_ = mode::command;
  std::string buf_, body_;
  std::uint64_t bdat_left_ = 0;
  bool refuse_bdat_ = false;
  int eod_ = 2;
};

void raw_mode(xo::fuzz::bytes& in) {
  sender_filter f{patterns()};
  std::string client, up, down;
  while (!in.empty() && !f.broken()) {
    const std::uint8_t h = in.byte();
    auto chunk = in.take(xo::fuzz::chunk_length(h));
    if (xo::fuzz::chunk_is_upstream(h)) {
      f.from_upstream(chunk, down);
    } else {
      client.append(chunk);
      f.from_client(chunk, up);
    }
    f.resume(up);
    (void)f.waiting();
    (void)f.last_refused();
  }
  // What went upstream is the client's bytes, except whole lines the filter refused (NOOP in
  // their place) and dots it added to stuff a "." line.
  std::size_t i = 0, j = 0;
  while (j < up.size()) {
    if (i < client.size() && up[j] == client[i]) {
      ++i;
      ++j;
      continue;
    }
    if (up[j] == '.' && j > 0 && up[j - 1] == '.' && (j == 1 || up[j - 2] == '\n')) {
      ++j;  // "." became ".."
      continue;
    }
    // (A command may start mid-line in the client's bytes: right after a BDAT chunk.)
    auto lf = client.find('\n', i);
    const bool ok = lf != std::string::npos &&
                    std::string_view{up}.substr(j, 6) == "NOOP\r\n" &&
                    filter_may_refuse(std::string_view{client}.substr(i, lf - i));
    XO_FUZZ_CHECK("sender-transparency-raw", ok, std::string_view{client}.substr(i));
    i = lf + 1;
    j += 6;
  }
  if (f.broken()) return;
  // Replies to the client: whole CRLF lines that start with a code.
  std::size_t pos = 0;
  while (pos < down.size()) {
    auto end = down.find("\r\n", pos);
    XO_FUZZ_CHECK("sender-down-shape", end != std::string::npos && end - pos >= 3, down.substr(pos));
    for (std::size_t k = pos; k < pos + 3; ++k)
      XO_FUZZ_CHECK("sender-down-shape", down[k] >= '0' && down[k] <= '9', down.substr(pos));
    pos = end + 2;
  }
}

void model_mode(xo::fuzz::bytes& in, std::uint8_t mode) {
  const bool lenient_eod = (mode & 2) && !xo::fuzz::allowed("sender-lenient-eod");
  const bool lenient_ws = (mode & 4) && !xo::fuzz::allowed("sender-lenient-ws");
  const std::uint8_t refusals = in.byte();
  model_server server{lenient_eod, lenient_ws, refusals};
  model_server meant{lenient_eod, lenient_ws, refusals};
  sender_filter f{patterns()};
  std::string client, up, down;
  while (!in.empty()) {
    auto chunk = in.take(xo::fuzz::chunk_length(in.byte()));
    client.append(chunk);
    f.from_client(chunk, up);
    while (!up.empty()) {
      std::string replies;
      server.feed(std::exchange(up, {}), replies);
      if (replies.empty()) break;
      f.from_upstream(replies, down);
      f.resume(up);
    }
    XO_FUZZ_CHECK("sender-replies", !f.broken(), "the filter did not understand the server");
  }
  std::string ignored;
  meant.feed(client, ignored);

  const bool lenient = lenient_eod || lenient_ws;
  const char* bypass = lenient ? "sender-bypass-lenient" : "sender-bypass";
  const char* transparency = lenient ? "sender-transparency-lenient" : "sender-transparency";
  const char* in_order = lenient ? "sender-replies-lenient" : "sender-replies";

  // 1. Nothing the server accepted as MAIL carries a sender that allowed_from refuses.
  for (const auto& r : server.records)
    if (r.mail && plausible_address(r.sender))
      XO_FUZZ_CHECK(bypass, sender_allowed(r.sender, patterns()), r.text);

  // 2. The client got the server's replies in order; the reply to a NOOP may instead be the 5xx
  //    that the filter substitutes for the command it refused in the NOOP's place.
  std::size_t pos = 0;
  for (const auto& r : server.records) {
    if (r.reply.empty()) continue;
    if (!r.body && r.text == "NOOP\r\n" && down.compare(pos, r.reply.size(), r.reply) != 0) {
      auto end = down.find("\r\n", pos);
      XO_FUZZ_CHECK(in_order, end != std::string::npos && down[pos] == '5',
                    down.substr(pos) + " expected a substitute for " + r.reply);
      pos = end + 2;
      continue;
    }
    XO_FUZZ_CHECK(in_order, down.compare(pos, r.reply.size(), r.reply) == 0,
                  down.substr(pos) + " expected " + r.reply);
    pos += r.reply.size();
  }
  XO_FUZZ_CHECK(in_order, pos == down.size(), down.substr(std::min(pos, down.size())));

  // 3. The server saw what the client meant: the same commands and bodies, except refused
  //    commands (NOOP instead) and "." lines the filter dot-stuffed. Not with the lenient end of
  //    DATA: there the filter is meant to disagree with the client ("." next to a bare LF must
  //    end the data for nobody), and check 1 is what matters.
  if (lenient_eod) return;
  const auto& a = meant.records;
  const auto& b = server.records;
  for (std::size_t k = 0; k < std::min(a.size(), b.size()); ++k) {
    // A BDAT the filter refused (NOOP + 501: a size it will not take on trust) that the client's
    // server took as a chunk: from here on the two read different things by design, the filtered
    // server and the filter agreeing that the bytes are commands (checks 1 and 2 cover them).
    // (Its chunk may still be incomplete: then nothing follows it on the client's side.)
    if (!a[k].body && b[k].text == "NOOP\r\n" && (k + 1 == a.size() || a[k + 1].body) &&
        filter_may_refuse(a[k].text))
      return;
    bool ok = a[k].body == b[k].body && a[k].text == b[k].text;
    if (!ok && a[k].body && b[k].body) ok = undot(a[k].text) == undot(b[k].text);
    if (!ok && !a[k].body && !b[k].body)
      ok = b[k].text == "NOOP\r\n" && filter_may_refuse(a[k].text);
    XO_FUZZ_CHECK(transparency, ok, a[k].text + " => " + b[k].text);
  }
  XO_FUZZ_CHECK(transparency, a.size() == b.size(),
                std::to_string(a.size()) + " meant, " + std::to_string(b.size()) + " seen");
}

}  // namespace

XO_FUZZ_ENTRY(smtp_sender_filter) {
  xo::fuzz::bytes in{data, size};
  const std::uint8_t mode = in.byte();
  if (mode & 1) model_mode(in, mode);
  else raw_mode(in);
  return 0;
}
