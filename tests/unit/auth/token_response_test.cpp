#include "auth/token_response.hpp"

#include <gtest/gtest.h>

namespace xo::auth {
namespace {

using std::chrono::seconds;
using wall = std::chrono::system_clock;

const steady::time_point t0 = steady::time_point{} + std::chrono::hours{1000};
const wall::time_point w0 = wall::time_point{} + std::chrono::hours{500000};

http_outcome answer(unsigned status, std::string body, std::optional<seconds> retry_after = {},
                    std::string request_id = {}) {
  http_response r;
  r.status = status;
  r.body = std::move(body);
  r.retry_after = retry_after;
  r.request_id = std::move(request_id);
  return http_outcome{std::move(r), {}};
}

token_result parse(const http_outcome& o) { return parse_token_response(o, t0, w0); }

TEST(TokenResponse, SuccessWithIntegerExpiresIn) {
  auto r = parse(answer(200, R"({"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,
      "access_token":"eyJ0eXAi.abc","scope":"https://outlook.office365.com/.default"})"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.token->value.reveal(), "eyJ0eXAi.abc");
  EXPECT_EQ(r.token->expires_at, t0 + seconds{3599});
  EXPECT_EQ(r.token->expires_wall, w0 + seconds{3599});
  EXPECT_EQ(r.token->scope, "https://outlook.office365.com/.default");
  EXPECT_TRUE(r.token->refresh_token.empty());
}

TEST(TokenResponse, SuccessWithStringExpiresInAndRefreshToken) {
  auto r = parse(answer(200, R"({"token_type":"bearer","expires_in":"4000","access_token":"at",
      "refresh_token":"rt"})"));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.token->expires_at, t0 + seconds{4000});
  EXPECT_EQ(r.token->refresh_token.reveal(), "rt");
  EXPECT_TRUE(r.token->scope.empty());
}

TEST(TokenResponse, TokenTypeIsCaseInsensitive) {
  EXPECT_TRUE(
      parse(answer(200, R"({"token_type":"BEARER","expires_in":1,"access_token":"a"})")).ok());
}

void expect_invalid(const http_outcome& o) {
  auto r = parse(o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::transient);
  EXPECT_EQ(r.error.error, "invalid_response");
  EXPECT_EQ(r.error.summary.find("SECRET"), std::string::npos) << r.error.summary;
}

TEST(TokenResponse, MalformedSuccessBodiesAreTransient) {
  expect_invalid(answer(200, R"({"token_type":"mac","expires_in":3600,"access_token":"SECRET"})"));
  expect_invalid(answer(200, R"({"expires_in":3600,"access_token":"SECRET"})"));
  expect_invalid(answer(200, R"({"token_type":"Bearer","expires_in":3600})"));
  expect_invalid(answer(200, R"({"token_type":"Bearer","expires_in":3600,"access_token":""})"));
  expect_invalid(answer(200, R"({"token_type":"Bearer","expires_in":3600,"access_token":7})"));
  expect_invalid(answer(200, R"({"token_type":"Bearer","access_token":"SECRET"})"));
  expect_invalid(answer(200, R"({"token_type":"Bearer","expires_in":-5,"access_token":"SECRET"})"));
  expect_invalid(answer(200, R"({"token_type":"Bearer","expires_in":0,"access_token":"SECRET"})"));
  expect_invalid(
      answer(200, R"({"token_type":"Bearer","expires_in":"12x","access_token":"SECRET"})"));
  expect_invalid(
      answer(200, R"({"token_type":"Bearer","expires_in":3.5,"access_token":"SECRET"})"));
  expect_invalid(
      answer(200, R"({"token_type":"Bearer","expires_in":true,"access_token":"SECRET"})"));
  expect_invalid(
      answer(200, R"({"token_type":"Bearer","expires_in":1e30,"access_token":"SECRET"})"));
  expect_invalid(answer(200, R"({"token_type":"Bearer","expires_in":"","access_token":"SECRET"})"));
}

TEST(TokenResponse, GarbageBodiesOnSuccessAreTransient) {
  expect_invalid(answer(200, "SECRET <html>"));
  expect_invalid(answer(200, ""));
  expect_invalid(answer(200, R"(["SECRET"])"));
  expect_invalid(answer(200, R"({"access_token":"SECRET",)"));
  expect_invalid(answer(204, ""));
}

TEST(TokenResponse, ErrorBodyIsClassifiedAndSummarised) {
  auto r = parse(answer(401, R"({"error":"invalid_client",
      "error_description":"AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.\r\nTrace ID: 0000aaaa-11bb-cccc-dd22-eeeeee333333\r\nCorrelation ID: aaaa0000-bb11-2222-33cc-444444dddddd\r\nTimestamp: 2024-01-01 00:00:00Z",
      "error_codes":[7000215],"timestamp":"2024-01-01 00:00:00Z",
      "trace_id":"0000aaaa-11bb-cccc-dd22-eeeeee333333",
      "correlation_id":"aaaa0000-bb11-2222-33cc-444444dddddd",
      "error_uri":"https://login.microsoftonline.com/error?code=7000215"})"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::config);
  EXPECT_EQ(r.error.error, "invalid_client");
  EXPECT_EQ(r.error.aadsts, 7000215);
  EXPECT_EQ(r.error.summary,
            "invalid_client AADSTS7000215: Invalid client secret provided. Ensure the secret being "
            "sent in the request is the client secret value. "
            "(trace_id=0000aaaa-11bb-cccc-dd22-eeeeee333333, "
            "correlation_id=aaaa0000-bb11-2222-33cc-444444dddddd)");
}

TEST(TokenResponse, SummaryKeepsOnlyTheFirstLineTruncated) {
  const std::string long_line(300, 'x');
  auto r = parse(answer(400, R"({"error":"invalid_grant","error_description":"AADSTS70008: )" +
                                 long_line + R"(\nsecond line SECRET","error_codes":[70008]})"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::reauth);
  EXPECT_EQ(r.error.summary, "invalid_grant AADSTS70008: " + std::string(200, 'x'));
  EXPECT_EQ(r.error.summary.find("SECRET"), std::string::npos);
  EXPECT_EQ(r.error.summary.find("second"), std::string::npos);
}

TEST(TokenResponse, SummaryDropsControlCharactersAndHostileIds) {
  auto r = parse(
      answer(400, R"({"error":"invalid_grant\u001b[31m","error_description":"bad\u0007thing",)"
                  R"("trace_id":"abc\u000a123 {}","correlation_id":"c-1"})"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.error, "invalid_grant31m");
  EXPECT_EQ(r.error.summary, "invalid_grant31m: bad thing (trace_id=abc123, correlation_id=c-1)");
}

TEST(TokenResponse, ThrottlingCarriesRetryAfter) {
  auto r = parse(answer(429, R"({"error":"temporarily_unavailable"})", seconds{60}, "req-1"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::transient);
  EXPECT_EQ(r.error.retry_after, seconds{60});
  EXPECT_EQ(r.error.summary, "temporarily_unavailable (request_id=req-1)");
}

TEST(TokenResponse, NonJsonErrorsUseTheStatus) {
  auto r = parse(answer(503, "<html>Service Unavailable</html>", seconds{5}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::transient);
  EXPECT_EQ(r.error.error, "http_503");
  EXPECT_EQ(r.error.retry_after, seconds{5});
  EXPECT_EQ(r.error.summary, "http_503");

  auto nf = parse(answer(404, "<html>SECRET</html>"));
  EXPECT_EQ(nf.error.kind, failure_kind::config);
  EXPECT_EQ(nf.error.summary, "http_404");
}

TEST(TokenResponse, ErrorObjectWithSuccessStatusIsAnError) {
  auto r = parse(answer(200, R"({"error":"invalid_scope","error_codes":[70011]})"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::config);
  EXPECT_EQ(r.error.aadsts, 70011);
}

TEST(TokenResponse, NetworkFailuresAreTransient) {
  auto timeout = parse(http_outcome{std::nullopt, http_failure{"timeout"}});
  EXPECT_EQ(timeout.error.kind, failure_kind::transient);
  EXPECT_EQ(timeout.error.error, "timeout");
  auto tls = parse(http_outcome{std::nullopt, http_failure{"tls: certificate verify failed"}});
  EXPECT_EQ(tls.error.kind, failure_kind::transient);
  EXPECT_EQ(tls.error.error, "network");
  EXPECT_EQ(tls.error.summary, "tls: certificate verify failed");
}

}  // namespace
}  // namespace xo::auth
