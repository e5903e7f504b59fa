#include "proxy/admin_pages.hpp"

#include <boost/json.hpp>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <iterator>

using namespace xo::proxy::admin_detail;
namespace json = boost::json;
using xo::auth::account_status;
using xo::auth::authorization_start;
using xo::auth::provider_status;
using xo::auth::wall_clock;
using xo::config::flow_kind;

namespace {

wall_clock::time_point at(long long unix_seconds) {
  return wall_clock::time_point{std::chrono::seconds{unix_seconds}};
}

account_status account(std::string login, flow_kind flow, std::string state) {
  account_status a;
  a.login = std::move(login);
  a.provider = "contoso";
  a.flow = flow;
  a.state = std::move(state);
  return a;
}

std::size_t count(const std::string& hay, std::string_view needle) {
  std::size_t n = 0;
  for (auto p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + 1)) ++n;
  return n;
}

}  // namespace

TEST(AdminPages, HtmlEscapeCoversTheFiveSpecialCharacters) {
  EXPECT_EQ(html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
  EXPECT_EQ(html_escape("plain text"), "plain text");
  EXPECT_EQ(html_escape(""), "");
}

TEST(AdminPages, ElementIdReplacesAtAndDot) {
  EXPECT_EQ(element_id("alice@contoso.com"), "alice-contoso-com");
  EXPECT_EQ(element_id("first.last@sub.example.org"), "first-last-sub-example-org");
  EXPECT_EQ(element_id("a b"), "a-b");
}

TEST(AdminPages, ParseFormDecodesPercentAndPlus) {
  auto f = parse_form("account=alice%40contoso.com&kind=code&csrf=ab+cd&empty=&flag");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->at("account"), "alice@contoso.com");
  EXPECT_EQ(f->at("kind"), "code");
  EXPECT_EQ(f->at("csrf"), "ab cd");
  EXPECT_EQ(f->at("empty"), "");
  EXPECT_EQ(f->at("flag"), "");
}

TEST(AdminPages, ParseFormKeepsTheFirstOfRepeatedNames) {
  auto f = parse_form("kind=code&kind=device");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->at("kind"), "code");
}

TEST(AdminPages, ParseFormRejectsBadEscapes) {
  EXPECT_FALSE(parse_form("account=%zz"));
  EXPECT_FALSE(parse_form("account=%4"));
  auto empty = parse_form("");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(empty->empty());
}

TEST(AdminPages, ParseFormReadsAnOAuthCallbackQuery) {
  auto q = parse_form("error=access_denied&error_description=AADSTS65004%3A+User+declined"
                      "&state=abc_-123");
  ASSERT_TRUE(q);
  EXPECT_EQ(q->at("error_description"), "AADSTS65004: User declined");
  EXPECT_EQ(q->at("state"), "abc_-123");
}

TEST(AdminPages, CsrfIsHexHmacSha256OfTheLabel) {
  // python3: hmac.new(b'admin-token-123', b'csrf', hashlib.sha256).hexdigest()
  EXPECT_EQ(csrf_for("admin-token-123"),
            "353951418ed64477d5ecd473ad86d9a8fe59df902693e11151bfd233c910176d");
  EXPECT_NE(csrf_for("other-token"), csrf_for("admin-token-123"));
}

TEST(AdminPages, HostAllowListForLoopbackBind) {
  auto hosts = allowed_hosts("127.0.0.1", 8025, "");
  EXPECT_TRUE(host_allowed("127.0.0.1:8025", hosts));
  EXPECT_TRUE(host_allowed("localhost:8025", hosts));
  EXPECT_TRUE(host_allowed("LOCALHOST:8025", hosts));
  EXPECT_TRUE(host_allowed("[::1]:8025", hosts));
  EXPECT_FALSE(host_allowed("localhost", hosts));
  EXPECT_FALSE(host_allowed("localhost:8026", hosts));
  EXPECT_FALSE(host_allowed("attacker.example:8025", hosts));
  EXPECT_FALSE(host_allowed("", hosts));
}

TEST(AdminPages, HostAllowListIncludesPublicBaseUrl) {
  auto hosts = allowed_hosts("::1", 9000, "https://Proxy.Example.com/xoauth");
  EXPECT_TRUE(host_allowed("[::1]:9000", hosts));
  EXPECT_TRUE(host_allowed("proxy.example.com", hosts));
  EXPECT_TRUE(host_allowed("proxy.example.com:443", hosts));
  EXPECT_FALSE(host_allowed("proxy.example.com:80", hosts));
  auto with_port = allowed_hosts("127.0.0.1", 9000, "http://mail.example.net:8443");
  EXPECT_TRUE(host_allowed("mail.example.net:8443", with_port));
  EXPECT_FALSE(host_allowed("mail.example.net", with_port));
}

TEST(AdminPages, BasePath) {
  EXPECT_EQ(base_path(""), "");
  EXPECT_EQ(base_path("https://proxy.example.com"), "");
  EXPECT_EQ(base_path("https://proxy.example.com/"), "");
  EXPECT_EQ(base_path("https://example.com/xoauth/"), "/xoauth");
}

TEST(AdminPages, ContentSecurityPolicyAllowsAuthoritiesAsFormTargets) {
  auto csp = content_security_policy({"https://login.microsoftonline.com",
                                      "http://127.0.0.1:9999", "https://login.microsoftonline.com",
                                      "not a url", "javascript:alert(1)"});
  EXPECT_EQ(csp,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' "
            "http://127.0.0.1:9999 https://login.microsoftonline.com; frame-ancestors 'none'; "
            "base-uri 'none'");
}

TEST(AdminPages, Iso8601Utc) {
  EXPECT_EQ(iso8601_utc(at(0)), "1970-01-01T00:00:00Z");
  EXPECT_EQ(iso8601_utc(at(1714566896)), "2024-05-01T12:34:56Z");
}

TEST(AdminPages, AccountJsonHasEveryFieldAndNullsForMissingTimes) {
  auto a = account("alice@contoso.com", flow_kind::authorization_code, "authorized");
  a.access_expires = at(1714566896);
  a.stored = true;
  a.token_requests = 3;
  auto o = account_json(a);
  EXPECT_EQ(o.at("login").as_string(), "alice@contoso.com");
  EXPECT_EQ(o.at("flow").as_string(), "authorization_code");
  EXPECT_EQ(o.at("state").as_string(), "authorized");
  EXPECT_EQ(o.at("access_expires").as_string(), "2024-05-01T12:34:56Z");
  EXPECT_EQ(o.at("access_expires_unix").as_int64(), 1714566896);
  EXPECT_TRUE(o.at("refreshed").is_null());
  EXPECT_TRUE(o.at("refreshed_unix").is_null());
  EXPECT_TRUE(o.at("authorized").is_null());
  EXPECT_TRUE(o.at("pending_expires").is_null());
  EXPECT_TRUE(o.at("stored").as_bool());
  EXPECT_EQ(o.at("token_requests").to_number<std::uint64_t>(), 3u);
  for (const char* k : {"provider", "last_error", "user_code", "verification_uri"})
    EXPECT_TRUE(o.contains(k)) << k;
}

TEST(AdminPages, StartJson) {
  authorization_start s;
  s.ok = true;
  s.verification_uri = "https://microsoft.com/devicelogin";
  s.user_code = "ABCD-EFGH";
  s.expires_in = std::chrono::seconds{900};
  auto o = start_json(s);
  EXPECT_TRUE(o.at("ok").as_bool());
  EXPECT_EQ(o.at("user_code").as_string(), "ABCD-EFGH");
  EXPECT_EQ(o.at("expires_in").as_int64(), 900);
  for (const char* k : {"error", "authorize_url", "verification_uri", "message"})
    EXPECT_TRUE(o.contains(k)) << k;
}

TEST(AdminPages, ReadyzCountsStates) {
  std::vector<account_status> all{account("a@x.com", flow_kind::authorization_code, "authorized"),
                                  account("b@x.com", flow_kind::device_code, "authorized"),
                                  account("c@x.com", flow_kind::client_credentials, "app_only")};
  auto o = readyz_json(true, all);
  EXPECT_EQ(json::serialize(o), R"({"ready":true,"accounts":{"app_only":1,"authorized":2}})");
  EXPECT_EQ(json::serialize(readyz_json(false, {})), R"({"ready":false,"accounts":{}})");
}

TEST(AdminPages, StatusPageHasStableIdsAndFormsPerFlow) {
  std::vector<provider_status> providers{{"contoso", "contoso.onmicrosoft.com", "cid-1",
                                          "client secret (file /x)",
                                          "http://localhost:8025/sso/oauth_callback"}};
  std::vector<account_status> accounts{
      account("alice@contoso.com", flow_kind::authorization_code, "not_authorized"),
      account("bob@contoso.com", flow_kind::device_code, "authorized"),
      account("app@contoso.com", flow_kind::client_credentials, "app_only"),
      account("*@contoso.com", flow_kind::authorization_code, "not_authorized")};
  auto html = status_page(providers, accounts, "csrf-value");
  EXPECT_NE(html.find("<tr id=\"account-alice-contoso-com\">"), std::string::npos);
  EXPECT_NE(html.find("<td class=\"state\">not_authorized</td>"), std::string::npos);
  EXPECT_NE(html.find("id=\"authorize-alice-contoso-com\">Authorize</button>"), std::string::npos);
  EXPECT_NE(html.find("id=\"device-alice-contoso-com\""), std::string::npos);
  EXPECT_NE(html.find("id=\"device-bob-contoso-com\""), std::string::npos);
  EXPECT_EQ(html.find("id=\"authorize-bob-contoso-com\""), std::string::npos);
  EXPECT_EQ(html.find("authorize-app-contoso-com"), std::string::npos);
  EXPECT_EQ(html.find("authorize-*-contoso-com"), std::string::npos);
  EXPECT_EQ(count(html, "<form method=\"post\" action=\"/authorize\">"), 2u);
  EXPECT_EQ(count(html, "<input type=\"hidden\" name=\"csrf\" value=\"csrf-value\">"), 2u);
  EXPECT_NE(html.find("http://localhost:8025/sso/oauth_callback"), std::string::npos);
  EXPECT_EQ(html.find("http-equiv=\"refresh\""), std::string::npos);
}

TEST(AdminPages, StatusPageRefreshesWhileAuthorizingAndShowsTheDeviceCode) {
  auto a = account("bob@contoso.com", flow_kind::device_code, "authorizing");
  a.user_code = "ABCD-EFGH";
  a.verification_uri = "https://microsoft.com/devicelogin";
  a.pending_expires = at(1714566896);
  auto html = status_page({}, {a}, "c");
  EXPECT_NE(html.find("<meta http-equiv=\"refresh\" content=\"5\">"), std::string::npos);
  EXPECT_NE(html.find("ABCD-EFGH"), std::string::npos);
  EXPECT_NE(html.find("href=\"https://microsoft.com/devicelogin\""), std::string::npos);
  EXPECT_NE(html.find("2024-05-01T12:34:56Z"), std::string::npos);
}

TEST(AdminPages, StatusPageEscapesEverything) {
  auto a = account("eve@contoso.com", flow_kind::authorization_code, "needs_authorization");
  a.last_error = "<script>alert('x')</script>";
  a.provider = "\"><img src=x>";
  std::vector<provider_status> providers{{"<b>p</b>", "t&t", "c\"id", "x", "http://a/?a=1&b=2"}};
  auto html = status_page(providers, {a}, "\"csrf");
  EXPECT_EQ(html.find("<script>"), std::string::npos);
  EXPECT_EQ(html.find("<img"), std::string::npos);
  EXPECT_EQ(html.find("<b>p</b>"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("t&amp;t"), std::string::npos);
  EXPECT_NE(html.find("value=\"&quot;csrf\""), std::string::npos);
  EXPECT_NE(html.find("http://a/?a=1&amp;b=2"), std::string::npos);
}

TEST(AdminPages, DevicePageLinksOnlyHttpUrls) {
  authorization_start s;
  s.ok = true;
  s.verification_uri = "https://microsoft.com/devicelogin";
  s.user_code = "ABCD-EFGH";
  s.message = "To sign in, use a web browser & enter the code";
  s.expires_in = std::chrono::seconds{900};
  auto html = device_page("bob@contoso.com", s, at(0));
  EXPECT_NE(html.find("<a id=\"verification-uri\" href=\"https://microsoft.com/devicelogin\">"),
            std::string::npos);
  EXPECT_NE(html.find("<code id=\"user-code\">ABCD-EFGH</code>"), std::string::npos);
  EXPECT_NE(html.find("15 minute(s), at 1970-01-01T00:15:00Z"), std::string::npos);
  EXPECT_NE(html.find("web browser &amp; enter"), std::string::npos);
  EXPECT_NE(html.find("href=\"/\""), std::string::npos);

  s.verification_uri = "javascript:alert(1)";
  auto evil = device_page("bob@contoso.com", s, at(0));
  EXPECT_EQ(evil.find("href=\"javascript"), std::string::npos);
}

TEST(AdminPages, MessagePageEscapes) {
  auto html = message_page("Authorization failed", "AADSTS70000: <bad> & \"worse\"");
  EXPECT_NE(html.find("<h1>Authorization failed</h1>"), std::string::npos);
  EXPECT_NE(html.find("AADSTS70000: &lt;bad&gt; &amp; &quot;worse&quot;"), std::string::npos);
  EXPECT_NE(html.find("<a id=\"back\" href=\"/\">"), std::string::npos);
  EXPECT_EQ(html.find("refresh"), std::string::npos);
}

namespace {

struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    char tmpl[] = "/tmp/xo-admin-XXXXXX";
    path = mkdtemp(tmpl);
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
};

unsigned mode_of(const std::filesystem::path& p) {
  struct stat sb {};
  if (::stat(p.c_str(), &sb) != 0) return 0;
  return sb.st_mode & 0777;
}

std::string read_all(const std::filesystem::path& p) {
  std::ifstream in{p, std::ios::binary};
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST(AdminPages, WriteFileAtomicCreatesPrivateDirAndFile) {
  temp_dir t;
  const auto dir = t.path / "state" / "sub";
  EXPECT_EQ(write_file_atomic(dir, "admin.json", "{\"a\":1}\n"), "");
  EXPECT_EQ(read_all(dir / "admin.json"), "{\"a\":1}\n");
  EXPECT_EQ(mode_of(dir), 0700u);
  EXPECT_EQ(mode_of(dir / "admin.json"), 0600u);
  EXPECT_EQ(write_file_atomic(dir, "admin.json", "second"), "");
  EXPECT_EQ(read_all(dir / "admin.json"), "second");
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++files;
  EXPECT_EQ(files, 1u) << "no temporary file left behind";
}

TEST(AdminPages, WriteFileAtomicReportsErrors) {
  temp_dir t;
  std::ofstream{t.path / "plain"} << "x";
  EXPECT_NE(write_file_atomic(t.path / "plain", "admin.json", "x"), "");
}

TEST(AdminPages, RemoveIfUnchangedLeavesAReplacedFile) {
  temp_dir t;
  ASSERT_EQ(write_file_atomic(t.path, "admin.json", "mine"), "");
  ASSERT_EQ(write_file_atomic(t.path, "admin.json", "theirs"), "");
  EXPECT_FALSE(remove_if_unchanged(t.path / "admin.json", "mine"));
  EXPECT_TRUE(std::filesystem::exists(t.path / "admin.json"));
  EXPECT_TRUE(remove_if_unchanged(t.path / "admin.json", "theirs"));
  EXPECT_FALSE(std::filesystem::exists(t.path / "admin.json"));
  EXPECT_FALSE(remove_if_unchanged(t.path / "admin.json", "theirs"));
}
