#pragma once
// How the proxy proves to the identity platform which app it is (the "client credential"):
// a client secret, a certificate (an RS256 client assertion JWT, RFC 7523, with the certificate's
// SHA-256 thumbprint in the "x5t#S256" header), or nothing for a public client.
#include "auth/https_client.hpp"
#include "config/config.hpp"

#include <memory>
#include <string>
#include <vector>

namespace xo::auth {

class client_auth {
 public:
  // Reads and checks certificate_file/private_key_file when the provider has them.
  // Throws std::runtime_error naming the file and the problem (unreadable, not PEM, key does not
  // match the certificate, not RSA) — never key material.
  explicit client_auth(const config::provider& p);
  ~client_auth();
  client_auth(const client_auth&) = delete;
  client_auth& operator=(const client_auth&) = delete;

  // Appends client_id and, for a confidential client, client_secret or client_assertion_type +
  // client_assertion (a fresh JWT per call: aud = token_endpoint, iss = sub = client_id, a random
  // jti, nbf/iat = now, exp = now + 10 minutes).
  void add_to(std::vector<form_field>& form, const std::string& token_endpoint) const;

  // "client secret", "certificate <SHA-256 thumbprint, hex>", or "none (public client)".
  std::string describe() const;
  bool confidential() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

namespace detail {
// Exposed for unit tests: the signed JWT for the given time (seconds since the epoch) and jti.
std::string make_client_assertion(const config::provider& p, const std::string& cert_pem,
                                  const std::string& key_pem, const std::string& audience,
                                  long long now_unix, const std::string& jti);
}  // namespace detail

}  // namespace xo::auth
