#pragma once
// The POP3 side of the proxy up to the login, sans I/O (see protocol/common/action.hpp).
//
// Client side (RFC 1939, 2449, 2595, 5034): local greeting (no APOP timestamp) and CAPA, USER/PASS
// (arguments are everything after the first space, spaces kept), AUTH PLAIN/LOGIN with or without
// initial response ("*" cancels), bare AUTH listing, STLS, QUIT; everything else is refused until
// the login. Bytes pipelined after the login command are held and handed over in splice.
// Upstream: greeting, optional STLS, AUTH XOAUTH2 with the token on its own continuation line
// (a "+ <error>" challenge is answered with an empty line), then splice. POP3 has no tags: the
// upstream exchange is strictly one command, one reply, tracked by up_state.
#include "protocol/common/action.hpp"
#include "protocol/common/line_buffer.hpp"

#include <cstddef>
#include <deque>
#include <optional>
#include <string>
#include <string_view>

namespace xo::protocol::pop3 {

struct flow_options {
  bool starttls_offered = false;   // listener tls = "starttls" (STLS)
  bool client_tls_active = false;  // listener tls = "implicit"
  bool upstream_starttls = false;  // upstream_tls = "starttls"
  std::size_t max_line = 8192;     // client lines (RFC 2449 §4 says 255; be generous)
  std::size_t max_upstream_line = 16384;
  int max_auth_failures = 3;  // the last failure's reply announces the close
  int max_bad_commands = 10;
};

class login_flow {
 public:
  explicit login_flow(flow_options o);

  action next();
  void on_read(peer from, std::string_view bytes);
  void on_io_done(bool ok);
  void on_authorized(auth_outcome outcome);

  // The login the client sent (for logs), empty before one was attempted.
  const std::string& user() const noexcept { return user_; }

 private:
  enum class state {
    client_command,  // AUTHORIZATION state, reading client commands
    sasl_response,   // waiting for a client AUTH continuation line
    authorizing,     // the driver checks the password and fetches a token
    upstream,        // talking to the upstream server
    tls_client,      // handshake with the client running
    finished,        // spliced or closed
  };
  // What the upstream's next line answers.
  enum class up_state { connect, greeting, stls, tls, auth, token, challenged };
  enum class sasl_mech { plain, login };
  enum class last_kind { none, read_client, read_upstream, write_client, write_upstream,
                         tls_client, tls_upstream, connect, other };

  void refill();
  void advance_client();
  void handle_command(std::string_view line);
  void handle_user(std::string_view arg, bool has_arg);
  void handle_pass(std::string_view arg, bool has_arg);
  void handle_auth(std::string_view args);
  void handle_stls(std::string_view args);
  void handle_sasl_line(std::string line);
  void handle_sasl_login(std::string line);
  void begin_authorize(std::string user, secret password, std::string authzid);
  void advance_upstream();
  void handle_upstream_line(const std::string& line);
  void handle_auth_result(const std::string& line);
  void send_auth();
  void upstream_failed(std::string reason);
  void login_failed(std::string_view reply);
  void bad_command(std::string_view reply);
  void finish(std::string reason);
  void reply(std::string_view line);
  void write_client(std::string bytes);
  void write_upstream(std::string bytes, bool sensitive = false);

  flow_options opt_;
  state state_ = state::client_command;
  up_state up_ = up_state::connect;
  std::deque<action> pending_;
  last_kind last_ = last_kind::none;
  line_buffer client_buf_;
  line_buffer up_buf_;
  bool client_tls_ = false;
  bool greeted_ = false;
  int auth_failures_ = 0;
  int bad_commands_ = 0;
  // The login in progress.
  std::optional<std::string> pass_user_;  // from USER, waiting for PASS
  std::string user_;
  sasl_mech mech_ = sasl_mech::plain;
  std::optional<std::string> sasl_user_;  // AUTH LOGIN: the user from the first step
  std::string mailbox_;
  secret token_;
};

}  // namespace xo::protocol::pop3
