// [proxy] lockout_failures, lockout_window, lockout_duration (issue 8): defaults, values,
// diagnostics and how `check` shows them.
#include "config_test_util.hpp"

namespace xo::config::test {
namespace {

using lines = std::vector<std::string>;

class ConfigLockout : public config_test {};

TEST_F(ConfigLockout, Defaults) {
  auto r = load_string(base, "test.toml");
  ASSERT_EQ(strings(r.errors), lines{});
  EXPECT_EQ(r.cfg.proxy.lockout_failures, 10u);
  EXPECT_EQ(r.cfg.proxy.lockout_window, std::chrono::seconds{900});
  EXPECT_EQ(r.cfg.proxy.lockout_duration, std::chrono::seconds{900});
  EXPECT_NE(describe(r.cfg).find("  login lockout: 10 failures per login and client address (50 "
                                 "per address) within 900s lock for 900s\n"),
            std::string::npos)
      << describe(r.cfg);
}

TEST_F(ConfigLockout, Values) {
  auto r = load_string(
      with_base("[proxy]\nlockout_failures = 3\nlockout_window = 60\nlockout_duration = 5\n"),
      "test.toml");
  ASSERT_EQ(strings(r.errors), lines{});
  EXPECT_EQ(r.cfg.proxy.lockout_failures, 3u);
  EXPECT_EQ(r.cfg.proxy.lockout_window, std::chrono::seconds{60});
  EXPECT_EQ(r.cfg.proxy.lockout_duration, std::chrono::seconds{5});
}

TEST_F(ConfigLockout, ZeroTurnsItOff) {
  auto r = load_string(with_base("[proxy]\nlockout_failures = 0\n"), "test.toml");
  ASSERT_EQ(strings(r.errors), lines{});
  EXPECT_EQ(r.cfg.proxy.lockout_failures, 0u);
  EXPECT_NE(describe(r.cfg).find("  login lockout: off\n"), std::string::npos) << describe(r.cfg);
}

TEST_F(ConfigLockout, BadValues) {
  EXPECT_EQ(errors_of(with_base("[proxy]\nlockout_failures = -1\nlockout_window = 0\n"
                                "lockout_duration = \"15m\"\n")),
            (lines{"test.toml:2:20: proxy.lockout_failures: must be between 0 (off) and 100",
                   "test.toml:3:18: proxy.lockout_window: must be a positive number of seconds",
                   "test.toml:4:20: proxy.lockout_duration: expected an integer, found a string"}));
  EXPECT_EQ(errors_of(with_base("[proxy]\nlockout_failures = 101\nlockout_duration = 604801\n")),
            (lines{"test.toml:2:20: proxy.lockout_failures: must be between 0 (off) and 100",
                   "test.toml:3:20: proxy.lockout_duration: must be at most 604800 seconds (one "
                   "week)"}));
}

}  // namespace
}  // namespace xo::config::test
