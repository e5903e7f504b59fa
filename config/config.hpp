#pragma once
// The validated configuration. Plain structs: nothing downstream reads a TOML node.
// Loaded once at startup by config::load() (config/loader.hpp).
#include "common/secret.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace xo::config {

enum class log_format { text, json };
enum class tls_mode { none, starttls, implicit };          // between the app and the proxy
enum class upstream_tls_mode { implicit, starttls };        // never plaintext upstream
enum class protocol_kind { imap, smtp, pop3 };
enum class flow_kind { client_credentials, authorization_code, device_code, password };

std::string_view to_string(log_format v);
std::string_view to_string(tls_mode v);
std::string_view to_string(upstream_tls_mode v);
std::string_view to_string(protocol_kind v);
std::string_view to_string(flow_kind v);

// Where a value came from, for diagnostics.
struct source_pos {
  std::string file;
  int line = 0;
  int column = 0;
};

struct host_port {
  std::string host;  // name or IP literal (IPv6 written without brackets here)
  std::uint16_t port = 0;
  std::string to_string() const;  // "host:port", "[v6]:port"
};

// A client network for allow-lists: "192.168.10.0/24", "10.1.2.3" (= /32), "fd00::/8".
struct cidr {
  bool v6 = false;
  unsigned char addr[16] = {};
  int prefix = 0;
  std::string text;  // as written
  // ip: a textual IPv4 or IPv6 address (IPv4-mapped IPv6 matches IPv4 networks).
  bool contains(std::string_view ip) const;
};

struct proxy_settings {
  std::string state_dir = "./state";
  log_format format = log_format::text;
  std::string log_level = "info";  // trace | debug | info | warn | error | critical | off
  std::chrono::seconds login_timeout{60};          // each pre-login step (client and upstream)
  std::chrono::seconds idle_timeout{1800};         // relay idle limit; >= 30 min (RFC 3501 §5.4)
  std::chrono::seconds token_timeout{30};          // one token request to the identity platform
  std::chrono::seconds credential_cache_ttl{300};  // verified local passwords kept in memory
  // Admin HTTP listener (OAuth redirect callback, status page, health): "" disables it.
  // Port 0 picks a free port (tests); the bound address is written to <state_dir>/admin.json.
  std::string admin_listen = "127.0.0.1:8025";
  std::optional<host_port> admin_address;  // parsed admin_listen; nullopt when disabled
  // What the administrator registers in Azure is public_base_url + "/sso/oauth_callback".
  // Empty: "http://localhost:<admin port>".
  std::string public_base_url;
  // 32 random bytes (raw, hex or base64): encrypts the token store for unattended accounts.
  // Empty: every account's tokens are encrypted with a key derived from its local password.
  std::string token_key_file;
  std::chrono::seconds refresh_ahead{300};        // refresh access tokens this long before expiry
  std::chrono::seconds token_keepalive{604800};   // refresh idle grants at least this often
  std::chrono::seconds drain_timeout{30};  // SIGTERM: sessions may finish this long, then close
  // Password guessing (issue 8): this many failed logins within lockout_window, counted per
  // (login, client address) and per client address, refuse that pair (or address) for
  // lockout_duration. 0 turns the guard off (no delays, no lockouts).
  unsigned lockout_failures = 10;
  // Failures from one client address (all logins together) that lock the whole address. Higher
  // than lockout_failures: behind NAT or on the proxy's own host (127.0.0.1) many devices share
  // one address, and one device with an old password must not lock the others out. 0: never.
  unsigned lockout_address_failures = 50;
  std::chrono::seconds lockout_window{900};
  std::chrono::seconds lockout_duration{900};
};

struct provider {
  std::string name;
  std::string tenant;
  std::string client_id;
  secret client_secret;  // from client_secret_file or client_secret = "${ENV}"
  std::string authority = "https://login.microsoftonline.com";  // no trailing slash
  std::string ca_file;   // optional extra trust anchors for the authority
  std::vector<std::string> scopes;  // empty: the flow's default
  // Client assertion (certificate credential) instead of a secret: PEM files.
  std::string certificate_file;
  std::string private_key_file;
  source_pos where;
  // A confidential client: it has a secret or a certificate to prove who it is.
  bool has_client_credential() const { return !client_secret.empty() || !certificate_file.empty(); }
  // "{authority}/{tenant}/oauth2/v2.0/token"
  std::string token_endpoint() const;
  // Where client_secret came from, never its value: "file /path", "environment variable NAME",
  // or "inline in the config file". Shown by describe().
  std::string client_secret_origin;
};

struct listener {
  protocol_kind protocol = protocol_kind::imap;
  host_port listen;
  tls_mode tls = tls_mode::none;
  std::string cert_file;
  std::string key_file;
  host_port upstream;
  upstream_tls_mode upstream_tls = upstream_tls_mode::implicit;
  std::string upstream_ca_file;  // optional extra trust anchors for the upstream server
  // SMTP only.
  std::string ehlo_name;          // our name in the greeting, EHLO replies and upstream EHLO
  std::string anonymous_account;  // clients that send mail without AUTH use this account ...
  std::vector<cidr> allow_from;   // ... when their address is in one of these networks
  bool allows_anonymous(std::string_view client_ip) const;
  source_pos where;
};

struct account {
  std::string login;     // exact login, or "*@domain"
  std::string provider;  // name of a [[provider]]
  flow_kind flow = flow_kind::client_credentials;
  std::string mailbox;   // XOAUTH2 user=; empty means "the login the client sent"
  std::string password_hash;  // argon2id PHC string; optional for flow = "password"
  // SMTP: MAIL FROM addresses this login may use ("a@b.c" or "*@b.c"); empty = any.
  std::vector<std::string> allowed_from;
  source_pos where;
  bool is_wildcard() const { return login.starts_with("*@"); }
  // Delegated flows carry a per-user grant (refresh token) kept in the token store.
  bool delegated() const { return flow != flow_kind::client_credentials; }
  // Interactive flows are authorized once by an administrator or user (authorize CLI, admin page).
  bool interactive() const {
    return flow == flow_kind::authorization_code || flow == flow_kind::device_code;
  }
};

struct config {
  std::string path;
  proxy_settings proxy;
  std::vector<provider> providers;
  std::vector<listener> listeners;
  std::vector<account> accounts;

  const provider* find_provider(std::string_view name) const;
  // Exact login first (ASCII case-insensitive), then "*@domain" on the login's domain.
  const account* find_account(std::string_view login) const;
};

struct diagnostic {
  source_pos where;
  std::string key;      // e.g. "listener[2].upstream"
  std::string message;
  bool warning = false;
  // "file:line:col: key: message" (or "file: key: message" without a position; no "key: " when
  // the key is empty, e.g. a syntax error). A warning reads "...: key: warning: message".
  std::string to_string() const;
};

class config_error : public std::runtime_error {
 public:
  explicit config_error(std::vector<diagnostic> d);
  const std::vector<diagnostic>& diagnostics() const noexcept { return diags_; }

 private:
  std::vector<diagnostic> diags_;
};

}  // namespace xo::config
