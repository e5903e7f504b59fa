// The model's behaviour (lookups, text forms) and describe(); and the rule that no secret ever
// reaches a diagnostic or the summary.
#include "config_test_util.hpp"

namespace xo::config::test {
namespace {

using lines = std::vector<std::string>;

config accounts_config() {
  config c;
  for (const char* name : {"contoso", "fabrikam"}) {
    c.providers.emplace_back().name = name;
  }
  // The wildcard comes first on purpose: an exact login must still win.
  for (const char* login : {"*@contoso.com", "Alice@Contoso.com", "*@fabrikam.com"}) {
    c.accounts.emplace_back().login = login;
  }
  return c;
}

TEST(ConfigFindAccount, ExactLoginWinsOverWildcardAndIgnoresCase) {
  config c = accounts_config();
  EXPECT_EQ(c.find_account("alice@contoso.com"), &c.accounts[1]);
  EXPECT_EQ(c.find_account("ALICE@CONTOSO.COM"), &c.accounts[1]);
}

TEST(ConfigFindAccount, WildcardMatchesTheLoginsDomainIgnoringCase) {
  config c = accounts_config();
  EXPECT_EQ(c.find_account("bob@contoso.com"), &c.accounts[0]);
  EXPECT_EQ(c.find_account("bob@CONTOSO.com"), &c.accounts[0]);
  EXPECT_EQ(c.find_account("carol@fabrikam.com"), &c.accounts[2]);
}

TEST(ConfigFindAccount, NoMatch) {
  config c = accounts_config();
  EXPECT_EQ(c.find_account("bob@sub.contoso.com"), nullptr);
  EXPECT_EQ(c.find_account("bob@example.com"), nullptr);
  EXPECT_EQ(c.find_account("contoso.com"), nullptr);
  EXPECT_EQ(c.find_account("@contoso.com"), nullptr);
  EXPECT_EQ(c.find_account("*@contoso.com"), nullptr);
  EXPECT_EQ(c.find_account(""), nullptr);
}

TEST(ConfigFindProvider, ByExactName) {
  config c = accounts_config();
  EXPECT_EQ(c.find_provider("fabrikam"), &c.providers[1]);
  EXPECT_EQ(c.find_provider("Fabrikam"), nullptr);
}

TEST(ConfigText, HostPortAndEnums) {
  EXPECT_EQ((host_port{"127.0.0.1", 1143}).to_string(), "127.0.0.1:1143");
  EXPECT_EQ((host_port{"::1", 993}).to_string(), "[::1]:993");
  EXPECT_EQ((host_port{"imap.example.com", 143}).to_string(), "imap.example.com:143");
  EXPECT_EQ(to_string(tls_mode::starttls), "starttls");
  EXPECT_EQ(to_string(upstream_tls_mode::implicit), "implicit");
  EXPECT_EQ(to_string(protocol_kind::pop3), "pop3");
  EXPECT_EQ(to_string(flow_kind::device_code), "device_code");
  EXPECT_EQ(to_string(log_format::json), "json");
}

TEST(ConfigText, DiagnosticForms) {
  EXPECT_EQ((diagnostic{{"a.toml", 3, 7}, "proxy.log_level", "bad", false}).to_string(),
            "a.toml:3:7: proxy.log_level: bad");
  EXPECT_EQ((diagnostic{{"a.toml", 0, 0}, "listener", "missing", false}).to_string(),
            "a.toml: listener: missing");
  EXPECT_EQ((diagnostic{{"a.toml", 2, 1}, "", "syntax error", false}).to_string(),
            "a.toml:2:1: syntax error");
  EXPECT_EQ((diagnostic{{"a.toml", 4, 2}, "k", "careful", true}).to_string(),
            "a.toml:4:2: k: warning: careful");
}

TEST(ConfigText, ConfigErrorListsEveryDiagnostic) {
  config_error e({{{"a.toml", 1, 1}, "x", "one", false}, {{"a.toml", 2, 1}, "y", "two", false}});
  EXPECT_EQ(std::string(e.what()), "a.toml:1:1: x: one\na.toml:2:1: y: two");
  EXPECT_EQ(e.diagnostics().size(), 2u);
}

class ConfigDescribe : public config_test {};

TEST_F(ConfigDescribe, SummarisesProvidersListenersAndAccounts) {
  auto r = load_string(with_base(R"([[listener]]
protocol = "imap"
listen = "[::1]:1144"
upstream = "imap.example.com:143"
upstream_tls = "starttls"

[[account]]
login = "*@contoso.com"
provider = "contoso"
mailbox = "shared@contoso.com"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)"),
                       "test.toml");
  ASSERT_EQ(strings(r.errors), lines{});
  std::string d = describe(r.cfg);
  EXPECT_NE(d.find("  contoso\n"), std::string::npos) << d;
  EXPECT_NE(d.find("    tenant:         contoso.onmicrosoft.com\n"), std::string::npos) << d;
  EXPECT_NE(d.find("    client_id:      11111111-2222-3333-4444-555555555555\n"), std::string::npos)
      << d;
  EXPECT_NE(d.find("    token endpoint: "
                   "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token\n"),
            std::string::npos)
      << d;
  EXPECT_NE(d.find("    client secret:  [set] (environment variable XO_TEST_SECRET)\n"),
            std::string::npos)
      << d;
  EXPECT_NE(d.find("  imap [::1]:1144 (tls none) -> imap.example.com:143 (tls starttls)\n"),
            std::string::npos)
      << d;
  EXPECT_NE(
      d.find("  imap 127.0.0.1:1143 (tls none) -> outlook.office365.com:993 (tls implicit)\n"),
      std::string::npos)
      << d;
  EXPECT_NE(d.find("  *@contoso.com -> provider contoso, flow client_credentials, mailbox "
                   "shared@contoso.com\n"),
            std::string::npos)
      << d;
  EXPECT_NE(d.find("  alice@contoso.com -> provider contoso, flow client_credentials, mailbox (the "
                   "login)\n"),
            std::string::npos)
      << d;
}

// Every secret-bearing value in one file: an env secret, a file secret, an inline secret (a
// warning), a secret of the wrong type, and password hashes. None may appear anywhere.
TEST_F(ConfigDescribe, SecretsNeverAppearInDiagnosticsOrSummary) {
  scratch_dir dir;
  auto secret_file = dir.write("secret", "FileSecret-7d1f\n");
  std::string providers = R"([[provider]]
name = "fabrikam"
tenant = "fabrikam.onmicrosoft.com"
client_id = "22222222-2222-3333-4444-555555555555"
client_secret_file = ")" + secret_file +
                          R"("

[[provider]]
name = "northwind"
tenant = "northwind.onmicrosoft.com"
client_id = "33333333-2222-3333-4444-555555555555"
client_secret = "InlineSecret-9b2c"
)";
  const std::vector<std::string> secrets = {test_secret,   "FileSecret-7d1f",  "InlineSecret-9b2c",
                                            "424242",      "TableSecret-e3a0", hash,
                                            "c2FsdHNhbHQ", "aGFzaGhhc2g"};
  auto good = load_string(providers + std::string(base), "test.toml");
  ASSERT_EQ(strings(good.errors), lines{});
  ASSERT_EQ(good.warnings.size(), 1u);  // the inline secret
  std::string everything = describe(good.cfg) + good.warnings[0].to_string();

  auto bad = load_string(R"([[provider]]
name = "x"
tenant = "x"
client_id = "x"
client_secret = 424242

[[provider]]
name = "y"
tenant = "y"
client_id = "y"
client_secret = { value = "TableSecret-e3a0" }
)" + std::string(base) + R"(
[[account]]
login = "eve@contoso.com"
provider = "contoso"
password_hash = "$argon2i$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)",
                         "test.toml");
  ASSERT_EQ(bad.errors.size(), 3u);
  for (const auto& e : bad.errors) everything += e.to_string() + "\n";
  for (const auto& s : secrets)
    EXPECT_EQ(everything.find(s), std::string::npos) << s << " leaked in:\n" << everything;
}

}  // namespace
}  // namespace xo::config::test
