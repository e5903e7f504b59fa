#pragma once
// The session driver: carries out a sans-I/O login flow's actions on real streams, then relays.
// One coroutine per connection; the session object lives in that coroutine's frame.
// Every pre-login step is bounded by login_timeout, and the whole pre-login phase by
// 5 × login_timeout. A stream whose operation timed out is unusable (TLS state is unreliable
// after a cancelled operation): a client timeout closes the session; an upstream timeout drops
// the upstream and the flow answers the waiting client with its temporary failure. Logs one
// summary line per session.
#include "common/log.hpp"
#include "config/config.hpp"
#include "protocol/common/action.hpp"
#include "proxy/login_service.hpp"
#include "proxy/mail_stream.hpp"
#include "proxy/splice.hpp"
#include "proxy/upstream_connect.hpp"

#include <memory>
#include <optional>

namespace xo::proxy {

struct session_env {
  std::string sid;
  const config::listener& listener;
  ssl::context& upstream_tls;
  login_service& logins;
  const config::proxy_settings& settings;
};

template <class Flow>
class session {
 public:
  session(mail_stream client, Flow flow, session_env env)
      : client_(std::move(client)), flow_(std::move(flow)), env_(std::move(env)) {}

  awaitable<void> run();

 private:
  using clock = std::chrono::steady_clock;
  awaitable<void> perform(protocol::read_from a);
  awaitable<void> perform(protocol::write_to a);
  awaitable<void> perform(protocol::start_tls a);
  awaitable<void> perform(protocol::connect_upstream a);
  awaitable<void> perform(protocol::authorize a);
  awaitable<void> perform(protocol::splice a);
  awaitable<void> perform(protocol::close a);
  awaitable<void> perform(protocol::close_upstream a);
  awaitable<void> perform(protocol::token_rejected a);
  std::chrono::steady_clock::duration step_budget() const;
  void upstream_timed_out(const char* what);

  mail_stream client_;
  std::optional<mail_stream> upstream_;
  Flow flow_;
  session_env env_;
  // Pre-login reads; freed when the relay starts (it takes buffers only while data flows).
  static constexpr std::size_t login_buffer = 4096;
  std::unique_ptr<char[]> buf_ = std::make_unique<char[]>(login_buffer);
  clock::time_point started_ = clock::now();
  clock::time_point authorized_at_{};  // the local login decision (for upstream login latency)
  std::uint64_t bytes_in_ = 0;   // client → proxy/upstream
  std::uint64_t bytes_out_ = 0;  // proxy/upstream → client
  std::string end_;
  bool done_ = false;
  bool logged_in_ = false;
};

}  // namespace xo::proxy
