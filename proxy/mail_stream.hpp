#pragma once
// One stream type for plain, implicit TLS and STARTTLS on either side: a TCP socket, and from
// start_tls() on an OpenSSL connection driven directly on that socket's descriptor (non-blocking,
// waiting with async_wait). Not asio::ssl::stream: that keeps four 17 KiB buffers per stream
// for the session's whole life (its engine's and the BIO pair's), while an idle OpenSSL
// connection with SSL_MODE_RELEASE_BUFFERS holds none, and a plain side holds no TLS state at all.
// Thousands of idle IMAP sessions are the common case for a mail proxy. Not a template, so this
// compiles once. Every operation returns errors as values.
#include "net/asio.hpp"

#include <openssl/types.h>

#include <memory>
#include <string>
#include <tuple>

namespace xo::proxy {

class mail_stream {
 public:
  // `tls` is used only if start_tls() is called (the stream holds a reference on its SSL_CTX).
  mail_stream(tcp::socket socket, ssl::context& tls);
  mail_stream(mail_stream&&) noexcept;
  mail_stream& operator=(mail_stream&&) noexcept;
  ~mail_stream();

  awaitable<std::tuple<error_code, std::size_t>> read_some(asio::mutable_buffer b);
  awaitable<std::tuple<error_code, std::size_t>> write_all(asio::const_buffer b);
  // For the relay, which holds no buffer while a side is idle: wait_readable() completes when
  // read_now() may return data (at once if TLS or the last read left some), read_now() never
  // blocks (asio::error::would_block when nothing is there yet).
  // read_now() on a plain socket takes a short read as "drained" (saves an EAGAIN round trip).
  awaitable<error_code> wait_readable();
  std::tuple<error_code, std::size_t> read_now(asio::mutable_buffer b);
  // False once a read_now() found (or, plain, expects) nothing more without waiting.
  bool ready() const noexcept { return read_needs_ == need::nothing; }

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
  struct ssl_free {
    void operator()(SSL* s) const noexcept;
  };
  struct ctx_free {
    void operator()(SSL_CTX* c) const noexcept;
  };
  enum class need { nothing, read, write };
  // One OpenSSL call's result: bytes, or what to wait for, or the error.
  std::tuple<error_code, std::size_t> tls_read(asio::mutable_buffer b);
  error_code ssl_error(int ret);
  awaitable<error_code> wait_for(need n);

  tcp::socket socket_;
  std::unique_ptr<SSL_CTX, ctx_free> ctx_;
  std::unique_ptr<SSL, ssl_free> ssl_;
  std::string verify_host_;
  tcp::endpoint remote_;
  need read_needs_ = need::read;  // what the last read_now() was missing
  need last_need_ = need::nothing;
  bool tls_active_ = false;
  bool broken_ = false;  // a fatal TLS error: no close_notify any more
};

}  // namespace xo::proxy
