// SMTP submission login flow (protocol/smtp/login_flow.hpp) driven with fuzzed client and
// upstream bytes: the upstream's greeting, EHLO, STARTTLS and EHLO again, the client's EHLO/HELO,
// STARTTLS, AUTH PLAIN/LOGIN (initial response or not), anonymous MAIL, and the upstream's
// AUTH XOAUTH2 replies (334 continuation, error challenge, 235, 4xx/5xx).
// Input layout and invariants: flow_driver.hpp.
#include "flow_driver.hpp"

#include "protocol/smtp/login_flow.hpp"

XO_FUZZ_ENTRY(smtp_flow) {
  using namespace xo;
  auto in = fuzz::parse_flow_input(data, size);
  protocol::smtp::flow_options o;
  o.hostname = "proxy.test";
  o.starttls_offered = in.flags & fuzz::starttls_offered;
  o.client_tls_active = in.flags & fuzz::client_tls_active;
  o.upstream_starttls = in.flags & fuzz::upstream_starttls;
  if (in.flags & fuzz::anonymous_account) o.anonymous_account = fuzz::anonymous_login();
  if (in.flags & fuzz::small_limits) o.max_line = 64;
  if (in.flags & fuzz::low_failure_limits) {
    o.max_auth_failures = 1;
    o.max_errors = 2;
  }
  protocol::smtp::login_flow f{o};
  return fuzz::run_flow(f, std::move(in), size, {.connect_before_login = true, .smtp = true});
}
