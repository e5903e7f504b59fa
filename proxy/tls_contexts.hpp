#pragma once
// TLS contexts, built once per listener at startup.
// Server side (app → proxy): the listener's certificate and key, TLS 1.2 minimum.
// Client side (proxy → upstream): verify_peer against the system trust store plus an optional
// extra CA file, TLS 1.2 minimum; host name and SNI are set per connection (mail_stream).
#include "config/config.hpp"
#include "net/asio.hpp"

#include <memory>

namespace xo::proxy {

struct tls_setup_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws tls_setup_error with a readable message (file names, OpenSSL reason).
std::unique_ptr<ssl::context> make_server_context(const config::listener& l);
std::unique_ptr<ssl::context> make_upstream_context(const std::string& extra_ca_file);

}  // namespace xo::proxy
