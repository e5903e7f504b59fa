#!/usr/bin/env python3
"""Mock Microsoft identity platform (Entra ID v2.0) for the xoauth-proxy test bed.

Python 3 stdlib only (plus the `openssl` command line, once per certificate, to read an RSA public
key). A threaded HTTPS server on loopback that issues HS256 JWT access tokens, refresh tokens and
id_tokens, runs the delegated sign-in flows against a small user directory, and answers token
introspection for Dovecot's oauth2 passdb.

Endpoints
  POST /{tenant}/oauth2/v2.0/token        form-urlencoded; grants dispatched via GRANTS:
       client_credentials, authorization_code, refresh_token, password,
       urn:ietf:params:oauth:grant-type:device_code
  GET  /{tenant}/oauth2/v2.0/authorize    HTML sign-in + consent form (POST = form submit)
  POST /{tenant}/oauth2/v2.0/devicecode   (also GET with query parameters)
  GET|POST /devicelogin                   device-code verification page
  GET  /{tenant}/v2.0/.well-known/openid-configuration
  POST /introspect  (form token=...), GET /introspect?token=..., or Authorization: Bearer
  GET  /health
  Admin (loopback only, JSON):
  GET  /_admin/stats            POST /_admin/reset {"what": "stats|faults|config|tokens|directory|all"}
  POST /_admin/fail {...}       GET|DELETE /_admin/fail
  GET|POST /_admin/config {...}
  POST /_admin/revoke {...}     POST /_admin/expire {...}     GET /_admin/tokens
  GET|POST|DELETE /_admin/user  POST|GET /_admin/client       GET /_admin/directory
  GET /_admin/device            POST /_admin/device/approve   POST /_admin/device/deny

Start:  mock_idp.py --cert server.pem --key server.key [--config cfg.json] [--port 0]
                    [--port-file FILE] [--log FILE]
No token, code, secret or password is ever logged.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as _dt
import hashlib
import hmac
import html
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CCG_SCOPE = "https://outlook.office365.com/.default"
APP_ROLES = ["IMAP.AccessAsApp", "POP.AccessAsApp", "SMTP.SendAsApp"]
# Audience of Office 365 Exchange Online.
EXO_AUDIENCE = "https://outlook.office365.com"
MULTI_TENANT_ALIASES = ("common", "organizations", "consumers")

# Delegated scopes of the Exchange Online resource (canonical spelling, token order).
EXO_DELEGATED = ["IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send", "EWS.AccessAsUser.All"]
DEFAULT_CONSENT = ["IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send"]
# Resource identifiers accepted for Exchange Online -> the "aud" of the tokens issued for them.
EXO_RESOURCES = {
    "https://outlook.office.com": "https://outlook.office.com",
    "https://outlook.office365.com": "https://outlook.office365.com",
    "00000002-0000-0ff1-ce00-000000000000": "https://outlook.office365.com",
}
OIDC_SCOPES = ("openid", "profile", "email", "offline_access")
GRAPH_RESOURCE = "https://graph.microsoft.com"   # where Entra sends bare scope names

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
PKCE_VERIFIER_RE = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ23456789"

# Which role / delegated scope grants which Dovecot service (X-Dovecot-Auth-Service).
SERVICE_PERMISSIONS = {
    "imap": ("IMAP.AccessAsApp", "IMAP.AccessAsUser.All"),
    "pop3": ("POP.AccessAsApp", "POP.AccessAsUser.All"),
    "smtp": ("SMTP.SendAsApp", "SMTP.Send"),
}

# Default loopback/native redirect URIs of a client that has no "redirect_uris" in the config.
DEFAULT_REDIRECT_URIS = [
    "http://localhost", "http://127.0.0.1",
    "http://localhost/oauth/callback", "http://127.0.0.1/oauth/callback",
    "https://login.microsoftonline.com/common/oauth2/nativeclient",
]

# Users seeded into every tenant whose config has no "users" (or an empty list), on the tenant's first
# domain: the test bed's mailboxes and sinks plus three users for error paths. Passwords are fixed and
# also listed by GET /_admin/directory.
SEED_USERS = [
    {"name": "alice", "password": "alice.Passw0rd", "display_name": "Alice Example"},
    {"name": "scanner", "password": "scanner.Passw0rd", "display_name": "Scanner Device"},
    # A shared mailbox: a user object with sign-in blocked, as in Exchange Online.
    {"name": "shared", "password": "shared.Passw0rd", "display_name": "Shared Mailbox", "disabled": True},
    {"name": "receiver", "password": "receiver.Passw0rd", "display_name": "Receiver"},
    {"name": "receiver2", "password": "receiver2.Passw0rd", "display_name": "Receiver Two"},
    {"name": "bob", "password": "bob.Passw0rd", "display_name": "Bob MFA", "mfa_required": True},
    {"name": "carol", "password": "carol.Passw0rd", "display_name": "Carol No-Consent", "consented_scopes": []},
]

DEFAULT_CONFIG = {
    "tenants": [
        {
            "name": "contoso.test",
            "id": "8f1c2d3e-4b5a-4c6d-9e7f-0a1b2c3d4e5f",
            "domains": ["contoso.test"],
            "clients": [
                {
                    "client_id": "6731de76-14a6-49ae-97bc-6eba6914391e",
                    "client_secret": "testbed~secret",
                    "name": "xoauth-proxy test app",
                    "roles": list(APP_ROLES),
                }
            ],
            "users": [],
        }
    ],
    "settings": {},
}

DEFAULT_SETTINGS = {
    "token_lifetime": 3599,        # expires_in of access tokens (seconds)
    "ext_token_lifetime": 3599,    # ext_expires_in
    "latency_ms": 0,               # added to every token request (after concurrency accounting)
    "token_size": 1500,            # pad JWTs to about this many characters (0 = no padding)
    "enforce_service_scope": True, # introspection checks the X-Dovecot-Auth-Service header
    "introspection_latency_ms": 0,
    # delegated flows
    "refresh_grace_seconds": 0,    # a redeemed refresh token still works this long (0 = strictly single use)
    "refresh_token_lifetime": 7776000,  # inactivity window (90 days); beyond it AADSTS700082
    "code_lifetime": 600,          # authorization codes (seconds)
    "auto_approve": "",            # UPN: GET authorize redirects at once with a code; "login_hint" = that user
    "require_pkce": False,         # authorize without code_challenge -> invalid_request
    "device_interval": 5,          # "interval" of /devicecode; polling faster gets slow_down
    "device_expires_in": 900,      # "expires_in" of /devicecode
    "device_slow_down_increment": 5,  # seconds added to a device code's interval after a slow_down
    "slow_down": 0,                # the next N device-code polls get slow_down (true = 1)
    "lockout_threshold": 0,        # wrong passwords in a row before AADSTS50053 (0 = never)
    "lockout_seconds": 60,
    "assertion_skew_seconds": 300, # clock skew allowed on client assertion nbf/exp
}

AADSTS_TEXT = {
    70003: "The app requested an unsupported grant type '{grant}'.",
    70011: ("The provided request must include a 'scope' input parameter. The provided value for the "
            "input parameter 'scope' is not valid. The scope {scope} is not valid."),
    90002: ("Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
            "signing into the correct cloud. Check with your subscription administrator, this may happen "
            "if there are no active subscriptions for the tenant."),
    700016: ("Application with identifier '{client_id}' was not found in the directory '{tenant}'. This "
             "can happen if the application has not been installed by the administrator of the tenant or "
             "consented to by any user in the tenant. You may have sent your authentication request to the "
             "wrong tenant."),
    7000215: ("Invalid client secret provided. Ensure the secret being sent in the request is the client "
              "secret value, not the client secret ID, for a secret added to app '{client_id}'."),
    7000218: ("The request body must contain the following parameter: 'client_assertion' or "
              "'client_secret'."),
    900144: "The request body must contain the following parameter: '{param}'.",
    900561: "The endpoint only accepts POST, OPTIONS requests. Received a {method} request.",
    9001023: ("The grant type is not supported over the /common or /consumers endpoints. Please use the "
              "/organizations or tenant-specific endpoint."),
    90033: "A transient error has occurred. Please try again.",
    50196: ("The server terminated an operation because it encountered a client request loop. Please "
            "contact your app vendor."),
    # delegated flows
    50011: ("The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs "
            "configured for the application '{client_id}'. Make sure the redirect URI sent in the request "
            "matches one added to your application in the Azure portal. Navigate to "
            "https://aka.ms/redirectUriMismatchError to learn more about how to fix this."),
    50027: "JWT token is invalid or malformed. {detail}",
    50034: ("The user account {upn} does not exist in the {tenant} directory. To sign into this "
            "application, the account must be added to the directory."),
    50053: ("Your account is locked because you've tried to sign in too many times with an incorrect user "
            "ID or password."),
    50057: "The user account is disabled.",
    50058: "A silent sign-in request was sent but no user is signed in.",
    50076: ("Due to a configuration change made by your administrator, or because you moved to a new "
            "location, you must use multi-factor authentication to access '{resource}'."),
    50089: "Flow token expired - Authentication Failed. Have the user try signing-in again.",
    50126: "Error validating credentials due to invalid username or password.",
    50173: ("The provided grant has expired due to it being revoked, a fresh auth token is needed. The user "
            "might have changed or reset their password. The grant was issued on '{issued}' and the "
            "TokensValidFrom date (before which tokens are not valid) for this user is '{valid_from}'."),
    54005: ("OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an "
            "existing refresh token."),
    65001: ("The user or administrator has not consented to use the application with ID '{client_id}' named "
            "'{name}'. Send an interactive authorization request for this user and resource."),
    65004: "User declined to consent to access the app.",
    70000: "Provided grant is invalid or malformed. {detail}",
    70008: ("The provided authorization code or refresh token has expired due to inactivity. Send a new "
            "interactive authorization request for this user and resource."),
    70016: "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
    70019: "Verification code expired.",
    700005: "Provided Authorization Code is intended to use against other tenant, thus rejected.",
    700021: ("Client assertion application identifier doesn't match 'client_id' parameter. Review the "
             "documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials ."),
    700022: ("The provided value for the input parameter scope is not valid because it contains more than "
             "one resource. Scope {scope} is not valid."),
    700023: ("Client assertion audience claim does not match Realm issuer. Review the documentation at "
             "https://learn.microsoft.com/entra/identity-platform/certificate-credentials ."),
    700024: ("Client assertion is not within its valid time range. Current time: {now}, assertion valid from "
             "{nbf}, expiry time of assertion {exp}."),
    700025: "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
    700027: "Client assertion contains an invalid signature. [Reason - {reason}]",
    700082: ("The refresh token has expired due to inactivity. The token was issued on {issued} and was "
             "inactive for {inactive}."),
    500112: ("The reply address '{got}' does not match the reply address '{want}' provided when requesting "
             "Authorization code."),
    501481: "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
    501491: "Invalid size of Code_Challenge parameter or unsupported code_challenge_method '{method}'.",
    70005: "response_type '{response_type}' is not enabled for the application.",
    9002313: "Invalid request. Request is malformed or invalid. {detail}",
    9002325: "Proof Key for Code Exchange is required for cross-origin authorization code redemption.",
    900971: "No reply address provided.",
}


def now() -> int:
    return int(time.time())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def ms_timestamp(t: float | None = None) -> str:
    d = _dt.datetime.fromtimestamp(t if t is not None else time.time(), _dt.timezone.utc)
    return d.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def digest(text: str) -> str:
    """Server-side key for a bearer secret (code, refresh token, device code): never store it as is."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


class OAuthError(Exception):
    """A Microsoft-shaped OAuth error response."""

    def __init__(self, status: int, error: str, code: int | None, text: str, suberror: str | None = None,
                 headers: dict | None = None, extra: dict | None = None):
        super().__init__(f"{error} {code}")
        self.status = status
        self.error = error
        self.code = code
        self.text = text
        self.suberror = suberror
        self.headers = headers or {}
        self.extra = extra or {}   # further body fields (e.g. "claims")


def aad_error(status: int, error: str, code: int, **fmt) -> OAuthError:
    fmt.setdefault("detail", "")
    return OAuthError(status, error, code, AADSTS_TEXT.get(code, "Error.").format(**fmt).rstrip())


def grant_error(code: int, **fmt) -> OAuthError:
    return aad_error(400, "invalid_grant", code, **fmt)


class State:
    """All mutable mock state, guarded by one lock."""

    def __init__(self, config: dict):
        self.lock = threading.Lock()
        self.key = secrets.token_bytes(32)
        self.base_config = config               # as loaded (plus seeded users); reset target
        self.settings = dict(DEFAULT_SETTINGS)
        self.settings.update(config.get("settings", {}))
        self.tokens: dict[str, dict] = {}       # uti -> access token record
        self.refresh: dict[str, dict] = {}      # digest(refresh token) -> record
        self.codes: dict[str, dict] = {}        # digest(code) -> record
        self.devices: dict[str, dict] = {}      # digest(device_code) -> record
        self.user_codes: dict[str, str] = {}    # user_code -> digest(device_code)
        self.auth_ctx: dict[str, dict] = {}     # sign-in form transaction id -> authorize parameters
        self.faults: list[dict] = []
        self.reset_directory()
        self.reset_stats()

    def reset_directory(self):
        """(Re)builds the working directory (tenants, clients, users) from the loaded config."""
        self.config = copy.deepcopy(self.base_config)
        self.users: dict[str, dict] = {}        # lower-case UPN -> user (with "tenant_id")
        for t in self.config["tenants"]:
            for u in t.get("users", []):
                self.users[u["upn"].lower()] = new_user(u, t)
        self.cert_cache: dict = {}

    def reset_stats(self):
        self.stats = {
            "since": time.time(),
            "token_requests": 0,
            "token_successes": 0,
            "grants": {},                       # grant -> {"requests", "successes"}
            "errors": {},                       # "grant:error" -> n
            "faults_injected": 0,
            "current_token_requests": 0,
            "peak_concurrent_token_requests": 0,
            "tokens_issued": 0,
            "refresh_tokens_issued": 0,
            "id_tokens_issued": 0,
            "refresh_reuse_within_grace": 0,
            "refresh_reuse_rejected": 0,
            "codes_issued": 0,
            "codes_redeemed": 0,
            "devicecode_requests": 0,
            "device_codes_issued": 0,
            "device_polls": 0,
            "authorize": {"requests": 0, "form_shown": 0, "form_posts": 0, "login_failures": 0,
                          "auto_approved": 0, "codes_issued": 0, "denied": 0, "errors": 0},
            "introspection": {"requests": 0, "active": 0, "inactive": 0, "reasons": {}, "by_service": {},
                              "faults_injected": 0},
        }

    def count(self, key: str, n: int = 1):
        """Increments a top-level counter (call with the lock held)."""
        self.stats[key] = self.stats.get(key, 0) + n

    # --- directory lookups ---------------------------------------------------------------------
    def find_tenant(self, key: str) -> dict | None:
        k = key.lower()
        for t in self.config["tenants"]:
            if k == t["name"].lower() or k == t["id"].lower() or k in [d.lower() for d in t.get("domains", [])]:
                return t
        return None

    def find_client(self, client_id: str) -> tuple[dict | None, dict | None]:
        for t in self.config["tenants"]:
            for c in t.get("clients", []):
                if c["client_id"].lower() == client_id.lower():
                    return t, c
        return None, None

    def find_user(self, upn: str | None) -> dict | None:
        return self.users.get((upn or "").strip().lower())


STATE: State  # set in main()
LOG_LOCK = threading.Lock()
LOG_FILE = sys.stderr


def log(msg: str):
    with LOG_LOCK:
        print(f"{ms_timestamp()} mock_idp: {msg}", file=LOG_FILE, flush=True)


# --- users ------------------------------------------------------------------------------------------
USER_FIELDS = ("upn", "password", "disabled", "mfa_required", "consented_scopes", "display_name", "oid")


def short_scope(s: str) -> str:
    """'https://outlook.office.com/IMAP.AccessAsUser.All' -> 'IMAP.AccessAsUser.All' (canonical case)."""
    name = s.rsplit("/", 1)[-1] if "/" in s else s
    for canon in EXO_DELEGATED:
        if canon.lower() == name.lower():
            return canon
    return name


def new_user(spec: dict, tenant: dict) -> dict:
    upn = spec["upn"].strip()
    consent = spec.get("consented_scopes")
    return {
        "upn": upn,
        "password": str(spec.get("password", "")),
        "disabled": bool(spec.get("disabled", False)),
        "mfa_required": bool(spec.get("mfa_required", False)),
        "consented_scopes": [short_scope(s) for s in (DEFAULT_CONSENT if consent is None else consent)],
        "display_name": spec.get("display_name") or upn.split("@")[0],
        "oid": spec.get("oid") or str(uuid.uuid5(uuid.NAMESPACE_URL, "user:" + upn.lower())),
        "tenant_id": tenant["id"],
        "tokens_valid_from": None,   # set by /_admin/revoke {"user"}: older grants and tokens are dead
        "failed_logins": 0,
        "locked_until": 0.0,
    }


def public_user(u: dict) -> dict:
    out = {k: u[k] for k in USER_FIELDS}
    out["tenant_id"] = u["tenant_id"]
    out["tokens_valid_from"] = u["tokens_valid_from"]
    out["locked"] = u["locked_until"] > time.time()
    return out


def seed_users(tenant: dict) -> list[dict]:
    domain = (tenant.get("domains") or [tenant["name"]])[0]
    out = []
    for s in SEED_USERS:
        spec = {k: v for k, v in s.items() if k != "name"}
        spec["upn"] = f"{s['name']}@{domain}"
        out.append(spec)
    return out


def check_password(user: dict, password: str | None) -> OAuthError | None:
    """Password check with the optional smart-lockout emulation. Call with the lock held."""
    s = STATE.settings
    t = time.time()
    if user["locked_until"] > t:
        return grant_error(50053)
    if password is None or not hmac.compare_digest(password.encode(), user["password"].encode()):
        user["failed_logins"] += 1
        threshold = int(s.get("lockout_threshold") or 0)
        if threshold > 0 and user["failed_logins"] >= threshold:
            user["locked_until"] = t + float(s.get("lockout_seconds") or 60)
            user["failed_logins"] = 0
        return grant_error(50126)
    user["failed_logins"] = 0
    return None


def user_in_tenant(upn: str, tenant: dict) -> dict:
    """The user of that tenant or AADSTS50034. Call with the lock held."""
    u = STATE.find_user(upn)
    if u is None or u["tenant_id"] != tenant["id"]:
        raise grant_error(50034, upn=upn, tenant=tenant["name"])
    return u


def grant_still_valid(user: dict, issued: float) -> OAuthError | None:
    """Revoked-since and disabled checks for a grant (code, refresh token) issued at `issued`."""
    vf = user["tokens_valid_from"]
    if vf is not None and issued < vf:
        return grant_error(50173, issued=ms_timestamp(issued), valid_from=ms_timestamp(vf))
    if user["disabled"]:
        return grant_error(50057)
    return None


# --- scopes ------------------------------------------------------------------------------------------
def parse_scopes(scope: str | None, *, required: bool = True) -> dict | None:
    """Parses a delegated scope parameter. Returns {"aud", "prefix", "names", "default", "oidc"}:
    names = requested Exchange scopes (short form), oidc = openid/profile/email/offline_access.
    Raises invalid_scope 70011 (unknown scope / not Exchange) or 700022 (two resources)."""
    if scope is None or not scope.strip():
        if required:
            raise aad_error(400, "invalid_request", 900144, param="scope")
        return None
    resources: dict[str, str] = {}   # resource id -> prefix as written
    names, oidc, default = [], [], False
    for item in scope.split():
        if item.lower() in OIDC_SCOPES:
            if item.lower() not in oidc:
                oidc.append(item.lower())
            continue
        if "/" in item:
            res, _, name = item.rpartition("/")
            res = res.rstrip("/")
        else:
            res, name = GRAPH_RESOURCE, item
        key = res.lower()
        # outlook.office.com, outlook.office365.com and the app id are one resource (Exchange Online)
        resources.setdefault("exchange" if key in EXO_RESOURCES else key, res)
        if key not in EXO_RESOURCES:
            continue
        if name == ".default":
            default = True
        elif short_scope(name) in EXO_DELEGATED:
            if short_scope(name) not in names:
                names.append(short_scope(name))
        else:
            raise aad_error(400, "invalid_scope", 70011, scope=item)
    if len(resources) > 1:
        raise aad_error(400, "invalid_scope", 700022, scope=scope)
    if not resources:
        raise aad_error(400, "invalid_scope", 70011,
                        scope=f"{scope} (the mock issues only Exchange Online tokens: add e.g. "
                              f"https://outlook.office.com/IMAP.AccessAsUser.All)")
    key, written = next(iter(resources.items()))
    if key != "exchange":
        raise aad_error(400, "invalid_scope", 70011,
                        scope=f"{scope} (resource {written} is not known to the mock; only Exchange Online)")
    if default and names:
        raise aad_error(400, "invalid_scope", 70011, scope=f"{scope} (.default cannot be combined with other "
                                                           f"scopes of the resource)")
    return {"aud": EXO_RESOURCES[written.lower()], "prefix": written + "/", "names": names, "default": default,
            "oidc": oidc}


def missing_consent(user: dict, client: dict, parsed: dict) -> list[str]:
    """Requested Exchange scopes the user has not consented to (for .default: the app's permissions)."""
    want = list(client.get("delegated_permissions") or DEFAULT_CONSENT) if parsed["default"] else parsed["names"]
    return [s for s in want if s not in user["consented_scopes"]]


def grant_consent(user: dict, client: dict, parsed: dict):
    for s in missing_consent(user, client, parsed):
        user["consented_scopes"].append(s)
    user["consented_scopes"].sort(key=lambda s: EXO_DELEGATED.index(s) if s in EXO_DELEGATED else 99)


def consent_error(client: dict) -> OAuthError:
    e = grant_error(65001, client_id=client["client_id"], name=client.get("name", ""))
    e.suberror = "consent_required"
    return e


# --- JWT ------------------------------------------------------------------------------------------
def jwt_encode(claims: dict) -> str:
    header = b64url(json.dumps({"typ": "JWT", "alg": "HS256", "kid": "mock"}, separators=(",", ":")).encode())
    body = b64url(json.dumps(claims, separators=(",", ":")).encode())
    sig = hmac.new(STATE.key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(sig)}"


def jwt_decode(token: str) -> dict | None:
    """Returns the claims if the signature is ours, else None."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        sig = b64url_decode(parts[2])
        want = hmac.new(STATE.key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(sig, want):
            return None
        return json.loads(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError):
        return None


def mint_access_token(tenant: dict, client: dict, *, roles=None, user=None, scp=None, aud=EXO_AUDIENCE,
                      amr=None) -> tuple[str, dict]:
    """Creates and records an access token. Returns (jwt, record)."""
    s = STATE.settings
    tf = time.time()
    t = int(tf)
    uti = b64url(secrets.token_bytes(16))
    claims = {
        "aud": aud,
        "iss": f"https://sts.windows.net/{tenant['id']}/",
        "iat": t, "nbf": t, "exp": t + int(s["token_lifetime"]),
        "appid": client["client_id"], "azp": client["client_id"],
        "tid": tenant["id"], "ver": "1.0", "uti": uti,
    }
    if user is None:
        claims["roles"] = list(roles or [])
        claims["idtyp"] = "app"
        claims["oid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, "sp:" + client["client_id"]))
        claims["sub"] = claims["oid"]
    else:  # delegated
        claims.update({"upn": user["upn"], "unique_name": user["upn"], "preferred_username": user["upn"],
                       "name": user.get("display_name", ""), "oid": user.get("oid", ""),
                       "sub": user.get("oid", ""), "scp": " ".join(scp or []), "amr": list(amr or ["pwd"]),
                       "idtyp": "user"})
    token = jwt_encode(claims)
    target = int(s.get("token_size") or 0)
    if target and len(token) < target - 16:
        claims["xms_pad"] = "p" * max(0, (target - len(token)) * 3 // 4 - 12)
        token = jwt_encode(claims)
    record = {
        "uti": uti, "kind": "app" if user is None else "user", "client_id": client["client_id"],
        "tenant_id": tenant["id"], "tenant": tenant["name"], "iat": t, "iat_f": tf, "exp": claims["exp"],
        "aud": aud, "roles": claims.get("roles", []), "scp": claims.get("scp", ""),
        "user": user["upn"] if user else None, "revoked": False, "size": len(token),
    }
    with STATE.lock:
        STATE.tokens[uti] = record
        STATE.stats["tokens_issued"] += 1
        # Keep memory bounded in long runs: drop the oldest long-expired records.
        if len(STATE.tokens) > 20000:
            for k in [k for k, v in STATE.tokens.items() if v["exp"] < t - 3600][:5000]:
                del STATE.tokens[k]
    return token, record


def mint_id_token(base_url: str, tenant: dict, client: dict, user: dict, oidc: list[str],
                  nonce: str | None) -> str:
    t = now()
    claims = {"aud": client["client_id"], "iss": f"{base_url}/{tenant['id']}/v2.0", "iat": t, "nbf": t,
              "exp": t + int(STATE.settings["token_lifetime"]), "sub": user["oid"], "oid": user["oid"],
              "tid": tenant["id"], "ver": "2.0", "preferred_username": user["upn"]}
    if "profile" in oidc:
        claims["name"] = user.get("display_name", "")
    if "email" in oidc:
        claims["email"] = user["upn"]
    if nonce:
        claims["nonce"] = nonce
    with STATE.lock:
        STATE.count("id_tokens_issued")
    return jwt_encode(claims)


def issue_refresh_token(tenant: dict, client: dict, user: dict, *, aud: str, prefix: str, oidc: list[str],
                        confidential: bool, amr: list[str], family: str | None = None,
                        parent: str | None = None) -> str:
    token = "1.AQ" + b64url(secrets.token_bytes(96))
    tf = time.time()
    rec = {
        "id": digest(token)[:16], "tenant_id": tenant["id"], "client_id": client["client_id"],
        "user": user["upn"], "aud": aud, "prefix": prefix, "oidc": list(oidc), "confidential": confidential,
        "amr": list(amr), "iat": tf, "last_used": tf, "redeemed_at": None, "revoked": False, "expired": False,
        "family": family or digest(token)[:16], "parent": parent,
    }
    with STATE.lock:
        STATE.refresh[digest(token)] = rec
        STATE.count("refresh_tokens_issued")
        if len(STATE.refresh) > 50000:  # bound memory: drop the oldest redeemed ones
            old = sorted((v["iat"], k) for k, v in STATE.refresh.items() if v["redeemed_at"] is not None)
            for _, k in old[:10000]:
                del STATE.refresh[k]
    return token


def delegated_response(req: "Request", tenant: dict, client: dict, user: dict, *, aud: str, prefix: str,
                       oidc: list[str], confidential: bool, amr: list[str], family: str | None = None,
                       parent: str | None = None, nonce: str | None = None) -> dict:
    """Token response for a user: the access token carries every consented Exchange scope."""
    with STATE.lock:
        scp = list(user["consented_scopes"])
    token, _ = mint_access_token(tenant, client, user=user, scp=scp, aud=aud, amr=amr)
    s = STATE.settings
    body = {"token_type": "Bearer", "scope": " ".join([prefix + x for x in scp] + oidc),
            "expires_in": int(s["token_lifetime"]), "ext_expires_in": int(s["ext_token_lifetime"]),
            "access_token": token}
    if "offline_access" in oidc:
        body["refresh_token"] = issue_refresh_token(tenant, client, user, aud=aud, prefix=prefix, oidc=oidc,
                                                    confidential=confidential, amr=amr, family=family,
                                                    parent=parent)
    if "openid" in oidc:
        body["id_token"] = mint_id_token(req.base_url(), tenant, client, user, oidc, nonce)
    return body


# --- client authentication -----------------------------------------------------------------------------
def rsa_verify_pkcs1(n: int, e: int, msg: bytes, sig: bytes) -> bool:
    """RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 §8.2.2)."""
    k = (n.bit_length() + 7) // 8
    if len(sig) != k:
        return False
    s = int.from_bytes(sig, "big")
    if s >= n:
        return False
    em = pow(s, e, n).to_bytes(k, "big")
    t = bytes.fromhex("3031300d060960864801650304020105000420") + hashlib.sha256(msg).digest()
    if k < len(t) + 11:
        return False
    return hmac.compare_digest(em, b"\x00\x01" + b"\xff" * (k - len(t) - 3) + b"\x00" + t)


def _mgf1(seed: bytes, length: int) -> bytes:
    out = b""
    for i in range((length + 31) // 32):
        out += hashlib.sha256(seed + i.to_bytes(4, "big")).digest()
    return out[:length]


def rsa_verify_pss(n: int, e: int, msg: bytes, sig: bytes) -> bool:
    """RSASSA-PSS with SHA-256 and MGF1-SHA-256, any salt length (RFC 8017 §8.1.2, §9.1.2)."""
    k = (n.bit_length() + 7) // 8
    if len(sig) != k:
        return False
    s = int.from_bytes(sig, "big")
    if s >= n:
        return False
    embits = n.bit_length() - 1
    emlen = (embits + 7) // 8
    m = pow(s, e, n)
    if m.bit_length() > embits:
        return False
    em = m.to_bytes(emlen, "big")
    hlen = 32
    if emlen < hlen + 2 or em[-1] != 0xBC:
        return False
    masked, h = em[:emlen - hlen - 1], em[emlen - hlen - 1:-1]
    zero_bits = 8 * emlen - embits
    if masked[0] & (0xFF << (8 - zero_bits)) & 0xFF:
        return False
    db = bytearray(a ^ b for a, b in zip(masked, _mgf1(h, len(masked))))
    db[0] &= 0xFF >> zero_bits
    i = 0
    while i < len(db) and db[i] == 0:
        i += 1
    if i >= len(db) or db[i] != 1:
        return False
    salt = bytes(db[i + 1:])
    return hmac.compare_digest(h, hashlib.sha256(b"\x00" * 8 + hashlib.sha256(msg).digest() + salt).digest())


def load_certificates(spec) -> list[dict]:
    """Client certificates from config: a PEM path, PEM text, or a list of those. Each becomes
    {x5t, x5t_s256, n, e, subject}; the RSA key is read once with `openssl x509` (cached by content)."""
    items = spec if isinstance(spec, list) else [spec] if spec else []
    out = []
    for item in items:
        text = item if "-----BEGIN" in item else open(item, encoding="ascii").read()
        for block in re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", text, re.S):
            cached = STATE.cert_cache.get(block)
            if cached is None:
                der = ssl.PEM_cert_to_DER_cert(block)
                r = subprocess.run(["openssl", "x509", "-noout", "-modulus", "-text"], input=block,
                                   capture_output=True, text=True, timeout=20)
                m = re.search(r"^Modulus=([0-9A-Fa-f]+)$", r.stdout, re.M)
                ex = re.search(r"Exponent: (\d+)", r.stdout)
                if r.returncode != 0 or not m or not ex:
                    raise ValueError(f"not an RSA certificate (openssl: {r.stderr.strip()[:200]})")
                subj = re.search(r"Subject: (.*)", r.stdout)
                cached = {"x5t": b64url(hashlib.sha1(der).digest()),
                          "x5t_s256": b64url(hashlib.sha256(der).digest()),
                          "n": int(m.group(1), 16), "e": int(ex.group(1)),
                          "subject": subj.group(1).strip() if subj else ""}
                STATE.cert_cache[block] = cached
            out.append(cached)
    if items and not out:
        raise ValueError("no PEM certificate found")
    return out


def client_certs(client: dict) -> list[dict]:
    spec = client.get("certificates") or client.get("certificate")
    return load_certificates(spec) if spec else []


def verify_client_assertion(req: "Request", tenant: dict, client: dict, form: dict):
    """RFC 7523 client authentication as Entra does it (certificate credentials)."""
    atype = form.get("client_assertion_type")
    assertion = form.get("client_assertion")
    if atype is None:
        raise aad_error(400, "invalid_request", 900144, param="client_assertion_type")
    if atype != JWT_BEARER:
        raise aad_error(400, "invalid_request", 50027, detail=f"Unsupported client_assertion_type '{atype}'.")
    if not assertion:
        raise aad_error(400, "invalid_request", 900144, param="client_assertion")
    parts = assertion.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("not three parts")
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        sig = b64url_decode(parts[2])
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError("not JSON objects")
    except (ValueError, UnicodeDecodeError) as exc:
        raise aad_error(401, "invalid_client", 50027, detail=f"({exc})")
    alg = header.get("alg")
    if alg not in ("RS256", "PS256"):
        raise aad_error(401, "invalid_client", 50027, detail=f"Unsupported alg '{alg}' (RS256 or PS256).")
    try:
        certs = client_certs(client)
    except (OSError, ValueError) as exc:
        log(f"client {client['client_id']}: certificate unusable: {exc}")
        certs = []
    thumb = header.get("x5t#S256") or header.get("x5t") or header.get("kid") or ""
    cert = next((c for c in certs if thumb in (c["x5t_s256"], c["x5t"])), None) if thumb else None
    if cert is None:
        raise aad_error(401, "invalid_client", 700027,
                        reason=f"The key was not found., Thumbprint of key used by client: '{thumb}'")
    signed = f"{parts[0]}.{parts[1]}".encode()
    verify = rsa_verify_pkcs1 if alg == "RS256" else rsa_verify_pss
    if not verify(cert["n"], cert["e"], signed, sig):
        raise aad_error(401, "invalid_client", 700027,
                        reason="The provided signature value did not match the expected signature value.")
    cid = client["client_id"].lower()
    if str(claims.get("iss", "")).lower() != cid or str(claims.get("sub", "")).lower() != cid:
        raise aad_error(401, "invalid_client", 700021)
    auds = claims.get("aud")
    auds = auds if isinstance(auds, list) else [auds]
    base = req.base_url()
    allowed = {f"{base}/{k}/oauth2/v2.0/token".lower()
               for k in [tenant["name"], tenant["id"], req.tenant_key, *tenant.get("domains", [])]}
    if not any(isinstance(a, str) and a.lower() in allowed for a in auds):
        raise aad_error(401, "invalid_client", 700023)
    skew = float(STATE.settings.get("assertion_skew_seconds") or 0)
    t = time.time()
    exp, nbf = claims.get("exp"), claims.get("nbf", claims.get("iat"))
    if not isinstance(exp, (int, float)) or exp + skew < t or (isinstance(nbf, (int, float)) and nbf - skew > t):
        def fmt(x):
            return ms_timestamp(x) if isinstance(x, (int, float)) else "(none)"
        raise aad_error(401, "invalid_client", 700024, now=ms_timestamp(t), nbf=fmt(nbf), exp=fmt(exp))


def authenticate_client(req: "Request", tenant: dict | None, form: dict, *,
                        allow_public: bool = False) -> tuple[dict, dict, str | None]:
    """Client authentication: client_secret (body or HTTP Basic), client_assertion (certificate), or
    none for a public client in a delegated grant. tenant None (common/organizations) = any tenant.
    Returns (tenant of the client, client, "secret" | "assertion" | None)."""
    client_id = form.get("client_id")
    secret = form.get("client_secret")
    auth = req.headers.get("Authorization", "")
    if auth.lower().startswith("basic "):
        try:
            cid, _, sec = base64.b64decode(auth[6:].strip()).decode().partition(":")
            client_id = client_id or urllib.parse.unquote_plus(cid)
            secret = secret if secret is not None else urllib.parse.unquote_plus(sec)
        except (ValueError, UnicodeDecodeError):
            pass
    if not client_id:
        raise aad_error(400, "invalid_request", 900144, param="client_id")
    owner, client = STATE.find_client(client_id)
    if client is None or (tenant is not None and owner is not tenant):
        raise aad_error(400, "unauthorized_client", 700016, client_id=client_id,
                        tenant=tenant["name"] if tenant else req.tenant_key)
    has_cred = bool(client.get("client_secret")) or bool(client.get("certificate") or client.get("certificates"))
    if form.get("client_assertion") or form.get("client_assertion_type"):
        if not has_cred:
            raise aad_error(401, "invalid_client", 700025)
        verify_client_assertion(req, owner, client, form)
        return owner, client, "assertion"
    if secret:
        if not has_cred:
            raise aad_error(401, "invalid_client", 700025)
        if not hmac.compare_digest(secret.encode(), client.get("client_secret", "").encode()):
            raise aad_error(401, "invalid_client", 7000215, client_id=client_id)
        return owner, client, "secret"
    if allow_public and client.get("public_client", True):
        return owner, client, None
    raise aad_error(401, "invalid_client", 7000218)


# --- grants -----------------------------------------------------------------------------------------
def grant_client_credentials(req: "Request", tenant: dict | None, alias: str | None, form: dict) -> dict:
    if tenant is None:  # common / organizations / consumers
        raise aad_error(400, "invalid_request", 9001023)
    _, client, _ = authenticate_client(req, tenant, form)
    scope = form.get("scope")
    if scope is None:
        raise aad_error(400, "invalid_request", 900144, param="scope")
    if scope.strip() != CCG_SCOPE:
        raise aad_error(400, "invalid_scope", 70011, scope=scope)
    token, rec = mint_access_token(tenant, client, roles=client.get("roles", APP_ROLES))
    s = STATE.settings
    return {"token_type": "Bearer", "expires_in": int(s["token_lifetime"]),
            "ext_expires_in": int(s["ext_token_lifetime"]), "access_token": token}


def grant_password(req: "Request", tenant: dict | None, alias: str | None, form: dict) -> dict:
    """ROPC: fails for MFA users (50076), never on /common or /consumers."""
    if alias in ("common", "consumers"):
        raise aad_error(400, "invalid_request", 9001023)
    owner, client, method = authenticate_client(req, tenant, form, allow_public=True)
    for p in ("username", "password"):
        if not form.get(p):
            raise aad_error(400, "invalid_request", 900144, param=p)
    parsed = parse_scopes(form.get("scope"))
    upn = form["username"].strip()
    with STATE.lock:
        user = user_in_tenant(upn, owner)
        err = check_password(user, form["password"])
        if err:
            raise err
        if user["disabled"]:
            raise grant_error(50057)
        if user["mfa_required"]:
            e = grant_error(50076, resource="00000002-0000-0ff1-ce00-000000000000")
            e.suberror = "basic_action"
            e.extra["claims"] = json.dumps({"access_token": {"capolids": {"essential": True, "values": [
                str(uuid.uuid5(uuid.NAMESPACE_URL, "ca:mfa"))]}}}, separators=(",", ":"))
            raise e
        if missing_consent(user, client, parsed):
            raise consent_error(client)
    return delegated_response(req, owner, client, user, aud=parsed["aud"], prefix=parsed["prefix"],
                              oidc=parsed["oidc"], confidential=method is not None, amr=["pwd"])


def grant_authorization_code(req: "Request", tenant: dict | None, alias: str | None, form: dict) -> dict:
    owner, client, method = authenticate_client(req, tenant, form, allow_public=True)
    code = form.get("code")
    if not code:
        raise aad_error(400, "invalid_request", 900144, param="code")
    if form.get("scope"):
        parse_scopes(form["scope"])   # only validated: the code fixes the scopes
    with STATE.lock:
        rec = STATE.codes.get(digest(code))
        if rec is None:
            raise grant_error(9002313, detail="The authorization code is not known.")
        if rec["client_id"].lower() != client["client_id"].lower():
            raise grant_error(70000, detail="The code was issued to a different client.")
        if rec["tenant_id"] != owner["id"]:
            raise grant_error(700005)
        if rec["redeemed"]:
            raise grant_error(54005)
        if rec["exp"] <= time.time():
            raise grant_error(70008)
        redirect_uri = form.get("redirect_uri")
        if not redirect_uri:
            raise aad_error(400, "invalid_request", 900144, param="redirect_uri")
        if redirect_uri != rec["redirect_uri"]:
            raise grant_error(500112, got=redirect_uri, want=rec["redirect_uri"])
        if rec["challenge"] is not None:
            verifier = form.get("code_verifier") or ""
            if not PKCE_VERIFIER_RE.match(verifier):
                raise grant_error(501481)
            if rec["method"] == "S256":
                ok = hmac.compare_digest(b64url(hashlib.sha256(verifier.encode()).digest()), rec["challenge"])
            else:
                ok = hmac.compare_digest(verifier, rec["challenge"])
            if not ok:
                raise grant_error(501481)
        user = user_in_tenant(rec["user"], owner)
        err = grant_still_valid(user, rec["iat"])
        if err:
            raise err
        rec["redeemed"] = True
        STATE.count("codes_redeemed")
    return delegated_response(req, owner, client, user, aud=rec["aud"], prefix=rec["prefix"], oidc=rec["oidc"],
                              confidential=method is not None, amr=rec["amr"], nonce=rec.get("nonce"))


def grant_refresh_token(req: "Request", tenant: dict | None, alias: str | None, form: dict) -> dict:
    """Rotation: every use returns a new refresh token; the used one works for refresh_grace_seconds more."""
    owner, client, method = authenticate_client(req, tenant, form, allow_public=True)
    rt = form.get("refresh_token")
    if not rt:
        raise aad_error(400, "invalid_request", 900144, param="refresh_token")
    parsed = parse_scopes(form.get("scope"), required=False)
    t = time.time()
    s = STATE.settings
    with STATE.lock:
        rec = STATE.refresh.get(digest(rt))
        if rec is None:
            raise grant_error(9002313, detail="The refresh token is not known.")
        if rec["client_id"].lower() != client["client_id"].lower():
            raise grant_error(70000, detail="The refresh token was issued to a different client.")
        if rec["confidential"] and method is None:
            raise aad_error(401, "invalid_client", 7000218)
        user = STATE.find_user(rec["user"])
        if user is None:
            raise grant_error(50034, upn=rec["user"], tenant=owner["name"])
        if rec["revoked"]:
            vf = user["tokens_valid_from"] or t
            raise grant_error(50173, issued=ms_timestamp(rec["iat"]), valid_from=ms_timestamp(vf))
        err = grant_still_valid(user, rec["iat"])
        if err:
            raise err
        inactive = t - rec["last_used"]
        if rec["expired"] or inactive > float(s.get("refresh_token_lifetime") or 0):
            raise grant_error(700082, issued=ms_timestamp(rec["iat"]), inactive=f"{int(inactive)} seconds")
        if parsed is not None and missing_consent(user, client, parsed):
            raise consent_error(client)
        if rec["redeemed_at"] is not None:
            grace = float(s.get("refresh_grace_seconds") or 0)
            if grace > 0 and t - rec["redeemed_at"] <= grace:
                STATE.count("refresh_reuse_within_grace")
            else:
                STATE.count("refresh_reuse_rejected")
                raise grant_error(70000, detail="The refresh token has already been redeemed (rotated).")
        else:
            rec["redeemed_at"] = t
        rec["last_used"] = t
        aud = parsed["aud"] if parsed else rec["aud"]
        prefix = parsed["prefix"] if parsed else rec["prefix"]
        oidc = list(rec["oidc"])
        for x in (parsed["oidc"] if parsed else []):
            if x not in oidc:
                oidc.append(x)
        if "offline_access" not in oidc:
            oidc.append("offline_access")
    return delegated_response(req, owner, client, user, aud=aud, prefix=prefix, oidc=oidc,
                              confidential=rec["confidential"] or method is not None, amr=rec["amr"],
                              family=rec["family"], parent=rec["id"])


def grant_device_code(req: "Request", tenant: dict | None, alias: str | None, form: dict) -> dict:
    owner, client, method = authenticate_client(req, tenant, form, allow_public=True)
    dc = form.get("device_code") or form.get("code")
    if not dc:
        raise aad_error(400, "invalid_request", 900144, param="device_code")
    t = time.time()
    s = STATE.settings
    with STATE.lock:
        STATE.count("device_polls")
        rec = STATE.devices.get(digest(dc))
        if rec is None or rec["client_id"].lower() != client["client_id"].lower():
            raise OAuthError(400, "bad_verification_code", 70000, AADSTS_TEXT[70000].format(
                detail="The device code is not known to this client."))
        rec["polls"] += 1
        last, rec["last_poll"] = rec["last_poll"], t
        forced = int(s.get("slow_down") or 0)
        too_fast = last is not None and t - last + 0.05 < rec["interval"]
        if forced > 0 or (too_fast and rec["status"] == "pending" and rec["exp"] > t):
            if forced > 0:
                STATE.settings["slow_down"] = forced - 1
            rec["interval"] += int(s.get("device_slow_down_increment") or 0)
            rec["slow_downs"] += 1
            raise OAuthError(400, "slow_down", 70016, "OAuth 2.0 device flow error. Polling too fast: wait "
                             f"{rec['interval']} seconds between polls.")
        if rec["status"] == "redeemed":
            raise grant_error(54005)
        if rec["exp"] <= t:
            raise OAuthError(400, "expired_token", 70019, AADSTS_TEXT[70019])
        if rec["status"] == "denied":
            raise OAuthError(400, "authorization_declined", 65004, AADSTS_TEXT[65004])
        if rec["status"] == "pending":
            raise OAuthError(400, "authorization_pending", 70016, AADSTS_TEXT[70016])
        user = user_in_tenant(rec["user"], owner)
        err = grant_still_valid(user, rec["approved_at"])
        if err:
            raise err
        rec["status"] = "redeemed"
    return delegated_response(req, owner, client, user, aud=rec["aud"], prefix=rec["prefix"], oidc=rec["oidc"],
                              confidential=method is not None, amr=rec["amr"])


# grant_type -> handler(req, tenant_or_None, alias_or_None, form) -> success JSON (raises OAuthError).
GRANTS = {
    "client_credentials": grant_client_credentials,
    "authorization_code": grant_authorization_code,
    "refresh_token": grant_refresh_token,
    "password": grant_password,
    DEVICE_GRANT: grant_device_code,
}


# --- authorization codes and device codes -------------------------------------------------------------
def redirect_uri_allowed(client: dict, uri: str) -> bool:
    """Entra rules: exact match, except that http://localhost and http://127.0.0.1 match on any port
    (path and query must still be equal). No fragments."""
    regs = client.get("redirect_uris")
    regs = DEFAULT_REDIRECT_URIS if regs is None else regs
    if "#" in uri:
        return False
    if uri in regs:
        return True
    try:
        u = urllib.parse.urlsplit(uri)
        u.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        return False
    for reg in regs:
        r = urllib.parse.urlsplit(reg)
        if (r.scheme == u.scheme == "http" and r.hostname in ("localhost", "127.0.0.1")
                and u.hostname == r.hostname and (r.path or "/") == (u.path or "/") and r.query == u.query):
            return True
    return False


def issue_code(tenant: dict, client: dict, user: dict, p: dict, parsed: dict, amr: list[str]) -> str:
    code = "1.AQ" + b64url(secrets.token_bytes(64))
    t = time.time()
    rec = {"tenant_id": tenant["id"], "client_id": client["client_id"], "user": user["upn"],
           "redirect_uri": p["redirect_uri"], "challenge": p.get("code_challenge") or None,
           "method": p.get("code_challenge_method") or "plain", "aud": parsed["aud"], "prefix": parsed["prefix"],
           "oidc": parsed["oidc"], "nonce": p.get("nonce"), "amr": amr, "iat": t,
           "exp": t + float(STATE.settings.get("code_lifetime") or 600), "redeemed": False}
    with STATE.lock:
        STATE.codes[digest(code)] = rec
        STATE.count("codes_issued")
        STATE.stats["authorize"]["codes_issued"] += 1
        if len(STATE.codes) > 20000:
            for k in [k for k, v in STATE.codes.items() if v["exp"] < t][:10000]:
                del STATE.codes[k]
    return code


def new_user_code() -> str:
    while True:
        c = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(9))
        if c not in STATE.user_codes:
            return c


def find_device(user_code: str | None) -> dict | None:
    """The device-code record for a user code (case, spaces and dashes ignored), or with user_code
    None the newest pending one. Call with the lock held."""
    if user_code is None:
        pending = [d for d in STATE.devices.values() if d["status"] == "pending" and d["exp"] > time.time()]
        return max(pending, key=lambda d: d["created"]) if pending else None
    key = re.sub(r"[\s-]", "", user_code).upper()
    h = STATE.user_codes.get(key)
    return STATE.devices.get(h) if h else None


def approve_device(rec: dict, user: dict, amr: list[str]) -> str | None:
    """Marks a device code approved by user (consent implied). Returns an error text or None."""
    if rec["status"] != "pending":
        return f"device code is {rec['status']}"
    if rec["exp"] <= time.time():
        return "device code expired"
    if user["tenant_id"] != rec["tenant_id"]:
        return f"user {user['upn']} is not in the tenant of this app"
    if user["disabled"]:
        return AADSTS_TEXT[50057]
    _, client = STATE.find_client(rec["client_id"])
    grant_consent(user, client, rec["parsed"])
    rec.update(status="approved", user=user["upn"], approved_at=time.time(), amr=amr)
    return None


def device_public(rec: dict) -> dict:
    return {k: rec[k] for k in ("user_code", "client_id", "tenant_id", "scope", "status", "user", "created",
                                "exp", "interval", "polls", "slow_downs", "last_poll")}
def add_query(uri: str, params: dict) -> str:
    return uri + ("&" if "?" in uri else "?") + urllib.parse.urlencode(params)


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)} (mock)</title>'
            f'</head><body>{body}\n<p><small>mock Microsoft identity platform (xoauth-proxy test bed)</small>'
            f'</p></body></html>\n')


# --- faults --------------------------------------------------------------------------------------------
FAULT_DEFAULTS = {
    429: ("temporarily_unavailable", 50196),
    500: ("server_error", 90033),
    502: ("temporarily_unavailable", 90033),
    503: ("temporarily_unavailable", 90033),
    504: ("temporarily_unavailable", 90033),
}


# "any" matches every endpoint below; grant_type (token endpoint only) narrows a token fault.
FAULT_ENDPOINTS = ("token", "introspect", "devicecode", "authorize", "any")


def take_fault(endpoint: str, grant: str | None) -> dict | None:
    with STATE.lock:
        for f in STATE.faults:
            if f["remaining"] <= 0:
                continue
            if f["endpoint"] not in ("any", endpoint):
                continue
            if f.get("grant_type") and f["grant_type"] != grant:
                continue
            f["remaining"] -= 1
            STATE.faults = [x for x in STATE.faults if x["remaining"] > 0]
            return dict(f)
    return None


def normalize_fault(spec: dict) -> dict:
    f = {
        "count": int(spec.get("count", 1)),
        "status": int(spec.get("status", 503)),
        "drop": bool(spec.get("drop", False)),
        "delay_ms": int(spec.get("delay_ms", 0)),
        "retry_after": spec.get("retry_after"),
        "endpoint": spec.get("endpoint", "token"),
        "grant_type": spec.get("grant_type"),
        "error": spec.get("error"),
        "error_code": spec.get("error_code"),
        "body": spec.get("body"),          # raw body instead of JSON (e.g. an HTML error page)
        "content_type": spec.get("content_type", "text/html; charset=utf-8"),
    }
    if f["endpoint"] not in FAULT_ENDPOINTS:
        raise ValueError(f"endpoint must be one of {', '.join(FAULT_ENDPOINTS)}")
    if f["retry_after"] is None and f["status"] == 429:
        f["retry_after"] = 60
    f["remaining"] = f["count"]
    return f


# --- HTTP ------------------------------------------------------------------------------------------------
class Request(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-idp/1.0"
    tenant_key = ""   # the {tenant} path segment of the current request

    def version_string(self):
        return self.server_version
    timeout = 300  # idle keep-alive connections (Dovecot reuses them)

    def log_message(self, fmt, *args):  # quiet default access log; we log our own lines
        pass

    # -- plumbing
    def read_body(self) -> bytes:
        """Drains the request body (Content-Length or chunked) so keep-alive stays in sync."""
        if getattr(self, "_body", None) is not None:
            return self._body
        te = self.headers.get("Transfer-Encoding", "").lower()
        data = b""
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)
            data = b"".join(chunks)
        else:
            n = int(self.headers.get("Content-Length") or 0)
            if n > 0:
                data = self.rfile.read(n)
        self._body = data
        return data

    def send(self, status: int, body: bytes, ctype="application/json; charset=utf-8", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Pragma", "no-cache")
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj, headers=None):
        self.send(status, json.dumps(obj).encode(), headers=headers)

    def send_oauth_error(self, e: OAuthError):
        trace_id = str(uuid.uuid4())
        corr = self.headers.get("client-request-id") or str(uuid.uuid4())
        ts = ms_timestamp()
        desc = f"AADSTS{e.code}: {e.text}" if e.code else e.text
        body = {
            "error": e.error,
            "error_description": f"{desc}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {corr}\r\nTimestamp: {ts}",
            "error_codes": [e.code] if e.code else [],
            "timestamp": ts, "trace_id": trace_id, "correlation_id": corr,
            "error_uri": f"https://login.microsoftonline.com/error?code={e.code}" if e.code else
                         "https://login.microsoftonline.com/error",
        }
        if e.suberror:
            body["suberror"] = e.suberror
        body.update(e.extra)
        headers = {"x-ms-request-id": trace_id, **e.headers}
        if self.headers.get("client-request-id"):
            headers["client-request-id"] = corr
        self.send_json(e.status, body, headers=headers)

    def base_url(self) -> str:
        """https://host:port as the client addressed us (for URLs we hand out and assertion aud)."""
        return f"https://{self.headers.get('Host') or '127.0.0.1:%d' % self.server.server_address[1]}"

    def send_html(self, status: int, body: str, headers=None):
        self.send(status, body.encode(), ctype="text/html; charset=utf-8", headers=headers)

    def redirect(self, location: str):
        self.send(302, b"", ctype="text/html; charset=utf-8", headers={"Location": location})

    def is_loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.client_address[0]).is_loopback
        except ValueError:
            return False

    def json_body(self) -> dict:
        raw = self.read_body()
        if not raw.strip():
            return {}
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("JSON object expected")
        return obj

    def drop(self):
        """Abrupt close without an HTTP response (and without TLS close_notify)."""
        self.close_connection = True
        try:  # SO_LINGER {on, 0}: close() sends a TCP RST
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.wfile = _NullWriter()

    # -- routing
    def do_GET(self):
        self.route("GET")

    def do_POST(self):
        self.route("POST")

    def do_DELETE(self):
        self.route("DELETE")

    def do_PUT(self):
        self.route("PUT")

    def do_HEAD(self):
        self.route("HEAD")

    def route(self, method: str):
        self._body = None
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        parts = [p for p in path.split("/") if p]
        try:
            if path == "/health":
                self.read_body()
                self.send_json(200, {"status": "ok"})
            elif path == "/introspect":
                self.introspect(method, url)
            elif parts[:1] == ["_admin"]:
                self.admin(method, parts[1:] if len(parts) > 1 else [""], url)
            elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
                self.token(method, parts[0])
            elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "authorize"]:
                self.authorize(method, parts[0], url)
            elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "devicecode"]:
                self.devicecode(method, parts[0], url)
            elif path in ("/devicelogin", "/common/oauth2/deviceauth"):
                self.devicelogin(method, url)
            elif len(parts) == 4 and parts[1:] == ["v2.0", ".well-known", "openid-configuration"]:
                self.read_body()
                self.openid_configuration(parts[0])
            else:
                self.read_body()
                self.send_json(404, {"error": "not_found", "path": path})
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout):
            self.close_connection = True
        except Exception as exc:  # keep the server alive; report as 500
            log(f"internal error on {method} {path}: {exc!r}")
            try:
                self.read_body()
                self.send_json(500, {"error": "server_error", "detail": repr(exc)})
            except OSError:
                self.close_connection = True

    # -- endpoints
    def openid_configuration(self, tenant_key: str):
        base = f"https://{self.headers.get('Host', '127.0.0.1')}"
        tenant = STATE.find_tenant(tenant_key)
        if tenant is None and tenant_key.lower() not in MULTI_TENANT_ALIASES:
            self.send_oauth_error(aad_error(400, "invalid_tenant", 90002, tenant=tenant_key))
            return
        tid = tenant["id"] if tenant else "{tenantid}"
        t = tenant_key
        self.send_json(200, {
            "issuer": f"{base}/{tid}/v2.0",
            "authorization_endpoint": f"{base}/{t}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/{t}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{base}/{t}/oauth2/v2.0/devicecode",
            "introspection_endpoint": f"{base}/introspect",
            "grant_types_supported": sorted(GRANTS),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "code_challenge_methods_supported": ["S256", "plain"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic",
                                                      "private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256"],
        })

    # -- delegated sign-in: /authorize (HTML form), /devicecode, /devicelogin
    def error_page(self, status: int, code: int, **fmt):
        e = aad_error(status, "invalid_request", code, **fmt)
        with STATE.lock:
            STATE.stats["authorize"]["errors"] += 1
        self.send_html(status, page("Sign in - error", f"""
<h1>Sorry, but we're having trouble signing you in.</h1>
<p id="error" class="error">AADSTS{code}: {html.escape(e.text)}</p>
<p>Trace ID: {uuid.uuid4()}<br>Timestamp: {ms_timestamp()}</p>"""))

    def redirect_error(self, redirect_uri: str, e: OAuthError, state: str | None):
        q = {"error": e.error,
             "error_description": (f"AADSTS{e.code}: " if e.code else "") + e.text
                                  + f"\r\nTrace ID: {uuid.uuid4()}\r\nCorrelation ID: {uuid.uuid4()}"
                                  + f"\r\nTimestamp: {ms_timestamp()}"}
        if e.code:
            q["error_uri"] = f"https://login.microsoftonline.com/error?code={e.code}"
        if state is not None:
            q["state"] = state
        with STATE.lock:
            a = STATE.stats["authorize"]
            a["denied" if e.error == "access_denied" else "errors"] += 1
        self.redirect(add_query(redirect_uri, q))

    def authorize(self, method: str, tenant_key: str, url):
        raw = self.read_body()
        self.tenant_key = tenant_key
        with STATE.lock:
            STATE.stats["authorize"]["requests"] += 1
        fault = take_fault("authorize", None)
        if fault:
            outcome = self.inject(fault, None, "authorize")
            log(f"authorize tenant={tenant_key} -> {outcome}")
            return
        params = {k: v[0] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        if method == "POST":
            form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode("utf-8", "replace"),
                                                              keep_blank_values=True).items()}
            if "ctx" in form:
                self.authorize_submit(form)
                return
            params.update(form)
        elif method not in ("GET", "HEAD"):
            self.error_page(405, 900561, method=method)
            return
        self.authorize_start(tenant_key, params)

    def authorize_start(self, tenant_key: str, params: dict):
        tenant = STATE.find_tenant(tenant_key)
        if tenant is None and tenant_key.lower() not in MULTI_TENANT_ALIASES:
            return self.error_page(400, 90002, tenant=tenant_key)
        client_id = params.get("client_id")
        if not client_id:
            return self.error_page(400, 900144, param="client_id")
        owner, client = STATE.find_client(client_id)
        if client is None or (tenant is not None and owner is not tenant):
            return self.error_page(400, 700016, client_id=client_id, tenant=tenant["name"] if tenant else tenant_key)
        ruri = params.get("redirect_uri")
        if not ruri:  # Entra then uses the app's (first) registered reply URL
            regs = client.get("redirect_uris", DEFAULT_REDIRECT_URIS)
            if not regs:
                return self.error_page(400, 900971)
            ruri = regs[0]
        if not redirect_uri_allowed(client, ruri):
            log(f"authorize client_id={client_id} -> AADSTS50011 redirect_uri mismatch")
            return self.error_page(400, 50011, redirect_uri=ruri, client_id=client_id)
        p = dict(params, redirect_uri=ruri)
        state = params.get("state")
        prompt = params.get("prompt") or ""
        try:
            rtype = params.get("response_type")
            if not rtype:
                raise aad_error(400, "invalid_request", 900144, param="response_type")
            if rtype != "code":
                raise OAuthError(400, "unsupported_response_type", 70005,
                                 AADSTS_TEXT[70005].format(response_type=rtype))
            if params.get("response_mode", "query") != "query":
                raise OAuthError(400, "invalid_request", 900144,
                                 f"response_mode '{params['response_mode']}' is not supported by the mock (query only).")
            parsed = parse_scopes(params.get("scope"))
            ch, m = params.get("code_challenge"), params.get("code_challenge_method")
            if ch:
                m = m or "plain"
                if m not in ("S256", "plain") or (m == "S256" and not re.fullmatch(r"[A-Za-z0-9_-]{43}", ch)) \
                        or (m == "plain" and not PKCE_VERIFIER_RE.match(ch)):
                    raise aad_error(400, "invalid_request", 501491, method=m)
                p["code_challenge_method"] = m
            elif m:
                raise aad_error(400, "invalid_request", 900144, param="code_challenge")
            elif STATE.settings.get("require_pkce"):
                raise aad_error(400, "invalid_request", 9002325)
            if prompt not in ("", "login", "none", "consent", "select_account"):
                raise OAuthError(400, "invalid_request", 900144, f"Invalid prompt value '{prompt}'.")
        except OAuthError as e:
            log(f"authorize client_id={client_id} -> redirect error {e.error} AADSTS{e.code}")
            return self.redirect_error(ruri, e, state)
        auto = str(STATE.settings.get("auto_approve") or "").strip()
        if auto:
            upn = params.get("login_hint", "") if auto.lower() == "login_hint" else auto
            with STATE.lock:
                user = STATE.find_user(upn)
                problem = None
                if user is None or user["tenant_id"] != owner["id"]:
                    problem = f"auto_approve: user '{upn}' does not exist in tenant {owner['name']}"
                elif user["disabled"]:
                    problem = f"auto_approve: user '{upn}' is disabled"
                else:
                    grant_consent(user, client, parsed)
                    STATE.stats["authorize"]["auto_approved"] += 1
            if problem is None:
                log(f"authorize client_id={client_id} user={user['upn']} -> auto-approved, code issued")
                return self.finish_sign_in(owner, client, user, p, parsed)
            log(f"authorize client_id={client_id} -> {problem}")
            return self.login_form(self.new_ctx(owner, client, p, parsed), client, parsed, upn, problem)
        if prompt == "none":
            return self.redirect_error(ruri, OAuthError(400, "login_required", 50058, AADSTS_TEXT[50058]), state)
        self.login_form(self.new_ctx(owner, client, p, parsed), client, parsed, params.get("login_hint", ""))

    @staticmethod
    def new_ctx(owner: dict, client: dict, p: dict, parsed: dict) -> str:
        ctx = b64url(secrets.token_bytes(18))
        t = time.time()
        with STATE.lock:
            STATE.auth_ctx[ctx] = {"tenant_id": owner["id"], "client_id": client["client_id"], "p": p,
                                   "parsed": parsed, "exp": t + 900}
            if len(STATE.auth_ctx) > 5000:
                for k in [k for k, v in STATE.auth_ctx.items() if v["exp"] < t]:
                    del STATE.auth_ctx[k]
        return ctx

    def login_form(self, ctx: str, client: dict, parsed: dict, username: str, error: str | None = None,
                   status: int = 200):
        with STATE.lock:
            STATE.stats["authorize"]["form_shown"] += 1
        scopes = parsed["names"] or ["(all permissions of the app: .default)"]
        items = "".join(f"<li>{html.escape(parsed['prefix'] + x)}</li>" for x in scopes + parsed["oidc"])
        err = f'<p id="error" class="error">{html.escape(error)}</p>' if error else ""
        self.send_html(status, page("Sign in to your account", f"""
<h1>Sign in</h1>
<p>The application <b>{html.escape(client.get("name", ""))}</b> ({html.escape(client["client_id"])}) asks for:</p>
<ul>{items}</ul>
{err}
<form method="post" action="/{html.escape(self.tenant_key)}/oauth2/v2.0/authorize">
<input type="hidden" name="ctx" value="{ctx}">
<p><label>Email, phone, or Skype <input type="email" name="username" value="{html.escape(username)}"></label></p>
<p><label>Password <input type="password" name="password"></label></p>
<p><label><input type="checkbox" name="consent" value="yes"> Accept: let this app access your info</label></p>
<p><button type="submit" name="action" value="accept">Sign in</button>
<button type="submit" name="action" value="decline">Cancel</button></p>
</form>"""))

    def authorize_submit(self, form: dict):
        ctx_id = form.get("ctx", "")
        with STATE.lock:
            STATE.stats["authorize"]["form_posts"] += 1
            ctx = STATE.auth_ctx.get(ctx_id)
        if ctx is None or ctx["exp"] < time.time():
            return self.error_page(400, 50089)
        owner = STATE.find_tenant(ctx["tenant_id"])
        _, client = STATE.find_client(ctx["client_id"])
        p, parsed = ctx["p"], ctx["parsed"]
        decline = OAuthError(400, "access_denied", 65004, AADSTS_TEXT[65004])
        if form.get("action") == "decline":
            with STATE.lock:
                STATE.auth_ctx.pop(ctx_id, None)
            log(f"authorize client_id={client['client_id']} -> user cancelled")
            return self.redirect_error(p["redirect_uri"], decline, p.get("state"))
        upn = form.get("username", "").strip()
        declined = False
        with STATE.lock:
            user = STATE.find_user(upn)
            if user is None or user["tenant_id"] != owner["id"]:
                err = grant_error(50034, upn=upn, tenant=owner["name"])
            else:
                err = check_password(user, form.get("password"))
                if err is None and user["disabled"]:
                    err = grant_error(50057)
            if err is None:
                need = bool(missing_consent(user, client, parsed)) or p.get("prompt") == "consent"
                if need and form.get("consent", "").lower() not in ("yes", "on", "true", "1"):
                    declined = True
                else:
                    grant_consent(user, client, parsed)
            else:
                STATE.stats["authorize"]["login_failures"] += 1
            if err is None:
                STATE.auth_ctx.pop(ctx_id, None)
        if err is not None:
            log(f"authorize client_id={client['client_id']} user={upn} -> form again: AADSTS{err.code}")
            return self.login_form(ctx_id, client, parsed, upn, f"AADSTS{err.code}: {err.text}")
        if declined:
            log(f"authorize client_id={client['client_id']} user={upn} -> consent declined")
            return self.redirect_error(p["redirect_uri"], decline, p.get("state"))
        log(f"authorize client_id={client['client_id']} user={user['upn']} -> signed in, code issued")
        self.finish_sign_in(owner, client, user, p, parsed)

    def finish_sign_in(self, owner: dict, client: dict, user: dict, p: dict, parsed: dict):
        amr = ["pwd", "mfa"] if user["mfa_required"] else ["pwd"]
        code = issue_code(owner, client, user, p, parsed, amr)
        q = {"code": code}
        if p.get("state") is not None:
            q["state"] = p["state"]
        q["session_state"] = str(uuid.uuid4())
        self.redirect(add_query(p["redirect_uri"], q))

    def devicecode(self, method: str, tenant_key: str, url):
        raw = self.read_body()
        self.tenant_key = tenant_key
        params = {k: v[0] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        if method == "POST":
            params.update({k: v[0] for k, v in urllib.parse.parse_qs(raw.decode("utf-8", "replace"),
                                                                     keep_blank_values=True).items()})
        with STATE.lock:
            STATE.count("devicecode_requests")
        fault = take_fault("devicecode", None)
        if fault:
            outcome = self.inject(fault, None, "devicecode")
            log(f"devicecode tenant={tenant_key} -> {outcome}")
            return
        try:
            if method not in ("GET", "POST"):
                raise aad_error(405, "invalid_request", 900561, method=method)
            tenant = STATE.find_tenant(tenant_key)
            if tenant is None and tenant_key.lower() not in MULTI_TENANT_ALIASES:
                raise aad_error(400, "invalid_request", 90002, tenant=tenant_key)
            client_id = params.get("client_id")
            if not client_id:
                raise aad_error(400, "invalid_request", 900144, param="client_id")
            owner, client = STATE.find_client(client_id)
            if client is None or (tenant is not None and owner is not tenant):
                raise aad_error(400, "unauthorized_client", 700016, client_id=client_id,
                                tenant=tenant["name"] if tenant else tenant_key)
            parsed = parse_scopes(params.get("scope"))
        except OAuthError as e:
            with STATE.lock:
                key = f"devicecode:{e.error}"
                STATE.stats["errors"][key] = STATE.stats["errors"].get(key, 0) + 1
            log(f"devicecode tenant={tenant_key} client_id={params.get('client_id', '-')} -> "
                f"{e.status} {e.error} AADSTS{e.code}")
            self.send_oauth_error(e)
            return
        s = STATE.settings
        device_code = "DAQABIQEAAAD" + b64url(secrets.token_bytes(96))
        t = time.time()
        expires_in, interval = int(s.get("device_expires_in") or 900), int(s.get("device_interval") or 5)
        verification_uri = f"{self.base_url()}/devicelogin"
        with STATE.lock:
            user_code = new_user_code()
            STATE.devices[digest(device_code)] = {
                "user_code": user_code, "client_id": client["client_id"], "tenant_id": owner["id"],
                "scope": params["scope"], "parsed": parsed, "aud": parsed["aud"], "prefix": parsed["prefix"],
                "oidc": parsed["oidc"], "status": "pending", "user": None, "created": t, "exp": t + expires_in,
                "interval": interval, "last_poll": None, "polls": 0, "slow_downs": 0, "approved_at": None,
                "amr": ["pwd"]}
            STATE.user_codes[user_code] = digest(device_code)
            STATE.count("device_codes_issued")
            if len(STATE.devices) > 5000:
                for k in [k for k, v in STATE.devices.items() if v["exp"] < t - 3600]:
                    STATE.user_codes.pop(STATE.devices.pop(k)["user_code"], None)
        log(f"devicecode tenant={tenant_key} client_id={client['client_id']} -> 200 (expires_in={expires_in}, "
            f"interval={interval})")
        self.send_json(200, {
            "user_code": user_code, "device_code": device_code, "verification_uri": verification_uri,
            "expires_in": expires_in, "interval": interval,
            "message": f"To sign in, use a web browser to open the page {verification_uri} and enter the code "
                       f"{user_code} to authenticate."}, headers={"x-ms-request-id": str(uuid.uuid4())})

    def devicelogin(self, method: str, url):
        raw = self.read_body()
        q = {k: v[0] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        if method != "POST":
            return self.device_form(q.get("otc") or q.get("user_code") or "", "")
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode("utf-8", "replace"),
                                                          keep_blank_values=True).items()}
        user_code, upn = form.get("user_code", "").strip(), form.get("username", "").strip()
        error = None
        with STATE.lock:
            rec = find_device(user_code) if user_code else None
            if rec is None:
                error = "That code didn't work. Check the code and try again."
            elif rec["status"] != "pending" or rec["exp"] <= time.time():
                error = "That code has expired or was already used. Start over on your device."
            elif form.get("action") == "decline":
                rec["status"] = "denied"
            else:
                user = STATE.find_user(upn)
                _, client = STATE.find_client(rec["client_id"])
                if user is None or user["tenant_id"] != rec["tenant_id"]:
                    err = grant_error(50034, upn=upn, tenant=rec["tenant_id"])
                else:
                    err = check_password(user, form.get("password")) or (
                        grant_error(50057) if user["disabled"] else None)
                if err is not None:
                    error = f"AADSTS{err.code}: {err.text}"
                elif missing_consent(user, client, rec["parsed"]) and \
                        form.get("consent", "").lower() not in ("yes", "on", "true", "1"):
                    rec["status"] = "denied"
                else:
                    error = approve_device(rec, user, ["pwd", "mfa"] if user["mfa_required"] else ["pwd"])
            status = rec["status"] if rec else None
        if error:
            return self.device_form(user_code, upn, error)
        log(f"devicelogin client_id={rec['client_id']} -> {status}")
        text = ("You have signed in to the application on your device. You may now close this window."
                if status == "approved" else "You declined to sign in. You may now close this window.")
        self.send_html(200, page("Device sign-in", f'<h1>Device sign-in</h1><p id="result" class="{status}">'
                                                   f'{text}</p>'))

    def device_form(self, user_code: str, username: str, error: str | None = None):
        err = f'<p id="error" class="error">{html.escape(error)}</p>' if error else ""
        self.send_html(200, page("Enter code", f"""
<h1>Enter code</h1>
<p>Enter the code displayed on your app or device, then sign in.</p>
{err}
<form method="post" action="/devicelogin">
<p><label>Code <input name="user_code" value="{html.escape(user_code)}"></label></p>
<p><label>Email <input type="email" name="username" value="{html.escape(username)}"></label></p>
<p><label>Password <input type="password" name="password"></label></p>
<p><label><input type="checkbox" name="consent" value="yes"> Accept: let this app access your info</label></p>
<p><button type="submit" name="action" value="accept">Sign in</button>
<button type="submit" name="action" value="decline">Cancel</button></p>
</form>"""))

    def token(self, method: str, tenant_key: str):
        raw = self.read_body()
        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode("utf-8", "replace"),
                                                          keep_blank_values=True).items()}
        grant = form.get("grant_type") or "(none)"
        with STATE.lock:
            st = STATE.stats
            st["token_requests"] += 1
            g = st["grants"].setdefault(grant, {"requests": 0, "successes": 0})
            g["requests"] += 1
            st["current_token_requests"] += 1
            st["peak_concurrent_token_requests"] = max(st["peak_concurrent_token_requests"],
                                                       st["current_token_requests"])
            latency = int(STATE.settings.get("latency_ms") or 0)
        outcome = "?"
        try:
            if latency > 0:
                time.sleep(latency / 1000)
            fault = take_fault("token", grant)
            if fault:
                outcome = self.inject(fault, grant, "token")
                return
            try:
                if method != "POST":
                    raise aad_error(405, "invalid_request", 900561, method=method)
                tenant = STATE.find_tenant(tenant_key)
                alias = tenant_key.lower() if tenant_key.lower() in MULTI_TENANT_ALIASES else None
                if tenant is None and alias is None:
                    raise aad_error(400, "invalid_request", 90002, tenant=tenant_key)
                if grant == "(none)":
                    raise aad_error(400, "invalid_request", 900144, param="grant_type")
                handler = GRANTS.get(grant)
                if handler is None:
                    raise aad_error(400, "unsupported_grant_type", 70003, grant=grant)
                self.tenant_key = tenant_key
                result = handler(self, tenant, alias, form)
            except OAuthError as e:
                with STATE.lock:
                    key = f"{grant}:{e.error}"
                    STATE.stats["errors"][key] = STATE.stats["errors"].get(key, 0) + 1
                outcome = f"{e.status} {e.error} AADSTS{e.code}"
                self.send_oauth_error(e)
                return
            with STATE.lock:
                STATE.stats["token_successes"] += 1
                STATE.stats["grants"][grant]["successes"] += 1
            outcome = "200"
            self.send_json(200, result, headers={"x-ms-request-id": str(uuid.uuid4())})
        finally:
            with STATE.lock:
                STATE.stats["current_token_requests"] -= 1
            log(f"token tenant={tenant_key} grant={grant} client_id={form.get('client_id', '-')} -> {outcome}")

    def inject(self, fault: dict, grant: str | None, endpoint: str) -> str:
        with STATE.lock:
            if endpoint == "introspect":
                STATE.stats["introspection"]["faults_injected"] += 1
            else:
                STATE.stats["faults_injected"] += 1
                key = f"{grant if endpoint == 'token' else endpoint}:injected_" \
                      f"{'drop' if fault['drop'] else fault['status']}"
                STATE.stats["errors"][key] = STATE.stats["errors"].get(key, 0) + 1
        if fault["delay_ms"] > 0:
            time.sleep(fault["delay_ms"] / 1000)
        if fault["drop"]:
            self.drop()
            return "injected drop"
        headers = {}
        if fault.get("retry_after") is not None:
            headers["Retry-After"] = str(fault["retry_after"])
        status = fault["status"]
        if fault.get("body") is not None:
            self.send(status, str(fault["body"]).encode(), ctype=fault["content_type"], headers=headers)
            return f"injected {status} raw"
        error, code = FAULT_DEFAULTS.get(status, ("server_error", 90033))
        error = fault.get("error") or error
        code = int(fault.get("error_code") or code)
        e = OAuthError(status, error, code, AADSTS_TEXT.get(code, "Injected failure."), headers=headers)
        self.send_oauth_error(e)
        return f"injected {status} {error}"

    def introspect(self, method: str, url):
        raw = self.read_body()
        token = None
        if method == "POST":
            form = urllib.parse.parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
            token = (form.get("token") or [None])[0]
        if token is None:
            q = urllib.parse.parse_qs(url.query, keep_blank_values=True)
            token = (q.get("token") or q.get("access_token") or [None])[0]
        auth = self.headers.get("Authorization", "")
        if token is None and auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        service = (self.headers.get("X-Dovecot-Auth-Service") or "").lower() or None
        with STATE.lock:
            ist = STATE.stats["introspection"]
            ist["requests"] += 1
            if service:
                ist["by_service"][service] = ist["by_service"].get(service, 0) + 1
            lat = int(STATE.settings.get("introspection_latency_ms") or 0)
        if lat > 0:
            time.sleep(lat / 1000)
        fault = take_fault("introspect", None)
        if fault:
            self.inject(fault, None, "introspect")
            return
        reply = self.evaluate(token, service)
        with STATE.lock:
            ist = STATE.stats["introspection"]
            if reply.get("active"):
                ist["active"] += 1
            else:
                ist["inactive"] += 1
                ist["reasons"][reply["reason"]] = ist["reasons"].get(reply["reason"], 0) + 1
        log(f"introspect service={service or '-'} login={self.headers.get('X-Dovecot-Auth-User', '-')} "
            f"-> {'active' if reply.get('active') else 'inactive ' + reply['reason']}")
        self.send_json(200, reply)

    @staticmethod
    def evaluate(token: str | None, service: str | None) -> dict:
        if not token:
            return {"active": False, "reason": "missing_token"}
        claims = jwt_decode(token)
        if claims is None:
            return {"active": False, "reason": "bad_signature"}
        with STATE.lock:
            rec = copy.deepcopy(STATE.tokens.get(claims.get("uti", "")))
            enforce = bool(STATE.settings.get("enforce_service_scope"))
        if rec is None:
            return {"active": False, "reason": "unknown_token"}
        if rec["revoked"]:
            return {"active": False, "reason": "revoked"}
        if rec["exp"] <= now():
            return {"active": False, "reason": "expired"}
        if rec["kind"] == "user":
            with STATE.lock:
                user = STATE.find_user(rec["user"])
                vf, disabled = (user["tokens_valid_from"], user["disabled"]) if user else (None, False)
            if user is None:
                return {"active": False, "reason": "unknown_user"}
            if vf is not None and rec["iat_f"] < vf:
                return {"active": False, "reason": "revoked"}
            if disabled:
                return {"active": False, "reason": "user_disabled"}
        perms = set(rec["roles"]) | set(rec["scp"].split())
        if enforce and service in SERVICE_PERMISSIONS and not perms & set(SERVICE_PERMISSIONS[service]):
            return {"active": False, "reason": "insufficient_scope"}
        tenant = STATE.find_tenant(rec["tenant_id"]) or {"domains": ["unknown.invalid"]}
        domain = (tenant.get("domains") or [tenant.get("name", "unknown.invalid")])[0]
        if rec["kind"] == "app":
            # "username" is the user-passdb field: a placeholder that never matches a login.
            # "app_principal" is compared by domain only (username_format=%Ld) by the app passdb.
            username = f"app-{rec['client_id']}@app-only.invalid"
            app_principal = f"app-{rec['client_id']}@{domain}"
        else:
            username = rec["user"]
            app_principal = "delegated-token@no-app.invalid"
        return {
            "active": True, "token_type": "Bearer", "client_id": rec["client_id"],
            "exp": rec["exp"], "iat": rec["iat"], "aud": rec.get("aud", EXO_AUDIENCE), "tid": rec["tenant_id"],
            "scope": " ".join(sorted(perms)), "idtyp": rec["kind"],
            "username": username, "app_principal": app_principal,
        }

    # -- admin
    def admin(self, method: str, parts: list[str], url):
        if not self.is_loopback():
            self.read_body()
            self.send_json(403, {"error": "admin is loopback-only"})
            return
        name = parts[0]
        sub = parts[1] if len(parts) > 1 else ""
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        try:
            if method in ("POST", "PUT", "DELETE"):
                body = self.json_body()
            else:
                self.read_body()
                body = {}
        except ValueError as exc:
            self.send_json(400, {"error": f"bad JSON: {exc}"})
            return
        try:
            handler = getattr(self, f"admin_{name}", None)
            if handler is None:
                self.send_json(404, {"error": f"unknown admin endpoint {method} /_admin/{name}"})
                return
            status, out = handler(method, sub, body, query)
            self.send_json(status, out)
        except (ValueError, TypeError, KeyError, OSError) as exc:
            self.send_json(400, {"error": f"{type(exc).__name__}: {exc}"})

    @staticmethod
    def admin_stats(method, sub, body, query):
        with STATE.lock:
            out = copy.deepcopy(STATE.stats)
            out["pending_faults"] = sum(f["remaining"] for f in STATE.faults)
        return 200, out

    @staticmethod
    def admin_reset(method, sub, body, query):
        if method != "POST":
            return 405, {"error": "POST only"}
        what = body.get("what", "stats,faults")
        what = {w.strip() for w in (what if isinstance(what, list) else str(what).split(","))}
        if "all" in what:
            what = {"stats", "faults", "config", "tokens", "directory"}
        unknown = what - {"stats", "faults", "config", "tokens", "directory"}
        if unknown:
            return 400, {"error": f"unknown {sorted(unknown)}"}
        with STATE.lock:
            if "stats" in what:
                STATE.reset_stats()
            if "faults" in what:
                STATE.faults = []
            if "config" in what:
                STATE.settings = dict(DEFAULT_SETTINGS)
                STATE.settings.update(STATE.base_config.get("settings", {}))
            if "tokens" in what:
                for d in (STATE.tokens, STATE.refresh, STATE.codes, STATE.devices, STATE.user_codes,
                          STATE.auth_ctx):
                    d.clear()
            if "directory" in what:
                STATE.reset_directory()
        return 200, {"reset": sorted(what)}

    @staticmethod
    def admin_fail(method, sub, body, query):
        if method == "POST":
            specs = body.get("faults") if "faults" in body else [body]
            new = [normalize_fault(x) for x in specs]
            with STATE.lock:
                if body.get("replace", False):
                    STATE.faults = []
                STATE.faults.extend(new)
                return 200, {"faults": copy.deepcopy(STATE.faults)}
        with STATE.lock:
            if method == "DELETE":
                STATE.faults = []
            return 200, {"faults": copy.deepcopy(STATE.faults)}

    @staticmethod
    def admin_config(method, sub, body, query):
        if method == "POST":
            unknown = [k for k in body if k not in DEFAULT_SETTINGS]
            if unknown:
                return 400, {"error": f"unknown settings {unknown}", "known": sorted(DEFAULT_SETTINGS)}
            new = {}
            for k, v in body.items():
                d = DEFAULT_SETTINGS[k]
                if isinstance(d, bool):
                    v = bool(v)
                elif isinstance(d, int):
                    v = int(v) if isinstance(v, bool) else (float(v) if isinstance(v, str) else v)
                    if not isinstance(v, (int, float)):
                        raise TypeError(f"{k} must be a number")
                elif isinstance(d, str):
                    v = "" if v is None or v is False else str(v)
                new[k] = v
            with STATE.lock:
                STATE.settings.update(new)
        with STATE.lock:
            return 200, dict(STATE.settings)

    @staticmethod
    def admin_revoke(method, sub, body, query):
        return Request.revoke_or_expire("revoke", method, body)

    @staticmethod
    def admin_expire(method, sub, body, query):
        return Request.revoke_or_expire("expire", method, body)

    @staticmethod
    def revoke_or_expire(name: str, method: str, body: dict):
        """revoke: {"user"} | {"client_id"} | {"uti"} | {"all": true}: access and refresh tokens stop
        working (a user revoke also kills that user's unredeemed codes and approved device codes).
        expire: the same selectors (none = all) and {"access": true, "refresh": false, "codes": false,
        "device": false} for what to expire."""
        if method != "POST":
            return 405, {"error": "POST only"}
        sel_all = bool(body.get("all"))
        cid = (body.get("client_id") or "").lower()
        upn = (body.get("user") or "").lower()
        uti = body.get("uti") or ""
        if not (sel_all or cid or upn or uti):
            if name == "revoke":
                return 400, {"error": "give user, client_id, uti or all"}
            sel_all = True

        def match(rec_client, rec_user, rec_uti=None):
            return sel_all or (cid and rec_client.lower() == cid) or (upn and (rec_user or "").lower() == upn) \
                or (uti and rec_uti == uti)
        t = time.time()
        with STATE.lock:
            if name == "revoke":
                users = 0
                if upn and STATE.find_user(upn):
                    STATE.find_user(upn)["tokens_valid_from"] = t
                    users = 1
                n = m = 0
                for rec in STATE.tokens.values():
                    if match(rec["client_id"], rec["user"], rec["uti"]):
                        rec["revoked"] = True
                        n += 1
                for rec in STATE.refresh.values():
                    if not uti and match(rec["client_id"], rec["user"]):
                        rec["revoked"] = True
                        m += 1
                return 200, {"revoked": n, "refresh_revoked": m, "users_revoked": users}
            out = {"expired": 0, "refresh_expired": 0, "codes_expired": 0, "device_codes_expired": 0}
            if body.get("access", True):
                for rec in STATE.tokens.values():
                    if match(rec["client_id"], rec["user"], rec["uti"]):
                        rec["exp"] = min(rec["exp"], now() - 1)
                        out["expired"] += 1
            if not uti and body.get("refresh", False):
                for rec in STATE.refresh.values():
                    if match(rec["client_id"], rec["user"]):
                        rec["expired"] = True
                        out["refresh_expired"] += 1
            if not uti and body.get("codes", False):
                for rec in STATE.codes.values():
                    if match(rec["client_id"], rec["user"]) and not rec["redeemed"]:
                        rec["exp"] = min(rec["exp"], t - 1)
                        out["codes_expired"] += 1
            if not uti and body.get("device", False):
                for rec in STATE.devices.values():
                    if match(rec["client_id"], rec["user"]) and rec["status"] in ("pending", "approved"):
                        rec["exp"] = min(rec["exp"], t - 1)
                        out["device_codes_expired"] += 1
            return 200, out

    @staticmethod
    def admin_tokens(method, sub, body, query):
        limit = int(query.get("limit", "100"))
        with STATE.lock:
            recs = sorted(STATE.tokens.values(), key=lambda r: r["iat_f"])[-limit:]
            rts = sorted(STATE.refresh.values(), key=lambda r: r["iat"])[-limit:]
            return 200, {"tokens": copy.deepcopy(recs), "refresh_tokens": copy.deepcopy(rts)}

    @staticmethod
    def admin_directory(method, sub, body, query):
        with STATE.lock:
            return 200, {"tenants": [
                {"name": t["name"], "id": t["id"], "domains": t.get("domains", []),
                 "clients": [c["client_id"] for c in t.get("clients", [])],
                 "client_details": [public_client(c) for c in t.get("clients", [])],
                 "users": [public_user(u) for u in STATE.users.values() if u["tenant_id"] == t["id"]]}
                for t in STATE.config["tenants"]]}

    @staticmethod
    def admin_user(method, sub, body, query):
        """GET ?upn= (one) or all; POST {"upn", ...} adds or modifies; DELETE {"upn"} or ?upn=."""
        upn = (body.get("upn") or query.get("upn") or sub or "").strip()
        with STATE.lock:
            if method == "GET":
                if not upn:
                    return 200, {"users": [public_user(u) for u in STATE.users.values()]}
                u = STATE.find_user(upn)
                return (200, {"user": public_user(u)}) if u else (404, {"error": f"no user {upn}"})
            if not upn:
                return 400, {"error": "upn required"}
            if method == "DELETE":
                u = STATE.users.pop(upn.lower(), None)
                return (200, {"deleted": u["upn"]}) if u else (404, {"error": f"no user {upn}"})
            if method != "POST":
                return 405, {"error": "GET, POST or DELETE"}
            unknown = [k for k in body if k not in USER_FIELDS + ("tenant", "unlock")]
            if unknown:
                return 400, {"error": f"unknown fields {unknown}", "known": list(USER_FIELDS) + ["tenant", "unlock"]}
            u = STATE.find_user(upn)
            created = u is None
            if created:
                domain = upn.rpartition("@")[2]
                tenant = STATE.find_tenant(body["tenant"]) if body.get("tenant") else \
                    (STATE.find_tenant(domain) or STATE.config["tenants"][0])
                if tenant is None:
                    return 400, {"error": f"no tenant {body.get('tenant')}"}
                spec = {k: v for k, v in body.items() if k in USER_FIELDS}
                spec.setdefault("password", "pw." + secrets.token_urlsafe(9))
                u = new_user(spec, tenant)
                STATE.users[upn.lower()] = u
            else:
                for k, v in body.items():
                    if k == "password":
                        u["password"] = str(v)
                        u["failed_logins"], u["locked_until"] = 0, 0.0
                    elif k in ("disabled", "mfa_required"):
                        u[k] = bool(v)
                    elif k == "consented_scopes":
                        u[k] = [short_scope(x) for x in v]
                    elif k == "display_name":
                        u[k] = str(v)
                    elif k == "unlock" and v:
                        u["failed_logins"], u["locked_until"] = 0, 0.0
                    elif k == "oid" and v != u["oid"]:
                        return 400, {"error": "oid cannot be changed"}
                    elif k == "tenant" and (STATE.find_tenant(str(v)) or {}).get("id") != u["tenant_id"]:
                        return 400, {"error": "tenant cannot be changed (delete and add the user)"}
            return 200, {"user": public_user(u), "created": created}

    @staticmethod
    def admin_client(method, sub, body, query):
        """GET ?client_id= (one) or all; POST {"client_id", ...} adds or modifies an app registration."""
        cid = (body.get("client_id") or query.get("client_id") or sub or "").strip()
        if method == "GET":
            if not cid:
                return 200, {"clients": [public_client(c) for t in STATE.config["tenants"] for c in t["clients"]]}
            _, c = STATE.find_client(cid)
            return (200, {"client": public_client(c)}) if c else (404, {"error": f"no client {cid}"})
        if method != "POST":
            return 405, {"error": "GET or POST"}
        if not cid:
            return 400, {"error": "client_id required"}
        allowed = ("client_id", "tenant", "client_secret", "name", "roles", "redirect_uris", "public_client",
                   "certificate", "certificates", "delegated_permissions")
        unknown = [k for k in body if k not in allowed]
        if unknown:
            return 400, {"error": f"unknown fields {unknown}", "known": list(allowed)}
        spec = {k: v for k, v in body.items() if k != "tenant"}
        if spec.get("certificate") or spec.get("certificates"):
            load_certificates(spec.get("certificates") or spec.get("certificate"))   # 400 when unusable
        if "delegated_permissions" in spec:
            spec["delegated_permissions"] = [short_scope(x) for x in spec["delegated_permissions"]]
        with STATE.lock:
            owner, c = STATE.find_client(cid)
            created = c is None
            if created:
                tenant = STATE.find_tenant(body["tenant"]) if body.get("tenant") else STATE.config["tenants"][0]
                if tenant is None:
                    return 400, {"error": f"no tenant {body.get('tenant')}"}
                c = {"client_id": cid, "client_secret": "", "name": cid, "roles": list(APP_ROLES)}
                tenant["clients"].append(c)
            if "certificate" in spec or "certificates" in spec:
                c.pop("certificate", None)
                c.pop("certificates", None)
            c.update(spec)
            return 200, {"client": public_client(c), "created": created}

    @staticmethod
    def admin_device(method, sub, body, query):
        """GET lists device codes; POST approve {"user_code"?, "user"} / deny {"user_code"?}
        (no user_code = the newest pending one)."""
        with STATE.lock:
            if method == "GET" and not sub:
                recs = sorted(STATE.devices.values(), key=lambda d: d["created"], reverse=True)
                return 200, {"device_codes": [device_public(d) for d in recs]}
            if method != "POST" or sub not in ("approve", "deny"):
                return 404, {"error": f"unknown admin endpoint {method} /_admin/device/{sub}"}
            rec = find_device(body.get("user_code"))
            if rec is None:
                return 404, {"error": f"no device code {body.get('user_code', '(newest pending)')}"}
            if sub == "deny":
                if rec["status"] != "pending":
                    return 409, {"error": f"device code is {rec['status']}"}
                rec["status"] = "denied"
                return 200, {"device_code": device_public(rec)}
            user = STATE.find_user(body.get("user"))
            if user is None:
                return 404, {"error": f"no user {body.get('user')}"}
            amr = body.get("amr") or (["pwd", "mfa"] if user["mfa_required"] else ["pwd"])
            err = approve_device(rec, user, amr)
            if err:
                return 409, {"error": err}
            return 200, {"device_code": device_public(rec)}


class _NullWriter:
    closed = False

    def write(self, data):
        return len(data)

    def flush(self):
        pass

    def close(self):
        pass


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, handler, ctx: ssl.SSLContext):
        self.ctx = ctx
        super().__init__(addr, handler)

    def finish_request(self, request, client_address):
        # TLS handshake in the worker thread, so a silent TCP probe cannot block accept().
        request.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            tls.settimeout(None)
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, ssl.SSLError, socket.timeout)):
            log(f"connection error from {client_address}: {exc!r}")


def public_client(c: dict) -> dict:
    try:
        certs = [{k: x[k] for k in ("x5t", "x5t_s256", "subject")} for x in client_certs(c)]
    except (OSError, ValueError) as exc:
        certs = [{"error": str(exc)}]
    return {"client_id": c["client_id"], "name": c.get("name", ""), "roles": c.get("roles", []),
            "has_secret": bool(c.get("client_secret")), "public_client": c.get("public_client", True),
            "redirect_uris": c.get("redirect_uris", DEFAULT_REDIRECT_URIS), "certificates": certs,
            "delegated_permissions": c.get("delegated_permissions", DEFAULT_CONSENT)}


def load_config(path: str | None) -> dict:
    """Tenants: {name, id, domains, clients: [{client_id, client_secret, name, roles, redirect_uris,
    public_client, certificate(s), delegated_permissions}], users: [{upn, password, disabled,
    mfa_required, consented_scopes, display_name}], seed_users}. A tenant with no users gets SEED_USERS
    (unless "seed_users": false)."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    if path:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    for t in cfg.get("tenants", []):
        t.setdefault("domains", [t["name"]])
        t.setdefault("clients", [])
        t.setdefault("users", [])
        if not t["users"] and t.get("seed_users", True):
            t["users"] = seed_users(t)
        for c in t["clients"]:
            c.setdefault("roles", list(APP_ROLES))
    cfg.setdefault("settings", {})
    return cfg


def main(argv=None) -> int:
    global STATE, LOG_FILE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file")
    ap.add_argument("--cert", required=True, help="PEM chain (leaf first)")
    ap.add_argument("--key", required=True)
    ap.add_argument("--config", help="JSON: {tenants:[{name,id,domains,clients:[{client_id,client_secret,roles}]}]}")
    ap.add_argument("--log", help="log file (default stderr)")
    args = ap.parse_args(argv)

    if args.log:
        LOG_FILE = open(args.log, "a", buffering=1, encoding="utf-8")
    STATE = State(load_config(args.config))

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(args.cert, args.key)
    server = TLSServer((args.host, args.port), Request, ctx)
    port = server.server_address[1]
    if args.port_file:
        tmp = f"{args.port_file}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.replace(tmp, args.port_file)

    def on_term(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    log(f"listening on https://{args.host}:{port} pid={os.getpid()} tenants="
        f"{','.join(t['name'] for t in STATE.config['tenants'])}")
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
