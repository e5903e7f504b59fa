// Configuration loader (config/loader.hpp): load_string on fuzzed TOML, then describe() when the
// configuration is valid.
//
// The config "lives" in a directory that does not exist, so relative file names (secret files,
// certificates) resolve to nothing; absolute ones are only opened read-only by the loader.
//
// Invariants (ids for XO_FUZZ_ALLOW):
//   config-throws        load_string or describe threw
//   config-diagnostic    a diagnostic without the file name, without a message, with a line past
//                        the end of the text, or filed under the wrong list (error vs warning)
#include "fuzz_common.hpp"

#include "config/loader.hpp"

#include <algorithm>
#include <exception>

XO_FUZZ_ENTRY(config) {
  using namespace xo::config;
  static const std::string path = "/nonexistent-xo-fuzz/etc/xoauth-proxy.toml";
  std::string_view text{reinterpret_cast<const char*>(data), size};
  const auto lines = static_cast<int>(std::count(text.begin(), text.end(), '\n')) + 1;
  try {
    load_result r = load_string(text, path);
    auto check = [&](const diagnostic& d, bool warning) {
      const std::string s = d.to_string();
      XO_FUZZ_CHECK("config-diagnostic", d.where.file == path, s);
      XO_FUZZ_CHECK("config-diagnostic", s.starts_with(path + ":"), s);
      XO_FUZZ_CHECK("config-diagnostic", !d.message.empty(), s);
      XO_FUZZ_CHECK("config-diagnostic", d.where.line >= 0 && d.where.line <= lines &&
                                             d.where.column >= 0, s);
      XO_FUZZ_CHECK("config-diagnostic", d.warning == warning, s);
    };
    for (const auto& d : r.errors) check(d, false);
    for (const auto& d : r.warnings) check(d, true);
    if (r.ok()) {
      (void)describe(r.cfg);
      (void)r.cfg.find_account("alice@contoso.com");
      (void)r.cfg.find_provider("contoso");
    }
  } catch (const std::exception& e) {
    XO_FUZZ_CHECK("config-throws", false, e.what());
  } catch (...) {
    XO_FUZZ_CHECK("config-throws", false, "unknown exception");
  }
  return 0;
}
