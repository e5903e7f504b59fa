#pragma once
// The SMTP submission side of the proxy up to the login, sans I/O (see protocol/common/action.hpp).
//
// The upstream connection is prepared first (connect, greeting, EHLO, STARTTLS, EHLO again), so
// the EHLO reply to the client can advertise the upstream's extensions that survive a byte relay.
// Client side: greeting, EHLO/HELO, STARTTLS, AUTH PLAIN/LOGIN (initial response or not, "*"
// cancels), RSET, NOOP, QUIT, HELP; mail commands before authentication get 530. Bytes pipelined
// after AUTH are held and replayed upstream only after the upstream login succeeded. An
// allow-listed client that sends MAIL without AUTH may be mapped to an anonymous account.
// Upstream: AUTH XOAUTH2 (initial response only when the command fits RFC 4954's 512 octets,
// else the 334 continuation), a "334 <error>" challenge answered with an empty line, then splice.
#include "protocol/common/action.hpp"
#include "protocol/common/line_buffer.hpp"
#include "protocol/smtp/reply_parser.hpp"

#include <deque>
#include <string>

namespace xo::protocol::smtp {

struct flow_options {
  std::string hostname = "xoauth-proxy";  // our name in the greeting, EHLO replies, upstream EHLO
  bool starttls_offered = false;          // listener tls = "starttls"
  bool client_tls_active = false;         // listener tls = "implicit"
  bool upstream_starttls = true;          // upstream_tls = "starttls"
  std::string anonymous_account;          // non-empty: a client may send mail without AUTH
  std::size_t max_line = 16 * 1024;       // RFC 4954 §4: AUTH lines may reach 12,288 octets
  int max_auth_failures = 3;
  int max_errors = 20;
};

class login_flow {
 public:
  explicit login_flow(flow_options o);

  action next();
  void on_read(peer from, std::string_view bytes);
  void on_io_done(bool ok);
  void on_authorized(auth_outcome outcome);
  const std::string& user() const noexcept { return user_; }

 private:
  enum class state { preparing, client_command, sasl_response, authorizing, upstream_auth,
                     tls_client, finished };
  enum class up_state { idle, connecting, greeting, ehlo, starttls, tls, ehlo_tls, ready, auth,
                        token_sent, challenged };
  enum class sasl_mech { plain, login };
  enum class last_kind { other, read_client, read_upstream, write_client, write_upstream,
                         tls_client, tls_upstream, connect };

  void refill();
  void advance_client();
  void handle_line(std::string line);
  void handle_ehlo(std::string_view verb, std::string_view arg);
  void handle_auth(std::string_view arg);
  void handle_starttls();
  void handle_mail_without_auth(std::string line);
  void handle_sasl_line(std::string line);
  void begin_authorize(std::string user, secret password, std::string authzid, bool anonymous);
  void start_upstream();
  void advance_upstream();
  void handle_upstream_reply(reply r);
  void upstream_ready();
  void send_xoauth2();
  void upstream_failed(std::string reason);
  void login_failed(std::string_view text);
  void error_reply(std::string_view text);
  void write_client(std::string_view bytes);
  void write_upstream(std::string bytes, bool sensitive = false);
  std::string ehlo_reply(std::string_view verb) const;

  flow_options opt_;
  state state_ = state::preparing;
  up_state up_ = up_state::idle;
  last_kind last_ = last_kind::other;
  std::deque<action> pending_;
  line_buffer client_;
  reply_parser upstream_;
  ehlo_info up_ehlo_;
  bool client_tls_ = false;
  bool said_ehlo_ = false;
  int auth_failures_ = 0;
  int errors_ = 0;
  // The login in progress.
  std::string user_;
  sasl_mech mech_ = sasl_mech::plain;
  std::string sasl_user_;
  bool anonymous_ = false;
  std::string held_mail_;  // anonymous: the MAIL command that triggered the login
  std::string mailbox_;
  secret token_;
  std::vector<std::string> allowed_senders_;
};

}  // namespace xo::protocol::smtp
