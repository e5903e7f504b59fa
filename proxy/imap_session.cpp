#include "proxy/imap_session.hpp"

#include "protocol/imap/login_flow.hpp"
#include "proxy/session_impl.hpp"

namespace xo::proxy {

template class session<protocol::imap::login_flow>;

awaitable<void> run_imap_session(tcp::socket socket, ssl::context* client_tls, session_env env) {
  const auto& l = env.listener;
  protocol::imap::flow_options opt;
  opt.starttls_offered = l.tls == config::tls_mode::starttls;
  opt.client_tls_active = l.tls == config::tls_mode::implicit;
  opt.upstream_starttls = l.upstream_tls == config::upstream_tls_mode::starttls;
  co_await run_flow_session(std::move(socket), client_tls, std::move(env),
                            protocol::imap::login_flow{opt});
}

}  // namespace xo::proxy
