// The model's small behaviours declared in config/config.hpp (names, lookups, diagnostics) and
// describe(), the summary printed by `xoauth-proxy check`. Nothing here prints a secret or a
// password hash: a provider's secret is shown as "[set]" plus where it came from.
#include "config/loader.hpp"
#include "config/reader.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <cstring>

namespace xo::config {

std::string_view to_string(log_format v) {
  switch (v) {
    case log_format::text:
      return "text";
    case log_format::json:
      return "json";
  }
  return "?";
}

std::string_view to_string(tls_mode v) {
  switch (v) {
    case tls_mode::none:
      return "none";
    case tls_mode::starttls:
      return "starttls";
    case tls_mode::implicit:
      return "implicit";
  }
  return "?";
}

std::string_view to_string(upstream_tls_mode v) {
  switch (v) {
    case upstream_tls_mode::implicit:
      return "implicit";
    case upstream_tls_mode::starttls:
      return "starttls";
  }
  return "?";
}

std::string_view to_string(protocol_kind v) {
  switch (v) {
    case protocol_kind::imap:
      return "imap";
    case protocol_kind::smtp:
      return "smtp";
    case protocol_kind::pop3:
      return "pop3";
  }
  return "?";
}

std::string_view to_string(flow_kind v) {
  switch (v) {
    case flow_kind::client_credentials:
      return "client_credentials";
    case flow_kind::authorization_code:
      return "authorization_code";
    case flow_kind::device_code:
      return "device_code";
    case flow_kind::password:
      return "password";
  }
  return "?";
}

std::string host_port::to_string() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

std::string provider::token_endpoint() const {
  return fmt::format("{}/{}/oauth2/v2.0/token", authority, tenant);
}

const provider* config::find_provider(std::string_view name) const {
  for (const auto& p : providers) {
    if (p.name == name) return &p;
  }
  return nullptr;
}

const account* config::find_account(std::string_view login) const {
  auto at = login.rfind('@');
  if (at == std::string_view::npos || at == 0 || login.substr(0, at) == "*") return nullptr;
  for (const auto& a : accounts) {
    if (!a.is_wildcard() && detail::iequals(a.login, login)) return &a;
  }
  const std::string_view domain = login.substr(at + 1);
  for (const auto& a : accounts) {
    if (a.is_wildcard() && detail::iequals(std::string_view(a.login).substr(2), domain)) return &a;
  }
  return nullptr;
}

std::string diagnostic::to_string() const {
  std::string out = where.file;
  if (where.line > 0)
    out += fmt::format("{}{}:{}", out.empty() ? "" : ":", where.line, where.column);
  if (!out.empty()) out += ": ";
  if (!key.empty()) out += key + ": ";
  if (warning) out += "warning: ";
  return out + message;
}

namespace {

std::string join_lines(const std::vector<diagnostic>& d) {
  std::string out;
  for (const auto& x : d) {
    if (!out.empty()) out += '\n';
    out += x.to_string();
  }
  return out;
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : " ") + s;
  return out;
}

void describe_proxy(std::string& out, const proxy_settings& p) {
  out += "proxy:\n";
  out += fmt::format("  state_dir:  {}\n", p.state_dir);
  out += fmt::format("  logging:    {} ({})\n", p.log_level, to_string(p.format));
  out += fmt::format("  timeouts:   login {}s, idle {}s, token {}s, credential cache {}s\n",
                     p.login_timeout.count(), p.idle_timeout.count(), p.token_timeout.count(),
                     p.credential_cache_ttl.count());
  out += fmt::format("  admin:      {}\n", p.admin_address ? p.admin_address->to_string()
                                                           : std::string("disabled"));
  if (!p.public_base_url.empty()) out += fmt::format("  public_base_url: {}\n", p.public_base_url);
  out += fmt::format("  token store: {}/tokens, key {}\n", p.state_dir,
                     p.token_key_file.empty() ? std::string("from each account's local password")
                                              : "file " + p.token_key_file);
  out += fmt::format("  token refresh: {}s ahead of expiry, idle grants every {}s\n",
                     p.refresh_ahead.count(), p.token_keepalive.count());
  out += fmt::format("  drain on SIGTERM: up to {}s\n", p.drain_timeout.count());
  if (p.lockout_failures == 0) {
    out += "  login lockout: off\n";
  } else {
    out += fmt::format(
        "  login lockout: {} failures per login and client address ({} per address) within {}s "
        "lock for {}s\n",
        p.lockout_failures, p.lockout_address_failures, p.lockout_window.count(),
        p.lockout_duration.count());
  }
}

void describe_provider(std::string& out, const provider& p) {
  out += fmt::format("  {}\n", p.name);
  out += fmt::format("    tenant:         {}\n", p.tenant);
  out += fmt::format("    client_id:      {}\n", p.client_id);
  out += fmt::format("    token endpoint: {}\n", p.token_endpoint());
  if (!p.certificate_file.empty()) {
    out += fmt::format("    certificate:    {} (key {})\n", p.certificate_file, p.private_key_file);
  } else {
    out += fmt::format("    client secret:  {}\n",
                       p.client_secret.empty()
                           ? std::string("[not set] (public client)")
                           : fmt::format("[set] ({})", p.client_secret_origin));
  }
  out += fmt::format("    scopes:         {}\n",
                     p.scopes.empty() ? "(the flow's default)" : join(p.scopes));
  if (!p.ca_file.empty()) out += fmt::format("    ca_file:        {}\n", p.ca_file);
}

void describe_listener(std::string& out, const listener& l) {
  out += fmt::format("  {} {} (tls {})", to_string(l.protocol), l.listen.to_string(),
                     to_string(l.tls));
  out += fmt::format(" -> {} (tls {})\n", l.upstream.to_string(), to_string(l.upstream_tls));
  if (l.tls != tls_mode::none)
    out += fmt::format("    certificate: {}, key: {}\n", l.cert_file, l.key_file);
  if (!l.upstream_ca_file.empty())
    out += fmt::format("    upstream_ca_file: {}\n", l.upstream_ca_file);
}

void describe_account(std::string& out, const account& a) {
  out += fmt::format("  {} -> provider {}, flow {}, mailbox {}\n", a.login, a.provider,
                     to_string(a.flow), a.mailbox.empty() ? "(the login)" : a.mailbox);
}

}  // namespace

config_error::config_error(std::vector<diagnostic> d)
    : std::runtime_error(join_lines(d)), diags_(std::move(d)) {}

std::string describe(const config& c) {
  std::string out = fmt::format("config: {}\n", c.path);
  describe_proxy(out, c.proxy);
  out += fmt::format("providers ({}):\n", c.providers.size());
  for (const auto& p : c.providers) describe_provider(out, p);
  out += fmt::format("listeners ({}):\n", c.listeners.size());
  for (const auto& l : c.listeners) describe_listener(out, l);
  out += fmt::format("accounts ({}):\n", c.accounts.size());
  for (const auto& a : c.accounts) describe_account(out, a);
  return out;
}

}  // namespace xo::config

namespace xo::config {

bool cidr::contains(std::string_view ip) const {
  std::string ip_text{ip};
  unsigned char a[16] = {};
  bool is_v6 = false;
  if (inet_pton(AF_INET, ip_text.c_str(), a) != 1) {
    if (inet_pton(AF_INET6, ip_text.c_str(), a) != 1) return false;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (!v6 && std::memcmp(a, mapped, 12) == 0) std::memmove(a, a + 12, 4);  // ::ffff:a.b.c.d
    else is_v6 = true;
  }
  if (is_v6 != v6) return false;
  int bits = prefix;
  for (int i = 0; bits > 0; ++i, bits -= 8) {
    unsigned char mask = bits >= 8 ? 0xff : static_cast<unsigned char>(0xff << (8 - bits));
    if ((a[i] & mask) != (addr[i] & mask)) return false;
  }
  return true;
}

bool listener::allows_anonymous(std::string_view client_ip) const {
  if (anonymous_account.empty()) return false;
  for (const auto& n : allow_from)
    if (n.contains(client_ip)) return true;
  return false;
}

}  // namespace xo::config
