#pragma once
#include "proxy/session.hpp"

namespace xo::proxy {

// Runs one SMTP submission connection to its end. client_tls is null for tls = "none".
awaitable<void> run_smtp_session(tcp::socket socket, ssl::context* client_tls, session_env env);

}  // namespace xo::proxy
