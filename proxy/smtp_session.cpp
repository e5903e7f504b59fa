#include "proxy/smtp_session.hpp"

namespace xo::proxy {

// Not implemented yet: config validation rejects protocol = "smtp" until it is.
awaitable<void> run_smtp_session(tcp::socket socket, ssl::context*, session_env) {
  error_code ignored;
  socket.close(ignored);
  co_return;
}

}  // namespace xo::proxy
