#include "protocol/smtp/sender_filter.hpp"

#include <gtest/gtest.h>

using namespace xo::protocol::smtp;

namespace {

const std::vector<std::string> allowed{"scanner@contoso.com", "*@fabrikam.com"};

// Runs a whole exchange: client bytes in `chunk`-sized pieces, upstream replies fed when the
// filter waits or at the end.
struct run {
  sender_filter f{allowed};
  std::string up, down;
  void client(std::string_view s, std::size_t chunk = 1 << 20) {
    for (std::size_t i = 0; i < s.size(); i += chunk) f.from_client(s.substr(i, chunk), up);
  }
  void server(std::string_view s) {
    f.from_upstream(s, down);
    f.resume(up);
  }
};

}  // namespace

TEST(SmtpSenderFilter, Patterns) {
  EXPECT_TRUE(sender_allowed("Scanner@Contoso.com", allowed));
  EXPECT_TRUE(sender_allowed("anyone@FABRIKAM.com", allowed));
  EXPECT_FALSE(sender_allowed("boss@contoso.com", allowed));
  EXPECT_FALSE(sender_allowed("", allowed));
  EXPECT_FALSE(sender_allowed("x@sub.fabrikam.com", allowed));
}

TEST(SmtpSenderFilter, AllowedTransactionPassesUntouched) {
  run r;
  const std::string tx = "MAIL FROM:<scanner@contoso.com> SIZE=10\r\nRCPT TO:<a@b.c>\r\nDATA\r\n";
  r.client(tx);
  EXPECT_EQ(r.up, tx);
  r.server("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
  const std::string body = "Subject: x\r\n\r\n..dot-stuffed\r\nMAIL FROM:<evil@x.y>\r\n.\r\n";
  r.client(body, 3);
  EXPECT_EQ(r.up, tx + body);  // the body is never parsed as commands
  r.client("QUIT\r\n");
  r.server("250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n");
  EXPECT_EQ(r.down, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
                    "250 2.0.0 Ok: queued\r\n221 2.0.0 Bye\r\n");
  EXPECT_EQ(r.f.refused(), 0u);
}

TEST(SmtpSenderFilter, RefusedSenderBecomesNoopAnd550InOrder) {
  run r;
  r.client("MAIL FROM:<boss@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\n");
  EXPECT_EQ(r.up, "NOOP\r\nRCPT TO:<a@b.c>\r\nDATA\r\n");
  r.server("250 2.0.0 Ok\r\n503 5.5.1 Error: need MAIL command\r\n");
  r.server("503 5.5.1 Error: need RCPT command\r\n");
  EXPECT_EQ(r.down,
            "550 5.7.1 Sender address <boss@contoso.com> is not allowed for this login\r\n"
            "503 5.5.1 Error: need MAIL command\r\n503 5.5.1 Error: need RCPT command\r\n");
  r.client("RSET\r\nMAIL FROM:<x@fabrikam.com>\r\n");
  EXPECT_TRUE(r.up.ends_with("RSET\r\nMAIL FROM:<x@fabrikam.com>\r\n"));
  EXPECT_EQ(r.f.refused(), 1u);
}

TEST(SmtpSenderFilter, BytesAfterDataWaitForTheReply) {
  run r;
  r.client("MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\nbody\r\n.\r\nQUIT\r\n");
  EXPECT_EQ(r.up, "MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\n");
  EXPECT_TRUE(r.f.waiting());
  r.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  EXPECT_FALSE(r.f.waiting());
  EXPECT_TRUE(r.up.ends_with("DATA\r\nbody\r\n.\r\nQUIT\r\n"));
}

TEST(SmtpSenderFilter, RejectedDataMeansTheNextBytesAreCommands) {
  run r;
  r.client("MAIL FROM:<boss@contoso.com>\r\nDATA\r\nMAIL FROM:<evil@x.y>\r\n");
  r.server("250 Ok\r\n554 5.5.1 Error: no valid recipients\r\n");
  EXPECT_EQ(r.up, "NOOP\r\nDATA\r\nNOOP\r\n");
  EXPECT_EQ(r.f.refused(), 2u);
}

TEST(SmtpSenderFilter, BdatChunksPassByCount) {
  run r;
  std::string chunk = "MAIL FROM:<evil@x.y>\r\n\n\x01\x02";  // looks like a command: it is data
  r.client("MAIL FROM:<scanner@contoso.com> BODY=BINARYMIME\r\nRCPT TO:<a@b.c>\r\nBDAT " +
           std::to_string(chunk.size()) + "\r\n" + chunk + "BDAT 0 LAST\r\n", 4);
  EXPECT_EQ(r.f.refused(), 0u);
  EXPECT_NE(r.up.find(chunk + "BDAT 0 LAST\r\n"), std::string::npos);
}

TEST(SmtpSenderFilter, EmptyMessageAndTerminatorAcrossChunks) {
  run r;
  r.client("MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\n");
  r.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  r.client(".\r\nMAIL FROM:<boss@contoso.com>\r\n", 1);
  EXPECT_TRUE(r.up.ends_with("DATA\r\n.\r\nNOOP\r\n"));
}

TEST(SmtpSenderFilter, GarbageFromServerBreaksTheFilter) {
  run r;
  r.client("NOOP\r\n");
  r.server("hello there\r\n");
  EXPECT_TRUE(r.f.broken());
}

// SMTP smuggling: the filter and the server must agree on where the data ends.
TEST(SmtpSenderFilter, BareLfDotLinesAreNeutralised) {
  run r;
  r.client("MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\n");
  r.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  r.client("x\n.\nMAIL FROM:<evil@x.y>\r\n\r\n.\n\r\n.\r\n");
  EXPECT_TRUE(r.up.ends_with("DATA\r\nx\n..\nMAIL FROM:<evil@x.y>\r\n\r\n..\n\r\n.\r\n")) << r.up;
  EXPECT_EQ(r.f.refused(), 0u);  // it was body text, for the server too
}

TEST(SmtpSenderFilter, LooseBdatSyntaxIsNotForwarded) {
  for (std::string bad : {"BDAT 27 \r\n", "BDAT\t27\r\n", "BDAT  27\r\n", "BDAT 27x\r\n",
                          "BDAT:27\r\n", "BDAT 27 LAST now\r\n"}) {
    run r;
    r.client(bad + "MAIL FROM:<evil@evil.com>\r\n");
    EXPECT_EQ(r.up, "NOOP\r\nNOOP\r\n") << bad;
    r.server("250 Ok\r\n250 Ok\r\n");
    EXPECT_TRUE(r.down.starts_with("501 5.5.4")) << r.down;
    EXPECT_NE(r.down.find("550 5.7.1"), std::string::npos);
  }
}

TEST(SmtpSenderFilter, WhitespaceVariantsOfMailAreChecked) {
  for (std::string v : {"\fMAIL FROM:<e@x.y>\r\n", "MAIL\vFROM:<e@x.y>\r\n", " MAIL FROM:<e@x.y>\r\n",
                        "mail\tfrom:<e@x.y>\r\n", "MAIL FROM:<e@x.y>\n"}) {
    run r;
    r.client(v);
    EXPECT_EQ(r.up, "NOOP\r\n") << v;
  }
}

TEST(SmtpSenderFilter, LoneDotAtTheEndOfAReadWaitsForMore) {
  run r;
  r.client("MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\n");
  r.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  r.client("body\r\n.");  // must return, not spin
  r.client("\r\nQUIT\r\n");
  EXPECT_TRUE(r.up.ends_with("body\r\n.\r\nQUIT\r\n"));
}

// "DATA" ended by a bare LF: a server that answered 354 reads the body from a fresh line, so a
// first line "." ends the (empty) message for it and for the filter alike; the commands after it
// are checked. (Found by fuzz_smtp_sender_filter, found-2026-11-28-bare-lf-between-commands.)
TEST(SmtpSenderFilter, BodyAfterBareLfDataStartsAtALineStart) {
  run r;
  r.client("MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\nDATA\n");
  r.server("250 Ok\r\n250 Ok\r\n354 go\r\n");
  r.client(".\r\nMAIL FROM:<evil@x.y>\r\n");
  EXPECT_TRUE(r.up.ends_with("DATA\n.\r\nNOOP\r\n")) << r.up;
  EXPECT_EQ(r.f.refused(), 1u);
}

// Chunk sizes as a server reads them (Postfix: any digit string that fits an off_t): a large one
// is a chunk, not commands; one beyond 2^63-1 is refused (NOOP + 501) and what follows is checked.
TEST(SmtpSenderFilter, BdatSizesUpToAnOffT) {
  run r;
  r.client("BDAT 0000000000000000000003\r\nabcMAIL FROM:<evil@x.y>\r\n");
  EXPECT_EQ(r.up, "BDAT 0000000000000000000003\r\nabcNOOP\r\n");
  run big;
  big.client("BDAT 9223372036854775808\r\nMAIL FROM:<evil@x.y>\r\n");
  EXPECT_EQ(big.up, "NOOP\r\nNOOP\r\n");
}
