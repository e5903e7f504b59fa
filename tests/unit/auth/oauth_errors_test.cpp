#include "auth/token_response.hpp"

#include <fmt/format.h>
#include <gtest/gtest.h>

namespace xo::auth {
namespace {

struct row {
  unsigned status;
  std::string_view error;
  long aadsts;
  failure_kind expected;
};

constexpr auto T = failure_kind::transient;
constexpr auto C = failure_kind::config;
constexpr auto R = failure_kind::reauth;
constexpr auto B = failure_kind::bad_password;

// protocol-notes §1.6, row by row.
const row table[] = {
    // IdP trouble, throttling, no answer at all.
    {500, "", 0, T},
    {502, "", 0, T},
    {503, "temporarily_unavailable", 0, T},
    {504, "invalid_client", 7000215, T},  // 5xx wins over whatever the body says
    {429, "", 0, T},
    {429, "invalid_request", 0, T},
    {0, "network", 0, T},
    {0, "timeout", 0, T},
    {400, "temporarily_unavailable", 0, T},
    {400, "server_error", 0, T},
    {200, "invalid_response", 0, T},
    {400, "invalid_grant", 50196, T},
    {400, "invalid_request", 90055, T},
    {400, "invalid_request", 90024, T},
    {400, "invalid_request", 50033, T},
    {400, "invalid_request", 90006, T},
    {400, "invalid_request", 90033, T},
    {400, "invalid_request", 90090, T},
    // Device-code polling: keep polling (RFC 8628 §3.5).
    {400, "authorization_pending", 70016, T},
    {400, "authorization_pending", 0, T},
    {400, "slow_down", 70016, T},
    {400, "slow_down", 0, T},
    // Configuration: by error, then by code.
    {401, "invalid_client", 7000215, C},
    {401, "invalid_client", 7000222, C},
    {401, "invalid_client", 70002, C},
    {401, "invalid_client", 0, C},
    {400, "unauthorized_client", 700016, C},
    {400, "invalid_scope", 70011, C},
    {400, "invalid_request", 90002, C},
    {400, "invalid_request", 50194, C},
    {400, "invalid_request", 9001023, C},
    {400, "invalid_request", 700027, C},
    {400, "invalid_request", 50012, C},
    {400, "invalid_request", 7000218, C},
    {400, "invalid_request", 700025, C},
    {400, "invalid_request", 700016, C},
    {400, "invalid_request", 700011, C},
    {400, "invalid_request", 70011, C},
    {400, "invalid_request", 28002, C},
    {400, "invalid_request", 700022, C},
    {400, "invalid_request", 50011, C},
    {400, "invalid_request", 70004, C},
    {400, "invalid_grant", 700084, C},
    {400, "invalid_grant", 7000215, C},
    // Wrong password (ROPC) and lockout.
    {400, "invalid_grant", 50126, B},
    {400, "invalid_grant", 50053, B},
    {400, "invalid_request", 50053, B},
    // Grant unusable until a person acts.
    {400, "invalid_grant", 50173, R},
    {400, "invalid_grant", 70008, R},
    {400, "invalid_grant", 700082, R},
    {400, "invalid_grant", 50076, R},
    {400, "invalid_grant", 50079, R},
    {400, "invalid_grant", 65001, R},
    {400, "invalid_grant", 53003, R},
    {400, "invalid_grant", 50055, R},
    {400, "invalid_grant", 50057, R},
    {400, "invalid_grant", 70043, R},
    {400, "invalid_grant", 0, R},
    {400, "invalid_grant", 123456, R},  // unknown invalid_grant
    {400, "consent_required", 65001, R},
    {400, "interaction_required", 50076, R},
    {400, "interaction_required", 0, R},
    {400, "invalid_request", 50057, R},
    {400, "expired_token", 0, R},
    {400, "expired_token", 70019, R},
    {400, "authorization_declined", 65004, R},
    {400, "bad_verification_code", 70000, R},
    // Unknown 4xx: an admin must look.
    {400, "invalid_request", 0, C},
    {400, "invalid_request", 999999, C},
    {403, "http_403", 0, C},
    {404, "http_404", 0, C},
    {400, "something_new", 0, C},
};

TEST(OauthErrors, ClassificationTable) {
  for (const auto& r : table) {
    EXPECT_EQ(classify(r.status, r.error, r.aadsts), r.expected)
        << "status=" << r.status << " error=" << r.error << " aadsts=" << r.aadsts
        << " got=" << to_string(classify(r.status, r.error, r.aadsts));
  }
}

TEST(OauthErrors, EveryTableCodeReachesTheSummary) {
  for (const auto& r : table) {
    if (r.aadsts == 0 || r.error.empty()) continue;
    http_response res;
    res.status = r.status;
    res.body = fmt::format(
        R"({{"error":"{}","error_description":"AADSTS{}: Something.\r\nTrace ID: x","error_codes":[{}]}})",
        r.error, r.aadsts, r.aadsts);
    auto t = parse_token_response(http_outcome{res, {}}, steady::now(),
                                  std::chrono::system_clock::now());
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.error.kind, r.expected) << res.body;
    EXPECT_EQ(t.error.aadsts, r.aadsts);
    EXPECT_EQ(t.error.summary, fmt::format("{} AADSTS{}: Something.", r.error, r.aadsts));
  }
}

// Device-code polling answers keep their `error` word exactly: the poller branches on it.
TEST(OauthErrors, DeviceFlowPollingIsTransientAndKeepsTheErrorWord) {
  for (std::string_view e : {"authorization_pending", "slow_down"}) {
    http_response res;
    res.status = 400;
    res.body = fmt::format(
        R"({{"error":"{}","error_description":"AADSTS70016: OAuth 2.0 device flow error.","error_codes":[70016]}})",
        e);
    auto t = parse_token_response(http_outcome{res, {}}, steady::now(),
                                  std::chrono::system_clock::now());
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.error.kind, failure_kind::transient);
    EXPECT_EQ(t.error.error, e);
    EXPECT_EQ(t.error.aadsts, 70016);
  }
}

TEST(OauthErrors, ErrorResponseOfOtherEndpoints) {
  http_outcome none;
  none.failure.what = "timeout";
  auto e = parse_error_response(none, "unused");
  EXPECT_EQ(e.kind, failure_kind::transient);
  EXPECT_EQ(e.error, "timeout");

  none.failure.what = "connect: Connection refused";
  e = parse_error_response(none, "unused");
  EXPECT_EQ(e.error, "network");
  EXPECT_EQ(e.summary, "connect: Connection refused");

  http_response res;
  res.status = 400;
  res.body = R"({"error":"invalid_request","error_description":"AADSTS90002: Tenant not found.\r\nTrace ID: x","error_codes":[90002],"trace_id":"t-1","correlation_id":"c-1"})";
  e = parse_error_response(http_outcome{res, {}}, "unused");
  EXPECT_EQ(e.kind, failure_kind::config);
  EXPECT_EQ(e.error, "invalid_request");
  EXPECT_EQ(e.aadsts, 90002);
  EXPECT_EQ(e.summary,
            "invalid_request AADSTS90002: Tenant not found. (trace_id=t-1, correlation_id=c-1)");

  res.status = 429;
  res.body = "slow down";
  res.retry_after = std::chrono::seconds{60};
  e = parse_error_response(http_outcome{res, {}}, "unused");
  EXPECT_EQ(e.kind, failure_kind::transient);
  EXPECT_EQ(e.error, "http_429");
  EXPECT_EQ(e.retry_after, std::chrono::seconds{60});

  // 200 with an error object is the error; 200 without one is an invalid answer, with the reason.
  res = http_response{};
  res.status = 200;
  res.body = R"({"error":"unauthorized_client","error_codes":[700016]})";
  e = parse_error_response(http_outcome{res, {}}, "unused");
  EXPECT_EQ(e.kind, failure_kind::config);
  EXPECT_EQ(e.error, "unauthorized_client");
  res.body = R"({"user_code":"SECRET"})";
  res.request_id = "r-1";
  e = parse_error_response(http_outcome{res, {}}, "no device_code");
  EXPECT_EQ(e.kind, failure_kind::transient);
  EXPECT_EQ(e.error, "invalid_response");
  EXPECT_EQ(e.summary, "invalid_response: HTTP 200: no device_code (request_id=r-1)");
}

TEST(OauthErrors, KindNames) {
  EXPECT_EQ(to_string(failure_kind::transient), "transient");
  EXPECT_EQ(to_string(failure_kind::reauth), "reauth");
  EXPECT_EQ(to_string(failure_kind::bad_password), "bad_password");
  EXPECT_EQ(to_string(failure_kind::config), "config");
}

}  // namespace
}  // namespace xo::auth

TEST(OAuthErrors, KnownConfigurationFaultsCarryAFixInPlainWords) {
  using xo::auth::fix_for;
  EXPECT_NE(fix_for(7000215, "invalid_client").find("Value (not its ID)"), std::string_view::npos);
  EXPECT_NE(fix_for(7000222, "invalid_client").find("expired"), std::string_view::npos);
  EXPECT_NE(fix_for(90002, "invalid_request").find("tenant"), std::string_view::npos);
  EXPECT_NE(fix_for(700082, "invalid_grant").find("authorize the account again"),
            std::string_view::npos);
  EXPECT_NE(fix_for(0, "invalid_client").find("client_id"), std::string_view::npos);
  EXPECT_EQ(fix_for(0, "temporarily_unavailable"), "");
  xo::auth::token_error e;
  e.summary = "invalid_client AADSTS7000215: Invalid client secret provided.";
  e.fix = "x";
  EXPECT_EQ(e.describe(), "invalid_client AADSTS7000215: Invalid client secret provided.; fix: x");
}
