// The POP3 flow after the local check: the upstream exchange (RFC 1939, RFC 2595 §4, RFC 5034,
// MS-XOAUTH2; protocol-notes §2.6). POP3 has no tags: one command, one reply, tracked by up_.
#include "protocol/common/sasl.hpp"
#include "protocol/pop3/login_flow.hpp"
#include "protocol/pop3/responses.hpp"
#include "protocol/pop3/text.hpp"

#include <utility>

namespace xo::protocol::pop3 {

namespace r = responses;
using namespace text;

namespace {

// RFC 2449 §8 / RFC 3206 codes saying the failure is not the token's fault.
bool is_transient_failure(std::string_view line) {
  auto rest = line.substr(4);  // after "-ERR"
  while (rest.starts_with(' ')) rest.remove_prefix(1);
  return istarts_with(rest, "[IN-USE]") || istarts_with(rest, "[SYS/TEMP]");
}

}  // namespace

void login_flow::on_authorized(auth_outcome o) {
  using k = auth_outcome::kind;
  if (o.result != k::ok) {
    login_failed(o.result == k::bad_credentials ? r::auth_failed
                 : o.result == k::temporary    ? r::auth_temporary
                                               : r::auth_contact_admin);
    return;
  }
  mailbox_ = std::move(o.mailbox);
  token_ = std::move(o.token);
  state_ = state::upstream;
  up_ = up_state::connect;
  up_buf_.take_all();
  pending_.push_back(connect_upstream{});
}

void login_flow::upstream_failed(std::string reason) {
  token_ = secret{};
  up_buf_.take_all();
  pending_.clear();
  pending_.push_back(close_upstream{std::move(reason)});
  login_failed(r::upstream_unavailable);
}

void login_flow::advance_upstream() {
  while (state_ == state::upstream && pending_.empty()) {
    auto line = up_buf_.pop_line();
    if (!line && !up_buf_.overflow()) {
      pending_.push_back(read_from{peer::upstream});
      return;
    }
    if (!line || line->size() > opt_.max_upstream_line) {
      upstream_failed("upstream line too long");
      return;
    }
    handle_upstream_line(*line);
  }
}

void login_flow::send_auth() {
  up_ = up_state::auth;
  write_upstream(std::string{r::up_auth});
}

void login_flow::handle_upstream_line(const std::string& line) {
  switch (up_) {
    case up_state::connect:
    case up_state::tls:
      upstream_failed("unexpected data from upstream");
      return;
    case up_state::greeting:
      if (!is_status(line, "+OK")) {
        upstream_failed("upstream greeting was not +OK: " + clip(line));
      } else if (opt_.upstream_starttls) {
        up_ = up_state::stls;
        write_upstream(std::string{r::up_stls});
      } else {
        send_auth();
      }
      return;
    case up_state::stls:
      if (!is_status(line, "+OK")) {
        upstream_failed("upstream refused STLS: " + clip(line));
      } else if (!up_buf_.empty()) {
        upstream_failed("upstream sent data after its STLS reply");  // response injection
      } else {
        up_ = up_state::tls;
        pending_.push_back(start_tls{peer::upstream});
      }
      return;
    case up_state::auth:
      if (!is_continuation(line)) {
        upstream_failed("upstream refused AUTH XOAUTH2: " + clip(line));
        return;
      }
      up_ = up_state::token;
      {
        secret response = xoauth2_initial_response(mailbox_, token_);
        token_ = secret{};
        write_upstream(std::string{response.reveal()} + "\r\n", true);
      }
      return;
    case up_state::token:
    case up_state::challenged:
      handle_auth_result(line);
      return;
  }
}

void login_flow::handle_auth_result(const std::string& line) {
  if (is_status(line, "+OK")) {
    reply(line);  // the upstream's own success text
    pending_.push_back(splice{client_buf_.take_all(), up_buf_.take_all(), {}});
    return;
  }
  if (is_continuation(line) && up_ == up_state::token) {
    // An error challenge (base64 JSON): answer with an empty response, the -ERR follows
    // (RFC 5034 §4, MS-XOAUTH2). Never forwarded: the client did not ask for a continuation.
    up_ = up_state::challenged;
    write_upstream("\r\n");
    return;
  }
  if (!is_status(line, "-ERR")) {
    upstream_failed("unexpected upstream reply: " + clip(line));
    return;
  }
  if (is_transient_failure(line)) {
    // [IN-USE] (maildrop locked) or [SYS/TEMP]: the token is fine; relay the reason.
    pending_.push_back(close_upstream{"upstream login failed: " + clip(line)});
    login_failed(line.substr(0, 512));
    return;
  }
  pending_.push_back(token_rejected{clip(line), std::string{r::upstream_refused_hint}});
  pending_.push_back(close_upstream{"upstream refused the token: " + clip(line)});
  login_failed(r::upstream_refused);
}

}  // namespace xo::protocol::pop3
