// The admin listener: one coroutine per connection, HTTP/1.1 keep-alive, small fixed limits.
// Pages and JSON shapes live in proxy/admin_pages.cpp; this file does I/O, routing and access
// checks. The shared state is reference-counted so that connection coroutines still parked in
// the io_context after stop() or destruction never touch freed memory.
#include "proxy/admin_server.hpp"

#include "common/metrics.hpp"

#include "auth/delegated.hpp"
#include "common/log.hpp"
#include "proxy/admin_pages.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <boost/url/parse.hpp>
#include <unistd.h>

#include <filesystem>
#include <map>

namespace xo::proxy {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace json = boost::json;
namespace urls = boost::urls;
namespace ad = admin_detail;

namespace {

constexpr std::size_t max_header_bytes = 8 * 1024;
constexpr std::size_t max_body_bytes = 16 * 1024;
constexpr std::chrono::seconds read_timeout{15};  // per request, including keep-alive idle time
constexpr std::chrono::seconds write_timeout{15};
constexpr std::size_t max_connections = 64;
constexpr std::string_view callback_path = "/sso/oauth_callback";

using request = http::request<http::string_body>;
using response = http::response<http::string_body>;

std::shared_ptr<spdlog::logger> log() { return logger("admin"); }

// Printable ASCII only and bounded: a request path or form field must not forge log lines.
std::string loggable(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 120)) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  if (s.size() > 120) out += "...";
  return out;
}

bool is_loopback(const asio::ip::address& a) {
  if (a.is_loopback()) return true;
  return a.is_v6() && a.to_v6().is_v4_mapped() &&
         asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).is_loopback();
}

struct admin_state {
  admin_state(asio::any_io_executor e, const config::config& c, auth::token_engine& en,
              std::function<bool()> r)
      : ex(e), cfg(c), engine(en), ready(std::move(r)), acceptor(e) {}

  asio::any_io_executor ex;
  const config::config& cfg;
  auth::token_engine& engine;
  std::function<bool()> ready;
  tcp::acceptor acceptor;
  std::string token;
  std::string csrf;
  std::string csp;
  std::string base_path;
  std::vector<std::string> hosts;
  std::string url;
  std::uint16_t port = 0;
  std::map<std::uint64_t, beast::tcp_stream*> conns;  // open connections, closed by stop()
  std::uint64_t next_id = 1;
  std::size_t active = 0;
  std::uint64_t refused = 0;
  bool started = false;
  bool stopping = false;
  std::string admin_json_written;  // the content we wrote: only our own file is removed
};

// ---- responses ----

response make(const admin_state& st, http::status s, std::string_view type, std::string body) {
  response res{s, 11};
  res.set(http::field::server, "xoauth-proxy");
  res.set(http::field::content_type, type);
  res.set(http::field::cache_control, "no-store");
  res.set("X-Content-Type-Options", "nosniff");
  res.set("Content-Security-Policy", st.csp);
  res.set("Referrer-Policy", "no-referrer");  // the callback URL carries the code
  res.body() = std::move(body);
  return res;
}

response html(const admin_state& st, http::status s, std::string body) {
  return make(st, s, "text/html; charset=utf-8", std::move(body));
}

response page(const admin_state& st, http::status s, std::string_view title,
              std::string_view message) {
  return html(st, s, ad::message_page(title, message));
}

response text(const admin_state& st, http::status s, std::string body) {
  return make(st, s, "text/plain; charset=utf-8", std::move(body));
}

response json_answer(const admin_state& st, http::status s, const json::value& v) {
  return make(st, s, "application/json", json::serialize(v) + "\n");
}

response json_error(const admin_state& st, http::status s, std::string_view message) {
  return json_answer(st, s, json::object{{"error", message}});
}

response not_allowed(const admin_state& st, std::string_view allow) {
  auto res = text(st, http::status::method_not_allowed, "method not allowed\n");
  res.set(http::field::allow, allow);
  return res;
}

bool has_admin_token(const admin_state& st, const request& req) {
  auto v = req["X-Admin-Token"];
  return !v.empty() && constant_time_equal(v, st.token);
}

// ---- routes ----

awaitable<response> form_authorize(admin_state& st, const request& req, bool loopback,
                                   std::string& who) {
  const bool token_ok = has_admin_token(st, req);
  if (!token_ok && !loopback)
    co_return page(st, http::status::forbidden, "Forbidden",
                   "Forms are accepted from loopback only; other clients must send the "
                   "X-Admin-Token header.");
  std::string_view type = req[http::field::content_type];
  if (!beast::iequals(type.substr(0, type.find(';')), "application/x-www-form-urlencoded"))
    co_return page(st, http::status::bad_request, "Bad request",
                   "Expected an application/x-www-form-urlencoded form.");
  auto form = ad::parse_form(req.body());
  if (!form) co_return page(st, http::status::bad_request, "Bad request", "Malformed form.");
  auto field = [&](const char* k) {
    auto it = form->find(k);
    return it == form->end() ? std::string{} : it->second;
  };
  if (!token_ok && !constant_time_equal(field("csrf"), st.csrf))
    co_return page(st, http::status::forbidden, "Forbidden",
                   "This form did not come from the status page (or the proxy has restarted "
                   "since): reload the status page and try again.");
  std::string account = field("account");
  const std::string kind = field("kind");
  who = account;
  if (account.empty() || (kind != "code" && kind != "device"))
    co_return page(st, http::status::bad_request, "Bad request",
                   "The form needs an account and kind=code or kind=device.");
  const bool device = kind == "device";
  auto start = co_await st.engine.begin_authorization(account, device);
  if (!start.ok)
    co_return page(st, http::status::bad_request, "Authorization could not start", start.error);
  if (!device && !start.authorize_url.empty()) {
    if (start.authorize_url.find_first_of("\r\n") != std::string::npos)
      co_return page(st, http::status::internal_server_error, "Error", "Invalid authorize URL.");
    auto res = html(st, http::status::see_other,
                    ad::message_page("Redirecting", "Continue at the identity platform."));
    res.set(http::field::location, start.authorize_url);
    co_return res;
  }
  co_return html(st, http::status::ok, ad::device_page(account, start, auth::wall_clock::now()));
}

awaitable<response> oauth_callback(admin_state& st, std::string encoded_query, std::string& who) {
  auto query = ad::parse_form(encoded_query);
  if (!query)
    co_return page(st, http::status::bad_request, "Authorization failed", "Malformed query.");
  auto outcome = co_await st.engine.complete_authorization(std::move(*query));
  who = outcome.account;
  auto status = static_cast<http::status>(outcome.http_status);
  if (outcome.http_status < 200 || outcome.http_status > 599)
    status = http::status::internal_server_error;
  co_return page(st, status, outcome.ok ? "Authorization complete" : "Authorization failed",
                 outcome.message);
}

awaitable<response> api_authorize(admin_state& st, const request& req, std::string& who) {
  if (!has_admin_token(st, req))
    co_return json_error(st, http::status::unauthorized, "missing or wrong X-Admin-Token");
  error_code ec;
  json::value body = json::parse(req.body(), ec);
  const json::object* o = ec ? nullptr : body.if_object();
  const json::value* account = o ? o->if_contains("account") : nullptr;
  const json::value* device = o ? o->if_contains("device") : nullptr;
  if (!account || !account->is_string() || account->get_string().empty() ||
      (device && !device->is_bool()))
    co_return json_error(st, http::status::bad_request,
                         "expected {\"account\": \"LOGIN\", \"device\": false}");
  std::string login{account->get_string()};
  const bool use_device = device && device->get_bool();
  who = login;
  auto start = co_await st.engine.begin_authorization(login, use_device);
  const auto status = start.ok ? http::status::ok : http::status::bad_request;
  co_return json_answer(st, status, ad::start_json(start));
}

response readyz(const admin_state& st) {
  const bool ready = st.ready && st.ready();
  auto o = ad::readyz_json(ready, st.engine.status());
  if (!st.ready) o["reason"] = "not a proxy";
  return json_answer(st, ready ? http::status::ok : http::status::service_unavailable, o);
}

response api_accounts(const admin_state& st, const std::string& path, std::string& who) {
  if (path == "/api/accounts") {
    json::array all;
    for (const auto& a : st.engine.status()) all.push_back(ad::account_json(a));
    return json_answer(st, http::status::ok, all);
  }
  who = path.substr(std::string_view{"/api/accounts/"}.size());
  auto one = st.engine.status_of(who);
  if (!one) return json_error(st, http::status::not_found, "unknown account");
  return json_answer(st, http::status::ok, ad::account_json(*one));
}

awaitable<response> route(admin_state& st, const request& req, bool loopback, std::string& who) {
  auto target = urls::parse_origin_form(req.target());
  if (!target) co_return text(st, http::status::bad_request, "bad request target\n");
  const std::string path = target->path();
  const bool get = req.method() == http::verb::get;
  const bool post = req.method() == http::verb::post;
  // Probes often address the pod or container IP, and these two reveal nothing worth rebinding.
  if (path == "/healthz") {
    if (!get) co_return not_allowed(st, "GET");
    co_return text(st, http::status::ok, "ok\n");
  }
  if (path == "/readyz") {
    if (!get) co_return not_allowed(st, "GET");
    co_return readyz(st);
  }
  // Scrapers address the pod or container IP too; the metrics hold no secret.
  if (path == "/metrics") {
    if (!get) co_return not_allowed(st, "GET");
    auto res = text(st, http::status::ok, metrics::render());
    res.set(http::field::content_type, "text/plain; version=0.0.4; charset=utf-8");
    co_return res;
  }
  // DNS rebinding: a hostile page whose name now resolves to 127.0.0.1 still sends its own Host.
  std::string_view host = req[http::field::host];
  if (host.empty()) co_return text(st, http::status::bad_request, "missing Host header\n");
  if (!ad::host_allowed(host, st.hosts))
    co_return text(st, http::status::misdirected_request, "unknown Host\n");

  if (path == "/") {
    if (!get) co_return not_allowed(st, "GET");
    co_return html(st, http::status::ok,
                   ad::status_page(st.engine.providers(), st.engine.status(), st.csrf));
  }
  if (path == "/authorize") {
    if (!post) co_return not_allowed(st, "POST");
    co_return co_await form_authorize(st, req, loopback, who);
  }
  // Behind a reverse proxy the redirect URI may keep public_base_url's path prefix.
  if (path == callback_path ||
      (!st.base_path.empty() && path == st.base_path + std::string{callback_path})) {
    if (!get) co_return not_allowed(st, "GET");
    co_return co_await oauth_callback(st, std::string{target->encoded_query()}, who);
  }
  if (path == "/api/authorize") {
    if (!post) co_return not_allowed(st, "POST");
    co_return co_await api_authorize(st, req, who);
  }
  if (path == "/api/accounts" || (path.starts_with("/api/accounts/") && path.size() > 14)) {
    if (!get) co_return not_allowed(st, "GET");
    if (!has_admin_token(st, req))
      co_return json_error(st, http::status::unauthorized, "missing or wrong X-Admin-Token");
    co_return api_accounts(st, path, who);
  }
  co_return text(st, http::status::not_found, "not found\n");
}

// Exceptions stop here: the connection gets a 500 and survives, the process is unaffected.
awaitable<response> dispatch(admin_state& st, const request& req, bool loopback,
                             std::string& who) {
  std::string failure;
  try {
    co_return co_await route(st, req, loopback, who);
  } catch (const std::exception& e) {
    failure = e.what();
  }
  log()->error("admin request failed: {}", loggable(failure));
  co_return text(st, http::status::internal_server_error, "internal error\n");
}

// The path only: query strings carry authorization codes and are never logged.
void log_request(const request& req, const response& res, const std::string& who,
                 std::string_view peer) {
  std::string_view target = req.target();
  std::string path = loggable(target.substr(0, target.find('?')));
  std::string account = who.empty() ? "" : " account=" + loggable(who);
  const bool routine = req.method() == http::verb::get && res.result() == http::status::ok &&
                       !path.ends_with(callback_path);
  log()->log(routine ? spdlog::level::debug : spdlog::level::info, "admin {} {} -> {}{} peer={}",
             std::string_view{http::to_string(req.method())}, path, res.result_int(), account,
             peer);
}

// Read errors that deserve an answer before the connection closes; I/O errors (eof, timeout,
// reset) and a client that hung up mid-request get none.
std::optional<http::status> status_for_read_error(const error_code& ec) {
  if (ec == http::error::header_limit) return http::status::request_header_fields_too_large;
  if (ec == http::error::body_limit) return http::status::payload_too_large;
  if (ec.category() != http::make_error_code(http::error::bad_target).category()) return {};
  if (ec == http::error::end_of_stream || ec == http::error::partial_message) return {};
  return http::status::bad_request;
}

awaitable<void> serve(std::shared_ptr<admin_state> st, tcp::socket sock) {
  const auto id = st->next_id++;
  beast::tcp_stream stream{std::move(sock)};
  struct registration {
    admin_state& st;
    std::uint64_t id;
    ~registration() {
      st.conns.erase(id);
      --st.active;
    }
  } reg{*st, id};
  st->conns.emplace(id, &stream);
  error_code ec;
  const auto peer = stream.socket().remote_endpoint(ec);
  const bool loopback = !ec && is_loopback(peer.address());
  const std::string peer_ip = ec ? std::string{"?"} : peer.address().to_string();
  beast::flat_buffer buffer;
  while (!st->stopping) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(max_header_bytes);
    parser.body_limit(max_body_bytes);
    stream.expires_after(read_timeout);
    auto [hec, hn] = co_await http::async_read_header(stream, buffer, parser, use_nothrow);
    error_code rec = hec;
    if (!rec && beast::iequals(parser.get()[http::field::expect], "100-continue")) {
      http::response<http::empty_body> go_on{http::status::continue_, 11};
      auto [cec, cn] = co_await http::async_write(stream, go_on, use_nothrow);
      rec = cec;
    }
    if (!rec && !parser.is_done()) {
      auto [bec, bn] = co_await http::async_read(stream, buffer, parser, use_nothrow);
      rec = bec;
    }
    if (rec) {
      auto status = status_for_read_error(rec);
      if (!status || st->stopping) break;
      log()->debug("admin bad request from {}: {}", peer_ip, rec.message());
      auto res = text(*st, *status, std::string{http::obsolete_reason(*status)} + "\n");
      res.keep_alive(false);
      res.prepare_payload();
      stream.expires_after(write_timeout);
      co_await http::async_write(stream, res, use_nothrow);
      break;
    }
    request req = parser.release();
    std::string who;
    response res = co_await dispatch(*st, req, loopback, who);
    res.keep_alive(req.keep_alive() && !st->stopping);
    res.prepare_payload();
    log_request(req, res, who, peer_ip);
    if (st->stopping) break;
    stream.expires_after(write_timeout);
    auto [wec, wn] = co_await http::async_write(stream, res, use_nothrow);
    if (wec || !res.keep_alive()) break;
  }
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
  stream.close();
}

awaitable<void> accept_loop(std::shared_ptr<admin_state> st) {
  for (;;) {
    auto [ec, sock] = co_await st->acceptor.async_accept(use_nothrow);
    if (st->stopping) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      log()->warn("admin accept failed: {}", ec.message());
      co_await sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    if (st->active >= max_connections) {
      if (st->refused++ % 100 == 0)
        log()->warn("admin: {} connections open, refusing more ({} refused so far)",
                    max_connections, st->refused);
      error_code ignored;
      sock.close(ignored);
      continue;
    }
    ++st->active;
    asio::co_spawn(st->ex, serve(st, std::move(sock)), [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        log()->error("admin connection ended by exception: {}", loggable(ex.what()));
      }
    });
  }
}

// ---- admin.json ----

// Returns an error text, empty on success.
std::string write_admin_json(admin_state& st) {
  const json::object o{{"url", st.url},
                       {"pid", static_cast<std::int64_t>(::getpid())},
                       {"token", st.token}};
  std::string content = json::serialize(o) + "\n";
  auto err = ad::write_file_atomic(st.cfg.proxy.state_dir, "admin.json", content);
  if (err.empty()) st.admin_json_written = std::move(content);
  return err;
}

// Another instance (the authorize CLI's own listener, say) may have replaced the file since.
void remove_admin_json(admin_state& st) {
  if (st.admin_json_written.empty()) return;
  ad::remove_if_unchanged(std::filesystem::path{st.cfg.proxy.state_dir} / "admin.json",
                          st.admin_json_written);
  st.admin_json_written.clear();
}

std::vector<std::string> authorities(const config::config& cfg) {
  std::vector<std::string> out;
  for (const auto& p : cfg.providers) out.push_back(p.authority);
  return out;
}

}  // namespace

struct admin_server::impl {
  std::shared_ptr<admin_state> st;
};

admin_server::admin_server(asio::any_io_executor ex, const config::config& cfg,
                           auth::token_engine& engine, std::function<bool()> ready)
    : impl_(std::make_unique<impl>()) {
  impl_->st = std::make_shared<admin_state>(ex, cfg, engine, std::move(ready));
  auto& st = *impl_->st;
  st.token = auth::random_token();
  st.csrf = ad::csrf_for(st.token);
  st.csp = ad::content_security_policy(authorities(cfg));
  st.base_path = ad::base_path(cfg.proxy.public_base_url);
}

admin_server::~admin_server() {
  if (impl_->st->started) {
    stop();
  } else {
    error_code ignored;
    impl_->st->acceptor.close(ignored);
  }
}

std::uint16_t admin_server::bind() {
  auto& st = *impl_->st;
  if (!st.cfg.proxy.admin_address)
    throw std::runtime_error("admin listener disabled ([proxy] admin_listen is empty)");
  const auto& hp = *st.cfg.proxy.admin_address;
  try {
    const tcp::endpoint ep{asio::ip::make_address(hp.host), hp.port};
    st.acceptor.open(ep.protocol());
    st.acceptor.set_option(tcp::acceptor::reuse_address(true));
    st.acceptor.bind(ep);
    st.acceptor.listen(asio::socket_base::max_listen_connections);
  } catch (const boost::system::system_error& e) {
    error_code ignored;
    st.acceptor.close(ignored);
    throw std::runtime_error(
        fmt::format("admin listener {}: {}", hp.to_string(), e.code().message()));
  }
  const auto bound = st.acceptor.local_endpoint();
  st.port = bound.port();
  auto addr = bound.address();
  // A wildcard bind is reached locally through loopback: that is what admin.json should say.
  if (addr.is_unspecified())
    addr = addr.is_v6() ? asio::ip::address{asio::ip::address_v6::loopback()}
                        : asio::ip::address{asio::ip::address_v4::loopback()};
  st.url = addr.is_v6() ? fmt::format("http://[{}]:{}", addr.to_string(), st.port)
                        : fmt::format("http://{}:{}", addr.to_string(), st.port);
  st.hosts = ad::allowed_hosts(bound.address().to_string(), st.port, st.cfg.proxy.public_base_url);
  if (addr != bound.address()) {
    auto more = ad::allowed_hosts(addr.to_string(), st.port, "");
    st.hosts.insert(st.hosts.end(), more.begin(), more.end());
  }
  return st.port;
}

void admin_server::start() {
  auto& st = *impl_->st;
  if (st.started) return;
  if (!st.acceptor.is_open()) bind();
  st.started = true;
  if (auto err = write_admin_json(st); !err.empty())
    log()->error("cannot write admin.json (the authorize CLI will not find this listener): {}",
                 err);
  asio::co_spawn(st.ex, accept_loop(impl_->st), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      log()->error("admin listener stopped by exception: {}", loggable(ex.what()));
    }
  });
  log()->info("admin listening on {}", st.url);
}

void admin_server::stop() {
  auto& st = *impl_->st;
  if (st.stopping) return;
  st.stopping = true;
  error_code ignored;
  st.acceptor.close(ignored);
  for (auto& [id, stream] : st.conns) {
    stream->socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream->close();
  }
  remove_admin_json(st);
  if (st.started) log()->info("admin listener stopped");
}

std::string admin_server::url() const { return impl_->st->url; }

const std::string& admin_server::token() const { return impl_->st->token; }

}  // namespace xo::proxy
