// https_client against a local Beast HTTPS server on 127.0.0.1:0 with a certificate made on the
// fly (no files from outside the test, no network), plus its pure helpers.
#include "auth/https_client.hpp"

#include "auth/client_credentials.hpp"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <unistd.h>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace xo::auth {
namespace {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using namespace std::chrono_literals;

// ---- helpers ---------------------------------------------------------------------------------

TEST(HttpsUrl, ParsesHostPortAndTarget) {
  auto u = detail::parse_https_url("https://login.microsoftonline.com/contoso/oauth2/v2.0/token");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "login.microsoftonline.com");
  EXPECT_EQ(u->port, 443);
  EXPECT_EQ(u->target, "/contoso/oauth2/v2.0/token");
  EXPECT_FALSE(u->ip_literal);

  u = detail::parse_https_url("HTTPS://127.0.0.1:8443/t?x=1#frag");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 8443);
  EXPECT_EQ(u->target, "/t?x=1");
  EXPECT_TRUE(u->ip_literal);

  u = detail::parse_https_url("https://[::1]:9000");
  ASSERT_TRUE(u);
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->target, "/");
  EXPECT_TRUE(u->ip_literal);
}

TEST(HttpsUrl, RejectsWhatIsNotAnHttpsUrl) {
  for (const char* bad : {"", "http://example.com/", "example.com/x", "https://", "https:///x",
                          "https://user:pw@example.com/", "https://example.com:0/",
                          "https://example.com:99999/", "https://exa mple.com/", "ftp://x/"})
    EXPECT_FALSE(detail::parse_https_url(bad)) << bad;
}

TEST(FormEncoding, PercentEncodesEverythingButUnreserved) {
  std::vector<form_field> f;
  f.push_back({"grant_type", secret{"client_credentials"}});
  f.push_back({"client_secret", secret{"a+b&c=d e%f/~._-"}});
  f.push_back({"scope", secret{"https://outlook.office365.com/.default offline_access"}});
  f.push_back({"na me", secret{""}});
  EXPECT_EQ(detail::encode_form(f).reveal(),
            "grant_type=client_credentials&client_secret=a%2Bb%26c%3Dd%20e%25f%2F~._-"
            "&scope=https%3A%2F%2Foutlook.office365.com%2F.default%20offline_access&na%20me=");
  EXPECT_EQ(detail::encode_form({}).reveal(), "");
}

TEST(RetryAfter, ParsesDeltaSecondsOnly) {
  EXPECT_EQ(detail::parse_retry_after("60"), 60s);
  EXPECT_EQ(detail::parse_retry_after(" 0 "), 0s);
  EXPECT_EQ(detail::parse_retry_after("999999"), 3600s);  // capped
  EXPECT_FALSE(detail::parse_retry_after(""));
  EXPECT_FALSE(detail::parse_retry_after("-1"));
  EXPECT_FALSE(detail::parse_retry_after("1.5"));
  EXPECT_FALSE(detail::parse_retry_after("Fri, 31 Dec 1999 23:59:59 GMT"));
  EXPECT_FALSE(detail::parse_retry_after("99999999999999999999"));
}

// ---- a local HTTPS server --------------------------------------------------------------------

struct pki {
  std::string cert_pem;
  std::string key_pem;
};

// Self-signed P-256 certificate with the given subjectAltName ("DNS:localhost,IP:127.0.0.1").
pki make_cert(const char* san) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("xo test"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509_set_pubkey(x, key);
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, x, x, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name, san);
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

struct seen_request {
  std::string method, target, content_type, accept, user_agent, host, body;
};

struct server_behaviour {
  unsigned status = 200;
  std::string body = R"({"ok":true})";
  std::string retry_after;
  std::string request_id;
  bool never_answer = false;
};

class HttpsClient : public ::testing::Test {
 protected:
  void start(const char* san) {
    auto p = make_cert(san);
    server_ctx.use_certificate_chain(asio::buffer(p.cert_pem));
    server_ctx.use_private_key(asio::buffer(p.key_pem), ssl::context::pem);
    ca_file = std::filesystem::temp_directory_path() /
              ("xo_https_test_" + std::to_string(::getpid()) + ".pem");
    std::ofstream{ca_file} << p.cert_pem;
    acceptor.open(tcp::v4());
    acceptor.bind({asio::ip::make_address("127.0.0.1"), 0});
    acceptor.listen();
    port = acceptor.local_endpoint().port();
    asio::co_spawn(io, serve(this), [](std::exception_ptr e) {
      if (e) std::rethrow_exception(e);
    });
  }
  ~HttpsClient() override {
    if (!ca_file.empty()) std::filesystem::remove(ca_file);
  }

  // One connection, one request. A member-function coroutine, not a lambda (CP.51).
  static awaitable<void> serve(HttpsClient* self) {
    auto [aec, sock] = co_await self->acceptor.async_accept(use_nothrow);
    if (aec) co_return;
    ssl::stream<beast::tcp_stream> s{std::move(sock), self->server_ctx};
    beast::get_lowest_layer(s).expires_after(5s);
    auto [hec] = co_await s.async_handshake(ssl::stream_base::server, use_nothrow);
    if (hec) co_return;
    beast::flat_buffer buf;
    http::request<http::string_body> req;
    auto [rec, n] = co_await http::async_read(s, buf, req, use_nothrow);
    if (rec) co_return;
    self->seen = seen_request{std::string{req.method_string()},
                              std::string{req.target()},
                              std::string{req[http::field::content_type]},
                              std::string{req[http::field::accept]},
                              std::string{req[http::field::user_agent]},
                              std::string{req[http::field::host]},
                              req.body()};
    if (self->behaviour.never_answer) {
      co_await sleep_for(2s);
      co_return;
    }
    http::response<http::string_body> res{static_cast<http::status>(self->behaviour.status), 11};
    res.set(http::field::content_type, "application/json");
    if (!self->behaviour.retry_after.empty())
      res.set(http::field::retry_after, self->behaviour.retry_after);
    if (!self->behaviour.request_id.empty()) res.set("x-ms-request-id", self->behaviour.request_id);
    res.body() = self->behaviour.body;
    res.prepare_payload();
    co_await http::async_write(s, res, use_nothrow);
    co_await s.async_shutdown(use_nothrow);
  }

  http_outcome post(https_client& c, std::string url, std::vector<form_field> fields) {
    std::optional<http_outcome> out;
    asio::co_spawn(io, c.post_form(std::move(url), std::move(fields)),
                   [&](std::exception_ptr e, http_outcome o) {
                     if (e) std::rethrow_exception(e);
                     out = std::move(o);
                     done_at = std::chrono::steady_clock::now();
                   });
    io.run();
    return std::move(out.value());
  }

  std::string url(const std::string& host) {
    return "https://" + host + ":" + std::to_string(port) + "/tenant/oauth2/v2.0/token";
  }

  asio::io_context io;
  ssl::context server_ctx{ssl::context::tls_server};
  tcp::acceptor acceptor{io};
  std::uint16_t port = 0;
  std::filesystem::path ca_file;
  server_behaviour behaviour;
  std::optional<seen_request> seen;
  std::chrono::steady_clock::time_point done_at;
};

TEST_F(HttpsClient, PostsTheFormAndReadsTheAnswer) {
  start("DNS:localhost,IP:127.0.0.1");
  behaviour.retry_after = "7";
  behaviour.request_id = "abc-123";
  https_client c{io.get_executor(), ca_file.string(), 5s};
  auto o = post(c, url("127.0.0.1"), {{"a", secret{"1 2"}}, {"b", secret{"&=+"}}});
  ASSERT_TRUE(o.response) << o.failure.what;
  EXPECT_EQ(o.response->status, 200u);
  EXPECT_EQ(o.response->body, R"({"ok":true})");
  EXPECT_EQ(o.response->retry_after, 7s);
  EXPECT_EQ(o.response->request_id, "abc-123");
  ASSERT_TRUE(seen);
  EXPECT_EQ(seen->method, "POST");
  EXPECT_EQ(seen->target, "/tenant/oauth2/v2.0/token");
  EXPECT_EQ(seen->content_type, "application/x-www-form-urlencoded");
  EXPECT_EQ(seen->accept, "application/json");
  EXPECT_EQ(seen->user_agent, "xoauth-proxy/" XOAUTH_VERSION);
  EXPECT_EQ(seen->host, "127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(seen->body, "a=1%202&b=%26%3D%2B");
}

TEST_F(HttpsClient, ChecksTheHostName) {
  start("DNS:localhost,IP:127.0.0.1");
  https_client c{io.get_executor(), ca_file.string(), 5s};
  auto o = post(c, url("localhost"), {});
  ASSERT_TRUE(o.response) << o.failure.what;
  EXPECT_EQ(o.response->status, 200u);
}

TEST_F(HttpsClient, RejectsAnIpNotInTheCertificate) {
  start("DNS:localhost");
  https_client c{io.get_executor(), ca_file.string(), 5s};
  auto o = post(c, url("127.0.0.1"), {});
  ASSERT_FALSE(o.response);
  EXPECT_EQ(o.failure.what, "tls: certificate verify failed: IP address mismatch");
}

TEST_F(HttpsClient, RejectsANameNotInTheCertificate) {
  start("IP:127.0.0.1");
  https_client c{io.get_executor(), ca_file.string(), 5s};
  auto o = post(c, url("localhost"), {});
  ASSERT_FALSE(o.response);
  EXPECT_EQ(o.failure.what, "tls: certificate verify failed: hostname mismatch");
}

TEST_F(HttpsClient, RejectsAnUntrustedCertificate) {
  start("IP:127.0.0.1");
  https_client c{io.get_executor(), "", 5s};
  auto o = post(c, url("127.0.0.1"), {});
  ASSERT_FALSE(o.response);
  EXPECT_EQ(o.failure.what, "tls: certificate verify failed: self-signed certificate");
}

TEST_F(HttpsClient, CapsTheBody) {
  start("IP:127.0.0.1");
  behaviour.body = std::string(70 * 1024, 'x');
  https_client c{io.get_executor(), ca_file.string(), 5s};
  auto o = post(c, url("127.0.0.1"), {});
  ASSERT_FALSE(o.response);
  EXPECT_EQ(o.failure.what, "http: response body too large");
}

TEST_F(HttpsClient, TimesOut) {
  start("IP:127.0.0.1");
  behaviour.never_answer = true;
  https_client c{io.get_executor(), ca_file.string(), 1s};
  const auto t0 = std::chrono::steady_clock::now();
  auto o = post(c, url("127.0.0.1"), {});
  ASSERT_FALSE(o.response);
  EXPECT_EQ(o.failure.what, "timeout");
  EXPECT_LT(done_at - t0, 1900ms);
}

TEST_F(HttpsClient, ReportsConnectionRefused) {
  tcp::acceptor a{io, {asio::ip::make_address("127.0.0.1"), 0}};
  port = a.local_endpoint().port();
  a.close();
  https_client c{io.get_executor(), "", 5s};
  auto o = post(c, url("127.0.0.1"), {});
  ASSERT_FALSE(o.response);
  EXPECT_TRUE(o.failure.what.starts_with("connect: ")) << o.failure.what;
}

TEST_F(HttpsClient, RejectsABadUrlWithoutIo) {
  https_client c{io.get_executor(), "", 5s};
  auto o = post(c, "http://127.0.0.1/", {});
  ASSERT_FALSE(o.response);
  EXPECT_EQ(o.failure.what, "http: invalid https url");
}

TEST_F(HttpsClient, MissingCaFileThrowsAtConstruction) {
  EXPECT_THROW((https_client{io.get_executor(), "/nonexistent/ca.pem", 5s}), std::runtime_error);
}

TEST_F(HttpsClient, ClientCredentialsGrant) {
  start("IP:127.0.0.1");
  behaviour.body = R"({"token_type":"Bearer","expires_in":3599,"access_token":"at-1"})";
  https_client c{io.get_executor(), ca_file.string(), 5s};
  config::provider p;
  p.tenant = "contoso";
  p.client_id = "11111111-2222-3333-4444-555555555555";
  p.client_secret = secret{"s3cr&t=+"};
  p.authority = "https://127.0.0.1:" + std::to_string(port);
  client_auth cred{p};
  client_credentials source{p, c, cred};
  EXPECT_EQ(source.grant(), "client_credentials");
  std::optional<token_result> r;
  asio::co_spawn(io, source.acquire(), [&](std::exception_ptr e, token_result t) {
    if (e) std::rethrow_exception(e);
    r = std::move(t);
  });
  io.run();
  ASSERT_TRUE(r && r->ok()) << r->error.summary;
  EXPECT_EQ(r->token->value.reveal(), "at-1");
  ASSERT_TRUE(seen);
  EXPECT_EQ(seen->target, "/contoso/oauth2/v2.0/token");
  EXPECT_EQ(seen->body,
            "grant_type=client_credentials&scope=https%3A%2F%2Foutlook.office365.com%2F.default"
            "&client_id=11111111-2222-3333-4444-555555555555&client_secret=s3cr%26t%3D%2B");
}

TEST_F(HttpsClient, ClientCredentialsJoinsConfiguredScopes) {
  start("IP:127.0.0.1");
  behaviour.status = 401;
  behaviour.body = R"({"error":"invalid_client","error_codes":[7000215]})";
  https_client c{io.get_executor(), ca_file.string(), 5s};
  config::provider p;
  p.tenant = "t";
  p.client_id = "id";
  p.authority = "https://127.0.0.1:" + std::to_string(port);
  p.scopes = {"a/.default", "b"};
  client_auth cred{p};
  client_credentials source{p, c, cred};
  std::optional<token_result> r;
  asio::co_spawn(io, source.acquire(),
                 [&](std::exception_ptr, token_result t) { r = std::move(t); });
  io.run();
  ASSERT_TRUE(r && !r->ok());
  EXPECT_EQ(r->error.kind, failure_kind::config);
  ASSERT_TRUE(seen);
  EXPECT_TRUE(seen->body.find("&scope=a%2F.default%20b&") != std::string::npos) << seen->body;
}

}  // namespace
}  // namespace xo::auth
