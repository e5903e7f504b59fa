#include "protocol/smtp/login_flow.hpp"

#include "common/base64.hpp"
#include "protocol/common/sasl.hpp"
#include "protocol/smtp/responses.hpp"

#include <openssl/crypto.h>

#include <utility>

namespace xo::protocol::smtp {

namespace r = responses;

namespace {

std::string upper(std::string_view s) {
  std::string out{s};
  for (char& c : out)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  return out;
}

void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

// What an admin should do about an upstream refusal (Exchange Online's texts, protocol-notes §2.5).
std::string hint_for(const std::string& reply_text) {
  if (reply_text.find("5.7.139") != std::string::npos)
    return "SMTP AUTH is disabled for this mailbox or tenant: Set-CASMailbox -Identity <mailbox> "
           "-SmtpClientAuthenticationDisabled $false, and check Set-TransportConfig "
           "-SmtpClientAuthenticationDisabled";
  if (reply_text.find("5.7.3") != std::string::npos)
    return "Exchange refused the token: check the SMTP.SendAsApp (app-only) or SMTP.Send "
           "(delegated) permission and admin consent, New-ServicePrincipal for app-only access, "
           "and the service principal's rights on the mailbox";
  return "check that the token's identity may send as this mailbox";
}

std::string first_line(const std::string& raw) {
  auto end = raw.find("\r\n");
  return raw.substr(0, std::min<std::size_t>(end, 300));
}

}  // namespace

login_flow::login_flow(flow_options o)
    : opt_(std::move(o)), client_(opt_.max_line), client_tls_(opt_.client_tls_active) {}

void login_flow::write_client(std::string_view bytes) {
  pending_.push_back(write_to{peer::client, std::string{bytes}, false});
}

void login_flow::write_upstream(std::string bytes, bool sensitive) {
  pending_.push_back(write_to{peer::upstream, std::move(bytes), sensitive});
}

action login_flow::next() {
  if (pending_.empty()) refill();
  if (pending_.empty()) {
    state_ = state::finished;
    return close{"flow has nothing left to do"};
  }
  action a = std::move(pending_.front());
  pending_.pop_front();
  last_ = last_kind::other;
  if (auto* w = std::get_if<write_to>(&a))
    last_ = w->to == peer::client ? last_kind::write_client : last_kind::write_upstream;
  else if (auto* rd = std::get_if<read_from>(&a))
    last_ = rd->from == peer::client ? last_kind::read_client : last_kind::read_upstream;
  else if (auto* t = std::get_if<start_tls>(&a))
    last_ = t->on == peer::client ? last_kind::tls_client : last_kind::tls_upstream;
  else if (std::holds_alternative<connect_upstream>(a))
    last_ = last_kind::connect;
  if (std::holds_alternative<close>(a) || std::holds_alternative<splice>(a)) {
    state_ = state::finished;
    pending_.clear();
  }
  return a;
}

void login_flow::refill() {
  switch (state_) {
    case state::preparing:
    case state::upstream_auth:
      if (up_ == up_state::idle) start_upstream();
      else advance_upstream();
      break;
    case state::client_command:
    case state::sasl_response:
      advance_client();
      break;
    case state::authorizing:
    case state::tls_client:
    case state::finished:
      break;
  }
}

void login_flow::on_read(peer from, std::string_view bytes) {
  if (from == peer::client) client_.append(bytes);
  else upstream_.append(bytes);
}

void login_flow::on_io_done(bool ok) {
  if (ok) {
    if (last_ == last_kind::connect) {
      up_ = up_state::greeting;
    } else if (last_ == last_kind::tls_upstream) {
      // RFC 3207 §4.2: forget what was learned before TLS; EHLO again.
      up_ = up_state::ehlo_tls;
      write_upstream("EHLO " + opt_.hostname + "\r\n");
    } else if (last_ == last_kind::tls_client) {
      client_tls_ = true;
      said_ehlo_ = false;
      state_ = state::client_command;
    }
    return;
  }
  switch (last_) {
    case last_kind::connect: upstream_failed("cannot connect to upstream"); break;
    case last_kind::read_upstream: upstream_failed("upstream closed the connection"); break;
    case last_kind::write_upstream: upstream_failed("write to upstream failed"); break;
    case last_kind::tls_upstream: upstream_failed("TLS handshake with upstream failed"); break;
    case last_kind::read_client:
      pending_.clear();
      pending_.push_back(close{"client closed the connection"});
      break;
    case last_kind::tls_client:
      pending_.clear();
      pending_.push_back(close{"TLS handshake with client failed"});
      break;
    default:
      pending_.clear();
      pending_.push_back(close{"write to client failed"});
      break;
  }
}

void login_flow::error_reply(std::string_view text) {
  write_client(text);
  if (++errors_ >= opt_.max_errors) {
    write_client(r::too_many_errors);
    pending_.push_back(close{"too many errors"});
    state_ = state::finished;
  }
}

void login_flow::login_failed(std::string_view text) {
  write_client(text);
  if (++auth_failures_ >= opt_.max_auth_failures) {
    write_client(r::too_many_failures);
    pending_.push_back(close{"too many authentication failures"});
    state_ = state::finished;
  }
}

std::string login_flow::ehlo_reply(std::string_view verb) const {
  if (verb == "HELO") return "250 " + opt_.hostname + "\r\n";
  std::vector<std::string> ext;
  for (auto name : r::relayed_extensions)
    if (auto p = up_ehlo_.params(name)) ext.push_back(p->empty() ? std::string{name} : std::string{name} + " " + *p);
  ext.emplace_back("AUTH PLAIN LOGIN");
  if (opt_.starttls_offered && !client_tls_) ext.emplace_back("STARTTLS");
  std::string out = "250-" + opt_.hostname + "\r\n";
  for (std::size_t i = 0; i < ext.size(); ++i)
    out += (i + 1 < ext.size() ? "250-" : "250 ") + ext[i] + "\r\n";
  return out;
}

void login_flow::advance_client() {
  while (state_ == state::client_command || state_ == state::sasl_response) {
    auto line = client_.pop_line();
    if (!line) {
      if (client_.overflow()) {
        write_client(r::line_too_long);
        pending_.push_back(close{"client line too long"});
        state_ = state::finished;
        return;
      }
      pending_.push_back(read_from{peer::client});
      return;
    }
    if (state_ == state::sasl_response) handle_sasl_line(std::move(*line));
    else handle_line(std::move(*line));
    if (!pending_.empty() && state_ != state::client_command) return;
  }
}

void login_flow::handle_line(std::string line) {
  auto sp = line.find(' ');
  std::string verb = upper(std::string_view{line}.substr(0, sp));
  std::string_view arg = sp == std::string::npos ? std::string_view{} : std::string_view{line}.substr(sp + 1);
  while (!arg.empty() && arg.front() == ' ') arg.remove_prefix(1);
  if (verb == "EHLO" || verb == "HELO") {
    handle_ehlo(verb, arg);
  } else if (verb == "AUTH") {
    handle_auth(arg);
  } else if (verb == "STARTTLS") {
    handle_starttls();
  } else if (verb == "MAIL") {
    if (opt_.anonymous_account.empty()) error_reply(r::auth_required);
    else handle_mail_without_auth(std::move(line));
  } else if (verb == "RCPT" || verb == "DATA" || verb == "BDAT" || verb == "BURL" ||
             verb == "ETRN") {
    error_reply(r::auth_required);
  } else if (verb == "RSET" || verb == "NOOP") {
    write_client(r::ok);
  } else if (verb == "QUIT") {
    write_client(r::bye);
    pending_.push_back(close{"client quit"});
    state_ = state::finished;
  } else if (verb == "HELP") {
    write_client(r::help);
  } else if (verb == "VRFY" || verb == "EXPN") {
    error_reply(r::not_implemented);
  } else {
    error_reply(r::unknown_command);
  }
  wipe(line);
}

void login_flow::handle_ehlo(std::string_view verb, std::string_view arg) {
  if (arg.empty()) {
    error_reply("501 5.5.4 Syntax: " + std::string{verb} + " hostname\r\n");
    return;
  }
  said_ehlo_ = true;
  write_client(ehlo_reply(verb));
}

void login_flow::handle_starttls() {
  if (!opt_.starttls_offered || client_tls_) {
    error_reply(client_tls_ ? "503 5.5.1 TLS already active\r\n" : r::tls_unavailable);
    return;
  }
  if (!client_.empty()) {
    // Plaintext pipelined after STARTTLS would be taken as if sent over TLS (CVE-2011-0411).
    write_client(r::tls_pipelined);
    pending_.push_back(close{"plaintext pipelined after STARTTLS"});
    state_ = state::finished;
    return;
  }
  write_client(r::tls_ready);
  pending_.push_back(start_tls{peer::client});
  state_ = state::tls_client;
}

void login_flow::handle_auth(std::string_view arg) {
  if (!said_ehlo_) {
    error_reply("503 5.5.1 Send EHLO first\r\n");
    return;
  }
  auto sp = arg.find(' ');
  std::string mech = upper(arg.substr(0, sp));
  std::optional<std::string> ir;
  if (sp != std::string_view::npos) ir = std::string{arg.substr(sp + 1)};
  if (mech != "PLAIN" && mech != "LOGIN") {
    error_reply(mech.empty() ? r::syntax_error : r::bad_mechanism);
    return;
  }
  mech_ = mech == "PLAIN" ? sasl_mech::plain : sasl_mech::login;
  sasl_user_.clear();
  state_ = state::sasl_response;
  if (ir) {
    // RFC 4954 §4: "=" is an empty initial response.
    handle_sasl_line(*ir == "=" ? std::string{} : std::move(*ir));
    return;
  }
  write_client(mech_ == sasl_mech::plain ? r::empty_prompt : r::username_prompt);
}

void login_flow::handle_sasl_line(std::string line) {
  if (is_sasl_cancel(line)) {
    state_ = state::client_command;
    write_client(r::auth_cancelled);
    return;
  }
  if (mech_ == sasl_mech::plain) {
    auto res = decode_plain(line);
    wipe(line);
    if (!res.creds) {
      state_ = state::client_command;
      if (res.error == sasl_error::bad_base64) error_reply(r::bad_base64);
      else login_failed(r::auth_failed);
      return;
    }
    begin_authorize(std::move(res.creds->authcid), std::move(res.creds->password),
                    std::move(res.creds->authzid), false);
    return;
  }
  auto decoded = base64_decode(line);
  wipe(line);
  if (!decoded) {
    state_ = state::client_command;
    error_reply(r::bad_base64);
    return;
  }
  if (sasl_user_.empty()) {
    if (decoded->empty()) {
      state_ = state::client_command;
      login_failed(r::auth_failed);
      return;
    }
    sasl_user_ = std::move(*decoded);
    write_client(r::password_prompt);
    return;
  }
  begin_authorize(std::exchange(sasl_user_, {}), secret{std::move(*decoded)}, {}, false);
}

void login_flow::handle_mail_without_auth(std::string line) {
  held_mail_ = line + "\r\n";
  begin_authorize(opt_.anonymous_account, secret{}, {}, true);
}

void login_flow::begin_authorize(std::string user, secret password, std::string authzid,
                                 bool anonymous) {
  user_ = user;
  anonymous_ = anonymous;
  state_ = state::authorizing;
  pending_.push_back(authorize{std::move(user), std::move(password), std::move(authzid), anonymous});
}

void login_flow::on_authorized(auth_outcome o) {
  using k = auth_outcome::kind;
  if (o.result != k::ok) {
    state_ = state::client_command;
    if (anonymous_) {
      held_mail_.clear();
      write_client(o.result == k::bad_credentials ? r::auth_required
                                                  : "451 4.7.0 Temporary failure, try again later\r\n");
      return;
    }
    login_failed(o.result == k::bad_credentials ? r::auth_failed
                 : o.result == k::temporary    ? r::auth_temporary
                                               : r::auth_contact_admin);
    return;
  }
  mailbox_ = std::move(o.mailbox);
  token_ = std::move(o.token);
  allowed_senders_ = std::move(o.allowed_senders);
  state_ = state::upstream_auth;
  if (up_ == up_state::ready) send_xoauth2();
  else if (up_ == up_state::idle) start_upstream();
}

void login_flow::start_upstream() {
  upstream_ = reply_parser{};
  up_ehlo_ = {};
  up_ = up_state::connecting;
  pending_.push_back(connect_upstream{});
}

void login_flow::upstream_failed(std::string reason) {
  pending_.clear();
  pending_.push_back(close_upstream{std::move(reason)});
  up_ = up_state::idle;
  upstream_ = reply_parser{};
  token_ = secret{};
  if (state_ == state::preparing) {
    write_client(r::greeting_unavailable);
    pending_.push_back(close{"upstream unavailable at connect"});
    state_ = state::finished;
    return;
  }
  if (state_ == state::upstream_auth) {
    state_ = state::client_command;
    if (anonymous_) {
      held_mail_.clear();
      write_client("451 4.7.0 Mail server unavailable, try again later\r\n");
    } else {
      write_client(r::upstream_unavailable);
    }
  }
}

void login_flow::advance_upstream() {
  for (;;) {
    switch (upstream_.poll()) {
      case reply_parser::status::need_more:
        pending_.push_back(read_from{peer::upstream});
        return;
      case reply_parser::status::error:
        upstream_failed("upstream reply not understood: " + upstream_.error());
        return;
      case reply_parser::status::ready:
        handle_upstream_reply(upstream_.take());
        if (!pending_.empty()) return;
        break;
    }
  }
}

void login_flow::upstream_ready() {
  up_ = up_state::ready;
  if (state_ == state::preparing) {
    state_ = state::client_command;
    write_client("220 " + opt_.hostname + " ESMTP xoauth-proxy ready\r\n");
  } else if (state_ == state::upstream_auth) {
    send_xoauth2();
  }
}

void login_flow::send_xoauth2() {
  secret ir = xoauth2_initial_response(mailbox_, token_);
  token_ = secret{};
  // RFC 4954 §4: no initial response when the command would exceed 512 octets (it always does
  // with a real token); the response then goes on its own line after the 334.
  if (ir.size() + 15 <= 512) {
    write_upstream("AUTH XOAUTH2 " + std::string{ir.reveal()} + "\r\n", true);
    up_ = up_state::token_sent;
  } else {
    write_upstream("AUTH XOAUTH2\r\n");
    up_ = up_state::auth;
    token_ = std::move(ir);
  }
}

void login_flow::handle_upstream_reply(reply rep) {
  auto fail = [&](std::string what) { upstream_failed(what + ": " + first_line(rep.raw)); };
  switch (up_) {
    case up_state::greeting:
      if (rep.code != 220) return fail("upstream greeting");
      up_ = up_state::ehlo;
      write_upstream("EHLO " + opt_.hostname + "\r\n");
      return;
    case up_state::ehlo:
      if (rep.code != 250) return fail("upstream EHLO");
      if (!opt_.upstream_starttls) {
        up_ehlo_ = parse_ehlo(rep);
        return upstream_ready();
      }
      if (!parse_ehlo(rep).has("STARTTLS")) return fail("upstream does not offer STARTTLS");
      up_ = up_state::starttls;
      write_upstream("STARTTLS\r\n");
      return;
    case up_state::starttls:
      if (rep.code != 220) return fail("upstream refused STARTTLS");
      if (!upstream_.buffered().empty()) return fail("upstream sent data after its STARTTLS reply");
      up_ = up_state::tls;
      pending_.push_back(start_tls{peer::upstream});
      return;
    case up_state::ehlo_tls:
      if (rep.code != 250) return fail("upstream EHLO after STARTTLS");
      up_ehlo_ = parse_ehlo(rep);
      return upstream_ready();
    case up_state::auth:
      if (rep.code == 334) {
        up_ = up_state::token_sent;
        write_upstream(std::string{token_.reveal()} + "\r\n", true);
        token_ = secret{};
        return;
      }
      // A final answer before the token was even sent says nothing about the token: the
      // server refused AUTH XOAUTH2 itself (or misbehaves). Never splice on it.
      return fail("upstream refused AUTH XOAUTH2");
    case up_state::token_sent:
      if (rep.code == 334) {
        // An error challenge (RFC 7628 §3.2.3 style): answer with an empty response and read the
        // final reply. Never forwarded: the client did not ask for it.
        up_ = up_state::challenged;
        write_upstream("\r\n");
        return;
      }
      break;
    case up_state::challenged:
      break;
    default:
      return fail("unexpected upstream reply");
  }
  // The final answer to AUTH XOAUTH2.
  if (rep.code == 235) {
    if (anonymous_) {
      pending_.push_back(splice{std::exchange(held_mail_, {}) + client_.take_all(),
                                upstream_.take_buffered(), allowed_senders_});
    } else {
      write_client(r::auth_ok);
      pending_.push_back(splice{client_.take_all(), upstream_.take_buffered(), allowed_senders_});
    }
    return;
  }
  up_ = up_state::ready;  // the upstream session is still usable for another attempt
  state_ = state::client_command;
  if (rep.code >= 500) {
    std::string text = first_line(rep.raw);
    pending_.push_back(token_rejected{text, hint_for(rep.raw)});
    if (anonymous_) {
      held_mail_.clear();
      write_client("451 4.7.0 The mail server refused the proxy's login, try again later\r\n");
    } else {
      login_failed(rep.raw);
    }
    return;
  }
  if (anonymous_) {
    held_mail_.clear();
    write_client("451 4.7.0 Temporary failure, try again later\r\n");
  } else {
    write_client(r::auth_temporary);
  }
}

}  // namespace xo::protocol::smtp
