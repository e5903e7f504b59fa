#include "proxy/upstream_connect.hpp"

#include <boost/asio/connect.hpp>

namespace xo::proxy {

namespace {

awaitable<upstream_result> connect_steps(config::host_port where, bool implicit_tls,
                                         ssl::context& tls) {
  auto ex = co_await asio::this_coro::executor;
  tcp::socket sock{ex};
  error_code not_ip;
  auto ip = asio::ip::make_address(where.host, not_ip);
  if (!not_ip) {
    // An IP literal needs no trip through the resolver thread.
    auto [cec] = co_await sock.async_connect(tcp::endpoint{ip, where.port}, use_nothrow);
    if (cec)
      co_return upstream_result{std::nullopt, "connect " + where.to_string() + ": " + cec.message()};
  } else {
    tcp::resolver resolver{ex};
    auto [rec, results] =
        co_await resolver.async_resolve(where.host, std::to_string(where.port), use_nothrow);
    if (rec) co_return upstream_result{std::nullopt, "resolve " + where.host + ": " + rec.message()};
    auto [cec, ep] = co_await asio::async_connect(sock, results, use_nothrow);
    if (cec)
      co_return upstream_result{std::nullopt, "connect " + where.to_string() + ": " + cec.message()};
  }
  error_code ignored;
  sock.set_option(tcp::no_delay(true), ignored);
  sock.set_option(asio::socket_base::keep_alive(true), ignored);
  upstream_result r;
  r.stream.emplace(std::move(sock), tls);
  r.stream->set_verify_host(where.host);
  if (implicit_tls) {
    auto hec = co_await r.stream->start_tls(ssl::stream_base::client);
    if (hec) {
      r.stream.reset();
      r.error = "tls " + where.to_string() + ": " + hec.message();
    }
  }
  co_return r;
}

}  // namespace

awaitable<upstream_result> connect_upstream(config::host_port where, bool implicit_tls,
                                            ssl::context& tls, std::chrono::seconds timeout) {
  auto label = where.to_string();
  auto r = co_await with_timeout(connect_steps(std::move(where), implicit_tls, tls), timeout);
  if (!r) co_return upstream_result{std::nullopt, "connect " + label + ": timed out"};
  co_return std::move(*r);
}

}  // namespace xo::proxy
