// The meaning pass: value checks on single keys (enums, addresses, logins, hashes, URLs)
// and checks across entries (unique names, references, listen addresses). Every function reports
// its own diagnostics and lets the caller carry on, so one load reports every mistake.
#include "config/reader.hpp"

#include <arpa/inet.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>

namespace xo::config::detail {

namespace {

template <class E>
struct choice {
  std::string_view name;
  E value;
  bool supported = true;  // false: accepted by the grammar, rejected as "not supported yet"
};

std::string names_of(auto const& choices, bool supported_only) {
  std::string out;
  for (const auto& ch : choices) {
    if (supported_only && !ch.supported) continue;
    if (!out.empty()) out += ", ";
    out += ch.name;
  }
  return out;
}

template <class E, std::size_t N>
std::optional<E> pick(const located<std::string>& v, std::string key,
                      const std::array<choice<E>, N>& choices, load_context& c) {
  for (const auto& ch : choices) {
    if (ch.name != v.value) continue;
    if (ch.supported) return ch.value;
    c.error(
        v.where, std::move(key),
        fmt::format("'{}' is not supported yet (supported: {})", v.value, names_of(choices, true)));
    return std::nullopt;
  }
  c.error(
      v.where, std::move(key),
      fmt::format("invalid value '{}' (expected one of: {})", v.value, names_of(choices, false)));
  return std::nullopt;
}

constexpr std::array<choice<log_format>, 2> log_formats{
    {{"text", log_format::text}, {"json", log_format::json}}};
constexpr std::array<choice<std::string_view>, 7> log_levels{{{"trace", "trace"},
                                                              {"debug", "debug"},
                                                              {"info", "info"},
                                                              {"warn", "warn"},
                                                              {"error", "error"},
                                                              {"critical", "critical"},
                                                              {"off", "off"}}};
constexpr std::array<choice<tls_mode>, 3> tls_modes{
    {{"none", tls_mode::none}, {"starttls", tls_mode::starttls}, {"implicit", tls_mode::implicit}}};
constexpr std::array<choice<upstream_tls_mode>, 2> upstream_tls_modes{
    {{"implicit", upstream_tls_mode::implicit}, {"starttls", upstream_tls_mode::starttls}}};
// To enable a protocol or flow once it is implemented, flip its `supported` flag.
constexpr std::array<choice<protocol_kind>, 3> protocols{{{"imap", protocol_kind::imap},
                                                          {"smtp", protocol_kind::smtp, true},
                                                          {"pop3", protocol_kind::pop3, true}}};
constexpr std::array<choice<flow_kind>, 4> flows{
    {{"client_credentials", flow_kind::client_credentials},
     {"authorization_code", flow_kind::authorization_code},
     {"device_code", flow_kind::device_code},
     {"password", flow_kind::password}}};

bool is_ipv4(const std::string& s) {
  in_addr a{};
  return inet_pton(AF_INET, s.c_str(), &a) == 1;
}

bool is_ipv6(const std::string& s) {
  in6_addr a{};
  return inet_pton(AF_INET6, s.c_str(), &a) == 1;
}

bool is_alnum(char ch) {
  return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
}

// RFC 1123 labels (underscores tolerated, as container names use them); not all-numeric at the end.
bool is_hostname(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  bool last_numeric = false;
  for (std::size_t start = 0; start <= s.size();) {
    std::size_t end = std::min(s.find('.', start), s.size());
    std::string_view label = s.substr(start, end - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-')
      return false;
    if (!std::all_of(label.begin(), label.end(),
                     [](char ch) { return is_alnum(ch) || ch == '-' || ch == '_'; }))
      return false;
    last_numeric =
        std::all_of(label.begin(), label.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
    start = end + 1;
  }
  return !last_numeric;
}

bool is_loopback(const std::string& host) {
  in_addr a4{};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
  return host == "::1";
}

// An address part: no whitespace or control characters, no '@'.
bool address_part_ok(std::string_view s) {
  return !s.empty() && std::none_of(s.begin(), s.end(), [](char ch) {
    return static_cast<unsigned char>(ch) <= ' ' || ch == '@' || ch == 0x7f;
  });
}

bool is_address(std::string_view s) {
  auto at = s.find('@');
  return at != std::string_view::npos && address_part_ok(s.substr(0, at)) &&
         address_part_ok(s.substr(at + 1));
}

}  // namespace

// ---- enums and numbers ----

std::optional<log_format> parse_log_format(const located<std::string>& v, std::string key,
                                           load_context& c) {
  return pick(v, std::move(key), log_formats, c);
}

std::optional<std::string> parse_log_level(const located<std::string>& v, std::string key,
                                           load_context& c) {
  auto level = pick(v, std::move(key), log_levels, c);
  if (!level) return std::nullopt;
  return std::string(*level);
}

std::optional<tls_mode> parse_tls_mode(const located<std::string>& v, std::string key,
                                       load_context& c) {
  return pick(v, std::move(key), tls_modes, c);
}

std::optional<upstream_tls_mode> parse_upstream_tls(const located<std::string>& v, std::string key,
                                                    load_context& c) {
  return pick(v, std::move(key), upstream_tls_modes, c);
}

std::optional<protocol_kind> parse_protocol(const located<std::string>& v, std::string key,
                                            load_context& c) {
  return pick(v, std::move(key), protocols, c);
}

std::optional<flow_kind> parse_flow(const located<std::string>& v, std::string key,
                                    load_context& c) {
  return pick(v, std::move(key), flows, c);
}

std::optional<std::chrono::seconds> parse_seconds(const located<std::int64_t>& v, std::string key,
                                                  std::int64_t minimum, load_context& c) {
  constexpr std::int64_t week = 7 * 24 * 3600;
  if (v.value < minimum) {
    c.error(v.where, std::move(key),
            minimum <= 1 ? std::string("must be a positive number of seconds")
                         : fmt::format("must be at least {} seconds", minimum));
    return std::nullopt;
  }
  if (v.value > week) {
    c.error(v.where, std::move(key), fmt::format("must be at most {} seconds (one week)", week));
    return std::nullopt;
  }
  return std::chrono::seconds{v.value};
}

// ---- addresses ----

namespace {

std::optional<std::uint16_t> parse_port(std::string_view s, bool allow_zero) {
  unsigned value = 0;
  if (s.empty() || s.size() > 5) return std::nullopt;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc{} || end != s.data() + s.size() || value > 65535) return std::nullopt;
  if (value == 0 && !allow_zero) return std::nullopt;
  return static_cast<std::uint16_t>(value);
}

// Splits "host:port" / "[v6]:port"; returns an error message, or "" on success.
std::string split_host_port(std::string_view s, std::string& host, std::string_view& port,
                            bool& bracketed) {
  bracketed = s.starts_with('[');
  if (bracketed) {
    auto close = s.find(']');
    if (close == std::string_view::npos || close + 1 >= s.size() || s[close + 1] != ':')
      return fmt::format("'{}' is not [address]:port", s);
    host = std::string(s.substr(1, close - 1));
    port = s.substr(close + 2);
    return is_ipv6(host) ? "" : fmt::format("'{}': '{}' is not an IPv6 address", s, host);
  }
  auto colon = s.rfind(':');
  if (colon == std::string_view::npos)
    return fmt::format("'{}' is not host:port (e.g. 127.0.0.1:1143)", s);
  host = std::string(s.substr(0, colon));
  port = s.substr(colon + 1);
  if (host.find(':') != std::string::npos)
    return fmt::format("'{}': write an IPv6 address in brackets, e.g. [::1]:1143", s);
  return "";
}

}  // namespace

std::optional<host_port> parse_host_port(const located<std::string>& v, std::string key,
                                         address_kind k, load_context& c) {
  const bool listen = k == address_kind::listen;
  std::string host;
  std::string_view port_text;
  bool bracketed = false;
  std::string problem = split_host_port(v.value, host, port_text, bracketed);
  if (problem.empty() && !bracketed) {
    if (listen && !is_ipv4(host)) {
      problem = fmt::format(
          "'{}': listen must be an IP address (e.g. 127.0.0.1:1143 or [::1]:1143)", v.value);
    } else if (!listen && !is_ipv4(host) && !is_hostname(host)) {
      problem = fmt::format("'{}': '{}' is not a host name or IP address", v.value, host);
    }
  }
  std::optional<std::uint16_t> port;
  if (problem.empty() && !(port = parse_port(port_text, listen))) {
    problem =
        fmt::format("'{}': the port must be a number from {} to 65535", v.value, listen ? 0 : 1);
  }
  if (!problem.empty()) {
    c.error(v.where, std::move(key), std::move(problem));
    return std::nullopt;
  }
  return host_port{std::move(host), *port};
}

// ---- accounts and providers ----

bool check_login(const located<std::string>& v, std::string key, load_context& c) {
  std::string_view s = v.value;
  bool ok = s.starts_with("*@") ? is_hostname(s.substr(2))
                                : is_address(s) && s.find('*') == std::string_view::npos;
  if (!ok) {
    c.error(v.where, std::move(key),
            fmt::format("'{}' is not a login: expected an address (user@example.com) or a wildcard "
                        "(*@example.com)",
                        s));
  }
  return ok;
}

bool check_mailbox(const located<std::string>& v, std::string key, load_context& c) {
  if (is_address(v.value)) return true;
  c.error(v.where, std::move(key),
          fmt::format("'{}' is not a mailbox address (user@example.com)", v.value));
  return false;
}

bool check_password_hash(const located<std::string>& v, std::string key, load_context& c) {
  // Syntax only ("$argon2id$v=19$m=...,t=...,p=...$salt$hash"); auth/ verifies it. Never echo it.
  std::string_view s = v.value;
  bool ok = s.starts_with("$argon2id$v=19$");
  std::size_t fields = 0;
  for (std::size_t start = 1; ok && start <= s.size(); ++fields) {
    std::size_t end = std::min(s.find('$', start), s.size());
    ok = end > start;
    start = end + 1;
  }
  if (ok && fields == 5) return true;
  c.error(v.where, std::move(key),
          "must be an argon2id PHC string ($argon2id$v=19$m=...,t=...,p=...$salt$hash)");
  return false;
}

bool check_tenant(const located<std::string>& v, std::string key, load_context& c) {
  const auto& s = v.value;
  if (std::all_of(s.begin(), s.end(),
                  [](char ch) { return is_alnum(ch) || ch == '-' || ch == '.'; }))
    return true;
  c.error(
      v.where, std::move(key),
      fmt::format(
          "'{}' is not a tenant: expected a directory ID (GUID), a domain, or 'organizations'", s));
  return false;
}

std::optional<std::string> parse_authority(const located<std::string>& v, std::string key,
                                           load_context& c) {
  std::string s = v.value;
  while (s.ends_with('/')) s.pop_back();
  if (s.starts_with("https://") && s.size() > 8) return s;
  c.error(v.where, std::move(key), fmt::format("'{}' must be an https:// URL", v.value));
  return std::nullopt;
}

bool check_ehlo_name(const located<std::string>& v, std::string key, load_context& c) {
  bool ok = !v.value.empty() && v.value.size() <= 255;
  for (char ch : v.value)
    ok = ok && ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                ch == '-' || ch == '.');
  if (!ok) c.error(v.where, std::move(key), fmt::format("'{}' is not a host name", v.value));
  return ok;
}

std::optional<cidr> parse_cidr(std::string_view text) {
  cidr n;
  n.text = std::string{text};
  std::string addr{text};
  auto slash = addr.find('/');
  std::optional<int> prefix;
  if (slash != std::string::npos) {
    std::string_view p{addr.data() + slash + 1, addr.size() - slash - 1};
    int v = 0;
    auto [end, ec] = std::from_chars(p.data(), p.data() + p.size(), v);
    if (p.empty() || ec != std::errc{} || end != p.data() + p.size()) return std::nullopt;
    prefix = v;
    addr.resize(slash);
  }
  if (inet_pton(AF_INET, addr.c_str(), n.addr) == 1) {
    n.prefix = prefix.value_or(32);
    if (n.prefix < 0 || n.prefix > 32) return std::nullopt;
  } else if (inet_pton(AF_INET6, addr.c_str(), n.addr) == 1) {
    n.v6 = true;
    n.prefix = prefix.value_or(128);
    if (n.prefix < 0 || n.prefix > 128) return std::nullopt;
  } else {
    return std::nullopt;
  }
  return n;
}

std::optional<std::vector<cidr>> parse_cidrs(const located<std::vector<std::string>>& v,
                                             std::string key, load_context& c) {
  std::vector<cidr> out;
  bool ok = true;
  for (const auto& s : v.value) {
    auto n = parse_cidr(s);
    if (!n) {
      c.error(v.where, key, fmt::format("'{}' is not an address or network (e.g. 192.168.10.0/24)", s));
      ok = false;
      continue;
    }
    out.push_back(std::move(*n));
  }
  // The valid entries are kept (the bad ones are reported), so later checks do not also complain
  // that the list is empty.
  if (!ok && out.empty()) return std::nullopt;
  return out;
}

// allowed_from: "user@domain" or "*@domain".
std::optional<std::vector<std::string>> parse_sender_patterns(
    const located<std::vector<std::string>>& v, std::string key, load_context& c) {
  bool ok = !v.value.empty();
  if (!ok) c.error(v.where, key, "must list at least one address (or leave the key out)");
  for (const auto& p : v.value) {
    auto at = p.find('@');
    bool good = at != std::string::npos && at > 0 && at + 1 < p.size() &&
                p.find('@', at + 1) == std::string::npos &&
                (p.find('*') == std::string::npos || (p.starts_with("*@") && at == 1)) &&
                p.find_first_of(" <>\"") == std::string::npos;
    if (!good) {
      c.error(v.where, key,
              fmt::format("'{}' is not an address (user@example.com) or *@example.com", p));
      ok = false;
    }
  }
  if (!ok) return std::nullopt;
  return v.value;
}

// ---- across entries ----
std::optional<std::string> parse_base_url(const located<std::string>& v, std::string key,
                                          load_context& c) {
  std::string s = v.value;
  while (s.ends_with('/')) s.pop_back();
  const bool https = s.starts_with("https://");
  const bool http = s.starts_with("http://");
  std::string_view rest = s;
  rest.remove_prefix(https ? 8 : http ? 7 : 0);
  std::string_view host = rest.substr(0, rest.find_first_of(":/"));
  if ((!http && !https) || host.empty() || s.find_first_of("?# ") != std::string::npos) {
    c.error(v.where, std::move(key),
            fmt::format("'{}' must be an http:// or https:// URL without query or fragment, "
                        "e.g. https://proxy.example.com",
                        v.value));
    return std::nullopt;
  }
  if (http && host != "localhost" && host != "127.0.0.1" && host != "[::1]") {
    c.warning(v.where, std::move(key),
              "Microsoft Entra accepts http:// redirect URIs only for localhost; use https:// "
              "(behind a TLS-terminating reverse proxy)");
  }
  return s;
}

namespace {

bool is_wildcard_address(const std::string& host) { return host == "0.0.0.0" || host == "::"; }

void check_providers(const config& cfg, const entry_positions& pos, load_context& c) {
  for (std::size_t i = 0; i < cfg.providers.size(); ++i) {
    if (!pos.providers[i].has("name")) continue;
    for (std::size_t j = 0; j < i; ++j) {
      if (!pos.providers[j].has("name") || cfg.providers[j].name != cfg.providers[i].name) continue;
      c.error(pos.providers[i].of("name"), pos.providers[i].key("name"),
              fmt::format("duplicate provider name '{}' (also used by provider[{}] at line {})",
                          cfg.providers[i].name, j + 1, pos.providers[j].of("name").line));
      break;
    }
  }
}

// What each flow needs from its provider and from the proxy.
void check_account_flow(const config& cfg, const account& a, const positions& ap,
                        load_context& c) {
  const provider* p = cfg.find_provider(a.provider);
  const source_pos& at = ap.has("flow") ? ap.of("flow") : ap.of("login");
  const std::string key = ap.key(ap.has("flow") ? "flow" : "login");
  if (p && a.flow == flow_kind::client_credentials && !p->has_client_credential()) {
    c.error(at, key,
            fmt::format("flow \"client_credentials\" needs a client credential, but provider '{}' "
                        "has none: set client_secret_file, client_secret = \"${{ENV_VAR}}\" or "
                        "certificate_file and private_key_file",
                        p->name));
  }
  if (a.interactive() && a.is_wildcard()) {
    c.error(at, key,
            fmt::format("flow \"{}\" authorizes one mailbox at a time: use an exact login, not "
                        "'{}'",
                        to_string(a.flow), a.login));
  }
  if (a.interactive() && !cfg.proxy.admin_address) {
    c.error(at, key,
            fmt::format("flow \"{}\" needs the admin listener ([proxy] admin_listen) to receive "
                        "the authorization",
                        to_string(a.flow)));
  }
}

void check_accounts(const config& cfg, const entry_positions& pos, load_context& c) {
  std::vector<std::string> provider_names;
  for (const auto& p : cfg.providers) provider_names.push_back(p.name);
  for (std::size_t i = 0; i < cfg.accounts.size(); ++i) {
    const account& a = cfg.accounts[i];
    const positions& ap = pos.accounts[i];
    for (std::size_t j = 0; ap.has("login") && j < i; ++j) {
      if (!pos.accounts[j].has("login") || !iequals(cfg.accounts[j].login, a.login)) continue;
      c.error(ap.of("login"), ap.key("login"),
              fmt::format("duplicate login '{}' (also used by account[{}] at line {})", a.login,
                          j + 1, pos.accounts[j].of("login").line));
      break;
    }
    if (ap.has("provider") && !cfg.find_provider(a.provider)) {
      std::string msg = fmt::format("unknown provider '{}'", a.provider);
      if (auto hint = closest(a.provider, provider_names)) {
        msg += fmt::format(" (did you mean '{}'?)", *hint);
      } else {
        msg += " (no [[provider]] has this name)";
      }
      c.error(ap.of("provider"), ap.key("provider"), std::move(msg));
    }
    check_account_flow(cfg, a, ap, c);
  }
}

// Two listen addresses that cannot both be bound: the same address, or a wildcard (0.0.0.0, ::)
// and an address of the same family, on the same port.
bool clash(const host_port& a, const host_port& b) {
  const bool same_family =
      (a.host.find(':') == std::string::npos) == (b.host.find(':') == std::string::npos);
  return a.port == b.port && (a.host == b.host || (same_family && (is_wildcard_address(a.host) ||
                                                                   is_wildcard_address(b.host))));
}

// An anonymous SMTP relay is opt-in and never unrestricted.
void check_anonymous(const config& cfg, const listener& l, const positions& lp, load_context& c) {
  if (!lp.has("anonymous_account")) {
    if (lp.has("allow_from"))
      c.warning(lp.of("allow_from"), lp.key("allow_from"), "ignored without anonymous_account");
    return;
  }
  if (l.protocol != protocol_kind::smtp) {
    c.error(lp.of("anonymous_account"), lp.key("anonymous_account"),
            "only SMTP listeners can accept clients that do not authenticate");
    return;
  }
  if (l.allow_from.empty()) {
    c.error(lp.of("anonymous_account"), lp.key("anonymous_account"),
            "refused without allow_from: list the client networks that may send without "
            "authenticating, e.g. allow_from = [\"192.168.10.0/24\"]");
  }
  const account* a = cfg.find_account(l.anonymous_account);
  if (!a || a->is_wildcard()) {
    c.error(lp.of("anonymous_account"), lp.key("anonymous_account"),
            fmt::format("'{}' is not the login of an [[account]]", l.anonymous_account));
  }
}

void check_listeners(const config& cfg, const entry_positions& pos, load_context& c) {
  for (std::size_t i = 0; i < cfg.listeners.size(); ++i) {
    const listener& l = cfg.listeners[i];
    const positions& lp = pos.listeners[i];
    if (!lp.has("listen")) continue;
    for (std::size_t j = 0; l.listen.port != 0 && j < i; ++j) {
      const host_port& other = cfg.listeners[j].listen;
      if (!pos.listeners[j].has("listen") || !clash(other, l.listen)) continue;
      std::string also = other.host == l.listen.host ? "" : fmt::format(" ({})", other.to_string());
      c.error(lp.of("listen"), lp.key("listen"),
              fmt::format("{} is already used by listener[{}]{} at line {}", l.listen.to_string(),
                          j + 1, also, pos.listeners[j].of("listen").line));
      break;
    }
    check_anonymous(cfg, l, lp, c);
    if (l.tls == tls_mode::none && !is_loopback(l.listen.host)) {
      c.warning(
          lp.of("listen"), lp.key("listen"),
          fmt::format("{} is not a loopback address and tls = \"none\": passwords will cross the "
                      "network in clear text",
                      l.listen.to_string()));
    }
  }
}

}  // namespace

void check_references(const config& cfg, const entry_positions& pos, load_context& c) {
  check_providers(cfg, pos, c);
  check_accounts(cfg, pos, c);
  check_listeners(cfg, pos, c);
}

}  // namespace xo::config::detail
