// The POP3 flow up to the local check: driver interface and the client side (RFC 1939, RFC 2449,
// RFC 2595, RFC 5034; protocol-notes §3.3). The upstream half is in login_flow_upstream.cpp.
#include "protocol/pop3/login_flow.hpp"

#include "common/base64.hpp"
#include "protocol/common/sasl.hpp"
#include "protocol/pop3/responses.hpp"
#include "protocol/pop3/text.hpp"

#include <utility>

namespace xo::protocol::pop3 {

namespace r = responses;
using namespace text;

login_flow::login_flow(flow_options o)
    : opt_(o), client_buf_(o.max_line), up_buf_(o.max_upstream_line),
      client_tls_(o.client_tls_active) {}

void login_flow::write_client(std::string bytes) {
  pending_.push_back(write_to{peer::client, std::move(bytes), false});
}

void login_flow::write_upstream(std::string bytes, bool sensitive) {
  pending_.push_back(write_to{peer::upstream, std::move(bytes), sensitive});
}

void login_flow::reply(std::string_view line) {
  std::string out;
  out.reserve(line.size() + 2);
  out.append(line).append("\r\n");
  write_client(std::move(out));
}

void login_flow::finish(std::string reason) {
  pending_.push_back(close{std::move(reason)});
  state_ = state::finished;
}

action login_flow::next() {
  if (pending_.empty()) refill();
  if (pending_.empty()) {
    state_ = state::finished;
    return close{"flow has nothing left to do"};
  }
  action a = std::move(pending_.front());
  pending_.pop_front();
  if (auto* w = std::get_if<write_to>(&a)) {
    last_ = w->to == peer::client ? last_kind::write_client : last_kind::write_upstream;
  } else if (auto* rd = std::get_if<read_from>(&a)) {
    last_ = rd->from == peer::client ? last_kind::read_client : last_kind::read_upstream;
  } else if (auto* t = std::get_if<start_tls>(&a)) {
    last_ = t->on == peer::client ? last_kind::tls_client : last_kind::tls_upstream;
  } else if (std::holds_alternative<connect_upstream>(a)) {
    last_ = last_kind::connect;
  } else {
    last_ = last_kind::other;
  }
  if (std::holds_alternative<close>(a) || std::holds_alternative<splice>(a)) {
    state_ = state::finished;
    pending_.clear();
  }
  return a;
}

void login_flow::refill() {
  if (!greeted_) {
    greeted_ = true;
    reply(r::greeting);
    return;
  }
  switch (state_) {
    case state::client_command:
    case state::sasl_response:
      advance_client();
      break;
    case state::upstream:
      advance_upstream();
      break;
    case state::authorizing:
    case state::tls_client:
    case state::finished:
      break;  // nothing to do until the driver reports back
  }
}

void login_flow::on_read(peer from, std::string_view bytes) {
  if (from == peer::client) client_buf_.append(bytes);
  else up_buf_.append(bytes);
}

void login_flow::on_io_done(bool ok) {
  if (ok) {
    if (last_ == last_kind::tls_client) {
      // RFC 2595 §4: a fresh start under TLS; forget a USER given in plaintext.
      client_tls_ = true;
      pass_user_.reset();
      state_ = state::client_command;
    } else if (last_ == last_kind::connect) {
      up_ = up_state::greeting;
    } else if (last_ == last_kind::tls_upstream) {
      send_auth();  // no new greeting after STLS (RFC 2595 §4)
    }
    return;
  }
  switch (last_) {
    case last_kind::read_upstream:
      upstream_failed("upstream closed the connection during login");
      break;
    case last_kind::write_upstream:
      upstream_failed("write to upstream failed");
      break;
    case last_kind::tls_upstream:
      upstream_failed("TLS handshake with upstream failed");
      break;
    case last_kind::connect:
      upstream_failed("cannot connect to upstream");
      break;
    case last_kind::read_client:
      pending_.clear();
      finish("client closed the connection");
      break;
    case last_kind::tls_client:
      pending_.clear();
      finish("TLS handshake with client failed");
      break;
    default:
      pending_.clear();
      finish("write to client failed");
      break;
  }
}

void login_flow::bad_command(std::string_view text) {
  // One reply per command (RFC 1939 §3): the last one announces the close instead.
  if (++bad_commands_ >= opt_.max_bad_commands) {
    reply(r::too_many_bad_commands);
    finish("too many invalid commands");
    return;
  }
  reply(text);
}

void login_flow::advance_client() {
  while (state_ == state::client_command || state_ == state::sasl_response) {
    auto line = client_buf_.pop_line();
    if (!line && !client_buf_.overflow()) {
      pending_.push_back(read_from{peer::client});
      return;
    }
    if (!line || line->size() > opt_.max_line) {
      if (line) wipe(*line);
      reply(r::line_too_long);
      finish("client line too long");
      return;
    }
    if (state_ == state::sasl_response) {
      handle_sasl_line(std::move(*line));
    } else {
      handle_command(*line);
      wipe(*line);
    }
  }
}

void login_flow::handle_command(std::string_view line) {
  // RFC 1939 §3: a keyword, then arguments after a single space. USER and PASS take the rest
  // of the line as is: passwords with spaces are common and other servers accept them.
  auto sp = line.find(' ');
  bool has_arg = sp != std::string_view::npos;
  std::string_view kw = line.substr(0, sp);
  std::string_view arg = has_arg ? line.substr(sp + 1) : std::string_view{};
  if (iequals(kw, "USER")) {
    handle_user(arg, has_arg);
  } else if (iequals(kw, "PASS")) {
    handle_pass(arg, has_arg);
  } else if (iequals(kw, "AUTH")) {
    handle_auth(arg);
  } else if (iequals(kw, "CAPA")) {
    std::string capa{r::capa_head};
    if (opt_.starttls_offered && !client_tls_) capa.append(r::capa_stls);
    capa.append(r::capa_tail);
    write_client(std::move(capa));
  } else if (iequals(kw, "STLS")) {
    handle_stls(arg);
  } else if (iequals(kw, "QUIT")) {
    // RFC 1939 §6: QUIT in AUTHORIZATION state; nothing was opened upstream.
    reply(r::bye);
    finish("client quit");
  } else if (iequals(kw, "APOP")) {
    bad_command(r::apop_refused);  // no timestamp in the greeting (RFC 1939 §7)
  } else {
    bad_command(r::not_authenticated);  // NOOP included: TRANSACTION state only (RFC 1939 §6)
  }
}

void login_flow::handle_user(std::string_view arg, bool has_arg) {
  if (!has_arg || arg.empty()) {
    bad_command(r::user_syntax);
    return;
  }
  pass_user_ = std::string{arg};  // a new USER replaces the previous one
  reply(r::user_ok);
}

void login_flow::handle_pass(std::string_view arg, bool has_arg) {
  if (!pass_user_) {
    bad_command(r::user_first);
    return;
  }
  if (!has_arg || arg.empty()) {
    bad_command(r::pass_syntax);
    return;
  }
  // RFC 1939 §7: USER and PASS form one attempt; a retry starts with USER again.
  std::string user = std::move(*pass_user_);
  pass_user_.reset();
  begin_authorize(std::move(user), secret{std::string{arg}}, {});
}

void login_flow::handle_auth(std::string_view args) {
  args = trim_trailing_space(args);
  if (args.empty()) {
    write_client(std::string{r::auth_list});
    return;
  }
  // RFC 5034 §4: AUTH mechanism [initial-response]
  auto sp = args.find(' ');
  std::string_view mech = args.substr(0, sp);
  std::string_view ir = sp == std::string_view::npos ? std::string_view{} : args.substr(sp + 1);
  if (sp != std::string_view::npos && (ir.empty() || ir.find(' ') != std::string_view::npos)) {
    bad_command(r::auth_syntax);
    return;
  }
  if (!iequals(mech, "PLAIN") && !iequals(mech, "LOGIN")) {
    bad_command(r::unsupported_mechanism);
    return;
  }
  mech_ = iequals(mech, "PLAIN") ? sasl_mech::plain : sasl_mech::login;
  sasl_user_.reset();
  state_ = state::sasl_response;
  if (sp != std::string_view::npos) {
    handle_sasl_line(std::string{ir});  // AUTH LOGIN: the initial response is the user name
    return;
  }
  write_client(std::string{mech_ == sasl_mech::plain ? r::sasl_empty : r::sasl_username});
}

void login_flow::handle_stls(std::string_view args) {
  if (!opt_.starttls_offered || client_tls_) {
    bad_command(client_tls_ ? r::stls_active : r::stls_unavailable);
    return;
  }
  if (!trim_trailing_space(args).empty()) {
    bad_command(r::stls_syntax);
    return;
  }
  if (!client_buf_.empty()) {
    // Plaintext pipelined after STLS would be taken as if sent under TLS (the CVE-2011-0411
    // class of bug; RFC 2595 §4 wants a clean start): refuse the whole connection.
    reply(r::stls_pipelined);
    finish("plaintext pipelined after STLS");
    return;
  }
  reply(r::stls_begin);
  pending_.push_back(start_tls{peer::client});
  state_ = state::tls_client;
}

void login_flow::handle_sasl_line(std::string line) {
  // RFC 5034 §4: "*" cancels; "=" is an empty response. Trailing blanks are tolerated.
  line.resize(trim_trailing_space(line).size());
  if (is_sasl_cancel(line)) {
    state_ = state::client_command;
    reply(r::auth_cancelled);
    return;
  }
  if (line == "=") line.clear();
  if (mech_ == sasl_mech::login) {
    handle_sasl_login(std::move(line));
    return;
  }
  auto res = decode_plain(line);
  wipe(line);
  if (!res.creds) {
    state_ = state::client_command;
    if (res.error == sasl_error::bad_base64) bad_command(r::invalid_base64);
    else login_failed(r::auth_failed);
    return;
  }
  begin_authorize(std::move(res.creds->authcid), std::move(res.creds->password),
                  std::move(res.creds->authzid));
}

// LOGIN mechanism (draft-murchison-sasl-login): user name, then password, each base64.
void login_flow::handle_sasl_login(std::string line) {
  auto decoded = base64_decode(line);
  wipe(line);
  if (!decoded) {
    state_ = state::client_command;
    bad_command(r::invalid_base64);
    return;
  }
  if (!sasl_user_) {
    if (decoded->empty()) {
      login_failed(r::auth_failed);
      return;
    }
    sasl_user_ = std::move(*decoded);
    write_client(std::string{r::sasl_password});
    return;
  }
  std::string user = std::move(*sasl_user_);
  sasl_user_.reset();
  begin_authorize(std::move(user), secret{std::move(*decoded)}, {});
}

void login_flow::begin_authorize(std::string user, secret password, std::string authzid) {
  user_ = user;
  state_ = state::authorizing;
  pending_.push_back(authorize{std::move(user), std::move(password), std::move(authzid)});
}

void login_flow::login_failed(std::string_view text) {
  // After a failed login the client stays in AUTHORIZATION state (RFC 1939 §7, RFC 5034 §4).
  state_ = state::client_command;
  if (++auth_failures_ < opt_.max_auth_failures) {
    reply(text);
    return;
  }
  // One reply per command: the last [AUTH] failure announces the close instead. A [SYS/...]
  // failure keeps its own text so that the client retries later without asking for a password.
  reply(text.starts_with("-ERR [AUTH]") ? r::too_many_failures : text);
  finish("too many authentication failures");
}

}  // namespace xo::protocol::pop3
