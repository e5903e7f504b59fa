#include "proxy/mail_stream.hpp"

#include <boost/asio/write.hpp>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <cerrno>

namespace xo::proxy {

namespace {

// A failed certificate check with OpenSSL's reason ("certificate has expired", "hostname
// mismatch"), which the SSL error queue's "certificate verify failed" alone does not say.
// (error_category's destructor is protected and non-virtual by design: categories are statics.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnon-virtual-dtor"
class x509_category final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "x509"; }
  std::string message(int ev) const override {
    return std::string{"certificate verify failed: "} + X509_verify_cert_error_string(ev);
  }
};
#pragma GCC diagnostic pop

const boost::system::error_category& x509_errors() {
  static const x509_category c;
  return c;
}

// Read-ahead buffer while data flows: up to four full TLS records per recv(). Released again
// when the connection goes idle (SSL_MODE_RELEASE_BUFFERS).
constexpr std::size_t tls_read_buffer = 64 * 1024;

}  // namespace

void mail_stream::ssl_free::operator()(SSL* s) const noexcept { SSL_free(s); }
void mail_stream::ctx_free::operator()(SSL_CTX* c) const noexcept { SSL_CTX_free(c); }

mail_stream::mail_stream(tcp::socket socket, ssl::context& tls) : socket_(std::move(socket)) {
  SSL_CTX* c = tls.native_handle();
  SSL_CTX_up_ref(c);  // a reload may drop the context before a later STARTTLS
  ctx_.reset(c);
  error_code ec;
  remote_ = socket_.remote_endpoint(ec);
  socket_.non_blocking(true, ec);
}

mail_stream::mail_stream(mail_stream&&) noexcept = default;
mail_stream& mail_stream::operator=(mail_stream&&) noexcept = default;
mail_stream::~mail_stream() = default;

error_code mail_stream::ssl_error(int ret) {
  const int saved_errno = errno;
  switch (SSL_get_error(ssl_.get(), ret)) {
    case SSL_ERROR_WANT_READ:
      last_need_ = need::read;
      return asio::error::would_block;
    case SSL_ERROR_WANT_WRITE:
      last_need_ = need::write;
      return asio::error::would_block;
    case SSL_ERROR_ZERO_RETURN:  // the peer's close_notify
      return asio::error::eof;
    case SSL_ERROR_SYSCALL:
      broken_ = true;
      ERR_clear_error();
      if (saved_errno == 0) return ssl::error::stream_truncated;
      return error_code{saved_errno, boost::system::system_category()};
    default: {
      broken_ = true;
      const unsigned long code = ERR_peek_last_error();
      const long verify = SSL_get_verify_result(ssl_.get());
      ERR_clear_error();
      if (ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED && verify != X509_V_OK)
        return error_code{static_cast<int>(verify), x509_errors()};
      if (ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
        return ssl::error::stream_truncated;
      return error_code{static_cast<int>(code), asio::error::get_ssl_category()};
    }
  }
}

awaitable<error_code> mail_stream::wait_for(need n) {
  const auto what = n == need::write ? tcp::socket::wait_write : tcp::socket::wait_read;
  auto [ec] = co_await socket_.async_wait(what, use_nothrow);
  co_return ec;
}

std::tuple<error_code, std::size_t> mail_stream::tls_read(asio::mutable_buffer b) {
  ERR_clear_error();
  std::size_t n = 0;
  const int r = SSL_read_ex(ssl_.get(), b.data(), b.size(), &n);
  if (r == 1) return {error_code{}, n};
  return {ssl_error(r), 0};
}

std::tuple<error_code, std::size_t> mail_stream::read_now(asio::mutable_buffer b) {
  if (b.size() == 0) return {error_code{}, 0};
  if (tls_active_) {
    auto [ec, n] = tls_read(b);
    read_needs_ = ec == asio::error::would_block ? last_need_ : need::nothing;
    return {ec, n};
  }
  error_code ec;
  const std::size_t n = socket_.read_some(b, ec);  // the socket is non-blocking
  read_needs_ = (ec == asio::error::would_block || (!ec && n < b.size())) ? need::read : need::nothing;
  return {ec, n};
}

awaitable<error_code> mail_stream::wait_readable() {
  const need n = read_needs_;
  if (n == need::nothing) co_return error_code{};
  auto ec = co_await wait_for(n);
  if (!ec) read_needs_ = need::nothing;
  co_return ec;
}

awaitable<std::tuple<error_code, std::size_t>> mail_stream::read_some(asio::mutable_buffer b) {
  for (;;) {
    auto [ec, n] = read_now(b);
    if (ec != asio::error::would_block) co_return std::tuple{ec, n};
    auto wec = co_await wait_readable();
    if (wec) co_return std::tuple{wec, std::size_t{0}};
  }
}

awaitable<std::tuple<error_code, std::size_t>> mail_stream::write_all(asio::const_buffer b) {
  if (!tls_active_) co_return co_await asio::async_write(socket_, b, use_nothrow);
  const char* p = static_cast<const char*>(b.data());
  std::size_t done = 0;
  while (done < b.size()) {
    ERR_clear_error();
    std::size_t n = 0;
    const int r = SSL_write_ex(ssl_.get(), p + done, b.size() - done, &n);
    if (r == 1) {
      done += n;
      continue;
    }
    auto ec = ssl_error(r);
    if (ec != asio::error::would_block) co_return std::tuple{ec, done};
    auto wec = co_await wait_for(last_need_);
    if (wec) co_return std::tuple{wec, done};
  }
  co_return std::tuple{error_code{}, done};
}

awaitable<error_code> mail_stream::start_tls(ssl::stream_base::handshake_type role) {
  ssl_.reset(SSL_new(ctx_.get()));
  if (!ssl_ || SSL_set_fd(ssl_.get(), static_cast<int>(socket_.native_handle())) != 1) {
    const auto code = static_cast<int>(ERR_get_error());
    ssl_.reset();
    co_return error_code{code, asio::error::get_ssl_category()};
  }
  // Partial writes let write_all() go on from where a full socket stopped it; the read-ahead
  // buffer takes several records per recv() while data flows, and is freed when idle.
  SSL_set_mode(ssl_.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                               SSL_MODE_RELEASE_BUFFERS);
  SSL_set_read_ahead(ssl_.get(), 1);
  SSL_set_default_read_buffer_len(ssl_.get(), tls_read_buffer);
  if (role == ssl::stream_base::client) {
    SSL_set_connect_state(ssl_.get());
    if (!verify_host_.empty()) {
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl_.get());
      error_code not_ip;
      asio::ip::make_address(verify_host_, not_ip);
      if (!not_ip) {
        // RFC 6066 §3: no SNI for IP literals; verify the address against the IP SANs.
        X509_VERIFY_PARAM_set1_ip_asc(param, verify_host_.c_str());
      } else {
        SSL_set_tlsext_host_name(ssl_.get(), verify_host_.c_str());
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        X509_VERIFY_PARAM_set1_host(param, verify_host_.c_str(), verify_host_.size());
      }
      SSL_set_verify(ssl_.get(), SSL_VERIFY_PEER, nullptr);
    }
  } else {
    SSL_set_accept_state(ssl_.get());
  }
  for (;;) {
    ERR_clear_error();
    const int r = SSL_do_handshake(ssl_.get());
    if (r == 1) break;
    auto ec = ssl_error(r);
    if (ec != asio::error::would_block) co_return ec;
    auto wec = co_await wait_for(last_need_);
    if (wec) co_return wec;
  }
  tls_active_ = true;
  read_needs_ = need::nothing;  // the handshake may have read application data ahead
  co_return error_code{};
}

void mail_stream::set_verify_host(const std::string& host) { verify_host_ = host; }

void mail_stream::shutdown_send() noexcept {
  error_code ec;
  socket_.shutdown(tcp::socket::shutdown_send, ec);
}

void mail_stream::close() noexcept {
  // A close_notify if it fits in the socket buffer now (never waits); not after a fatal error.
  if (tls_active_ && ssl_ && !broken_) {
    ERR_clear_error();
    SSL_shutdown(ssl_.get());
    ERR_clear_error();
  }
  error_code ec;
  socket_.shutdown(tcp::socket::shutdown_both, ec);
  socket_.close(ec);
}

std::string mail_stream::tls_description() const {
  if (!tls_active_ || !ssl_) return "none";
  return std::string{SSL_get_version(ssl_.get())} + " " + SSL_get_cipher_name(ssl_.get());
}

}  // namespace xo::proxy
