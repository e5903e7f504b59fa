// Delegated grants: PKCE, state, the authorize URL, scopes, peek_claims, and each token request
// against a local Beast HTTPS server on 127.0.0.1:0 (scripted answers; the requests it saw are
// checked field by field).
#include "auth/delegated.hpp"

#include "auth/client_credentials.hpp"
#include "common/base64.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/url/params_view.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/url_view.hpp>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

namespace xo::auth {
namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using namespace std::chrono_literals;
using config::flow_kind;

config::provider provider() {
  config::provider p;
  p.name = "contoso";
  p.tenant = "contoso.onmicrosoft.com";
  p.client_id = "11111111-2222-3333-4444-555555555555";
  return p;
}

bool all_of_charset(std::string_view s, std::string_view extra) {
  for (char c : s) {
    const bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (!alnum && extra.find(c) == std::string_view::npos) return false;
  }
  return true;
}

// ---- PKCE and state ----------------------------------------------------------------------------

// RFC 7636 Appendix B (also: printf %s VERIFIER | openssl dgst -sha256 -binary | basenc
// --base64url).
TEST(Pkce, Rfc7636AppendixB) {
  EXPECT_EQ(pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
}

TEST(Pkce, FreshVerifierAndItsChallenge) {
  std::set<std::string> seen;
  for (int i = 0; i < 50; ++i) {
    auto p = make_pkce();
    const auto v = p.verifier.reveal();
    EXPECT_EQ(v.size(), 86u);  // 64 bytes, base64url
    EXPECT_GE(v.size(), 43u);
    EXPECT_LE(v.size(), 128u);
    EXPECT_TRUE(all_of_charset(v, "-._~")) << v;  // RFC 7636 §4.1 unreserved
    EXPECT_EQ(p.challenge, pkce_challenge(v));
    EXPECT_EQ(p.challenge.size(), 43u);
    EXPECT_TRUE(all_of_charset(p.challenge, "-_")) << p.challenge;
    EXPECT_TRUE(seen.insert(std::string{v}).second);
  }
  EXPECT_EQ(fmt::format("{}", make_pkce().verifier), "[redacted]");
}

TEST(RandomToken, UniqueUrlSafe256Bits) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    auto t = random_token();
    EXPECT_EQ(t.size(), 43u);  // 32 bytes, base64url without padding
    EXPECT_TRUE(all_of_charset(t, "-_")) << t;
    EXPECT_TRUE(seen.insert(t).second) << t;
  }
}

// ---- scopes and the authorize URL --------------------------------------------------------------

TEST(ScopeFor, DefaultsPerFlowAndOverride) {
  auto p = provider();
  EXPECT_EQ(scope_for(p, flow_kind::client_credentials), default_app_scope);
  EXPECT_EQ(scope_for(p, flow_kind::client_credentials), "https://outlook.office365.com/.default");
  for (auto f : {flow_kind::authorization_code, flow_kind::device_code, flow_kind::password}) {
    EXPECT_EQ(scope_for(p, f), default_delegated_scope);
    EXPECT_TRUE(scope_for(p, f).starts_with("offline_access "));
  }
  p.scopes = {"offline_access", "https://outlook.office365.com/IMAP.AccessAsUser.All"};
  for (auto f : {flow_kind::client_credentials, flow_kind::authorization_code,
                 flow_kind::device_code, flow_kind::password})
    EXPECT_EQ(scope_for(p, f),
              "offline_access https://outlook.office365.com/IMAP.AccessAsUser.All");
}

std::map<std::string, std::string> query_of(const boost::urls::url_view& u) {
  std::map<std::string, std::string> out;
  for (auto q : u.params()) {
    EXPECT_TRUE(q.has_value) << q.key;
    EXPECT_TRUE(out.emplace(q.key, q.value).second) << "repeated " << q.key;
  }
  return out;
}

TEST(AuthorizeUrl, EveryParameterEncodedAndPresent) {
  auto p = provider();
  const std::string redirect = "http://localhost:8025/sso/oauth_callback";
  const std::string state = "st-ate_123";
  const std::string challenge = "E9Melhoa2OwvFrEkgJXmHyR4ThtrKRQbFM5ypJwcZcM";
  const std::string hint = "alice+tag@contoso.com";
  const auto s = authorize_url(p, flow_kind::authorization_code, redirect, state, challenge, hint);
  auto parsed = boost::urls::parse_uri(s);
  ASSERT_TRUE(parsed) << s;
  const auto& u = *parsed;
  EXPECT_EQ(u.scheme(), "https");
  EXPECT_EQ(u.host(), "login.microsoftonline.com");
  EXPECT_FALSE(u.has_port());
  EXPECT_EQ(u.path(), "/contoso.onmicrosoft.com/oauth2/v2.0/authorize");
  EXPECT_FALSE(u.has_fragment());
  const std::map<std::string, std::string> want{
      {"client_id", p.client_id},
      {"response_type", "code"},
      {"redirect_uri", redirect},
      {"response_mode", "query"},
      {"scope", std::string{default_delegated_scope}},
      {"state", state},
      {"code_challenge", challenge},
      {"code_challenge_method", "S256"},
      {"login_hint", hint},
  };
  EXPECT_EQ(query_of(u), want);
  // Nothing a form decoder could misread: no literal '+', space, '/', ':' or '@' in the query.
  const std::string q{u.encoded_query()};
  EXPECT_EQ(q.find_first_of("+ /:@"), std::string::npos) << q;
  EXPECT_NE(q.find("login_hint=alice%2Btag%40contoso.com"), std::string::npos) << q;
  EXPECT_NE(q.find("redirect_uri=http%3A%2F%2Flocalhost%3A8025%2Fsso%2Foauth_callback"),
            std::string::npos)
      << q;
}

TEST(AuthorizeUrl, LoginHintOptionalScopesConfiguredAuthorityKept) {
  auto p = provider();
  p.authority = "https://127.0.0.1:8443";
  p.tenant = "organizations";
  p.scopes = {"offline_access", "https://outlook.office.com/IMAP.AccessAsUser.All"};
  const auto s = authorize_url(p, flow_kind::authorization_code, "http://localhost/cb", "s",
                               "c", "");
  auto parsed = boost::urls::parse_uri(s);
  ASSERT_TRUE(parsed) << s;
  EXPECT_EQ(parsed->host(), "127.0.0.1");
  EXPECT_EQ(parsed->port_number(), 8443);
  EXPECT_EQ(parsed->path(), "/organizations/oauth2/v2.0/authorize");
  auto q = query_of(*parsed);
  EXPECT_EQ(q.size(), 8u);
  EXPECT_FALSE(q.contains("login_hint"));
  EXPECT_EQ(q["scope"], "offline_access https://outlook.office.com/IMAP.AccessAsUser.All");
  EXPECT_EQ(q["redirect_uri"], "http://localhost/cb");
}

// ---- peek_claims -------------------------------------------------------------------------------

secret make_jwt(std::string_view header, std::string_view claims, std::string_view sig = "c2ln") {
  return secret{base64url_encode(header) + "." + base64url_encode(claims) + "." +
                std::string{sig}};
}

TEST(PeekClaims, ReadsAnAccessToken) {
  auto c = peek_claims(make_jwt(
      R"({"typ":"JWT","alg":"RS256","x5t":"abc"})",
      R"({"aud":"https://outlook.office.com","iss":"https://sts.windows.net/t/","tid":"9188040d-6c67-4c5b-b112-36a304b66dad","oid":"00000000-0000-0000-0000-000000000042","upn":"alice@contoso.com","scp":"IMAP.AccessAsUser.All SMTP.Send","exp":1700003600,"iat":1700000000})"));
  ASSERT_TRUE(c);
  EXPECT_EQ(c->aud, "https://outlook.office.com");
  EXPECT_EQ(c->tid, "9188040d-6c67-4c5b-b112-36a304b66dad");
  EXPECT_EQ(c->oid, "00000000-0000-0000-0000-000000000042");
  EXPECT_EQ(c->upn, "alice@contoso.com");
  EXPECT_EQ(c->scp, "IMAP.AccessAsUser.All SMTP.Send");
  EXPECT_TRUE(c->roles.empty());
  EXPECT_EQ(c->exp, 1700003600);
}

TEST(PeekClaims, AppTokenRolesAudienceArrayAndFallbackName) {
  auto c = peek_claims(make_jwt(
      R"({"alg":"none"})",
      R"({"aud":["https://outlook.office365.com","x"],"roles":["IMAP.AccessAsApp",7,"SMTP.SendAsApp"],"exp":"1700003600","preferred_username":"bob@contoso.com"})",
      ""));
  ASSERT_TRUE(c);
  EXPECT_EQ(c->aud, "https://outlook.office365.com");
  EXPECT_EQ(c->roles, (std::vector<std::string>{"IMAP.AccessAsApp", "SMTP.SendAsApp"}));
  EXPECT_EQ(c->exp, 1700003600);
  EXPECT_EQ(c->upn, "bob@contoso.com");
  EXPECT_TRUE(c->scp.empty());
}

TEST(PeekClaims, WhatIsNotAJwt) {
  EXPECT_FALSE(peek_claims(secret{}));
  EXPECT_FALSE(peek_claims(secret{"opaque-token"}));
  EXPECT_FALSE(peek_claims(secret{"a.b"}));
  EXPECT_FALSE(peek_claims(secret{"a.b.c.d.e"}));  // JWE
  EXPECT_FALSE(peek_claims(secret{"!!!.???.sig"}));
  EXPECT_FALSE(peek_claims(make_jwt(R"({"alg":"none"})", "[1,2]")));
  EXPECT_FALSE(peek_claims(make_jwt(R"({"alg":"none"})", "not json")));
  EXPECT_FALSE(peek_claims(make_jwt("not json", R"({"aud":"x"})")));
  // Standard base64 characters are not base64url.
  EXPECT_FALSE(peek_claims(secret{base64_encode(R"({"alg":"none"})") + "." +
                                  base64url_encode(R"({"aud":"x"})") + ".s"}));
}

// ---- the requests, against a local HTTPS server -------------------------------------------------

struct pki {
  std::string cert_pem;
  std::string key_pem;
};

pki make_server_cert() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("xo idp"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509_set_pubkey(x, key);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
  X509_EXTENSION* ext =
      X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name, const_cast<char*>("IP:127.0.0.1"));
  X509_add_ext(x, ext, -1);
  X509_EXTENSION_free(ext);
  X509_sign(x, key, EVP_sha256());
  auto pem = [](auto write) {
    BIO* b = BIO_new(BIO_s_mem());
    write(b);
    char* data = nullptr;
    long n = BIO_get_mem_data(b, &data);
    std::string s(data, static_cast<std::size_t>(n));
    BIO_free(b);
    return s;
  };
  pki out{pem([&](BIO* b) { PEM_write_bio_X509(b, x); }), pem([&](BIO* b) {
            PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
          })};
  X509_free(x);
  EVP_PKEY_free(key);
  return out;
}

struct canned {
  unsigned status;
  std::string body;
};

struct seen_request {
  std::string target;
  std::map<std::string, std::string> form;  // decoded
};

std::map<std::string, std::string> decode_form(const std::string& body) {
  std::map<std::string, std::string> out;
  for (auto q : boost::urls::params_view(body)) out[q.key] = q.value;
  return out;
}

class DelegatedRequests : public ::testing::Test {
 protected:
  DelegatedRequests() {
    auto p = make_server_cert();
    server_ctx_.use_certificate_chain(asio::buffer(p.cert_pem));
    server_ctx_.use_private_key(asio::buffer(p.key_pem), ssl::context::pem);
    ca_file_ = std::filesystem::temp_directory_path() /
               fmt::format("xo_delegated_test_{}.pem", ::getpid());
    std::ofstream{ca_file_} << p.cert_pem;
    acceptor_.open(tcp::v4());
    acceptor_.bind({asio::ip::make_address("127.0.0.1"), 0});
    acceptor_.listen();
    provider_ = provider();
    provider_.authority = fmt::format("https://127.0.0.1:{}", acceptor_.local_endpoint().port());
    provider_.tenant = "contoso";
    http_ = std::make_unique<https_client>(io_.get_executor(), ca_file_.string(), 5s);
  }
  ~DelegatedRequests() override { std::filesystem::remove(ca_file_); }

  // Serves one connection with the next canned answer. A member-function coroutine, not a
  // lambda (CP.51).
  static awaitable<void> serve(DelegatedRequests* self) {
    {
      auto [aec, sock] = co_await self->acceptor_.async_accept(use_nothrow);
      if (aec) co_return;
      ssl::stream<beast::tcp_stream> s{std::move(sock), self->server_ctx_};
      beast::get_lowest_layer(s).expires_after(5s);
      auto [hec] = co_await s.async_handshake(ssl::stream_base::server, use_nothrow);
      if (hec) co_return;
      beast::flat_buffer buf;
      http::request<http::string_body> req;
      auto [rec, n] = co_await http::async_read(s, buf, req, use_nothrow);
      if (rec) co_return;
      self->seen_.push_back({std::string{req.target()}, decode_form(req.body())});
      canned a = std::move(self->answers_.front());
      self->answers_.pop_front();
      http::response<http::string_body> res{static_cast<http::status>(a.status), 11};
      res.set(http::field::content_type, "application/json; charset=utf-8");
      res.body() = std::move(a.body);
      res.prepare_payload();
      co_await http::async_write(s, res, use_nothrow);
      co_await s.async_shutdown(use_nothrow);
    }
  }

  // Runs one request coroutine to completion against the next canned answer.
  template <class T>
  T run(awaitable<T> op) {
    asio::co_spawn(io_, serve(this), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
    std::optional<T> out;
    asio::co_spawn(io_, std::move(op), [&](std::exception_ptr e, T v) {
      if (e) std::rethrow_exception(e);
      out = std::move(v);
    });
    io_.run();
    io_.restart();
    return std::move(out.value());
  }

  std::string token_path() const { return "/contoso/oauth2/v2.0/token"; }

  asio::io_context io_;
  ssl::context server_ctx_{ssl::context::tls_server};
  tcp::acceptor acceptor_{io_};
  std::filesystem::path ca_file_;
  std::unique_ptr<https_client> http_;
  config::provider provider_;
  std::deque<canned> answers_;
  std::vector<seen_request> seen_;
};

constexpr const char* token_answer =
    R"({"token_type":"Bearer","scope":"https://outlook.office.com/IMAP.AccessAsUser.All","expires_in":3600,"access_token":"at-1","refresh_token":"rt-2"})";

TEST_F(DelegatedRequests, RedeemCode) {
  answers_.push_back({200, token_answer});
  provider_.client_secret = secret{"s&cret"};
  client_auth client{provider_};
  const auto t0 = steady::now();
  auto r = run(redeem_code(*http_, provider_, client, flow_kind::authorization_code,
                           secret{"code+1"}, "http://localhost:8025/sso/oauth_callback",
                           secret{"verifier-verifier-verifier-verifier-verifier"}));
  ASSERT_TRUE(r.ok()) << r.error.summary;
  EXPECT_EQ(r.token->value.reveal(), "at-1");
  EXPECT_EQ(r.token->refresh_token.reveal(), "rt-2");
  EXPECT_EQ(r.token->scope, "https://outlook.office.com/IMAP.AccessAsUser.All");
  // Expiry counts from the request's start (before the answer arrived).
  EXPECT_GE(r.token->expires_at, t0 + 3600s);
  EXPECT_LE(r.token->expires_at, steady::now() + 3600s);
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0].target, token_path());
  const std::map<std::string, std::string> want{
      {"grant_type", "authorization_code"},
      {"client_id", provider_.client_id},
      {"client_secret", "s&cret"},
      {"code", "code+1"},
      {"redirect_uri", "http://localhost:8025/sso/oauth_callback"},
      {"code_verifier", "verifier-verifier-verifier-verifier-verifier"},
      {"scope", std::string{default_delegated_scope}},
  };
  EXPECT_EQ(seen_[0].form, want);
}

TEST_F(DelegatedRequests, RefreshWithoutRotation) {
  answers_.push_back({200, R"({"token_type":"Bearer","expires_in":"4000","access_token":"at-3"})"});
  provider_.scopes = {"offline_access", "https://outlook.office.com/SMTP.Send"};
  client_auth client{provider_};  // public client
  auto r = run(refresh(*http_, provider_, client, flow_kind::device_code, secret{"rt-1"}));
  ASSERT_TRUE(r.ok()) << r.error.summary;
  EXPECT_EQ(r.token->value.reveal(), "at-3");
  EXPECT_TRUE(r.token->refresh_token.empty());  // not rotated: the caller keeps the old one
  const std::map<std::string, std::string> want{
      {"grant_type", "refresh_token"},
      {"client_id", provider_.client_id},
      {"refresh_token", "rt-1"},
      {"scope", "offline_access https://outlook.office.com/SMTP.Send"},
  };
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0].form, want);
}

TEST_F(DelegatedRequests, RefreshTokenExpiredIsReauth) {
  answers_.push_back({400, R"({"error":"invalid_grant","error_description":"AADSTS700082: The refresh token has expired due to inactivity.\r\nTrace ID: 1","error_codes":[700082],"trace_id":"t-1","correlation_id":"c-1"})"});
  client_auth client{provider_};
  auto r = run(refresh(*http_, provider_, client, flow_kind::authorization_code,
                       secret{"SECRET-RT"}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::reauth);
  EXPECT_EQ(r.error.error, "invalid_grant");
  EXPECT_EQ(r.error.aadsts, 700082);
  EXPECT_EQ(r.error.summary.find("SECRET"), std::string::npos);
}

TEST_F(DelegatedRequests, PasswordGrantAndWrongPassword) {
  answers_.push_back({200, token_answer});
  answers_.push_back({400, R"({"error":"invalid_grant","error_description":"AADSTS50126: Error validating credentials due to invalid username or password.","error_codes":[50126]})"});
  client_auth client{provider_};
  auto r =
      run(password_grant(*http_, provider_, client, "alice@contoso.com", secret{"pa ss&w=rd"}));
  ASSERT_TRUE(r.ok()) << r.error.summary;
  const std::map<std::string, std::string> want{
      {"grant_type", "password"},          {"client_id", provider_.client_id},
      {"username", "alice@contoso.com"},   {"password", "pa ss&w=rd"},
      {"scope", std::string{default_delegated_scope}},
  };
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0].form, want);

  r = run(password_grant(*http_, provider_, client, "alice@contoso.com", secret{"wrong"}));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::bad_password);
  EXPECT_EQ(r.error.aadsts, 50126);
}

TEST_F(DelegatedRequests, DeviceCodeStart) {
  answers_.push_back({200, R"({"user_code":"BCDFGHJK","device_code":"DAQAB-device","verification_uri":"https://microsoft.com/devicelogin","expires_in":900,"interval":5,"message":"To sign in, use a web browser to open the page https://microsoft.com/devicelogin and enter the code BCDFGHJK to authenticate."})"});
  provider_.client_secret = secret{"never-sent-to-devicecode"};
  client_auth client{provider_};
  auto r = run(start_device_code(*http_, provider_, client, flow_kind::device_code));
  ASSERT_TRUE(r.ok) << r.error.summary;
  EXPECT_EQ(r.ok->device_code.reveal(), "DAQAB-device");
  EXPECT_EQ(r.ok->user_code, "BCDFGHJK");
  EXPECT_EQ(r.ok->verification_uri, "https://microsoft.com/devicelogin");
  EXPECT_EQ(r.ok->expires_in, 900s);
  EXPECT_EQ(r.ok->interval, 5s);
  EXPECT_TRUE(r.ok->message.starts_with("To sign in,"));
  ASSERT_EQ(seen_.size(), 1u);
  EXPECT_EQ(seen_[0].target, "/contoso/oauth2/v2.0/devicecode");
  const std::map<std::string, std::string> want{
      {"client_id", provider_.client_id},
      {"scope", std::string{default_delegated_scope}},
  };
  EXPECT_EQ(seen_[0].form, want);
}

TEST_F(DelegatedRequests, DeviceCodeStartDefaultsAndStringNumbers) {
  answers_.push_back({200, R"({"user_code":"X","device_code":"D","verification_url":"https://v1/","expires_in":"600"})"});
  client_auth client{provider_};
  auto r = run(start_device_code(*http_, provider_, client, flow_kind::device_code));
  ASSERT_TRUE(r.ok) << r.error.summary;
  EXPECT_EQ(r.ok->verification_uri, "https://v1/");
  EXPECT_EQ(r.ok->expires_in, 600s);
  EXPECT_EQ(r.ok->interval, 5s);  // RFC 8628 §3.2 default
  EXPECT_TRUE(r.ok->message.empty());
}

TEST_F(DelegatedRequests, DeviceCodeStartErrors) {
  answers_.push_back({400, R"({"error":"invalid_request","error_description":"AADSTS90002: Tenant 'contoso' not found.","error_codes":[90002]})"});
  answers_.push_back({200, R"({"user_code":"X","verification_uri":"https://v/"})"});
  answers_.push_back({200, R"({"error":"unauthorized_client","error_codes":[700016]})"});
  answers_.push_back({503, "<html>busy</html>"});
  client_auth client{provider_};

  auto r = run(start_device_code(*http_, provider_, client, flow_kind::device_code));
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.error.kind, failure_kind::config);
  EXPECT_EQ(r.error.error, "invalid_request");
  EXPECT_EQ(r.error.aadsts, 90002);
  EXPECT_EQ(r.error.summary, "invalid_request AADSTS90002: Tenant 'contoso' not found.");

  r = run(start_device_code(*http_, provider_, client, flow_kind::device_code));
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.error.kind, failure_kind::transient);
  EXPECT_EQ(r.error.error, "invalid_response");
  EXPECT_EQ(r.error.summary, "invalid_response: HTTP 200: no device_code");

  r = run(start_device_code(*http_, provider_, client, flow_kind::device_code));
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.error.kind, failure_kind::config);
  EXPECT_EQ(r.error.error, "unauthorized_client");

  r = run(start_device_code(*http_, provider_, client, flow_kind::device_code));
  ASSERT_FALSE(r.ok);
  EXPECT_EQ(r.error.kind, failure_kind::transient);
  EXPECT_EQ(r.error.error, "http_503");
}

TEST_F(DelegatedRequests, DeviceCodePolling) {
  answers_.push_back({400, R"({"error":"authorization_pending","error_description":"AADSTS70016: OAuth 2.0 device flow error. Authorization is pending. Continue polling.","error_codes":[70016]})"});
  answers_.push_back({400, R"({"error":"slow_down","error_description":"AADSTS70016: Polling too fast.","error_codes":[70016]})"});
  answers_.push_back({400, R"({"error":"expired_token","error_description":"AADSTS70019: Verification code expired.","error_codes":[70019]})"});
  answers_.push_back({400, R"({"error":"authorization_declined","error_codes":[65004]})"});
  answers_.push_back({400, R"({"error":"bad_verification_code","error_codes":[70000]})"});
  answers_.push_back({200, token_answer});
  provider_.client_secret = secret{"s"};
  client_auth client{provider_};
  const secret device_code{"DAQAB-device"};

  auto r = run(poll_device_code(*http_, provider_, client, device_code));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::transient);
  EXPECT_EQ(r.error.error, "authorization_pending");
  EXPECT_EQ(r.error.aadsts, 70016);

  r = run(poll_device_code(*http_, provider_, client, device_code));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error.kind, failure_kind::transient);
  EXPECT_EQ(r.error.error, "slow_down");

  for (const char* end : {"expired_token", "authorization_declined", "bad_verification_code"}) {
    r = run(poll_device_code(*http_, provider_, client, device_code));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error.kind, failure_kind::reauth) << end;
    EXPECT_EQ(r.error.error, end);
  }

  r = run(poll_device_code(*http_, provider_, client, device_code));
  ASSERT_TRUE(r.ok()) << r.error.summary;
  EXPECT_EQ(r.token->refresh_token.reveal(), "rt-2");

  ASSERT_EQ(seen_.size(), 6u);
  const std::map<std::string, std::string> want{
      {"grant_type", "urn:ietf:params:oauth:grant-type:device_code"},
      {"client_id", provider_.client_id},
      {"client_secret", "s"},
      {"device_code", "DAQAB-device"},
  };
  for (const auto& s : seen_) {
    EXPECT_EQ(s.target, token_path());
    EXPECT_EQ(s.form, want);
  }
}

TEST_F(DelegatedRequests, NoAnswerIsTransient) {
  // Nobody listens on the port: the request fails before any answer.
  acceptor_.close();
  client_auth client{provider_};
  std::optional<token_result> r;
  asio::co_spawn(io_, refresh(*http_, provider_, client, flow_kind::device_code, secret{"rt"}),
                 [&](std::exception_ptr e, token_result v) {
                   if (e) std::rethrow_exception(e);
                   r = std::move(v);
                 });
  io_.run();
  ASSERT_TRUE(r);
  ASSERT_FALSE(r->ok());
  EXPECT_EQ(r->error.kind, failure_kind::transient);
  EXPECT_EQ(r->error.error, "network");
}

}  // namespace
}  // namespace xo::auth
