// load_file / load_string / load: the syntax pass (toml++), the shape pass (a reader per table) and
// the meaning pass (validate.cpp), collecting every diagnostic. Bad input never throws out of
// load_file or load_string.
#include "config/loader.hpp"

#include "config/reader.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <system_error>

namespace xo::config {

namespace {

using detail::address_kind;
using detail::entry_positions;
using detail::expand;
using detail::load_context;
using detail::located;
using detail::need;
using detail::positions;
using detail::reader;

// Converts a value that read cleanly; on success stores it in `out` and records its position, so
// the cross-entry checks only see values that are known to be good.
template <class V, class Convert, class Out>
void set(reader& r, positions& pos, std::string_view name, const std::optional<located<V>>& v,
         Convert convert, Out& out) {
  if (!v) return;
  auto converted = convert(*v, r.key(name), r.ctx());
  if (!converted) return;
  out = std::move(*converted);
  pos.set(name, v->where);
}

template <class V>
std::optional<V> as_is(const located<V>& v, const std::string&, load_context&) {
  return v.value;
}

template <bool (*Check)(const located<std::string>&, std::string, load_context&)>
std::optional<std::string> checked(const located<std::string>& v, std::string key,
                                   load_context& c) {
  if (!Check(v, std::move(key), c)) return std::nullopt;
  return v.value;
}

std::optional<host_port> listen_address(const located<std::string>& v, std::string key,
                                        load_context& c) {
  return detail::parse_host_port(v, std::move(key), address_kind::listen, c);
}

std::optional<host_port> upstream_address(const located<std::string>& v, std::string key,
                                          load_context& c) {
  return detail::parse_host_port(v, std::move(key), address_kind::upstream, c);
}

std::optional<std::string> path_in_config_dir(const located<std::string>& v, std::string key,
                                              load_context& c) {
  if (v.value.empty()) {
    c.error(v.where, std::move(key), "must not be empty");
    return std::nullopt;
  }
  return c.resolve_path(v.value);
}

// parse_seconds with a fixed minimum, in the shape set() expects.
template <std::int64_t Minimum>
std::optional<std::chrono::seconds> seconds_at_least(const located<std::int64_t>& v,
                                                     std::string key, load_context& c) {
  return detail::parse_seconds(v, std::move(key), Minimum, c);
}

void read_proxy(reader& root, proxy_settings& s) {
  s.state_dir = root.ctx().resolve_path(s.state_dir);
  auto t = root.table("proxy");
  if (!t) {
    s.admin_address = host_port{"127.0.0.1", 8025};
    return;
  }
  positions pos(t->prefix(), t->where());
  set(*t, pos, "state_dir", t->string("state_dir"), path_in_config_dir, s.state_dir);
  set(*t, pos, "log_format", t->string("log_format"), detail::parse_log_format, s.format);
  set(*t, pos, "log_level", t->string("log_level"), detail::parse_log_level, s.log_level);
  set(*t, pos, "login_timeout", t->integer("login_timeout"), seconds_at_least<1>, s.login_timeout);
  set(*t, pos, "idle_timeout", t->integer("idle_timeout"), seconds_at_least<1800>, s.idle_timeout);
  set(*t, pos, "token_timeout", t->integer("token_timeout"), seconds_at_least<1>, s.token_timeout);
  set(*t, pos, "credential_cache_ttl", t->integer("credential_cache_ttl"), seconds_at_least<1>,
      s.credential_cache_ttl);
  set(*t, pos, "admin_listen", t->string("admin_listen"), as_is<std::string>, s.admin_listen);
  set(*t, pos, "public_base_url", t->string("public_base_url"), detail::parse_base_url,
      s.public_base_url);
  set(*t, pos, "token_key_file", t->string("token_key_file"), detail::readable_file,
      s.token_key_file);
  set(*t, pos, "refresh_ahead", t->integer("refresh_ahead"), seconds_at_least<30>,
      s.refresh_ahead);
  set(*t, pos, "token_keepalive", t->integer("token_keepalive"), seconds_at_least<3600>,
      s.token_keepalive);
  set(*t, pos, "drain_timeout", t->integer("drain_timeout"), seconds_at_least<1>,
      s.drain_timeout);
  static constexpr std::int64_t max_lockout_failures = 100;  // each pair keeps that many timestamps
  auto failure_count = [](const located<std::int64_t>& v, std::string key,
                          load_context& c) -> std::optional<unsigned> {
    if (v.value < 0 || v.value > max_lockout_failures) {
      c.error(v.where, std::move(key),
              fmt::format("must be between 0 (off) and {}", max_lockout_failures));
      return std::nullopt;
    }
    return static_cast<unsigned>(v.value);
  };
  set(*t, pos, "lockout_failures", t->integer("lockout_failures"), failure_count,
      s.lockout_failures);
  set(*t, pos, "lockout_address_failures", t->integer("lockout_address_failures"), failure_count,
      s.lockout_address_failures);
  set(*t, pos, "lockout_window", t->integer("lockout_window"), seconds_at_least<1>,
      s.lockout_window);
  set(*t, pos, "lockout_duration", t->integer("lockout_duration"), seconds_at_least<1>,
      s.lockout_duration);
  t->finish();
  if (!s.admin_listen.empty()) {
    located<std::string> v{s.admin_listen, pos.of("admin_listen")};
    s.admin_address = listen_address(v, t->key("admin_listen"), root.ctx());
  }
}

constexpr std::size_t max_secret_file = 64 * 1024;

void secret_from_file(const located<std::string>& file, const positions& pos, provider& p,
                      load_context& c) {
  auto key = pos.key("client_secret_file");
  auto path = detail::readable_file(file, key, c);
  if (!path) return;
  int err = 0;
  auto content = detail::read_file(*path, max_secret_file, err);
  if (!content) {
    c.error(file.where, key,
            fmt::format("cannot read '{}': {}", *path, std::generic_category().message(err)));
    return;
  }
  if (content->size() > max_secret_file) {
    c.error(file.where, key, fmt::format("'{}' is larger than 64 KiB", *path));
    return;
  }
  while (!content->empty() && (content->back() == '\n' || content->back() == '\r')) {
    content->pop_back();
  }
  if (content->empty()) {
    c.error(file.where, key, fmt::format("'{}' is empty", *path));
    return;
  }
  p.client_secret = secret(std::move(*content));
  p.client_secret_origin = "file " + *path;
}

void secret_inline(const located<std::string>& raw, const positions& pos, provider& p,
                   load_context& c) {
  auto key = pos.key("client_secret");
  detail::expansion x = detail::expand_env(raw.value);
  if (!x.ok()) {
    c.error(raw.where, key, fmt::format("environment variable '{}' is not set", x.unset));
    return;
  }
  if (x.text.empty()) {
    c.error(raw.where, key, "must not be empty");
    return;
  }
  if (x.names.empty()) {
    c.warning(raw.where, key,
              "the client secret is written in the config file; prefer client_secret_file or "
              "client_secret = \"${ENV_VAR}\"");
    p.client_secret_origin = "inline in the config file";
  } else {
    std::string names;
    for (const auto& n : x.names) names += (names.empty() ? "" : ", ") + n;
    p.client_secret_origin =
        (x.names.size() == 1 ? "environment variable " : "environment variables ") + names;
  }
  p.client_secret = secret(std::move(x.text));
}

// The client secret from exactly one of client_secret (raw: expanded here, so the origin is
// known) and client_secret_file. Sets p.client_secret and p.client_secret_origin.
void resolve_client_secret(reader& r, const positions& pos, provider& p,
                           const std::optional<located<std::string>>& inline_raw,
                           const std::optional<located<std::string>>& file) {
  load_context& c = r.ctx();
  if (inline_raw && file) {
    c.error(file->where, pos.key("client_secret_file"),
            "set either client_secret or client_secret_file, not both");
  } else if (file) {
    secret_from_file(*file, pos, p, c);
  } else if (inline_raw) {
    secret_inline(*inline_raw, pos, p, c);
  }
  // No secret at all is fine for a public client (device code, password); an account whose flow
  // needs a client credential is refused by the cross checks.
}

void read_certificate(reader& r, positions& pos, provider& p) {
  auto cert = r.string("certificate_file");
  auto key = r.string("private_key_file");
  set(r, pos, "certificate_file", cert, detail::readable_file, p.certificate_file);
  set(r, pos, "private_key_file", key, detail::readable_file, p.private_key_file);
  load_context& c = r.ctx();
  if (cert && !key && !r.has("private_key_file")) {
    c.error(cert->where, pos.key("private_key_file"),
            "missing: certificate_file needs private_key_file (the certificate's private key)");
  } else if (key && !cert && !r.has("certificate_file")) {
    c.error(key->where, pos.key("certificate_file"),
            "missing: private_key_file needs certificate_file");
  }
  if (cert && (r.has("client_secret") || r.has("client_secret_file"))) {
    c.error(cert->where, pos.key("certificate_file"),
            "set either a client secret or a certificate, not both");
  }
}

void read_provider(reader& r, config& cfg, entry_positions& all) {
  provider p;
  p.where = r.where();
  positions pos(r.prefix(), r.where());
  set(r, pos, "name", r.string("name", need::required), as_is<std::string>, p.name);
  set(r, pos, "tenant", r.string("tenant", need::required), checked<detail::check_tenant>,
      p.tenant);
  set(r, pos, "client_id", r.string("client_id", need::required), as_is<std::string>, p.client_id);
  auto inline_raw = r.string("client_secret", need::optional, expand::none);
  auto file = r.string("client_secret_file");
  set(r, pos, "authority", r.string("authority"), detail::parse_authority, p.authority);
  set(r, pos, "ca_file", r.string("ca_file"), detail::readable_file, p.ca_file);
  set(r, pos, "scopes", r.string_array("scopes"), as_is<std::vector<std::string>>, p.scopes);
  read_certificate(r, pos, p);
  r.finish();
  resolve_client_secret(r, pos, p, inline_raw, file);
  cfg.providers.push_back(std::move(p));
  all.providers.push_back(std::move(pos));
}

// cert_file / key_file: required and readable when the app talks TLS to us, ignored otherwise.
void local_tls_file(reader& r, positions& pos, tls_mode tls, std::string_view name,
                    const std::optional<located<std::string>>& value, std::string& out) {
  if (tls == tls_mode::none) {
    if (value) r.ctx().warning(value->where, r.key(name), "ignored because tls = \"none\"");
  } else if (value) {
    set(r, pos, name, value, detail::readable_file, out);
  } else if (!r.has(name)) {  // present with a wrong type: reported already
    r.ctx().error(r.where(), r.key(name),
                  fmt::format("missing required key (tls = \"{}\")", to_string(tls)));
  }
}

void read_local_tls(reader& r, positions& pos, listener& l) {
  auto cert = r.string("cert_file");
  auto key = r.string("key_file");
  if (!pos.has("tls")) return;  // absent means "none"; an invalid value was reported already
  local_tls_file(r, pos, l.tls, "cert_file", cert, l.cert_file);
  local_tls_file(r, pos, l.tls, "key_file", key, l.key_file);
}

void read_listener(reader& r, config& cfg, entry_positions& all) {
  listener l;
  l.where = r.where();
  positions pos(r.prefix(), r.where());
  set(r, pos, "protocol", r.string("protocol", need::required), detail::parse_protocol, l.protocol);
  set(r, pos, "listen", r.string("listen", need::required), listen_address, l.listen);
  set(r, pos, "tls", r.string("tls"), detail::parse_tls_mode, l.tls);
  read_local_tls(r, pos, l);
  set(r, pos, "upstream", r.string("upstream", need::required), upstream_address, l.upstream);
  set(r, pos, "upstream_tls", r.string("upstream_tls"), detail::parse_upstream_tls, l.upstream_tls);
  set(r, pos, "upstream_ca_file", r.string("upstream_ca_file"), detail::readable_file,
      l.upstream_ca_file);
  set(r, pos, "ehlo_name", r.string("ehlo_name"), checked<detail::check_ehlo_name>, l.ehlo_name);
  set(r, pos, "anonymous_account", r.string("anonymous_account"), as_is<std::string>,
      l.anonymous_account);
  set(r, pos, "allow_from", r.string_array("allow_from"), detail::parse_cidrs, l.allow_from);
  r.finish();
  // Exchange Online submission (smtp.office365.com:587) is STARTTLS; IMAP and POP3 are implicit.
  if (!pos.has("upstream_tls") && l.protocol == protocol_kind::smtp)
    l.upstream_tls = upstream_tls_mode::starttls;
  cfg.listeners.push_back(std::move(l));
  all.listeners.push_back(std::move(pos));
}

void read_account(reader& r, config& cfg, entry_positions& all) {
  account a;
  a.where = r.where();
  positions pos(r.prefix(), r.where());
  set(r, pos, "login", r.string("login", need::required), checked<detail::check_login>, a.login);
  set(r, pos, "provider", r.string("provider", need::required), as_is<std::string>, a.provider);
  set(r, pos, "flow", r.string("flow"), detail::parse_flow, a.flow);
  set(r, pos, "mailbox", r.string("mailbox"), checked<detail::check_mailbox>, a.mailbox);
  // No ${VAR} expansion: PHC strings are full of '$'.
  // flow = "password" sends the client's password to the identity platform, which checks it;
  // a local hash is optional there. Every other flow checks the password locally.
  const need hash_need = a.flow == flow_kind::password ? need::optional : need::required;
  set(r, pos, "password_hash", r.string("password_hash", hash_need, expand::none),
      checked<detail::check_password_hash>, a.password_hash);
  set(r, pos, "allowed_from", r.string_array("allowed_from"), detail::parse_sender_patterns,
      a.allowed_from);
  r.finish();
  cfg.accounts.push_back(std::move(a));
  all.accounts.push_back(std::move(pos));
}

void read_config(const toml::table& t, config& cfg, load_context& c) {
  reader root(t, "", c);
  read_proxy(root, cfg.proxy);
  entry_positions all;
  for (reader& r : root.table_array("provider")) read_provider(r, cfg, all);
  for (reader& r : root.table_array("listener", need::required)) read_listener(r, cfg, all);
  for (reader& r : root.table_array("account", need::required)) read_account(r, cfg, all);
  root.finish();
  detail::check_references(cfg, all, c);
}

// "Error while parsing string: unknown escape" -> "syntax error in string: unknown escape".
std::string syntax_message(std::string_view description) {
  constexpr std::string_view prefix = "Error while parsing ";
  if (description.starts_with(prefix)) {
    return fmt::format("syntax error in {}", description.substr(prefix.size()));
  }
  return fmt::format("syntax error: {}", description);
}

}  // namespace

load_result load_string(std::string_view text, const std::string& path) {
  load_context ctx(path);
  load_result out;
  out.cfg.path = path;
  try {
    toml::table root = toml::parse(text, std::string_view{path});
    read_config(root, out.cfg, ctx);
  } catch (const toml::parse_error& e) {
    ctx.error(detail::position_of(e.source(), path), "", syntax_message(e.description()));
  } catch (const std::exception& e) {
    ctx.error({path, 0, 0}, "",
              fmt::format("internal error while loading the configuration: {}", e.what()));
  }
  out.errors = ctx.take_errors();
  out.warnings = ctx.take_warnings();
  return out;
}

load_result load_file(const std::string& path) {
  constexpr std::size_t max_config = 1024 * 1024;
  int err = 0;
  auto text = detail::read_file(path, max_config, err);
  if (!text || text->size() > max_config) {
    load_result out;
    out.cfg.path = path;
    std::string why = text ? "larger than 1 MiB" : std::generic_category().message(err);
    out.errors.push_back(
        {{path, 0, 0}, "", fmt::format("cannot read the config file: {}", why), false});
    return out;
  }
  return load_string(*text, path);
}

config load(const std::string& path) {
  load_result r = load_file(path);
  if (!r.ok()) {
    std::vector<diagnostic> all = std::move(r.errors);
    all.insert(all.end(), r.warnings.begin(), r.warnings.end());
    throw config_error(std::move(all));
  }
  for (const auto& w : r.warnings) spdlog::warn("{}", w.to_string());
  return std::move(r.cfg);
}

}  // namespace xo::config
