#include "proxy/mail_stream.hpp"

#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace xo::proxy {

mail_stream::mail_stream(tcp::socket socket, ssl::context& tls) : stream_(std::move(socket), tls) {
  error_code ec;
  remote_ = stream_.next_layer().remote_endpoint(ec);
}

awaitable<std::tuple<error_code, std::size_t>> mail_stream::read_some(asio::mutable_buffer b) {
  if (tls_active_) co_return co_await stream_.async_read_some(b, use_nothrow);
  co_return co_await stream_.next_layer().async_read_some(b, use_nothrow);
}

awaitable<std::tuple<error_code, std::size_t>> mail_stream::write_all(asio::const_buffer b) {
  if (tls_active_) co_return co_await asio::async_write(stream_, b, use_nothrow);
  co_return co_await asio::async_write(stream_.next_layer(), b, use_nothrow);
}

awaitable<error_code> mail_stream::start_tls(ssl::stream_base::handshake_type role) {
  auto [ec] = co_await stream_.async_handshake(role, use_nothrow);
  if (!ec) tls_active_ = true;
  co_return ec;
}

void mail_stream::set_verify_host(const std::string& host) {
  SSL* ssl = stream_.native_handle();
  error_code ec;
  asio::ip::make_address(host, ec);
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
  if (!ec) {
    // RFC 6066 §3: no SNI for IP literals; verify the address against the certificate's IP SANs.
    X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl, host.c_str());
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
  }
  stream_.set_verify_mode(ssl::verify_peer);
}

void mail_stream::shutdown_send() noexcept {
  error_code ec;
  stream_.next_layer().shutdown(tcp::socket::shutdown_send, ec);
}

void mail_stream::close() noexcept {
  error_code ec;
  stream_.next_layer().shutdown(tcp::socket::shutdown_both, ec);
  stream_.next_layer().close(ec);
}

std::string mail_stream::tls_description() const {
  if (!tls_active_) return "none";
  SSL* ssl = const_cast<ssl::stream<tcp::socket>&>(stream_).native_handle();
  return std::string{SSL_get_version(ssl)} + " " + SSL_get_cipher_name(ssl);
}

}  // namespace xo::proxy
