#include "proxy/login_service.hpp"

#include "common/log.hpp"

namespace xo::proxy {

namespace {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

protocol::auth_outcome fail(protocol::auth_outcome::kind k, std::string reason) {
  protocol::auth_outcome o;
  o.result = k;
  o.reason = std::move(reason);
  return o;
}

}  // namespace

login_service::login_service(asio::any_io_executor ex, const config::config& cfg)
    : cfg_(cfg), checker_(ex, 1, cfg.proxy.credential_cache_ttl), engine_(ex, cfg) {}

login_service::~login_service() = default;

void login_service::token_rejected(const std::string& sid, const std::string& user,
                                   const protocol::token_rejected& why) {
  logger("proxy")->warn("sid={} upstream refused the token for user={:?}: {}{}{}", sid, user,
                        why.upstream_reply, why.hint.empty() ? "" : "; fix: ", why.hint);
  if (const auto* a = cfg_.find_account(user)) engine_.token_rejected(*a, user);
}

awaitable<protocol::auth_outcome> login_service::authorize(std::string sid,
                                                           protocol::authorize req) {
  using k = protocol::auth_outcome::kind;
  auto log = logger("proxy");
  const config::account* acct = cfg_.find_account(req.user);
  if (req.anonymous) {
    // The listener allow-listed this client's address for its anonymous_account: no password.
    if (!acct) co_return fail(k::bad_credentials, "unknown_account");
    log->info("sid={} anonymous sender mapped to account={:?}", sid, acct->login);
  }
  bool authzid_ok = req.authzid.empty() || iequals(req.authzid, req.user);
  // Unknown accounts pay for a dummy hash too, so both failures take similar time.
  // Keep the argument in a named local: GCC 12 double-destroys a temporary that is built by a
  // conditional expression inside a co_await expression.
  std::string hash;
  if (acct) hash = acct->password_hash;
  // flow = "password" without a local hash: the identity platform checks the password.
  const bool idp_checks = acct && acct->flow == config::flow_kind::password && hash.empty();
  bool password_ok = req.anonymous || idp_checks;
  if (!password_ok) password_ok = co_await checker_.verify(std::move(hash), req.password);
  if (!acct || !password_ok || !authzid_ok) {
    const char* why = !acct ? "unknown_account" : !password_ok ? "wrong_password" : "authzid";
    log->warn("sid={} login failed user={:?} reason={}", sid, req.user, why);
    co_return fail(k::bad_credentials, why);
  }
  auto token = co_await engine_.token_for(*acct, req.user, std::move(req.password));
  if (!token.ok()) {
    const auto& e = token.error;
    log->warn("sid={} no token for user={:?} provider={} kind={} error={}", sid, req.user,
              acct->provider, auth::to_string(e.kind), e.summary);
    switch (e.kind) {
      case auth::failure_kind::transient: co_return fail(k::temporary, "token_unavailable");
      case auth::failure_kind::bad_password:
        log->warn("sid={} login failed user={:?} reason=wrong password (identity platform)", sid,
                  req.user);
        co_return fail(k::bad_credentials, "idp_wrong_password");
      case auth::failure_kind::reauth: co_return fail(k::contact_admin, "needs_authorization");
      case auth::failure_kind::config: co_return fail(k::contact_admin, "configuration");
    }
    co_return fail(k::temporary, "token_unavailable");
  }
  protocol::auth_outcome ok;
  ok.result = k::ok;
  ok.reason = "ok";
  ok.mailbox = acct->mailbox.empty() ? req.user : acct->mailbox;
  ok.token = std::move(token.token->value);
  ok.allowed_senders = acct->allowed_from;
  log->info("sid={} local login ok user={:?} account={:?} mailbox={:?}", sid, req.user,
            acct->login, ok.mailbox);
  co_return ok;
}

}  // namespace xo::proxy
