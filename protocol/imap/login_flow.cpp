#include "protocol/imap/login_flow.hpp"

#include "common/base64.hpp"
#include "protocol/common/sasl.hpp"
#include "protocol/imap/responses.hpp"

#include <openssl/crypto.h>

#include <algorithm>
#include <utility>

namespace xo::protocol::imap {

namespace r = responses;

namespace {

bool iequals_prefix(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    char a = s[i], b = prefix[i];
    if (a >= 'a' && a <= 'z') a = static_cast<char>(a - 'a' + 'A');
    if (b >= 'a' && b <= 'z') b = static_cast<char>(b - 'a' + 'A');
    if (a != b) return false;
  }
  return true;
}

bool has_capability(std::string_view caps, std::string_view cap) {
  std::size_t pos = 0;
  while (pos < caps.size()) {
    auto end = caps.find(' ', pos);
    if (end == std::string_view::npos) end = caps.size();
    auto word = caps.substr(pos, end - pos);
    if (word.size() == cap.size() && iequals_prefix(word, cap)) return true;
    pos = end + 1;
  }
  return false;
}

// "[CAPABILITY a b c] text" → "a b c"; empty if the response code is not CAPABILITY.
std::string capability_code(std::string_view text) {
  if (!iequals_prefix(text, "[CAPABILITY ")) return {};
  auto end = text.find(']');
  if (end == std::string_view::npos) return {};
  return std::string{text.substr(12, end - 12)};
}

void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

bool is_string_arg(const token& t) {
  return t.type == token::kind::atom || t.type == token::kind::quoted ||
         t.type == token::kind::literal;
}

}  // namespace

login_flow::login_flow(flow_options o) : opt_(o), reader_(o.lex), client_tls_(o.client_tls_active) {}

std::string login_flow::capability_line() const {
  std::string caps{r::capabilities};
  if (opt_.starttls_offered && !client_tls_) caps += " STARTTLS";
  return caps;
}

void login_flow::write_client(std::string bytes) {
  pending_.push_back(write_to{peer::client, std::move(bytes), false});
}

void login_flow::write_upstream(std::string bytes, bool sensitive) {
  pending_.push_back(write_to{peer::upstream, std::move(bytes), sensitive});
}

void login_flow::reply(std::string_view tag, std::string_view text) {
  std::string line;
  line.reserve(tag.size() + text.size() + 3);
  line.append(tag).append(" ").append(text).append("\r\n");
  write_client(std::move(line));
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
    write_client("* OK [CAPABILITY " + capability_line() + "] xoauth-proxy ready\r\n");
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
  if (from == peer::client) reader_.append(bytes);
  else up_buf_.append(bytes);
}

void login_flow::on_io_done(bool ok) {
  if (ok) {
    if (last_ == last_kind::tls_client) {
      client_tls_ = true;
      state_ = state::client_command;
    } else if (last_ == last_kind::connect) {
      up_ = up_state::greeting;
    } else if (last_ == last_kind::tls_upstream) {
      // RFC 3501 §6.2.1: capabilities learned before TLS are void; ask again.
      up_ = up_state::capability;
      write_upstream(std::string{r::tag_capability} + " CAPABILITY\r\n");
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

void login_flow::bad_command(std::string_view tag, std::string_view text) {
  reply(tag.empty() ? "*" : tag, std::string{"BAD "} + std::string{text});
  if (++bad_commands_ >= opt_.max_bad_commands) {
    write_client("* BYE Too many invalid commands\r\n");
    pending_.push_back(close{"too many invalid commands"});
    state_ = state::finished;
  }
}

void login_flow::advance_client() {
  while (pending_.empty() || state_ == state::client_command) {
    if (state_ == state::sasl_response) {
      std::string line;
      bool overflow = false;
      if (reader_.pop_line(line, overflow)) {
        handle_sasl_line(std::move(line));
        return;
      }
      if (overflow) {
        reply(tag_, "BAD Response too long");
        pending_.push_back(close{"SASL response too long"});
        state_ = state::finished;
        return;
      }
      pending_.push_back(read_from{peer::client});
      return;
    }
    if (state_ != state::client_command) return;
    switch (reader_.poll()) {
      case command_reader::status::need_more:
        pending_.push_back(read_from{peer::client});
        return;
      case command_reader::status::need_continuation:
        write_client(std::string{r::continue_literal});
        continue;
      case command_reader::status::error: {
        auto e = reader_.take_error();
        bad_command(e.tag, e.text);
        if (e.fatal && state_ != state::finished) {
          pending_.push_back(close{"protocol error: " + e.text});
          state_ = state::finished;
        }
        if (state_ == state::finished) return;
        continue;
      }
      case command_reader::status::ready:
        handle_command(reader_.take());
        if (state_ != state::client_command) return;
        continue;
    }
  }
}

void login_flow::handle_command(command cmd) {
  const std::string& n = cmd.name;
  if (n == "CAPABILITY") {
    write_client("* CAPABILITY " + capability_line() + "\r\n");
    reply(cmd.tag, "OK CAPABILITY completed");
  } else if (n == "NOOP") {
    reply(cmd.tag, "OK NOOP completed");
  } else if (n == "LOGOUT") {
    write_client("* BYE xoauth-proxy logging out\r\n");
    reply(cmd.tag, "OK LOGOUT completed");
    pending_.push_back(close{"client logged out"});
    state_ = state::finished;
  } else if (n == "ID") {
    // RFC 2971: valid in any state. The client's ID is not forwarded.
    write_client("* ID (\"name\" \"xoauth-proxy\")\r\n");
    reply(cmd.tag, "OK ID completed");
  } else if (n == "STARTTLS") {
    handle_starttls(cmd);
  } else if (n == "LOGIN") {
    handle_login(cmd);
  } else if (n == "AUTHENTICATE") {
    handle_authenticate(cmd);
  } else {
    bad_command(cmd.tag, "Command invalid in this state, log in first");
  }
  for (auto& t : cmd.args) wipe(t.value);
}

void login_flow::handle_starttls(const command& cmd) {
  if (!opt_.starttls_offered || client_tls_) {
    bad_command(cmd.tag, client_tls_ ? "TLS is already active" : "STARTTLS is not available");
    return;
  }
  if (!cmd.args.empty()) {
    bad_command(cmd.tag, "STARTTLS takes no arguments");
    return;
  }
  if (!reader_.buffered().empty()) {
    // Bytes pipelined after STARTTLS in plaintext would be taken as if sent over TLS
    // (the CVE-2011-0411 class of bug): refuse the whole connection.
    reply(cmd.tag, "BAD Data pipelined after STARTTLS");
    pending_.push_back(close{"plaintext pipelined after STARTTLS"});
    state_ = state::finished;
    return;
  }
  reply(cmd.tag, "OK Begin TLS negotiation now");
  pending_.push_back(start_tls{peer::client});
  state_ = state::tls_client;
}

void login_flow::handle_login(const command& cmd) {
  if (cmd.args.size() != 2 || !is_string_arg(cmd.args[0]) || !is_string_arg(cmd.args[1])) {
    bad_command(cmd.tag, "LOGIN expects a user name and a password");
    return;
  }
  tag_ = cmd.tag;
  begin_authorize(cmd.args[0].value, secret{cmd.args[1].value}, {});
}

void login_flow::handle_authenticate(const command& cmd) {
  if (cmd.args.empty() || cmd.args.size() > 2 || cmd.args[0].type != token::kind::atom ||
      (cmd.args.size() == 2 && cmd.args[1].type != token::kind::atom)) {
    bad_command(cmd.tag, "AUTHENTICATE expects a mechanism and an optional initial response");
    return;
  }
  std::string mech = cmd.args[0].value;
  for (char& c : mech)
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  if (mech != "PLAIN" && mech != "LOGIN") {
    reply(cmd.tag, "NO [CANNOT] Unsupported authentication mechanism");
    return;
  }
  tag_ = cmd.tag;
  mech_ = mech == "PLAIN" ? sasl_mech::plain : sasl_mech::login;
  sasl_user_.clear();
  state_ = state::sasl_response;
  if (cmd.args.size() == 2) {
    // SASL-IR (RFC 4959): "=" stands for an empty initial response.
    std::string ir = cmd.args[1].value == "=" ? std::string{} : cmd.args[1].value;
    handle_sasl_line(std::move(ir));
    return;
  }
  write_client(std::string{mech_ == sasl_mech::plain ? r::sasl_empty : r::sasl_username});
}

void login_flow::handle_sasl_line(std::string line) {
  if (is_sasl_cancel(line)) {
    state_ = state::client_command;
    reply(tag_, "BAD Authentication cancelled");
    return;
  }
  if (mech_ == sasl_mech::plain) {
    auto res = decode_plain(line);
    wipe(line);
    if (!res.creds) {
      state_ = state::client_command;
      if (res.error == sasl_error::bad_base64) reply(tag_, "BAD Invalid base64 data");
      else login_failed(r::auth_failed);
      return;
    }
    begin_authorize(std::move(res.creds->authcid), std::move(res.creds->password),
                    std::move(res.creds->authzid));
    return;
  }
  // LOGIN mechanism: user name, then password, each base64.
  auto decoded = base64_decode(line);
  wipe(line);
  if (!decoded) {
    state_ = state::client_command;
    reply(tag_, "BAD Invalid base64 data");
    return;
  }
  if (sasl_user_.empty()) {
    if (decoded->empty()) {
      state_ = state::client_command;
      login_failed(r::auth_failed);
      return;
    }
    sasl_user_ = std::move(*decoded);
    write_client(std::string{r::sasl_password});
    return;
  }
  begin_authorize(std::exchange(sasl_user_, {}), secret{std::move(*decoded)}, {});
}

void login_flow::begin_authorize(std::string user, secret password, std::string authzid) {
  user_ = user;
  state_ = state::authorizing;
  pending_.push_back(authorize{std::move(user), std::move(password), std::move(authzid)});
}

void login_flow::on_authorized(auth_outcome o) {
  using k = auth_outcome::kind;
  if (o.result != k::ok) {
    state_ = state::client_command;
    login_failed(o.result == k::bad_credentials ? r::auth_failed
                 : o.result == k::temporary    ? r::auth_temporary
                                               : r::auth_contact_admin);
    return;
  }
  mailbox_ = std::move(o.mailbox);
  token_ = std::move(o.token);
  state_ = state::upstream;
  up_ = up_state::connect;
  up_buf_.clear();
  upstream_untagged_.clear();
  sasl_ir_ = false;
  token_sent_ = false;
  pending_.push_back(connect_upstream{});
}

void login_flow::login_failed(std::string_view text) {
  reply(tag_, text);
  if (++auth_failures_ >= opt_.max_auth_failures) {
    write_client("* BYE Too many authentication failures\r\n");
    pending_.push_back(close{"too many authentication failures"});
    state_ = state::finished;
  }
}

void login_flow::upstream_failed(std::string reason) {
  token_ = secret{};
  up_buf_.clear();
  pending_.clear();
  pending_.push_back(close_upstream{std::move(reason)});
  state_ = state::client_command;
  login_failed(r::upstream_unavailable);
}

void login_flow::advance_upstream() {
  for (;;) {
    auto lf = up_buf_.find('\n');
    if (lf == std::string::npos) {
      if (up_buf_.size() > opt_.max_upstream_line) {
        upstream_failed("upstream line too long");
        return;
      }
      pending_.push_back(read_from{peer::upstream});
      return;
    }
    std::string line = up_buf_.substr(0, lf > 0 && up_buf_[lf - 1] == '\r' ? lf - 1 : lf);
    up_buf_.erase(0, lf + 1);
    handle_upstream_line(line);
    if (!pending_.empty() || state_ != state::upstream) return;
  }
}

void login_flow::send_xoauth2() {
  up_ = up_state::auth;
  secret ir = xoauth2_initial_response(mailbox_, token_);
  token_ = secret{};
  std::string cmd{r::tag_authenticate};
  if (sasl_ir_) {
    cmd.append(" AUTHENTICATE XOAUTH2 ").append(ir.reveal()).append("\r\n");
    token_sent_ = true;
    write_upstream(std::move(cmd), true);
  } else {
    cmd.append(" AUTHENTICATE XOAUTH2\r\n");
    write_upstream(std::move(cmd));
    token_ = std::move(ir);  // kept (as the encoded response) until the continuation comes
  }
}

void login_flow::handle_upstream_line(const std::string& line) {
  const std::string tagged_starttls = std::string{r::tag_starttls} + " ";
  const std::string tagged_caps = std::string{r::tag_capability} + " ";
  const std::string tagged_auth = std::string{r::tag_authenticate} + " ";
  switch (up_) {
    case up_state::connect:
    case up_state::tls:
      upstream_failed("unexpected data from upstream");
      return;
    case up_state::greeting: {
      if (!iequals_prefix(line, "* OK")) {
        upstream_failed("upstream greeting was not OK: " + line.substr(0, 200));
        return;
      }
      std::string caps = capability_code(line.size() > 5 ? std::string_view{line}.substr(5) : "");
      if (opt_.upstream_starttls) {
        up_ = up_state::starttls;
        write_upstream(tagged_starttls + "STARTTLS\r\n");
      } else if (!caps.empty()) {
        sasl_ir_ = has_capability(caps, "SASL-IR");
        send_xoauth2();
      } else {
        up_ = up_state::capability;
        write_upstream(tagged_caps + "CAPABILITY\r\n");
      }
      return;
    }
    case up_state::starttls:
      if (line.starts_with("* ")) return;
      if (iequals_prefix(line, tagged_starttls + "OK")) {
        if (!up_buf_.empty()) {
          upstream_failed("upstream sent data after its STARTTLS reply");
          return;
        }
        up_ = up_state::tls;
        pending_.push_back(start_tls{peer::upstream});
        return;
      }
      upstream_failed("upstream refused STARTTLS: " + line.substr(0, 200));
      return;
    case up_state::capability:
      if (iequals_prefix(line, "* CAPABILITY ")) {
        sasl_ir_ = has_capability(std::string_view{line}.substr(13), "SASL-IR");
        return;
      }
      if (line.starts_with("* ")) return;
      if (iequals_prefix(line, tagged_caps + "OK")) {
        send_xoauth2();
        return;
      }
      upstream_failed("upstream CAPABILITY failed: " + line.substr(0, 200));
      return;
    case up_state::auth:
    case up_state::challenged:
      break;
  }
  // AUTHENTICATE XOAUTH2 in progress.
  if (line.starts_with("+")) {
    if (!token_sent_) {
      token_sent_ = true;
      write_upstream(std::string{token_.reveal()} + "\r\n", true);
      token_ = secret{};
    } else {
      // An error challenge (RFC 7628 §3.2.3 style): answer with an empty response; the tagged
      // NO follows. Never forwarded to the client, which did not ask for a continuation.
      up_ = up_state::challenged;
      write_upstream("\r\n");
    }
    return;
  }
  if (line.starts_with("* ")) {
    upstream_untagged_.append(line).append("\r\n");
    return;
  }
  if (!token_sent_) {
    // A tagged answer before the token went out says nothing about the token: the server
    // refused AUTHENTICATE XOAUTH2 itself (or misbehaves). Never splice on it.
    upstream_failed("upstream answered AUTHENTICATE before the token was sent: " +
                    line.substr(0, 200));
    return;
  }
  if (iequals_prefix(line, tagged_auth + "OK")) {
    std::string rest = line.substr(tagged_auth.size());
    if (!upstream_untagged_.empty()) write_client(std::exchange(upstream_untagged_, {}));
    reply(tag_, rest);
    pending_.push_back(splice{reader_.take_buffered(), std::exchange(up_buf_, {}), {}});
    return;
  }
  if (iequals_prefix(line, tagged_auth + "NO") || iequals_prefix(line, tagged_auth + "BAD")) {
    pending_.push_back(token_rejected{line.substr(0, 200), {}});
    pending_.push_back(close_upstream{"upstream refused the token: " + line.substr(0, 200)});
    state_ = state::client_command;
    login_failed(r::upstream_refused);
    return;
  }
  upstream_failed("unexpected upstream reply: " + line.substr(0, 200));
}

}  // namespace xo::protocol::imap
