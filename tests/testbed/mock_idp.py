#!/usr/bin/env python3
"""Mock Microsoft identity platform (Entra ID v2.0) for the xoauth-proxy test bed.

Python 3 stdlib only. A threaded HTTPS server on loopback that issues HS256 JWT access tokens
and answers token introspection for Dovecot's oauth2 passdb.

Endpoints
  POST /{tenant}/oauth2/v2.0/token        form-urlencoded; grants dispatched via GRANTS
  GET  /{tenant}/v2.0/.well-known/openid-configuration
  POST /introspect  (form token=...), GET /introspect?token=..., or Authorization: Bearer
  GET  /health
  Admin (loopback only, JSON):
  GET  /_admin/stats            POST /_admin/reset {"what": "stats|faults|config|tokens|all"}
  POST /_admin/fail {...}       GET|DELETE /_admin/fail
  GET|POST /_admin/config {...}
  POST /_admin/revoke {...}     POST /_admin/expire {...}     GET /_admin/tokens

Start:  mock_idp.py --cert server.pem --key server.key [--config cfg.json] [--port 0]
                    [--port-file FILE] [--log FILE]
No token or secret is ever logged.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as _dt
import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import signal
import socket
import ssl
import struct
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

# Which role / delegated scope grants which Dovecot service (X-Dovecot-Auth-Service).
SERVICE_PERMISSIONS = {
    "imap": ("IMAP.AccessAsApp", "IMAP.AccessAsUser.All"),
    "pop3": ("POP.AccessAsApp", "POP.AccessAsUser.All"),
    "smtp": ("SMTP.SendAsApp", "SMTP.Send"),
}

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


class OAuthError(Exception):
    """A Microsoft-shaped OAuth error response."""

    def __init__(self, status: int, error: str, code: int | None, text: str, suberror: str | None = None,
                 headers: dict | None = None):
        super().__init__(f"{error} {code}")
        self.status = status
        self.error = error
        self.code = code
        self.text = text
        self.suberror = suberror
        self.headers = headers or {}


def aad_error(status: int, error: str, code: int, **fmt) -> OAuthError:
    return OAuthError(status, error, code, AADSTS_TEXT.get(code, "Error.").format(**fmt))


class State:
    """All mutable mock state, guarded by one lock."""

    def __init__(self, config: dict):
        self.lock = threading.Lock()
        self.key = secrets.token_bytes(32)
        self.config = config
        self.settings = dict(DEFAULT_SETTINGS)
        self.settings.update(config.get("settings", {}))
        self.tokens: dict[str, dict] = {}       # uti -> record
        self.faults: list[dict] = []
        self.reset_stats()

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
            "introspection": {"requests": 0, "active": 0, "inactive": 0, "reasons": {}, "by_service": {},
                              "faults_injected": 0},
        }

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


STATE: State  # set in main()
LOG_LOCK = threading.Lock()
LOG_FILE = sys.stderr


def log(msg: str):
    with LOG_LOCK:
        print(f"{ms_timestamp()} mock_idp: {msg}", file=LOG_FILE, flush=True)


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


def mint_access_token(tenant: dict, client: dict, *, roles=None, user=None, scp=None) -> tuple[str, dict]:
    """Creates and records an access token. Returns (jwt, record)."""
    s = STATE.settings
    t = now()
    uti = b64url(secrets.token_bytes(16))
    claims = {
        "aud": EXO_AUDIENCE,
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
    else:  # delegated (for future grants)
        claims.update({"upn": user["upn"], "preferred_username": user["upn"], "oid": user.get("oid", ""),
                       "sub": user.get("oid", ""), "scp": " ".join(scp or []), "idtyp": "user"})
    token = jwt_encode(claims)
    target = int(s.get("token_size") or 0)
    if target and len(token) < target - 16:
        claims["xms_pad"] = "p" * max(0, (target - len(token)) * 3 // 4 - 12)
        token = jwt_encode(claims)
    record = {
        "uti": uti, "kind": "app" if user is None else "user", "client_id": client["client_id"],
        "tenant_id": tenant["id"], "tenant": tenant["name"], "iat": t, "exp": claims["exp"],
        "roles": claims.get("roles", []), "scp": claims.get("scp", ""), "user": user["upn"] if user else None,
        "revoked": False, "size": len(token),
    }
    with STATE.lock:
        STATE.tokens[uti] = record
        STATE.stats["tokens_issued"] += 1
        # Keep memory bounded in long runs: drop the oldest long-expired records.
        if len(STATE.tokens) > 20000:
            for k in [k for k, v in STATE.tokens.items() if v["exp"] < t - 3600][:5000]:
                del STATE.tokens[k]
    return token, record


# --- grants -----------------------------------------------------------------------------------------
def authenticate_client(req: "Request", tenant: dict, form: dict) -> dict:
    """Confidential-client authentication (client_secret in the body or HTTP Basic)."""
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
    if client is None or owner is not tenant:
        raise aad_error(400, "unauthorized_client", 700016, client_id=client_id, tenant=tenant["name"])
    if not secret and not form.get("client_assertion"):
        raise aad_error(401, "invalid_client", 7000218)
    if secret is None or not hmac.compare_digest(secret.encode(), client.get("client_secret", "").encode()):
        raise aad_error(401, "invalid_client", 7000215, client_id=client_id)
    return client


def grant_client_credentials(req: "Request", tenant: dict | None, alias: str | None, form: dict) -> dict:
    if tenant is None:  # common / organizations / consumers
        raise aad_error(400, "invalid_request", 9001023)
    client = authenticate_client(req, tenant, form)
    scope = form.get("scope")
    if scope is None:
        raise aad_error(400, "invalid_request", 900144, param="scope")
    if scope.strip() != CCG_SCOPE:
        raise aad_error(400, "invalid_scope", 70011, scope=scope)
    token, rec = mint_access_token(tenant, client, roles=client.get("roles", APP_ROLES))
    s = STATE.settings
    return {"token_type": "Bearer", "expires_in": int(s["token_lifetime"]),
            "ext_expires_in": int(s["ext_token_lifetime"]), "access_token": token}


# grant_type -> handler(req, tenant_or_None, alias_or_None, form) -> success JSON (raises OAuthError).
# Later: "password", "refresh_token" (rotation + grace), "authorization_code" (PKCE),
# "urn:ietf:params:oauth:grant-type:device_code".
GRANTS = {
    "client_credentials": grant_client_credentials,
}


# --- faults --------------------------------------------------------------------------------------------
FAULT_DEFAULTS = {
    429: ("temporarily_unavailable", 50196),
    500: ("server_error", 90033),
    502: ("temporarily_unavailable", 90033),
    503: ("temporarily_unavailable", 90033),
    504: ("temporarily_unavailable", 90033),
}


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
    if f["endpoint"] not in ("token", "introspect", "any"):
        raise ValueError("endpoint must be token, introspect or any")
    if f["retry_after"] is None and f["status"] == 429:
        f["retry_after"] = 60
    f["remaining"] = f["count"]
    return f


# --- HTTP ------------------------------------------------------------------------------------------------
class Request(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "mock-idp/1.0"

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
        headers = {"x-ms-request-id": trace_id, **e.headers}
        if self.headers.get("client-request-id"):
            headers["client-request-id"] = corr
        self.send_json(e.status, body, headers=headers)

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
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        })

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
            if endpoint == "token":
                STATE.stats["faults_injected"] += 1
                key = f"{grant}:injected_{'drop' if fault['drop'] else fault['status']}"
                STATE.stats["errors"][key] = STATE.stats["errors"].get(key, 0) + 1
            else:
                STATE.stats["introspection"]["faults_injected"] += 1
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
            "exp": rec["exp"], "iat": rec["iat"], "aud": EXO_AUDIENCE, "tid": rec["tenant_id"],
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
        try:
            if method in ("POST", "PUT"):
                body = self.json_body()
            else:
                self.read_body()
                body = {}
        except ValueError as exc:
            self.send_json(400, {"error": f"bad JSON: {exc}"})
            return
        try:
            if name == "stats" and method == "GET":
                with STATE.lock:
                    out = copy.deepcopy(STATE.stats)
                    out["pending_faults"] = sum(f["remaining"] for f in STATE.faults)
                self.send_json(200, out)
            elif name == "reset" and method == "POST":
                what = body.get("what", "stats,faults")
                what = set(what if isinstance(what, list) else str(what).split(","))
                if "all" in what:
                    what = {"stats", "faults", "config", "tokens"}
                with STATE.lock:
                    if "stats" in what:
                        STATE.reset_stats()
                    if "faults" in what:
                        STATE.faults = []
                    if "config" in what:
                        STATE.settings = dict(DEFAULT_SETTINGS)
                        STATE.settings.update(STATE.config.get("settings", {}))
                    if "tokens" in what:
                        STATE.tokens.clear()
                self.send_json(200, {"reset": sorted(what)})
            elif name == "fail":
                if method == "POST":
                    specs = body.get("faults") if "faults" in body else [body]
                    new = [normalize_fault(s) for s in specs]
                    with STATE.lock:
                        if body.get("replace", False):
                            STATE.faults = []
                        STATE.faults.extend(new)
                        out = copy.deepcopy(STATE.faults)
                    self.send_json(200, {"faults": out})
                elif method == "DELETE":
                    with STATE.lock:
                        STATE.faults = []
                    self.send_json(200, {"faults": []})
                else:
                    with STATE.lock:
                        self.send_json(200, {"faults": copy.deepcopy(STATE.faults)})
            elif name == "config":
                if method == "POST":
                    unknown = [k for k in body if k not in DEFAULT_SETTINGS]
                    if unknown:
                        self.send_json(400, {"error": f"unknown settings {unknown}",
                                             "known": sorted(DEFAULT_SETTINGS)})
                        return
                    with STATE.lock:
                        STATE.settings.update(body)
                with STATE.lock:
                    self.send_json(200, dict(STATE.settings))
            elif name in ("revoke", "expire") and method == "POST":
                n = 0
                with STATE.lock:
                    for rec in STATE.tokens.values():
                        if body.get("all") or \
                           (body.get("client_id") and rec["client_id"].lower() == body["client_id"].lower()) or \
                           (body.get("user") and (rec["user"] or "").lower() == body["user"].lower()) or \
                           (body.get("uti") and rec["uti"] == body["uti"]):
                            if name == "revoke":
                                rec["revoked"] = True
                            else:
                                rec["exp"] = min(rec["exp"], now() - 1)
                            n += 1
                self.send_json(200, {name + "d": n})
            elif name == "tokens" and method == "GET":
                limit = int((urllib.parse.parse_qs(url.query).get("limit") or ["100"])[0])
                with STATE.lock:
                    recs = sorted(STATE.tokens.values(), key=lambda r: r["iat"])[-limit:]
                    self.send_json(200, {"tokens": copy.deepcopy(recs)})
            elif name == "directory" and method == "GET":
                self.send_json(200, {"tenants": [
                    {"name": t["name"], "id": t["id"], "domains": t.get("domains", []),
                     "clients": [c["client_id"] for c in t.get("clients", [])]}
                    for t in STATE.config["tenants"]]})
            else:
                self.send_json(404, {"error": f"unknown admin endpoint {method} /_admin/{name}"})
        except (ValueError, TypeError, KeyError) as exc:
            self.send_json(400, {"error": str(exc)})


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


def load_config(path: str | None) -> dict:
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    if path:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    for t in cfg.get("tenants", []):
        t.setdefault("domains", [t["name"]])
        t.setdefault("clients", [])
        t.setdefault("users", [])
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
