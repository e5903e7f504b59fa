#pragma once
// Helpers shared by the config unit tests: a scratch directory, environment variables that are
// restored afterwards, and shortcuts that turn a load_result into comparable strings.
#include "config/loader.hpp"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace xo::config::test {

inline constexpr const char* hash =
    "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";

// A valid provider, listener and account (16 lines). Tests put the snippet under test first, so
// its line numbers count from 1, and append this. The secret comes from XO_TEST_SECRET.
inline constexpr std::string_view base = R"(
[[provider]]
name = "contoso"
tenant = "contoso.onmicrosoft.com"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = "${XO_TEST_SECRET}"

[[listener]]
protocol = "imap"
listen = "127.0.0.1:1143"
upstream = "outlook.office365.com:993"

[[account]]
login = "alice@contoso.com"
provider = "contoso"
password_hash = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
)";

// A fresh directory under the system temp dir, removed with everything in it at the end.
class scratch_dir {
 public:
  scratch_dir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "xo-config-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~scratch_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // Writes `content` to `name` inside the directory and returns the full path.
  std::string write(const std::string& name, const std::string& content) const {
    auto p = path_ / name;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }

 private:
  std::filesystem::path path_;
};

// Sets (or unsets, with nullptr) an environment variable for the lifetime of the object.
class scoped_env {
 public:
  scoped_env(std::string name, const char* value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) {
      old_ = old;
      had_ = true;
    }
    if (value) {
      ::setenv(name_.c_str(), value, 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }
  ~scoped_env() {
    if (had_) {
      ::setenv(name_.c_str(), old_.c_str(), 1);
    } else {
      ::unsetenv(name_.c_str());
    }
  }
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;

 private:
  std::string name_;
  std::string old_;
  bool had_ = false;
};

inline constexpr const char* test_secret = "s3cr3t-Value-From-Env";

// Sets XO_TEST_SECRET for every test of a suite derived from it.
class config_test : public ::testing::Test {
 protected:
  scoped_env secret_env_{"XO_TEST_SECRET", test_secret};
};

inline std::vector<std::string> strings(const std::vector<diagnostic>& d) {
  std::vector<std::string> out;
  for (const auto& x : d) out.push_back(x.to_string());
  return out;
}

// Every error from loading `text` as "test.toml", as "file:line:col: key: message".
inline std::vector<std::string> errors_of(std::string_view text) {
  return strings(load_string(text, "test.toml").errors);
}

inline std::vector<std::string> warnings_of(std::string_view text) {
  return strings(load_string(text, "test.toml").warnings);
}

// `snippet` followed by `base`.
inline std::string with_base(std::string_view snippet) {
  return std::string(snippet) + std::string(base);
}

}  // namespace xo::config::test
