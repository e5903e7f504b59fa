#pragma once
// Small text helpers for the POP3 flow (login_flow.cpp, login_flow_upstream.cpp).
#include <openssl/crypto.h>

#include <string>
#include <string_view>

namespace xo::protocol::pop3::text {

inline char upper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; }

// ASCII only: keywords are case-insensitive (RFC 1939 §3); user data is never folded.
inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (upper(a[i]) != upper(b[i])) return false;
  return true;
}

inline bool istarts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals(s.substr(0, prefix.size()), prefix);
}

// A status indicator followed by the end of the line or a space (RFC 1939 §3).
inline bool is_status(std::string_view line, std::string_view indicator) {
  return istarts_with(line, indicator) &&
         (line.size() == indicator.size() || line[indicator.size()] == ' ');
}

// "+" or "+ text" is a SASL continuation (RFC 5034 §4); "+OK" is not.
inline bool is_continuation(std::string_view line) { return line == "+" || line.starts_with("+ "); }

inline std::string_view trim_trailing_space(std::string_view s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// A peer's words for a log line or a reason: bounded.
inline std::string clip(std::string_view s, std::size_t n = 200) {
  return std::string{s.substr(0, n)};
}

inline void wipe(std::string& s) {
  if (!s.empty()) OPENSSL_cleanse(s.data(), s.size());
  s.clear();
}

}  // namespace xo::protocol::pop3::text
