// The shape pass's tools: a TOML table reader that checks types, required keys and unknown keys,
// plus ${VAR} expansion, key suggestions, file access and the per-load diagnostic list.
#include "config/reader.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <system_error>

namespace xo::config::detail {

// ---- load_context ----

load_context::load_context(std::string file)
    : file_(std::move(file)), dir_(std::filesystem::path(file_).parent_path()) {}

std::string load_context::resolve_path(std::string_view p) const {
  std::filesystem::path path{std::string(p)};
  if (path.is_absolute() || dir_.empty()) return path.string();
  return (dir_ / path).lexically_normal().string();
}

void load_context::error(source_pos at, std::string key, std::string message) {
  errors_.push_back({std::move(at), std::move(key), std::move(message), false});
}

void load_context::warning(source_pos at, std::string key, std::string message) {
  warnings_.push_back({std::move(at), std::move(key), std::move(message), true});
}

namespace {

std::vector<diagnostic> sorted(std::vector<diagnostic>& v) {
  auto rank = [](const diagnostic& d) {
    return std::tuple{d.where.line == 0, d.where.line, d.where.column};
  };
  std::stable_sort(v.begin(), v.end(),
                   [&](const diagnostic& a, const diagnostic& b) { return rank(a) < rank(b); });
  return std::exchange(v, {});
}

}  // namespace

std::vector<diagnostic> load_context::take_errors() { return sorted(errors_); }
std::vector<diagnostic> load_context::take_warnings() { return sorted(warnings_); }

source_pos position_of(const toml::source_region& r, const std::string& file) {
  return {file, static_cast<int>(r.begin.line), static_cast<int>(r.begin.column)};
}

// ---- reader ----

reader::reader(const toml::table& table, std::string prefix, load_context& ctx)
    : table_(&table),
      prefix_(std::move(prefix)),
      where_(position_of(table.source(), ctx.file())),
      ctx_(&ctx) {}

std::string reader::key(std::string_view k) const {
  return prefix_.empty() ? std::string(k) : fmt::format("{}.{}", prefix_, k);
}

const toml::node* reader::lookup(std::string_view key_name, need n) {
  known_.emplace_back(key_name);
  const toml::node* node = table_->get(key_name);
  if (!node && n == need::required) {
    ctx_->error(where_, key(key_name), "missing required key");
  }
  return node;
}

void reader::wrong_type(std::string_view key_name, const toml::node& n, std::string_view expected) {
  ctx_->error(position_of(n.source(), ctx_->file()), key(key_name),
              fmt::format("expected {}, found {}", expected, type_name(n.type())));
}

std::optional<located<std::string>> reader::string(std::string_view key_name, need n, expand e) {
  const toml::node* node = lookup(key_name, n);
  if (!node) return std::nullopt;
  source_pos at = position_of(node->source(), ctx_->file());
  const auto* s = node->as_string();
  if (!s) {
    wrong_type(key_name, *node, "a string");
    return std::nullopt;
  }
  std::string text = s->get();
  if (e == expand::env) {
    expansion x = expand_env(text);
    if (!x.ok()) {
      ctx_->error(at, key(key_name), fmt::format("environment variable '{}' is not set", x.unset));
      return std::nullopt;
    }
    text = std::move(x.text);
  }
  if (n == need::required && text.empty()) {
    ctx_->error(at, key(key_name), "must not be empty");
    return std::nullopt;
  }
  return located<std::string>{std::move(text), std::move(at)};
}

std::optional<located<std::int64_t>> reader::integer(std::string_view key_name, need n) {
  const toml::node* node = lookup(key_name, n);
  if (!node) return std::nullopt;
  const auto* i = node->as_integer();
  if (!i) {
    wrong_type(key_name, *node, "an integer");
    return std::nullopt;
  }
  return located<std::int64_t>{i->get(), position_of(node->source(), ctx_->file())};
}

std::optional<located<std::vector<std::string>>> reader::string_array(std::string_view key_name) {
  const toml::node* node = lookup(key_name, need::optional);
  if (!node) return std::nullopt;
  const auto* arr = node->as_array();
  if (!arr) {
    wrong_type(key_name, *node, "an array of strings");
    return std::nullopt;
  }
  located<std::vector<std::string>> out{{}, position_of(node->source(), ctx_->file())};
  bool ok = true;
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const toml::node& el = *arr->get(i);
    std::string el_key = fmt::format("{}[{}]", key_name, i + 1);
    source_pos at = position_of(el.source(), ctx_->file());
    if (!el.is_string()) {
      ctx_->error(at, key(el_key),
                  fmt::format("expected a string, found {}", type_name(el.type())));
      ok = false;
      continue;
    }
    expansion x = expand_env(el.as_string()->get());
    if (!x.ok()) {
      ctx_->error(at, key(el_key), fmt::format("environment variable '{}' is not set", x.unset));
      ok = false;
      continue;
    }
    out.value.push_back(std::move(x.text));
  }
  if (!ok) return std::nullopt;
  return out;
}

std::optional<reader> reader::table(std::string_view key_name) {
  const toml::node* node = lookup(key_name, need::optional);
  if (!node) return std::nullopt;
  const auto* t = node->as_table();
  if (!t) {
    wrong_type(key_name, *node, fmt::format("a table ([{}])", key_name));
    return std::nullopt;
  }
  return reader(*t, key(key_name), *ctx_);
}

std::vector<reader> reader::table_array(std::string_view key_name, need n) {
  std::vector<reader> out;
  known_.emplace_back(key_name);
  const toml::node* node = table_->get(key_name);
  const auto* arr = node ? node->as_array() : nullptr;
  if (node && !arr) {
    wrong_type(key_name, *node, fmt::format("an array of tables ([[{}]])", key_name));
    return out;
  }
  if (n == need::required && (!arr || arr->empty())) {
    // The root table's own position (1:1) would point at whatever comes first: give none.
    source_pos at = arr               ? position_of(arr->source(), ctx_->file())
                    : prefix_.empty() ? source_pos{ctx_->file(), 0, 0}
                                      : where_;
    ctx_->error(std::move(at), key(key_name),
                fmt::format("at least one [[{}]] is required", key_name));
  }
  if (!arr) return out;
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const toml::node& el = *arr->get(i);
    std::string el_key = key(fmt::format("{}[{}]", key_name, i + 1));
    if (const auto* t = el.as_table()) {
      out.emplace_back(*t, std::move(el_key), *ctx_);
    } else {
      ctx_->error(position_of(el.source(), ctx_->file()), std::move(el_key),
                  fmt::format("expected a table, found {}", type_name(el.type())));
    }
  }
  return out;
}

void reader::finish() {
  for (auto&& [k, v] : *table_) {
    const std::string_view name = k.str();
    if (std::find(known_.begin(), known_.end(), name) != known_.end()) continue;
    std::string msg = fmt::format("unknown key '{}'", name);
    if (auto hint = closest(name, known_)) msg += fmt::format(" (did you mean '{}'?)", *hint);
    ctx_->error(position_of(k.source(), ctx_->file()), key(name), std::move(msg));
  }
}

std::string_view type_name(toml::node_type t) {
  switch (t) {
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a floating-point number";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    case toml::node_type::none:
      break;
  }
  return "nothing";
}

// ---- ${VAR} expansion ----

namespace {

bool name_start(char ch) {
  return ch == '_' || (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z');
}
bool name_char(char ch) { return name_start(ch) || (ch >= '0' && ch <= '9'); }

// Length of a valid NAME followed by '}' at the start of `s`, or 0.
std::size_t name_length(std::string_view s) {
  if (s.empty() || !name_start(s[0])) return 0;
  std::size_t n = 1;
  while (n < s.size() && name_char(s[n])) ++n;
  return n < s.size() && s[n] == '}' ? n : 0;
}

}  // namespace

expansion expand_env(std::string_view raw) {
  expansion x;
  std::size_t i = 0;
  while (i < raw.size()) {
    std::size_t n = raw.substr(i).starts_with("${") ? name_length(raw.substr(i + 2)) : 0;
    if (n == 0) {
      x.text += raw[i++];
      continue;
    }
    std::string name(raw.substr(i + 2, n));
    const char* value = std::getenv(name.c_str());
    if (value) {
      x.text += value;
    } else if (x.unset.empty()) {
      x.unset = name;
    }
    x.names.push_back(std::move(name));
    i += n + 3;  // "${" NAME "}"
  }
  return x;
}

// ---- suggestions ----

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      std::size_t up = row[j];
      std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + cost});
      diag = up;
    }
  }
  return row[b.size()];
}

std::optional<std::string> closest(std::string_view word,
                                   const std::vector<std::string>& candidates) {
  // Allow about one typo per three characters, and at least two; never a whole-word rewrite.
  const std::size_t limit = std::max<std::size_t>(2, word.size() / 3);
  std::optional<std::string> best;
  std::size_t best_d = limit + 1;
  for (const auto& c : candidates) {
    std::size_t d = edit_distance(word, c);
    if (d < best_d && d < std::max(word.size(), c.size())) {
      best_d = d;
      best = c;
    }
  }
  return best;
}

bool iequals(std::string_view a, std::string_view b) noexcept {
  auto lower = [](char ch) {
    return ch >= 'A' && ch <= 'Z' ? static_cast<char>(ch - 'A' + 'a') : ch;
  };
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [&](char x, char y) { return lower(x) == lower(y); });
}

// ---- files ----

std::optional<std::string> read_file(const std::string& path, std::size_t limit, int& err) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    err = errno;
    return std::nullopt;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    err = S_ISDIR(st.st_mode) ? EISDIR : EINVAL;
    ::close(fd);
    return std::nullopt;
  }
  std::string data(limit + 1, '\0');
  std::size_t used = 0;
  while (used < data.size()) {
    ssize_t n = ::read(fd, data.data() + used, data.size() - used);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno;
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    used += static_cast<std::size_t>(n);
  }
  ::close(fd);
  data.resize(used);
  return data;
}

std::optional<std::string> readable_file(const located<std::string>& v, std::string key,
                                         load_context& c) {
  std::string path = c.resolve_path(v.value);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    c.error(v.where, std::move(key),
            fmt::format("cannot read '{}': {}", path, std::generic_category().message(errno)));
    return std::nullopt;
  }
  struct stat st {};
  bool regular = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  ::close(fd);
  if (!regular) {
    c.error(v.where, std::move(key), fmt::format("'{}' is not a regular file", path));
    return std::nullopt;
  }
  return path;
}

// ---- positions ----

void positions::set(std::string_view k, source_pos at) {
  keys_.emplace_back(std::string(k), std::move(at));
}

bool positions::has(std::string_view k) const {
  return std::any_of(keys_.begin(), keys_.end(), [&](const auto& e) { return e.first == k; });
}

const source_pos& positions::of(std::string_view k) const {
  for (const auto& e : keys_) {
    if (e.first == k) return e.second;
  }
  return table_;
}

}  // namespace xo::config::detail
