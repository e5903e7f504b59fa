#include "proxy/server.hpp"

#include "common/log.hpp"
#include "config/loader.hpp"
#include "proxy/imap_session.hpp"
#include "proxy/pop3_session.hpp"
#include "proxy/smtp_session.hpp"
#include "proxy/admin_server.hpp"
#include "proxy/login_service.hpp"
#include "proxy/state_lock.hpp"
#include "proxy/tls_contexts.hpp"

#include <boost/asio/signal_set.hpp>
#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <list>

namespace xo::proxy {

namespace {

// A bound listener. A reload points it at the new configuration's entry and new TLS contexts;
// sessions already running keep the ones they started with (kept in `retired`).
struct listener_runtime {
  const config::listener* cfg;
  std::unique_ptr<ssl::context> client_tls;
  std::unique_ptr<ssl::context> upstream_tls;
  tcp::acceptor acceptor;
  bool removed = false;
};

struct server_state {
  const config::config* cfg;  // the current configuration; every loaded one stays alive
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
  session_env env{sid, *l.cfg, *l.upstream_tls, st.logins, st.cfg->proxy};
  switch (l.cfg->protocol) {
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
      log->warn("accept on {} failed: {}", l.cfg->listen.to_string(), ec.message());
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

awaitable<void> wait_for_stop(asio::io_context& io, asio::signal_set& signals,
                              std::list<listener_runtime>& ls, server_state& st,
                              admin_server* admin) {
  auto [ec, sig] = co_await signals.async_wait(use_nothrow);
  auto log = logger("proxy");
  log->info("signal {} received: closing listeners, draining {} session(s)", sig, st.active);
  st.stopping = true;
  st.logins.engine().stop();
  for (auto& l : ls) {
    error_code ignored;
    l.acceptor.close(ignored);
  }
  auto deadline = std::chrono::steady_clock::now() + st.cfg->proxy.drain_timeout;
  while (st.active > 0 && std::chrono::steady_clock::now() < deadline)
    co_await sleep_for(std::chrono::milliseconds(50));
  log->info("stopped ({} session(s) still open were closed)", st.active);
  if (admin) admin->stop();
  io.stop();
}


void bind_listener(listener_runtime& l) {
  auto ep = parse_endpoint(l.cfg->listen);
  l.acceptor.open(ep.protocol());
  l.acceptor.set_option(tcp::acceptor::reuse_address(true));
  l.acceptor.bind(ep);
  l.acceptor.listen(asio::socket_base::max_listen_connections);
  auto bound = l.acceptor.local_endpoint();
  const auto& lc = *l.cfg;
  logger("proxy")->info("listening on {}:{} protocol={} tls={} upstream={} upstream_tls={}",
                        bound.address().to_string(), bound.port(), config::to_string(lc.protocol),
                        config::to_string(lc.tls), lc.upstream.to_string(),
                        config::to_string(lc.upstream_tls));
}

void spawn_accept(asio::io_context& io, listener_runtime& l, server_state& st) {
  asio::co_spawn(io, accept_loop(l, st), [](std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
  });
}

std::unique_ptr<ssl::context> client_context(const config::listener& lc) {
  return lc.tls == config::tls_mode::none ? nullptr : make_server_context(lc);
}

bool same_listen(const config::listener& a, const config::listener& b) {
  return a.protocol == b.protocol && a.listen.host == b.listen.host && a.listen.port == b.listen.port;
}

struct reload_context {
  asio::io_context& io;
  std::list<config::config>& configs;
  std::list<listener_runtime>& listeners;
  std::list<std::unique_ptr<ssl::context>>& retired_tls;
  server_state& st;
};

// SIGHUP: load the file again; a config with errors (or TLS files that do not load, or a change
// that needs a restart) is refused as a whole and the running one stays. Otherwise new sessions
// use the new accounts, providers, listeners and certificates at once, and sessions already open
// go on undisturbed.
void reload(reload_context& rc) {
  auto log = logger("proxy");
  const config::config& current = *rc.st.cfg;
  log->info("SIGHUP: reloading {}", current.path);
  auto r = config::load_file(current.path);
  if (!r.ok()) {
    for (const auto& d : r.errors) log->error("reload refused: {}", d.to_string());
    log->error("reload refused: {} error(s); the running configuration stays", r.errors.size());
    return;
  }
  for (const auto& w : r.warnings) log->warn("{}", w.to_string());
  const auto& next_px = r.cfg.proxy;
  if (next_px.admin_listen != current.proxy.admin_listen ||
      next_px.public_base_url != current.proxy.public_base_url)
    log->warn("reload: admin_listen and public_base_url changes take effect at the next restart");
  // Everything that can fail is prepared before anything changes.
  struct prepared {
    const config::listener* cfg;
    std::unique_ptr<ssl::context> client_tls, upstream_tls;
  };
  std::vector<prepared> ready;
  config::config& next = rc.configs.emplace_back(std::move(r.cfg));
  try {
    for (const auto& lc : next.listeners)
      ready.push_back({&lc, client_context(lc), make_upstream_context(lc.upstream_ca_file)});
  } catch (const std::exception& e) {
    log->error("reload refused: {}; the running configuration stays", e.what());
    rc.configs.pop_back();
    return;
  }
  if (auto why = rc.st.logins.reconfigure(next); !why.empty()) {
    log->error("reload refused: {}; the running configuration stays", why);
    rc.configs.pop_back();
    return;
  }
  rc.st.cfg = &next;
  std::size_t added = 0, closed = 0;
  for (auto& l : rc.listeners) {
    if (l.removed) continue;
    auto it = std::find_if(ready.begin(), ready.end(),
                           [&](const prepared& p) { return p.cfg && same_listen(*p.cfg, *l.cfg); });
    if (it == ready.end()) {
      error_code ignored;
      l.acceptor.close(ignored);
      l.removed = true;
      ++closed;
      log->info("reload: closed listener {} protocol={}", l.cfg->listen.to_string(),
                config::to_string(l.cfg->protocol));
      continue;
    }
    if (l.client_tls) rc.retired_tls.push_back(std::move(l.client_tls));
    rc.retired_tls.push_back(std::move(l.upstream_tls));
    l.cfg = it->cfg;
    l.client_tls = std::move(it->client_tls);
    l.upstream_tls = std::move(it->upstream_tls);
    it->cfg = nullptr;  // taken
  }
  for (auto& p : ready) {
    if (!p.cfg) continue;
    auto& l = rc.listeners.emplace_back(listener_runtime{
        p.cfg, std::move(p.client_tls), std::move(p.upstream_tls), tcp::acceptor{rc.io}});
    try {
      bind_listener(l);
    } catch (const std::exception& e) {
      log->error("reload: cannot listen on {}: {}", p.cfg->listen.to_string(), e.what());
      l.removed = true;
      continue;
    }
    spawn_accept(rc.io, l, rc.st);
    ++added;
  }
  log->info("reload done: {} account(s), {} provider(s), {} listener(s) ({} new, {} closed); "
            "open sessions continue",
            next.accounts.size(), next.providers.size(), next.listeners.size(), added, closed);
}

awaitable<void> reload_on_sighup(reload_context rc, asio::signal_set& hup) {
  for (;;) {
    auto [ec, sig] = co_await hup.async_wait(use_nothrow);
    if (ec || rc.st.stopping) co_return;
    try {
      reload(rc);
    } catch (const std::exception& e) {
      logger("proxy")->error("reload failed: {}; the running configuration stays", e.what());
    }
  }
}

}  // namespace

int run_server(config::config initial) {
  raise_fd_limit();
  std::list<config::config> configs;  // every configuration loaded; sessions refer to theirs
  const config::config& cfg = configs.emplace_back(std::move(initial));
  state_lock lock{cfg.proxy.state_dir};
  if (!lock.held())
    throw std::runtime_error("state_dir " + cfg.proxy.state_dir + ": " + lock.why());
  asio::io_context io{1};
  // Signals are caught from here on, before anything is announced as ready: a SIGHUP sent as
  // soon as "listening on" appears must reload, not kill the process (its default action).
  asio::signal_set stop_signals{io, SIGINT, SIGTERM};
  asio::signal_set hup{io, SIGHUP};
  login_service logins{io.get_executor(), cfg};
  logins.engine().start();
  server_state st{&cfg, logins};
  std::list<listener_runtime> listeners;
  std::list<std::unique_ptr<ssl::context>> retired_tls;
  for (const auto& lc : cfg.listeners) {
    auto& l = listeners.emplace_back(listener_runtime{
        &lc, client_context(lc), make_upstream_context(lc.upstream_ca_file), tcp::acceptor{io}});
    bind_listener(l);
  }
  for (auto& l : listeners) spawn_accept(io, l, st);
  std::unique_ptr<admin_server> admin;
  if (cfg.proxy.admin_address) {
    admin = std::make_unique<admin_server>(io.get_executor(), cfg, logins.engine(),
                                           [&st] { return !st.stopping; });
    logins.engine().set_admin_port(admin->bind());
    admin->start();
  }
  asio::co_spawn(io, wait_for_stop(io, stop_signals, listeners, st, admin.get()), asio::detached);
  asio::co_spawn(io, reload_on_sighup(reload_context{io, configs, listeners, retired_tls, st}, hup),
                 asio::detached);
  io.run();
  return 0;
}

}  // namespace xo::proxy
