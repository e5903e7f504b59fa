// Golden diagnostics for the meaning pass: values (enums, addresses, logins, hashes, files,
// secrets) and checks across entries (duplicates, references). Same conventions as
// diagnostics_test.cpp: the snippet comes first, `base` after it.
#include "config_test_util.hpp"

namespace xo::config::test {
namespace {

using lines = std::vector<std::string>;

class ConfigMeaning : public config_test {};

TEST_F(ConfigMeaning, UnknownProviderReferenceSuggestsName) {
  EXPECT_EQ(errors_of(with_base(R"([[account]]
login = "bob@contoso.com"
provider = "contosso"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)")),
            (lines{"test.toml:3:12: account[1].provider: unknown provider 'contosso' (did you mean "
                   "'contoso'?)"}));
}

TEST_F(ConfigMeaning, UnknownProviderReferenceFarFromAny) {
  EXPECT_EQ(
      errors_of(with_base(R"([[account]]
login = "bob@contoso.com"
provider = "northwind"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)")),
      (lines{"test.toml:3:12: account[1].provider: unknown provider 'northwind' (no [[provider]] "
             "has this name)"}));
}

TEST_F(ConfigMeaning, DuplicateProviderName) {
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

TEST_F(ConfigMeaning, DuplicateLoginIsCaseInsensitive) {
  EXPECT_EQ(
      errors_of(with_base(R"([[account]]
login = "Alice@Contoso.com"
provider = "contoso"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)")),
      (lines{"test.toml:18:9: account[2].login: duplicate login 'alice@contoso.com' (also used by "
             "account[1] at line 2)"}));
}

TEST_F(ConfigMeaning, BadListenAddress) {
  EXPECT_EQ(
      errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "localhost:1144"
upstream = "outlook.office365.com:993"
)")),
      (lines{"test.toml:3:10: listener[1].listen: 'localhost:1144': listen must be an IP address "
             "(e.g. 127.0.0.1:1143 or [::1]:1143)"}));
}

TEST_F(ConfigMeaning, AddressShapes) {
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

TEST_F(ConfigMeaning, DuplicateListenAddress) {
  EXPECT_EQ(errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "127.0.0.1:1143"
upstream = "outlook.office365.com:993"
)")),
            (lines{"test.toml:14:10: listener[2].listen: 127.0.0.1:1143 is already used by "
                   "listener[1] at line 3"}));
}

TEST_F(ConfigMeaning, WildcardListenClashesWithItsOwnFamilyOnly) {
  scratch_dir dir;
  std::string pem = dir.write("tls.pem", "pem");
  EXPECT_EQ(errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "0.0.0.0:1143"
tls = "implicit"
cert_file = ")" + pem + R"("
key_file = ")" + pem + R"("
upstream = "outlook.office365.com:993"

[[listener]]
protocol = "imap"
listen = "[::1]:1143"
upstream = "outlook.office365.com:993"
)")),
            (lines{"test.toml:22:10: listener[3].listen: 127.0.0.1:1143 is already used by "
                   "listener[1] (0.0.0.0:1143) at line 3"}));
}

TEST_F(ConfigMeaning, PortZeroMayRepeat) {
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

TEST_F(ConfigMeaning, MissingCertFile) {
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

TEST_F(ConfigMeaning, TlsWithoutCertAndKey) {
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

TEST_F(ConfigMeaning, BadEnumValue) {
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

TEST_F(ConfigMeaning, InteractiveFlowNeedsAnExactLogin) {
  EXPECT_EQ(
      errors_of(with_base(R"([[account]]
login = "*@contoso.com"
provider = "contoso"
flow = "device_code"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)")),
      (lines{"test.toml:4:8: account[1].flow: flow \"device_code\" authorizes one mailbox at a "
             "time: use an exact login, not '*@contoso.com'"}));
}

TEST_F(ConfigMeaning, InteractiveFlowNeedsTheAdminListener) {
  EXPECT_EQ(errors_of(R"([proxy]
admin_listen = ""

[[provider]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"

[[listener]]
protocol = "imap"
listen = "127.0.0.1:1143"
upstream = "outlook.office365.com:993"

[[account]]
login = "alice@contoso.com"
provider = "contoso"
flow = "authorization_code"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)"),
            (lines{"test.toml:17:8: account[1].flow: flow \"authorization_code\" needs the admin "
                   "listener ([proxy] admin_listen) to receive the authorization"}));
}

TEST_F(ConfigMeaning, PasswordFlowNeedsNoLocalHashAndPublicClientsAreFine) {
  auto r = load_string(R"([proxy]
admin_listen = "127.0.0.1:0"
public_base_url = "https://proxy.example.com/"
refresh_ahead = 600

[[provider]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"

[[listener]]
protocol = "imap"
listen = "127.0.0.1:1143"
upstream = "outlook.office365.com:993"

[[account]]
login = "*@contoso.com"
provider = "contoso"
flow = "password"

[[account]]
login = "dev@contoso.com"
provider = "contoso"
flow = "device_code"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)",
                       "test.toml");
  EXPECT_EQ(strings(r.errors), lines{});
  ASSERT_TRUE(r.cfg.proxy.admin_address);
  EXPECT_EQ(r.cfg.proxy.admin_address->port, 0);
  EXPECT_EQ(r.cfg.proxy.public_base_url, "https://proxy.example.com");
  EXPECT_EQ(r.cfg.proxy.refresh_ahead, std::chrono::seconds{600});
  EXPECT_EQ(r.cfg.accounts.at(0).flow, flow_kind::password);
  EXPECT_TRUE(r.cfg.accounts.at(0).password_hash.empty());
  EXPECT_FALSE(r.cfg.providers.at(0).has_client_credential());
}

TEST_F(ConfigMeaning, ClientCredentialsNeedAClientCredentialAndBaseUrlIsChecked) {
  EXPECT_EQ(errors_of(R"([proxy]
public_base_url = "ftp://x"

[[provider]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"

[[listener]]
protocol = "imap"
listen = "127.0.0.1:1143"
upstream = "outlook.office365.com:993"

[[account]]
login = "scanner@contoso.com"
provider = "contoso"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
)"),
            (lines{"test.toml:2:19: proxy.public_base_url: 'ftp://x' must be an http:// or "
                   "https:// URL without query or fragment, e.g. https://proxy.example.com",
                   "test.toml:15:9: account[1].login: flow \"client_credentials\" needs a client "
                   "credential, but provider 'contoso' has none: set client_secret_file, "
                   "client_secret = \"${ENV_VAR}\" or certificate_file and private_key_file"}));
}

TEST_F(ConfigMeaning, LoginsAndHashes) {
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

TEST_F(ConfigMeaning, ClientSecretExactlyOne) {
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
          "client_secret_file, not both"}));
}

TEST_F(ConfigMeaning, AuthorityMustBeHttps) {
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

TEST_F(ConfigMeaning, NonLoopbackPlaintextListenerWarns) {
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

TEST_F(ConfigMeaning, InlineSecretWarns) {
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

}  // namespace
}  // namespace xo::config::test
