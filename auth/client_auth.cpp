// Client authentication at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2; protocol-notes
// §1.2): a client secret, or a certificate credential proved by a short-lived RS256 JWT signed
// with its private key. The key stays in an EVP_PKEY; its PEM text is wiped after parsing, and no
// error message carries anything read from the key file.
#include "auth/client_auth.hpp"

#include "common/base64.hpp"

#include <boost/json.hpp>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <vector>

namespace xo::auth {

namespace json = boost::json;

namespace {

constexpr std::string_view jwt_bearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
constexpr long long assertion_lifetime_s = 600;  // Entra accepts 5-10 minutes
constexpr long max_pem_bytes = 1 << 20;

struct x509_free_t {
  void operator()(X509* x) const { X509_free(x); }
};
struct pkey_free_t {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct md_ctx_free_t {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
struct bio_free_t {
  void operator()(BIO* b) const { BIO_free(b); }
};
using x509_ptr = std::unique_ptr<X509, x509_free_t>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free_t>;
using md_ctx_ptr = std::unique_ptr<EVP_MD_CTX, md_ctx_free_t>;
using bio_ptr = std::unique_ptr<BIO, bio_free_t>;

// Never prompt on a terminal for a pass phrase: encrypted keys are refused with a message instead.
int no_passphrase(char*, int, int, void*) { return -1; }

[[noreturn]] void fail(std::string_view what, std::string_view problem) {
  throw std::runtime_error(fmt::format("{}: {}", what, problem));
}

// The whole file (a PEM file is small; anything above 1 MiB is not one).
std::string read_file(const std::string& path, std::string_view what) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) fail(what, fmt::format("cannot open: {}", std::strerror(errno)));
  std::string out;
  char buf[4096];
  std::size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    out.append(buf, n);
    if (out.size() > static_cast<std::size_t>(max_pem_bytes)) {
      std::fclose(f);
      OPENSSL_cleanse(out.data(), out.size());
      fail(what, "too large for a PEM file (over 1 MiB)");
    }
  }
  const bool error = std::ferror(f) != 0;
  std::fclose(f);
  if (error) {
    OPENSSL_cleanse(out.data(), out.size());
    fail(what, "cannot read");
  }
  return out;
}

bio_ptr memory_bio(std::string_view pem) {
  bio_ptr b{BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()))};
  if (!b) throw std::runtime_error("out of memory (BIO_new_mem_buf)");
  return b;
}

std::string digest_of(X509* x, const EVP_MD* md) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(x, md, out, &len) != 1)
    throw std::runtime_error("cannot compute the certificate thumbprint");
  return std::string(reinterpret_cast<const char*>(out), len);
}

std::string to_hex(std::string_view bytes) {
  std::string s;
  for (unsigned char c : bytes) s += fmt::format("{:02X}", c);
  return s;
}

// A certificate and its RSA private key, checked to belong together.
struct credential {
  pkey_ptr key;
  std::string x5t;         // base64url SHA-1 of the DER certificate
  std::string x5t_s256;    // base64url SHA-256 of the DER certificate
  std::string sha256_hex;  // for describe()
};

// cert_what/key_what name the source in error messages ("certificate_file /etc/x.pem").
credential load_credential(std::string_view cert_pem, std::string_view key_pem,
                           std::string_view cert_what, std::string_view key_what) {
  // Failed reads leave entries on OpenSSL's per-thread error queue; a later TLS handshake on this
  // thread must not find them.
  struct clear_errors {
    ~clear_errors() { ERR_clear_error(); }
  } clear;
  // The file may hold a chain: the credential is the certificate of the private key, wherever it
  // stands (usually first).
  std::vector<x509_ptr> certs;
  auto cb = memory_bio(cert_pem);
  while (x509_ptr c{PEM_read_bio_X509(cb.get(), nullptr, no_passphrase, nullptr)})
    certs.push_back(std::move(c));
  if (certs.empty()) fail(cert_what, "no PEM certificate (-----BEGIN CERTIFICATE-----) found");

  const bool encrypted = key_pem.find("ENCRYPTED") != std::string_view::npos;
  auto kb = memory_bio(key_pem);
  pkey_ptr key{PEM_read_bio_PrivateKey(kb.get(), nullptr, no_passphrase, nullptr)};
  if (!key) {
    if (encrypted)
      fail(key_what,
           "the private key is encrypted; a pass phrase cannot be given, store it unencrypted "
           "(mode 0600), e.g. openssl pkey -in key.pem -out plain.pem");
    fail(key_what, "no PEM private key (-----BEGIN PRIVATE KEY----- or RSA PRIVATE KEY) found");
  }
  if (EVP_PKEY_get_base_id(key.get()) != EVP_PKEY_RSA)
    fail(key_what, "not an RSA key (the client assertion is signed with RS256, which needs RSA)");
  X509* cert = nullptr;
  for (const auto& c : certs) {
    if (X509_check_private_key(c.get(), key.get()) == 1) {
      cert = c.get();
      break;
    }
  }
  if (!cert) {
    EVP_PKEY* first = X509_get0_pubkey(certs.front().get());
    if (!first || EVP_PKEY_get_base_id(first) != EVP_PKEY_RSA)
      fail(cert_what, "the certificate's public key is not RSA (RS256 needs RSA)");
    throw std::runtime_error(
        fmt::format("{} does not match {}: the private key is not the certificate's key",
                    key_what, cert_what));
  }

  credential c;
  const auto s256 = digest_of(cert, EVP_sha256());
  c.x5t = base64url_encode(digest_of(cert, EVP_sha1()));
  c.x5t_s256 = base64url_encode(s256);
  c.sha256_hex = to_hex(s256);
  c.key = std::move(key);
  return c;
}

std::string random_jti() {
  unsigned char b[16];
  if (RAND_bytes(b, sizeof b) != 1) throw std::runtime_error("RAND_bytes failed");
  b[6] = static_cast<unsigned char>((b[6] & 0x0F) | 0x40);  // version 4
  b[8] = static_cast<unsigned char>((b[8] & 0x3F) | 0x80);  // RFC 4122 variant
  std::string hex = to_hex({reinterpret_cast<const char*>(b), sizeof b});
  for (char& c : hex) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return fmt::format("{}-{}-{}-{}-{}", hex.substr(0, 8), hex.substr(8, 4), hex.substr(12, 4),
                     hex.substr(16, 4), hex.substr(20));
}

std::string sign_assertion(const credential& c, const std::string& client_id,
                           const std::string& audience, long long now_unix,
                           const std::string& jti) {
  json::object header;
  header["alg"] = "RS256";
  header["typ"] = "JWT";
  header["x5t#S256"] = c.x5t_s256;
  header["x5t"] = c.x5t;
  json::object claims;
  claims["aud"] = audience;
  claims["iss"] = client_id;
  claims["sub"] = client_id;
  claims["jti"] = jti;
  claims["nbf"] = now_unix;
  claims["iat"] = now_unix;
  claims["exp"] = now_unix + assertion_lifetime_s;

  std::string input =
      base64url_encode(json::serialize(header)) + "." + base64url_encode(json::serialize(claims));

  md_ctx_ptr ctx{EVP_MD_CTX_new()};
  std::size_t len = 0;
  // RSASSA-PKCS1-v1_5 with SHA-256 (RS256, RFC 7518 §3.3): the RSA default padding.
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr, c.key.get()) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &len,
                     reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1)
    throw std::runtime_error("cannot sign the client assertion (EVP_DigestSign)");
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(input.data()), input.size()) != 1)
    throw std::runtime_error("cannot sign the client assertion (EVP_DigestSign)");
  sig.resize(len);
  return input + "." + base64url_encode(sig);
}

long long unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

struct client_auth::impl {
  std::string client_id;
  secret client_secret;
  std::optional<credential> cert;
};

client_auth::client_auth(const config::provider& p) : impl_(std::make_unique<impl>()) {
  impl_->client_id = p.client_id;
  if (!p.certificate_file.empty()) {
    const auto cert_what = fmt::format("certificate_file {}", p.certificate_file);
    if (p.private_key_file.empty())
      fail(cert_what, "needs private_key_file (the certificate's private key)");
    const auto key_what = fmt::format("private_key_file {}", p.private_key_file);
    const std::string cert_pem = read_file(p.certificate_file, cert_what);
    const secret key_pem{read_file(p.private_key_file, key_what)};  // wiped when it goes
    impl_->cert = load_credential(cert_pem, key_pem.reveal(), cert_what, key_what);
  } else {
    impl_->client_secret = p.client_secret;
  }
}

client_auth::~client_auth() = default;

void client_auth::add_to(std::vector<form_field>& form, const std::string& token_endpoint) const {
  form.push_back({"client_id", secret{impl_->client_id}});
  if (impl_->cert) {
    form.push_back({"client_assertion_type", secret{std::string{jwt_bearer}}});
    form.push_back({"client_assertion", secret{sign_assertion(*impl_->cert, impl_->client_id,
                                                              token_endpoint, unix_now(),
                                                              random_jti())}});
  } else if (!impl_->client_secret.empty()) {
    form.push_back({"client_secret", impl_->client_secret});
  }
}

std::string client_auth::describe() const {
  if (impl_->cert) return "certificate " + impl_->cert->sha256_hex;
  if (!impl_->client_secret.empty()) return "client secret";
  return "none (public client)";
}

bool client_auth::confidential() const {
  return impl_->cert.has_value() || !impl_->client_secret.empty();
}

namespace detail {

std::string make_client_assertion(const config::provider& p, const std::string& cert_pem,
                                  const std::string& key_pem, const std::string& audience,
                                  long long now_unix, const std::string& jti) {
  auto c = load_credential(cert_pem, key_pem, "certificate", "private key");
  return sign_assertion(c, p.client_id, audience, now_unix, jti);
}

}  // namespace detail

}  // namespace xo::auth
