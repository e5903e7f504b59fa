#pragma once
#include "proxy/session.hpp"

namespace xo::proxy {

// Runs one POP3 client connection to its end. client_tls is null for tls = "none".
awaitable<void> run_pop3_session(tcp::socket socket, ssl::context* client_tls, session_env env);

}  // namespace xo::proxy
