#include "protocol/imap/lexer.hpp"

#include <gtest/gtest.h>

#include <random>

using namespace xo::protocol::imap;
using st = command_reader::status;

namespace {

// Feeds `input` in chunks of the given sizes (cycling), answering continuations, and returns the
// commands and the number of continuations requested.
struct fed {
  std::vector<command> cmds;
  std::vector<command_reader::error_info> errors;
  int continuations = 0;
};

fed feed(std::string_view input, std::size_t chunk, limits l = {}) {
  command_reader rd{l};
  fed out;
  std::size_t pos = 0;
  for (;;) {
    auto s = rd.poll();
    if (s == st::ready) { out.cmds.push_back(rd.take()); continue; }
    if (s == st::error) {
      auto e = rd.take_error();
      bool fatal = e.fatal;
      out.errors.push_back(std::move(e));
      if (fatal) break;
      continue;
    }
    if (s == st::need_continuation) { ++out.continuations; continue; }
    if (pos >= input.size()) break;
    auto n = std::min(chunk, input.size() - pos);
    rd.append(input.substr(pos, n));
    pos += n;
  }
  return out;
}

}  // namespace

TEST(ImapLexer, AtomsAndQuotedWithEscapes) {
  auto f = feed("a1 login alice@contoso.com \"pa ss\\\"w\\\\rd\"\r\n", 1000);
  ASSERT_EQ(f.cmds.size(), 1u);
  EXPECT_EQ(f.cmds[0].tag, "a1");
  EXPECT_EQ(f.cmds[0].name, "LOGIN");
  ASSERT_EQ(f.cmds[0].args.size(), 2u);
  EXPECT_EQ(f.cmds[0].args[0].value, "alice@contoso.com");
  EXPECT_EQ(f.cmds[0].args[1].value, "pa ss\"w\\rd");
  EXPECT_EQ(f.cmds[0].args[1].type, token::kind::quoted);
}

TEST(ImapLexer, SynchronizingLiteralsAskForContinuationOncePerLiteral) {
  std::string in = "a2 LOGIN {17}\r\nalice@contoso.com {12}\r\npa\r\nss\"w\\rd!\r\n";
  for (std::size_t chunk : {1u, 2u, 5u, 1000u}) {
    auto f = feed(in, chunk);
    ASSERT_EQ(f.cmds.size(), 1u) << chunk;
    EXPECT_EQ(f.cmds[0].args[0].value, "alice@contoso.com");
    EXPECT_EQ(f.cmds[0].args[1].value, "pa\r\nss\"w\\rd!");
    // A continuation is owed only when the literal has not arrived yet.
    EXPECT_EQ(f.continuations, chunk < 10 ? 2 : 0) << chunk;
  }
}

TEST(ImapLexer, NonSynchronizingLiteralsNeedNoContinuation) {
  auto f = feed("a3 LOGIN {17+}\r\nalice@contoso.com {10+}\r\npa ss\"w\\rd\r\n", 1000);
  ASSERT_EQ(f.cmds.size(), 1u);
  EXPECT_EQ(f.cmds[0].args[1].value, "pa ss\"w\\rd");
  EXPECT_EQ(f.continuations, 0);
}

TEST(ImapLexer, SameResultWholeByteByByteAndRandomChunks) {
  std::string in =
      "x CAPABILITY\r\ny NOOP\r\nz LOGIN \"u\" {3}\r\np w\r\nA.1 ID (\"name\" \"t\")\r\n~x LOGOUT\n";
  auto whole = feed(in, in.size());
  ASSERT_EQ(whole.cmds.size(), 5u);
  std::mt19937 rng{42};
  for (int round = 0; round < 50; ++round) {
    command_reader rd;
    std::vector<command> got;
    std::size_t pos = 0;
    while (true) {
      auto s = rd.poll();
      if (s == st::ready) { got.push_back(rd.take()); continue; }
      if (s == st::need_continuation) continue;
      ASSERT_NE(s, st::error);
      if (pos >= in.size()) break;
      std::size_t n = std::min<std::size_t>(1 + rng() % 7, in.size() - pos);
      rd.append(std::string_view{in}.substr(pos, n));
      pos += n;
    }
    ASSERT_EQ(got.size(), whole.cmds.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      EXPECT_EQ(got[i].tag, whole.cmds[i].tag);
      EXPECT_EQ(got[i].name, whole.cmds[i].name);
      ASSERT_EQ(got[i].args.size(), whole.cmds[i].args.size());
      for (std::size_t j = 0; j < got[i].args.size(); ++j)
        EXPECT_EQ(got[i].args[j].value, whole.cmds[i].args[j].value);
    }
  }
  EXPECT_EQ(whole.cmds[3].tag, "A.1");
  EXPECT_EQ(whole.cmds[4].tag, "~x");
}

TEST(ImapLexer, LiteralTooLargeSynchronizingIsRefusedWithoutContinuation) {
  limits l;
  l.max_literal = 100;
  auto f = feed("a LOGIN {5000}\r\nb NOOP\r\n", 1000, l);
  ASSERT_EQ(f.errors.size(), 1u);
  EXPECT_EQ(f.errors[0].tag, "a");
  EXPECT_FALSE(f.errors[0].fatal);
  EXPECT_EQ(f.continuations, 0);
  ASSERT_EQ(f.cmds.size(), 1u);  // the stream stays usable
  EXPECT_EQ(f.cmds[0].name, "NOOP");
}

TEST(ImapLexer, LiteralTooLargeNonSynchronizingIsFatal) {
  limits l;
  l.max_literal = 100;
  auto f = feed("a LOGIN {5000+}\r\nxxxx", 1000, l);
  ASSERT_EQ(f.errors.size(), 1u);
  EXPECT_TRUE(f.errors[0].fatal);
}

TEST(ImapLexer, BadInputGivesErrorsNotCrashes) {
  struct c { const char* in; const char* tag; };
  for (auto [in, tag] : {c{"a LOGIN \"\\a\" x\r\n", "a"}, c{"a LOGIN \"open\r\n", "a"},
                         c{"* LOGIN a b\r\n", ""}, c{"+x NOOP\r\n", ""}, c{"a{b NOOP\r\n", ""},
                         c{"\r\n", ""}, c{"a\r\n", "a"}, c{"a LOGIN {x}\r\n", "a"}}) {
    auto f = feed(in, 1000);
    ASSERT_EQ(f.errors.size(), 1u) << in;
    EXPECT_EQ(f.errors[0].tag, tag) << in;
    EXPECT_TRUE(f.cmds.empty()) << in;
  }
}

TEST(ImapLexer, NulInsideLiteralIsRejected) {
  std::string in{"a LOGIN u {3}\r\na\0b\r\n", 20};
  auto f = feed(in, 1000);
  ASSERT_EQ(f.errors.size(), 1u);
  EXPECT_EQ(f.errors[0].tag, "a");
}

TEST(ImapLexer, OverlongLineIsFatal) {
  std::string in = "a LOGIN " + std::string(20000, 'x');
  auto f = feed(in, 4096);
  ASSERT_EQ(f.errors.size(), 1u);
  EXPECT_TRUE(f.errors[0].fatal);
}

TEST(ImapLexer, OverlongCompleteLineIsFatalHoweverItArrives) {
  std::string in = "a LOGIN " + std::string(12000, 'x') + " y\r\n";
  for (std::size_t chunk : {std::size_t{4096}, in.size()}) {
    auto f = feed(in, chunk);
    ASSERT_EQ(f.errors.size(), 1u) << chunk;
    EXPECT_TRUE(f.errors[0].fatal) << chunk;
    EXPECT_TRUE(f.cmds.empty()) << chunk;
  }
  auto ok = feed("a LOGIN " + std::string(8180, 'x') + " y\r\n", 4096);  // within the limit
  EXPECT_EQ(ok.cmds.size(), 1u);
}

TEST(ImapLexer, TagValidity) {
  EXPECT_TRUE(is_valid_tag("a1"));
  EXPECT_TRUE(is_valid_tag("A.1"));
  EXPECT_TRUE(is_valid_tag("a]b"));
  EXPECT_FALSE(is_valid_tag("*"));
  EXPECT_FALSE(is_valid_tag("+x"));
  EXPECT_FALSE(is_valid_tag("a{b"));
  EXPECT_FALSE(is_valid_tag(""));
}

TEST(ImapLexer, PipelinedBytesStayBuffered) {
  command_reader rd;
  rd.append("a LOGIN u p\r\nb SELECT INBOX\r\n");
  ASSERT_EQ(rd.poll(), st::ready);
  rd.take();
  EXPECT_EQ(rd.buffered(), "b SELECT INBOX\r\n");
}
