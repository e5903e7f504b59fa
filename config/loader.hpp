#pragma once
#include "config/config.hpp"

namespace xo::config {

struct load_result {
  config cfg;                        // meaningful only when errors is empty
  std::vector<diagnostic> errors;    // every error found, in file order
  std::vector<diagnostic> warnings;  // e.g. a non-loopback listener without TLS
  bool ok() const { return errors.empty(); }
};

// Parses and validates a TOML file: syntax, shape (types, required and unknown keys), meaning
// (references, addresses, readable files, secrets resolvable). Collects every error; never throws
// on bad input.
load_result load_file(const std::string& path);
// Same, from text (tests); `path` is only used in diagnostics and for relative file names.
load_result load_string(std::string_view text, const std::string& path);

// Throws config_error carrying every diagnostic when the file is invalid.
config load(const std::string& path);

// Human-readable summary for `xoauth-proxy check`: providers (token endpoint), listeners,
// accounts. Never prints a secret or a password hash.
std::string describe(const config& c);

}  // namespace xo::config
