#include "proxy/login_service.hpp"

#include "common/ascii.hpp"
#include "common/log.hpp"

#include <chrono>

namespace xo::proxy {

namespace {

protocol::auth_outcome fail(protocol::auth_outcome::kind k, std::string reason) {
  protocol::auth_outcome o;
  o.result = k;
  o.reason = std::move(reason);
  return o;
}

using steady = std::chrono::steady_clock;

auth::login_guard::settings guard_settings(const config::proxy_settings& p) {
  auth::login_guard::settings s;
  s.pair_failures = p.lockout_failures;
  s.address_failures = p.lockout_failures == 0 ? 0 : p.lockout_address_failures;
  s.window = p.lockout_window;
  s.lockout = p.lockout_duration;
  return s;
}

// The guard's account key: the login as typed, ASCII case folded. find_account() ignores case,
// so "Alice@x" and "alice@x" must not be two accounts to a guesser either.
std::string guard_key(std::string_view user) { return ascii_lower(user); }

long long whole_seconds(steady::duration d) {
  return std::chrono::ceil<std::chrono::seconds>(d).count();
}

}  // namespace

login_service::login_service(asio::any_io_executor ex, const config::config& cfg)
    : cfg_(&cfg),
      guard_(guard_settings(cfg.proxy)),
      checker_(ex, 1, cfg.proxy.credential_cache_ttl),
      engine_(ex, cfg) {}

login_service::~login_service() = default;

std::string login_service::reconfigure(const config::config& next) {
  if (auto why = engine_.reconfigure(next); !why.empty()) return why;
  cfg_ = &next;
  guard_.update(guard_settings(next.proxy));
  return {};
}

void login_service::token_rejected(const std::string& sid, const std::string& user,
                                   const protocol::token_rejected& why) {
  logger("proxy")->warn("sid={} upstream refused the token for user={:?}: {}{}{}", sid, user,
                        why.upstream_reply, why.hint.empty() ? "" : "; fix: ", why.hint);
  if (const auto* a = cfg_->find_account(user)) engine_.token_rejected(*a, user);
}

void login_service::failed(const std::string& sid, const std::string& user,
                           const std::string& guard_key, const std::string& client_ip,
                           std::string_view reason, bool count) {
  auto audit = logger("audit");
  audit->warn("sid={} login failure account={:?} client={} reason={}", sid, user, client_ip,
              reason);
  if (!count) return;
  const auto r = guard_.failure(guard_key, client_ip, steady::now());
  if (r.pair_locked)
    audit->warn("sid={} lockout account={:?} client={} scope=pair failures={} for {} s", sid, user,
                client_ip, r.pair_failures, r.lockout.count());
  if (r.address_locked)
    audit->warn("sid={} lockout account={:?} client={} scope=address failures={} for {} s", sid,
                user, client_ip, r.address_failures, r.lockout.count());
}

protocol::auth_outcome login_service::locked_out(const std::string& sid, const std::string& user,
                                                 const std::string& client_ip,
                                                 const auth::login_guard::decision& d) {
  logger("proxy")->warn("sid={} login failed user={:?} reason=locked_out ({} locked for {} s)",
                        sid, user, auth::to_string(d.locked), whole_seconds(d.remaining));
  failed(sid, user, {}, client_ip, "locked_out", false);
  return fail(protocol::auth_outcome::kind::bad_credentials, "locked_out");
}

awaitable<protocol::auth_outcome> login_service::authorize(std::string sid, std::string client_ip,
                                                           protocol::authorize req) {
  using k = protocol::auth_outcome::kind;
  auto log = logger("proxy");
  const config::account* acct = cfg_->find_account(req.user);
  if (req.anonymous) {
    // The listener allow-listed this client's address for its anonymous_account: no password,
    // nothing for the guard to count.
    if (!acct) co_return fail(k::bad_credentials, "unknown_account");
    log->info("sid={} anonymous sender mapped to account={:?}", sid, acct->login);
    std::string no_key;  // a named local, not a temporary inside the co_await (GCC 12)
    co_return co_await issue(std::move(sid), std::move(client_ip), std::move(no_key), *acct,
                             std::move(req), false);
  }
  const std::string key = guard_key(req.user);
  auto gate = guard_.check(key, client_ip, steady::now());
  if (gate.delay > steady::duration::zero()) {
    co_await sleep_for(gate.delay);
    // Others may have caused a lockout meanwhile: judged now, so that a cached right password
    // (answered at once) is never refused faster than a wrong one is.
    gate = guard_.check(key, client_ip, steady::now());
  }
  bool authzid_ok = req.authzid.empty() || ascii_iequals(req.authzid, req.user);
  // Unknown accounts pay for a dummy hash too, so both failures take similar time. So does a
  // locked-out login, whatever its password: never the real hash, whose cache would answer a
  // right password faster.
  // Keep the argument in a named local: GCC 12 double-destroys a temporary that is built by a
  // conditional expression inside a co_await expression.
  std::string hash;
  if (acct && gate.allowed) hash = acct->password_hash;
  // flow = "password" without a local hash: the identity platform checks the password.
  const bool idp_checks = acct && acct->flow == config::flow_kind::password &&
                          acct->password_hash.empty();
  bool password_ok = idp_checks && gate.allowed;
  if (!password_ok) password_ok = co_await checker_.verify(std::move(hash), req.password);
  if (!gate.allowed) co_return locked_out(sid, req.user, client_ip, gate);
  if (password_ok && !idp_checks) {
    // Again after the slow check: attempts that started together with the ones that caused a
    // lockout must not learn that their password was right.
    const auto again = guard_.check(key, client_ip, steady::now());
    if (!again.allowed) co_return locked_out(sid, req.user, client_ip, again);
  }
  if (!acct || !password_ok || !authzid_ok) {
    const char* why = !acct ? "unknown_account" : !password_ok ? "wrong_password" : "authzid";
    log->warn("sid={} login failed user={:?} reason={}", sid, req.user, why);
    failed(sid, req.user, key, client_ip, why);
    co_return fail(k::bad_credentials, why);
  }
  if (!idp_checks) guard_.success(key, client_ip, steady::now());
  co_return co_await issue(std::move(sid), std::move(client_ip), key, *acct, std::move(req),
                           idp_checks);
}

awaitable<protocol::auth_outcome> login_service::issue(std::string sid, std::string client_ip,
                                                       std::string key,
                                                       const config::account& acct,
                                                       protocol::authorize req, bool idp_checks) {
  using k = protocol::auth_outcome::kind;
  auto log = logger("proxy");
  auto token = co_await engine_.token_for(acct, req.user, std::move(req.password));
  if (!token.ok()) {
    const auto& e = token.error;
    log->warn("sid={} no token for user={:?} provider={} kind={} error={}", sid, req.user,
              acct.provider, auth::to_string(e.kind), e.describe());
    switch (e.kind) {
      case auth::failure_kind::transient: co_return fail(k::temporary, "token_unavailable");
      case auth::failure_kind::bad_password:
        log->warn("sid={} login failed user={:?} reason=wrong password (identity platform)", sid,
                  req.user);
        failed(sid, req.user, key, client_ip, "idp_wrong_password", idp_checks);
        co_return fail(k::bad_credentials, "idp_wrong_password");
      case auth::failure_kind::reauth: co_return fail(k::contact_admin, "needs_authorization");
      case auth::failure_kind::config: co_return fail(k::contact_admin, "configuration");
    }
    co_return fail(k::temporary, "token_unavailable");
  }
  if (idp_checks) {
    const auto again = guard_.check(key, client_ip, steady::now());
    if (!again.allowed) co_return locked_out(sid, req.user, client_ip, again);
    guard_.success(key, client_ip, steady::now());
  }
  protocol::auth_outcome ok;
  ok.result = k::ok;
  ok.reason = "ok";
  ok.mailbox = acct.mailbox.empty() ? req.user : acct.mailbox;
  ok.token = std::move(token.token->value);
  ok.allowed_senders = acct.allowed_from;
  log->info("sid={} local login ok user={:?} account={:?} mailbox={:?}", sid, req.user,
            acct.login, ok.mailbox);
  co_return ok;
}

}  // namespace xo::proxy
