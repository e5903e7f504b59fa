#pragma once
// The driver shared by the login-flow fuzzers (fuzz_imap_flow, fuzz_smtp_flow, fuzz_pop3_flow):
// plays proxy/session_impl.hpp's part with fuzzed peers.
//
// Input layout (tests/fuzz/make_corpus.py writes seeds in it):
//   byte 0  flags: see `flag` below (listener options, limits, token length)
//   byte 1  outcomes of successive `authorize` actions, 2 bits each, cycling
//           (0 ok, 1 bad_credentials, 2 temporary, 3 contact_admin): 0 = every login succeeds
//   byte 2  0, or N: the N-th write / TLS handshake / connect fails (on_io_done(false))
//   then chunks: a header byte (fuzz_common.hpp: peer bit, length) and that many bytes.
// Chunks go to a per-peer queue; when the flow reads from a peer it gets that peer's next chunk,
// so client and upstream bytes are both fuzzed whatever order the flow asks in. An empty queue
// reads as the peer closing the connection (on_io_done(false)) once; a second read ends the run.
// Everything else succeeds, as in style.md §4.12, unless byte 1 or 2 say otherwise.
//
// Invariants checked on every action (ids for XO_FUZZ_ALLOW):
//   flow-spin                  more than 16 × (input + 16) steps
//   flow-upstream-unconnected  read/write/TLS on an upstream that is not connected
//   flow-connect-before-login  IMAP/POP3 connect upstream before a successful authorize
//   flow-secret-to-client      the access token or its XOAUTH2 response written to the client
//   flow-secret-not-sensitive  the XOAUTH2 response written upstream without sensitive = true
//   flow-splice-without-login  splice before the token went to a connected upstream after an
//                              ok authorize
//   flow-splice-senders        splice.allowed_senders differs from the login's allowed_senders
//   flow-token-rejected-unsent token_rejected although no token was sent on this connection
//   flow-starttls-client       start_tls{client} when STARTTLS is not offered or TLS is active
//   flow-starttls-upstream     start_tls{upstream} when upstream_tls is not "starttls"
//   flow-anonymous             an anonymous authorize that the options do not allow
#include "fuzz_common.hpp"

#include "common/base64.hpp"
#include "protocol/common/action.hpp"

#include <deque>
#include <string>
#include <variant>
#include <vector>

namespace xo::fuzz {

enum flag : std::uint8_t {
  starttls_offered = 1,
  client_tls_active = 2,
  upstream_starttls = 4,
  anonymous_account = 8,    // SMTP: listener anonymous_account set
  small_limits = 16,        // tiny line/literal limits, to reach the overflow paths
  allowed_senders = 32,     // SMTP: the ok outcome carries allowed_from patterns
  low_failure_limits = 64,  // one auth failure / two bad commands end the session
  long_token = 128,         // a 1200-byte token, as Entra ID issues (SMTP: no initial response)
};

struct flow_input {
  std::uint8_t flags = 0;
  std::uint8_t outcomes = 0;
  std::uint8_t fail_at = 0;
  std::deque<std::string_view> client, upstream;
  std::string_view all;
};

inline flow_input parse_flow_input(const std::uint8_t* data, std::size_t size) {
  flow_input in;
  bytes b{data, size};
  in.all = b.rest();
  in.flags = b.byte();
  in.outcomes = b.byte();
  in.fail_at = b.byte();
  while (!b.empty()) {
    std::uint8_t h = b.byte();
    auto chunk = b.take(chunk_length(h));
    if (chunk.empty()) break;
    (chunk_is_upstream(h) ? in.upstream : in.client).push_back(chunk);
  }
  return in;
}

inline const std::string& fuzz_mailbox() {
  static const std::string m = "scanner@contoso.com";
  return m;
}
// Characters no flow would produce from the canned texts; a leak is unmistakable.
inline const std::string& fuzz_token(bool long_form) {
  static const std::string t = "eyJ0eXAi.FUZZ-access-token~0123456789";
  static const std::string l = t + std::string(1200 - t.size(), 'x');
  return long_form ? l : t;
}
inline const std::string& anonymous_login() {
  static const std::string a = "anon@contoso.com";
  return a;
}
inline std::vector<std::string> fuzz_senders() { return {"scanner@contoso.com", "*@fabrikam.com"}; }

struct flow_traits {
  bool connect_before_login = false;  // SMTP prepares the upstream before the client logs in
  bool smtp = false;
};

// XO_FUZZ_TRACE=1 prints every action (to check what a seed reaches).
inline bool tracing() {
  static const bool on = std::getenv("XO_FUZZ_TRACE") != nullptr;
  return on;
}
inline void trace(const char* what, std::string_view detail = {}) {
  if (!tracing()) return;
  std::fprintf(stderr, "  %-18s ", what);
  for (unsigned char c : detail.substr(0, 160)) {
    if (c >= 0x20 && c < 0x7f) std::fputc(c, stderr);
    else std::fprintf(stderr, "\\x%02x", c);
  }
  std::fputc('\n', stderr);
}

template <class Flow>
int run_flow(Flow& f, flow_input in, std::size_t size, flow_traits traits) {
  using namespace xo::protocol;
  const std::string& token = fuzz_token((in.flags & long_token) != 0);
  const std::string ir = base64_encode("user=" + fuzz_mailbox() + "\x01" "auth=Bearer " +
                                       token + "\x01\x01");
  // The fuzzer can learn a constant from our own searches and make a peer echo it; a secret the
  // input already holds proves nothing.
  const bool input_has_secret = in.all.find(token) != std::string_view::npos ||
                                in.all.find(ir) != std::string_view::npos;
  bool connected = false, token_written = false, last_auth_ok = false;
  bool client_tls = (in.flags & client_tls_active) != 0;
  bool eof_client = false, eof_upstream = false;
  std::vector<std::string> senders;
  unsigned logins = 0, io = 0;

  auto io_done = [&]() {
    ++io;
    bool ok = !(in.fail_at != 0 && io == in.fail_at);
    f.on_io_done(ok);
    return ok;
  };
  auto contains_secret = [&](std::string_view s) {
    return s.find(token) != std::string_view::npos ||
           s.find(ir) != std::string_view::npos;
  };

  const std::size_t max_steps = 16 * (size + 16);
  for (std::size_t step = 0; step < max_steps; ++step) {
    action a = f.next();
    (void)f.user();
    if (auto* r = std::get_if<read_from>(&a)) {
      const bool up = r->from == peer::upstream;
      if (up) XO_FUZZ_CHECK("flow-upstream-unconnected", connected, "read from upstream");
      auto& q = up ? in.upstream : in.client;
      bool& eof = up ? eof_upstream : eof_client;
      if (q.empty()) {
        trace(up ? "read upstream: EOF" : "read client: EOF");
        if (eof) return 0;  // the input is used up
        eof = true;
        f.on_io_done(false);  // the peer closed the connection
      } else {
        trace(up ? "read upstream" : "read client", q.front());
        f.on_read(r->from, q.front());
        q.pop_front();
      }
    } else if (auto* w = std::get_if<write_to>(&a)) {
      trace(w->to == peer::client ? "write client" : w->sensitive ? "write upstream (s)" : "write upstream",
            w->bytes);
      if (w->to == peer::client) {
        if (!input_has_secret)
          XO_FUZZ_CHECK("flow-secret-to-client", !contains_secret(w->bytes), w->bytes);
      } else {
        XO_FUZZ_CHECK("flow-upstream-unconnected", connected, w->bytes);
        if (!input_has_secret && contains_secret(w->bytes)) {
          XO_FUZZ_CHECK("flow-secret-not-sensitive", w->sensitive, "");
          token_written = true;
        }
      }
      io_done();
    } else if (auto* t = std::get_if<start_tls>(&a)) {
      trace(t->on == peer::client ? "start_tls client" : "start_tls upstream");
      if (t->on == peer::client) {
        XO_FUZZ_CHECK("flow-starttls-client", (in.flags & starttls_offered) && !client_tls, "");
        if (io_done()) client_tls = true;
      } else {
        XO_FUZZ_CHECK("flow-upstream-unconnected", connected, "start_tls upstream");
        XO_FUZZ_CHECK("flow-starttls-upstream", (in.flags & upstream_starttls) != 0, "");
        io_done();
      }
    } else if (std::holds_alternative<connect_upstream>(a)) {
      trace("connect_upstream");
      if (!traits.connect_before_login)
        XO_FUZZ_CHECK("flow-connect-before-login", last_auth_ok, "");
      token_written = false;
      connected = io_done();
    } else if (auto* au = std::get_if<authorize>(&a)) {
      if (au->anonymous) {
        XO_FUZZ_CHECK("flow-anonymous",
                      traits.smtp && (in.flags & anonymous_account) &&
                          au->user == anonymous_login() && au->password.empty(),
                      au->user);
      }
      auth_outcome o;
      const unsigned kind = (in.outcomes >> (2 * (logins++ % 4))) & 3u;
      trace(kind == 0 ? "authorize: ok" : "authorize: refused", au->user);
      o.result = static_cast<auth_outcome::kind>(kind);
      last_auth_ok = o.result == auth_outcome::kind::ok;
      senders.clear();
      if (last_auth_ok) {
        o.mailbox = fuzz_mailbox();
        o.token = secret{token};
        if (traits.smtp && (in.flags & allowed_senders)) o.allowed_senders = fuzz_senders();
        senders = o.allowed_senders;
      }
      f.on_authorized(std::move(o));
    } else if (auto* s = std::get_if<splice>(&a)) {
      trace("splice, client leftover", s->client_leftover);
      if (!input_has_secret)
        XO_FUZZ_CHECK("flow-splice-without-login", connected && token_written && last_auth_ok,
                      s->client_leftover);
      XO_FUZZ_CHECK("flow-splice-senders", s->allowed_senders == senders, "");
      return 0;
    } else if (auto* c = std::get_if<protocol::close>(&a)) {
      trace("close", c->reason);
      return 0;
    } else if (auto* cu = std::get_if<close_upstream>(&a)) {
      trace("close_upstream", cu->reason);
      connected = false;
      token_written = false;
    } else if (auto* tr = std::get_if<token_rejected>(&a)) {
      trace("token_rejected", tr->upstream_reply);
      if (!input_has_secret)
        XO_FUZZ_CHECK("flow-token-rejected-unsent", token_written, tr->upstream_reply);
      f.on_io_done(true);  // the driver always answers true (session_impl.hpp)
    }
  }
  XO_FUZZ_SPIN(max_steps);
}

}  // namespace xo::fuzz
