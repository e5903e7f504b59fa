#pragma once
// One source per grant type. A source performs one token request; caching, single flight and
// retries belong to token_cache.
#include "auth/token.hpp"
#include "net/asio.hpp"

namespace xo::auth {

class token_source {
 public:
  virtual ~token_source() = default;
  virtual awaitable<token_result> acquire() = 0;
  // For logs and metrics: "client_credentials", ...
  virtual std::string_view grant() const = 0;
};

}  // namespace xo::auth
