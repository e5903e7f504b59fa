#include "proxy/splice.hpp"

#include "protocol/smtp/sender_filter.hpp"

#include <array>
#include <memory>
#include <vector>

namespace xo::proxy {

namespace {

using clock = std::chrono::steady_clock;

// Relay buffers are taken only while data flows: an idle direction waits for readability
// holding none (thousands of IDLE sessions would otherwise keep 2 x 64 KiB each). A few freed
// buffers are kept per thread for the next burst.
constexpr std::size_t relay_buffer = 64 * 1024;
constexpr std::size_t pooled_buffers = 32;
thread_local std::vector<std::unique_ptr<char[]>> free_buffers;

class buffer_lease {
 public:
  buffer_lease() {
    if (free_buffers.empty()) {
      p_ = std::make_unique_for_overwrite<char[]>(relay_buffer);
    } else {
      p_ = std::move(free_buffers.back());
      free_buffers.pop_back();
    }
  }
  ~buffer_lease() {
    if (free_buffers.size() < pooled_buffers) free_buffers.push_back(std::move(p_));
  }
  buffer_lease(const buffer_lease&) = delete;
  buffer_lease& operator=(const buffer_lease&) = delete;
  char* data() const noexcept { return p_.get(); }

 private:
  std::unique_ptr<char[]> p_;
};

struct relay_state {
  explicit relay_state(asio::any_io_executor ex) : wake(std::move(ex)) {}
  clock::time_point last_activity = clock::now();
  int finished = 0;  // directions that have ended
  std::string first_end;
  asio::steady_timer wake;  // the watchdog's timer; poked when a direction ends
};

awaitable<void> pump(mail_stream& from, mail_stream& to, std::uint64_t& moved, relay_state& st,
                     const char* label) {
  for (;;) {
    auto wait_ec = co_await from.wait_readable();
    if (wait_ec) break;
    // Everything that is there now, up to one buffer, then one write.
    buffer_lease buf;
    std::size_t n = 0;
    error_code read_ec;
    do {
      auto [ec, k] = from.read_now(asio::buffer(buf.data() + n, relay_buffer - n));
      n += k;
      if (ec) {
        if (ec != asio::error::would_block) read_ec = ec;
        break;
      }
    } while (n < relay_buffer && from.ready());
    if (n > 0) {
      st.last_activity = clock::now();
      auto [wec, w] = co_await to.write_all(asio::buffer(buf.data(), n));
      if (wec) break;
      moved += n;
    }
    if (read_ec) break;
  }
  // Pass a half-close on only over plain TCP: under TLS a bare TCP shutdown (no close_notify)
  // makes servers such as Dovecot drop the connection, and the replies still owed are lost.
  if (!to.tls_active()) to.shutdown_send();
  if (st.finished++ == 0) st.first_end = label;
}

// After the client stopped sending: the upstream may still owe it replies (a pipelined QUIT's
// "221", the rest of a FETCH). Relaying toward the client goes on while the upstream keeps
// talking, and ends once it has been quiet for half_close_quiet (at most half_close_grace in
// all). A client that simply closed (the common case for devices that skip LOGOUT) must not keep
// an upstream connection open for a minute: Exchange Online counts them per mailbox.
template <class State>
awaitable<void> until_upstream_quiet(State& st, relay_options opt) {
  asio::steady_timer t{co_await asio::this_coro::executor};
  const auto hard_end = clock::now() + opt.half_close_grace;
  st.last_activity = clock::now();
  for (;;) {
    const auto until = std::min(hard_end, st.last_activity + opt.half_close_quiet);
    if (clock::now() >= until) co_return;
    t.expires_at(until);
    co_await t.async_wait(use_nothrow);
    auto cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none) co_return;
  }
}

// The client direction, then the wait for the upstream's last replies. Sequential on purpose:
// `pump && wait` would start the wait at login.
awaitable<void> client_then_grace(mail_stream& client, mail_stream& upstream, std::uint64_t& moved,
                                  relay_state& st, relay_options opt) {
  co_await pump(client, upstream, moved, st, "client closed");
  co_await until_upstream_quiet(st, opt);
}

// Sleeps until the idle deadline and re-checks; an active session costs one wake-up per
// idle_timeout, an idle one exactly one (no polling: thousands of IDLE sessions stay at ~0% CPU).
awaitable<void> watchdog(relay_state& st, relay_options opt) {
  for (;;) {
    auto deadline = st.last_activity + opt.idle_timeout;
    if (clock::now() >= deadline) co_return;
    st.wake.expires_at(deadline);
    co_await st.wake.async_wait(use_nothrow);
    auto cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none) co_return;
  }
}

}  // namespace

awaitable<relay_result> relay(mail_stream& client, mail_stream& upstream,
                              std::string client_leftover, std::string upstream_leftover,
                              relay_options opt) {
  using namespace boost::asio::experimental::awaitable_operators;
  relay_result res;
  if (!upstream_leftover.empty()) {
    auto [ec, n] = co_await client.write_all(asio::buffer(upstream_leftover));
    if (ec) co_return relay_result{0, 0, "client write failed"};
    res.upstream_to_client += n;
  }
  if (!client_leftover.empty()) {
    auto [ec, n] = co_await upstream.write_all(asio::buffer(client_leftover));
    if (ec) co_return relay_result{0, res.upstream_to_client, "upstream write failed"};
    res.client_to_upstream += n;
  }
  relay_state st{co_await asio::this_coro::executor};
  // When the client stops sending, the upstream may still owe it replies (a QUIT's "221"): keep
  // relaying toward the client until the upstream closes or the grace period ends. When the
  // upstream closes, the session is over: nothing the client sends can be delivered any more.
  auto r = co_await (
      client_then_grace(client, upstream, res.client_to_upstream, st, opt) ||
      pump(upstream, client, res.upstream_to_client, st, "upstream closed") || watchdog(st, opt));
  switch (r.index()) {
    case 0: res.end = st.first_end + ", then the upstream went quiet"; break;
    case 1: res.end = st.first_end; break;
    default: res.end = "idle timeout"; break;
  }
  co_return res;
}

}  // namespace xo::proxy

namespace xo::proxy {

namespace {

struct filtered_state {
  explicit filtered_state(asio::any_io_executor ex, std::vector<std::string> allowed)
      : filter(std::move(allowed)), resume(ex) {}
  protocol::smtp::sender_filter filter;
  asio::steady_timer resume;  // the client side waits here while the filter holds its input
  bool client_done = false;
  bool upstream_done = false;
  clock::time_point last_activity = clock::now();
};

awaitable<void> filtered_client_side(mail_stream& client, mail_stream& upstream,
                                     filtered_state& st, std::uint64_t& moved,
                                     std::string first) {
  std::array<char, relay_buffer> buf;
  std::string out;
  st.filter.from_client(first, out);
  for (;;) {
    st.filter.resume(out);  // held input the server's latest replies have released
    if (!out.empty()) {
      auto [wec, w] = co_await upstream.write_all(asio::buffer(out));
      if (wec) break;
      moved += out.size();
      out.clear();
      continue;
    }
    if (st.filter.broken() || st.upstream_done) break;
    if (st.filter.waiting()) {
      // Input after DATA is held until the server answered DATA; the other side wakes us.
      st.resume.expires_at(clock::time_point::max());
      co_await st.resume.async_wait(use_nothrow);
      auto cs = co_await asio::this_coro::cancellation_state;
      if (cs.cancelled() != asio::cancellation_type::none) co_return;
      continue;
    }
    auto [rec, n] = co_await client.read_some(asio::buffer(buf));
    if (rec) break;
    st.last_activity = clock::now();
    st.filter.from_client(std::string_view{buf.data(), n}, out);
  }
  st.client_done = true;
  if (!upstream.tls_active()) upstream.shutdown_send();
}

awaitable<void> filtered_client_then_grace(mail_stream& client, mail_stream& upstream,
                                           filtered_state& st, std::uint64_t& moved,
                                           std::string first, relay_options opt) {
  co_await filtered_client_side(client, upstream, st, moved, std::move(first));
  co_await until_upstream_quiet(st, opt);
}

awaitable<void> filtered_upstream_side(mail_stream& client, mail_stream& upstream,
                                       filtered_state& st, std::uint64_t& moved) {
  std::array<char, relay_buffer> buf;
  std::string out;
  for (;;) {
    auto [rec, n] = co_await upstream.read_some(asio::buffer(buf));
    if (rec) break;
    st.last_activity = clock::now();
    st.filter.from_upstream(std::string_view{buf.data(), n}, out);
    st.resume.cancel();  // the client side may be waiting for this reply
    if (!out.empty()) {
      auto [wec, w] = co_await client.write_all(asio::buffer(out));
      if (wec) break;
      moved += out.size();
      out.clear();
    }
    if (st.filter.broken()) break;
  }
  st.upstream_done = true;
  if (!client.tls_active()) client.shutdown_send();
}

awaitable<void> filtered_watchdog(filtered_state& st, relay_options opt) {
  asio::steady_timer t{co_await asio::this_coro::executor};
  for (;;) {
    auto deadline = st.last_activity + opt.idle_timeout;
    if (clock::now() >= deadline) co_return;
    t.expires_at(deadline);
    co_await t.async_wait(use_nothrow);
    auto cs = co_await asio::this_coro::cancellation_state;
    if (cs.cancelled() != asio::cancellation_type::none) co_return;
  }
}

}  // namespace

awaitable<filtered_result> relay_smtp_filtered(mail_stream& client, mail_stream& upstream,
                                               std::string client_leftover,
                                               std::string upstream_leftover,
                                               std::vector<std::string> allowed_senders,
                                               relay_options opt) {
  using namespace boost::asio::experimental::awaitable_operators;
  filtered_result res;
  if (!upstream_leftover.empty()) {
    auto [ec, n] = co_await client.write_all(asio::buffer(upstream_leftover));
    if (ec) {
      res.end = "client write failed";
      co_return res;
    }
    res.upstream_to_client += n;
  }
  filtered_state st{co_await asio::this_coro::executor, std::move(allowed_senders)};
  auto r = co_await (filtered_client_then_grace(client, upstream, st, res.client_to_upstream,
                                                std::move(client_leftover), opt) ||
                     filtered_upstream_side(client, upstream, st, res.upstream_to_client) ||
                     filtered_watchdog(st, opt));
  switch (r.index()) {
    case 0: res.end = "client closed, then the upstream went quiet"; break;
    case 1: res.end = st.filter.broken() ? "upstream reply not understood" : "upstream closed"; break;
    default: res.end = "idle timeout"; break;
  }
  res.refused_senders = st.filter.refused();
  co_return res;
}

}  // namespace xo::proxy
