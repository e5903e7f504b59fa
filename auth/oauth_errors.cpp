// Classification of identity-platform errors (protocol-notes §1.6). Microsoft says codes and texts
// may change and apps should branch on `error`: so the `error` string decides first where it is
// unambiguous, the AADSTS code refines, and anything unknown defaults safely (an unknown 4xx is a
// configuration problem an admin must look at; an unknown invalid_grant means the grant is dead).
#include "auth/token_response.hpp"

#include <algorithm>
#include <initializer_list>

namespace xo::auth {

std::string_view to_string(failure_kind k) {
  switch (k) {
    case failure_kind::transient:
      return "transient";
    case failure_kind::reauth:
      return "reauth";
    case failure_kind::bad_password:
      return "bad_password";
    case failure_kind::config:
      return "config";
  }
  return "unknown";
}

namespace {

// Sized by their initialisers (no zero padding that would match "no code").
template <std::size_t N>
bool contains(const long (&codes)[N], long code) {
  return code != 0 && std::find(codes, codes + N, code) != codes + N;
}

// Throttling and retryable backend faults, whatever `error` they come with. 50196 is the loop
// detector ("too many identical requests"): backing off is the only cure.
constexpr long transient_codes[] = {50196, 90055, 90024, 50033, 90006, 90033, 90090};

// The user's password was wrong (ROPC), or smart lockout kicked in.
constexpr long bad_password_codes[] = {50126, 50053};

// App registration, credential, tenant, scope or redirect problems: an admin must fix them.
// 700084 is the SPA refresh-token limit: the app is registered as the wrong type.
// 650056/650057: the scope is not in the app's API permissions.
constexpr long config_codes[] = {7000215, 7000222, 70002, 700027,  50012,  7000218, 700025, 700016,
                                 700011,  90002,   50194, 9001023, 90124,  90130,   70011,  28002,
                                 700022,  50011,   70004, 700084,  650056, 650057,  90014,  900144};

// The grant is unusable until a person acts: expired/revoked refresh tokens, MFA, Conditional
// Access, disabled or expired accounts, missing consent, a broken interactive exchange.
constexpr long reauth_codes[] = {50173, 70008,  700082, 50076, 50079,  50074,  50072, 53003, 530032,
                                 50131, 530035, 50055,  50144, 50057,  70043,  50089, 50132, 50133,
                                 65001, 65004,  90094,  54005, 501481, 700005, 50078};

bool is_one_of(std::string_view s, std::initializer_list<std::string_view> l) {
  return std::find(l.begin(), l.end(), s) != l.end();
}

}  // namespace

failure_kind classify(unsigned http_status, std::string_view error, long aadsts) {
  // No answer at all (status 0: DNS, TCP, TLS, timeout) or the IdP itself is in trouble.
  if (http_status == 0 || http_status == 429 || http_status >= 500) return failure_kind::transient;
  if (is_one_of(error, {"temporarily_unavailable", "server_error", "invalid_response", "network",
                        "timeout", "cancelled"}))
    return failure_kind::transient;
  if (contains(transient_codes, aadsts)) return failure_kind::transient;
  // Device-code polling (RFC 8628 §3.5): the user has not finished yet, or we poll too fast.
  // Not a failure of the grant: the poller keeps going (and slows down). Entra sends AADSTS70016
  // with both, which must not fall through to "unknown 4xx".
  if (is_one_of(error, {"authorization_pending", "slow_down"})) return failure_kind::transient;

  // `error` values whose meaning does not depend on the code.
  if (is_one_of(error, {"invalid_client", "unauthorized_client", "invalid_scope",
                        "unsupported_grant_type"}))
    return failure_kind::config;
  if (is_one_of(error,
                {"consent_required", "interaction_required", "login_required", "expired_token",
                 "authorization_declined", "bad_verification_code", "access_denied"}))
    return failure_kind::reauth;

  if (contains(bad_password_codes, aadsts)) return failure_kind::bad_password;
  if (contains(config_codes, aadsts)) return failure_kind::config;
  if (contains(reauth_codes, aadsts)) return failure_kind::reauth;

  // An unknown invalid_grant: the stored grant is dead; anything else unknown needs an admin.
  if (error == "invalid_grant") return failure_kind::reauth;
  return failure_kind::config;
}

std::string_view fix_for(long aadsts, std::string_view error) {
  switch (aadsts) {
    case 7000215:
      return "the client secret is wrong: put the secret's Value (not its ID) from the app "
             "registration's Certificates & secrets into client_secret_file";
    case 7000222:
      return "the client secret has expired: create a new one under Certificates & secrets and "
             "update client_secret_file";
    case 700016:
      return "no app with this client_id in this tenant: check client_id and tenant, or grant "
             "admin consent in the tenant the app should work in";
    case 90002:
      return "the tenant does not exist: set tenant to the directory ID (GUID) or a verified "
             "domain of the tenant";
    case 700027:
    case 700023:
    case 700024:
      return "the certificate credential was refused: upload certificate_file to the app "
             "registration's Certificates & secrets, and check the system clock";
    case 7000218:
      return "the app needs a client credential: set client_secret_file or certificate_file, or "
             "turn on Allow public client flows for device code and password";
    case 700025:
      return "the app is a public client: remove the provider's client secret or certificate, or "
             "turn off Allow public client flows";
    case 50011:
      return "the redirect URI is not registered: add the URI shown by `xoauth-proxy check` to the "
             "app registration (platform Web)";
    case 65001:
    case 65004:
      return "consent is missing: grant admin consent for the app's API permissions, then "
             "authorize the account again";
    case 650056:
    case 650057:
    case 70011:
      return "the requested scope is not among the app's API permissions: add IMAP, POP or SMTP "
             "permissions (and offline_access) and grant consent, or fix `scopes`";
    case 50076:
    case 50079:
    case 50074:
      return "the user must use multi-factor authentication: use flow authorization_code or "
             "device_code instead of password";
    case 53003:
      return "Conditional Access blocked the sign-in: ask the tenant administrator to allow it";
    case 50057:
      return "the user account is disabled in Entra";
    case 50053:
      return "the account is locked after too many wrong passwords: wait, then check the "
             "client's password";
    case 50173:
    case 70008:
    case 700082:
    case 54005:
      return "the grant is no longer valid: authorize the account again (xoauth-proxy authorize "
             "or the status page)";
    case 9001023:
      return "use a tenant ID or domain instead of common/organizations for this flow";
    default:
      break;
  }
  if (error == "invalid_client") return "check client_id, the client secret or certificate";
  if (error == "invalid_grant") return "authorize the account again";
  return "";
}

}  // namespace xo::auth
