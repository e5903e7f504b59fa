// SMTP listener keys: anonymous senders are opt-in and never unrestricted; allow_from networks.
#include "config_test_util.hpp"

namespace xo::config::test {
namespace {

using lines = std::vector<std::string>;

class ConfigSmtp : public config_test {};

TEST_F(ConfigSmtp, AnonymousWithoutAllowListIsRefused) {
  EXPECT_EQ(errors_of(with_base(R"([[listener]]
protocol = "smtp"
listen = "127.0.0.1:1587"
upstream = "smtp.office365.com:587"
anonymous_account = "alice@contoso.com"
)")),
            (lines{"test.toml:5:21: listener[1].anonymous_account: refused without allow_from: list "
                   "the client networks that may send without authenticating, e.g. allow_from = "
                   "[\"192.168.10.0/24\"]"}));
}

TEST_F(ConfigSmtp, AnonymousMustNameAnAccountAndNetworksMustParse) {
  auto errs = errors_of(with_base(R"([[listener]]
protocol = "smtp"
listen = "127.0.0.1:1587"
upstream = "smtp.office365.com:587"
anonymous_account = "nobody@contoso.com"
allow_from = ["192.168.10.0/24", "10.0.0.300", "fd00::/129"]
)"));
  ASSERT_EQ(errs.size(), 3u);
  // Diagnostics come in file order.
  EXPECT_NE(errs[0].find("'nobody@contoso.com' is not the login of an [[account]]"),
            std::string::npos);
  EXPECT_NE(errs[1].find("'10.0.0.300' is not an address or network"), std::string::npos);
  EXPECT_NE(errs[2].find("'fd00::/129' is not an address or network"), std::string::npos);
}

TEST_F(ConfigSmtp, AnonymousOnlyOnSmtp) {
  auto errs = errors_of(with_base(R"([[listener]]
protocol = "imap"
listen = "127.0.0.1:1144"
upstream = "outlook.office365.com:993"
anonymous_account = "alice@contoso.com"
allow_from = ["127.0.0.1"]
)"));
  ASSERT_EQ(errs.size(), 1u);
  EXPECT_NE(errs[0].find("only SMTP listeners"), std::string::npos);
}

TEST_F(ConfigSmtp, ValidAnonymousListenerAndDefaults) {
  auto r = load_string(with_base(R"([[listener]]
protocol = "smtp"
listen = "127.0.0.1:1587"
upstream = "smtp.office365.com:587"
ehlo_name = "relay.contoso.com"
anonymous_account = "alice@contoso.com"
allow_from = ["192.168.10.0/24", "fd00::/8", "10.1.2.3"]
)"), "test.toml");
  ASSERT_TRUE(r.ok()) << (r.errors.empty() ? "" : r.errors[0].to_string());
  const listener& l = r.cfg.listeners[0];
  EXPECT_EQ(l.upstream_tls, upstream_tls_mode::starttls);  // the SMTP default
  EXPECT_EQ(l.ehlo_name, "relay.contoso.com");
  EXPECT_TRUE(l.allows_anonymous("192.168.10.77"));
  EXPECT_TRUE(l.allows_anonymous("::ffff:192.168.10.1"));
  EXPECT_FALSE(l.allows_anonymous("192.168.11.1"));
  EXPECT_TRUE(l.allows_anonymous("fd12::1"));
  EXPECT_FALSE(l.allows_anonymous("fe80::1"));
  EXPECT_TRUE(l.allows_anonymous("10.1.2.3"));
  EXPECT_FALSE(l.allows_anonymous("10.1.2.4"));
  EXPECT_EQ(r.cfg.listeners[1].upstream_tls, upstream_tls_mode::implicit);  // IMAP default
}

TEST_F(ConfigSmtp, AllowedFromPatterns) {
  auto errs = errors_of(with_base(R"([[account]]
login = "bob@contoso.com"
provider = "contoso"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
allowed_from = ["bob@contoso.com", "x*y@contoso.com", "<bob@contoso.com>", "nobody"]
)"));
  ASSERT_EQ(errs.size(), 3u);
  EXPECT_NE(errs[0].find("'x*y@contoso.com' is not an address"), std::string::npos);
  EXPECT_NE(errs[1].find("'<bob@contoso.com>' is not an address"), std::string::npos);
  EXPECT_NE(errs[2].find("'nobody' is not an address"), std::string::npos);
  auto r = load_string(with_base(R"([[account]]
login = "bob@contoso.com"
provider = "contoso"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g"
allowed_from = ["bob@contoso.com", "*@fabrikam.com"]
)"), "test.toml");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r.cfg.accounts[0].allowed_from,
            (std::vector<std::string>{"bob@contoso.com", "*@fabrikam.com"}));
  EXPECT_TRUE(r.cfg.accounts[1].allowed_from.empty());
}

}  // namespace
}  // namespace xo::config::test
