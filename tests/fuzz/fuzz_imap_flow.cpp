// IMAP login flow (protocol/imap/login_flow.hpp) driven with fuzzed client and upstream bytes:
// greeting, CAPABILITY, STARTTLS both ways, LOGIN with literals, AUTHENTICATE PLAIN/LOGIN with
// and without SASL-IR, the upstream's AUTHENTICATE XOAUTH2 replies and error challenges.
// Input layout and invariants: flow_driver.hpp.
#include "flow_driver.hpp"

#include "protocol/imap/login_flow.hpp"

XO_FUZZ_ENTRY(imap_flow) {
  using namespace xo;
  auto in = fuzz::parse_flow_input(data, size);
  protocol::imap::flow_options o;
  o.starttls_offered = in.flags & fuzz::starttls_offered;
  o.client_tls_active = in.flags & fuzz::client_tls_active;
  o.upstream_starttls = in.flags & fuzz::upstream_starttls;
  if (in.flags & fuzz::small_limits) {
    o.lex.max_line = 64;
    o.lex.max_literal = 64;
    o.lex.max_command = 256;
    o.max_upstream_line = 64;
  }
  if (in.flags & fuzz::low_failure_limits) {
    o.max_auth_failures = 1;
    o.max_bad_commands = 2;
  }
  protocol::imap::login_flow f{o};
  return fuzz::run_flow(f, std::move(in), size, {});
}
