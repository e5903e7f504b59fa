// Token endpoint answers (auth/token_response.hpp): parse_token_response over an http_outcome with
// a fuzzed status, body, Retry-After and x-ms-request-id.
//
// Input: byte 0 flags (bit 0: a response arrived, else a transport failure; bit 1: Retry-After
// present; bit 2: request id present), bytes 1-2 the HTTP status (mod 1000), byte 3 Retry-After
// (× 15 s), then, with bit 2, a length byte and the request id (reduced to [A-Za-z0-9-] as
// https_client's safe_id does); the rest is the body (or the failure text).
//
// Invariants (ids for XO_FUZZ_ALLOW):
//   token-ok-shape      a token from a non-2xx answer, an empty token, or an expiry that is not
//                       start + expires_in with 0 < expires_in <= 365 days
//   token-error-shape   an error word outside [A-Za-z0-9_.-], an empty summary, control characters
//                       in a summary built from a response, or Retry-After not passed on
//   token-secret-leak   the summary or error changes when only the access_token/refresh_token
//                       values change (they reached a log line)
#include "fuzz_common.hpp"

#include "auth/token_response.hpp"

#include <boost/json.hpp>

namespace {

using namespace xo::auth;

const steady::time_point start{std::chrono::hours{1000}};
const std::chrono::system_clock::time_point wall{std::chrono::hours{500000}};

void check_shape(const http_outcome& out, const token_result& r) {
  if (r.ok()) {
    XO_FUZZ_CHECK("token-ok-shape", out.response && out.response->status >= 200 &&
                                        out.response->status < 300, "");
    XO_FUZZ_CHECK("token-ok-shape", !r.token->value.empty(), "");
    auto life = r.token->expires_at - start;
    XO_FUZZ_CHECK("token-ok-shape", life > steady::duration::zero() &&
                                        life <= std::chrono::hours{24 * 365}, "");
    XO_FUZZ_CHECK("token-ok-shape", r.token->expires_wall - wall == life, "");
    return;
  }
  const auto& e = r.error;
  XO_FUZZ_CHECK("token-error-shape", !e.error.empty(), e.summary);
  for (char c : e.error) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.';
    XO_FUZZ_CHECK("token-error-shape", ok, e.error);
  }
  (void)to_string(e.kind);
  if (!out.response) return;
  XO_FUZZ_CHECK("token-error-shape", !e.summary.empty(), "");
  for (unsigned char c : e.summary)
    XO_FUZZ_CHECK("token-error-shape", c >= 0x20 && c != 0x7f, e.summary);
  XO_FUZZ_CHECK("token-error-shape", e.retry_after == out.response->retry_after, e.summary);
}

}  // namespace

XO_FUZZ_ENTRY(token_response) {
  namespace json = boost::json;
  xo::fuzz::bytes in{data, size};
  const std::uint8_t flags = in.byte();
  const unsigned status = (static_cast<unsigned>(in.byte()) << 8 | in.byte()) % 1000;
  const std::uint8_t retry = in.byte();
  http_outcome out;
  if (flags & 1) {
    http_response res;
    res.status = status;
    if (flags & 2) res.retry_after = std::chrono::seconds{retry * 15};
    if (flags & 4) {
      for (char c : in.take(in.byte() % 64))
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-')
          res.request_id += c;
    }
    res.body = std::string{in.rest()};
    out.response = std::move(res);
  } else {
    out.failure.what = std::string{in.rest()};
  }

  token_result r = parse_token_response(out, start, wall);
  check_shape(out, r);

  // The same answer with other token values of the same length must log the same.
  if (!out.response) return 0;
  json::error_code ec;
  json::value v = json::parse(out.response->body, ec);
  if (ec || !v.is_object()) return 0;
  json::object& o = v.get_object();
  bool changed = false;
  for (const char* key : {"access_token", "refresh_token"}) {
    if (auto* t = o.if_contains(key); t && t->is_string() && !t->get_string().empty()) {
      std::string other(t->get_string().size(), 'Z');
      if (other == std::string_view{t->get_string()}) other.assign(other.size(), 'Y');
      *t = other;
      changed = true;
    }
  }
  if (!changed) return 0;
  http_outcome out2 = out;
  out2.response->body = json::serialize(v);
  // Only when the serialized form means the same (not so for numbers beyond double's range).
  json::value again = json::parse(out2.response->body, ec);
  if (ec || again != v) return 0;
  token_result r2 = parse_token_response(out2, start, wall);
  XO_FUZZ_CHECK("token-secret-leak", r.ok() == r2.ok(), out.response->body);
  if (!r.ok()) {
    XO_FUZZ_CHECK("token-secret-leak", r.error.summary == r2.error.summary,
                  r.error.summary + " | " + r2.error.summary);
    XO_FUZZ_CHECK("token-secret-leak", r.error.error == r2.error.error, r.error.error);
  } else {
    XO_FUZZ_CHECK("token-secret-leak", r.token->scope == r2.token->scope, r.token->scope);
  }
  return 0;
}
