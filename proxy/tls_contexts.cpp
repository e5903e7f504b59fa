#include "proxy/tls_contexts.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>

namespace xo::proxy {

namespace {

std::string openssl_reason(const error_code& ec) {
  std::string s = ec.message();
  return s.empty() ? "unknown OpenSSL error" : s;
}

void common_hardening(ssl::context& ctx) {
  ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                  ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                  ssl::context::no_compression);
  SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
  // Smaller per-connection memory: release read/write buffers while idle.
  SSL_CTX_set_mode(ctx.native_handle(), SSL_MODE_RELEASE_BUFFERS);
}

}  // namespace

std::unique_ptr<ssl::context> make_server_context(const config::listener& l) {
  auto ctx = std::make_unique<ssl::context>(ssl::context::tls_server);
  common_hardening(*ctx);
  error_code ec;
  ctx->use_certificate_chain_file(l.cert_file, ec);
  if (ec) throw tls_setup_error("cannot load cert_file " + l.cert_file + ": " + openssl_reason(ec));
  ctx->use_private_key_file(l.key_file, ssl::context::pem, ec);
  if (ec) throw tls_setup_error("cannot load key_file " + l.key_file + ": " + openssl_reason(ec));
  if (SSL_CTX_check_private_key(ctx->native_handle()) != 1)
    throw tls_setup_error("key_file " + l.key_file + " does not match cert_file " + l.cert_file);
  return ctx;
}

std::unique_ptr<ssl::context> make_upstream_context(const std::string& extra_ca_file) {
  auto ctx = std::make_unique<ssl::context>(ssl::context::tls_client);
  common_hardening(*ctx);
  error_code ec;
  ctx->set_default_verify_paths(ec);
  if (ec) throw tls_setup_error("cannot load the system trust store: " + openssl_reason(ec));
  if (!extra_ca_file.empty()) {
    ctx->load_verify_file(extra_ca_file, ec);
    if (ec)
      throw tls_setup_error("cannot load upstream_ca_file " + extra_ca_file + ": " +
                            openssl_reason(ec));
  }
  ctx->set_verify_mode(ssl::verify_peer);
  return ctx;
}

}  // namespace xo::proxy
