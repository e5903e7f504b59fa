// Loading valid files: values, defaults, ${VAR} expansion, secret files and relative paths.
#include "config_test_util.hpp"

namespace xo::config::test {
namespace {

using lines = std::vector<std::string>;

class ConfigLoad : public config_test {};

// A config that sets every key, in `dir`; relative paths point into it.
std::string full_config() {
  return std::string(R"([proxy]
state_dir = "/var/lib/xoauth-proxy"
log_format = "json"
log_level = "debug"
login_timeout = 20
idle_timeout = 3600
token_timeout = 10
credential_cache_ttl = 120

[[provider]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret_file = "secret.txt"
authority = "https://login.example.com/"
ca_file = "ca.pem"
scopes = ["https://outlook.office365.com/.default", "${XO_TEST_SCOPE}"]

[[listener]]
protocol = "imap"
listen = "[::1]:1993"
tls = "implicit"
cert_file = "tls/cert.pem"
key_file = "tls/key.pem"
upstream = "outlook.office365.com:993"
upstream_tls = "implicit"
upstream_ca_file = "ca.pem"

[[listener]]
protocol = "imap"
listen = "127.0.0.1:1143"
tls = "starttls"
cert_file = "tls/cert.pem"
key_file = "tls/key.pem"
upstream = "${XO_TEST_UPSTREAM}:143"
upstream_tls = "starttls"

[[account]]
login = "alice@contoso.com"
provider = "contoso"
mailbox = "shared@contoso.com"
password_hash = ")") +
         hash + R"("

[[account]]
login = "*@contoso.com"
provider = "contoso"
flow = "client_credentials"
password_hash = ")" +
         hash + "\"\n";
}

class ConfigLoadFull : public ConfigLoad {
 protected:
  void SetUp() override {
    dir_.write("secret.txt", "file-secret-value\r\n\n");
    dir_.write("ca.pem", "ca");
    dir_.write("tls/cert.pem", "cert");
    dir_.write("tls/key.pem", "key");
    path_ = dir_.write("config.toml", full_config());
  }
  std::string in_dir(const std::string& name) const { return (dir_.path() / name).string(); }

  scratch_dir dir_;
  std::string path_;
  scoped_env upstream_{"XO_TEST_UPSTREAM", "imap.example.net"};
  scoped_env scope_{"XO_TEST_SCOPE", "offline_access"};
};

TEST_F(ConfigLoadFull, EveryValueIsRead) {
  auto r = load_file(path_);
  ASSERT_EQ(strings(r.errors), lines{});
  EXPECT_EQ(strings(r.warnings), lines{});
  const config& c = r.cfg;
  EXPECT_EQ(c.path, path_);
  EXPECT_EQ(c.proxy.state_dir, "/var/lib/xoauth-proxy");
  EXPECT_EQ(c.proxy.format, log_format::json);
  EXPECT_EQ(c.proxy.log_level, "debug");
  EXPECT_EQ(c.proxy.login_timeout, std::chrono::seconds{20});
  EXPECT_EQ(c.proxy.idle_timeout, std::chrono::seconds{3600});
  EXPECT_EQ(c.proxy.token_timeout, std::chrono::seconds{10});
  EXPECT_EQ(c.proxy.credential_cache_ttl, std::chrono::seconds{120});

  ASSERT_EQ(c.providers.size(), 1u);
  const provider& p = c.providers[0];
  EXPECT_EQ(p.name, "contoso");
  EXPECT_EQ(p.tenant, "contoso.onmicrosoft.com");
  EXPECT_EQ(p.client_id, "11111111-2222-3333-4444-555555555555");
  EXPECT_EQ(p.authority, "https://login.example.com");
  EXPECT_EQ(p.token_endpoint(),
            "https://login.example.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
  EXPECT_EQ(p.ca_file, in_dir("ca.pem"));
  EXPECT_EQ(p.scopes, (lines{"https://outlook.office365.com/.default", "offline_access"}));
  EXPECT_EQ(p.where.line, 10);
}

TEST_F(ConfigLoadFull, ListenersAndAccounts) {
  auto r = load_file(path_);
  ASSERT_EQ(strings(r.errors), lines{});
  const config& c = r.cfg;
  ASSERT_EQ(c.listeners.size(), 2u);
  const listener& l = c.listeners[0];
  EXPECT_EQ(l.protocol, protocol_kind::imap);
  EXPECT_EQ(l.listen.host, "::1");
  EXPECT_EQ(l.listen.port, 1993);
  EXPECT_EQ(l.listen.to_string(), "[::1]:1993");
  EXPECT_EQ(l.tls, tls_mode::implicit);
  EXPECT_EQ(l.cert_file, in_dir("tls/cert.pem"));
  EXPECT_EQ(l.key_file, in_dir("tls/key.pem"));
  EXPECT_EQ(l.upstream.to_string(), "outlook.office365.com:993");
  EXPECT_EQ(l.upstream_tls, upstream_tls_mode::implicit);
  EXPECT_EQ(l.upstream_ca_file, in_dir("ca.pem"));
  EXPECT_EQ(l.where.line, 19);
  EXPECT_EQ(c.listeners[1].upstream.host, "imap.example.net");  // ${XO_TEST_UPSTREAM}
  EXPECT_EQ(c.listeners[1].upstream.port, 143);
  EXPECT_EQ(c.listeners[1].upstream_tls, upstream_tls_mode::starttls);

  ASSERT_EQ(c.accounts.size(), 2u);
  EXPECT_EQ(c.accounts[0].login, "alice@contoso.com");
  EXPECT_EQ(c.accounts[0].provider, "contoso");
  EXPECT_EQ(c.accounts[0].mailbox, "shared@contoso.com");
  EXPECT_EQ(c.accounts[0].password_hash, hash);
  EXPECT_TRUE(c.accounts[1].is_wildcard());
  EXPECT_EQ(c.accounts[1].flow, flow_kind::client_credentials);
}

TEST_F(ConfigLoadFull, ClientSecretFileIsReadAndTrimmed) {
  auto r = load_file(path_);
  ASSERT_EQ(strings(r.errors), lines{});
  const provider& p = r.cfg.providers[0];
  EXPECT_EQ(p.client_secret.reveal(), "file-secret-value");
  EXPECT_EQ(p.client_secret_origin, "file " + in_dir("secret.txt"));
}

TEST_F(ConfigLoadFull, LoadReturnsTheSameConfig) {
  config c = load(path_);
  EXPECT_EQ(c.providers.at(0).client_secret.reveal(), "file-secret-value");
  EXPECT_EQ(c.listeners.size(), 2u);
}

TEST_F(ConfigLoad, DefaultsApplyWhenKeysAreAbsent) {
  auto r = load_string(base, "test.toml");
  ASSERT_EQ(strings(r.errors), lines{});
  const config& c = r.cfg;
  EXPECT_EQ(c.proxy.state_dir, "./state");
  EXPECT_EQ(c.proxy.format, log_format::text);
  EXPECT_EQ(c.proxy.log_level, "info");
  EXPECT_EQ(c.proxy.login_timeout, std::chrono::seconds{60});
  EXPECT_EQ(c.proxy.idle_timeout, std::chrono::seconds{1800});
  EXPECT_EQ(c.proxy.token_timeout, std::chrono::seconds{30});
  EXPECT_EQ(c.proxy.credential_cache_ttl, std::chrono::seconds{300});
  const provider& p = c.providers.at(0);
  EXPECT_EQ(p.authority, "https://login.microsoftonline.com");
  EXPECT_EQ(p.token_endpoint(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
  EXPECT_TRUE(p.scopes.empty());
  EXPECT_TRUE(p.ca_file.empty());
  const listener& l = c.listeners.at(0);
  EXPECT_EQ(l.tls, tls_mode::none);
  EXPECT_EQ(l.upstream_tls, upstream_tls_mode::implicit);
  EXPECT_TRUE(l.cert_file.empty());
  const account& a = c.accounts.at(0);
  EXPECT_EQ(a.flow, flow_kind::client_credentials);
  EXPECT_TRUE(a.mailbox.empty());
}

TEST_F(ConfigLoad, ClientSecretFromEnvironment) {
  auto r = load_string(base, "test.toml");
  ASSERT_EQ(strings(r.errors), lines{});
  EXPECT_EQ(r.cfg.providers.at(0).client_secret.reveal(), test_secret);
  EXPECT_EQ(r.cfg.providers.at(0).client_secret_origin, "environment variable XO_TEST_SECRET");
}

TEST_F(ConfigLoad, EnvironmentExpansionInAnyString) {
  scoped_env host{"XO_TEST_HOST", "imap.example.org"};
  scoped_env level{"XO_TEST_LEVEL", "warn"};
  auto r = load_string(with_base(R"([proxy]
log_level = "${XO_TEST_LEVEL}"
state_dir = "/srv/${XO_TEST_HOST}/$HOME/${not-a-name}"

[[listener]]
protocol = "imap"
listen = "127.0.0.1:1144"
upstream = "${XO_TEST_HOST}:993"
)"),
                       "test.toml");
  ASSERT_EQ(strings(r.errors), lines{});
  EXPECT_EQ(r.cfg.proxy.log_level, "warn");
  EXPECT_EQ(r.cfg.proxy.state_dir,
            "/srv/imap.example.org/$HOME/${not-a-name}");  // only ${NAME} expands
  EXPECT_EQ(r.cfg.listeners.at(0).upstream.host, "imap.example.org");
}

TEST_F(ConfigLoad, PasswordHashIsNotExpanded) {
  scoped_env argon{"argon2id", "oops"};
  auto r = load_string(base, "test.toml");
  ASSERT_EQ(strings(r.errors), lines{});
  EXPECT_EQ(r.cfg.accounts.at(0).password_hash, hash);
}

TEST_F(ConfigLoad, RelativePathsAreRelativeToTheConfigFile) {
  scratch_dir dir;
  dir.write("conf/secret", "from-file\n");
  auto path = dir.write("conf/xo.toml", R"([[provider]]
name = "fabrikam"
tenant = "fabrikam.onmicrosoft.com"
client_id = "22222222-2222-3333-4444-555555555555"
client_secret_file = "./secret"
)" + std::string(base));
  auto r = load_file(path);
  ASSERT_EQ(strings(r.errors), lines{});
  EXPECT_EQ(r.cfg.proxy.state_dir, (dir.path() / "conf/state").string());
  EXPECT_EQ(r.cfg.providers.at(0).client_secret.reveal(), "from-file");
  EXPECT_EQ(r.cfg.providers.at(0).client_secret_origin,
            "file " + (dir.path() / "conf/secret").string());
}

TEST_F(ConfigLoad, EmptySecretFileIsAnError) {
  scratch_dir dir;
  auto secret_path = dir.write("empty", "\n");
  auto r = load_string(R"([[provider]]
name = "fabrikam"
tenant = "fabrikam.onmicrosoft.com"
client_id = "22222222-2222-3333-4444-555555555555"
client_secret_file = ")" + secret_path +
                           "\"\n" + std::string(base),
                       "test.toml");
  EXPECT_EQ(strings(r.errors), lines{"test.toml:5:22: provider[1].client_secret_file: '" +
                                     secret_path + "' is empty"});
}

TEST_F(ConfigLoad, DirectoryIsNotAReadableFile) {
  scratch_dir dir;
  auto r = load_string(with_base(R"([[listener]]
protocol = "imap"
listen = "127.0.0.1:1144"
upstream = "outlook.office365.com:993"
upstream_ca_file = ")" + dir.path().string() +
                                 "\"\n"),
                       "test.toml");
  EXPECT_EQ(strings(r.errors), lines{"test.toml:5:20: listener[1].upstream_ca_file: '" +
                                     dir.path().string() + "' is not a regular file"});
}

}  // namespace
}  // namespace xo::config::test
