#include "proxy/pop3_session.hpp"

namespace xo::proxy {

// Not implemented yet: config validation rejects protocol = "pop3" until it is.
awaitable<void> run_pop3_session(tcp::socket socket, ssl::context*, session_env) {
  error_code ignored;
  socket.close(ignored);
  co_return;
}

}  // namespace xo::proxy
