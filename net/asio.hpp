#pragma once
// Shared Asio spellings for auth/ and proxy/ (Boost 1.81 = Asio 1.26: no cancel_after, no bare
// as_tuple token). Never include this from protocol/ or common/.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <optional>

namespace xo {
namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using boost::system::error_code;
template <class T>
using awaitable = boost::asio::awaitable<T>;

// Errors as values on the data plane: auto [ec, n] = co_await op(..., use_nothrow);
constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

// Waits for d (or until cancelled).
inline awaitable<void> sleep_for(std::chrono::steady_clock::duration d) {
  asio::steady_timer t{co_await asio::this_coro::executor, d};
  co_await t.async_wait(use_nothrow);
}

// Runs op with a deadline. nullopt when the timer won (op was cancelled: after a timeout on a
// TLS stream the session must close, never retry I/O on it).
template <class T>
awaitable<std::optional<T>> with_timeout(awaitable<T> op, std::chrono::steady_clock::duration d) {
  using namespace boost::asio::experimental::awaitable_operators;
  auto r = co_await (std::move(op) || sleep_for(d));
  if (r.index() == 1) co_return std::nullopt;
  co_return std::get<0>(std::move(r));
}

}  // namespace xo
