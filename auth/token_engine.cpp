// The token engine (see token_engine.hpp for what it promises).
//
// Ordering rule that keeps refresh tokens from being lost: a new grant (authorization) or a
// rotated refresh token is written to the store before the access token that came with it is
// handed to any session, and the old refresh token is only dropped from memory once the new one
// is in memory. A crash between the identity platform's answer and the write loses at most the
// newest pair; with rotation grace on the IdP side (Entra keeps a redeemed refresh token valid
// for a short while) the stored one still works, and without it the account shows
// "needs_authorization" instead of silently failing.
//
// Store I/O and argon2 run on one worker thread (in order), never on the I/O thread.
#include "auth/token_engine.hpp"

#include "auth/client_auth.hpp"
#include "auth/client_credentials.hpp"
#include "auth/delegated.hpp"
#include "auth/https_client.hpp"
#include "auth/token_cache.hpp"
#include "auth/token_store.hpp"
#include "common/ascii.hpp"
#include "common/log.hpp"

#include <boost/asio/thread_pool.hpp>
#include <fmt/chrono.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <algorithm>
#include <random>

namespace xo::auth {

namespace {

std::shared_ptr<spdlog::logger> log() { return logger("auth"); }

std::string lower(std::string_view s) { return ascii_lower(s); }
bool iequals(std::string_view a, std::string_view b) { return ascii_iequals(a, b); }

token_result fail(failure_kind k, std::string error, std::string summary) {
  token_result r;
  r.error = token_error{k, std::move(error), 0, std::move(summary), {}, {}};
  return r;
}

std::int64_t unix_of(wall_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count();
}

wall_clock::time_point wall_of(std::int64_t unix_seconds) {
  return wall_clock::time_point{std::chrono::seconds{unix_seconds}};
}

// The steady-clock expiry of a token whose wall-clock expiry is known (tokens from the store).
steady::time_point steady_of(wall_clock::time_point wall) {
  return steady::now() + std::chrono::duration_cast<steady::duration>(wall - wall_clock::now());
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct token_engine::impl {
  struct provider_ctx {
    const config::provider* cfg = nullptr;
    std::unique_ptr<https_client> http;
    std::unique_ptr<client_auth> client;
    std::unique_ptr<client_credentials> app_source;
  };

  struct grant_state;

  // The token_cache's source for a delegated grant: one refresh_token request.
  class refresh_source final : public token_source {
   public:
    refresh_source(impl& e, grant_state& g) : e_(e), g_(g) {}
    awaitable<token_result> acquire() override { return e_.refresh_grant(g_); }
    std::string_view grant() const override { return "refresh_token"; }

   private:
    impl& e_;
    grant_state& g_;
  };

  // A device-code sign-in being polled. Its poll loop ends when the sign-in ends, when a newer
  // one replaces it (generation), or at shutdown.
  struct pending_device {
    std::string user_code;
    std::string verification_uri;
    wall_clock::time_point expires{};
    std::uint64_t generation = 0;
  };

  struct grant_state {
    std::string key;  // exact login (interactive) or "ropc:" + lower(login)
    std::string login;
    const config::account* acct = nullptr;
    provider_ctx* prov = nullptr;
    std::string cache_key;
    stored_grant grant;
    bool have_grant = false;
    std::string state = "not_authorized";
    bool stored = false;
    // The last write failed for an I/O reason (read-only or full file system): the grant lives
    // in memory only, and the sweeper writes it again until that works.
    bool store_failed = false;
    bool store_retrying = false;
    std::optional<store_key> file_key;
    std::optional<password_key> pw_key;
    std::string pw_digest;  // keyed digest of the password pw_key came from (ROPC)
    std::string last_error;
    std::optional<wall_clock::time_point> refreshed, authorized;
    steady::time_point last_used{};
    steady::time_point keepalive_tried{};
    std::uint64_t requests = 0;
    bool unlocking = false;  // a store open with a password is running
    std::unique_ptr<asio::steady_timer> unlocked;  // wakes sessions waiting for the unlock
    std::unique_ptr<refresh_source> source;
    std::unique_ptr<pending_device> device;
  };

  struct pending_code {
    std::string login;
    secret verifier;
    std::string redirect_uri;
    steady::time_point expires;
  };

  impl(asio::any_io_executor e, const config::config& c, options o)
      : ex(std::move(e)),
        config_(&c),
        opt(o),
        tokens(ex, token_cache::options{c.proxy.refresh_ahead, std::chrono::seconds{5},
                                        std::chrono::seconds{60}}),
        store(std::filesystem::path(c.proxy.state_dir) / "tokens"),
        sweeper(ex),
        worker(1) {
    if (RAND_bytes(digest_key, sizeof digest_key) != 1)
      throw std::runtime_error("no randomness available");
    if (!c.proxy.token_key_file.empty()) {
      std::string why;
      key_file = token_store::read_key_file(c.proxy.token_key_file, why);
      if (!key_file) throw std::runtime_error("token_key_file: " + why);
    }
    providers = make_providers(c);
    // Interactive accounts have exactly one grant each, known from the config.
    for (const auto& a : c.accounts) {
      if (!a.interactive()) continue;
      grant_of(a, a.login);
    }
  }

  ~impl() {
    OPENSSL_cleanse(digest_key, sizeof digest_key);
    worker.join();  // its work refers to `store`
  }

  // ---- helpers ----

  // Same app registration: a refresh token stays redeemable.
  static bool same_client(const config::provider& a, const config::provider& b) {
    return a.client_id == b.client_id && iequals(a.tenant, b.tenant) && a.authority == b.authority;
  }
  // Same app and same request: an app-only token stays what a new request would return.
  static bool same_app_request(const config::provider& a, const config::provider& b) {
    return same_client(a, b) && a.scopes == b.scopes && a.client_secret.reveal() == b.client_secret.reveal() &&
           a.certificate_file == b.certificate_file && a.private_key_file == b.private_key_file;
  }

  void load_from_store(grant_state& g) {
    if (g.file_key) {
      auto r = store.load(g.login, *g.file_key);
      if (r.grant) {
        adopt(g, std::move(*r.grant));
        log()->info("account={:?}: stored grant loaded (state {})", g.login, g.state);
      } else if (r.error != store_errc::not_found) {
        report_load_error(g, r);
      }
    } else if (store.exists(g.login)) {
      g.state = "locked";
    }
  }

  std::map<std::string, std::unique_ptr<provider_ctx>> make_providers(const config::config& c) {
    std::map<std::string, std::unique_ptr<provider_ctx>> out;
    for (const auto& p : c.providers) {
      auto ctx = std::make_unique<provider_ctx>();
      ctx->cfg = &p;
      ctx->http = std::make_unique<https_client>(ex, p.ca_file, c.proxy.token_timeout);
      try {
        ctx->client = std::make_unique<client_auth>(p);
      } catch (const std::exception& err) {
        throw std::runtime_error(fmt::format("provider '{}': {}", p.name, err.what()));
      }
      ctx->app_source = std::make_unique<client_credentials>(p, *ctx->http, *ctx->client);
      out.emplace(p.name, std::move(ctx));
    }
    return out;
  }

  grant_state& grant_of(const config::account& a, const std::string& login) {
    std::string key = a.interactive() ? lower(a.login) : "ropc:" + lower(login);
    auto& slot = grants[key];
    if (!slot) {
      slot = std::make_unique<grant_state>();
      auto& g = *slot;
      g.key = key;
      g.login = a.interactive() ? a.login : lower(login);
      g.acct = &a;
      g.prov = providers.at(a.provider).get();
      g.cache_key = "grant:" + key;
      g.source = std::make_unique<refresh_source>(*this, g);
      g.unlocked = std::make_unique<asio::steady_timer>(ex, steady::time_point::max());
      if (key_file) g.file_key = token_store::key_from_file_bytes(*key_file, g.login);
    }
    return *slot;
  }

  std::string digest_of(const secret& password) const {
    unsigned char md[32];
    unsigned len = 0;
    HMAC(EVP_sha256(), digest_key, sizeof digest_key,
         reinterpret_cast<const unsigned char*>(password.reveal().data()), password.size(), md,
         &len);
    return std::string(reinterpret_cast<const char*>(md), len);
  }

  template <class R>
  static awaitable<R> run_job(std::function<R()> f) {
    co_return f();
  }

  // Runs f on the worker thread; resumes on the caller's executor. Jobs travel as named
  // std::function locals: GCC 12 destroys a closure temporary built inside a co_await
  // expression twice.
  template <class R>
  awaitable<R> off_thread(std::function<R()> f) {
    auto job = run_job<R>(std::move(f));
    co_return co_await asio::co_spawn(worker.get_executor(), std::move(job), asio::use_awaitable);
  }

  awaitable<std::optional<password_key>> new_key(secret password) {
    std::function<std::optional<password_key>()> job = [password] {
      return token_store::new_password_key(password);
    };
    co_return co_await off_thread(std::move(job));
  }

  awaitable<store_load> load_pw(std::string login, secret password, password_key* k) {
    std::function<store_load()> job = [this, login, password, k] {
      return store.load_with_password(login, password, k);
    };
    co_return co_await off_thread(std::move(job));
  }

  void changed(const grant_state& g) {
    if (listeners.empty()) return;
    auto st = status_of_grant(g);
    for (const auto& fn : listeners) fn(st);
  }

  // Requests made for one account (status page); metrics count them by grant (record_request).
  static void count_request(grant_state& g) { ++g.requests; }

  // Writes g's grant with whatever key it has. Returns whether it is now stored.
  awaitable<bool> persist(grant_state& g, bool replace_unreadable) {
    if (!g.have_grant) co_return false;
    g.grant.updated_unix = unix_of(wall_clock::now());
    stored_grant snapshot = g.grant;
    std::string detail;
    store_errc rc = store_errc::ok;
    if (g.file_key) {
      store_key k = *g.file_key;
      std::function<store_errc()> job = [this, snapshot, k, &detail, replace_unreadable] {
        return store.save(snapshot, k, detail, replace_unreadable);
      };
      rc = co_await off_thread(std::move(job));
    } else if (g.pw_key) {
      password_key k = *g.pw_key;
      std::function<store_errc()> job = [this, snapshot, k, &detail, replace_unreadable] {
        return store.save_with_password_key(snapshot, k, detail, replace_unreadable);
      };
      rc = co_await off_thread(std::move(job));
    } else {
      g.stored = false;
      log()->warn("account={:?}: tokens kept in memory only until the account's first login "
                  "(its local password encrypts the store; set [proxy] token_key_file for "
                  "unattended accounts)",
                  g.login);
      co_return false;
    }
    if (rc != store_errc::ok) {
      g.stored = false;
      g.store_failed = rc == store_errc::io;
      g.last_error = fmt::format("token store: {} ({})", to_string(rc), detail);
      log()->error("account={:?}: cannot store its tokens: {}: {}", g.login, to_string(rc),
                   detail);
      co_return false;
    }
    g.stored = true;
    g.store_failed = false;
    if (g.last_error.starts_with("token store:")) g.last_error.clear();
    co_return true;
  }

  // The sweeper's second try at a write that failed (the newest refresh token would otherwise
  // exist only in memory until the next refresh, and be lost with the process).
  awaitable<void> retry_store(grant_state& g) {
    const bool ok = co_await persist(g, false);
    g.store_retrying = false;
    if (ok) {
      log()->info("account={:?}: tokens stored again after an earlier failure", g.login);
      changed(g);
    }
  }

  // Adopts a grant read from the store.
  void adopt(grant_state& g, stored_grant sg) {
    const bool same_client = sg.client_id == g.prov->cfg->client_id &&
                             iequals(sg.tenant, g.prov->cfg->tenant);
    g.grant = std::move(sg);
    g.have_grant = !g.grant.refresh_token.empty() || !g.grant.access_token.empty();
    g.stored = true;
    g.state = g.grant.state == "needs_authorization" ? "needs_authorization" : "authorized";
    g.last_error = g.grant.last_error;
    if (g.grant.updated_unix) g.refreshed = wall_of(g.grant.updated_unix);
    if (!same_client) {
      // A refresh token is bound to the app that obtained it.
      g.state = "needs_authorization";
      g.last_error = fmt::format("stored grant belongs to client {} in tenant {}; the provider "
                                 "now uses client {} in tenant {}: authorize again",
                                 g.grant.client_id, g.grant.tenant, g.prov->cfg->client_id,
                                 g.prov->cfg->tenant);
    }
    if (g.state == "authorized" && !g.grant.access_token.empty() &&
        wall_of(g.grant.access_expires_unix) > wall_clock::now() + std::chrono::seconds{60}) {
      access_token t;
      t.value = g.grant.access_token;
      t.expires_wall = wall_of(g.grant.access_expires_unix);
      t.expires_at = steady_of(t.expires_wall);
      t.scope = g.grant.scope;
      tokens.put(g.cache_key, std::move(t));
    }
  }

  void report_load_error(grant_state& g, const store_load& r) {
    g.state = "store_error";
    g.last_error = fmt::format("token store: {}: {}", to_string(r.error), r.detail);
    log()->error("account={:?}: {} — the entry is kept as it is; authorize the account again to "
                 "replace it",
                 g.login, g.last_error);
  }

  // Installs the tokens of a fresh authorization (code, device code, password grant).
  awaitable<bool> install(grant_state& g, access_token t, bool replace_unreadable) {
    if (t.refresh_token.empty()) {
      log()->warn("account={:?}: the identity platform returned no refresh token (is "
                  "offline_access among the scopes?): the account will need authorization again "
                  "when the access token expires",
                  g.login);
    }
    stored_grant sg;
    sg.account = g.login;
    sg.provider = g.prov->cfg->name;
    sg.client_id = g.prov->cfg->client_id;
    sg.tenant = g.prov->cfg->tenant;
    sg.refresh_token = std::move(t.refresh_token);
    sg.access_token = t.value;
    sg.access_expires_unix = unix_of(t.expires_wall);
    sg.scope = t.scope;
    sg.state = "authorized";
    g.grant = std::move(sg);
    g.have_grant = true;
    g.state = "authorized";
    g.last_error.clear();
    g.authorized = wall_clock::now();
    g.refreshed = g.authorized;
    t.refresh_token = secret{};
    bool stored = co_await persist(g, replace_unreadable);
    tokens.put(g.cache_key, std::move(t));
    changed(g);
    co_return stored;
  }

  // ---- refresh ----

  static token_result not_authorized(const grant_state& g) {
    if (g.state == "store_error") return fail(failure_kind::reauth, "store_error", g.last_error);
    return fail(failure_kind::reauth, "not_authorized",
                fmt::format("account {} is not authorized yet: run `xoauth-proxy authorize {}` "
                            "or use the admin page",
                            g.login, g.login));
  }

  awaitable<token_result> refresh_grant(grant_state& g) {
    if (!g.have_grant || g.grant.refresh_token.empty()) co_return not_authorized(g);
    if (g.state == "needs_authorization") {
      co_return fail(failure_kind::reauth, "needs_authorization",
                     fmt::format("account {} needs authorization again ({})", g.login,
                                 g.last_error));
    }
    count_request(g);
    secret rt = g.grant.refresh_token;
    auto r = co_await refresh(*g.prov->http, *g.prov->cfg, *g.prov->client, g.acct->flow,
                              std::move(rt));
    if (r.ok()) {
      auto& t = *r.token;
      if (!t.refresh_token.empty()) g.grant.refresh_token = std::move(t.refresh_token);
      t.refresh_token = secret{};
      g.grant.access_token = t.value;
      g.grant.access_expires_unix = unix_of(t.expires_wall);
      if (!t.scope.empty()) g.grant.scope = t.scope;
      g.grant.state = "authorized";
      g.grant.last_error.clear();
      g.state = "authorized";
      g.last_error.clear();
      g.refreshed = wall_clock::now();
      co_await persist(g, false);  // before any session sees the new access token
      changed(g);
      co_return r;
    }
    g.last_error = r.error.describe();
    if (r.error.kind == failure_kind::reauth) {
      g.state = "needs_authorization";
      g.grant.state = "needs_authorization";
      g.grant.last_error = r.error.describe();
      log()->error("account={:?} needs authorization again: {} (the old grant is kept in the "
                   "store for inspection)",
                   g.login, r.error.describe());
      co_await persist(g, false);
      changed(g);
    } else if (r.error.kind == failure_kind::config) {
      log()->error("account={:?}: refresh refused for a configuration problem: {}", g.login,
                   r.error.describe());
    }
    co_return r;
  }

  // ---- password-keyed entries ----

  // Opens a password-keyed store entry with the account's (already verified) local password.
  awaitable<void> unlock(grant_state& g, const secret& password) {
    while (g.unlocking) {
      co_await g.unlocked->async_wait(use_nothrow);
      auto cs = co_await asio::this_coro::cancellation_state;
      if (cs.cancelled() != asio::cancellation_type::none) co_return;
    }
    if (g.pw_key || g.file_key) co_return;
    g.unlocking = true;
    std::string login = g.login;
    password_key k;
    auto r = co_await load_pw(login, password, &k);
    if (r.grant) {
      g.pw_key = k;
      if (!g.have_grant || g.grant.updated_unix <= r.grant->updated_unix) {
        adopt(g, std::move(*r.grant));
      } else {
        co_await persist(g, false);  // memory is newer (authorized while locked)
      }
      log()->info("account={:?}: token store entry opened with the account's password", g.login);
    } else if (r.error == store_errc::not_found) {
      auto fresh = co_await new_key(password);
      if (fresh) g.pw_key = *fresh;
      if (g.have_grant) co_await persist(g, false);  // authorized while locked: store it now
    } else {
      if (!g.have_grant) report_load_error(g, r);
      else {
        // Authorized again while an unreadable entry existed: the admin's new grant wins, the
        // old file is set aside.
        auto fresh = co_await new_key(password);
        if (fresh) g.pw_key = *fresh;
        co_await persist(g, true);
      }
    }
    g.unlocking = false;
    g.unlocked->cancel();
    changed(g);
  }

  // ---- ROPC ----

  awaitable<token_result> ropc(grant_state& g, std::string login, secret password) {
    const std::string digest = digest_of(password);
    const bool same_password = g.pw_digest.size() == digest.size() &&
                               CRYPTO_memcmp(g.pw_digest.data(), digest.data(), digest.size()) == 0;
    if (!g.pw_digest.empty() && same_password && g.have_grant &&
        g.state == "authorized") {
      auto r = co_await tokens.get(g.cache_key, *g.source);
      if (r.ok() || r.error.kind == failure_kind::transient) co_return r;
      // The refresh token stopped working: the password may still be good.
    } else if (g.pw_digest.empty() && !g.unlocking) {
      // First login since start: a stored grant opens only with the same password.
      g.unlocking = true;
      password_key k;
      std::string name = g.login;
      auto r = co_await load_pw(name, password, &k);
      g.unlocking = false;
      if (r.grant) {
        g.pw_key = k;
        g.pw_digest = digest;
        adopt(g, std::move(*r.grant));
        if (g.state == "authorized") {
          auto t = co_await tokens.get(g.cache_key, *g.source);
          if (t.ok() || t.error.kind == failure_kind::transient) co_return t;
        }
      }
    }
    // Ask the identity platform with the user's password.
    count_request(g);
    const std::string username = g.acct->mailbox.empty() ? login : g.acct->mailbox;
    const auto t0 = steady::now();
    auto r = co_await password_grant(*g.prov->http, *g.prov->cfg, *g.prov->client, username,
                                     password);
    record_request("password", r, steady::now() - t0);
    if (!r.ok()) {
      if (r.error.kind != failure_kind::bad_password) g.last_error = r.error.describe();
      co_return r;
    }
    auto fresh = co_await new_key(password);
    g.pw_key = fresh;
    g.pw_digest = digest;
    token_result out;
    out.token = *r.token;
    out.token->refresh_token = secret{};
    // The identity platform just proved this password: a stored entry from an older password
    // is replaced.
    co_await install(g, std::move(*r.token), true);
    co_return out;
  }

  // ---- device code ----

  awaitable<void> poll_device(grant_state& g, std::uint64_t gen, secret device_code,
                              std::chrono::seconds interval, steady::time_point deadline) {
    auto& prov = *g.prov;
    auto current = [&] { return !stopped && g.device && g.device->generation == gen; };
    while (steady::now() < deadline) {
      co_await sleep_for(interval);
      if (!current()) co_return;
      count_request(g);
      const auto t0 = steady::now();
      auto r = co_await poll_device_code(*prov.http, *prov.cfg, *prov.client, device_code);
      record_request("device_code", r, steady::now() - t0);
      if (!current()) co_return;
      if (r.ok()) {
        g.device.reset();
        co_await install(g, std::move(*r.token), true);
        log()->info("account={:?} authorized with a device code", g.login);
        co_return;
      }
      if (r.error.error == "authorization_pending") continue;
      if (r.error.error == "slow_down") {
        interval += std::chrono::seconds{5};
        continue;
      }
      if (r.error.kind == failure_kind::transient) {
        interval = std::min<std::chrono::seconds>(interval * 2, std::chrono::seconds{60});
        continue;
      }
      g.device.reset();
      g.state = g.have_grant ? (g.grant.state == "needs_authorization" ? "needs_authorization"
                                                                        : "authorized")
                             : "not_authorized";
      g.last_error = "device code sign-in failed: " + r.error.describe();
      log()->warn("account={:?}: {}", g.login, g.last_error);
      changed(g);
      co_return;
    }
    if (!current()) co_return;
    g.device.reset();
    if (!g.have_grant) g.state = "not_authorized";
    g.last_error = "device code sign-in expired before it was completed";
    changed(g);
  }

  // ---- sweeper ----

  awaitable<void> sweep_loop() {
    std::mt19937 rng{std::random_device{}()};
    auto interval = opt.sweep_interval;
    if (interval.count() == 0)
      interval = std::clamp<std::chrono::seconds>(cfg().proxy.refresh_ahead / 4,
                                                  std::chrono::seconds{5},
                                                  std::chrono::seconds{30});
    const auto interval_ms =
        static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(interval).count());
    while (!stopped) {
      std::uniform_int_distribution<int> jitter_ms(0, interval_ms / 4);
      sweeper.expires_after(interval + std::chrono::milliseconds(jitter_ms(rng)));
      co_await sweeper.async_wait(use_nothrow);
      if (stopped) co_return;
      sweep(rng);
      purge_pending();
    }
  }

  void sweep(std::mt19937& rng) {
    const auto now = steady::now();
    const auto wall = wall_clock::now();
    // Jitter spreads the refreshes of many accounts authorized at the same moment.
    const int max_jitter = static_cast<int>(cfg().proxy.refresh_ahead.count() / 5);
    std::uniform_int_distribution<int> jitter_s(0, std::max(max_jitter, 0));
    for (auto& [key, gp] : grants) {
      auto& g = *gp;
      if (g.have_grant && g.store_failed && !g.store_retrying) {
        g.store_retrying = true;
        asio::co_spawn(ex, retry_store(g), asio::detached);
      }
      if (!g.have_grant || g.state != "authorized" || (!g.file_key && !g.pw_key)) continue;
      if (g.grant.refresh_token.empty()) continue;
      auto cached = tokens.peek(g.cache_key);
      // In use lately: keep a fresh access token ready so no login waits for a refresh.
      const bool in_use = g.last_used != steady::time_point{} &&
                          now - g.last_used < std::chrono::hours{2};
      auto ahead = std::chrono::duration_cast<steady::duration>(cfg().proxy.refresh_ahead +
                                                                 std::chrono::seconds{jitter_s(rng)});
      // Never refresh a token in the first half of its life (short-lived tokens would
      // otherwise be refreshed at every sweep).
      if (cached && g.refreshed) {
        const auto lifetime = std::chrono::duration_cast<steady::duration>(
            cached->expires_wall - *g.refreshed);
        ahead = std::min(ahead, lifetime / 2);
      }
      const bool expiring = !cached || cached->expires_at - now < ahead;
      // Idle: refresh now and then so the grant never reaches the inactivity limit.
      // A failing grant is left to the logins (the token cache holds failures back); the
      // keep-alive tries at most once an hour.
      const bool stale = (!g.refreshed || wall - *g.refreshed > cfg().proxy.token_keepalive) &&
                         (g.keepalive_tried == steady::time_point{} ||
                          now - g.keepalive_tried > std::chrono::hours{1});
      const bool proactive = in_use && expiring && g.last_error.empty();
      if (stale) g.keepalive_tried = now;
      if (proactive || stale) {
        log()->debug("account={:?}: {} refresh", g.login, stale ? "keep-alive" : "proactive");
        tokens.prefetch(g.cache_key, *g.source);
      }
    }
  }

  void purge_pending() {
    const auto now = steady::now();
    std::erase_if(pending_codes, [&](const auto& kv) { return kv.second.expires < now; });
  }

  // ---- status ----

  account_status status_of_grant(const grant_state& g) const {
    account_status s;
    s.login = g.login;
    s.provider = g.acct->provider;
    s.flow = g.acct->flow;
    s.state = g.device ? "authorizing" : g.state;
    for (const auto& [st, pend] : pending_codes)
      if (pend.login == g.login && pend.expires > steady::now()) s.state = "authorizing";
    if (auto t = tokens.peek(g.cache_key)) s.access_expires = t->expires_wall;
    else if (g.have_grant && g.grant.access_expires_unix)
      s.access_expires = wall_of(g.grant.access_expires_unix);
    s.refreshed = g.refreshed;
    s.authorized = g.authorized;
    s.last_error = g.last_error;
    s.stored = g.stored;
    s.token_requests = g.requests;
    if (g.device) {
      s.user_code = g.device->user_code;
      s.verification_uri = g.device->verification_uri;
      s.pending_expires = g.device->expires;
    }
    return s;
  }

  asio::any_io_executor ex;
  const config::config* config_;  // the current configuration (replaced by reconfigure())
  const config::config& cfg() const { return *config_; }
  options opt;
  token_cache tokens;
  token_store store;
  std::optional<secret> key_file;
  std::map<std::string, std::unique_ptr<provider_ctx>> providers;
  std::map<std::string, std::unique_ptr<grant_state>> grants;
  // Replaced by a reload while requests may still refer to them: kept until the engine ends.
  std::vector<std::unique_ptr<provider_ctx>> retired_providers;
  std::vector<std::unique_ptr<grant_state>> retired_grants;
  std::map<std::string, pending_code> pending_codes;  // by OAuth state
  std::vector<std::function<void(const account_status&)>> listeners;
  std::uint16_t admin_port = 0;
  bool started = false;
  bool stopped = false;
  asio::steady_timer sweeper;
  std::uint64_t device_generation = 0;
  unsigned char digest_key[32];
  asio::thread_pool worker;  // last: joined first
};

// ---------------------------------------------------------------------------------------------

token_engine::token_engine(asio::any_io_executor ex, const config::config& cfg, options opt)
    : impl_(std::make_unique<impl>(std::move(ex), cfg, opt)) {}

token_engine::token_engine(asio::any_io_executor ex, const config::config& cfg)
    : token_engine(std::move(ex), cfg, options{}) {}

token_engine::~token_engine() = default;

void token_engine::start() {
  auto& e = *impl_;
  if (e.started) return;
  e.started = true;
  // Key-file entries open now (a few small files: read on this thread before serving).
  for (auto& [key, gp] : e.grants) e.load_from_store(*gp);
  asio::co_spawn(e.ex, e.sweep_loop(), asio::detached);
}

void token_engine::stop() {
  auto& e = *impl_;
  e.stopped = true;
  e.sweeper.cancel();
  // Device-code polls notice `stopped` after their current sleep.
}

std::string token_engine::reconfigure(const config::config& next) {
  auto& e = *impl_;
  const auto& now_px = e.cfg().proxy;
  if (next.proxy.state_dir != now_px.state_dir)
    return "state_dir changed: restart the proxy to use another state directory";
  if (next.proxy.token_key_file != now_px.token_key_file)
    return "token_key_file changed: restart the proxy to use another token key";
  std::map<std::string, std::unique_ptr<impl::provider_ctx>> fresh;
  try {
    fresh = e.make_providers(next);
  } catch (const std::exception& err) {
    return err.what();
  }
  for (auto& [name, old] : e.providers) {
    auto it = fresh.find(name);
    if (it == fresh.end() || !impl::same_app_request(*old->cfg, *it->second->cfg))
      e.tokens.invalidate("provider:" + name);
  }
  std::size_t kept = 0, dropped = 0;
  for (auto it = e.grants.begin(); it != e.grants.end();) {
    auto& g = *it->second;
    const config::account* a = next.find_account(g.login);
    auto pit = a ? fresh.find(a->provider) : fresh.end();
    const bool keep = a && a->flow == g.acct->flow && a->provider == g.acct->provider &&
                      (!a->interactive() || iequals(a->login, g.login)) && pit != fresh.end() &&
                      impl::same_client(*g.prov->cfg, *pit->second->cfg);
    if (keep) {
      g.acct = a;
      g.prov = pit->second.get();
      ++kept;
      ++it;
      continue;
    }
    // In-flight requests still refer to it: retired, not destroyed.
    e.tokens.invalidate(g.cache_key);
    e.retired_grants.push_back(std::move(it->second));
    it = e.grants.erase(it);
    ++dropped;
  }
  for (auto& [name, p] : e.providers) e.retired_providers.push_back(std::move(p));
  e.providers = std::move(fresh);
  e.config_ = &next;
  for (const auto& a : next.accounts) {
    if (!a.interactive() || e.grants.count(lower(a.login))) continue;
    e.load_from_store(e.grant_of(a, a.login));
  }
  log()->info("token engine reconfigured: {} grant(s) kept, {} dropped", kept, dropped);
  return "";
}

void token_engine::set_admin_port(std::uint16_t port) { impl_->admin_port = port; }

std::string token_engine::redirect_uri() const {
  const auto& p = impl_->cfg().proxy;
  std::string base = p.public_base_url;
  if (base.empty()) {
    std::uint16_t port = impl_->admin_port;
    if (port == 0 && p.admin_address) port = p.admin_address->port;
    base = fmt::format("http://localhost:{}", port);
  }
  return base + "/sso/oauth_callback";
}

awaitable<token_result> token_engine::token_for(const config::account& a, std::string login,
                                                secret password) {
  auto& e = *impl_;
  if (a.flow == config::flow_kind::client_credentials) {
    auto& prov = *e.providers.at(a.provider);
    const std::string key = "provider:" + a.provider;
    co_return co_await e.tokens.get(key, *prov.app_source);
  }
  auto& g = e.grant_of(a, login);
  g.last_used = steady::now();
  if (a.flow == config::flow_kind::password) co_return co_await e.ropc(g, login, std::move(password));
  if (!g.file_key && !g.pw_key) co_await e.unlock(g, password);
  if (!g.have_grant) co_return e.not_authorized(g);
  co_return co_await e.tokens.get(g.cache_key, *g.source);
}

awaitable<void> token_engine::open_store(const config::account& a, secret password) {
  auto& e = *impl_;
  if (!a.interactive()) co_return;
  auto& g = e.grant_of(a, a.login);
  if (!g.file_key && !g.pw_key) co_await e.unlock(g, password);
  if (!g.file_key && !g.pw_key) {
    // The entry did not open with this password (it was changed): the authorization about to
    // happen replaces it (install() sets the unreadable file aside).
    auto fresh =
        co_await e.new_key(password);
    g.pw_key = fresh;
  }
}

void token_engine::token_rejected(const config::account& a, const std::string& login) {
  auto& e = *impl_;
  if (a.flow == config::flow_kind::client_credentials) {
    e.tokens.invalidate("provider:" + a.provider);
    return;
  }
  e.tokens.invalidate(e.grant_of(a, login).cache_key);
}

awaitable<authorization_start> token_engine::begin_authorization(std::string login, bool device) {
  auto& e = *impl_;
  authorization_start out;
  const config::account* a = e.cfg().find_account(login);
  if (!a || a->is_wildcard() || !iequals(a->login, login)) {
    out.error = fmt::format("no [[account]] has login '{}'", login);
    co_return out;
  }
  if (!a->interactive()) {
    out.error = fmt::format("account {} uses flow \"{}\", which needs no authorization", a->login,
                            config::to_string(a->flow));
    co_return out;
  }
  auto& g = e.grant_of(*a, a->login);
  if (e.stopped) {
    out.error = "the proxy is shutting down";
    co_return out;
  }
  g.last_error.clear();  // a new attempt
  if (device || a->flow == config::flow_kind::device_code) {
    e.count_request(g);
    const auto t0 = steady::now();
    auto d = co_await start_device_code(*g.prov->http, *g.prov->cfg, *g.prov->client, a->flow);
    record_request("devicecode", d.ok ? nullptr : &d.error, steady::now() - t0);
    if (!d.ok) {
      out.error = "the identity platform refused to start a device code sign-in: " + d.error.describe();
      g.last_error = out.error;
      co_return out;
    }
    auto pend = std::make_unique<impl::pending_device>();
    pend->user_code = d.ok->user_code;
    pend->verification_uri = d.ok->verification_uri;
    pend->expires = wall_clock::now() + d.ok->expires_in;
    const std::uint64_t gen = pend->generation = ++e.device_generation;
    g.device = std::move(pend);  // replaces (and so ends) any earlier device sign-in's polling
    out.ok = true;
    out.verification_uri = d.ok->verification_uri;
    out.user_code = d.ok->user_code;
    out.message = d.ok->message;
    out.expires_in = d.ok->expires_in;
    const auto deadline = steady::now() + d.ok->expires_in;
    asio::co_spawn(e.ex,
                   e.poll_device(g, gen, std::move(d.ok->device_code), d.ok->interval, deadline),
                   asio::detached);
    e.changed(g);
    log()->info("account={:?}: device code sign-in started (code valid {} s)", g.login,
                d.ok->expires_in.count());
    co_return out;
  }
  auto pk = make_pkce();
  std::string state = random_token();
  const std::string hint = a->mailbox.empty() ? a->login : a->mailbox;
  out.authorize_url = authorize_url(*g.prov->cfg, a->flow, redirect_uri(), state, pk.challenge, hint);
  e.pending_codes[state] = impl::pending_code{a->login, std::move(pk.verifier), redirect_uri(),
                                              steady::now() + std::chrono::minutes{15}};
  out.ok = true;
  out.expires_in = std::chrono::seconds{15 * 60};
  e.changed(g);
  log()->info("account={:?}: authorization started; waiting for the redirect to {}", g.login,
              redirect_uri());
  co_return out;
}

awaitable<callback_outcome> token_engine::complete_authorization(
    std::map<std::string, std::string> query) {
  auto& e = *impl_;
  callback_outcome out;
  e.purge_pending();
  auto st = query.find("state");
  // The state is a secret: compared in constant time, every pending entry looked at.
  auto it = e.pending_codes.end();
  if (st != query.end()) {
    for (auto p = e.pending_codes.begin(); p != e.pending_codes.end(); ++p) {
      if (p->first.size() == st->second.size() &&
          CRYPTO_memcmp(p->first.data(), st->second.data(), st->second.size()) == 0)
        it = p;
    }
  }
  if (it == e.pending_codes.end()) {
    out.http_status = 400;
    out.message =
        "This sign-in is unknown, expired or already used. Start again from the admin page or "
        "with `xoauth-proxy authorize ACCOUNT`.";
    co_return out;
  }
  impl::pending_code pend = std::move(it->second);
  e.pending_codes.erase(it);  // one use: a reloaded callback page cannot redeem the code twice
  out.account = pend.login;
  const config::account* a = e.cfg().find_account(pend.login);
  if (!a) {
    out.http_status = 400;
    out.message = "The account is no longer in the configuration.";
    co_return out;
  }
  auto& g = e.grant_of(*a, a->login);
  if (auto err = query.find("error"); err != query.end()) {
    std::string desc = query.count("error_description") ? query["error_description"] : "";
    desc = desc.substr(0, desc.find_first_of("\r\n"));
    if (desc.size() > 300) desc.resize(300);
    out.http_status = 502;
    out.message = fmt::format("The identity platform did not authorize {}: {}{}{}", a->login,
                              err->second, desc.empty() ? "" : ": ", desc);
    g.last_error = out.message;
    log()->warn("account={:?}: authorization refused: {}", a->login, err->second);
    e.changed(g);
    co_return out;
  }
  auto code = query.find("code");
  if (code == query.end() || code->second.empty()) {
    out.http_status = 400;
    out.message = "The redirect carries no authorization code.";
    co_return out;
  }
  e.count_request(g);
  const auto t0 = steady::now();
  secret code_value{code->second};
  auto r = co_await redeem_code(*g.prov->http, *g.prov->cfg, *g.prov->client, a->flow,
                                std::move(code_value), pend.redirect_uri, std::move(pend.verifier));
  record_request("authorization_code", r, steady::now() - t0);
  if (!r.ok()) {
    out.http_status = 502;
    out.message = fmt::format("Redeeming the authorization code for {} failed: {}", a->login,
                              r.error.describe());
    g.last_error = out.message;
    log()->warn("account={:?}: {}", a->login, out.message);
    e.changed(g);
    co_return out;
  }
  const bool stored = co_await e.install(g, std::move(*r.token), true);
  out.ok = true;
  out.message = stored ? fmt::format("{} is authorized. You can close this window.", a->login)
                       : fmt::format("{} is authorized. Its tokens are kept in memory and stored "
                                     "encrypted at the account's first login.",
                                     a->login);
  log()->info("account={:?} authorized through the redirect callback", a->login);
  co_return out;
}

std::vector<account_status> token_engine::status() const {
  const auto& e = *impl_;
  std::vector<account_status> out;
  for (const auto& a : e.cfg().accounts) {
    if (a.flow == config::flow_kind::client_credentials) {
      account_status s;
      s.login = a.login;
      s.provider = a.provider;
      s.flow = a.flow;
      s.state = "app_only";
      if (auto t = e.tokens.peek("provider:" + a.provider)) s.access_expires = t->expires_wall;
      out.push_back(std::move(s));
      continue;
    }
    if (a.interactive()) {
      auto it = e.grants.find(lower(a.login));
      if (it != e.grants.end()) out.push_back(e.status_of_grant(*it->second));
      continue;
    }
    // ROPC: one line per login seen so far (a wildcard account has several).
    bool any = false;
    for (const auto& [key, g] : e.grants) {
      if (g->acct != &a) continue;
      out.push_back(e.status_of_grant(*g));
      any = true;
    }
    if (!any) {
      account_status s;
      s.login = a.login;
      s.provider = a.provider;
      s.flow = a.flow;
      s.state = "not_authorized";
      out.push_back(std::move(s));
    }
  }
  return out;
}

std::optional<account_status> token_engine::status_of(const std::string& login) const {
  for (auto& s : status())
    if (iequals(s.login, login)) return s;
  return std::nullopt;
}

std::vector<provider_status> token_engine::providers() const {
  std::vector<provider_status> out;
  for (const auto& [name, p] : impl_->providers) {
    provider_status s;
    s.name = name;
    s.tenant = p->cfg->tenant;
    s.client_id = p->cfg->client_id;
    s.client_credential = p->client->describe();
    s.redirect_uri = redirect_uri();
    out.push_back(std::move(s));
  }
  return out;
}

void token_engine::on_change(std::function<void(const account_status&)> fn) {
  impl_->listeners.push_back(std::move(fn));
}


}  // namespace xo::auth
