#pragma once
// Internal to config/: the pieces shared by loader.cpp (syntax and shape passes), validate.cpp
// (meaning pass) and describe.cpp. Nothing outside config/ includes this header; other layers see
// only config/config.hpp and config/loader.hpp.
//
// Rules every function here keeps:
//  - Diagnostics never contain the value of a secret (client_secret, password_hash): type errors
//    name the expected and found types only, and value checks on secrets describe the rule.
//  - Diagnostic keys are dotted paths with 1-based indexes: "listener[2].upstream".
#include "config/config.hpp"

#include <toml++/toml.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace xo::config::detail {

// Everything one load shares: the file name for diagnostics, the base directory for relative
// paths, and the diagnostics found so far.
class load_context {
 public:
  explicit load_context(std::string file);

  const std::string& file() const noexcept { return file_; }
  // `p` unchanged when absolute or when the config file has no directory part; otherwise
  // "<config dir>/p", lexically normalized.
  std::string resolve_path(std::string_view p) const;

  void error(source_pos at, std::string key, std::string message);
  void warning(source_pos at, std::string key, std::string message);
  // Sorted by position (stable; diagnostics without a position last). Leaves the lists empty.
  std::vector<diagnostic> take_errors();
  std::vector<diagnostic> take_warnings();

 private:
  std::string file_;
  std::filesystem::path dir_;
  std::vector<diagnostic> errors_;
  std::vector<diagnostic> warnings_;
};

// The position of a toml++ region in `file` (line/column 0 when toml++ has none).
source_pos position_of(const toml::source_region& r, const std::string& file);

template <class T>
struct located {
  T value;
  source_pos where;
};

enum class need { optional, required };
enum class expand { env, none };

// Wraps one TOML table. Every getter records its key as known, so call a getter for every key the
// table may hold, even when the value is not needed; finish() then reports the rest as unknown.
// A missing required key or a wrong type is reported to the context and yields std::nullopt.
// The table and the context must outlive the reader.
class reader {
 public:
  // `prefix` is this table's diagnostic key: "" for the root, "proxy", "listener[2]".
  reader(const toml::table& table, std::string prefix, load_context& ctx);

  // A required string must also be non-empty. With expand::env, every ${NAME} is replaced from
  // the environment; an unset NAME is reported (naming NAME only) and yields std::nullopt.
  std::optional<located<std::string>> string(std::string_view key, need n = need::optional,
                                             expand e = expand::env);
  std::optional<located<std::int64_t>> integer(std::string_view key, need n = need::optional);
  // An array whose elements are all strings (each expanded); one bad element voids the array.
  std::optional<located<std::vector<std::string>>> string_array(std::string_view key);
  // An optional sub-table `[key]`.
  std::optional<reader> table(std::string_view key);
  // `[[key]]`: one reader per element, with prefix "key[i]" (1-based). When required, an absent
  // or empty array is reported as "at least one [[key]] is required".
  std::vector<reader> table_array(std::string_view key, need n = need::optional);

  // Reports every key no getter asked for: "unknown key 'lisen' (did you mean 'listen'?)".
  void finish();

  // Whether the table holds `k` at all (of any type); does not mark it as known.
  bool has(std::string_view k) const { return table_->contains(k); }
  // "prefix.key", or "key" for the root.
  std::string key(std::string_view k) const;
  const std::string& prefix() const noexcept { return prefix_; }
  const source_pos& where() const noexcept { return where_; }
  load_context& ctx() const noexcept { return *ctx_; }

 private:
  const toml::node* lookup(std::string_view key, need n);
  void wrong_type(std::string_view key, const toml::node& n, std::string_view expected);

  const toml::table* table_;
  std::string prefix_;
  source_pos where_;
  load_context* ctx_;
  std::vector<std::string> known_;
};

// "a string", "an integer", ... for messages.
std::string_view type_name(toml::node_type t);

// ${NAME} expansion, NAME = [A-Za-z_][A-Za-z0-9_]*. Any other '$' is literal.
struct expansion {
  std::string text;                // the expanded text (may hold a secret: never put in a message)
  std::vector<std::string> names;  // variables referenced, in order
  std::string unset;               // first referenced variable that is not set; empty when ok
  bool ok() const noexcept { return unset.empty(); }
};
expansion expand_env(std::string_view raw);

// Levenshtein distance, and the candidate close enough to `word` to suggest, if any.
std::size_t edit_distance(std::string_view a, std::string_view b);
std::optional<std::string> closest(std::string_view word,
                                   const std::vector<std::string>& candidates);

bool iequals(std::string_view a, std::string_view b) noexcept;  // ASCII case-insensitive

// A regular file's bytes, at most `limit` + 1 of them (so callers can tell "too large").
// std::nullopt with an errno value in `err` when it cannot be opened or read, or is not a regular
// file (EISDIR / EINVAL).
std::optional<std::string> read_file(const std::string& path, std::size_t limit, int& err);
// Resolves `v` against the config directory and checks that it names a readable regular file.
std::optional<std::string> readable_file(const located<std::string>& v, std::string key,
                                         load_context& c);

// ---- meaning pass (validate.cpp) ----

// One parsed [[section]] entry with the position of every value that read and converted cleanly.
// Cross-entry checks use only keys present here, so one mistake is reported once.
class positions {
 public:
  positions(std::string key, source_pos table) : key_(std::move(key)), table_(std::move(table)) {}
  void set(std::string_view k, source_pos at);
  bool has(std::string_view k) const;
  const source_pos& of(std::string_view k) const;  // the table's position when absent
  std::string key(std::string_view k) const { return key_ + "." + std::string(k); }

 private:
  std::string key_;  // "listener[2]"
  source_pos table_;
  std::vector<std::pair<std::string, source_pos>> keys_;
};

// Value checks; each reports its own error at `v.where` under `key` and returns std::nullopt
// (or false).
std::optional<log_format> parse_log_format(const located<std::string>& v, std::string key,
                                           load_context& c);
std::optional<std::string> parse_log_level(const located<std::string>& v, std::string key,
                                           load_context& c);
std::optional<tls_mode> parse_tls_mode(const located<std::string>& v, std::string key,
                                       load_context& c);
std::optional<upstream_tls_mode> parse_upstream_tls(const located<std::string>& v, std::string key,
                                                    load_context& c);
std::optional<protocol_kind> parse_protocol(const located<std::string>& v, std::string key,
                                            load_context& c);
std::optional<flow_kind> parse_flow(const located<std::string>& v, std::string key,
                                    load_context& c);
// Seconds: at least `minimum` (>= 1) and at most a week.
std::optional<std::chrono::seconds> parse_seconds(const located<std::int64_t>& v, std::string key,
                                                  std::int64_t minimum, load_context& c);
enum class address_kind { listen, upstream };
std::optional<host_port> parse_host_port(const located<std::string>& v, std::string key,
                                         address_kind k, load_context& c);
bool check_login(const located<std::string>& v, std::string key, load_context& c);
bool check_mailbox(const located<std::string>& v, std::string key, load_context& c);
bool check_password_hash(const located<std::string>& v, std::string key, load_context& c);
bool check_tenant(const located<std::string>& v, std::string key, load_context& c);
std::optional<std::string> parse_authority(const located<std::string>& v, std::string key,
                                           load_context& c);

// Checks across entries: unique provider names and logins, account.provider references, unique
// listen addresses, and the plaintext-on-the-network warning. Vectors are parallel to `cfg`'s.
struct entry_positions {
  std::vector<positions> providers;
  std::vector<positions> listeners;
  std::vector<positions> accounts;
};
void check_references(const config& cfg, const entry_positions& pos, load_context& c);
bool check_ehlo_name(const located<std::string>& v, std::string key, load_context& c);
std::optional<std::vector<cidr>> parse_cidrs(const located<std::vector<std::string>>& v,
                                             std::string key, load_context& c);
std::optional<cidr> parse_cidr(std::string_view text);
// public_base_url: "http(s)://host[:port][/path]", no query or fragment; trailing '/' removed.
std::optional<std::string> parse_base_url(const located<std::string>& v, std::string key,
                                          load_context& c);
std::optional<std::vector<std::string>> parse_sender_patterns(
    const located<std::vector<std::string>>& v, std::string key, load_context& c);

}  // namespace xo::config::detail
