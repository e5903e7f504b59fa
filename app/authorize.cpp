// `xoauth-proxy authorize ACCOUNT [--device]`: one interactive authorization of a delegated
// account, whether the proxy runs or not.
//
// - Proxy running (it holds the state_dir lock): ask it through its admin API (URL and token in
//   <state_dir>/admin.json); the running process serves the callback, stores the tokens and uses
//   them for the next login at once. This command only prints what to do and waits.
// - Proxy stopped: this command takes the lock, runs the token engine and the admin listener
//   itself (so the redirect URI registered in Azure is served by the same address), stores the
//   tokens and exits; the proxy finds them at its next start.
// In both cases a line pasted on standard input that holds the final address the browser ended
// on (…/sso/oauth_callback?code=…&state=…) completes the sign-in: for browsers on another
// machine that cannot reach the admin listener.
#include "app/authorize.hpp"
#include "app/terminal.hpp"

#include "auth/password_hash.hpp"
#include "auth/token_engine.hpp"
#include "common/log.hpp"
#include "config/loader.hpp"
#include "proxy/admin_server.hpp"
#include "proxy/state_lock.hpp"

#include <boost/asio/signal_set.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <boost/url.hpp>
#include <fmt/chrono.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

namespace xo::app {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace json = boost::json;
using namespace std::chrono_literals;

std::string fmt_remaining(std::chrono::seconds s) {
  if (s.count() < 0) s = std::chrono::seconds{0};
  return fmt::format("{}:{:02}", s.count() / 60, s.count() % 60);
}

std::string utc(std::int64_t unix_seconds) {
  return fmt::format("{:%Y-%m-%d %H:%M:%S} UTC",
                     fmt::gmtime(static_cast<std::time_t>(unix_seconds)));
}

// The query of a pasted callback address ("http://…/sso/oauth_callback?code=…&state=…", or just
// "code=…&state=…"), decoded. Empty when the line is not one.
std::map<std::string, std::string> callback_query(std::string line) {
  std::map<std::string, std::string> out;
  while (!line.empty() && (line.back() == '\r' || line.back() == '\n' || line.back() == ' '))
    line.pop_back();
  auto q = line.find('?');
  std::string query = q == std::string::npos ? line : line.substr(q + 1);
  if (auto hash = query.find('#'); hash != std::string::npos) query.resize(hash);
  auto params = boost::urls::parse_query(query);
  if (!params) return out;
  for (auto p : *params) {
    if (!p.has_value) continue;
    out[std::string(p.key)] = std::string(p.value);
  }
  if (!out.count("state") || (!out.count("code") && !out.count("error"))) out.clear();
  return out;
}

// Reads lines from standard input on a thread (a terminal or a pipe); never blocks exit.
class paste_reader {
 public:
  explicit paste_reader(std::function<void(std::string)> on_line) {
    thread_ = std::thread([this, fn = std::move(on_line)] {
      std::string buf;
      while (!stop_) {
        pollfd p{STDIN_FILENO, POLLIN, 0};
        int r = ::poll(&p, 1, 200);
        if (r <= 0) continue;
        char chunk[4096];
        ssize_t n = ::read(STDIN_FILENO, chunk, sizeof chunk);
        if (n <= 0) return;  // end of input: nothing will be pasted
        buf.append(chunk, static_cast<std::size_t>(n));
        if (buf.size() > 64 * 1024) buf.clear();
        for (auto nl = buf.find('\n'); nl != std::string::npos; nl = buf.find('\n')) {
          fn(buf.substr(0, nl));
          buf.erase(0, nl + 1);
        }
      }
    });
  }
  ~paste_reader() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// The account's local password, for a password-keyed store (no token_key_file): from
// --password-file, $XOAUTH_ACCOUNT_PASSWORD, or asked on the terminal.
std::optional<secret> local_password(const authorize_options& o) {
  if (!o.password_file.empty()) {
    std::ifstream f{o.password_file, std::ios::binary};
    std::string line;
    if (!f || !std::getline(f, line)) return std::nullopt;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return secret{std::move(line)};
  }
  if (const char* env = std::getenv("XOAUTH_ACCOUNT_PASSWORD"); env && *env) return secret{env};
  int tty = ::open("/dev/tty", O_RDWR | O_CLOEXEC);
  if (tty < 0) return std::nullopt;
  auto pw = read_hidden_line(tty, tty, "Local password of " + o.account + ": ");
  ::close(tty);
  return pw;
}

void print_start(const auth::authorization_start& s, const std::string& account) {
  if (!s.authorize_url.empty()) {
    std::printf("Open this URL in a browser: %s\n", s.authorize_url.c_str());
    std::printf("Sign in as %s. Waiting for the sign-in (if the browser runs on another machine, "
                "paste the address it ends on here and press Enter)...\n",
                account.c_str());
  } else {
    std::printf("Go to %s and enter the code %s\n", s.verification_uri.c_str(),
                s.user_code.c_str());
    std::printf("Sign in as %s. The code expires in %s.\n", account.c_str(),
                fmt_remaining(s.expires_in).c_str());
  }
  std::fflush(stdout);
}

// ---- proxy stopped: do it in this process ----

int authorize_here(const config::config& cfg, const config::account& acct,
                   const authorize_options& o) {
  std::optional<secret> password;
  if (cfg.proxy.token_key_file.empty()) {
    password = local_password(o);
    if (!password) {
      std::fprintf(stderr,
                   "authorize: %s's tokens are encrypted with its local password (no "
                   "[proxy] token_key_file): give it with --password-file, "
                   "$XOAUTH_ACCOUNT_PASSWORD or on the terminal\n",
                   acct.login.c_str());
      return 1;
    }
    if (!auth::verify_password(acct.password_hash, *password)) {
      std::fprintf(stderr, "authorize: wrong local password for %s\n", acct.login.c_str());
      return 1;
    }
  }
  asio::io_context io{1};
  auth::token_engine engine{io.get_executor(), cfg};
  engine.start();
  proxy::admin_server admin{io.get_executor(), cfg, engine, {}};
  engine.set_admin_port(admin.bind());
  admin.start();

  int rc = 1;
  std::string outcome;
  bool done = false;
  const auto started = auth::wall_clock::now();
  asio::steady_timer grace{io};
  auto finish = [&](int code, std::string text) {
    if (done) return;
    done = true;
    rc = code;
    outcome = std::move(text);
    engine.stop();
    // Let the browser's callback request get its answer before the listener goes away.
    grace.expires_after(1s);
    grace.async_wait([&](error_code) {
      admin.stop();
      io.stop();
    });
  };
  engine.on_change([&](const auth::account_status& s) {
    if (s.login != acct.login) return;
    if (s.state == "authorized" && s.authorized && *s.authorized >= started - 1s) {
      std::string until =
          s.access_expires ? " (access token valid until " +
                                 utc(std::chrono::duration_cast<std::chrono::seconds>(
                                         s.access_expires->time_since_epoch())
                                         .count()) +
                                 ")"
                           : "";
      finish(0, acct.login + " is authorized" + until +
                    (s.stored ? "; tokens stored for the next start" : ""));
    } else if (!s.last_error.empty() && s.state != "authorizing") {
      finish(1, "authorization failed: " + s.last_error);
    }
  });

  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        if (password) co_await engine.open_store(acct, *password);
        auto s = co_await engine.begin_authorization(acct.login, o.device);
        if (!s.ok) {
          finish(1, "cannot start: " + s.error);
          co_return;
        }
        print_start(s, acct.login);
        if (s.authorize_url.empty()) {
          // Device code: show the time left now and then while polling.
          const auto until = std::chrono::steady_clock::now() + s.expires_in;
          while (!done) {
            co_await sleep_for(30s);
            if (done) break;
            auto left = std::chrono::duration_cast<std::chrono::seconds>(
                until - std::chrono::steady_clock::now());
            std::fprintf(stderr, "still waiting for the sign-in: %s left\n",
                         fmt_remaining(left).c_str());
          }
        }
      },
      asio::detached);

  asio::steady_timer deadline{io, std::chrono::seconds{o.timeout_seconds}};
  deadline.async_wait([&](error_code ec) {
    if (!ec) finish(1, fmt::format("timed out after {} s without a sign-in", o.timeout_seconds));
  });
  asio::signal_set signals{io, SIGINT, SIGTERM};
  signals.async_wait([&](error_code ec, int) {
    if (!ec) finish(130, "interrupted");
  });
  paste_reader paste{[&](std::string line) {
    auto q = callback_query(std::move(line));
    if (q.empty()) return;
    asio::co_spawn(
        io,
        [&engine, q]() -> awaitable<void> {
          auto r = co_await engine.complete_authorization(q);
          std::printf("%s\n", r.message.c_str());
          std::fflush(stdout);
        },
        asio::detached);
  }};
  io.run();
  std::printf("%s\n", outcome.c_str());
  return rc;
}

// ---- proxy running: ask it ----

struct http_result {
  unsigned status = 0;
  std::string body;
  std::string error;
};

http_result http_call(const std::string& base_url, http::verb method, const std::string& target,
                      const std::string& token, const std::string& body) {
  http_result out;
  auto u = boost::urls::parse_uri(base_url);
  if (!u) {
    out.error = "bad admin URL " + base_url;
    return out;
  }
  try {
    asio::io_context io;
    tcp::resolver resolver{io};
    beast::tcp_stream stream{io};
    stream.expires_after(30s);
    std::string host = u->host();
    if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
    stream.connect(resolver.resolve(host, u->port()));
    http::request<http::string_body> req{method, target, 11};
    req.set(http::field::host, u->encoded_authority());
    req.set(http::field::user_agent, "xoauth-proxy-authorize");
    if (!token.empty()) req.set("X-Admin-Token", token);
    if (!body.empty()) {
      req.set(http::field::content_type, "application/json");
      req.body() = body;
    }
    req.prepare_payload();
    http::write(stream, req);
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    http::read(stream, buf, res);
    out.status = res.result_int();
    out.body = std::move(res.body());
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  return out;
}

std::string json_str(const json::object& o, std::string_view k) {
  auto* v = o.if_contains(k);
  return v && v->is_string() ? std::string(v->as_string()) : std::string{};
}

std::int64_t json_int(const json::object& o, std::string_view k) {
  auto* v = o.if_contains(k);
  return v && v->is_int64() ? v->as_int64() : 0;
}

int authorize_remote(const config::config& cfg, const config::account& acct,
                     const authorize_options& o) {
  const std::string admin_json = cfg.proxy.state_dir + "/admin.json";
  std::ifstream f{admin_json};
  std::stringstream ss;
  ss << f.rdbuf();
  json::value info;
  try {
    info = json::parse(ss.str());
  } catch (const std::exception&) {
    std::fprintf(stderr,
                 "authorize: the proxy is running (it holds %s/xoauth-proxy.lock) but %s cannot be "
                 "read: is its admin listener enabled?\n",
                 cfg.proxy.state_dir.c_str(), admin_json.c_str());
    return 1;
  }
  if (!info.is_object()) return 1;
  const std::string url = json_str(info.as_object(), "url");
  const std::string token = json_str(info.as_object(), "token");
  const auto started = std::chrono::system_clock::now();
  const std::int64_t started_unix =
      std::chrono::duration_cast<std::chrono::seconds>(started.time_since_epoch()).count();

  const std::string login_target =
      "/api/accounts/" + std::string(boost::urls::encode(acct.login, boost::urls::unreserved_chars));
  std::string initial_error;
  if (auto r = http_call(url, http::verb::get, login_target, token, ""); r.status == 200) {
    auto v = json::parse(r.body);
    if (v.is_object()) initial_error = json_str(v.as_object(), "last_error");
  }

  json::object req{{"account", acct.login}, {"device", o.device}};
  auto r = http_call(url, http::verb::post, "/api/authorize", token, json::serialize(req));
  if (!r.error.empty()) {
    std::fprintf(stderr, "authorize: cannot reach the running proxy at %s: %s\n", url.c_str(),
                 r.error.c_str());
    return 1;
  }
  json::value v;
  try {
    v = json::parse(r.body);
  } catch (const std::exception&) {
    std::fprintf(stderr, "authorize: unexpected answer from the proxy (HTTP %u)\n", r.status);
    return 1;
  }
  if (!v.is_object() || r.status != 200) {
    std::string err = v.is_object() ? json_str(v.as_object(), "error") : "";
    std::fprintf(stderr, "authorize: cannot start: %s\n",
                 err.empty() ? fmt::format("HTTP {}", r.status).c_str() : err.c_str());
    return 1;
  }
  auth::authorization_start s;
  s.ok = true;
  s.authorize_url = json_str(v.as_object(), "authorize_url");
  s.verification_uri = json_str(v.as_object(), "verification_uri");
  s.user_code = json_str(v.as_object(), "user_code");
  s.expires_in = std::chrono::seconds{json_int(v.as_object(), "expires_in")};
  print_start(s, acct.login);

  std::atomic<bool> pasted_done{false};
  paste_reader paste{[&](std::string line) {
    auto q = callback_query(line);
    if (q.empty()) return;
    std::string target = "/sso/oauth_callback?";
    bool first = true;
    for (const auto& [k, val] : q) {
      target += (first ? "" : "&") + std::string(boost::urls::encode(k, boost::urls::unreserved_chars)) +
                "=" + std::string(boost::urls::encode(val, boost::urls::unreserved_chars));
      first = false;
    }
    auto cr = http_call(url, http::verb::get, target, "", "");
    std::printf("%s\n", cr.status == 200 ? "the proxy accepted the pasted address"
                                         : "the proxy refused the pasted address (see its page/log)");
    std::fflush(stdout);
    pasted_done = true;
  }};

  const auto deadline = started + std::chrono::seconds{o.timeout_seconds};
  auto last_note = std::chrono::steady_clock::now();
  bool seen_authorizing = false;
  while (std::chrono::system_clock::now() < deadline) {
    std::this_thread::sleep_for(500ms);
    auto st = http_call(url, http::verb::get, login_target, token, "");
    if (!st.error.empty()) {
      std::fprintf(stderr, "authorize: lost the running proxy: %s\n", st.error.c_str());
      return 1;
    }
    if (st.status != 200) continue;
    json::value sv;
    try {
      sv = json::parse(st.body);
    } catch (const std::exception&) {
      continue;
    }
    if (!sv.is_object()) continue;
    const auto& so = sv.as_object();
    const std::string state = json_str(so, "state");
    const std::string err = json_str(so, "last_error");
    if (state == "authorizing") seen_authorizing = true;
    if (state == "authorized" && json_int(so, "authorized_unix") >= started_unix - 1) {
      std::int64_t exp = json_int(so, "access_expires_unix");
      std::printf("%s is authorized%s\n", acct.login.c_str(),
                  exp ? (" (access token valid until " + utc(exp) + ")").c_str() : "");
      return 0;
    }
    if (!err.empty() && err != initial_error && state != "authorizing") {
      std::printf("authorization failed: %s\n", err.c_str());
      return 1;
    }
    if (o.device && seen_authorizing && state != "authorizing" && state != "authorized") {
      std::printf("authorization failed: the device code sign-in ended (%s)\n", state.c_str());
      return 1;
    }
    if (!s.user_code.empty() && std::chrono::steady_clock::now() - last_note > 30s) {
      last_note = std::chrono::steady_clock::now();
      auto left = std::chrono::duration_cast<std::chrono::seconds>(
          started + s.expires_in - std::chrono::system_clock::now());
      std::fprintf(stderr, "still waiting for the sign-in: %s left\n",
                   fmt_remaining(left).c_str());
    }
  }
  std::printf("authorization failed: timed out after %d s without a sign-in\n", o.timeout_seconds);
  return 1;
}

}  // namespace

int cmd_authorize(const authorize_options& o) {
  auto r = config::load_file(o.config_path);
  if (!r.ok()) {
    for (const auto& d : r.errors) std::fprintf(stderr, "%s\n", d.to_string().c_str());
    std::fprintf(stderr, "%s: configuration is invalid\n", o.config_path.c_str());
    return 2;
  }
  const auto& cfg = r.cfg;
  // Progress goes to stdout; the engine's own log lines only when something is wrong.
  init_logging(log_style::text,
               cfg.proxy.log_level == "debug" || cfg.proxy.log_level == "trace"
                   ? cfg.proxy.log_level
                   : "warn");
  const config::account* acct = cfg.find_account(o.account);
  if (!acct || acct->is_wildcard()) {
    std::fprintf(stderr, "authorize: no [[account]] has login '%s'\n", o.account.c_str());
    return 1;
  }
  if (!acct->interactive()) {
    std::fprintf(stderr,
                 "authorize: %s uses flow \"%s\"; only authorization_code and device_code "
                 "accounts are authorized this way\n",
                 acct->login.c_str(), std::string(config::to_string(acct->flow)).c_str());
    return 1;
  }
  proxy::state_lock lock{cfg.proxy.state_dir};
  if (lock.held()) {
    try {
      return authorize_here(cfg, *acct, o);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "authorize: %s\n", e.what());
      return 1;
    }
  }
  if (!lock.busy()) {
    std::fprintf(stderr, "authorize: %s\n", lock.why().c_str());
    return 1;
  }
  return authorize_remote(cfg, *acct, o);
}

}  // namespace xo::app
