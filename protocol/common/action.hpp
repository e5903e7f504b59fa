#pragma once
// The vocabulary shared by the sans-I/O login flows (IMAP now; SMTP and POP3 next). A flow owns no
// socket, timer or logger: the driver (proxy/session.hpp) asks flow.next() what to do, does it,
// and reports back with on_read / on_io_done / on_authorized. Bad input never throws; it becomes a
// protocol reply or a close action.
#include "common/secret.hpp"

#include <string>
#include <variant>
#include <vector>

namespace xo::protocol {

enum class peer { client, upstream };

struct read_from {
  peer from;
};
struct write_to {
  peer to;
  std::string bytes;
  bool sensitive = false;  // carries a credential: trace it as "<redacted N bytes>"
};
// Server role on the client side, client role upstream. Precondition for the driver: the flow has
// checked that nothing was pipelined after the STARTTLS command (plaintext injection).
struct start_tls {
  peer on;
};
struct connect_upstream {};
// Check the local password, map the login to an account and get a token; answer on_authorized().
struct authorize {
  std::string user;     // authcid / LOGIN user, byte-exact
  secret password;
  std::string authzid;  // SASL PLAIN authorization identity, empty if none
  // SMTP only: a client that did not authenticate, mapped to the listener's anonymous_account
  // because its address is allow-listed. No password to check.
  bool anonymous = false;
};
// Login done: relay bytes untouched from now on. The leftovers were read but belong to the relay.
struct splice {
  std::string client_leftover;    // pipelined after the login command: goes upstream first
  std::string upstream_leftover;  // after the upstream's final login reply: goes to the client
  // SMTP: non-empty means every MAIL FROM must match one of these (protocol/smtp/sender_filter).
  std::vector<std::string> allowed_senders;
};
struct close {
  std::string reason;  // for the session summary; never contains a secret
};
// Drop the upstream connection (it failed or refused us); the client session goes on.
struct close_upstream {
  std::string reason;
};
// The upstream server refused a token we obtained: the driver drops it from the cache so the
// next login fetches a fresh one. Answer with on_io_done(true).
struct token_rejected {
  std::string upstream_reply;  // the server's words, for the log (never contains the token)
  std::string hint;            // what an admin should check, if the reply is a known one
};

using action = std::variant<read_from, write_to, start_tls, connect_upstream, authorize, splice,
                            close, close_upstream, token_rejected>;

// What the driver learned about the login (answer to `authorize`).
struct auth_outcome {
  enum class kind {
    ok,               // token and mailbox are set
    bad_credentials,  // wrong password, unknown account, authzid not allowed
    temporary,        // identity platform down, throttled, timeout
    contact_admin,    // configuration fault or grant needs re-authorization
  };
  kind result = kind::bad_credentials;
  std::string mailbox;  // XOAUTH2 user=
  secret token;         // access token
  std::vector<std::string> allowed_senders;  // SMTP: the account's allowed_from
  std::string reason;   // for metrics and logs: "ok", "wrong_password", "needs_authorization" ...
};

}  // namespace xo::protocol
