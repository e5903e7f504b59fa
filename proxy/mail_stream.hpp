#pragma once
// One stream type for plain, implicit TLS and STARTTLS on either side: an ssl::stream built up
// front, used raw until start_tls() succeeds (the Boost.MySQL adaptor shape). Not a template, so
// this compiles once. Every operation returns errors as values.
#include "net/asio.hpp"

#include <string>
#include <tuple>

namespace xo::proxy {

class mail_stream {
 public:
  mail_stream(tcp::socket socket, ssl::context& tls);

  awaitable<std::tuple<error_code, std::size_t>> read_some(asio::mutable_buffer b);
  awaitable<std::tuple<error_code, std::size_t>> write_all(asio::const_buffer b);
  // Precondition: the caller's protocol buffer is empty (no plaintext pipelined past STARTTLS).
  awaitable<error_code> start_tls(ssl::stream_base::handshake_type role);
  // Client role only: the name to verify and to send as SNI (not sent for IP literals).
  void set_verify_host(const std::string& host);
  // Ends our sending direction at the TCP level (the relay's half-close).
  void shutdown_send() noexcept;
  void close() noexcept;

  bool tls_active() const noexcept { return tls_active_; }
  const tcp::endpoint& remote() const noexcept { return remote_; }
  std::string tls_description() const;  // "TLSv1.3 TLS_AES_256_GCM_SHA384", or "none"

 private:
  ssl::stream<tcp::socket> stream_;
  tcp::endpoint remote_;
  bool tls_active_ = false;
};

}  // namespace xo::proxy
