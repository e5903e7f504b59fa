#include "common/base64.hpp"
#include "protocol/imap/login_flow.hpp"
#include "protocol/imap/responses.hpp"

#include <gtest/gtest.h>

#include <random>

using namespace xo::protocol;
using namespace xo::protocol::imap;

namespace {

// Plays the driver: performs writes, TLS and connects successfully, collects what was written,
// and stops at anything that needs input (read, authorize) or ends the flow.
struct driver {
  login_flow flow;
  std::string to_client, to_upstream;
  std::vector<std::string> events;
  bool upstream_sensitive_seen = false;

  explicit driver(flow_options o = {}) : flow(o) {}

  action run() {
    for (int guard = 0; guard < 10000; ++guard) {
      action a = flow.next();
      if (auto* w = std::get_if<write_to>(&a)) {
        (w->to == peer::client ? to_client : to_upstream) += w->bytes;
        if (w->to == peer::upstream && w->sensitive) upstream_sensitive_seen = true;
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
      } else if (auto* c = std::get_if<close_upstream>(&a)) {
        events.push_back("close-upstream");
        (void)c;
      } else {
        return a;
      }
    }
    ADD_FAILURE() << "flow spins";
    return xo::protocol::close{"spin"};
  }
  // Feeds client bytes in chunks, running the flow between them, until it wants something else.
  action feed_client(std::string_view bytes, std::size_t chunk = 1 << 20) {
    action a = run();
    std::size_t pos = 0;
    while (pos < bytes.size()) {
      auto* r = std::get_if<read_from>(&a);
      if (!r || r->from != peer::client) return a;
      auto n = std::min(chunk, bytes.size() - pos);
      flow.on_read(peer::client, bytes.substr(pos, n));
      pos += n;
      a = run();
    }
    return a;
  }
  action feed_upstream(std::string_view bytes) {
    flow.on_read(peer::upstream, bytes);
    return run();
  }
};

auth_outcome ok_outcome() {
  auth_outcome o;
  o.result = auth_outcome::kind::ok;
  o.mailbox = "scanner@contoso.com";
  o.token = xo::secret{"tok"};
  return o;
}

std::string expected_ir() {
  return xo::base64_encode(std::string{"user=scanner@contoso.com\x01" "auth=Bearer tok\x01\x01"});
}

}  // namespace

TEST(ImapLoginFlow, GreetingAdvertisesWhatTheProxyAccepts) {
  driver d;
  auto a = d.run();
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_EQ(d.to_client, "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID IDLE AUTH=PLAIN AUTH=LOGIN] "
                         "xoauth-proxy ready\r\n");
  EXPECT_EQ(d.to_client.find("LOGINDISABLED"), std::string::npos);
}

TEST(ImapLoginFlow, StarttlsAdvertisedOnlyWhenOfferedAndNotActive) {
  flow_options o;
  o.starttls_offered = true;
  driver d{o};
  d.feed_client("a STARTTLS\r\n");
  EXPECT_NE(d.to_client.find(" STARTTLS]"), std::string::npos);
  EXPECT_NE(d.to_client.find("a OK Begin TLS"), std::string::npos);
  ASSERT_EQ(d.events, std::vector<std::string>{"tls-client"});
  d.to_client.clear();
  d.feed_client("b CAPABILITY\r\n");
  EXPECT_EQ(d.to_client.find("STARTTLS"), std::string::npos);
}

TEST(ImapLoginFlow, StarttlsWithPipelinedPlaintextIsRefused) {
  flow_options o;
  o.starttls_offered = true;
  driver d{o};
  auto a = d.feed_client("a STARTTLS\r\nb LOGIN x y\r\n");
  EXPECT_TRUE(std::holds_alternative<xo::protocol::close>(a));
  EXPECT_TRUE(d.events.empty());
  EXPECT_NE(d.to_client.find("a BAD"), std::string::npos);
}

TEST(ImapLoginFlow, StarttlsNotOfferedIsBad) {
  driver d;
  auto a = d.feed_client("a STARTTLS\r\nb NOOP\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_NE(d.to_client.find("a BAD STARTTLS is not available"), std::string::npos);
  EXPECT_NE(d.to_client.find("b OK NOOP"), std::string::npos);
}

TEST(ImapLoginFlow, PreLoginCommandsAnsweredLocally) {
  driver d;
  auto a = d.feed_client("a capability\r\nb NOOP\r\nc ID (\"name\" \"x\")\r\nd SELECT INBOX\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_NE(d.to_client.find("* CAPABILITY IMAP4rev1"), std::string::npos);
  EXPECT_NE(d.to_client.find("a OK CAPABILITY completed"), std::string::npos);
  EXPECT_NE(d.to_client.find("b OK NOOP completed"), std::string::npos);
  EXPECT_NE(d.to_client.find("* ID (\"name\" \"xoauth-proxy\")\r\nc OK"), std::string::npos);
  EXPECT_NE(d.to_client.find("d BAD"), std::string::npos);
  a = d.feed_client("e LOGOUT\r\n");
  EXPECT_TRUE(std::holds_alternative<xo::protocol::close>(a));
  EXPECT_NE(d.to_client.find("* BYE"), std::string::npos);
  EXPECT_NE(d.to_client.find("e OK LOGOUT completed"), std::string::npos);
}

// The whole success path, fed whole, byte by byte and in random chunks: same result each time.
TEST(ImapLoginFlow, LoginToSpliceSameForAnyChunking) {
  const std::string script = "a1 LOGIN {19}\r\nscanner@contoso.com \"pa ss\\\"w\\\\rd\"\r\nb SELECT INBOX\r\n";
  std::mt19937 rng{7};
  for (std::size_t chunk : {std::size_t{1}, std::size_t{3}, std::size_t{1000}, std::size_t{0}}) {
    driver d;
    std::size_t c = chunk ? chunk : 1 + rng() % 9;
    auto a = d.feed_client(script, c);
    auto* auth = std::get_if<authorize>(&a);
    ASSERT_NE(auth, nullptr) << chunk;
    EXPECT_EQ(auth->user, "scanner@contoso.com");
    EXPECT_EQ(auth->password.reveal(), "pa ss\"w\\rd");
    auto continuations = d.to_client.find("+ Ready for literal data") != std::string::npos;
    EXPECT_EQ(continuations, c < 30) << d.to_client;
    d.flow.on_authorized(ok_outcome());
    a = d.run();
    ASSERT_TRUE(std::holds_alternative<read_from>(a));
    EXPECT_EQ(d.events, std::vector<std::string>{"connect"});
    a = d.feed_upstream("* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2] Dovecot ready.\r\n");
    EXPECT_EQ(d.to_upstream, "xo3 AUTHENTICATE XOAUTH2 " + expected_ir() + "\r\n");
    EXPECT_TRUE(d.upstream_sensitive_seen);
    a = d.feed_upstream("xo3 OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n* 1 EXISTS\r\n");
    auto* sp = std::get_if<splice>(&a);
    ASSERT_NE(sp, nullptr);
    // Only what was read before the login is held; the rest is still in the socket.
    if (c == 1000) EXPECT_EQ(sp->client_leftover, "b SELECT INBOX\r\n");
    else EXPECT_TRUE(std::string{"b SELECT INBOX\r\n"}.starts_with(sp->client_leftover));
    EXPECT_EQ(sp->upstream_leftover, "* 1 EXISTS\r\n");
    EXPECT_TRUE(d.to_client.ends_with("a1 OK [CAPABILITY IMAP4rev1 IDLE MOVE] Logged in\r\n"));
  }
}

TEST(ImapLoginFlow, UpstreamWithoutSaslIrGetsContinuationAndChallengeIsAnswered) {
  driver d;
  auto a = d.feed_client("t LOGIN u p\r\n");
  ASSERT_TRUE(std::holds_alternative<authorize>(a));
  d.flow.on_authorized(ok_outcome());
  d.run();
  d.feed_upstream("* OK ready\r\n");
  EXPECT_EQ(d.to_upstream, "xo2 CAPABILITY\r\n");
  d.to_upstream.clear();
  d.feed_upstream("* CAPABILITY IMAP4rev1 AUTH=XOAUTH2\r\nxo2 OK done\r\n");
  EXPECT_EQ(d.to_upstream, "xo3 AUTHENTICATE XOAUTH2\r\n");
  d.to_upstream.clear();
  d.feed_upstream("+ \r\n");
  EXPECT_EQ(d.to_upstream, expected_ir() + "\r\n");
  d.to_upstream.clear();
  d.feed_upstream("+ eyJzdGF0dXMiOiI0MDEifQ==\r\n");
  EXPECT_EQ(d.to_upstream, "\r\n");
  EXPECT_EQ(d.to_client.find("+ eyJ"), std::string::npos);  // never forwarded
  a = d.feed_upstream("xo3 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));  // the client may try again
  EXPECT_NE(d.to_client.find("t NO [AUTHORIZATIONFAILED]"), std::string::npos);
  EXPECT_EQ(d.events, (std::vector<std::string>{"connect", "token-rejected", "close-upstream"}));
}

TEST(ImapLoginFlow, UpstreamStarttlsThenCapabilityAgain) {
  flow_options o;
  o.upstream_starttls = true;
  driver d{o};
  d.feed_client("t LOGIN u p\r\n");
  d.flow.on_authorized(ok_outcome());
  d.run();
  d.feed_upstream("* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n");
  EXPECT_EQ(d.to_upstream, "xo1 STARTTLS\r\n");
  d.to_upstream.clear();
  d.feed_upstream("xo1 OK Begin TLS\r\n");
  EXPECT_EQ(d.events, (std::vector<std::string>{"connect", "tls-upstream"}));
  EXPECT_EQ(d.to_upstream, "xo2 CAPABILITY\r\n");
}

TEST(ImapLoginFlow, UpstreamDataAfterStarttlsReplyIsRefused) {
  flow_options o;
  o.upstream_starttls = true;
  driver d{o};
  d.feed_client("t LOGIN u p\r\n");
  d.flow.on_authorized(ok_outcome());
  d.run();
  d.feed_upstream("* OK ready\r\n");
  auto a = d.feed_upstream("xo1 OK Begin TLS\r\n* injected\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_NE(d.to_client.find("t NO [UNAVAILABLE]"), std::string::npos);
  EXPECT_EQ(std::count(d.events.begin(), d.events.end(), "tls-upstream"), 0);
}

TEST(ImapLoginFlow, FailureRepliesByKind) {
  struct c { auth_outcome::kind k; const char* reply; };
  for (auto [k, text] : {c{auth_outcome::kind::bad_credentials, "a NO [AUTHENTICATIONFAILED]"},
                         c{auth_outcome::kind::temporary, "a NO [UNAVAILABLE]"},
                         c{auth_outcome::kind::contact_admin, "a NO [CONTACTADMIN]"}}) {
    driver d;
    d.feed_client("a LOGIN u p\r\n");
    auth_outcome o;
    o.result = k;
    d.flow.on_authorized(std::move(o));
    auto a = d.run();
    EXPECT_TRUE(std::holds_alternative<read_from>(a));
    EXPECT_NE(d.to_client.find(text), std::string::npos) << d.to_client;
  }
}

TEST(ImapLoginFlow, ThreeFailuresCloseTheConnection) {
  driver d;
  action a;
  for (int i = 0; i < 3; ++i) {
    a = d.feed_client("a LOGIN u p\r\n");
    ASSERT_TRUE(std::holds_alternative<authorize>(a));
    d.flow.on_authorized(auth_outcome{});
    a = d.run();
  }
  EXPECT_TRUE(std::holds_alternative<xo::protocol::close>(a));
  EXPECT_NE(d.to_client.find("* BYE Too many authentication failures"), std::string::npos);
}

TEST(ImapLoginFlow, UpstreamUnavailableIsTemporary) {
  driver d;
  d.feed_client("a LOGIN u p\r\n");
  d.flow.on_authorized(ok_outcome());
  auto a = d.flow.next();
  ASSERT_TRUE(std::holds_alternative<connect_upstream>(a));
  d.flow.on_io_done(false);
  a = d.run();
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_NE(d.to_client.find("a NO [UNAVAILABLE]"), std::string::npos);
}

TEST(ImapLoginFlow, AuthenticatePlainWithAndWithoutInitialResponse) {
  auto ir = xo::base64_encode(std::string{"\0alice\0secret", 13});
  {
    driver d;
    auto a = d.feed_client("a AUTHENTICATE PLAIN " + ir + "\r\n");
    auto* au = std::get_if<authorize>(&a);
    ASSERT_NE(au, nullptr);
    EXPECT_EQ(au->user, "alice");
    EXPECT_EQ(au->password.reveal(), "secret");
    EXPECT_TRUE(au->authzid.empty());
  }
  {
    driver d;
    auto a = d.feed_client("a AUTHENTICATE plain\r\n");
    EXPECT_TRUE(d.to_client.ends_with("+ \r\n"));
    a = d.feed_client(ir + "\r\n");
    ASSERT_TRUE(std::holds_alternative<authorize>(a));
  }
  {
    driver d;  // authzid is passed on for the policy decision
    auto a = d.feed_client("a AUTHENTICATE PLAIN " +
                           xo::base64_encode(std::string{"shared\0alice\0secret", 19}) + "\r\n");
    ASSERT_TRUE(std::holds_alternative<authorize>(a));
    EXPECT_EQ(std::get<authorize>(a).authzid, "shared");
  }
}

TEST(ImapLoginFlow, AuthenticateCancelBadBase64AndEmpty) {
  driver d;
  d.feed_client("a AUTHENTICATE PLAIN\r\n");
  auto a = d.feed_client("*\r\n");
  EXPECT_NE(d.to_client.find("a BAD Authentication cancelled"), std::string::npos);
  a = d.feed_client("b AUTHENTICATE PLAIN !!!!\r\n");
  EXPECT_NE(d.to_client.find("b BAD Invalid base64"), std::string::npos);
  a = d.feed_client("c AUTHENTICATE PLAIN =\r\n");
  EXPECT_NE(d.to_client.find("c NO [AUTHENTICATIONFAILED]"), std::string::npos);
  a = d.feed_client("d AUTHENTICATE GSSAPI\r\n");
  EXPECT_NE(d.to_client.find("d NO [CANNOT]"), std::string::npos);
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
}

TEST(ImapLoginFlow, AuthenticateLoginTwoSteps) {
  driver d;
  d.feed_client("a AUTHENTICATE LOGIN\r\n");
  EXPECT_TRUE(d.to_client.ends_with("+ VXNlcm5hbWU6\r\n"));
  d.feed_client(xo::base64_encode("j\xC3\xBCrgen") + "\r\n");
  EXPECT_TRUE(d.to_client.ends_with("+ UGFzc3dvcmQ6\r\n"));
  auto a = d.feed_client(xo::base64_encode("p\xC3\xA4ss") + "\r\n");
  auto* au = std::get_if<authorize>(&a);
  ASSERT_NE(au, nullptr);
  EXPECT_EQ(au->user, "j\xC3\xBCrgen");
  EXPECT_EQ(au->password.reveal(), "p\xC3\xA4ss");
}

TEST(ImapLoginFlow, LoginWithWrongArgumentCountIsBad) {
  driver d;
  auto a = d.feed_client("a LOGIN one\r\nb LOGIN one two three\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_NE(d.to_client.find("a BAD"), std::string::npos);
  EXPECT_NE(d.to_client.find("b BAD"), std::string::npos);
}

TEST(ImapLoginFlow, ClientDisconnectCloses) {
  driver d;
  auto a = d.run();
  ASSERT_TRUE(std::holds_alternative<read_from>(a));
  d.flow.on_io_done(false);
  EXPECT_TRUE(std::holds_alternative<xo::protocol::close>(d.run()));
}

TEST(ImapLoginFlow, TaggedAnswerBeforeTheTokenIsAnUpstreamFailure) {
  for (const char* answer : {"xo3 OK done\r\n", "xo3 NO [CANNOT] no XOAUTH2 here\r\n"}) {
    driver d;
    d.feed_client("t LOGIN u p\r\n");
    d.flow.on_authorized(ok_outcome());
    d.run();
    d.feed_upstream("* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2] ready\r\n");
    auto a = d.feed_upstream(answer);
    EXPECT_TRUE(std::holds_alternative<read_from>(a)) << answer;
    EXPECT_NE(d.to_client.find("t NO [UNAVAILABLE]"), std::string::npos) << answer;
    EXPECT_EQ(std::count(d.events.begin(), d.events.end(), "token-rejected"), 0) << answer;
  }
}
