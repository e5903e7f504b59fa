#include "common/metrics.hpp"

#include <gtest/gtest.h>

namespace {

TEST(Metrics, RendersPrometheusTextWithHelpTypeAndLabels) {
  xo::metrics::counter_add("xoauth_logins_total",
                           {{"protocol", "imap"}, {"result", "ok"}, {"reason", "ok"}});
  xo::metrics::counter_add("xoauth_logins_total",
                           {{"protocol", "imap"}, {"result", "ok"}, {"reason", "ok"}}, 2);
  xo::metrics::gauge_add("xoauth_sessions_active", {{"protocol", "smtp"}}, 1);
  xo::metrics::observe("xoauth_token_request_seconds", {{"grant", "refresh_token"}}, 0.02);
  xo::metrics::counter_add("xoauth_idp_errors_total",
                           {{"error", "in\"valid\\grant"}, {"code", "AADSTS70008"}});
  const std::string text = xo::metrics::render();
  EXPECT_NE(text.find("# TYPE xoauth_logins_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("xoauth_logins_total{protocol=\"imap\",result=\"ok\",reason=\"ok\"} 3\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("xoauth_sessions_active{protocol=\"smtp\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("xoauth_token_request_seconds_bucket{grant=\"refresh_token\",le=\"0.01\"} 0\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("xoauth_token_request_seconds_bucket{grant=\"refresh_token\",le=\"0.025\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("xoauth_token_request_seconds_bucket{grant=\"refresh_token\",le=\"+Inf\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("xoauth_token_request_seconds_count{grant=\"refresh_token\"} 1\n"),
            std::string::npos);
  // Label values are escaped as the exposition format requires.
  EXPECT_NE(text.find("error=\"in\\\"valid\\\\grant\""), std::string::npos) << text;
  EXPECT_EQ(text.find("unregistered"), std::string::npos);
}

}  // namespace
