// Golden diagnostics: each test feeds one mistake (or a few) and compares the exact
// "file:line:col: key: message" strings. Snippets come first in the file, so their line numbers
// count from 1; `base` (config_test_util.hpp) supplies the valid remainder.
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

TEST_F(ConfigDiagnostics, UnknownProviderReferenceSuggestsName) {
  EXPECT_EQ(errors_of(with_base(R"([[account]]
login = "bob@contoso.com"
provider = "contosso"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)")),
            (lines{"test.toml:3:12: account[1].provider: unknown provider 'contosso' (did you mean "
                   "'contoso'?)"}));
}

TEST_F(ConfigDiagnostics, UnknownProviderReferenceFarFromAny) {
  EXPECT_EQ(
      errors_of(with_base(R"([[account]]
login = "bob@contoso.com"
provider = "northwind"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)")),
      (lines{"test.toml:3:12: account[1].provider: unknown provider 'northwind' (no [[provider]] "
             "has this name)"}));
}

TEST_F(ConfigDiagnostics, DuplicateProviderName) {
  EXPECT_EQ(
      errors_of(with_base(R"([[provider]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "22222222-2222-3333-4444-555555555555"
client_secret = "${XO_TEST_SECRET}"
)")),
      (lines{"test.toml:8:8: provider[2].name: duplicate provider name 'contoso' (also used by "
             "provider[1] at line 2)"}));
}

TEST_F(ConfigDiagnostics, DuplicateLoginIsCaseInsensitive) {
  EXPECT_EQ(
      errors_of(with_base(R"([[account]]
login = "Alice@Contoso.com"
provider = "contoso"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)")),
      (lines{"test.toml:18:9: account[2].login: duplicate login 'alice@contoso.com' (also used by "
             "account[1] at line 2)"}));
}

TEST_F(ConfigDiagnostics, BadListenAddress) {
  EXPECT_EQ(
      errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "localhost:1144"
upstream = "outlook.office365.com:993"
)")),
      (lines{"test.toml:3:10: listener[1].listen: 'localhost:1144': listen must be an IP address "
             "(e.g. 127.0.0.1:1143 or [::1]:1143)"}));
}

TEST_F(ConfigDiagnostics, AddressShapes) {
  EXPECT_EQ(
      errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "::1:1144"
upstream = "outlook.office365.com:0"

[[listener]]
protocol = "imap"
listen = "[::1]:70000"
upstream = "bad_host-:993"

[[listener]]
protocol = "imap"
listen = "127.0.0.1"
upstream = "[fe80::zz]:993"
)")),
      (lines{"test.toml:3:10: listener[1].listen: '::1:1144': write an IPv6 address in brackets, "
             "e.g. [::1]:1143",
             "test.toml:4:12: listener[1].upstream: 'outlook.office365.com:0': the port must be a "
             "number from 1 to 65535",
             "test.toml:8:10: listener[2].listen: '[::1]:70000': the port must be a number from 0 "
             "to 65535",
             "test.toml:9:12: listener[2].upstream: 'bad_host-:993': 'bad_host-' is not a host "
             "name or IP address",
             "test.toml:13:10: listener[3].listen: '127.0.0.1' is not host:port (e.g. "
             "127.0.0.1:1143)",
             "test.toml:14:12: listener[3].upstream: '[fe80::zz]:993': 'fe80::zz' is not an IPv6 "
             "address"}));
}

TEST_F(ConfigDiagnostics, DuplicateListenAddress) {
  scratch_dir dir;
  std::string pem = dir.write("tls.pem", "pem");
  EXPECT_EQ(
      errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "0.0.0.0:1143"
tls = "implicit"
cert_file = ")" + pem + R"("
key_file = ")" + pem + R"("
upstream = "outlook.office365.com:993"
)")),
      (lines{"test.toml:17:10: listener[2].listen: 127.0.0.1:1143 is already used by listener[1] "
             "at line 3"}));
}

TEST_F(ConfigDiagnostics, PortZeroMayRepeat) {
  EXPECT_EQ(errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "127.0.0.1:0"
upstream = "imap.example.com:993"

[[listener]]
protocol = "imap"
listen = "127.0.0.1:0"
upstream = "imap.example.com:993"
)")),
            lines{});
}

TEST_F(ConfigDiagnostics, MissingCertFile) {
  scratch_dir dir;
  std::string key = dir.write("key.pem", "key");
  EXPECT_EQ(
      errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "127.0.0.1:1144"
tls = "implicit"
cert_file = "/nonexistent/xo-cert.pem"
key_file = ")" + key + R"("
upstream = "outlook.office365.com:993"
)")),
      (lines{
          "test.toml:5:13: listener[1].cert_file: cannot read '/nonexistent/xo-cert.pem': No such "
          "file or directory"}));
}

TEST_F(ConfigDiagnostics, TlsWithoutCertAndKey) {
  EXPECT_EQ(
      errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "127.0.0.1:1144"
tls = "starttls"
upstream = "outlook.office365.com:993"
)")),
      (lines{"test.toml:1:1: listener[1].cert_file: missing required key (tls = \"starttls\")",
             "test.toml:1:1: listener[1].key_file: missing required key (tls = \"starttls\")"}));
}

TEST_F(ConfigDiagnostics, BadEnumValue) {
  EXPECT_EQ(
      errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "127.0.0.1:1144"
tls = "ssl"
upstream = "outlook.office365.com:993"
)")),
      (lines{
          "test.toml:4:7: listener[1].tls: invalid value 'ssl' (expected one of: none, starttls, "
          "implicit)"}));
}

TEST_F(ConfigDiagnostics, UnsupportedProtocolAndFlow) {
  EXPECT_EQ(
      errors_of(with_base(R"([[listener]]
protocol = "pop3"
listen = "127.0.0.1:1144"
upstream = "outlook.office365.com:995"

[[account]]
login = "*@contoso.com"
provider = "contoso"
flow = "device_code"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)")),
      (lines{"test.toml:2:12: listener[1].protocol: 'pop3' is not supported yet (supported: imap)",
             "test.toml:9:8: account[1].flow: 'device_code' is not supported yet (supported: "
             "client_credentials)"}));
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
listen = "127.0.0.1:1144"
upstream = "smtp.office365.com:587"
)")),
      (lines{
          "test.toml:2:13: proxy.log_level: invalid value 'verbose' (expected one of: trace, "
          "debug, "
          "info, warn, error, critical, off)",
          "test.toml:3:16: proxy.idle_timeout: must be at least 1800 seconds",
          "test.toml:6:12: listener[1].protocol: 'smtp' is not supported yet (supported: imap)"}));
}

TEST_F(ConfigDiagnostics, ProxyNumbersMustBePositive) {
  EXPECT_EQ(errors_of(with_base("[proxy]\nlogin_timeout = 0\ntoken_timeout = \"30\"\n")),
            (lines{"test.toml:2:17: proxy.login_timeout: must be a positive number of seconds",
                   "test.toml:3:17: proxy.token_timeout: expected an integer, found a string"}));
}

TEST_F(ConfigDiagnostics, LoginsAndHashes) {
  EXPECT_EQ(errors_of(with_base(R"([[account]]
login = "bob"
provider = "contoso"
mailbox = "shared mailbox"
password_hash = "$argon2i$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)")),
            (lines{"test.toml:2:9: account[1].login: 'bob' is not a login: expected an address "
                   "(user@example.com) or a wildcard (*@example.com)",
                   "test.toml:4:11: account[1].mailbox: 'shared mailbox' is not a mailbox address "
                   "(user@example.com)",
                   "test.toml:5:17: account[1].password_hash: must be an argon2id PHC string "
                   "($argon2id$v=19$m=...,t=...,p=...$salt$hash)"}));
}

TEST_F(ConfigDiagnostics, ClientSecretExactlyOne) {
  EXPECT_EQ(
      errors_of(with_base(R"([[provider]]
name = "fabrikam"
tenant = "fabrikam.onmicrosoft.com"
client_id = "22222222-2222-3333-4444-555555555555"
client_secret = "${XO_TEST_SECRET}"
client_secret_file = "secret.txt"

[[provider]]
name = "northwind"
tenant = "northwind.onmicrosoft.com"
client_id = "33333333-2222-3333-4444-555555555555"
)")),
      (lines{
          "test.toml:6:22: provider[1].client_secret_file: set either client_secret or "
          "client_secret_file, not both",
          "test.toml:8:1: provider[2].client_secret: missing required key: set client_secret_file "
          "= \"/path\" or client_secret = \"${ENV_VAR}\""}));
}

TEST_F(ConfigDiagnostics, AuthorityMustBeHttps) {
  EXPECT_EQ(
      errors_of(with_base(R"([[provider]]
name = "fabrikam"
tenant = "fabrikam/x"
client_id = "22222222-2222-3333-4444-555555555555"
client_secret = "${XO_TEST_SECRET}"
authority = "http://login.example.com"
)")),
      (lines{
          "test.toml:3:10: provider[1].tenant: 'fabrikam/x' is not a tenant: expected a "
          "directory ID (GUID), a domain, or 'organizations'",
          "test.toml:6:13: provider[1].authority: 'http://login.example.com' must be an https:// "
          "URL"}));
}

TEST_F(ConfigDiagnostics, MissingSectionsHaveNoPosition) {
  EXPECT_EQ(errors_of("[proxy]\nlog_level = \"info\"\n"),
            (lines{"test.toml: listener: at least one [[listener]] is required",
                   "test.toml: account: at least one [[account]] is required"}));
}

TEST_F(ConfigDiagnostics, SectionOfWrongShape) {
  EXPECT_EQ(errors_of(with_base("proxy = 3\n")),
            (lines{"test.toml:1:9: proxy: expected a table ([proxy]), found an integer"}));
}

TEST_F(ConfigDiagnostics, NonLoopbackPlaintextListenerWarns) {
  auto text = with_base(R"([[listener]]
protocol = "imap"
listen = "0.0.0.0:1144"
upstream = "outlook.office365.com:993"
)");
  EXPECT_EQ(errors_of(text), lines{});
  EXPECT_EQ(
      warnings_of(text),
      (lines{"test.toml:3:10: listener[1].listen: warning: 0.0.0.0:1144 is not a loopback address "
             "and tls = \"none\": passwords will cross the network in clear text"}));
}

TEST_F(ConfigDiagnostics, InlineSecretWarns) {
  auto text = with_base(R"([[provider]]
name = "fabrikam"
tenant = "fabrikam.onmicrosoft.com"
client_id = "22222222-2222-3333-4444-555555555555"
client_secret = "literal-secret"
)");
  EXPECT_EQ(errors_of(text), lines{});
  EXPECT_EQ(
      warnings_of(text),
      (lines{
          "test.toml:5:17: provider[1].client_secret: warning: the client secret is written in the "
          "config file; prefer client_secret_file or client_secret = \"${ENV_VAR}\""}));
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
