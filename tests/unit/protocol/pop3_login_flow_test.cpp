#include "common/base64.hpp"
#include "protocol/pop3/login_flow.hpp"
#include "protocol/pop3/responses.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

using namespace xo::protocol;
using namespace xo::protocol::pop3;

namespace {

// Plays the driver: performs writes, TLS and connects successfully, collects what was written,
// and stops at anything that needs input (read, authorize) or ends the flow.
struct driver {
  login_flow flow;
  std::string to_client, to_upstream;
  std::vector<std::string> events;
  std::vector<token_rejected> rejections;
  bool token_sent_sensitive = false;

  explicit driver(flow_options o = {}) : flow(o) {}

  action run() {
    for (int guard = 0; guard < 10000; ++guard) {
      action a = flow.next();
      if (auto* w = std::get_if<write_to>(&a)) {
        (w->to == peer::client ? to_client : to_upstream) += w->bytes;
        if (w->to == peer::upstream && w->sensitive) token_sent_sensitive = true;
        flow.on_io_done(true);
      } else if (auto* t = std::get_if<start_tls>(&a)) {
        events.push_back(t->on == peer::client ? "tls-client" : "tls-upstream");
        flow.on_io_done(true);
      } else if (std::holds_alternative<connect_upstream>(a)) {
        events.push_back("connect");
        flow.on_io_done(true);
      } else if (auto* tr = std::get_if<token_rejected>(&a)) {
        events.push_back("token-rejected");
        rejections.push_back(*tr);
        flow.on_io_done(true);
      } else if (std::holds_alternative<close_upstream>(a)) {
        events.push_back("close-upstream");
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
  // Logs in with USER/PASS and a good local password; stops when the upstream must speak.
  void login_ok(std::string_view pipelined = {}) {
    auto a = feed_client("USER scanner\r\nPASS secret\r\n" + std::string{pipelined});
    ASSERT_TRUE(std::holds_alternative<authorize>(a));
    flow.on_authorized(ok_outcome());
    a = run();
    ASSERT_TRUE(std::holds_alternative<read_from>(a));
  }
  static auth_outcome ok_outcome() {
    auth_outcome o;
    o.result = auth_outcome::kind::ok;
    o.mailbox = "scanner@contoso.com";
    o.token = xo::secret{"tok"};
    return o;
  }
};

std::string expected_xoauth2() {
  return xo::base64_encode(std::string{"user=scanner@contoso.com\x01" "auth=Bearer tok\x01\x01"});
}

std::string b64(std::string_view raw) { return xo::base64_encode(raw); }

bool is_close(const action& a) { return std::holds_alternative<xo::protocol::close>(a); }

const std::string unavailable = "-ERR [SYS/TEMP] Mail server unavailable, try again later\r\n";

const std::string capa_plain =
    "+OK Capability list follows\r\nUSER\r\nSASL PLAIN LOGIN\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
    "PIPELINING\r\nTOP\r\nUIDL\r\n.\r\n";

}  // namespace

TEST(Pop3LoginFlow, GreetingHasNoApopTimestamp) {
  driver d;
  auto a = d.run();
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_EQ(d.to_client, "+OK xoauth-proxy POP3 ready\r\n");
  EXPECT_EQ(d.to_client.find('<'), std::string::npos);
}

TEST(Pop3LoginFlow, CapaWithoutStls) {
  driver d;
  d.run();
  d.to_client.clear();
  auto a = d.feed_client("capa\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_EQ(d.to_client, capa_plain);
}

TEST(Pop3LoginFlow, CapaListsStlsOnlyWhenOfferedAndNotActive) {
  flow_options o;
  o.starttls_offered = true;
  driver d{o};
  d.run();
  d.to_client.clear();
  d.feed_client("CAPA\r\n");
  EXPECT_NE(d.to_client.find("PIPELINING\r\nSTLS\r\nTOP\r\n"), std::string::npos);
  d.feed_client("STLS\r\n");
  EXPECT_TRUE(d.to_client.ends_with("+OK Begin TLS negotiation\r\n"));
  ASSERT_EQ(d.events, std::vector<std::string>{"tls-client"});
  d.to_client.clear();
  d.feed_client("CAPA\r\n");
  EXPECT_EQ(d.to_client, capa_plain);
  d.to_client.clear();
  d.feed_client("STLS\r\n");
  EXPECT_EQ(d.to_client, "-ERR TLS is already active\r\n");

  flow_options implicit;
  implicit.starttls_offered = true;
  implicit.client_tls_active = true;
  driver i{implicit};
  i.feed_client("CAPA\r\n");
  EXPECT_EQ(i.to_client.find("STLS"), std::string::npos);
}

TEST(Pop3LoginFlow, StlsNotOfferedIsRefusedAndSessionGoesOn) {
  driver d;
  auto a = d.feed_client("STLS\r\nCAPA\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_NE(d.to_client.find("-ERR STLS not available\r\n+OK Capability"), std::string::npos);
  EXPECT_TRUE(d.events.empty());
}

TEST(Pop3LoginFlow, StlsWithPipelinedBytesIsRefused) {
  flow_options o;
  o.starttls_offered = true;
  driver d{o};
  auto a = d.feed_client("STLS\r\nUSER evil\r\n");
  EXPECT_TRUE(is_close(a));
  EXPECT_TRUE(d.events.empty());
  EXPECT_TRUE(d.to_client.ends_with("-ERR Data pipelined after STLS\r\n"));
}

TEST(Pop3LoginFlow, StlsForgetsUserGivenInPlaintext) {
  flow_options o;
  o.starttls_offered = true;
  driver d{o};
  d.feed_client("USER alice\r\n");
  d.feed_client("STLS\r\n");
  d.to_client.clear();
  auto a = d.feed_client("PASS secret\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_EQ(d.to_client, "-ERR USER first\r\n");
}

// The whole success path, fed whole, byte by byte and in random chunks: same result each time.
TEST(Pop3LoginFlow, LoginToSpliceSameForAnyChunking) {
  const std::string script = "user scanner@contoso.com\r\npass  pa ss\"w\\rd \r\nSTAT\r\n";
  std::mt19937 rng{7};
  for (std::size_t chunk : {std::size_t{1}, std::size_t{3}, std::size_t{1000}, std::size_t{0}}) {
    driver d;
    std::size_t c = chunk ? chunk : 1 + rng() % 9;
    auto a = d.feed_client(script, c);
    auto* auth = std::get_if<authorize>(&a);
    ASSERT_NE(auth, nullptr) << chunk;
    EXPECT_EQ(auth->user, "scanner@contoso.com");
    EXPECT_EQ(auth->password.reveal(), " pa ss\"w\\rd ");
    EXPECT_TRUE(auth->authzid.empty());
    EXPECT_EQ(d.flow.user(), "scanner@contoso.com");
    EXPECT_EQ(d.to_client, "+OK xoauth-proxy POP3 ready\r\n+OK Send your password\r\n");
    d.flow.on_authorized(driver::ok_outcome());
    a = d.run();
    ASSERT_TRUE(std::holds_alternative<read_from>(a));
    EXPECT_EQ(std::get<read_from>(a).from, peer::upstream);
    EXPECT_EQ(d.events, std::vector<std::string>{"connect"});
    d.feed_upstream("+OK The Microsoft Exchange POP3 service is ready.\r\n");
    EXPECT_EQ(d.to_upstream, "AUTH XOAUTH2\r\n");  // never an initial response (RFC 2449 §4)
    EXPECT_FALSE(d.token_sent_sensitive);
    d.feed_upstream("+ \r\n");
    EXPECT_EQ(d.to_upstream, "AUTH XOAUTH2\r\n" + expected_xoauth2() + "\r\n");
    EXPECT_TRUE(d.token_sent_sensitive);
    a = d.feed_upstream("+OK User successfully authenticated.\r\n");
    auto* sp = std::get_if<splice>(&a);
    ASSERT_NE(sp, nullptr);
    // Only what was read before the login is held; the rest is still in the socket.
    if (c == 1000) EXPECT_EQ(sp->client_leftover, "STAT\r\n");
    else EXPECT_TRUE(std::string{"STAT\r\n"}.starts_with(sp->client_leftover));
    EXPECT_EQ(sp->upstream_leftover, "");
    EXPECT_TRUE(d.to_client.ends_with("\r\n+OK User successfully authenticated.\r\n"));
  }
}

TEST(Pop3LoginFlow, PipelinedCommandsAfterPassAreHeldForTheRelay) {
  driver d;
  d.login_ok("STAT\r\nLIST\r\nRET");
  d.feed_upstream("+OK ready\r\n");
  d.feed_upstream("+\r\n");  // a bare "+" continuation works too
  EXPECT_EQ(d.to_upstream, "AUTH XOAUTH2\r\n" + expected_xoauth2() + "\r\n");
  auto a = d.feed_upstream("+OK Logged in\r\n+OK extra\r\n");
  auto* sp = std::get_if<splice>(&a);
  ASSERT_NE(sp, nullptr);
  EXPECT_EQ(sp->client_leftover, "STAT\r\nLIST\r\nRET");
  EXPECT_EQ(sp->upstream_leftover, "+OK extra\r\n");
  EXPECT_EQ(d.to_client.find("Not authenticated"), std::string::npos);
}

TEST(Pop3LoginFlow, UserAndPassKeepEverySpace) {
  driver d;
  auto a = d.feed_client("USER  j\xC3\xBCrgen \r\nPASS   lead in ter nal trail   \r\n");
  auto* au = std::get_if<authorize>(&a);
  ASSERT_NE(au, nullptr);
  EXPECT_EQ(au->user, " j\xC3\xBCrgen ");
  EXPECT_EQ(au->password.reveal(), "  lead in ter nal trail   ");
}

TEST(Pop3LoginFlow, PassBeforeUserAndNewUserResets) {
  driver d;
  auto a = d.feed_client("PASS secret\r\nUSER alice\r\nUSER bob\r\nPASS secret\r\n");
  auto* au = std::get_if<authorize>(&a);
  ASSERT_NE(au, nullptr);
  EXPECT_EQ(au->user, "bob");
  EXPECT_NE(d.to_client.find("-ERR USER first\r\n"), std::string::npos);
  d.flow.on_authorized(auth_outcome{});
  d.to_client.clear();
  a = d.feed_client("PASS again\r\nUSER\r\nPASS\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  // USER and PASS are one attempt: a retry starts with USER.
  EXPECT_EQ(d.to_client,
            "-ERR [AUTH] Authentication failed\r\n-ERR USER first\r\n"
            "-ERR USER expects a user name\r\n-ERR USER first\r\n");
}

TEST(Pop3LoginFlow, AuthPlainWithAndWithoutInitialResponse) {
  auto ir = b64(std::string{"\0alice\0pa ss", 12});
  {
    driver d;
    auto a = d.feed_client("AUTH PLAIN " + ir + "\r\n");
    auto* au = std::get_if<authorize>(&a);
    ASSERT_NE(au, nullptr);
    EXPECT_EQ(au->user, "alice");
    EXPECT_EQ(au->password.reveal(), "pa ss");
    EXPECT_TRUE(au->authzid.empty());
  }
  {
    driver d;
    d.feed_client("auth plain\r\n");
    EXPECT_TRUE(d.to_client.ends_with("\r\n+ \r\n"));
    auto a = d.feed_client(ir + "\r\n");
    ASSERT_TRUE(std::holds_alternative<authorize>(a));
    EXPECT_EQ(std::get<authorize>(a).user, "alice");
  }
  {
    driver d;  // the authzid is passed on for the policy decision
    auto a = d.feed_client("AUTH PLAIN " + b64(std::string{"shared\0alice\0secret", 19}) + "\r\n");
    ASSERT_TRUE(std::holds_alternative<authorize>(a));
    EXPECT_EQ(std::get<authorize>(a).authzid, "shared");
    EXPECT_EQ(std::get<authorize>(a).user, "alice");
  }
}

TEST(Pop3LoginFlow, AuthPlainEmptyCancelAndBadBase64) {
  driver d;
  d.run();
  d.to_client.clear();
  auto a = d.feed_client("AUTH PLAIN =\r\n");
  EXPECT_EQ(d.to_client, "-ERR [AUTH] Authentication failed\r\n");
  d.to_client.clear();
  a = d.feed_client("AUTH PLAIN\r\n*\r\n");
  EXPECT_EQ(d.to_client, "+ \r\n-ERR Authentication cancelled\r\n");
  d.to_client.clear();
  a = d.feed_client("AUTH PLAIN !!!!\r\nAUTH PLAIN\r\nnot base64\r\n");
  EXPECT_EQ(d.to_client, "-ERR Invalid base64 data\r\n+ \r\n-ERR Invalid base64 data\r\n");
  d.to_client.clear();
  a = d.feed_client("AUTH GSSAPI\r\nAUTH XOAUTH2 abc\r\nAUTH PLAIN a b\r\n");
  EXPECT_EQ(d.to_client,
            "-ERR Unsupported mechanism\r\n-ERR Unsupported mechanism\r\n"
            "-ERR AUTH expects a mechanism and an optional initial response\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
}

TEST(Pop3LoginFlow, AuthLoginTwoStepsAndWithInitialUser) {
  {
    driver d;
    d.feed_client("AUTH LOGIN\r\n");
    EXPECT_TRUE(d.to_client.ends_with("+ VXNlcm5hbWU6\r\n"));
    d.feed_client(b64("j\xC3\xBCrgen") + "\r\n");
    EXPECT_TRUE(d.to_client.ends_with("+ UGFzc3dvcmQ6\r\n"));
    auto a = d.feed_client(b64("p\xC3\xA4ss word") + "\r\n");
    auto* au = std::get_if<authorize>(&a);
    ASSERT_NE(au, nullptr);
    EXPECT_EQ(au->user, "j\xC3\xBCrgen");
    EXPECT_EQ(au->password.reveal(), "p\xC3\xA4ss word");
  }
  {
    driver d;
    d.feed_client("AUTH LOGIN " + b64("alice@contoso.com") + "\r\n");
    EXPECT_TRUE(d.to_client.ends_with("\r\n+ UGFzc3dvcmQ6\r\n"));
    EXPECT_EQ(d.to_client.find("VXNlcm5hbWU6"), std::string::npos);
    auto a = d.feed_client(b64("secret") + "\r\n");
    ASSERT_TRUE(std::holds_alternative<authorize>(a));
    EXPECT_EQ(std::get<authorize>(a).user, "alice@contoso.com");
  }
  {
    driver d;
    d.feed_client("AUTH LOGIN\r\n");
    auto a = d.feed_client("*\r\n");
    EXPECT_TRUE(std::holds_alternative<read_from>(a));
    EXPECT_TRUE(d.to_client.ends_with("-ERR Authentication cancelled\r\n"));
  }
}

TEST(Pop3LoginFlow, BareAuthListsMechanisms) {
  driver d;
  d.run();
  d.to_client.clear();
  auto a = d.feed_client("AUTH\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_EQ(d.to_client, "+OK Supported mechanisms follow\r\nPLAIN\r\nLOGIN\r\n.\r\n");
}

TEST(Pop3LoginFlow, ApopRefused) {
  driver d;
  auto a = d.feed_client("APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_TRUE(d.to_client.ends_with("-ERR APOP not supported\r\n"));
}

TEST(Pop3LoginFlow, QuitBeforeLoginSaysByeAndCloses) {
  driver d;
  auto a = d.feed_client("quit\r\n");
  EXPECT_TRUE(is_close(a));
  EXPECT_TRUE(d.to_client.ends_with("+OK Bye\r\n"));
  EXPECT_TRUE(d.events.empty());
}

TEST(Pop3LoginFlow, TransactionCommandsBeforeLoginAreRefused) {
  driver d;
  d.run();
  d.to_client.clear();
  auto a = d.feed_client("NOOP\r\nSTAT\r\nRETR 1\r\n\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_EQ(d.to_client, "-ERR Not authenticated\r\n-ERR Not authenticated\r\n"
                         "-ERR Not authenticated\r\n-ERR Not authenticated\r\n");
}

TEST(Pop3LoginFlow, BareLfAccepted) {
  driver d;
  auto a = d.feed_client("CAPA\nUSER alice\nPASS se cret\n");
  auto* au = std::get_if<authorize>(&a);
  ASSERT_NE(au, nullptr);
  EXPECT_EQ(au->password.reveal(), "se cret");
  EXPECT_NE(d.to_client.find("UIDL\r\n.\r\n+OK Send your password\r\n"), std::string::npos);
}

TEST(Pop3LoginFlow, OverlongLineIsRefusedAndCloses) {
  flow_options o;
  o.max_line = 64;
  driver d{o};
  auto a = d.feed_client("PASS " + std::string(100, 'x'), 16);
  EXPECT_TRUE(is_close(a));
  EXPECT_TRUE(d.to_client.ends_with("-ERR Line too long\r\n"));
  driver whole{o};
  a = whole.feed_client("PASS " + std::string(100, 'x') + "\r\n");
  EXPECT_TRUE(is_close(a));
  EXPECT_TRUE(whole.to_client.ends_with("-ERR Line too long\r\n"));
}

TEST(Pop3LoginFlow, TooManyInvalidCommandsClose) {
  driver d;
  action a;
  for (int i = 0; i < 10; ++i) a = d.feed_client("STAT\r\n");
  EXPECT_TRUE(is_close(a));
  EXPECT_TRUE(
      d.to_client.ends_with("-ERR Not authenticated\r\n-ERR Too many invalid commands\r\n"));
}

TEST(Pop3LoginFlow, UpstreamStlsPath) {
  flow_options o;
  o.upstream_starttls = true;
  driver d{o};
  d.login_ok();
  d.feed_upstream("+OK POP3 ready\r\n");
  EXPECT_EQ(d.to_upstream, "STLS\r\n");
  d.to_upstream.clear();
  d.feed_upstream("+OK Begin TLS negotiation\r\n");
  EXPECT_EQ(d.events, (std::vector<std::string>{"connect", "tls-upstream"}));
  EXPECT_EQ(d.to_upstream, "AUTH XOAUTH2\r\n");  // no new greeting after STLS
  d.feed_upstream("+ \r\n");
  auto a = d.feed_upstream("+OK Logged in\r\n");
  EXPECT_TRUE(std::holds_alternative<splice>(a));
}

TEST(Pop3LoginFlow, UpstreamDataAfterStlsReplyIsRefused) {
  flow_options o;
  o.upstream_starttls = true;
  driver d{o};
  d.login_ok();
  d.feed_upstream("+OK ready\r\n");
  auto a = d.feed_upstream("+OK Begin TLS\r\n+OK injected\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_TRUE(d.to_client.ends_with(unavailable));
  EXPECT_EQ(std::count(d.events.begin(), d.events.end(), "tls-upstream"), 0);
  EXPECT_EQ(d.events.back(), "close-upstream");
}

TEST(Pop3LoginFlow, UpstreamChallengeAnsweredWithEmptyLineAndNeverForwarded) {
  driver d;
  d.login_ok();
  d.feed_upstream("+OK ready\r\n");
  d.feed_upstream("+ \r\n");
  d.to_upstream.clear();
  d.feed_upstream("+ eyJzdGF0dXMiOiI0MDEifQ==\r\n");
  EXPECT_EQ(d.to_upstream, "\r\n");
  EXPECT_EQ(d.to_client.find("eyJ"), std::string::npos);
  auto a = d.feed_upstream("-ERR Authentication failure: unknown user name or bad password.\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));  // the client may try again
  EXPECT_TRUE(d.to_client.ends_with("-ERR [AUTH] The mail server refused the login\r\n"));
  EXPECT_EQ(d.to_client.find("eyJ"), std::string::npos);
  EXPECT_EQ(d.events, (std::vector<std::string>{"connect", "token-rejected", "close-upstream"}));
  ASSERT_EQ(d.rejections.size(), 1u);
  EXPECT_EQ(d.rejections[0].upstream_reply,
            "-ERR Authentication failure: unknown user name or bad password.");
  EXPECT_NE(d.rejections[0].hint.find("POP"), std::string::npos);
  // Still in AUTHORIZATION state: a new login reconnects.
  a = d.feed_client("USER scanner\r\nPASS secret\r\n");
  ASSERT_TRUE(std::holds_alternative<authorize>(a));
  d.flow.on_authorized(driver::ok_outcome());
  d.run();
  EXPECT_EQ(d.events.back(), "connect");
}

TEST(Pop3LoginFlow, UpstreamInUseIsRelayedAndKeepsTheToken) {
  driver d;
  d.login_ok();
  d.feed_upstream("+OK ready\r\n+ \r\n");
  auto a = d.feed_upstream("-ERR [IN-USE] Mailbox locked by another session\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_TRUE(d.to_client.ends_with("-ERR [IN-USE] Mailbox locked by another session\r\n"));
  EXPECT_EQ(d.events, (std::vector<std::string>{"connect", "close-upstream"}));
}

TEST(Pop3LoginFlow, UpstreamRefusingAuthCommandIsTemporary) {
  driver d;
  d.login_ok();
  auto a = d.feed_upstream("+OK ready\r\n-ERR Unrecognized authentication type\r\n");
  EXPECT_TRUE(std::holds_alternative<read_from>(a));
  EXPECT_TRUE(d.to_client.ends_with(unavailable));
  EXPECT_FALSE(d.token_sent_sensitive);
  EXPECT_EQ(d.events, (std::vector<std::string>{"connect", "close-upstream"}));
}

TEST(Pop3LoginFlow, UpstreamBadGreetingOrUnavailableIsTemporary) {
  {
    driver d;
    d.login_ok();
    auto a = d.feed_upstream("-ERR [SYS/TEMP] busy\r\n");
    EXPECT_TRUE(std::holds_alternative<read_from>(a));
    EXPECT_TRUE(d.to_client.ends_with(unavailable));
    EXPECT_TRUE(d.to_upstream.empty());
  }
  {
    driver d;
    d.feed_client("USER u\r\nPASS p\r\n");
    d.flow.on_authorized(driver::ok_outcome());
    auto a = d.flow.next();
    ASSERT_TRUE(std::holds_alternative<connect_upstream>(a));
    d.flow.on_io_done(false);
    a = d.run();
    EXPECT_TRUE(std::holds_alternative<read_from>(a));
    EXPECT_TRUE(d.to_client.ends_with(unavailable));
  }
  {
    driver d;  // upstream hangs up mid-login
    d.login_ok();
    d.feed_upstream("+OK ready\r\n");
    d.flow.on_io_done(false);
    auto a = d.run();
    EXPECT_TRUE(std::holds_alternative<read_from>(a));
    EXPECT_TRUE(d.to_client.ends_with(unavailable));
  }
}

TEST(Pop3LoginFlow, FailureRepliesByKind) {
  struct c { auth_outcome::kind k; const char* reply; };
  for (auto [k, text] :
       {c{auth_outcome::kind::bad_credentials, "-ERR [AUTH] Authentication failed\r\n"},
        c{auth_outcome::kind::temporary,
          "-ERR [SYS/TEMP] Temporary authentication failure, try again later\r\n"},
        c{auth_outcome::kind::contact_admin,
          "-ERR [SYS/PERM] Login not possible, contact your administrator\r\n"}}) {
    driver d;
    d.feed_client("USER u\r\nPASS p\r\n");
    auth_outcome o;
    o.result = k;
    d.flow.on_authorized(std::move(o));
    auto a = d.run();
    EXPECT_TRUE(std::holds_alternative<read_from>(a));
    EXPECT_TRUE(d.to_client.ends_with(text)) << d.to_client;
    EXPECT_TRUE(d.events.empty());
  }
}

TEST(Pop3LoginFlow, ThreeFailuresClose) {
  driver d;
  action a;
  for (int i = 0; i < 3; ++i) {
    a = d.feed_client("USER u\r\nPASS p\r\n");
    ASSERT_TRUE(std::holds_alternative<authorize>(a)) << i;
    d.flow.on_authorized(auth_outcome{});
    a = d.run();
  }
  EXPECT_TRUE(is_close(a));
  EXPECT_TRUE(d.to_client.ends_with("-ERR [AUTH] Authentication failed\r\n"
                                    "+OK Send your password\r\n"
                                    "-ERR [AUTH] Too many authentication failures\r\n"));
  EXPECT_EQ(std::count(d.to_client.begin(), d.to_client.end(), '\n'), 1 + 2 * 3);
}

TEST(Pop3LoginFlow, LastFailureKeepsTemporaryTextWhenClosing) {
  driver d;
  action a;
  for (int i = 0; i < 3; ++i) {
    a = d.feed_client("AUTH PLAIN " + b64(std::string{"\0u\0p", 4}) + "\r\n");
    ASSERT_TRUE(std::holds_alternative<authorize>(a)) << i;
    auth_outcome o;
    o.result = i < 2 ? auth_outcome::kind::bad_credentials : auth_outcome::kind::temporary;
    d.flow.on_authorized(std::move(o));
    a = d.run();
  }
  EXPECT_TRUE(is_close(a));
  EXPECT_TRUE(d.to_client.ends_with(
      "-ERR [SYS/TEMP] Temporary authentication failure, try again later\r\n"));
}

TEST(Pop3LoginFlow, ClientDisconnectCloses) {
  driver d;
  auto a = d.run();
  ASSERT_TRUE(std::holds_alternative<read_from>(a));
  d.flow.on_io_done(false);
  EXPECT_TRUE(is_close(d.run()));
}
