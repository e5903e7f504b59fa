#pragma once
// The `authorize` command (see authorize.cpp).
#include <string>

namespace xo::app {

struct authorize_options {
  std::string config_path;
  std::string account;
  bool device = false;
  int timeout_seconds = 900;
  std::string password_file;  // the account's local password (password-keyed token store)
};

// Exit code: 0 authorized, 1 not (reason printed), 2 invalid configuration, 130 interrupted.
int cmd_authorize(const authorize_options& o);

}  // namespace xo::app
