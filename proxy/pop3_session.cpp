#include "proxy/pop3_session.hpp"

#include "protocol/pop3/login_flow.hpp"
#include "proxy/session_impl.hpp"

namespace xo::proxy {

template class session<protocol::pop3::login_flow>;

awaitable<void> run_pop3_session(tcp::socket socket, ssl::context* client_tls, session_env env) {
  const auto& l = env.listener;
  protocol::pop3::flow_options opt;
  opt.starttls_offered = l.tls == config::tls_mode::starttls;
  opt.client_tls_active = l.tls == config::tls_mode::implicit;
  opt.upstream_starttls = l.upstream_tls == config::upstream_tls_mode::starttls;
  // A named local, not a temporary inside the co_await expression (GCC 12 coroutine pitfall).
  protocol::pop3::login_flow flow{opt};
  co_await run_flow_session(std::move(socket), client_tls, std::move(env), std::move(flow));
}

}  // namespace xo::proxy
