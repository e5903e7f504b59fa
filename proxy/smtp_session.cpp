#include "proxy/smtp_session.hpp"

#include "protocol/smtp/login_flow.hpp"
#include "proxy/session_impl.hpp"

#include <unistd.h>

namespace xo::proxy {

template class session<protocol::smtp::login_flow>;

namespace {

std::string local_host_name() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "xoauth-proxy";
  return buf;
}

}  // namespace

awaitable<void> run_smtp_session(tcp::socket socket, ssl::context* client_tls, session_env env) {
  const auto& l = env.listener;
  protocol::smtp::flow_options opt;
  static const std::string host = local_host_name();
  opt.hostname = l.ehlo_name.empty() ? host : l.ehlo_name;
  opt.starttls_offered = l.tls == config::tls_mode::starttls;
  opt.client_tls_active = l.tls == config::tls_mode::implicit;
  opt.upstream_starttls = l.upstream_tls == config::upstream_tls_mode::starttls;
  error_code ec;
  auto remote = socket.remote_endpoint(ec);
  if (!ec && l.allows_anonymous(remote.address().to_string())) opt.anonymous_account = l.anonymous_account;
  co_await run_flow_session(std::move(socket), client_tls, std::move(env),
                            protocol::smtp::login_flow{std::move(opt)});
}

}  // namespace xo::proxy
