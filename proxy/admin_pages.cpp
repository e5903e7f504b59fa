#include "proxy/admin_pages.hpp"

#include "common/ascii.hpp"

#include <boost/json.hpp>
#include <boost/url/encoding_opts.hpp>
#include <boost/url/parse.hpp>
#include <boost/url/parse_query.hpp>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iterator>

namespace xo::proxy::admin_detail {

namespace json = boost::json;
namespace urls = boost::urls;
using auth::wall_clock;

namespace {

std::string lower(std::string_view s) { return ascii_lower(s); }

json::value time_or_null(const std::optional<wall_clock::time_point>& t) {
  if (!t) return nullptr;
  return json::value(iso8601_utc(*t));
}

json::value unix_or_null(const std::optional<wall_clock::time_point>& t) {
  if (!t) return nullptr;
  return json::value(static_cast<std::int64_t>(
      std::chrono::duration_cast<std::chrono::seconds>(t->time_since_epoch()).count()));
}

std::string time_cell(const std::optional<wall_clock::time_point>& t) {
  return t ? iso8601_utc(*t) : std::string{"-"};
}

// Only http(s) URLs become links: a javascript: or data: URL from a hostile IdP answer must not.
bool linkable(std::string_view url) {
  auto l = lower(url.substr(0, 8));
  return l.starts_with("https://") || l.starts_with("http://");
}

std::string link_or_text(std::string_view url, std::string_view id) {
  if (!linkable(url)) return fmt::format("<code>{}</code>", html_escape(url));
  return fmt::format("<a id=\"{}\" href=\"{}\">{}</a>", id, html_escape(url), html_escape(url));
}

constexpr std::string_view page_style =
    "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}"
    "table{border-collapse:collapse;margin-bottom:1.5em}"
    "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}code{font-size:.95em}"
    ".state{font-weight:bold}.error{color:#a00}"
    "form{display:inline}button{margin:.1em}";

void page_head(std::string& out, std::string_view title, bool refresh) {
  out += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">";
  if (refresh) out += "<meta http-equiv=\"refresh\" content=\"5\">";
  fmt::format_to(std::back_inserter(out), "<title>{}</title><style>{}</style></head><body>\n",
                 html_escape(title), page_style);
}

void providers_table(std::string& out, const std::vector<auth::provider_status>& providers) {
  out += "<h2>Providers</h2>\n<table id=\"providers\"><thead><tr><th>Name</th><th>Tenant</th>"
         "<th>Client ID</th><th>Client credential</th>"
         "<th>Redirect URI (register in Azure, platform &quot;Web&quot;)</th></tr></thead>"
         "<tbody>\n";
  for (const auto& p : providers)
    fmt::format_to(std::back_inserter(out),
                   "<tr id=\"provider-{}\"><td class=\"name\">{}</td><td class=\"tenant\">{}</td>"
                   "<td class=\"client-id\">{}</td><td class=\"credential\">{}</td>"
                   "<td class=\"redirect-uri\"><code>{}</code></td></tr>\n",
                   html_escape(element_id(p.name)), html_escape(p.name), html_escape(p.tenant),
                   html_escape(p.client_id), html_escape(p.client_credential),
                   html_escape(p.redirect_uri));
  out += "</tbody></table>\n";
}

std::string device_cell(const auth::account_status& a, std::string_view id) {
  if (a.user_code.empty()) return "-";
  std::string out = fmt::format("<code class=\"user-code\">{}</code> at {}",
                                html_escape(a.user_code),
                                link_or_text(a.verification_uri, fmt::format("verify-{}", id)));
  if (a.pending_expires) out += ", expires " + iso8601_utc(*a.pending_expires);
  return out;
}

std::string actions_cell(const auth::account_status& a, std::string_view id,
                         std::string_view csrf) {
  const bool code = a.flow == config::flow_kind::authorization_code;
  // A wildcard entry is not a login one can sign in as.
  if ((!code && a.flow != config::flow_kind::device_code) || a.login.starts_with("*@")) return "";
  std::string out = fmt::format(
      "<form method=\"post\" action=\"/authorize\"><input type=\"hidden\" name=\"account\" "
      "value=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
      html_escape(a.login), html_escape(csrf));
  if (code)
    fmt::format_to(std::back_inserter(out),
                   "<button type=\"submit\" name=\"kind\" value=\"code\" id=\"authorize-{}\">"
                   "Authorize</button>",
                   id);
  fmt::format_to(std::back_inserter(out),
                 "<button type=\"submit\" name=\"kind\" value=\"device\" id=\"device-{}\">"
                 "Sign in with a device code</button></form>",
                 id);
  return out;
}

void accounts_table(std::string& out, const std::vector<auth::account_status>& accounts,
                    std::string_view csrf) {
  out += "<h2>Accounts</h2>\n<table id=\"accounts\"><thead><tr><th>Login</th><th>Provider</th>"
         "<th>Flow</th><th>State</th><th>Access token expires (UTC)</th>"
         "<th>Last refresh (UTC)</th><th>Last error</th><th>Stored</th>"
         "<th>Pending device code</th><th></th></tr></thead><tbody>\n";
  for (const auto& a : accounts) {
    const auto id = html_escape(element_id(a.login));
    fmt::format_to(std::back_inserter(out),
                   "<tr id=\"account-{}\"><td class=\"login\">{}</td><td class=\"provider\">{}</td>"
                   "<td class=\"flow\">{}</td><td class=\"state\">{}</td>"
                   "<td class=\"access-expires\">{}</td><td class=\"refreshed\">{}</td>"
                   "<td class=\"last-error error\">{}</td><td class=\"stored\">{}</td>"
                   "<td class=\"device-code\">{}</td><td class=\"actions\">{}</td></tr>\n",
                   id, html_escape(a.login), html_escape(a.provider),
                   html_escape(config::to_string(a.flow)), html_escape(a.state),
                   time_cell(a.access_expires), time_cell(a.refreshed), html_escape(a.last_error),
                   a.stored ? "yes" : "no", device_cell(a, id), actions_cell(a, id, csrf));
  }
  out += "</tbody></table>\n";
}

}  // namespace

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + s.size() / 8);
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string element_id(std::string_view login) {
  std::string out{login};
  for (char& c : out)
    if (c == '@' || c == '.' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f')
      c = '-';
  return out;
}

std::optional<std::map<std::string, std::string>> parse_form(std::string_view encoded) {
  std::map<std::string, std::string> out;
  if (encoded.empty()) return out;
  auto params = urls::parse_query(encoded);
  if (!params) return std::nullopt;
  urls::encoding_opts opt;
  opt.space_as_plus = true;
  for (auto p : *params) {
    if (p.key.empty() && !p.has_value) continue;  // "a=1&&b=2"
    out.emplace(p.key.decode(opt), p.has_value ? p.value.decode(opt) : std::string{});
  }
  return out;
}

std::string csrf_for(std::string_view admin_token) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  static constexpr unsigned char label[] = {'c', 's', 'r', 'f'};
  if (!HMAC(EVP_sha256(), admin_token.data(), static_cast<int>(admin_token.size()), label,
            sizeof label, mac, &len))
    throw std::runtime_error("HMAC-SHA256 failed");
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += digits[mac[i] >> 4];
    out += digits[mac[i] & 0xf];
  }
  return out;
}

std::vector<std::string> allowed_hosts(std::string_view bound_host, std::uint16_t port,
                                       std::string_view public_base_url) {
  const auto p = std::to_string(port);
  std::vector<std::string> out;
  const bool v6 = bound_host.find(':') != std::string_view::npos;
  out.push_back(lower(v6 ? fmt::format("[{}]:{}", bound_host, p)
                         : fmt::format("{}:{}", bound_host, p)));
  out.push_back("localhost:" + p);
  out.push_back("127.0.0.1:" + p);
  out.push_back("[::1]:" + p);
  if (auto u = urls::parse_absolute_uri(public_base_url); u && u->has_authority()) {
    const std::string host = lower(u->encoded_host());
    const std::string_view def = u->scheme_id() == urls::scheme::https ? "443" : "80";
    if (!host.empty()) {
      if (!u->has_port() || std::string_view{u->port()} == def) {
        out.push_back(host);
        out.push_back(fmt::format("{}:{}", host, def));
      } else {
        out.push_back(fmt::format("{}:{}", host, std::string_view{u->port()}));
      }
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

bool host_allowed(std::string_view host_header, const std::vector<std::string>& allowed) {
  if (host_header.empty()) return false;
  const auto h = lower(host_header);
  return std::find(allowed.begin(), allowed.end(), h) != allowed.end();
}

std::string base_path(std::string_view public_base_url) {
  auto u = urls::parse_absolute_uri(public_base_url);
  if (!u) return {};
  std::string p{std::string_view{u->encoded_path()}};
  while (!p.empty() && p.back() == '/') p.pop_back();
  return p;
}

std::string content_security_policy(const std::vector<std::string>& authorities) {
  std::vector<std::string> origins;
  for (const auto& a : authorities) {
    auto u = urls::parse_absolute_uri(a);
    if (!u || !u->has_authority() ||
        (u->scheme_id() != urls::scheme::https && u->scheme_id() != urls::scheme::http))
      continue;
    std::string_view hp = u->encoded_host_and_port();
    // A source expression ends at white space, ';' or ','; anything odd is left out.
    if (hp.empty() || hp.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                            "0123456789.-:[]") != std::string_view::npos)
      continue;
    origins.push_back(lower(fmt::format("{}://{}", std::string_view{u->scheme()}, hp)));
  }
  std::sort(origins.begin(), origins.end());
  origins.erase(std::unique(origins.begin(), origins.end()), origins.end());
  std::string form_action = "'self'";
  for (const auto& o : origins) form_action += " " + o;
  return fmt::format("default-src 'none'; style-src 'unsafe-inline'; form-action {}; "
                     "frame-ancestors 'none'; base-uri 'none'",
                     form_action);
}

std::string iso8601_utc(wall_clock::time_point t) {
  const std::time_t tt = wall_clock::to_time_t(t);
  std::tm tm{};
  if (!gmtime_r(&tt, &tm)) return "?";
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

json::object account_json(const auth::account_status& s) {
  json::object o;
  o["login"] = s.login;
  o["provider"] = s.provider;
  o["flow"] = config::to_string(s.flow);
  o["state"] = s.state;
  o["access_expires"] = time_or_null(s.access_expires);
  o["access_expires_unix"] = unix_or_null(s.access_expires);
  o["refreshed"] = time_or_null(s.refreshed);
  o["refreshed_unix"] = unix_or_null(s.refreshed);
  o["authorized"] = time_or_null(s.authorized);
  o["authorized_unix"] = unix_or_null(s.authorized);
  o["last_error"] = s.last_error;
  o["stored"] = s.stored;
  o["user_code"] = s.user_code;
  o["verification_uri"] = s.verification_uri;
  o["pending_expires"] = time_or_null(s.pending_expires);
  o["pending_expires_unix"] = unix_or_null(s.pending_expires);
  o["token_requests"] = s.token_requests;
  return o;
}

json::object start_json(const auth::authorization_start& s) {
  json::object o;
  o["ok"] = s.ok;
  o["error"] = s.error;
  o["authorize_url"] = s.authorize_url;
  o["verification_uri"] = s.verification_uri;
  o["user_code"] = s.user_code;
  o["message"] = s.message;
  o["expires_in"] = static_cast<std::int64_t>(s.expires_in.count());
  return o;
}

json::object readyz_json(bool ready, const std::vector<auth::account_status>& accounts) {
  std::map<std::string, std::int64_t> counts;
  for (const auto& a : accounts) ++counts[a.state];
  json::object by_state;
  for (const auto& [state, n] : counts) by_state[state] = n;
  json::object o;
  o["ready"] = ready;
  o["accounts"] = std::move(by_state);
  return o;
}

std::string status_page(const std::vector<auth::provider_status>& providers,
                        const std::vector<auth::account_status>& accounts, std::string_view csrf) {
  const bool authorizing = std::any_of(accounts.begin(), accounts.end(),
                                       [](const auto& a) { return a.state == "authorizing"; });
  std::string out;
  page_head(out, "xoauth-proxy", authorizing);
  out += "<h1>xoauth-proxy</h1>\n";
  providers_table(out, providers);
  accounts_table(out, accounts, csrf);
  out += "</body></html>\n";
  return out;
}

std::string device_page(std::string_view account, const auth::authorization_start& s,
                        wall_clock::time_point now) {
  std::string out;
  page_head(out, "Sign in with a device code", false);
  fmt::format_to(std::back_inserter(out),
                 "<h1>Sign in with a device code</h1>\n<p>Account: <code id=\"account\">{}</code>"
                 "</p>\n<p>Open {} and enter the code <code id=\"user-code\">{}</code></p>\n",
                 html_escape(account), link_or_text(s.verification_uri, "verification-uri"),
                 html_escape(s.user_code));
  if (s.expires_in.count() > 0)
    fmt::format_to(std::back_inserter(out),
                   "<p id=\"expires\">The code expires in {} minute(s), at {}.</p>\n",
                   (s.expires_in.count() + 59) / 60, iso8601_utc(now + s.expires_in));
  if (!s.message.empty())
    fmt::format_to(std::back_inserter(out), "<p id=\"message\">{}</p>\n", html_escape(s.message));
  out += "<p>This page does not update; the status page shows when the sign-in completes.</p>\n"
         "<p><a id=\"back\" href=\"/\">Back to the status page</a></p>\n</body></html>\n";
  return out;
}

std::string message_page(std::string_view title, std::string_view message) {
  std::string out;
  page_head(out, title, false);
  fmt::format_to(std::back_inserter(out),
                 "<h1>{}</h1>\n<p id=\"message\">{}</p>\n"
                 "<p><a id=\"back\" href=\"/\">Back to the status page</a></p>\n</body></html>\n",
                 html_escape(title), html_escape(message));
  return out;
}

std::string write_file_atomic(const std::filesystem::path& dir, const std::string& name,
                              std::string_view content) {
  namespace fs = std::filesystem;
  std::error_code fec;
  if (!fs::exists(dir, fec)) {
    if (fs::create_directories(dir, fec)) ::chmod(dir.c_str(), 0700);
    if (fec) return dir.string() + ": " + fec.message();
  }
  const auto path = dir / name;
  const auto tmp = dir / fmt::format(".{}.{}.tmp", name, ::getpid());
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return tmp.string() + ": " + std::strerror(errno);
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()) &&
            ::fsync(fd) == 0;
  int err = errno;
  ::close(fd);
  if (ok && ::rename(tmp.c_str(), path.c_str()) != 0) {
    ok = false;
    err = errno;
  }
  if (!ok) {
    ::unlink(tmp.c_str());
    return path.string() + ": " + std::strerror(err);
  }
  if (int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return {};
}

bool remove_if_unchanged(const std::filesystem::path& path, std::string_view content) {
  std::ifstream in{path, std::ios::binary};
  if (!in.is_open()) return false;
  const std::string now{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  return now == content && ::unlink(path.c_str()) == 0;
}

}  // namespace xo::proxy::admin_detail
