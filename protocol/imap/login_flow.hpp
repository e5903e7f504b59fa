#pragma once
// The IMAP side of the proxy up to the login, sans I/O (see protocol/common/action.hpp).
//
// Client side: local greeting and CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN (atoms, quoted
// strings, literals) and AUTHENTICATE PLAIN/LOGIN (with or without SASL-IR, "*" cancels).
// Upstream: greeting, optional STARTTLS, CAPABILITY when needed, AUTHENTICATE XOAUTH2 (initial
// response with SASL-IR, continuation otherwise; a "+ <error>" challenge is answered with an
// empty line), and the upstream's tagged result mapped onto the client's tag. Then splice.
#include "protocol/common/action.hpp"
#include "protocol/imap/lexer.hpp"

#include <deque>
#include <string>
#include <vector>

namespace xo::protocol::imap {

struct flow_options {
  bool starttls_offered = false;   // listener tls = "starttls"
  bool client_tls_active = false;  // listener tls = "implicit"
  bool upstream_starttls = false;  // upstream_tls = "starttls"
  limits lex{};
  std::size_t max_upstream_line = 65536;
  int max_auth_failures = 3;   // then "* BYE" and close
  int max_bad_commands = 10;   // then "* BYE" and close
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
    client_command,  // reading client commands
    sasl_response,   // waiting for a client AUTHENTICATE continuation line
    authorizing,     // the driver checks the password and fetches a token
    upstream,        // talking to the upstream server
    tls_client,      // handshake with the client running
    finished,        // spliced or closed
  };
  enum class up_state { connect, greeting, starttls, tls, capability, auth, challenged };
  enum class sasl_mech { plain, login };

  void refill();
  void advance_client();
  void handle_command(command cmd);
  void handle_login(const command& cmd);
  void handle_authenticate(const command& cmd);
  void handle_starttls(const command& cmd);
  void handle_sasl_line(std::string line);
  void begin_authorize(std::string user, secret password, std::string authzid);
  void advance_upstream();
  void handle_upstream_line(const std::string& line);
  void send_xoauth2();
  void upstream_failed(std::string reason);
  void login_failed(std::string_view reply);
  void reply(std::string_view tag, std::string_view text);
  void write_client(std::string bytes);
  void write_upstream(std::string bytes, bool sensitive = false);
  void bad_command(std::string_view tag, std::string_view text);
  std::string capability_line() const;

  flow_options opt_;
  state state_ = state::client_command;
  up_state up_ = up_state::connect;
  std::deque<action> pending_;
  enum class last_kind { none, read_client, read_upstream, write_client, write_upstream,
                         tls_client, tls_upstream, connect, other };
  last_kind last_ = last_kind::none;
  command_reader reader_;
  std::string up_buf_;
  bool client_tls_ = false;
  bool greeted_ = false;
  int auth_failures_ = 0;
  int bad_commands_ = 0;
  // The login in progress.
  std::string tag_;
  std::string user_;
  sasl_mech mech_ = sasl_mech::plain;
  std::string sasl_user_;  // AUTHENTICATE LOGIN: the user from the first step
  std::string mailbox_;
  secret token_;
  bool sasl_ir_ = false;
  bool token_sent_ = false;
  std::string upstream_untagged_;  // untagged lines during AUTHENTICATE, forwarded on success
};

}  // namespace xo::protocol::imap
