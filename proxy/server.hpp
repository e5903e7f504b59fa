#pragma once
// Wires the configuration into running listeners on one io_context thread (the whole data path is
// single-threaded: the token cache and the session registry need no locks; argon2 runs on its
// own small pool). Stops on SIGINT/SIGTERM: closes the listeners, lets sessions end within the
// drain time, then exits.
#include "config/config.hpp"

namespace xo::proxy {

// Throws std::runtime_error for startup failures (bind, TLS files). Returns the exit code.
// SIGHUP reloads the configuration file (see server.cpp: reload()).
int run_server(config::config cfg);

}  // namespace xo::proxy
