// Token endpoint answers (RFC 6749 §5.1/§5.2, protocol-notes §1.5–1.6). Nothing from the body
// reaches a log or a summary except `error`, the AADSTS code, the first line of the description
// and the trace/correlation ids: a body can carry tokens.
#include "auth/token_response.hpp"

#include <boost/json.hpp>

#include <cctype>
#include <charconv>

namespace xo::auth {

namespace json = boost::json;

namespace {

constexpr std::size_t max_description_chars = 200;
constexpr std::int64_t max_expires_in = 365LL * 24 * 3600;

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i])))
      return false;
  return true;
}

std::string_view string_field(const json::object& o, std::string_view key) {
  const auto* v = o.if_contains(key);
  if (!v || !v->is_string()) return {};
  const auto& s = v->get_string();
  return {s.data(), s.size()};
}

// expires_in is an integer per RFC 6749, but some providers send it as a string.
std::optional<std::int64_t> expires_in(const json::object& o) {
  const auto* v = o.if_contains("expires_in");
  if (!v) return std::nullopt;
  std::int64_t n = 0;
  if (v->is_int64()) {
    n = v->get_int64();
  } else if (v->is_uint64()) {
    if (v->get_uint64() > static_cast<std::uint64_t>(max_expires_in)) return std::nullopt;
    n = static_cast<std::int64_t>(v->get_uint64());
  } else if (v->is_string()) {
    const auto& s = v->get_string();
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc{} || p != s.data() + s.size()) return std::nullopt;
  } else {
    return std::nullopt;
  }
  if (n <= 0 || n > max_expires_in) return std::nullopt;
  return n;
}

// Ids end up in log lines: keep only what a GUID can contain.
std::string safe_id(std::string_view v) {
  std::string out;
  for (char c : v.substr(0, 64))
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '-') out += c;
  return out;
}

// First line, without the "AADSTS700082: " prefix (the code is printed separately), control
// characters replaced, cut at a UTF-8 character boundary.
std::string clean_description(std::string_view d) {
  d = d.substr(0, d.find_first_of("\r\n"));
  if (d.starts_with("AADSTS")) {
    auto colon = d.find(':');
    auto digits = d.substr(6, colon == std::string_view::npos ? 0 : colon - 6);
    if (!digits.empty() && digits.find_first_not_of("0123456789") == std::string_view::npos) {
      d.remove_prefix(colon + 1);
      while (!d.empty() && d.front() == ' ') d.remove_prefix(1);
    }
  }
  if (d.size() > max_description_chars) {
    std::size_t cut = max_description_chars;
    while (cut > 0 && (static_cast<unsigned char>(d[cut]) & 0xC0) == 0x80) --cut;
    d = d.substr(0, cut);
  }
  std::string out{d};
  for (char& c : out)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  return out;
}

token_result failed(failure_kind kind, std::string error, long aadsts, std::string summary,
                    std::optional<std::chrono::seconds> retry_after = std::nullopt) {
  token_result r;
  r.error = token_error{kind, std::move(error), aadsts, std::move(summary), retry_after, {}};
  r.error.fix = std::string(fix_for(aadsts, r.error.error));
  return r;
}

token_result invalid_response(const http_response& res, std::string_view why) {
  auto summary = fmt::format("invalid_response: HTTP {}: {}", res.status, why);
  if (!res.request_id.empty()) summary += fmt::format(" (request_id={})", res.request_id);
  return failed(failure_kind::transient, "invalid_response", 0, std::move(summary),
                res.retry_after);
}

long first_error_code(const json::object& o) {
  const auto* v = o.if_contains("error_codes");
  if (!v || !v->is_array() || v->get_array().empty()) return 0;
  const auto& c = v->get_array().front();
  if (c.is_int64()) return static_cast<long>(c.get_int64());
  if (c.is_uint64() && c.get_uint64() < 1'000'000'000'000ULL)
    return static_cast<long>(c.get_uint64());
  return 0;
}

// `error` values are ASCII words (RFC 6749 §5.2); anything else is cut down before it is logged.
std::string safe_word(std::string_view v) {
  std::string out;
  for (char c : v.substr(0, 64))
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.') out += c;
  return out;
}

// "invalid_client AADSTS7000215: Invalid client secret provided. (trace_id=…, correlation_id=…)"
std::string error_summary(const http_response& res, std::string_view error, long aadsts,
                          const json::object* o) {
  std::string s{error};
  if (aadsts != 0) s += fmt::format(" AADSTS{}", aadsts);
  if (o) {
    auto d = clean_description(string_field(*o, "error_description"));
    if (!d.empty()) s += fmt::format(": {}", d);
  }
  auto trace = o ? safe_id(string_field(*o, "trace_id")) : std::string{};
  auto corr = o ? safe_id(string_field(*o, "correlation_id")) : std::string{};
  if (!trace.empty() || !corr.empty())
    s += fmt::format(" (trace_id={}, correlation_id={})", trace, corr);
  else if (!res.request_id.empty())
    s += fmt::format(" (request_id={})", res.request_id);
  return s;
}

// An error answer, or any non-2xx.
token_result parse_error(const http_response& res, const json::object* o) {
  std::string error = o ? safe_word(string_field(*o, "error")) : std::string{};
  if (error.empty()) {
    // Not an OAuth error object (a gateway's error page, HTML, ...): the status is the error.
    error = fmt::format("http_{}", res.status);
    auto summary = error_summary(res, error, 0, nullptr);
    const auto kind = classify(res.status, error, 0);
    return failed(kind, std::move(error), 0, std::move(summary), res.retry_after);
  }
  const long aadsts = first_error_code(*o);
  auto summary = error_summary(res, error, aadsts, o);
  const auto kind = classify(res.status, error, aadsts);
  return failed(kind, std::move(error), aadsts, std::move(summary), res.retry_after);
}

token_result parse_success(const http_response& res, const json::object& o,
                           steady::time_point request_start,
                           std::chrono::system_clock::time_point wall_start) {
  if (!iequals(string_field(o, "token_type"), "bearer"))
    return invalid_response(res, "token_type is not Bearer");
  auto token = string_field(o, "access_token");
  if (token.empty()) return invalid_response(res, "no access_token");
  auto lifetime = expires_in(o);
  if (!lifetime) return invalid_response(res, "missing or invalid expires_in");

  const std::chrono::seconds life{*lifetime};
  access_token t{secret{std::string{token}}, request_start + life, wall_start + life,
                 std::string{string_field(o, "scope")},
                 secret{std::string{string_field(o, "refresh_token")}}};
  token_result r;
  r.token = std::move(t);
  return r;
}

token_result no_answer(const http_failure& f) {
  const auto& what = f.what;
  const bool timeout = what == "timeout";
  const bool cancelled = what == "cancelled";
  std::string error = timeout ? "timeout" : cancelled ? "cancelled" : "network";
  return failed(failure_kind::transient, std::move(error), 0, what);
}

}  // namespace

token_result parse_token_response(const http_outcome& out, steady::time_point request_start,
                                  std::chrono::system_clock::time_point wall_start) {
  if (!out.response) return no_answer(out.failure);
  const auto& res = *out.response;
  error_code ec;
  json::value v = json::parse(res.body, ec);
  const json::object* o = (!ec && v.is_object()) ? &v.get_object() : nullptr;

  if (res.status >= 200 && res.status < 300) {
    if (!o) return invalid_response(res, "body is not a JSON object");
    // Some servers answer 200 with an error object; treat it as the error it is.
    if (!o->contains("access_token") && !string_field(*o, "error").empty())
      return parse_error(res, o);
    return parse_success(res, *o, request_start, wall_start);
  }
  return parse_error(res, o);
}

token_error parse_error_response(const http_outcome& out, std::string_view why) {
  if (!out.response) return no_answer(out.failure).error;
  const auto& res = *out.response;
  error_code ec;
  json::value v = json::parse(res.body, ec);
  const json::object* o = (!ec && v.is_object()) ? &v.get_object() : nullptr;
  const bool success = res.status >= 200 && res.status < 300;
  if (success && (!o || string_field(*o, "error").empty())) return invalid_response(res, why).error;
  return parse_error(res, o).error;
}

}  // namespace xo::auth
