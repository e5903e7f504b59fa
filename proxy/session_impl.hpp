#pragma once
// Member definitions of proxy::session<Flow>; included by the one .cpp per protocol that
// instantiates it (imap_session.cpp, ...).
#include "common/metrics.hpp"
#include "proxy/session.hpp"

#include <variant>

namespace xo::proxy {

template <class Flow>
std::chrono::steady_clock::duration session<Flow>::step_budget() const {
  auto step = std::chrono::duration_cast<clock::duration>(env_.settings.login_timeout);
  auto total_end = started_ + 5 * step;
  auto left = total_end - clock::now();
  return std::max(clock::duration::zero(), std::min(step, left));
}

// An upstream step ran out of time before the login. The client is still there and waits for
// an answer: drop the upstream (unusable after a cancelled operation) and report the failure to
// the flow, which answers with its "mail server unavailable, try later" reply.
template <class Flow>
void session<Flow>::upstream_timed_out(const char* what) {
  logger("session")->warn("sid={} upstream timeout during login: {} within {} s", env_.sid, what,
                          std::chrono::ceil<std::chrono::seconds>(env_.settings.login_timeout).count());
  if (upstream_) upstream_->close();
  upstream_.reset();
  flow_.on_io_done(false);
}

template <class Flow>
awaitable<void> session<Flow>::run() {
  auto log = logger("session");
  log->debug("sid={} open client={}:{}", env_.sid, client_.remote().address().to_string(),
             client_.remote().port());
  const std::string_view proto = config::to_string(env_.listener.protocol);
  metrics::gauge_add("xoauth_sessions_active", {{"protocol", proto}}, 1);
  while (!done_) {
    auto act = flow_.next();
    co_await std::visit([this](auto a) { return perform(std::move(a)); }, std::move(act));
  }
  if (upstream_) upstream_->close();
  client_.close();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - started_).count();
  metrics::gauge_add("xoauth_sessions_active", {{"protocol", proto}}, -1);
  metrics::counter_add("xoauth_sessions_total",
                       {{"protocol", proto}, {"result", logged_in_ ? "relayed" : "not_logged_in"}});
  metrics::counter_add("xoauth_relayed_bytes_total",
                       {{"protocol", proto}, {"direction", "client_to_upstream"}},
                       static_cast<double>(bytes_in_));
  metrics::counter_add("xoauth_relayed_bytes_total",
                       {{"protocol", proto}, {"direction", "upstream_to_client"}},
                       static_cast<double>(bytes_out_));
  log->info("sid={} summary protocol={} client={} user={:?} logged_in={} bytes_in={} "
            "bytes_out={} duration_ms={} end={:?}",
            env_.sid, config::to_string(env_.listener.protocol),
            client_.remote().address().to_string(), flow_.user(), logged_in_, bytes_in_,
            bytes_out_, ms, end_);
}

template <class Flow>
awaitable<void> session<Flow>::perform(protocol::read_from a) {
  auto* s = a.from == protocol::peer::client ? &client_ : (upstream_ ? &*upstream_ : nullptr);
  if (!s) {
    flow_.on_io_done(false);
    co_return;
  }
  auto r = co_await with_timeout(s->read_some(asio::buffer(buf_.get(), login_buffer)), step_budget());
  if (!r) {
    if (a.from == protocol::peer::upstream) {
      upstream_timed_out("no answer");
      co_return;
    }
    // A timed-out read leaves the stream unusable: end the session.
    end_ = "client timeout before login";
    done_ = true;
    co_return;
  }
  auto [ec, n] = *r;
  if (ec) {
    flow_.on_io_done(false);
    co_return;
  }
  if (a.from == protocol::peer::client) bytes_in_ += n;
  flow_.on_read(a.from, std::string_view{buf_.get(), n});
}

template <class Flow>
awaitable<void> session<Flow>::perform(protocol::write_to a) {
  auto* s = a.to == protocol::peer::client ? &client_ : (upstream_ ? &*upstream_ : nullptr);
  if (!s) {
    flow_.on_io_done(false);
    co_return;
  }
  if (auto log = logger("wire"); log->should_log(spdlog::level::trace)) {
    const char* dir = a.to == protocol::peer::client ? "P->C" : "P->U";
    if (a.sensitive) log->trace("sid={} {} <redacted {} bytes>", env_.sid, dir, a.bytes.size());
    else log->trace("sid={} {} {:?}", env_.sid, dir, a.bytes);
  }
  // A reply to the client (often the news that something else timed out) gets at least a second,
  // even when the pre-login phase has used up its whole budget.
  auto budget = step_budget();
  if (a.to == protocol::peer::client) budget = std::max(budget, clock::duration{std::chrono::seconds{1}});
  auto r = co_await with_timeout(s->write_all(asio::buffer(a.bytes)), budget);
  if (a.sensitive) OPENSSL_cleanse(a.bytes.data(), a.bytes.size());
  bool ok = r && !std::get<0>(*r);
  if (ok && a.to == protocol::peer::client) bytes_out_ += a.bytes.size();
  if (!r) {
    if (a.to == protocol::peer::upstream) {
      upstream_timed_out("write not accepted");
      co_return;
    }
    end_ = "write timeout during login";
    done_ = true;
    co_return;
  }
  flow_.on_io_done(ok);
}

template <class Flow>
awaitable<void> session<Flow>::perform(protocol::start_tls a) {
  auto* s = a.on == protocol::peer::client ? &client_ : (upstream_ ? &*upstream_ : nullptr);
  if (!s) {
    flow_.on_io_done(false);
    co_return;
  }
  auto role = a.on == protocol::peer::client ? ssl::stream_base::server : ssl::stream_base::client;
  auto r = co_await with_timeout(s->start_tls(role), step_budget());
  if (!r) {
    if (a.on == protocol::peer::upstream) {
      upstream_timed_out("TLS handshake not finished");
      co_return;
    }
    end_ = "TLS handshake timeout";
    done_ = true;
    co_return;
  }
  if (*r)
    logger("session")->warn("sid={} TLS handshake with {} failed: {}", env_.sid,
                            a.on == protocol::peer::client ? "client" : "upstream", r->message());
  flow_.on_io_done(!*r);
}

template <class Flow>
awaitable<void> session<Flow>::perform(protocol::connect_upstream) {
  if (upstream_) upstream_->close();
  upstream_.reset();
  const auto& l = env_.listener;
  auto budget = std::chrono::duration_cast<std::chrono::seconds>(step_budget());
  const auto t0 = clock::now();
  auto r = co_await connect_upstream(l.upstream, l.upstream_tls == config::upstream_tls_mode::implicit,
                                     env_.upstream_tls, std::max(budget, std::chrono::seconds{1}));
  if (!r.stream) {
    logger("session")->warn("sid={} upstream unavailable: {}", env_.sid, r.error);
    flow_.on_io_done(false);
    co_return;
  }
  upstream_.emplace(std::move(*r.stream));
  metrics::observe("xoauth_upstream_connect_seconds",
                   {{"protocol", config::to_string(l.protocol)}},
                   std::chrono::duration<double>(clock::now() - t0).count());
  logger("session")->debug("sid={} upstream connected {} tls={}", env_.sid, l.upstream.to_string(),
                           upstream_->tls_description());
  flow_.on_io_done(true);
}

template <class Flow>
awaitable<void> session<Flow>::perform(protocol::authorize a) {
  auto outcome = co_await env_.logins.authorize(env_.sid, client_.remote().address().to_string(),
                                                std::move(a));
  using k = protocol::auth_outcome::kind;
  const char* result = outcome.result == k::ok                ? "ok"
                       : outcome.result == k::bad_credentials ? "bad_credentials"
                       : outcome.result == k::temporary       ? "temporary"
                                                              : "contact_admin";
  metrics::counter_add("xoauth_logins_total",
                       {{"protocol", config::to_string(env_.listener.protocol)},
                        {"result", result},
                        {"reason", outcome.reason}});
  if (outcome.result == k::ok) authorized_at_ = clock::now();
  flow_.on_authorized(std::move(outcome));
}

template <class Flow>
awaitable<void> session<Flow>::perform(protocol::splice a) {
  logged_in_ = true;
  buf_.reset();
  if (authorized_at_ != clock::time_point{})
    metrics::observe("xoauth_upstream_login_seconds",
                     {{"protocol", config::to_string(env_.listener.protocol)}},
                     std::chrono::duration<double>(clock::now() - authorized_at_).count());
  logger("session")->info("sid={} logged in user={:?} upstream={} relaying", env_.sid,
                          flow_.user(), env_.listener.upstream.to_string());
  relay_options opt;
  opt.idle_timeout = env_.settings.idle_timeout;
  relay_result r;
  if (a.allowed_senders.empty()) {
    r = co_await relay(client_, *upstream_, std::move(a.client_leftover),
                       std::move(a.upstream_leftover), opt);
  } else {
    auto f = co_await relay_smtp_filtered(client_, *upstream_, std::move(a.client_leftover),
                                          std::move(a.upstream_leftover),
                                          std::move(a.allowed_senders), opt);
    if (f.refused_senders > 0)
      logger("session")->warn("sid={} refused {} MAIL FROM address(es) not in allowed_from of "
                              "user={:?}", env_.sid, f.refused_senders, flow_.user());
    r = f;
  }
  bytes_in_ += r.client_to_upstream;
  bytes_out_ += r.upstream_to_client;
  end_ = r.end;
  done_ = true;
}

template <class Flow>
awaitable<void> session<Flow>::perform(protocol::close a) {
  end_ = std::move(a.reason);
  done_ = true;
  co_return;
}

template <class Flow>
awaitable<void> session<Flow>::perform(protocol::close_upstream a) {
  logger("session")->warn("sid={} upstream login failed: {}", env_.sid, a.reason);
  if (upstream_) upstream_->close();
  upstream_.reset();
  co_return;
}

template <class Flow>
awaitable<void> session<Flow>::perform(protocol::token_rejected a) {
  env_.logins.token_rejected(env_.sid, flow_.user(), a);
  flow_.on_io_done(true);
  co_return;
}

}  // namespace xo::proxy

namespace xo::proxy {

// Accepts the client side (implicit TLS handshake when configured) and runs the flow to its end.
// client_tls is null for tls = "none".
template <class Flow>
awaitable<void> run_flow_session(tcp::socket socket, ssl::context* client_tls, session_env env,
                                 Flow flow) {
  // A plain listener has no server context; the stream type still needs one, so it gets the
  // upstream context, which is never used for a server handshake.
  ssl::context& ctx = client_tls ? *client_tls : env.upstream_tls;
  mail_stream client{std::move(socket), ctx};
  if (env.listener.tls == config::tls_mode::implicit) {
    auto r = co_await with_timeout(client.start_tls(ssl::stream_base::server),
                                   std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                       env.settings.login_timeout));
    if (!r || *r) {
      logger("session")->info("sid={} TLS handshake with client {} failed: {}", env.sid,
                              client.remote().address().to_string(), r ? r->message() : "timeout");
      client.close();
      co_return;
    }
  }
  session<Flow> s{std::move(client), std::move(flow), std::move(env)};
  co_await s.run();
}

}  // namespace xo::proxy
