// SMTP reply parser (protocol/smtp/reply_parser.hpp) and parse_ehlo.
//
// Input: byte 0 picks the limits (bit 7 clear: the defaults; set: max_line = 8 + bits 0-5,
// max_lines = 1 + bit 6 × 3, so the limit paths are reached by small inputs); then chunks
// (fuzz_common.hpp chunk header, peer bit ignored).
//
// The same bytes go through a second parser one byte at a time: TCP may split a reply anywhere,
// so both must produce the same replies and fail at the same point.
//
// Invariants (ids for XO_FUZZ_ALLOW):
//   reply-shape          a ready reply whose code, lines or raw text are inconsistent
//   reply-chunking       the byte-at-a-time parser disagrees (different reply or status)
//   reply-cr-boundary    the same disagreement when the only difference is a CR that arrived
//                        without its LF (a line of exactly max_line characters)
#include "fuzz_common.hpp"

#include "protocol/smtp/reply_parser.hpp"

#include <vector>

namespace {

using xo::protocol::smtp::reply;
using xo::protocol::smtp::reply_parser;

struct event {
  reply_parser::status st;
  reply r;
};

void check_shape(const reply& r, const reply_parser::limits& lim) {
  XO_FUZZ_CHECK("reply-shape", r.code >= 200 && r.code <= 599, r.raw);
  XO_FUZZ_CHECK("reply-shape", !r.lines.empty() && r.lines.size() <= lim.max_lines, r.raw);
  std::size_t pos = 0;
  const std::string code = std::to_string(r.code);
  for (std::size_t i = 0; i < r.lines.size(); ++i) {
    auto end = r.raw.find("\r\n", pos);
    XO_FUZZ_CHECK("reply-shape", end != std::string::npos, r.raw);
    std::string_view line{r.raw.data() + pos, end - pos};
    XO_FUZZ_CHECK("reply-shape", line.substr(0, 3) == code, r.raw);
    const bool last = i + 1 == r.lines.size();
    XO_FUZZ_CHECK("reply-shape", line.size() == 3 || line[3] == (last ? ' ' : '-'), r.raw);
    XO_FUZZ_CHECK("reply-shape", line.size() <= lim.max_line, r.raw);
    XO_FUZZ_CHECK("reply-shape", line.size() <= 4 ? r.lines[i].empty() : r.lines[i] == line.substr(4),
                  r.raw);
    pos = end + 2;
  }
  XO_FUZZ_CHECK("reply-shape", pos == r.raw.size(), r.raw);
  auto info = xo::protocol::smtp::parse_ehlo(r);
  XO_FUZZ_CHECK("reply-shape", info.lines.size() + 1 == r.lines.size(), r.raw);
  (void)info.has("STARTTLS");
  (void)info.params("SIZE");
  (void)info.params("AUTH");
}

// Polls until need_more or error, appending what happened.
bool drain(reply_parser& p, std::vector<event>& out, const reply_parser::limits& lim) {
  for (;;) {
    auto st = p.poll();
    if (st == reply_parser::status::need_more) return true;
    if (st == reply_parser::status::error) {
      XO_FUZZ_CHECK("reply-shape", !p.error().empty(), "error without text");
      out.push_back({st, {}});
      return false;
    }
    reply r = p.take();
    check_shape(r, lim);
    out.push_back({st, std::move(r)});
  }
}

}  // namespace

XO_FUZZ_ENTRY(smtp_reply_parser) {
  xo::fuzz::bytes in{data, size};
  reply_parser::limits lim;
  const std::uint8_t sel = in.byte();
  if (sel & 0x80) {
    lim.max_line = 8 + (sel & 0x3f);
    lim.max_lines = 1 + ((sel >> 6) & 1) * 3;
  }
  reply_parser whole{lim}, single{lim};
  std::vector<event> a, b;
  std::string all;
  bool ok_a = true, ok_b = true;
  while (!in.empty() && ok_a) {
    auto chunk = in.take(xo::fuzz::chunk_length(in.byte()));
    all.append(chunk);
    whole.append(chunk);
    ok_a = drain(whole, a, lim);
    for (char c : chunk) {
      if (!ok_b) break;
      single.append(std::string_view{&c, 1});
      ok_b = drain(single, b, lim);
    }
    bool same = a.size() == b.size() && ok_a == ok_b;
    for (std::size_t i = 0; same && i < a.size(); ++i)
      same = a[i].st == b[i].st && a[i].r.raw == b[i].r.raw && a[i].r.lines == b[i].r.lines;
    if (!same) {
      // A line of exactly max_line characters whose CR arrived before its LF.
      const std::string& held = single.buffered();
      const bool cr_boundary = !ok_b && held.size() == lim.max_line + 1 && held.back() == '\r';
      XO_FUZZ_CHECK(cr_boundary ? "reply-cr-boundary" : "reply-chunking", same, all);
      return 0;
    }
  }
  (void)whole.take_buffered();
  return 0;
}
