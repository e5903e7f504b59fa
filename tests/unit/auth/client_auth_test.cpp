// Client authentication: secret, public client, and the RS256 client assertion (RFC 7523) with a
// throwaway RSA key and self-signed certificate made in the test; the signature is checked with
// the certificate's public key, independently of the code under test.
#include "auth/client_auth.hpp"

#include "common/base64.hpp"

#include <boost/json.hpp>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>

namespace xo::auth {
namespace {

namespace json = boost::json;
namespace fs = std::filesystem;

// ---- test PKI ----------------------------------------------------------------------------------

struct pki {
  std::string cert_pem;
  std::string key_pem;
  std::string der;  // the certificate, DER
};

std::string bio_string(BIO* b) {
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  std::string s(data, static_cast<std::size_t>(n));
  BIO_free(b);
  return s;
}

// Self-signed certificate for `key` (RSA or EC).
pki make_pki(EVP_PKEY* key, const char* passphrase = nullptr) {
  X509* x = X509_new();
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_gmtime_adj(X509_getm_notBefore(x), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("xo client"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  X509_set_pubkey(x, key);
  X509_sign(x, key, EVP_sha256());

  pki out;
  BIO* b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  out.cert_pem = bio_string(b);
  b = BIO_new(BIO_s_mem());
  if (passphrase) {
    PEM_write_bio_PrivateKey(b, key, EVP_aes_256_cbc(), nullptr, 0, nullptr,
                             const_cast<char*>(passphrase));
  } else {
    PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
  }
  out.key_pem = bio_string(b);
  unsigned char* der = nullptr;
  int n = i2d_X509(x, &der);
  out.der.assign(reinterpret_cast<const char*>(der), static_cast<std::size_t>(n));
  OPENSSL_free(der);
  X509_free(x);
  return out;
}

// RSA key generation is slow: one key pair (and a second key for mismatches) per run.
EVP_PKEY* rsa_key() {
  static EVP_PKEY* k = EVP_RSA_gen(2048);
  return k;
}
EVP_PKEY* other_rsa_key() {
  static EVP_PKEY* k = EVP_RSA_gen(2048);
  return k;
}
const pki& rsa_pki() {
  static const pki p = make_pki(rsa_key());
  return p;
}

std::string digest(std::string_view data, const EVP_MD* md) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out, &len, md, nullptr);
  return std::string(reinterpret_cast<const char*>(out), len);
}

std::string b64url_decode(std::string s) {
  for (char& c : s) {
    if (c == '-') c = '+';
    if (c == '_') c = '/';
  }
  s.append((4 - s.size() % 4) % 4, '=');
  auto d = base64_decode(s);
  EXPECT_TRUE(d) << s;
  return d.value_or("");
}

struct jwt_parts {
  std::string signed_part;  // header.claims, as sent
  json::object header, claims;
  std::string signature;
};

jwt_parts split(const std::string& jwt) {
  jwt_parts out;
  auto d1 = jwt.find('.');
  auto d2 = jwt.find('.', d1 + 1);
  EXPECT_NE(d1, std::string::npos);
  EXPECT_NE(d2, std::string::npos);
  EXPECT_EQ(jwt.find('.', d2 + 1), std::string::npos);
  EXPECT_EQ(jwt.find('='), std::string::npos) << "base64url without padding";
  out.signed_part = jwt.substr(0, d2);
  out.header = json::parse(b64url_decode(jwt.substr(0, d1))).as_object();
  out.claims = json::parse(b64url_decode(jwt.substr(d1 + 1, d2 - d1 - 1))).as_object();
  out.signature = b64url_decode(jwt.substr(d2 + 1));
  return out;
}

// RS256 verification with the certificate's public key (not with anything client_auth made).
bool verify_rs256(const std::string& cert_pem, const std::string& input, const std::string& sig) {
  BIO* b = BIO_new_mem_buf(cert_pem.data(), static_cast<int>(cert_pem.size()));
  X509* x = PEM_read_bio_X509(b, nullptr, nullptr, nullptr);
  BIO_free(b);
  if (!x) return false;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, X509_get0_pubkey(x)) == 1 &&
            EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                             reinterpret_cast<const unsigned char*>(input.data()),
                             input.size()) == 1;
  EVP_MD_CTX_free(ctx);
  X509_free(x);
  return ok;
}

std::string str(const json::object& o, std::string_view key) {
  const auto* v = o.if_contains(key);
  return v && v->is_string() ? std::string{v->get_string()} : std::string{"<missing>"};
}

config::provider provider() {
  config::provider p;
  p.name = "contoso";
  p.tenant = "contoso.onmicrosoft.com";
  p.client_id = "11111111-2222-3333-4444-555555555555";
  return p;
}

const std::string audience =
    "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token";

// Files in a per-test temporary directory.
class ClientAuthFiles : public ::testing::Test {
 protected:
  ClientAuthFiles() {
    dir_ = fs::temp_directory_path() /
           fmt::format("xo_client_auth_{}_{}", ::getpid(),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  ~ClientAuthFiles() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& content) {
    auto path = dir_ / name;
    std::ofstream{path, std::ios::binary} << content;
    return path.string();
  }
  std::string ctor_error(const config::provider& p) {
    try {
      client_auth c{p};
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    ADD_FAILURE() << "no exception";
    return {};
  }
  fs::path dir_;
};

// ---- the assertion -----------------------------------------------------------------------------

TEST(ClientAssertion, HeaderClaimsAndSignature) {
  const auto& k = rsa_pki();
  const long long now = 1'700'000'000;
  auto jwt = detail::make_client_assertion(provider(), k.cert_pem, k.key_pem, audience, now,
                                           "4f1c2d3e-0000-4000-8000-000000000001");
  auto j = split(jwt);

  EXPECT_EQ(j.header.size(), 4u) << json::serialize(j.header);
  EXPECT_EQ(str(j.header, "alg"), "RS256");
  EXPECT_EQ(str(j.header, "typ"), "JWT");
  EXPECT_EQ(str(j.header, "x5t#S256"), base64url_encode(digest(k.der, EVP_sha256())));
  EXPECT_EQ(str(j.header, "x5t"), base64url_encode(digest(k.der, EVP_sha1())));
  EXPECT_EQ(str(j.header, "x5t#S256").size(), 43u);

  EXPECT_EQ(str(j.claims, "aud"), audience);
  EXPECT_EQ(str(j.claims, "iss"), provider().client_id);
  EXPECT_EQ(str(j.claims, "sub"), provider().client_id);
  EXPECT_EQ(str(j.claims, "jti"), "4f1c2d3e-0000-4000-8000-000000000001");
  EXPECT_EQ(j.claims.at("nbf").to_number<long long>(), now);
  EXPECT_EQ(j.claims.at("iat").to_number<long long>(), now);
  EXPECT_EQ(j.claims.at("exp").to_number<long long>(), now + 600);

  EXPECT_EQ(j.signature.size(), 256u);  // RSA-2048
  EXPECT_TRUE(verify_rs256(k.cert_pem, j.signed_part, j.signature));
  // The signature covers header and claims: change one byte and it no longer verifies.
  auto tampered = j.signed_part;
  tampered.back() = tampered.back() == 'A' ? 'B' : 'A';
  EXPECT_FALSE(verify_rs256(k.cert_pem, tampered, j.signature));
}

TEST(ClientAssertion, KeyOfAnotherCertificateIsRefused) {
  const auto& k = rsa_pki();
  const pki other = make_pki(other_rsa_key());
  try {
    detail::make_client_assertion(provider(), k.cert_pem, other.key_pem, audience, 1, "j");
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("does not match"), std::string::npos) << what;
  }
}

TEST(ClientAssertion, NonRsaKeyIsRefused) {
  EVP_PKEY* ec = EVP_EC_gen("P-256");
  const pki p = make_pki(ec);
  EVP_PKEY_free(ec);
  try {
    detail::make_client_assertion(provider(), p.cert_pem, p.key_pem, audience, 1, "j");
    FAIL() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string{e.what()}.find("not an RSA key"), std::string::npos) << e.what();
  }
}

TEST(ClientAssertion, GarbageIsRefused) {
  const auto& k = rsa_pki();
  EXPECT_THROW(detail::make_client_assertion(provider(), "nope", k.key_pem, audience, 1, "j"),
               std::runtime_error);
  EXPECT_THROW(detail::make_client_assertion(provider(), k.cert_pem, "", audience, 1, "j"),
               std::runtime_error);
  // A certificate is not a private key, nor the other way round.
  EXPECT_THROW(
      detail::make_client_assertion(provider(), k.cert_pem, k.cert_pem, audience, 1, "j"),
      std::runtime_error);
  EXPECT_THROW(detail::make_client_assertion(provider(), k.key_pem, k.key_pem, audience, 1, "j"),
               std::runtime_error);
}

// ---- client_auth -------------------------------------------------------------------------------

std::string field(const std::vector<form_field>& form, std::string_view name) {
  for (const auto& f : form)
    if (f.name == name) return std::string{f.value.reveal()};
  return "<missing>";
}

std::vector<std::string> names(const std::vector<form_field>& form) {
  std::vector<std::string> out;
  for (const auto& f : form) out.push_back(f.name);
  return out;
}

TEST(ClientAuth, ClientSecret) {
  auto p = provider();
  p.client_secret = secret{"s3cret+/="};
  client_auth c{p};
  EXPECT_TRUE(c.confidential());
  EXPECT_EQ(c.describe(), "client secret");
  std::vector<form_field> form{{"grant_type", secret{"x"}}};
  c.add_to(form, audience);
  EXPECT_EQ(names(form), (std::vector<std::string>{"grant_type", "client_id", "client_secret"}));
  EXPECT_EQ(field(form, "client_id"), p.client_id);
  EXPECT_EQ(field(form, "client_secret"), "s3cret+/=");
}

TEST(ClientAuth, PublicClientSendsOnlyItsId) {
  client_auth c{provider()};
  EXPECT_FALSE(c.confidential());
  EXPECT_EQ(c.describe(), "none (public client)");
  std::vector<form_field> form;
  c.add_to(form, audience);
  EXPECT_EQ(names(form), (std::vector<std::string>{"client_id"}));
}

TEST_F(ClientAuthFiles, CertificateSendsAFreshAssertionPerRequest) {
  const auto& k = rsa_pki();
  auto p = provider();
  p.certificate_file = write("cert.pem", k.cert_pem);
  p.private_key_file = write("key.pem", k.key_pem);
  client_auth c{p};
  EXPECT_TRUE(c.confidential());
  const auto sha256 = digest(k.der, EVP_sha256());
  std::string hex;
  for (unsigned char ch : sha256) hex += fmt::format("{:02X}", ch);
  EXPECT_EQ(c.describe(), "certificate " + hex);

  std::vector<form_field> form;
  const auto before = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  c.add_to(form, audience);
  EXPECT_EQ(names(form), (std::vector<std::string>{"client_id", "client_assertion_type",
                                                   "client_assertion"}));
  EXPECT_EQ(field(form, "client_id"), p.client_id);
  EXPECT_EQ(field(form, "client_assertion_type"),
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
  auto j = split(field(form, "client_assertion"));
  EXPECT_TRUE(verify_rs256(k.cert_pem, j.signed_part, j.signature));
  EXPECT_EQ(str(j.claims, "aud"), audience);
  const auto iat = j.claims.at("iat").to_number<long long>();
  EXPECT_GE(iat, before);
  EXPECT_LE(iat, before + 5);
  EXPECT_EQ(j.claims.at("nbf").to_number<long long>(), iat);
  EXPECT_EQ(j.claims.at("exp").to_number<long long>(), iat + 600);
  const std::regex uuid{"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"};
  const auto jti = str(j.claims, "jti");
  EXPECT_TRUE(std::regex_match(jti, uuid)) << jti;

  std::vector<form_field> again;
  c.add_to(again, audience);
  EXPECT_NE(str(split(field(again, "client_assertion")).claims, "jti"), jti);
}

TEST_F(ClientAuthFiles, CertificateAndKeyInOneFile) {
  const auto& k = rsa_pki();
  auto p = provider();
  p.certificate_file = write("both.pem", k.key_pem + k.cert_pem);
  p.private_key_file = p.certificate_file;
  client_auth c{p};
  std::vector<form_field> form;
  c.add_to(form, audience);
  auto j = split(field(form, "client_assertion"));
  EXPECT_TRUE(verify_rs256(k.cert_pem, j.signed_part, j.signature));
}

TEST_F(ClientAuthFiles, CertificateOfTheKeyIsFoundInAChain) {
  const auto& k = rsa_pki();
  const pki other = make_pki(other_rsa_key());
  auto p = provider();
  p.certificate_file = write("chain.pem", other.cert_pem + k.cert_pem);
  p.private_key_file = write("key.pem", k.key_pem);
  client_auth c{p};
  std::vector<form_field> form;
  c.add_to(form, audience);
  auto j = split(field(form, "client_assertion"));
  EXPECT_EQ(str(j.header, "x5t#S256"), base64url_encode(digest(k.der, EVP_sha256())));
  EXPECT_TRUE(verify_rs256(k.cert_pem, j.signed_part, j.signature));
}

TEST_F(ClientAuthFiles, MismatchNamesBothFilesButNoKeyMaterial) {
  const auto& k = rsa_pki();
  const pki other = make_pki(other_rsa_key());
  auto p = provider();
  p.certificate_file = write("cert.pem", k.cert_pem);
  p.private_key_file = write("other.key", other.key_pem);
  const auto what = ctor_error(p);
  EXPECT_NE(what.find("private_key_file " + p.private_key_file), std::string::npos) << what;
  EXPECT_NE(what.find("certificate_file " + p.certificate_file), std::string::npos) << what;
  EXPECT_NE(what.find("does not match"), std::string::npos) << what;
  // Not a single line of the key's base64 body.
  auto body = other.key_pem.substr(other.key_pem.find('\n') + 1, 40);
  EXPECT_EQ(what.find(body), std::string::npos);
}

TEST_F(ClientAuthFiles, UnreadableFile) {
  auto p = provider();
  p.certificate_file = (dir_ / "missing.pem").string();
  p.private_key_file = write("key.pem", rsa_pki().key_pem);
  const auto what = ctor_error(p);
  EXPECT_EQ(what, "certificate_file " + p.certificate_file +
                      ": cannot open: No such file or directory");
}

TEST_F(ClientAuthFiles, NotPem) {
  auto p = provider();
  p.certificate_file = write("cert.pem", "this is not a certificate\n");
  p.private_key_file = write("key.pem", rsa_pki().key_pem);
  auto what = ctor_error(p);
  EXPECT_TRUE(what.starts_with("certificate_file " + p.certificate_file + ": no PEM certificate"))
      << what;

  p.certificate_file = write("cert2.pem", rsa_pki().cert_pem);
  p.private_key_file = write("key2.pem", rsa_pki().cert_pem);
  what = ctor_error(p);
  EXPECT_TRUE(what.starts_with("private_key_file " + p.private_key_file + ": no PEM private key"))
      << what;
}

TEST_F(ClientAuthFiles, EncryptedKeyIsRefusedWithoutPrompting) {
  const pki enc = make_pki(rsa_key(), "pass phrase");
  auto p = provider();
  p.certificate_file = write("cert.pem", enc.cert_pem);
  p.private_key_file = write("key.pem", enc.key_pem);
  const auto what = ctor_error(p);
  EXPECT_TRUE(what.starts_with("private_key_file " + p.private_key_file)) << what;
  EXPECT_NE(what.find("encrypted"), std::string::npos) << what;
}

TEST_F(ClientAuthFiles, NonRsaCertificate) {
  EVP_PKEY* ec = EVP_EC_gen("P-256");
  const pki e = make_pki(ec);
  EVP_PKEY_free(ec);
  auto p = provider();
  p.certificate_file = write("cert.pem", e.cert_pem);
  p.private_key_file = write("key.pem", e.key_pem);
  const auto what = ctor_error(p);
  EXPECT_NE(what.find("not an RSA key"), std::string::npos) << what;
}

TEST_F(ClientAuthFiles, CertificateWithoutKeyFile) {
  auto p = provider();
  p.certificate_file = write("cert.pem", rsa_pki().cert_pem);
  const auto what = ctor_error(p);
  EXPECT_NE(what.find("needs private_key_file"), std::string::npos) << what;
}

}  // namespace
}  // namespace xo::auth
