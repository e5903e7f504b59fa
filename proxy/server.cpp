#include "proxy/server.hpp"

#include "common/log.hpp"
#include "proxy/imap_session.hpp"
#include "proxy/pop3_session.hpp"
#include "proxy/smtp_session.hpp"
#include "proxy/admin_server.hpp"
#include "proxy/login_service.hpp"
#include "proxy/state_lock.hpp"
#include "proxy/tls_contexts.hpp"

#include <boost/asio/signal_set.hpp>
#include <sys/resource.h>

#include <atomic>
#include <list>

namespace xo::proxy {

namespace {

struct listener_runtime {
  const config::listener& cfg;
  std::unique_ptr<ssl::context> client_tls;
  std::unique_ptr<ssl::context> upstream_tls;
  tcp::acceptor acceptor;
};

struct server_state {
  const config::config& cfg;
  login_service& logins;
  std::size_t active = 0;
  std::uint64_t next_sid = 1;
  bool stopping = false;
};

void raise_fd_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  // Each relayed session holds two descriptors (client and upstream).
  logger("proxy")->info("open-file limit {}: room for about {} concurrent sessions "
                        "(raise LimitNOFILE / ulimit -n for more)",
                        static_cast<unsigned long long>(rl.rlim_cur),
                        static_cast<unsigned long long>(rl.rlim_cur > 64 ? (rl.rlim_cur - 64) / 2 : 0));
}

tcp::endpoint parse_endpoint(const config::host_port& hp) {
  return tcp::endpoint{asio::ip::make_address(hp.host), hp.port};
}

awaitable<void> session_task(tcp::socket sock, listener_runtime& l, server_state& st,
                             std::string sid) {
  ++st.active;
  session_env env{sid, l.cfg, *l.upstream_tls, st.logins, st.cfg.proxy};
  switch (l.cfg.protocol) {
    case config::protocol_kind::imap:
      co_await run_imap_session(std::move(sock), l.client_tls.get(), std::move(env));
      break;
    case config::protocol_kind::pop3:
      co_await run_pop3_session(std::move(sock), l.client_tls.get(), std::move(env));
      break;
    case config::protocol_kind::smtp:
      co_await run_smtp_session(std::move(sock), l.client_tls.get(), std::move(env));
      break;
  }
  --st.active;
}

awaitable<void> accept_loop(listener_runtime& l, server_state& st) {
  auto log = logger("proxy");
  for (;;) {
    auto [ec, sock] = co_await l.acceptor.async_accept(use_nothrow);
    if (st.stopping) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      // EMFILE and friends: log, back off a little, keep serving (accept back-pressure).
      log->warn("accept on {} failed: {}", l.cfg.listen.to_string(), ec.message());
      co_await sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    error_code ignored;
    sock.set_option(tcp::no_delay(true), ignored);
    std::string sid = fmt::format("{:06x}", st.next_sid++);
    asio::co_spawn(l.acceptor.get_executor(), session_task(std::move(sock), l, st, sid),
                   [sid](std::exception_ptr e) {
                     if (!e) return;
                     try {
                       std::rethrow_exception(e);
                     } catch (const std::exception& ex) {
                       logger("session")->error("sid={} session ended by exception: {}", sid, ex.what());
                     }
                   });
  }
}

awaitable<void> wait_for_stop(asio::io_context& io, std::list<listener_runtime>& ls,
                              server_state& st, admin_server* admin) {
  asio::signal_set signals{io, SIGINT, SIGTERM};
  auto [ec, sig] = co_await signals.async_wait(use_nothrow);
  auto log = logger("proxy");
  log->info("signal {} received: closing listeners, draining {} session(s)", sig, st.active);
  st.stopping = true;
  st.logins.engine().stop();
  for (auto& l : ls) {
    error_code ignored;
    l.acceptor.close(ignored);
  }
  auto deadline = std::chrono::steady_clock::now() + st.cfg.proxy.drain_timeout;
  while (st.active > 0 && std::chrono::steady_clock::now() < deadline)
    co_await sleep_for(std::chrono::milliseconds(50));
  log->info("stopped ({} session(s) still open were closed)", st.active);
  if (admin) admin->stop();
  io.stop();
}

}  // namespace

int run_server(const config::config& cfg) {
  raise_fd_limit();
  state_lock lock{cfg.proxy.state_dir};
  if (!lock.held())
    throw std::runtime_error("state_dir " + cfg.proxy.state_dir + ": " + lock.why());
  asio::io_context io{1};
  login_service logins{io.get_executor(), cfg};
  logins.engine().start();
  server_state st{cfg, logins};
  std::list<listener_runtime> listeners;
  auto log = logger("proxy");
  for (const auto& lc : cfg.listeners) {
    auto& l = listeners.emplace_back(listener_runtime{
        lc, lc.tls == config::tls_mode::none ? nullptr : make_server_context(lc),
        make_upstream_context(lc.upstream_ca_file), tcp::acceptor{io}});
    auto ep = parse_endpoint(lc.listen);
    l.acceptor.open(ep.protocol());
    l.acceptor.set_option(tcp::acceptor::reuse_address(true));
    l.acceptor.bind(ep);
    l.acceptor.listen(asio::socket_base::max_listen_connections);
    auto bound = l.acceptor.local_endpoint();
    log->info("listening on {}:{} protocol={} tls={} upstream={} upstream_tls={}",
              bound.address().to_string(), bound.port(), config::to_string(lc.protocol),
              config::to_string(lc.tls), lc.upstream.to_string(),
              config::to_string(lc.upstream_tls));
  }
  for (auto& l : listeners)
    asio::co_spawn(io, accept_loop(l, st), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
  std::unique_ptr<admin_server> admin;
  if (cfg.proxy.admin_address) {
    admin = std::make_unique<admin_server>(io.get_executor(), cfg, logins.engine(),
                                           [&st] { return !st.stopping; });
    logins.engine().set_admin_port(admin->bind());
    admin->start();
  }
  asio::co_spawn(io, wait_for_stop(io, listeners, st, admin.get()), asio::detached);
  io.run();
  return 0;
}

}  // namespace xo::proxy
