// POP3 login flow (protocol/pop3/login_flow.hpp) driven with fuzzed client and upstream bytes:
// CAPA, STLS both ways, USER/PASS, AUTH PLAIN/LOGIN with and without initial response, the
// upstream's AUTH XOAUTH2 continuation, +OK/-ERR results and error challenges.
// Input layout and invariants: flow_driver.hpp.
#include "flow_driver.hpp"

#include "protocol/pop3/login_flow.hpp"

XO_FUZZ_ENTRY(pop3_flow) {
  using namespace xo;
  auto in = fuzz::parse_flow_input(data, size);
  protocol::pop3::flow_options o;
  o.starttls_offered = in.flags & fuzz::starttls_offered;
  o.client_tls_active = in.flags & fuzz::client_tls_active;
  o.upstream_starttls = in.flags & fuzz::upstream_starttls;
  if (in.flags & fuzz::small_limits) {
    o.max_line = 64;
    o.max_upstream_line = 64;
  }
  if (in.flags & fuzz::low_failure_limits) {
    o.max_auth_failures = 1;
    o.max_bad_commands = 2;
  }
  protocol::pop3::login_flow f{o};
  return fuzz::run_flow(f, std::move(in), size, {});
}
