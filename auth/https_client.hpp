#pragma once
// One HTTPS POST of a form to the identity platform (Boost.Beast + OpenSSL).
// Verifies the server certificate against the system trust store plus an optional extra CA file,
// checks the host name, sends SNI, TLS 1.2 minimum. Fields are percent-encoded (Boost.URL).
// The body is never logged: it carries client secrets and refresh tokens.
#include "common/secret.hpp"
#include "net/asio.hpp"

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace xo::auth {

struct form_field {
  std::string name;
  secret value;  // every value treated as secret: the form carries credentials
};

struct http_response {
  unsigned status = 0;
  std::string body;                                // capped (64 KiB)
  std::optional<std::chrono::seconds> retry_after; // Retry-After in seconds, if present
  std::string request_id;                          // x-ms-request-id, if present
};

struct http_failure {
  std::string what;  // "timeout", "connect: ...", "tls: ...", "http: ..." (never a secret)
};

struct http_outcome {
  std::optional<http_response> response;
  http_failure failure;  // meaningful when !response
};

class https_client {
 public:
  // ca_file: extra trust anchors (may be empty). timeout: the whole request.
  // Throws std::runtime_error when ca_file cannot be loaded (startup, config problem).
  https_client(asio::any_io_executor ex, std::string ca_file, std::chrono::seconds timeout);
  ~https_client();
  https_client(const https_client&) = delete;
  https_client& operator=(const https_client&) = delete;

  // url: "https://host[:port]/path". Never throws for network or HTTP errors.
  awaitable<http_outcome> post_form(std::string url, std::vector<form_field> fields);
  // GET (health checks, tests).
  awaitable<http_outcome> get(std::string url);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// Pure helpers of https_client, exposed for unit tests.
namespace detail {

struct https_url {
  std::string host;        // DNS name or IP literal (IPv6 without brackets)
  std::uint16_t port = 443;
  std::string target;      // origin form: "/path[?query]"
  bool ip_literal = false;
};
// nullopt unless `url` is an absolute https URL with a host and without userinfo.
std::optional<https_url> parse_https_url(std::string_view url);
// application/x-www-form-urlencoded: name=value joined by '&', both percent-encoded with only the
// RFC 3986 unreserved characters left as they are (so '+', '&', '=', ' ' can never be misread).
secret encode_form(const std::vector<form_field>& fields);
// Retry-After as delta-seconds (RFC 9110 §10.2.3), capped at one hour; an HTTP-date or garbage
// gives nullopt.
std::optional<std::chrono::seconds> parse_retry_after(std::string_view v);

}  // namespace detail

}  // namespace xo::auth
