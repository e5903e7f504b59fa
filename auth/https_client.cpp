// One HTTPS request per call, no connection reuse: token requests are rare (one per account per
// hour or so), and a fresh connection never carries state from a failed exchange.
#include "auth/https_client.hpp"

#include "common/log.hpp"

#include <openssl/crypto.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/url/encode.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <stdexcept>

namespace xo::auth {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using steady = std::chrono::steady_clock;
using ssl_stream = ssl::stream<beast::tcp_stream>;

namespace {

constexpr std::size_t max_body_bytes = 64 * 1024;
constexpr std::chrono::seconds max_retry_after{3600};
constexpr std::chrono::seconds shutdown_grace{2};

std::shared_ptr<spdlog::logger> log() { return logger("auth"); }

http_outcome fail(std::string what) {
  return http_outcome{std::nullopt, http_failure{std::move(what)}};
}

// x-ms-request-id is a GUID; anything else is cut down so a hostile server cannot inject log lines.
std::string safe_id(std::string_view v) {
  std::string out;
  for (char c : v.substr(0, 64))
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '-') out += c;
  return out;
}

// The resolver runs getaddrinfo on a background thread and cannot interrupt it, so cancel() alone
// would not bound the wait: the caller waits on a timer instead, and the resolver's handler keeps
// the shared state alive for as long as getaddrinfo takes.
struct resolve_state {
  resolve_state(asio::any_io_executor ex, steady::time_point deadline)
      : resolver(ex), done(ex, deadline) {}
  tcp::resolver resolver;
  asio::steady_timer done;
  error_code ec;
  tcp::resolver::results_type results;
  bool finished = false;
};

awaitable<std::optional<tcp::resolver::results_type>> resolve(asio::any_io_executor ex,
                                                              detail::https_url u,
                                                              steady::time_point deadline,
                                                              http_failure* failure) {
  auto st = std::make_shared<resolve_state>(ex, deadline);
  st->resolver.async_resolve(u.host, std::to_string(u.port),
                             [st](error_code ec, tcp::resolver::results_type r) {
                               st->ec = ec;
                               st->results = std::move(r);
                               st->finished = true;
                               st->done.cancel();
                             });
  co_await st->done.async_wait(use_nothrow);
  if (!st->finished) {
    st->resolver.cancel();
    failure->what = steady::now() >= deadline ? "timeout" : "cancelled";
    co_return std::nullopt;
  }
  if (st->ec) {
    failure->what = "resolve: " + st->ec.message();
    co_return std::nullopt;
  }
  co_return std::move(st->results);
}

// SNI (never for IP literals: RFC 6066 §3) and name/IP checking done by OpenSSL during chain
// verification, so a mismatch is reported as such by SSL_get_verify_result.
bool prepare_tls(ssl_stream& s, const detail::https_url& u) {
  SSL* ssl = s.native_handle();
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  if (u.ip_literal) return X509_VERIFY_PARAM_set1_ip_asc(param, u.host.c_str()) == 1;
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  return SSL_set_tlsext_host_name(ssl, u.host.c_str()) == 1 &&
         X509_VERIFY_PARAM_set1_host(param, u.host.c_str(), u.host.size()) == 1;
}

std::string describe(std::string_view step, const error_code& ec) {
  if (ec == beast::error::timeout) return "timeout";
  return fmt::format("{}: {}", step, ec.message());
}

awaitable<std::optional<http_failure>> open_tls(asio::any_io_executor ex, ssl_stream* s,
                                                detail::https_url u, steady::time_point deadline) {
  http_failure failure;
  auto endpoints = co_await resolve(ex, u, deadline, &failure);
  if (!endpoints) co_return failure;
  auto& tcp_layer = beast::get_lowest_layer(*s);
  tcp_layer.expires_at(deadline);  // covers connect, handshake, write and read
  auto [cec, ep] = co_await tcp_layer.async_connect(*endpoints, use_nothrow);
  if (cec) co_return http_failure{describe("connect", cec)};
  if (!prepare_tls(*s, u)) co_return http_failure{"tls: cannot set up server name check"};
  auto [hec] = co_await s->async_handshake(ssl::stream_base::client, use_nothrow);
  if (hec) {
    const long vr = SSL_get_verify_result(s->native_handle());
    if (vr != X509_V_OK && hec != beast::error::timeout)
      co_return http_failure{
          fmt::format("tls: certificate verify failed: {}", X509_verify_cert_error_string(vr))};
    co_return http_failure{describe("tls", hec)};
  }
  co_return std::nullopt;
}

std::string host_header(const detail::https_url& u) {
  std::string h = u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host;
  if (u.port != 443) h += ":" + std::to_string(u.port);
  return h;
}

awaitable<http_outcome> round_trip(ssl_stream* s, http::request<http::string_body>* req) {
  auto [wec, nwritten] = co_await http::async_write(*s, *req, use_nothrow);
  if (wec) co_return fail(describe("http: write", wec));
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(max_body_bytes);
  auto [rec, nread] = co_await http::async_read(*s, buffer, parser, use_nothrow);
  if (rec == http::error::body_limit) co_return fail("http: response body too large");
  if (rec) co_return fail(describe("http: read", rec));
  auto& res = parser.get();
  http_response out;
  out.status = res.result_int();
  out.retry_after = detail::parse_retry_after(res[http::field::retry_after]);
  out.request_id = safe_id(res["x-ms-request-id"]);
  out.body = std::move(res.body());
  co_return http_outcome{std::move(out), {}};
}

// Best effort: the response is complete. Servers often close without close_notify
// (stream_truncated), which is harmless here because the body length was framed by HTTP.
// Bounded by the request deadline, and by a short grace so a silent peer costs little.
awaitable<void> close_tls(ssl_stream* s, steady::time_point deadline) {
  beast::get_lowest_layer(*s).expires_at(std::min(deadline, steady::now() + shutdown_grace));
  auto [ec] = co_await s->async_shutdown(use_nothrow);
  if (ec && ec != ssl::error::stream_truncated && ec != asio::error::eof &&
      ec != beast::error::timeout)
    log()->debug("https: tls shutdown: {}", ec.message());
  beast::get_lowest_layer(*s).close();
}

}  // namespace

struct https_client::impl {
  impl(asio::any_io_executor e, const std::string& ca_file, std::chrono::seconds t)
      : ex(std::move(e)), ctx(ssl::context::tls_client), timeout(t) {
    ctx.set_verify_mode(ssl::verify_peer);
    ctx.set_default_verify_paths();
    SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
    if (!ca_file.empty()) {
      error_code ec;
      ctx.load_verify_file(ca_file, ec);
      if (ec)
        throw std::runtime_error(fmt::format("cannot load CA file {}: {}", ca_file, ec.message()));
    }
  }

  awaitable<http_outcome> perform(http::verb verb, std::string url, secret body);

  asio::any_io_executor ex;
  ssl::context ctx;
  std::chrono::seconds timeout;
};

awaitable<http_outcome> https_client::impl::perform(http::verb verb, std::string url, secret body) {
  auto u = detail::parse_https_url(url);
  if (!u) co_return fail("http: invalid https url");
  const auto start = steady::now();
  const auto deadline = start + timeout;
  ssl_stream stream{ex, ctx};
  if (auto f = co_await open_tls(ex, &stream, *u, deadline)) co_return fail(std::move(f->what));

  http::request<http::string_body> req{verb, u->target, 11};
  req.set(http::field::host, host_header(*u));
  req.set(http::field::user_agent, "xoauth-proxy/" XOAUTH_VERSION);
  req.set(http::field::accept, "application/json");
  req.set(http::field::connection, "close");
  if (verb == http::verb::post) {
    req.set(http::field::content_type, "application/x-www-form-urlencoded");
    req.body() = body.reveal();
  }
  req.prepare_payload();
  auto out = co_await round_trip(&stream, &req);
  OPENSSL_cleanse(req.body().data(), req.body().size());  // the copy carried credentials
  if (out.response) co_await close_tls(&stream, deadline);

  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - start);
  const auto path = std::string_view{u->target}.substr(0, u->target.find('?'));
  if (out.response)
    log()->debug("https: {} {}{} -> {} in {} ms (request_id={})",
                 std::string_view{http::to_string(verb)}, host_header(*u), path,
                 out.response->status, ms.count(), out.response->request_id);
  else
    log()->debug("https: {} {}{} failed after {} ms: {}", std::string_view{http::to_string(verb)},
                 host_header(*u), path, ms.count(), out.failure.what);
  co_return out;
}

https_client::https_client(asio::any_io_executor ex, std::string ca_file,
                           std::chrono::seconds timeout)
    : impl_(std::make_unique<impl>(std::move(ex), ca_file, timeout)) {}

https_client::~https_client() = default;

awaitable<http_outcome> https_client::post_form(std::string url, std::vector<form_field> fields) {
  return impl_->perform(http::verb::post, std::move(url), detail::encode_form(fields));
}

awaitable<http_outcome> https_client::get(std::string url) {
  return impl_->perform(http::verb::get, std::move(url), secret{});
}

namespace detail {

std::optional<https_url> parse_https_url(std::string_view url) {
  auto r = boost::urls::parse_uri(url);
  if (!r) return std::nullopt;
  const auto& u = *r;
  if (u.scheme_id() != boost::urls::scheme::https || u.has_userinfo()) return std::nullopt;
  https_url out;
  switch (u.host_type()) {
    case boost::urls::host_type::name:
      out.host = u.host_address();
      break;
    case boost::urls::host_type::ipv4:
    case boost::urls::host_type::ipv6:
      out.host = u.host_address();
      out.ip_literal = true;
      break;
    default:
      return std::nullopt;
  }
  if (out.host.empty() || out.host.find('\0') != std::string::npos) return std::nullopt;
  if (u.has_port()) {
    // port_number() wraps values above 65535, so the digits are checked here.
    const auto digits = u.port();
    unsigned port = 0;
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (ec != std::errc{} || p != digits.data() + digits.size() || port == 0 || port > 65535)
      return std::nullopt;
    out.port = static_cast<std::uint16_t>(port);
  }
  out.target = u.encoded_path().empty() ? "/" : std::string(u.encoded_path());
  if (u.has_query()) out.target += "?" + std::string(u.encoded_query());
  return out;
}

secret encode_form(const std::vector<form_field>& fields) {
  std::size_t worst = 0;
  for (const auto& f : fields) worst += 3 * (f.name.size() + f.value.size()) + 2;
  std::string body;
  body.reserve(worst);  // no reallocation: no stray copies of secrets in freed memory
  for (const auto& f : fields) {
    if (!body.empty()) body += '&';
    body += boost::urls::encode(f.name, boost::urls::unreserved_chars);
    body += '=';
    auto v = boost::urls::encode(f.value.reveal(), boost::urls::unreserved_chars);
    body += v;
    OPENSSL_cleanse(v.data(), v.size());
  }
  return secret{std::move(body)};
}

std::optional<std::chrono::seconds> parse_retry_after(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  if (v.empty() || v.size() > 10) return std::nullopt;
  long long n = 0;
  auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc{} || p != v.data() + v.size() || n < 0) return std::nullopt;
  return std::min(std::chrono::seconds{n}, max_retry_after);
}

}  // namespace detail

}  // namespace xo::auth
