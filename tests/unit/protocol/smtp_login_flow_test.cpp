#include "common/base64.hpp"
#include "protocol/smtp/login_flow.hpp"
#include "protocol/smtp/reply_parser.hpp"

#include <gtest/gtest.h>

#include <random>

using namespace xo::protocol;
using namespace xo::protocol::smtp;
using close_action = xo::protocol::close;

namespace {

// Plays the driver (see imap_login_flow_test.cpp).
struct driver {
  login_flow flow;
  std::string to_client, to_upstream;
  std::vector<std::string> events;
  bool sensitive_seen = false;

  explicit driver(flow_options o) : flow(std::move(o)) {}

  action run() {
    for (int guard = 0; guard < 10000; ++guard) {
      action a = flow.next();
      if (auto* w = std::get_if<write_to>(&a)) {
        (w->to == peer::client ? to_client : to_upstream) += w->bytes;
        if (w->sensitive) sensitive_seen = true;
        flow.on_io_done(true);
      } else if (auto* t = std::get_if<start_tls>(&a)) {
        events.push_back(t->on == peer::client ? "tls-client" : "tls-upstream");
        flow.on_io_done(true);
      } else if (std::holds_alternative<connect_upstream>(a)) {
        events.push_back("connect");
        flow.on_io_done(true);
      } else if (std::holds_alternative<token_rejected>(a)) {
        events.push_back("token-rejected");
        flow.on_io_done(true);
      } else if (std::holds_alternative<close_upstream>(a)) {
        events.push_back("close-upstream");
      } else {
        return a;
      }
    }
    ADD_FAILURE() << "flow spins";
    return close_action{"spin"};
  }
  action feed(peer p, std::string_view bytes, std::size_t chunk = 1 << 20) {
    action a = run();
    std::size_t pos = 0;
    while (pos < bytes.size()) {
      auto* r = std::get_if<read_from>(&a);
      if (!r || r->from != p) return a;
      auto n = std::min(chunk, bytes.size() - pos);
      flow.on_read(p, bytes.substr(pos, n));
      pos += n;
      a = run();
    }
    return a;
  }
  // Upstream greeting, EHLO, STARTTLS, EHLO: the preparation every session starts with.
  action prepare() {
    feed(peer::upstream, "220 mx.test ESMTP\r\n");
    feed(peer::upstream, "250-mx.test\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
    feed(peer::upstream, "220 2.0.0 Ready\r\n");
    return feed(peer::upstream,
                "250-mx.test\r\n250-SIZE 157286400\r\n250-8BITMIME\r\n250-PIPELINING\r\n"
                "250-CHUNKING\r\n250-AUTH LOGIN XOAUTH2\r\n250-ENHANCEDSTATUSCODES\r\n"
                "250-DSN\r\n250 SMTPUTF8\r\n");
  }
};

flow_options opts() {
  flow_options o;
  o.hostname = "proxy.test";
  return o;
}

auth_outcome ok_outcome() {
  auth_outcome o;
  o.result = auth_outcome::kind::ok;
  o.mailbox = "scanner@contoso.com";
  o.token = xo::secret{std::string(600, 't')};  // long enough to forbid the initial response
  return o;
}

std::string plain_ir(std::string_view user, std::string_view pw) {
  std::string raw;
  raw.push_back('\0');
  raw.append(user).push_back('\0');
  raw.append(pw);
  return xo::base64_encode(raw);
}

}  // namespace

TEST(SmtpReplyParser, MultiLineRepliesInAnyChunks) {
  std::string in = "250-mx.test\r\n250-SIZE 10\r\n250 AUTH LOGIN XOAUTH2\r\n";
  for (std::size_t chunk : {1u, 2u, 7u, 1000u}) {
    reply_parser p;
    std::size_t pos = 0;
    reply_parser::status st = reply_parser::status::need_more;
    while (st == reply_parser::status::need_more && pos < in.size()) {
      p.append(std::string_view{in}.substr(pos, chunk));
      pos += chunk;
      st = p.poll();
    }
    ASSERT_EQ(st, reply_parser::status::ready) << chunk;
    auto r = p.take();
    EXPECT_EQ(r.code, 250);
    ASSERT_EQ(r.lines.size(), 3u);
    EXPECT_TRUE(parse_ehlo(r).has("auth"));
    EXPECT_EQ(*parse_ehlo(r).params("SIZE"), "10");
    EXPECT_EQ(r.raw, in);
  }
}

TEST(SmtpReplyParser, RejectsGarbageAndMixedCodes) {
  for (const char* in : {"hello\r\n", "250-a\r\n251 b\r\n", "2x0 a\r\n", "250_x\r\n"}) {
    reply_parser p;
    p.append(in);
    EXPECT_EQ(p.poll(), reply_parser::status::error) << in;
  }
  reply_parser p;
  p.append("220\r\n");  // bare code is a valid final line
  EXPECT_EQ(p.poll(), reply_parser::status::ready);
}

TEST(SmtpLoginFlow, PreparesUpstreamThenGreetsAndAdvertises) {
  driver d{opts()};
  auto a = d.prepare();
  EXPECT_EQ(d.to_upstream, "EHLO proxy.test\r\nSTARTTLS\r\nEHLO proxy.test\r\n");
  EXPECT_EQ(d.events, (std::vector<std::string>{"connect", "tls-upstream"}));
  EXPECT_EQ(d.to_client, "220 proxy.test ESMTP xoauth-proxy ready\r\n");
  ASSERT_TRUE(std::holds_alternative<read_from>(a));
  d.to_client.clear();
  d.feed(peer::client, "EHLO printer\r\n");
  EXPECT_EQ(d.to_client,
            "250-proxy.test\r\n250-SIZE 157286400\r\n250-8BITMIME\r\n250-PIPELINING\r\n"
            "250-SMTPUTF8\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n"
            "250 AUTH PLAIN LOGIN\r\n");
}

TEST(SmtpLoginFlow, UpstreamWithoutStarttlsIsRefusedAndNothingSentInClear) {
  driver d{opts()};
  d.feed(peer::upstream, "220 mx.test ESMTP\r\n");
  auto a = d.feed(peer::upstream, "250-mx.test\r\n250 AUTH PLAIN LOGIN\r\n");
  EXPECT_TRUE(std::holds_alternative<close_action>(a));
  EXPECT_EQ(d.to_client, "421 4.3.2 Mail server unavailable, try again later\r\n");
  EXPECT_EQ(d.to_upstream, "EHLO proxy.test\r\n");
}

// AUTH PLAIN with pipelined MAIL/RCPT/DATA: held until the upstream login succeeded.
TEST(SmtpLoginFlow, PipelinedCommandsHeldUntilUpstreamLogin) {
  const std::string script = "EHLO printer\r\nAUTH PLAIN " + plain_ir("scanner@contoso.com", "pw") +
                             "\r\nMAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\n";
  for (std::size_t chunk : {std::size_t{1}, std::size_t{5}, std::size_t{4096}}) {
    driver d{opts()};
    d.prepare();
    auto a = d.feed(peer::client, script, chunk);
    auto* au = std::get_if<authorize>(&a);
    ASSERT_NE(au, nullptr);
    EXPECT_EQ(au->user, "scanner@contoso.com");
    EXPECT_EQ(au->password.reveal(), "pw");
    d.to_upstream.clear();
    d.flow.on_authorized(ok_outcome());
    d.run();
    EXPECT_EQ(d.to_upstream, "AUTH XOAUTH2\r\n");
    d.to_upstream.clear();
    d.feed(peer::upstream, "334 \r\n");
    EXPECT_TRUE(d.sensitive_seen);
    EXPECT_EQ(d.to_upstream.find("MAIL FROM"), std::string::npos);
    a = d.feed(peer::upstream, "235 2.7.0 Authentication successful\r\n");
    auto* sp = std::get_if<splice>(&a);
    ASSERT_NE(sp, nullptr);
    if (chunk == 4096) {
      EXPECT_EQ(sp->client_leftover, "MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<a@b.c>\r\nDATA\r\n");
    }
    EXPECT_TRUE(d.to_client.ends_with("235 2.7.0 Authentication successful\r\n"));
  }
}

TEST(SmtpLoginFlow, AuthLoginWithAndWithoutInitialUsername) {
  for (bool initial : {false, true}) {
    driver d{opts()};
    d.prepare();
    d.feed(peer::client, "EHLO x\r\n");
    d.to_client.clear();
    if (initial) {
      d.feed(peer::client, "AUTH LOGIN " + xo::base64_encode("bob@contoso.com") + "\r\n");
      EXPECT_EQ(d.to_client, "334 UGFzc3dvcmQ6\r\n");
    } else {
      d.feed(peer::client, "AUTH LOGIN\r\n");
      EXPECT_EQ(d.to_client, "334 VXNlcm5hbWU6\r\n");
      d.feed(peer::client, xo::base64_encode("bob@contoso.com") + "\r\n");
    }
    auto a = d.feed(peer::client, xo::base64_encode("s3cret pw") + "\r\n");
    auto* au = std::get_if<authorize>(&a);
    ASSERT_NE(au, nullptr);
    EXPECT_EQ(au->user, "bob@contoso.com");
    EXPECT_EQ(au->password.reveal(), "s3cret pw");
  }
}

TEST(SmtpLoginFlow, CancelBadBase64AndUnknownMechanism) {
  driver d{opts()};
  d.prepare();
  d.feed(peer::client, "EHLO x\r\n");
  d.to_client.clear();
  d.feed(peer::client, "AUTH PLAIN\r\n");
  EXPECT_EQ(d.to_client, "334 \r\n");
  d.feed(peer::client, "*\r\n");
  EXPECT_TRUE(d.to_client.ends_with("501 5.7.0 Authentication cancelled\r\n"));
  d.feed(peer::client, "AUTH LOGIN %%%\r\n");
  EXPECT_TRUE(d.to_client.ends_with("501 5.5.2 Cannot decode base64 response\r\n"));
  d.feed(peer::client, "AUTH CRAM-MD5\r\n");
  EXPECT_TRUE(d.to_client.ends_with("504 5.5.4 Unrecognized authentication type\r\n"));
  auto a = d.feed(peer::client, "AUTH PLAIN =\r\n");
  EXPECT_TRUE(d.to_client.ends_with("535 5.7.8 Authentication credentials invalid\r\n"));
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
}

TEST(SmtpLoginFlow, MailBeforeAuthNeedsAuthentication) {
  driver d{opts()};
  d.prepare();
  d.feed(peer::client, "HELO x\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<a@b.c>\r\nNOOP\r\nRSET\r\nHELP\r\n");
  EXPECT_NE(d.to_client.find("250 proxy.test\r\n"), std::string::npos);
  EXPECT_NE(d.to_client.find("530 5.7.0 Authentication required\r\n530 5.7.0"), std::string::npos);
  EXPECT_NE(d.to_client.find("250 2.0.0 OK\r\n250 2.0.0 OK\r\n214"), std::string::npos);
  auto a = d.feed(peer::client, "QUIT\r\n");
  EXPECT_TRUE(std::holds_alternative<close_action>(a));
  EXPECT_TRUE(d.to_client.ends_with("221 2.0.0 Bye\r\n"));
}

TEST(SmtpLoginFlow, StarttlsOfferedAndPipelinedPlaintextRefused) {
  auto o = opts();
  o.starttls_offered = true;
  {
    driver d{o};
    d.prepare();
    d.feed(peer::client, "EHLO x\r\n");
    EXPECT_NE(d.to_client.find("250 STARTTLS\r\n"), std::string::npos);
    d.feed(peer::client, "STARTTLS\r\n");
    EXPECT_TRUE(d.to_client.ends_with("220 2.0.0 Ready to start TLS\r\n"));
    EXPECT_EQ(d.events.back(), "tls-client");
    d.to_client.clear();
    d.feed(peer::client, "EHLO x\r\n");
    EXPECT_EQ(d.to_client.find("STARTTLS"), std::string::npos);
  }
  {
    driver d{o};
    d.prepare();
    auto a = d.feed(peer::client, "EHLO x\r\nSTARTTLS\r\nAUTH PLAIN AAAA\r\n");
    EXPECT_TRUE(std::holds_alternative<close_action>(a));
    EXPECT_NE(d.to_client.find("554 5.5.1"), std::string::npos);
  }
  {
    driver d{opts()};
    d.prepare();
    d.feed(peer::client, "EHLO x\r\nSTARTTLS\r\n");
    EXPECT_TRUE(d.to_client.ends_with("454 4.7.0 TLS not available\r\n"));
  }
}

TEST(SmtpLoginFlow, UpstreamChallengeAnsweredAndRefusalRelayed) {
  driver d{opts()};
  d.prepare();
  auto a = d.feed(peer::client, "EHLO x\r\nAUTH PLAIN " + plain_ir("u@c.com", "p") + "\r\n");
  ASSERT_TRUE(std::holds_alternative<authorize>(a));
  d.flow.on_authorized(ok_outcome());
  d.run();
  d.feed(peer::upstream, "334 \r\n");
  d.to_upstream.clear();
  d.feed(peer::upstream, "334 eyJzdGF0dXMiOiI0MDEifQ==\r\n");
  EXPECT_EQ(d.to_upstream, "\r\n");
  EXPECT_EQ(d.to_client.find("eyJ"), std::string::npos);
  a = d.feed(peer::upstream, "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_TRUE(d.to_client.ends_with("535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant.\r\n"));
  EXPECT_NE(std::find(d.events.begin(), d.events.end(), "token-rejected"), d.events.end());
}

TEST(SmtpLoginFlow, FailureRepliesByKind) {
  struct c { auth_outcome::kind k; const char* reply; };
  for (auto [k, text] : {c{auth_outcome::kind::bad_credentials, "535 5.7.8"},
                         c{auth_outcome::kind::temporary, "454 4.7.0"},
                         c{auth_outcome::kind::contact_admin, "454 4.7.0"}}) {
    driver d{opts()};
    d.prepare();
    d.feed(peer::client, "EHLO x\r\nAUTH PLAIN " + plain_ir("u@c.com", "p") + "\r\n");
    auth_outcome o;
    o.result = k;
    d.flow.on_authorized(std::move(o));
    d.run();
    EXPECT_NE(d.to_client.rfind(text), std::string::npos) << d.to_client;
  }
}

TEST(SmtpLoginFlow, AnonymousSenderMappedWhenAllowed) {
  auto o = opts();
  o.anonymous_account = "scanner@contoso.com";
  driver d{o};
  d.prepare();
  auto a = d.feed(peer::client, "EHLO printer\r\nMAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<x@y.z>\r\n");
  auto* au = std::get_if<authorize>(&a);
  ASSERT_NE(au, nullptr);
  EXPECT_TRUE(au->anonymous);
  EXPECT_EQ(au->user, "scanner@contoso.com");
  d.flow.on_authorized(ok_outcome());
  d.run();
  d.feed(peer::upstream, "334 \r\n");
  a = d.feed(peer::upstream, "235 2.7.0 OK\r\n");
  auto* sp = std::get_if<splice>(&a);
  ASSERT_NE(sp, nullptr);
  EXPECT_EQ(sp->client_leftover, "MAIL FROM:<scanner@contoso.com>\r\nRCPT TO:<x@y.z>\r\n");
  EXPECT_EQ(d.to_client.find("235"), std::string::npos);  // the client never sent AUTH
}

TEST(SmtpLoginFlow, UpstreamDownAtConnectGives421) {
  driver d{opts()};
  auto a = d.flow.next();
  ASSERT_TRUE(std::holds_alternative<connect_upstream>(a));
  d.flow.on_io_done(false);
  a = d.run();
  EXPECT_TRUE(std::holds_alternative<close_action>(a));
  EXPECT_EQ(d.to_client, "421 4.3.2 Mail server unavailable, try again later\r\n");
}

TEST(SmtpLoginFlow, OverlongLineRefused) {
  driver d{opts()};
  d.prepare();
  auto a = d.feed(peer::client, std::string(20000, 'A'));
  EXPECT_TRUE(std::holds_alternative<close_action>(a));
  EXPECT_TRUE(d.to_client.ends_with("500 5.5.6 Line too long\r\n"));
}

TEST(SmtpLoginFlow, TwelveKilobyteAuthLineAccepted) {
  driver d{opts()};
  d.prepare();
  auto a = d.feed(peer::client, "EHLO x\r\nAUTH PLAIN " + plain_ir("u@c.com", std::string(1000, 'p')) +
                                    std::string(0, ' ') + "\r\n");
  EXPECT_TRUE(std::holds_alternative<authorize>(a));
}

TEST(SmtpLoginFlow, OverlongCompleteLineRefusedToo) {
  driver d{opts()};
  d.prepare();
  auto a = d.feed(peer::client, "EHLO x\r\nNOOP " + std::string(20000, 'x') + "\r\n");
  EXPECT_TRUE(std::holds_alternative<close_action>(a));
  EXPECT_TRUE(d.to_client.ends_with("500 5.5.6 Line too long\r\n"));
}
