#pragma once
// Helpers of the admin HTTP listener (proxy/admin_server.cpp), kept apart so they are unit-tested
// directly: HTML pages (every value escaped), form and query parsing, the CSRF value, the Host
// allow-list against DNS rebinding and the JSON shapes of the /api and /readyz answers are pure
// (no I/O, no clock: callers pass `now`); the last two functions write and remove admin.json. Nothing here ever sees a token or a secret except csrf_for(),
// whose input is the admin token and whose output is safe to embed in the page.
#include "auth/token_engine.hpp"

#include <boost/json/object.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace xo::proxy::admin_detail {

// & < > " ' as character references: safe in element content and in quoted attributes.
std::string html_escape(std::string_view s);

// The suffix of the page's element ids for an account: the login with '@', '.' (and white space,
// which an id cannot hold) replaced by '-'. "alice@contoso.com" → "alice-contoso-com".
std::string element_id(std::string_view login);

// Decoded name → value pairs of an application/x-www-form-urlencoded body or of a URL query
// (without the '?'; '+' is a space in both). The first of repeated names wins; a name without
// '=' has an empty value. nullopt when malformed (a bad percent escape).
std::optional<std::map<std::string, std::string>> parse_form(std::string_view encoded);

// The page forms' CSRF field: lower-case hex of HMAC-SHA256(key = admin token, "csrf").
std::string csrf_for(std::string_view admin_token);

// Host header values the listener answers to (DNS rebinding): the bound address, localhost,
// 127.0.0.1 and [::1] with the bound port, and the host[:port] of public_base_url (with and
// without its scheme's default port). Lower case. bound_host is an IP literal (v6 unbracketed).
std::vector<std::string> allowed_hosts(std::string_view bound_host, std::uint16_t port,
                                       std::string_view public_base_url);
// ASCII case-insensitive match of a Host header against allowed_hosts().
bool host_allowed(std::string_view host_header, const std::vector<std::string>& allowed);

// The path of public_base_url without a trailing '/': "" for "https://proxy.example.com",
// "/xoauth" for "https://example.com/xoauth/" (a reverse proxy may forward the prefix).
std::string base_path(std::string_view public_base_url);

// The Content-Security-Policy of every answer: nothing loads but inline style; forms post to us
// and may be redirected (303) to an authority, so their origins are allowed as form targets.
// authorities: provider authority URLs ("https://login.microsoftonline.com"); invalid ones are
// skipped.
std::string content_security_policy(const std::vector<std::string>& authorities);

// "2024-05-01T12:34:56Z"
std::string iso8601_utc(auth::wall_clock::time_point t);

// account_status as JSON: every field; times both as ISO-8601 UTC strings and as unix seconds
// ("<name>_unix"), null when absent; flow via config::to_string.
boost::json::object account_json(const auth::account_status& s);
// {"ok","error","authorize_url","verification_uri","user_code","message","expires_in"}
boost::json::object start_json(const auth::authorization_start& s);
// {"ready": bool, "accounts": {"<state>": count, ...}}
boost::json::object readyz_json(bool ready, const std::vector<auth::account_status>& accounts);

// GET /: the providers table, the accounts table with an authorize form per interactive account
// (hidden account and csrf fields; "Authorize" kind=code for authorization_code, "Sign in with a
// device code" kind=device), refreshing every 5 s while an account is "authorizing".
std::string status_page(const std::vector<auth::provider_status>& providers,
                        const std::vector<auth::account_status>& accounts, std::string_view csrf);
// The answer to a device-code start: where to go, what to type, until when; a link back to "/".
std::string device_page(std::string_view account, const auth::authorization_start& s,
                        auth::wall_clock::time_point now);
// A short page with a title, a message and a link back to "/" (errors, the OAuth callback).
std::string message_page(std::string_view title, std::string_view message);

// Writes dir/name atomically: a temporary file in dir (O_EXCL, mode 0600), fsync, rename, fsync
// of the directory; dir is created (mode 0700) when missing. Returns an error text, empty on
// success.
std::string write_file_atomic(const std::filesystem::path& dir, const std::string& name,
                              std::string_view content);
// Removes path only if it still holds `content` (another process may have replaced it since).
bool remove_if_unchanged(const std::filesystem::path& path, std::string_view content);

}  // namespace xo::proxy::admin_detail
