// Delegated grants of the Microsoft identity platform v2.0 (protocol-notes §1.4 a, b, d, e):
// authorization code + PKCE, device code, ROPC and refresh, one request each. Token answers go
// through parse_token_response (expiry counted from the request's start); the devicecode answer
// is parsed here, its errors through the same classification.
#include "auth/delegated.hpp"

#include "auth/client_credentials.hpp"
#include "auth/token_response.hpp"
#include "common/base64.hpp"

#include <boost/json.hpp>
#include <boost/url/encode.hpp>
#include <boost/url/rfc/unreserved_chars.hpp>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <charconv>
#include <cstdint>
#include <stdexcept>

namespace xo::auth {

namespace json = boost::json;

namespace {

constexpr std::string_view device_grant = "urn:ietf:params:oauth:grant-type:device_code";
constexpr std::size_t max_jwt_chars = 64 * 1024;

std::string random_bytes(std::size_t n) {
  std::string b(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(b.data()), static_cast<int>(n)) != 1)
    throw std::runtime_error("RAND_bytes failed: no randomness for OAuth state/PKCE");
  return b;
}

// Every character outside RFC 3986 "unreserved" percent-encoded, so that '+', '&', '=', ' ' and
// '/' in a value can never be misread by the identity platform's query parser.
std::string pct(std::string_view v) {
  return boost::urls::encode(v, boost::urls::unreserved_chars);
}

std::string endpoint(const config::provider& p, std::string_view leaf) {
  return fmt::format("{}/{}/oauth2/v2.0/{}", p.authority, pct(p.tenant), leaf);
}

// The token request: client authentication appended (a fresh assertion per request), then the
// answer parsed with the expiry counted from the moment the request left.
awaitable<token_result> post_token(https_client& http, const config::provider& p,
                                   const client_auth& client, std::vector<form_field> form) {
  auto url = p.token_endpoint();
  try {
    client.add_to(form, url);
  } catch (const std::exception& e) {
    // Only a broken OpenSSL gets here (no randomness, signing failed): nothing to send.
    token_result r;
    r.error = token_error{failure_kind::config, "client_auth", 0,
                          fmt::format("client_auth: cannot authenticate the client: {}", e.what()),
                          std::nullopt, {}};
    co_return r;
  }
  const auto start = steady::now();
  const auto wall = std::chrono::system_clock::now();
  auto out = co_await http.post_form(std::move(url), std::move(form));
  co_return parse_token_response(out, start, wall);
}

std::string_view string_field(const json::object& o, std::string_view key) {
  const auto* v = o.if_contains(key);
  if (!v || !v->is_string()) return {};
  const auto& s = v->get_string();
  return {s.data(), s.size()};
}

// A number of seconds or a count: integer, integral double, or a decimal string (some servers
// quote numbers). nullopt when absent or not a number.
std::optional<std::int64_t> integer_field(const json::object& o, std::string_view key) {
  const auto* v = o.if_contains(key);
  if (!v) return std::nullopt;
  if (v->is_int64()) return v->get_int64();
  if (v->is_uint64()) {
    if (v->get_uint64() > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<std::int64_t>(v->get_uint64());
  }
  if (v->is_double()) {
    const double d = v->get_double();
    if (!(d >= -9.0e15 && d <= 9.0e15)) return std::nullopt;
    return static_cast<std::int64_t>(d);
  }
  if (v->is_string()) {
    const auto& s = v->get_string();
    std::int64_t n = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc{} || end != s.data() + s.size()) return std::nullopt;
    return n;
  }
  return std::nullopt;
}

// `fallback` unless the field is a number within [lo, hi].
std::chrono::seconds seconds_field(const json::object& o, std::string_view key,
                                   std::chrono::seconds fallback, std::int64_t lo,
                                   std::int64_t hi) {
  auto n = integer_field(o, key);
  if (!n || *n < lo || *n > hi) return fallback;
  return std::chrono::seconds{*n};
}

// RFC 4648 §5 without padding (JWT segments); nullopt on any other character.
std::optional<std::string> base64url_decode(std::string_view in) {
  std::string s{in};
  for (char& c : s) {
    if (c == '-') c = '+';
    else if (c == '_') c = '/';
    else if (c == '+' || c == '/' || c == '=') return std::nullopt;
  }
  if (s.size() % 4 == 1) return std::nullopt;
  s.append((4 - s.size() % 4) % 4, '=');
  return base64_decode(s);
}

std::optional<json::object> json_segment(std::string_view seg) {
  auto raw = base64url_decode(seg);
  if (!raw) return std::nullopt;
  error_code ec;
  json::value v = json::parse(*raw, ec);
  if (ec || !v.is_object()) return std::nullopt;
  return std::move(v.get_object());
}

}  // namespace

std::string scope_for(const config::provider& p, config::flow_kind flow) {
  if (p.scopes.empty()) {
    return std::string{flow == config::flow_kind::client_credentials ? default_app_scope
                                                                      : default_delegated_scope};
  }
  std::string s;
  for (const auto& one : p.scopes) {
    if (!s.empty()) s += ' ';
    s += one;
  }
  return s;
}

std::string pkce_challenge(std::string_view verifier) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_Digest(verifier.data(), verifier.size(), md, &len, EVP_sha256(), nullptr) != 1)
    throw std::runtime_error("SHA-256 failed");
  return base64url_encode({reinterpret_cast<const char*>(md), len});
}

pkce_pair make_pkce() {
  auto raw = random_bytes(64);
  secret verifier{base64url_encode(raw)};  // 86 characters of [A-Za-z0-9_-]
  OPENSSL_cleanse(raw.data(), raw.size());
  auto challenge = pkce_challenge(verifier.reveal());
  return pkce_pair{std::move(verifier), std::move(challenge)};
}

std::string random_token() { return base64url_encode(random_bytes(32)); }

std::string authorize_url(const config::provider& p, config::flow_kind flow,
                          const std::string& redirect_uri, const std::string& state,
                          const std::string& code_challenge, const std::string& login_hint) {
  std::string url = endpoint(p, "authorize");
  char sep = '?';
  auto add = [&](std::string_view name, std::string_view value) {
    url += sep;
    url += name;
    url += '=';
    url += pct(value);
    sep = '&';
  };
  add("client_id", p.client_id);
  add("response_type", "code");
  add("redirect_uri", redirect_uri);
  add("response_mode", "query");
  add("scope", scope_for(p, flow));
  add("state", state);
  add("code_challenge", code_challenge);
  add("code_challenge_method", "S256");
  if (!login_hint.empty()) add("login_hint", login_hint);
  return url;
}

awaitable<token_result> redeem_code(https_client& http, const config::provider& p,
                                    const client_auth& client, config::flow_kind flow,
                                    secret code, std::string redirect_uri, secret verifier) {
  std::vector<form_field> form;
  form.push_back({"grant_type", secret{"authorization_code"}});
  form.push_back({"code", std::move(code)});
  form.push_back({"redirect_uri", secret{std::move(redirect_uri)}});
  form.push_back({"code_verifier", std::move(verifier)});
  form.push_back({"scope", secret{scope_for(p, flow)}});
  co_return co_await post_token(http, p, client, std::move(form));
}

awaitable<token_result> refresh(https_client& http, const config::provider& p,
                                const client_auth& client, config::flow_kind flow,
                                secret refresh_token) {
  std::vector<form_field> form;
  form.push_back({"grant_type", secret{"refresh_token"}});
  form.push_back({"refresh_token", std::move(refresh_token)});
  form.push_back({"scope", secret{scope_for(p, flow)}});
  co_return co_await post_token(http, p, client, std::move(form));
}

awaitable<token_result> password_grant(https_client& http, const config::provider& p,
                                       const client_auth& client, std::string username,
                                       secret password) {
  std::vector<form_field> form;
  form.push_back({"grant_type", secret{"password"}});
  form.push_back({"username", secret{std::move(username)}});
  form.push_back({"password", std::move(password)});
  form.push_back({"scope", secret{scope_for(p, config::flow_kind::password)}});
  co_return co_await post_token(http, p, client, std::move(form));
}

awaitable<device_start_result> start_device_code(https_client& http, const config::provider& p,
                                                 const client_auth& client,
                                                 config::flow_kind flow) {
  // The devicecode endpoint does not authenticate the client (only /token does): the client's
  // secret or assertion is not sent here.
  (void)client;
  std::vector<form_field> form;
  form.push_back({"client_id", secret{p.client_id}});
  form.push_back({"scope", secret{scope_for(p, flow)}});
  auto out = co_await http.post_form(endpoint(p, "devicecode"), std::move(form));

  device_start_result r;
  if (!out.response || out.response->status < 200 || out.response->status >= 300) {
    r.error = parse_error_response(out, "not a device authorization");
    co_return r;
  }
  error_code ec;
  json::value v = json::parse(out.response->body, ec);
  if (ec || !v.is_object()) {
    r.error = parse_error_response(out, "body is not a JSON object");
    co_return r;
  }
  const auto& o = v.get_object();
  device_authorization d;
  d.device_code = secret{std::string{string_field(o, "device_code")}};
  d.user_code = std::string{string_field(o, "user_code")};
  d.verification_uri = std::string{string_field(o, "verification_uri")};
  if (d.verification_uri.empty())  // the v1 endpoint's spelling
    d.verification_uri = std::string{string_field(o, "verification_url")};
  d.message = std::string{string_field(o, "message")};
  // RFC 8628 §3.2: expires_in is required (Entra: 900); interval defaults to 5 s.
  d.expires_in = seconds_field(o, "expires_in", std::chrono::seconds{900}, 1, 24 * 3600);
  d.interval = seconds_field(o, "interval", std::chrono::seconds{5}, 1, 600);

  std::string_view missing;
  if (d.device_code.empty()) missing = "no device_code";
  else if (d.user_code.empty()) missing = "no user_code";
  else if (d.verification_uri.empty()) missing = "no verification_uri";
  if (!missing.empty()) {
    // An error object with status 200 lands here too, and is reported as the error it is.
    r.error = parse_error_response(out, missing);
    co_return r;
  }
  r.ok = std::move(d);
  co_return r;
}

awaitable<token_result> poll_device_code(https_client& http, const config::provider& p,
                                         const client_auth& client, const secret& device_code) {
  std::vector<form_field> form;
  form.push_back({"grant_type", secret{std::string{device_grant}}});
  form.push_back({"device_code", device_code});
  co_return co_await post_token(http, p, client, std::move(form));
}

std::optional<token_claims> peek_claims(const secret& jwt) {
  const std::string_view t = jwt.reveal();
  if (t.size() > max_jwt_chars) return std::nullopt;
  const auto d1 = t.find('.');
  if (d1 == std::string_view::npos) return std::nullopt;
  const auto d2 = t.find('.', d1 + 1);
  // Exactly three segments (JWS compact form); an encrypted JWE has five and is unreadable here.
  if (d2 == std::string_view::npos || t.find('.', d2 + 1) != std::string_view::npos)
    return std::nullopt;
  if (!json_segment(t.substr(0, d1))) return std::nullopt;
  auto claims = json_segment(t.substr(d1 + 1, d2 - d1 - 1));
  if (!claims) return std::nullopt;
  const auto& o = *claims;

  token_claims c;
  if (const auto* aud = o.if_contains("aud")) {
    if (aud->is_string()) {
      c.aud = std::string{aud->get_string()};
    } else if (aud->is_array() && !aud->get_array().empty() &&
               aud->get_array().front().is_string()) {
      c.aud = std::string{aud->get_array().front().get_string()};
    }
  }
  c.tid = std::string{string_field(o, "tid")};
  c.oid = std::string{string_field(o, "oid")};
  c.scp = std::string{string_field(o, "scp")};
  // v2 tokens carry upn for work accounts; preferred_username and unique_name (v1) otherwise.
  for (std::string_view key : {"upn", "preferred_username", "unique_name"}) {
    c.upn = std::string{string_field(o, key)};
    if (!c.upn.empty()) break;
  }
  if (const auto* roles = o.if_contains("roles"); roles && roles->is_array()) {
    for (const auto& r : roles->get_array())
      if (r.is_string()) c.roles.emplace_back(r.get_string());
  }
  c.exp = integer_field(o, "exp").value_or(0);
  return c;
}

}  // namespace xo::auth
