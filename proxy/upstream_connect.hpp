#pragma once
// Connects to the upstream mail server: resolve, try each address, TCP keepalive and no-delay,
// then (implicit TLS) the verified handshake. Never falls back to plaintext.
#include "config/config.hpp"
#include "proxy/mail_stream.hpp"

#include <optional>

namespace xo::proxy {

struct upstream_result {
  std::optional<mail_stream> stream;
  std::string error;  // when !stream: "resolve ...: ...", "connect ...: ...", "tls ...: ..."
};

// The host name of `where` is what the certificate must match and what goes into SNI.
// Bounded by `timeout` as a whole. Completes with an error, never throws for network faults.
awaitable<upstream_result> connect_upstream(config::host_port where, bool implicit_tls,
                                            ssl::context& tls, std::chrono::seconds timeout);

}  // namespace xo::proxy
