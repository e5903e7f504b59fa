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
  // The server context is only used when TLS is offered; a plain listener still needs one to
  // build the stream type, so it gets the upstream context (never handshaken as a server).
  ssl::context& ctx = client_tls ? *client_tls : env.upstream_tls;
  mail_stream client{std::move(socket), ctx};
  if (opt.client_tls_active) {
    auto r = co_await with_timeout(client.start_tls(ssl::stream_base::server),
                                   std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                       env.settings.login_timeout));
    if (!r || *r) {
      logger("session")->info("sid={} TLS handshake with client failed: {}", env.sid,
                              r ? r->message() : "timeout");
      client.close();
      co_return;
    }
  }
  session<protocol::imap::login_flow> s{std::move(client), protocol::imap::login_flow{opt},
                                        std::move(env)};
  co_await s.run();
}

}  // namespace xo::proxy
