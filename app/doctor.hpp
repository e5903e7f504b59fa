#pragma once
// The `doctor` command (see doctor.cpp): checks a configuration end to end — config, app
// registration, tokens and their claims, a real upstream login per protocol — and says how to fix
// what fails.
#include <string>
#include <vector>

namespace xo::app {

struct doctor_options {
  std::string config_path;
  std::vector<std::string> accounts;  // logins to check; empty: every [[account]]
  bool json = false;                  // one JSON object on standard output instead of lines
};

// Exit code: 0 when every check passed or was skipped, 1 otherwise (or when the config is invalid).
int cmd_doctor(const doctor_options& o);

}  // namespace xo::app
