// IMAP command reader (protocol/imap/lexer.hpp): tags, atoms, quoted strings, synchronizing and
// non-synchronizing literals, in any chunking.
//
// Input: byte 0 bit 0 = small limits (64/64/256, to reach every "too long" path); then chunks
// (fuzz_common.hpp chunk header, the peer bit is ignored). After each chunk the reader is polled
// until it needs more; after an AUTHENTICATE command, lines are popped as the flow does for SASL.
//
// Invariants (ids for XO_FUZZ_ALLOW):
//   lexer-tag          a command or error carries a tag that is_valid_tag() refuses
//   lexer-name         a command name that is empty, not upper-case or not atom characters
//   lexer-literal      a literal longer than max_literal
//   lexer-progress     ready/error without consuming a byte
//   lexer-double-continuation
//                      need_continuation twice in a row for the same bytes: the flow would send
//                      "+ Ready for literal data" twice for one literal
//   lexer-pop-line     pop_line's result or overflow flag contradicts the buffered bytes
#include "fuzz_common.hpp"

#include "protocol/imap/lexer.hpp"

XO_FUZZ_ENTRY(imap_lexer) {
  using namespace xo::protocol::imap;
  xo::fuzz::bytes in{data, size};
  limits lim;
  if (in.byte() & 1) lim = {64, 64, 256};
  command_reader rd{lim};
  bool sasl = false;
  while (!in.empty()) {
    rd.append(in.take(xo::fuzz::chunk_length(in.byte())));
    bool continued = false;
    for (;;) {
      if (sasl) {
        std::string line;
        bool overflow = false;
        const std::string before = rd.buffered();
        const bool got = rd.pop_line(line, overflow);
        const auto lf = before.find('\n');
        XO_FUZZ_CHECK("lexer-pop-line", got == (lf != std::string::npos), before);
        if (got) {
          XO_FUZZ_CHECK("lexer-pop-line", line.find('\n') == std::string::npos, line);
          XO_FUZZ_CHECK("lexer-pop-line", rd.buffered() == before.substr(lf + 1), before);
          sasl = !line.empty() && line != "*";  // LOGIN takes two lines; stop on "" or "*"
          continue;
        }
        XO_FUZZ_CHECK("lexer-pop-line", overflow == (before.size() > lim.max_line), before);
        if (overflow) return 0;  // the flow refuses and closes
        break;
      }
      const std::size_t before = rd.buffered().size();
      auto st = rd.poll();
      if (st == command_reader::status::need_more) break;
      if (st == command_reader::status::need_continuation) {
        XO_FUZZ_CHECK("lexer-double-continuation", !continued, rd.buffered());
        continued = true;
        continue;
      }
      continued = false;
      XO_FUZZ_CHECK("lexer-progress", rd.buffered().size() < before, rd.buffered());
      if (st == command_reader::status::error) {
        auto e = rd.take_error();
        XO_FUZZ_CHECK("lexer-tag", e.tag.empty() || is_valid_tag(e.tag), e.tag);
        XO_FUZZ_CHECK("lexer-progress", !e.text.empty(), "error without text");
        if (e.fatal) return 0;  // the flow closes the connection
        continue;
      }
      command c = rd.take();
      XO_FUZZ_CHECK("lexer-tag", is_valid_tag(c.tag), c.tag);
      XO_FUZZ_CHECK("lexer-name", !c.name.empty(), c.tag);
      for (char ch : c.name)
        XO_FUZZ_CHECK("lexer-name",
                      is_atom_char(static_cast<unsigned char>(ch)) && !(ch >= 'a' && ch <= 'z'),
                      c.name);
      for (const auto& t : c.args)
        if (t.type == token::kind::literal)
          XO_FUZZ_CHECK("lexer-literal", t.value.size() <= lim.max_literal, c.name);
      if (c.name == "AUTHENTICATE" && c.args.size() == 1) sasl = true;
    }
  }
  (void)rd.take_buffered();
  return 0;
}
