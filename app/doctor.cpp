// `xoauth-proxy doctor [ACCOUNT...]` (issue 6): one line per check, ✓ or ✗ with the fix.
//
// 1. The config loads (config::load_file); when it does not, its errors are the only output.
// 2. Per provider: the client credential loads; the redirect URI to register (authorization_code
//    accounts only); the API permissions its accounts' flows and the listeners' protocols need.
// 3. Per account: a token — one client_credentials request for app-only accounts; for delegated
//    accounts only the unexpired access token in the token store (a refresh here would rotate the
//    refresh token behind a running proxy's back); its claims (aud, tid, exp, roles or scp for
//    every protocol with a listener); then one XOAUTH2 login per protocol against the upstream of
//    the first listener of that protocol, answering Exchange's replies with the fix in plain words.
// No token, secret or password is printed: only claims, server replies and our own text.
#include "app/doctor.hpp"

#include "auth/client_auth.hpp"
#include "auth/client_credentials.hpp"
#include "auth/delegated.hpp"
#include "auth/token_store.hpp"
#include "common/base64.hpp"
#include "config/loader.hpp"
#include "proxy/tls_contexts.hpp"
#include "proxy/upstream_connect.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace xo::app {

namespace {

namespace json = boost::json;
using config::flow_kind;
using config::protocol_kind;

constexpr std::string_view exo_guid = "00000002-0000-0ff1-ce00-000000000000";

enum class status { ok, fail, skip, warn };

struct check {
  std::string name;
  status st = status::ok;
  std::string detail;
  std::string fix;
};

class report {
 public:
  explicit report(bool json) : json_(json) {}
  void add(std::string name, status st, std::string detail, std::string fix = {}) {
    checks_.push_back({std::move(name), st, std::move(detail), std::move(fix)});
    if (json_) return;
    const auto& c = checks_.back();
    const char* mark = st == status::ok ? "✓" : st == status::fail ? "✗" : st == status::skip ? "-" : "!";
    std::string line = std::string{mark} + " " + c.name + ": " + c.detail;
    if (!c.fix.empty()) line += " — fix: " + c.fix;
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
  }
  bool ok() const {
    for (const auto& c : checks_)
      if (c.st == status::fail) return false;
    return true;
  }
  int finish() const {
    std::size_t failed = 0;
    for (const auto& c : checks_) failed += c.st == status::fail;
    if (json_) {
      json::array arr;
      for (const auto& c : checks_) {
        static constexpr const char* names[] = {"ok", "fail", "skip", "warn"};
        arr.push_back(json::object{{"name", c.name},
                                   {"status", names[static_cast<int>(c.st)]},
                                   {"ok", c.st != status::fail},
                                   {"detail", c.detail},
                                   {"fix", c.fix}});
      }
      json::object o{{"ok", failed == 0}, {"failed", failed}, {"checks", std::move(arr)}};
      std::printf("%s\n", json::serialize(o).c_str());
    } else {
      std::printf("%zu check(s), %zu failed\n", checks_.size(), failed);
    }
    return failed == 0 ? 0 : 1;
  }

 private:
  bool json_;
  std::vector<check> checks_;
};

// A server line as it may be shown: printable ASCII, at most 300 characters.
std::string clean(std::string_view s) {
  std::string out;
  for (char ch : s) {
    if (out.size() >= 300) {
      out += "...";
      break;
    }
    out.push_back(static_cast<unsigned char>(ch) >= 0x20 && ch != 0x7f ? ch : '?');
  }
  return out;
}

std::string join(const std::vector<std::string>& v, std::string_view sep) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : std::string{sep}) + s;
  return out;
}

// "IMAP.AccessAsUser.All" also when written "https://outlook.office.com/IMAP.AccessAsUser.All".
bool has_permission(const std::vector<std::string>& have, std::string_view want) {
  for (const auto& h : have) {
    std::string_view s = h;
    if (auto slash = s.rfind('/'); slash != std::string_view::npos) s.remove_prefix(slash + 1);
    if (s.size() == want.size() &&
        std::equal(s.begin(), s.end(), want.begin(), [](char a, char b) {
          return std::tolower(static_cast<unsigned char>(a)) ==
                 std::tolower(static_cast<unsigned char>(b));
        }))
      return true;
  }
  return false;
}

std::vector<std::string> split_spaces(std::string_view s) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < s.size()) {
    auto j = s.find(' ', i);
    if (j == std::string_view::npos) j = s.size();
    if (j > i) out.emplace_back(s.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

std::string_view app_role(protocol_kind p) {
  switch (p) {
    case protocol_kind::imap: return "IMAP.AccessAsApp";
    case protocol_kind::pop3: return "POP.AccessAsApp";
    case protocol_kind::smtp: return "SMTP.SendAsApp";
  }
  return "";
}
std::string_view user_scope(protocol_kind p) {
  switch (p) {
    case protocol_kind::imap: return "IMAP.AccessAsUser.All";
    case protocol_kind::pop3: return "POP.AccessAsUser.All";
    case protocol_kind::smtp: return "SMTP.Send";
  }
  return "";
}
std::string upper(std::string_view s) {
  std::string out{s};
  for (auto& ch : out) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  return out;
}

// ---- the client side of one upstream login ------------------------------------------------------

class line_conn {
 public:
  explicit line_conn(proxy::mail_stream s) : s_(std::move(s)) {}
  const std::string& error() const { return error_; }

  awaitable<std::optional<std::string>> read_line() {
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        if (!line.empty() && line.back() == '\r') line.pop_back();
        co_return line;
      }
      if (buf_.size() > 64 * 1024) {
        error_ = "reply line too long";
        co_return std::nullopt;
      }
      auto [ec, n] = co_await s_.read_some(asio::buffer(chunk_));
      if (ec) {
        error_ = "connection closed: " + ec.message();
        co_return std::nullopt;
      }
      buf_.append(chunk_, n);
    }
  }
  awaitable<bool> write_line(std::string line) {
    line += "\r\n";
    auto [ec, n] = co_await s_.write_all(asio::buffer(line));
    (void)n;
    if (ec) error_ = "write: " + ec.message();
    co_return !ec;
  }
  awaitable<bool> start_tls() {
    auto ec = co_await s_.start_tls(ssl::stream_base::client);
    if (ec) error_ = "STARTTLS handshake: " + ec.message();
    co_return !ec;
  }

 private:
  proxy::mail_stream s_;
  std::string buf_;
  std::string error_;
  char chunk_[4096];
};

struct login_outcome {
  bool ok = false;
  std::string reply;  // the server's refusal (or other unexpected reply), cleaned
  std::string error;  // a network or protocol failure before any answer to the token
};

// Reads to the tagged reply; untagged lines go to `untagged`.
awaitable<std::optional<std::string>> imap_tagged(line_conn& c, std::string tag,
                                                  std::vector<std::string>& untagged) {
  for (;;) {
    auto line = co_await c.read_line();
    if (!line) co_return std::nullopt;
    if (line->starts_with(tag + " ")) co_return line;
    untagged.push_back(std::move(*line));
  }
}

// Writes `cmd` and reads to its tagged reply (nullopt on a write or read failure).
awaitable<std::optional<std::string>> imap_cmd(line_conn& c, std::string tag, std::string cmd,
                                               std::vector<std::string>& untagged) {
  bool sent = co_await c.write_line(tag + " " + cmd);
  if (!sent) co_return std::nullopt;
  co_return co_await imap_tagged(c, std::move(tag), untagged);
}

awaitable<login_outcome> imap_login(line_conn& c, bool starttls, std::string ir) {
  login_outcome out;
  std::vector<std::string> lines;
  auto greet = co_await c.read_line();
  if (!greet) co_return login_outcome{false, "", "no greeting (" + c.error() + ")"};
  if (!greet->starts_with("* OK")) co_return login_outcome{false, clean(*greet), ""};
  if (starttls) {
    auto r = co_await imap_cmd(c, "s", "STARTTLS", lines);
    if (!r || !r->starts_with("s OK"))
      co_return login_outcome{false, "", "STARTTLS refused: " + (r ? clean(*r) : c.error())};
    bool tls = co_await c.start_tls();
    if (!tls) co_return login_outcome{false, "", c.error()};
  }
  lines.clear();
  auto caps = co_await imap_cmd(c, "c", "CAPABILITY", lines);
  if (!caps) co_return login_outcome{false, "", "CAPABILITY: " + c.error()};
  bool sasl_ir = false;
  for (const auto& l : lines) sasl_ir = sasl_ir || upper(l).find(" SASL-IR") != std::string::npos;
  bool ir_sent = sasl_ir;
  std::string cmd = sasl_ir ? "a AUTHENTICATE XOAUTH2 " + ir : std::string{"a AUTHENTICATE XOAUTH2"};
  bool sent = co_await c.write_line(std::move(cmd));
  if (!sent) co_return login_outcome{false, "", c.error()};
  std::optional<std::string> tagged;
  for (;;) {
    auto line = co_await c.read_line();
    if (!line) co_return login_outcome{false, "", "AUTHENTICATE: " + c.error()};
    if (line->starts_with("a ")) {
      tagged = std::move(line);
      break;
    }
    if (line->starts_with("+")) {
      // The token after a bare "+", or an empty line after a JSON failure challenge.
      std::string answer = ir_sent ? std::string{} : ir;
      ir_sent = true;
      sent = co_await c.write_line(std::move(answer));
      if (!sent) co_return login_outcome{false, "", c.error()};
    }
  }
  if (!tagged->starts_with("a OK")) co_return login_outcome{false, clean(*tagged), ""};
  // Exchange may accept the token and refuse every mailbox command ("User is authenticated but
  // not connected"): one harmless command shows it.
  lines.clear();
  auto ns = co_await imap_cmd(c, "n", "NAMESPACE", lines);
  if (!ns) co_return login_outcome{false, lines.empty() ? "" : clean(lines.back()), c.error()};
  if (!ns->starts_with("n OK")) co_return login_outcome{false, clean(*ns), ""};
  sent = co_await c.write_line("z LOGOUT");
  out.ok = true;
  out.reply = clean(*tagged);
  co_return out;
}

// An SMTP reply: its code and its lines joined by " ".
struct smtp_reply {
  int code = 0;
  std::string text;
};
awaitable<std::optional<smtp_reply>> smtp_read(line_conn& c) {
  smtp_reply r;
  for (;;) {
    auto line = co_await c.read_line();
    if (!line || line->size() < 3) co_return std::nullopt;
    r.code = std::atoi(line->substr(0, 3).c_str());
    r.text += (r.text.empty() ? "" : " ") + clean(*line);
    if (line->size() == 3 || (*line)[3] == ' ') co_return r;
  }
}

awaitable<std::optional<smtp_reply>> smtp_cmd(line_conn& c, std::string line) {
  bool sent = co_await c.write_line(std::move(line));
  if (!sent) co_return std::nullopt;
  co_return co_await smtp_read(c);
}

awaitable<login_outcome> smtp_login(line_conn& c, bool starttls, std::string ir, std::string ehlo) {
  auto greet = co_await smtp_read(c);
  if (!greet) co_return login_outcome{false, "", "no greeting (" + c.error() + ")"};
  if (greet->code != 220) co_return login_outcome{false, greet->text, ""};
  auto r = co_await smtp_cmd(c, "EHLO " + ehlo);
  if (!r || r->code != 250) co_return login_outcome{false, r ? r->text : "", "EHLO: " + c.error()};
  if (starttls) {
    r = co_await smtp_cmd(c, "STARTTLS");
    if (!r || r->code != 220)
      co_return login_outcome{false, "", "STARTTLS refused: " + (r ? r->text : c.error())};
    bool tls = co_await c.start_tls();
    if (!tls) co_return login_outcome{false, "", c.error()};
    r = co_await smtp_cmd(c, "EHLO " + ehlo);
    if (!r || r->code != 250) co_return login_outcome{false, r ? r->text : "", "EHLO: " + c.error()};
  }
  // Without an initial response: the token line is far longer than a command may be.
  r = co_await smtp_cmd(c, "AUTH XOAUTH2");
  if (!r) co_return login_outcome{false, "", "AUTH: " + c.error()};
  if (r->code == 334) {
    r = co_await smtp_cmd(c, std::move(ir));
    if (r && r->code == 334) {  // a JSON failure challenge: an empty line gets the final reply
      r = co_await smtp_cmd(c, "");
    }
    if (!r) co_return login_outcome{false, "", "AUTH: " + c.error()};
  }
  login_outcome out{r->code == 235, r->text, ""};
  r = co_await smtp_cmd(c, "QUIT");
  co_return out;
}

// Writes a line and reads one reply line (POP3).
awaitable<std::optional<std::string>> pop3_cmd(line_conn& c, std::string line) {
  bool sent = co_await c.write_line(std::move(line));
  if (!sent) co_return std::nullopt;
  co_return co_await c.read_line();
}

awaitable<login_outcome> pop3_login(line_conn& c, bool starttls, std::string ir) {
  auto greet = co_await c.read_line();
  if (!greet) co_return login_outcome{false, "", "no greeting (" + c.error() + ")"};
  if (!greet->starts_with("+OK")) co_return login_outcome{false, clean(*greet), ""};
  if (starttls) {
    auto r = co_await pop3_cmd(c, "STLS");
    if (!r || !r->starts_with("+OK"))
      co_return login_outcome{false, "", "STLS refused: " + (r ? clean(*r) : c.error())};
    bool tls = co_await c.start_tls();
    if (!tls) co_return login_outcome{false, "", c.error()};
  }
  auto r = co_await pop3_cmd(c, "AUTH XOAUTH2");
  if (!r) co_return login_outcome{false, "", "AUTH: " + c.error()};
  if (r->starts_with("+") && !r->starts_with("+OK")) {
    r = co_await pop3_cmd(c, std::move(ir));
    if (r && r->starts_with("+") && !r->starts_with("+OK")) {
      r = co_await pop3_cmd(c, "");
    }
    if (!r) co_return login_outcome{false, "", "AUTH: " + c.error()};
  }
  login_outcome out{r->starts_with("+OK"), clean(*r), ""};
  r = co_await pop3_cmd(c, "QUIT");
  co_return out;
}

awaitable<login_outcome> upstream_login(const config::listener& l, ssl::context& tls,
                                        std::string ir, std::chrono::seconds timeout) {
  const bool implicit = l.upstream_tls == config::upstream_tls_mode::implicit;
  auto conn = co_await proxy::connect_upstream(l.upstream, implicit, tls, timeout);
  if (!conn.stream) co_return login_outcome{false, "", conn.error};
  line_conn c{std::move(*conn.stream)};
  std::string ehlo = l.ehlo_name.empty() ? std::string{"localhost"} : l.ehlo_name;
  std::optional<login_outcome> r;
  switch (l.protocol) {
    case protocol_kind::imap:
      r = co_await with_timeout(imap_login(c, !implicit, std::move(ir)), timeout);
      break;
    case protocol_kind::smtp:
      r = co_await with_timeout(smtp_login(c, !implicit, std::move(ir), std::move(ehlo)), timeout);
      break;
    case protocol_kind::pop3:
      r = co_await with_timeout(pop3_login(c, !implicit, std::move(ir)), timeout);
      break;
  }
  if (!r) co_return login_outcome{false, "", "timed out after " + std::to_string(timeout.count()) + " s"};
  co_return std::move(*r);
}

// ---- fixes ----------------------------------------------------------------------------------------

struct who {
  const config::account* acct;
  const config::provider* prov;
  std::string mailbox;
  std::string oid;  // the token's oid: the service principal (app-only) or the user
  std::string upn;
};

std::string sp_commands(const who& w) {
  std::string oid = w.oid.empty() ? "<object ID of the app's enterprise application>" : w.oid;
  return "New-ServicePrincipal -AppId " + w.prov->client_id + " -ObjectId " + oid +
         "; Add-MailboxPermission -Identity " + w.mailbox + " -User " + oid +
         " -AccessRights FullAccess";
}

std::string login_fix(protocol_kind p, const login_outcome& r, const who& w) {
  const bool app = !w.acct->delegated();
  const std::string& t = r.reply;
  if (!r.error.empty() && r.reply.empty())
    return "check the listener's upstream address and upstream_tls, and upstream_ca_file when the "
           "server's certificate comes from a private CA";
  if (t.find("5.7.139") != std::string::npos)
    return "SMTP AUTH is disabled for this mailbox or the whole tenant: in Exchange Online "
           "PowerShell run Set-CASMailbox -Identity " + w.mailbox +
           " -SmtpClientAuthenticationDisabled $false (tenant-wide: Set-TransportConfig "
           "-SmtpClientAuthenticationDisabled $false); allow up to an hour for it to apply";
  if (t.find("5.7.57") != std::string::npos)
    return "the server does not consider the session authenticated: enable SMTP AUTH for the "
           "mailbox (Set-CASMailbox -Identity " + w.mailbox +
           " -SmtpClientAuthenticationDisabled $false) and check the token carries " +
           std::string{app ? app_role(p) : user_scope(p)};
  if (t.find("not connected") != std::string::npos) {
    if (app)
      return "Exchange accepted the token but the app may not open " + w.mailbox +
             ": register its service principal in Exchange and give it the mailbox (Exchange "
             "Online PowerShell): " + sp_commands(w);
    return "the signed-in user " + (w.upn.empty() ? std::string{"(token)"} : w.upn) +
           " cannot open " + w.mailbox + ": authorize the account as the mailbox's owner, or give "
           "that user FullAccess: Add-MailboxPermission -Identity " + w.mailbox + " -User " +
           (w.upn.empty() ? std::string{"<user>"} : w.upn) + " -AccessRights FullAccess";
  }
  std::string head = t.find("5.7.3") != std::string::npos
                         ? "535 5.7.3 means Exchange did not accept this token for " + w.mailbox
                         : "the server refused this token for " + w.mailbox;
  if (app)
    return head + ": check the account's mailbox address, and that the app's service principal "
                  "is registered in Exchange Online and may open the mailbox (Exchange Online "
                  "PowerShell): " + sp_commands(w);
  std::string enable = p == protocol_kind::smtp
                           ? "Set-CASMailbox -Identity " + w.mailbox +
                                 " -SmtpClientAuthenticationDisabled $false"
                           : "Set-CASMailbox -Identity " + w.mailbox +
                                 (p == protocol_kind::imap ? " -ImapEnabled $true" : " -PopEnabled $true");
  return head + ": the signed-in user must be the mailbox's owner (or, for IMAP/POP, hold FullAccess "
                "on it) and " + upper(config::to_string(p)) + " must be enabled for the mailbox: " + enable;
}

// ---- the checks -------------------------------------------------------------------------------------

struct target {
  const config::account* acct;
  std::string login;  // as named on the command line, or the account's login
};

struct doctor_run {
  const config::config& cfg;
  report& rep;
  std::vector<target> targets;
  std::map<std::string, std::unique_ptr<auth::client_auth>> clients;  // by provider name
  std::map<protocol_kind, const config::listener*> first_listener;
  std::vector<protocol_kind> lacking;  // protocols the current account's token has no permission for

  awaitable<std::optional<secret>> get_token(const target& t, const config::provider& p,
                                             const std::string& name) {
    const auto& a = *t.acct;
    auto& client = clients[p.name];
    if (a.flow == flow_kind::client_credentials) {
      if (!client) {
        rep.add(name + ": token", status::skip, "the provider's client credential did not load");
        co_return std::nullopt;
      }
      std::unique_ptr<auth::https_client> http;
      auto ex = co_await asio::this_coro::executor;
      try {
        http = std::make_unique<auth::https_client>(ex, p.ca_file,
                                                    cfg.proxy.token_timeout);
      } catch (const std::exception& e) {
        rep.add(name + ": token", status::fail, e.what(), "fix the provider's ca_file");
        co_return std::nullopt;
      }
      auth::client_credentials source{p, *http, *client};
      auto r = co_await source.acquire();
      if (!r.ok()) {
        std::string fix = r.error.fix;
        if (fix.empty())
          fix = r.error.kind == auth::failure_kind::transient
                    ? "the identity platform did not answer: check the network path to " +
                          p.authority + " (and ca_file)"
                    : "check tenant, client_id and the client credential of [[provider]] " + p.name;
        rep.add(name + ": token", status::fail, "client credentials request failed: " + r.error.summary,
                fix);
        co_return std::nullopt;
      }
      rep.add(name + ": token", status::ok, "client credentials token from " + p.token_endpoint());
      co_return std::move(r.token->value);
    }
    if (a.flow == flow_kind::password) {
      rep.add(name + ": token", status::skip,
              "flow password needs the user's own password; log in through the proxy to test it");
      co_return std::nullopt;
    }
    if (cfg.proxy.token_key_file.empty()) {
      rep.add(name + ": token", status::skip,
              "the token store is keyed by the account's local password (no token_key_file); "
              "log in through the proxy to test it");
      co_return std::nullopt;
    }
    std::string why;
    auto key = auth::token_store::read_key_file(cfg.proxy.token_key_file, why);
    if (!key) {
      rep.add(name + ": token", status::fail, "token_key_file: " + why,
              "token_key_file must hold 32 random bytes (raw, 64 hex digits or base64)");
      co_return std::nullopt;
    }
    auth::token_store store{std::filesystem::path{cfg.proxy.state_dir} / "tokens"};
    auto loaded = store.load(a.login, auth::token_store::key_from_file_bytes(*key, a.login));
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch()).count();
    if (!loaded.grant) {
      if (loaded.error == auth::store_errc::not_found)
        rep.add(name + ": token", status::fail, "not authorized yet (no entry in the token store)",
                "xoauth-proxy authorize " + a.login);
      else
        rep.add(name + ": token", status::fail,
                std::string{"token store: "} + std::string{auth::to_string(loaded.error)} + ": " +
                    loaded.detail,
                "authorize the account again: xoauth-proxy authorize " + a.login);
      co_return std::nullopt;
    }
    if (loaded.grant->access_token.empty() || loaded.grant->access_expires_unix <= now + 30) {
      rep.add(name + ": token", status::skip,
              "skipped: no unexpired access token in the store (authorize the account, or let "
              "the proxy refresh it)");
      co_return std::nullopt;
    }
    rep.add(name + ": token", status::ok, "stored access token (not refreshed by doctor)");
    co_return std::move(loaded.grant->access_token);
  }

  void check_claims(const std::string& name, const config::account& a, const config::provider& p,
                    const auth::token_claims& c) {
    bool aud_ok = c.aud == "https://outlook.office365.com" || c.aud == "https://outlook.office.com" ||
                  c.aud == exo_guid || c.aud == "https://outlook.office365.com/" ||
                  c.aud == "https://outlook.office.com/";
    if (aud_ok)
      rep.add(name + ": audience", status::ok, c.aud + " (tid " + c.tid + ")");
    else
      rep.add(name + ": audience", status::fail,
              "aud is " + (c.aud.empty() ? std::string{"missing"} : c.aud) +
                  ", not Exchange Online (https://outlook.office365.com)",
              "request Exchange Online scopes: remove `scopes` from [[provider]] " + p.name +
                  " or use https://outlook.office365.com/.default (app-only) / "
                  "https://outlook.office.com/IMAP.AccessAsUser.All ... (delegated)");
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch()).count();
    if (c.exp > now)
      rep.add(name + ": expiry", status::ok, "valid for " + std::to_string((c.exp - now) / 60) + " min");
    else
      rep.add(name + ": expiry", status::fail, "the token has expired",
              "check the system clock; let the proxy refresh the token");
    std::vector<std::string> missing, present;
    const bool app = !a.delegated();
    const auto have = app ? c.roles : split_spaces(c.scp);
    for (const auto& [proto, l] : first_listener) {
      (void)l;
      std::string_view want = app ? app_role(proto) : user_scope(proto);
      bool has = has_permission(have, want);
      (has ? present : missing).emplace_back(want);
      if (!has) lacking.push_back(proto);
    }
    std::string what = app ? "roles" : "scopes";
    if (missing.empty()) {
      rep.add(name + ": " + what, status::ok,
              present.empty() ? std::string{"no listener needs any"} : join(present, ", "));
    } else if (app) {
      rep.add(name + ": " + what, status::fail,
              "the token lacks " + join(missing, ", ") + " (has: " +
                  (have.empty() ? std::string{"none"} : join(have, ", ")) + ")",
              "in the app registration " + p.client_id + " add the application permission " +
                  join(missing, ", ") + " of Office 365 Exchange Online (API permissions > "
                  "APIs my organization uses) and grant admin consent");
    } else {
      rep.add(name + ": " + what, status::fail,
              "the token lacks " + join(missing, ", ") + " (has: " +
                  (have.empty() ? std::string{"none"} : join(have, ", ")) + ")",
              "in the app registration " + p.client_id + " add the delegated permission " +
                  join(missing, ", ") + " of Office 365 Exchange Online, grant consent, then "
                  "authorize again: xoauth-proxy authorize " + a.login);
    }
  }

  awaitable<void> check_account(const target& t) {
    const auto& a = *t.acct;
    const std::string name = "account " + t.login;
    const auto* p = cfg.find_provider(a.provider);
    if (!p) co_return;  // the loader rejects that
    auto token = co_await get_token(t, *p, name);
    if (!token) co_return;
    who w{&a, p, a.mailbox.empty() ? t.login : a.mailbox, "", ""};
    lacking.clear();
    if (auto c = auth::peek_claims(*token)) {
      w.oid = c->oid;
      w.upn = c->upn;
      check_claims(name, a, *p, *c);
    } else {
      rep.add(name + ": claims", status::warn, "the access token is not a readable JWT; claims not checked");
    }
    if (w.mailbox.starts_with("*@")) {
      rep.add(name + ": login", status::skip,
              "wildcard account: name a login of that domain to test it (xoauth-proxy doctor "
              "user" + a.login.substr(1) + ")");
      co_return;
    }
    secret ir{base64_encode("user=" + w.mailbox + "\x01" "auth=Bearer " + std::string{token->reveal()} +
                            "\x01\x01")};
    for (const auto& [proto, l] : first_listener) {
      const std::string check_name =
          name + ": " + std::string{config::to_string(proto)} + " login (" + l->upstream.to_string() + ")";
      std::unique_ptr<ssl::context> tls;
      try {
        tls = proxy::make_upstream_context(l->upstream_ca_file);
      } catch (const std::exception& e) {
        rep.add(check_name, status::fail, e.what(), "fix the listener's upstream_ca_file");
        continue;
      }
      std::string ir_text{ir.reveal()};
      auto r = co_await upstream_login(*l, *tls, std::move(ir_text), cfg.proxy.login_timeout);
      if (r.ok) {
        rep.add(check_name, status::ok, "XOAUTH2 as " + w.mailbox + " accepted: " + r.reply);
        continue;
      }
      std::string fix = login_fix(proto, r, w);
      if (!r.reply.empty() && std::find(lacking.begin(), lacking.end(), proto) != lacking.end())
        fix = "the token has no " + std::string{a.delegated() ? user_scope(proto) : app_role(proto)} +
              " permission (see " + std::string{a.delegated() ? "scopes" : "roles"} +
              " above): add it to the app registration and grant admin consent first";
      rep.add(check_name, status::fail,
              r.reply.empty() ? r.error : "XOAUTH2 as " + w.mailbox + " refused: " + r.reply, fix);
    }
  }

  void check_providers() {
    const auto& px = cfg.proxy;
    std::string base = px.public_base_url;
    if (base.empty() && px.admin_address) base = "http://localhost:" + std::to_string(px.admin_address->port);
    while (!base.empty() && base.back() == '/') base.pop_back();
    for (const auto& p : cfg.providers) {
      const std::string name = "provider " + p.name;
      try {
        auto c = std::make_unique<auth::client_auth>(p);
        rep.add(name + ": credential", status::ok,
                c->describe() + (p.client_secret_origin.empty() ? "" : " (" + p.client_secret_origin + ")"));
        clients[p.name] = std::move(c);
      } catch (const std::exception& e) {
        rep.add(name + ": credential", status::fail, e.what(),
                "fix certificate_file / private_key_file: a PEM certificate and its RSA key");
      }
      bool app = false, code = false, delegated = false;
      for (const auto& a : cfg.accounts) {
        if (a.provider != p.name) continue;
        app = app || !a.delegated();
        delegated = delegated || a.delegated();
        code = code || a.flow == flow_kind::authorization_code;
      }
      if (code) {
        if (base.empty())
          rep.add(name + ": redirect URI", status::fail,
                  "no admin listener and no public_base_url: nothing can receive the sign-in",
                  "set [proxy] admin_listen or public_base_url");
        else
          rep.add(name + ": redirect URI", status::ok,
                  "register " + base + "/sso/oauth_callback (platform \"Web\") in app " + p.client_id);
      }
      std::vector<std::string> roles, scopes{"offline_access"};
      for (const auto& [proto, l] : first_listener) {
        (void)l;
        roles.emplace_back(app_role(proto));
        scopes.emplace_back(user_scope(proto));
      }
      if (app)
        rep.add(name + ": permissions", status::ok,
                "app-only accounts need the application permissions " + join(roles, ", ") +
                    " of Office 365 Exchange Online, with admin consent");
      if (delegated)
        rep.add(name + ": permissions", status::ok,
                "delegated accounts need the delegated permissions " + join(scopes, ", ") +
                    " of Office 365 Exchange Online");
    }
  }

  awaitable<void> run() {
    check_providers();
    for (const auto& t : targets) co_await check_account(t);
  }
};

}  // namespace

int cmd_doctor(const doctor_options& o) {
  report rep{o.json};
  auto r = config::load_file(o.config_path);
  if (!r.ok()) {
    std::vector<std::string> errs;
    for (const auto& d : r.errors) errs.push_back(d.to_string());
    rep.add("config", status::fail, o.config_path + ": " + join(errs, "; "),
            "correct the configuration (xoauth-proxy check lists every error)");
    return rep.finish();
  }
  const auto& cfg = r.cfg;
  rep.add("config", status::ok,
          o.config_path + ": " + std::to_string(cfg.providers.size()) + " provider(s), " +
              std::to_string(cfg.listeners.size()) + " listener(s), " +
              std::to_string(cfg.accounts.size()) + " account(s)");
  for (const auto& w : r.warnings) rep.add("config", status::warn, w.to_string());

  doctor_run run{cfg, rep, {}, {}, {}, {}};
  for (const auto& l : cfg.listeners) run.first_listener.emplace(l.protocol, &l);
  if (o.accounts.empty()) {
    for (const auto& a : cfg.accounts) run.targets.push_back({&a, a.login});
  } else {
    for (const auto& name : o.accounts) {
      if (const auto* a = cfg.find_account(name))
        run.targets.push_back({a, name});
      else
        rep.add("account " + name, status::fail, "no [[account]] matches this login",
                "add an [[account]] for it, or a \"*@domain\" one");
    }
  }

  asio::io_context io{1};
  std::exception_ptr failure;
  asio::co_spawn(io, run.run(), [&](std::exception_ptr e) { failure = e; });
  io.run();
  if (failure) {
    try {
      std::rethrow_exception(failure);
    } catch (const std::exception& e) {
      rep.add("doctor", status::fail, std::string{"internal error: "} + e.what());
    }
  }
  return rep.finish();
}

}  // namespace xo::app
