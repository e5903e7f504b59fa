// Golden diagnostics for the syntax and shape passes: each test feeds one mistake (or a few) and
// compares the exact "file:line:col: key: message" strings. Snippets come first in the file, so
// their line numbers count from 1; `base` (config_test_util.hpp) supplies the valid remainder.
#include "config_test_util.hpp"

namespace xo::config::test {
namespace {

using lines = std::vector<std::string>;

class ConfigDiagnostics : public config_test {};

TEST_F(ConfigDiagnostics, BaseConfigIsValid) {
  auto r = load_string(base, "test.toml");
  EXPECT_EQ(strings(r.errors), lines{});
  EXPECT_EQ(strings(r.warnings), lines{});
}

TEST_F(ConfigDiagnostics, SyntaxErrorHasPosition) {
  EXPECT_EQ(
      errors_of(with_base("[proxy]\nlog_level = \"info\n")),
      (lines{"test.toml:2:18: syntax error in string: unescaped control characters other than TAB "
             "(U+0009) are explicitly prohibited"}));
}

TEST_F(ConfigDiagnostics, UnknownKeySuggestsClosest) {
  EXPECT_EQ(
      errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "127.0.0.1:1144"
upstream = "outlook.office365.com:993"
upstream_tsl = "implicit"
)")),
      (lines{"test.toml:5:1: listener[1].upstream_tsl: unknown key 'upstream_tsl' (did you mean "
             "'upstream_tls'?)"}));
}

TEST_F(ConfigDiagnostics, MisspelledRequiredKeyGivesUnknownAndMissing) {
  EXPECT_EQ(
      errors_of(with_base(R"([[listener]]
protocol = "imap"
lisen = "127.0.0.1:1144"
upstream = "outlook.office365.com:993"
)")),
      (lines{"test.toml:1:1: listener[1].listen: missing required key",
             "test.toml:3:1: listener[1].lisen: unknown key 'lisen' (did you mean 'listen'?)"}));
}

TEST_F(ConfigDiagnostics, UnknownTopLevelKey) {
  EXPECT_EQ(
      errors_of(with_base("[[listeners]]\nprotocol = \"imap\"\n")),
      (lines{"test.toml:1:3: listeners: unknown key 'listeners' (did you mean 'listener'?)"}));
}

TEST_F(ConfigDiagnostics, UnknownKeyFarFromAnyKnownHasNoSuggestion) {
  EXPECT_EQ(errors_of(with_base("[proxy]\ncolour = \"blue\"\n")),
            (lines{"test.toml:2:1: proxy.colour: unknown key 'colour'"}));
}

TEST_F(ConfigDiagnostics, MissingRequiredKeyUsesTablePosition) {
  EXPECT_EQ(errors_of(with_base(R"([[provider]]
name = "fabrikam"
tenant = "fabrikam.onmicrosoft.com"
client_secret = "${XO_TEST_SECRET}"
)")),
            (lines{"test.toml:1:1: provider[1].client_id: missing required key"}));
}

TEST_F(ConfigDiagnostics, WrongTypeNamesExpectedAndFound) {
  EXPECT_EQ(errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = 1144
upstream = "outlook.office365.com:993"
)")),
            (lines{"test.toml:3:10: listener[1].listen: expected a string, found an integer"}));
}

TEST_F(ConfigDiagnostics, UnsetEnvironmentVariable) {
  scoped_env unset{"XO_TEST_UNSET", nullptr};
  EXPECT_EQ(
      errors_of(with_base(R"([[provider]]
name = "fabrikam"
tenant = "fabrikam.onmicrosoft.com"
client_id = "22222222-2222-3333-4444-555555555555"
client_secret = "${XO_TEST_UNSET}"
authority = "https://${XO_TEST_UNSET}/"
)")),
      (lines{
          "test.toml:5:17: provider[1].client_secret: environment variable 'XO_TEST_UNSET' is not "
          "set",
          "test.toml:6:13: provider[1].authority: environment variable 'XO_TEST_UNSET' is not "
          "set"}));
}

TEST_F(ConfigDiagnostics, ThreeMistakesGiveThreeErrorsOnTheirOwnLines) {
  EXPECT_EQ(
      errors_of(with_base(R"([proxy]
log_level = "verbose"
idle_timeout = 600

[[listener]]
protocol = "smtp"
upstream_tls = "ssl"
listen = "127.0.0.1:1144"
upstream = "smtp.office365.com:587"
)")),
      (lines{
          "test.toml:2:13: proxy.log_level: invalid value 'verbose' (expected one of: trace, "
          "debug, "
          "info, warn, error, critical, off)",
          "test.toml:3:16: proxy.idle_timeout: must be at least 1800 seconds",
          "test.toml:7:16: listener[1].upstream_tls: invalid value 'ssl' (expected one of: "
          "implicit, starttls)"}));
}

TEST_F(ConfigDiagnostics, ProxyNumbersMustBePositive) {
  EXPECT_EQ(errors_of(with_base("[proxy]\nlogin_timeout = 0\ntoken_timeout = \"30\"\n")),
            (lines{"test.toml:2:17: proxy.login_timeout: must be a positive number of seconds",
                   "test.toml:3:17: proxy.token_timeout: expected an integer, found a string"}));
}

TEST_F(ConfigDiagnostics, MissingSectionsHaveNoPosition) {
  EXPECT_EQ(errors_of("[proxy]\nlog_level = \"info\"\n"),
            (lines{"test.toml: listener: at least one [[listener]] is required",
                   "test.toml: account: at least one [[account]] is required"}));
}

TEST_F(ConfigDiagnostics, EmptyOrMistypedSectionsAreReportedOnce) {
  EXPECT_EQ(errors_of("listener = []\naccount = 5\n"),
            (lines{"test.toml:1:12: listener: at least one [[listener]] is required",
                   "test.toml:2:11: account: expected an array of tables ([[account]]), found an "
                   "integer"}));
}

TEST_F(ConfigDiagnostics, SectionOfWrongShape) {
  EXPECT_EQ(errors_of(with_base("proxy = 3\n")),
            (lines{"test.toml:1:9: proxy: expected a table ([proxy]), found an integer"}));
}

TEST_F(ConfigDiagnostics, MissingConfigFile) {
  auto r = load_file("/nonexistent/xoauth-proxy.toml");
  EXPECT_EQ(strings(r.errors), (lines{"/nonexistent/xoauth-proxy.toml: cannot read the config "
                                      "file: No such file or directory"}));
}

TEST_F(ConfigDiagnostics, LoadThrowsConfigErrorWithEveryLine) {
  scratch_dir dir;
  auto path = dir.write("bad.toml", "[proxy]\nlog_level = \"loud\"\nidle_timeout = 5\n");
  try {
    load(path);
    FAIL() << "load() accepted a bad file";
  } catch (const config_error& e) {
    EXPECT_EQ(e.diagnostics().size(), 4u);
    EXPECT_EQ(std::string(e.what()),
              path +
                  ":2:13: proxy.log_level: invalid value 'loud' (expected one of: trace, debug, "
                  "info, warn, "
                  "error, critical, off)\n" +
                  path + ":3:16: proxy.idle_timeout: must be at least 1800 seconds\n" + path +
                  ": listener: at least one [[listener]] is required\n" + path +
                  ": account: at least one [[account]] is required");
  }
}

}  // namespace
}  // namespace xo::config::test
