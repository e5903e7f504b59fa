"""Helpers for xoauth-proxy integration tests (Python 3 stdlib only).

- testbed_info(): attach to the running test bed named by $XOAUTH_TESTBED_DIR, or start one
  (in $XOAUTH_TESTBED_DIR if set, else in a temp dir that is stopped and removed at exit).
- proxy_bin(), hash_password(pw): the binary under test ($XOAUTH_PROXY_BIN).
- provider()/listener()/account() + write_config(): a proxy TOML config in a work dir.
- Proxy: start `xoauth-proxy run --config`, wait for its "listening on" lines, stop it, read its log.
- LineClient: a tiny raw IMAP/POP3 line client (one write per line; literals by hand).
- SMTP: smtp_listener() (upstream = a Postfix endpoint from testbed.json), SmtpClient (raw SMTP:
  multi-line replies, hand-made pipelining, STARTTLS, transcript), LogTail (what a server log gained),
  strip_trace_headers() (drop Received/Return-Path/Delivered-To before comparing delivered mail).
- Delegated sign-in (issue 5): every generated config has [proxy] admin_listen = "127.0.0.1:0";
  Proxy.admin_url (from the "admin listening on" log line), admin_json(state_dir), api(proxy, ...),
  http_get(); token_key_file(); mock_* helpers for the mock IdP's admin API; ensure_delegated_clients()
  registers the delegated test apps (a confidential "web" app and a public client) idempotently;
  delegated_provider()/delegated_account(); authorize_url()/follow_authorize() drive the mock's
  /authorize without a browser; AuthorizeCLI runs `xoauth-proxy authorize` interactively.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "testbed"))
import testbed  # noqa: E402

LISTEN_RE = re.compile(r"listening on ([0-9.]+):(\d+) protocol=(\w+)")
ADMIN_RE = re.compile(r"admin listening on (http://[0-9.]+:\d+)")
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# Header of every JWT the mock issues: finding it in a proxy log means a token leaked.
MOCK_JWT_HEADER = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiIsImtpZCI6Im1vY2sifQ"


class HarnessError(RuntimeError):
    pass


# --- test bed ------------------------------------------------------------------------------------------
_TB_LOCK = threading.Lock()
_TB: dict = {}


def testbed_info() -> dict:
    """The test bed's testbed.json dict (started on first use)."""
    with _TB_LOCK:
        if _TB:
            return _TB
        d = os.environ.get("XOAUTH_TESTBED_DIR")
        if d:
            if not testbed.status(d)["running"]:
                testbed.start(d)  # the caller named this dir: leave it running afterwards
            _TB.update(testbed.load_info(d))
        else:
            d = tempfile.mkdtemp(prefix="xoauth-tb-")
            _TB.update(testbed.start(d))

            def _cleanup(d=d):
                _stop_live_proxies()  # atexit runs LIFO: stop proxies before their upstreams
                testbed.stop(d)
                shutil.rmtree(d, ignore_errors=True)
            atexit.register(_cleanup)
        return _TB


def admin(name: str, body: dict | None = None, method: str | None = None) -> dict:
    return testbed.admin(testbed_info(), name, body, method)


def client_ssl_context() -> ssl.SSLContext:
    """Trusts the test CA (for connecting to the proxy's TLS listeners)."""
    return ssl.create_default_context(cafile=testbed_info()["ca_file"])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --- proxy binary -----------------------------------------------------------------------------------------
def proxy_bin() -> str:
    path = os.environ.get("XOAUTH_PROXY_BIN")
    candidates = [path] if path else [os.path.join(REPO, p) for p in
                                      ("build/xoauth-proxy", "build/src/xoauth-proxy", "build/app/xoauth-proxy")]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    raise HarnessError(f"xoauth-proxy binary not found (set XOAUTH_PROXY_BIN); tried {candidates}")


def proxy_env() -> dict:
    """Environment for the proxy: nothing that would make the system trust store include the test CA."""
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    return env


@functools.lru_cache(maxsize=None)
def hash_password(pw: str) -> str:
    r = subprocess.run([proxy_bin(), "hash-password"], input=pw + "\n", capture_output=True, text=True,
                       timeout=60, env=proxy_env())
    out = r.stdout.strip()
    if r.returncode != 0 or not out.startswith("$argon2id$"):
        raise HarnessError(f"hash-password failed (rc={r.returncode}): stdout={out!r} stderr={r.stderr!r}")
    return out


def run_cli(*args: str, timeout: float = 30, input_text: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([proxy_bin(), *args], capture_output=True, text=True, timeout=timeout,
                          input=input_text, env=proxy_env(), stdin=None if input_text else subprocess.DEVNULL)


# --- config ------------------------------------------------------------------------------------------------
def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    s = str(v)
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_table(header: str, kv: dict) -> str:
    lines = [header]
    for k, v in kv.items():
        if v is None:
            continue
        lines.append(f"{k} = {toml_value(v)}")
    return "\n".join(lines) + "\n"


def provider(workdir: str, name: str = "contoso", **over) -> dict:
    """A client_credentials provider against the mock IdP; the secret goes into a 0600 file."""
    tb = testbed_info()
    secret_file = os.path.join(workdir, f"{name}.secret")
    secret = over.pop("client_secret_value", tb["client_secret"])
    with open(secret_file, "w") as f:
        f.write(secret + "\n")
    os.chmod(secret_file, 0o600)
    p = {"name": name, "tenant": tb["tenant"], "client_id": tb["client_id"],
         "client_secret_file": secret_file, "authority": tb["authority"], "ca_file": tb["ca_file"]}
    p.update(over)
    return p


def listener(tls: str = "none", upstream: str = "imaps", **over) -> dict:
    """An IMAP listener on 127.0.0.1:0. upstream names a Dovecot endpoint from testbed.json
    (imaps, imap, imap_starttls_forced, imaps_wronghost) or is a literal host:port."""
    tb = testbed_info()
    ep = tb["dovecot"].get(upstream)
    d = {"protocol": "imap", "listen": "127.0.0.1:0", "tls": tls}
    if tls != "none":
        d["cert_file"] = tb["certs"]["server"]["cert"]
        d["key_file"] = tb["certs"]["server"]["key"]
    if ep:
        d["upstream"] = ep["address"]
        d["upstream_tls"] = ep["tls"]
    else:
        d["upstream"] = upstream
        d["upstream_tls"] = "implicit"
    d["upstream_ca_file"] = tb["ca_file"]
    d.update(over)
    return {k: v for k, v in d.items() if v is not None}


def account(login: str, password: str, provider_name: str = "contoso", mailbox: str | None = None,
            flow: str = "client_credentials", **over) -> dict:
    d = {"login": login, "provider": provider_name, "flow": flow, "mailbox": mailbox,
         "password_hash": hash_password(password)}
    d.update(over)
    return d


def write_config(workdir: str, providers: list[dict], listeners: list[dict], accounts: list[dict],
                 proxy: dict | None = None, filename: str = "xoauth-proxy.toml") -> str:
    state = os.path.join(workdir, "state")
    os.makedirs(state, mode=0o700, exist_ok=True)
    px = {"state_dir": state, "log_format": "text", "log_level": "debug", "admin_listen": "127.0.0.1:0"}
    px.update(proxy or {})
    parts = [toml_table("[proxy]", px)]
    parts += [toml_table("[[provider]]", p) for p in providers]
    parts += [toml_table("[[listener]]", l) for l in listeners]
    parts += [toml_table("[[account]]", a) for a in accounts]
    path = os.path.join(workdir, filename)
    with open(path, "w") as f:
        f.write("\n".join(parts))
    os.chmod(path, 0o600)
    return path


# --- proxy process -------------------------------------------------------------------------------------------
_LIVE_PROXIES: "set[Proxy]" = set()


@atexit.register
def _stop_live_proxies():
    for p in list(_LIVE_PROXIES):
        p.stop()


class Proxy:
    """One `xoauth-proxy run` process. ports[i] is the port of the i-th [[listener]].
    admin_url is the admin HTTP server's base URL from the "admin listening on" log line of the
    current run (None if absent). The object can be started again after stop()/kill(): each run
    appends to proxy.log and only that run's lines are parsed."""

    def __init__(self, config_path: str, n_listeners: int, workdir: str | None = None,
                 wait_admin: bool = False):
        self.config_path = config_path
        self.n_listeners = n_listeners
        self.workdir = workdir or os.path.dirname(config_path)
        self.log_path = os.path.join(self.workdir, "proxy.log")
        self.wait_admin = wait_admin
        self.proc: subprocess.Popen | None = None
        self.listeners: list[tuple[str, int, str]] = []
        self.returncode: int | None = None
        self.admin_url: str | None = None
        self.log_offset = 0  # where the current run's lines start in proxy.log
        self.state_dir = config_state_dir(config_path)

    @property
    def ports(self) -> list[int]:
        return [p for _, p, _ in self.listeners]

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = READY_TIMEOUT) -> "Proxy":
        try:
            self.log_offset = os.path.getsize(self.log_path)
        except FileNotFoundError:
            self.log_offset = 0
        self.admin_url = None
        self.listeners = []
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([proxy_bin(), "run", "--config", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                     env=proxy_env(), start_new_session=True)
        logf.close()
        _LIVE_PROXIES.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.run_log()
            self.listeners = [(h, int(p), proto) for h, p, proto in LISTEN_RE.findall(text)]
            m = ADMIN_RE.search(text)
            self.admin_url = m.group(1) if m else None
            if len(self.listeners) >= self.n_listeners and (self.admin_url or not self.wait_admin):
                self.listeners = self.listeners[:self.n_listeners]
                return self
            if self.proc.poll() is not None:
                raise HarnessError(f"proxy exited with {self.proc.returncode} before it was ready; log:\n"
                                   f"{self.run_log()}")
            time.sleep(0.05)
        self.stop()
        raise HarnessError(f"proxy not ready within {timeout}s ({len(self.listeners)}/{self.n_listeners} "
                           f"listeners, admin {self.admin_url or 'not seen' if self.wait_admin else 'not needed'}); "
                           f"log:\n{self.run_log()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.returncode = self.proc.returncode
        self.proc = None
        _LIVE_PROXIES.discard(self)
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL (a crash: no shutdown code runs) and reap."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.returncode = self.proc.returncode
        self.proc = None
        _LIVE_PROXIES.discard(self)
        return self.returncode

    def restart(self, timeout: float = READY_TIMEOUT) -> "Proxy":
        self.stop()
        return self.start(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        """The whole proxy.log (every run)."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def run_log(self) -> str:
        """What the current (or last) run logged."""
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                f.seek(self.log_offset)
                return f.read()
        except FileNotFoundError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def config_state_dir(config_path: str) -> str | None:
    """[proxy] state_dir of a config file (None if it cannot be read)."""
    try:
        import tomllib
        with open(config_path, "rb") as f:
            return tomllib.load(f).get("proxy", {}).get("state_dir")
    except (ImportError, OSError, ValueError):
        try:
            with open(config_path, encoding="utf-8") as f:
                m = re.search(r'^state_dir\s*=\s*"([^"]*)"', f.read(), re.M)
            return m.group(1) if m else None
        except OSError:
            return None


def wait_until(fn, timeout: float, what: str, interval: float = 0.05):
    """Polls fn() until it returns a truthy value (returned); AssertionError naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value {last!r})")
        time.sleep(interval)


# --- raw line client -----------------------------------------------------------------------------------------
class LineClient:
    """Raw CRLF line client for IMAP/POP3 with optional TLS; every send() is one write."""

    def __init__(self, port: int, host: str = "127.0.0.1", tls: bool = False,
                 ctx: ssl.SSLContext | None = None, timeout: float = 30.0):
        self.host = host
        self.ctx = ctx or client_ssl_context()
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            self.sock = self.ctx.wrap_socket(self.sock, server_hostname=host)
        self.f = self.sock.makefile("rb")
        self.greeting = self.readline()

    def readline(self) -> str:
        line = self.f.readline(1 << 20)
        if not line:
            raise EOFError("connection closed by peer")
        return line.decode("utf-8", "replace").rstrip("\r\n")

    def send_raw(self, data: bytes):
        self.sock.sendall(data)

    def send(self, line: str):
        self.sock.sendall(line.encode() + b"\r\n")

    def read_until_tag(self, tag: str) -> tuple[str, list[str]]:
        """Reads lines until the tagged response; returns (text after the tag, earlier lines)."""
        lines = []
        for _ in range(100000):
            line = self.readline()
            if line.startswith(tag + " "):
                return line[len(tag) + 1:], lines
            lines.append(line)
        raise AssertionError("too many lines without a tagged response")

    def cmd(self, tag: str, text: str) -> tuple[str, list[str]]:
        self.send(f"{tag} {text}")
        return self.read_until_tag(tag)

    def starttls(self, tag: str = "S1"):
        resp, _ = self.cmd(tag, "STARTTLS")
        if not resp.startswith("OK"):
            raise AssertionError(f"STARTTLS refused: {resp}")
        self.sock = self.ctx.wrap_socket(self.sock, server_hostname=self.host)
        self.f = self.sock.makefile("rb")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --- SMTP (issue 3) -------------------------------------------------------------------------------------------
def smtp_listener(tls: str = "none", upstream: str = "submission", **over) -> dict:
    """An SMTP listener on 127.0.0.1:0. upstream names a Postfix endpoint from testbed.json
    (submission = STARTTLS, smtps = implicit TLS, submission_wronghost = 127.0.0.3 with a
    certificate for another name) or is a literal host:port (then upstream_tls must be given)."""
    tb = testbed_info()
    ep = tb["postfix"].get(upstream)
    d = {"protocol": "smtp", "listen": "127.0.0.1:0", "tls": tls}
    if tls != "none":
        d["cert_file"] = tb["certs"]["server"]["cert"]
        d["key_file"] = tb["certs"]["server"]["key"]
    if ep:
        d["upstream"] = ep["address"]
        d["upstream_tls"] = ep["tls"]
    else:
        d["upstream"] = upstream
    d["upstream_ca_file"] = tb["ca_file"]
    d.update(over)
    return {k: v for k, v in d.items() if v is not None}


class LogTail:
    """What a log file (e.g. testbed.json logs.postfix / logs.dovecot) gained since construction."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.offset = os.path.getsize(path)
        except FileNotFoundError:
            self.offset = 0

    def new(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                f.seek(self.offset)
                return f.read()
        except FileNotFoundError:
            return ""


class SmtpReply:
    def __init__(self, code: int, lines: list[str]):
        self.code = code
        self.lines = lines  # text after "NNN-" / "NNN "

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __repr__(self):
        return f"SmtpReply({self.code}, {self.lines!r})"


class SmtpClient:
    """Raw SMTP client: multi-line replies, pipelining by hand (send_raw), STARTTLS; bounded reads."""

    def __init__(self, port: int, host: str = "127.0.0.1", tls: bool = False,
                 ctx: ssl.SSLContext | None = None, timeout: float = 30.0):
        self.host = host
        self.ctx = ctx or client_ssl_context()
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls:
            self.sock = self.ctx.wrap_socket(self.sock, server_hostname=host)
        self.f = self.sock.makefile("rb")
        self.transcript: list[str] = []
        self.greeting = self.reply()

    def readline(self) -> str:
        line = self.f.readline(1 << 16)
        if not line:
            raise EOFError("connection closed by peer")
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        self.transcript.append("S: " + text)
        return text

    def reply(self) -> SmtpReply:
        lines = []
        for _ in range(1000):
            line = self.readline()
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3] not in " -"):
                raise AssertionError(f"malformed SMTP reply line {line!r}")
            lines.append(line[4:])
            if len(line) == 3 or line[3] == " ":
                return SmtpReply(int(line[:3]), lines)
        raise AssertionError("reply has too many lines")

    def send_raw(self, data: bytes):
        self.transcript.append("C: " + data[:300].decode("latin-1").replace("\r\n", "\\r\\n")
                               + ("..." if len(data) > 300 else ""))
        self.sock.sendall(data)

    def send(self, line: str):
        self.send_raw(line.encode() + b"\r\n")

    def cmd(self, line: str) -> SmtpReply:
        self.send(line)
        return self.reply()

    def ehlo(self, name: str = "client.example") -> SmtpReply:
        return self.cmd(f"EHLO {name}")

    def starttls(self) -> SmtpReply:
        r = self.cmd("STARTTLS")
        if r.code != 220:
            raise AssertionError(f"STARTTLS refused: {r}")
        self.sock = self.ctx.wrap_socket(self.sock, server_hostname=self.host)
        self.f = self.sock.makefile("rb")
        return r

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the peer closes the connection (EOF or reset) within timeout."""
        self.sock.settimeout(timeout)
        try:
            return self.f.read(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True
        except (socket.timeout, TimeoutError):
            return False

    def close(self):
        # The makefile() object holds a reference: the descriptor closes only when both are closed.
        for obj in (self.f, self.sock):
            try:
                obj.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# Trace header fields added by Postfix (Received) and Dovecot LMTP (Return-Path, Delivered-To, Received).
TRACE_HEADERS = ("received", "return-path", "delivered-to", "x-original-to")


def strip_trace_headers(msg: bytes) -> bytes:
    """The message without the trace header fields the servers added (see TRACE_HEADERS)."""
    head, sep, body = msg.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    kept = [f for f in fields
            if f.split(b":", 1)[0].strip().lower().decode("latin-1") not in TRACE_HEADERS]
    return b"\r\n".join(kept) + sep + body


# --- delegated sign-in (issue 5) ---------------------------------------------------------------------------------
ADMIN_TOKEN_HEADER = "X-Admin-Token"
CALLBACK_PATH = "/sso/oauth_callback"
# Redirect URIs of the delegated test apps. Entra (and the mock) accept http://localhost and
# http://127.0.0.1 redirect URIs on any port, so these cover http://localhost:<admin port>/sso/oauth_callback.
CALLBACK_URIS = ["http://localhost" + CALLBACK_PATH, "http://127.0.0.1" + CALLBACK_PATH]
# public_base_url used by tests of the "browser on another machine" path (nothing listens there).
REMOTE_BASE_URL = "https://mail-proxy.contoso.test:8443"
EXO_DELEGATED_SCOPES = ["IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send"]
# Seeded users of the mock (tests/testbed/mock_idp.py SEED_USERS): their Entra passwords.
ENTRA_PASSWORDS = {
    "alice@contoso.test": "alice.Passw0rd",
    "scanner@contoso.test": "scanner.Passw0rd",
    "receiver@contoso.test": "receiver.Passw0rd",
    "receiver2@contoso.test": "receiver2.Passw0rd",
    "bob@contoso.test": "bob.Passw0rd",        # MFA required: ROPC fails with AADSTS50076
    "carol@contoso.test": "carol.Passw0rd",    # no consent given
}
WEB_CLIENT_ID = "5d2b8c1e-3f4a-4b6c-8d9e-a0b1c2d3e4f5"      # confidential "Web" app (secret)
PUBLIC_CLIENT_ID = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"   # public client (no secret)


def mock_settings(**settings) -> dict:
    """POST /_admin/config (e.g. token_lifetime=5, latency_ms=2000, auto_approve="login_hint")."""
    return admin("config", settings)


def mock_stats() -> dict:
    return admin("stats")


def mock_reset(what: str = "stats,faults") -> dict:
    return admin("reset", {"what": what})


def mock_fail(**spec) -> dict:
    """POST /_admin/fail, e.g. mock_fail(status=503, count=10, endpoint="token", grant_type="refresh_token")."""
    return admin("fail", spec)


def mock_clear_faults() -> dict:
    return admin("fail", method="DELETE")


def mock_revoke(user: str) -> dict:
    return admin("revoke", {"user": user})


def mock_expire(**selectors) -> dict:
    """POST /_admin/expire: e.g. mock_expire(user="alice@contoso.test") expires that user's access tokens."""
    return admin("expire", selectors)


def mock_devices() -> list[dict]:
    return admin("device")["device_codes"]


def mock_device_approve(user: str, user_code: str | None = None) -> dict:
    body = {"user": user}
    if user_code:
        body["user_code"] = user_code
    return admin("device/approve", body)


def mock_register_client(**spec) -> dict:
    return admin("client", spec)["client"]


def grant_count(stats: dict, grant: str, what: str = "requests") -> int:
    """stats["grants"][grant][what] (0 when the grant was never requested)."""
    return int(stats.get("grants", {}).get(grant, {}).get(what, 0))


DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _derived_secret(label: str) -> str:
    # Deterministic per test bed, so every test process registers the same secret (idempotent).
    return "dg~" + hashlib.sha256((testbed_info()["client_secret"] + label).encode()).hexdigest()[:32]


def ensure_delegated_clients() -> dict:
    """Registers (or updates) the delegated test apps at the mock, idempotently, and adds the proxy's
    callback to the default app's redirect URIs (its other URIs kept; client_credentials unaffected).
    Returns {"web": {...}, "public": {...}} with client_id, client_secret (None for the public one)."""
    web = {"client_id": WEB_CLIENT_ID, "client_secret": _derived_secret("web"),
           "name": "xoauth-proxy delegated web app", "redirect_uris": list(CALLBACK_URIS) +
           [REMOTE_BASE_URL + CALLBACK_PATH], "public_client": False,
           "delegated_permissions": list(EXO_DELEGATED_SCOPES), "roles": []}
    pub = {"client_id": PUBLIC_CLIENT_ID, "client_secret": "", "name": "xoauth-proxy public client",
           "redirect_uris": list(CALLBACK_URIS) + [REMOTE_BASE_URL + CALLBACK_PATH], "public_client": True,
           "delegated_permissions": list(EXO_DELEGATED_SCOPES), "roles": []}
    mock_register_client(**web)
    mock_register_client(**pub)
    tb = testbed_info()
    current = admin(f"client?client_id={tb['client_id']}")["client"]["redirect_uris"]
    wanted = list(current) + [u for u in CALLBACK_URIS if u not in current]
    if wanted != current:
        mock_register_client(client_id=tb["client_id"], redirect_uris=wanted)
    return {"web": web, "public": dict(pub, client_secret=None)}


def delegated_provider(workdir: str, kind: str = "web", name: str | None = None, **over) -> dict:
    """A provider for the delegated flows: kind "web" (confidential, secret in a 0600 file) or
    "public" (no client secret: device code and password flows)."""
    tb = testbed_info()
    c = ensure_delegated_clients()[kind]
    name = name or f"deleg-{kind}"
    p = {"name": name, "tenant": tb["tenant"], "client_id": c["client_id"], "authority": tb["authority"],
         "ca_file": tb["ca_file"]}
    if c["client_secret"]:
        secret_file = os.path.join(workdir, f"{name}.secret")
        with open(secret_file, "w") as f:
            f.write(c["client_secret"] + "\n")
        os.chmod(secret_file, 0o600)
        p["client_secret_file"] = secret_file
    p.update(over)
    return p


def delegated_account(login: str, flow: str, provider_name: str, password: str | None = None,
                      mailbox: str | None = None, **over) -> dict:
    """An [[account]] with flow authorization_code / device_code (local password hashed) or
    password (no password_hash: the client's password is the user's Entra password)."""
    d = {"login": login, "provider": provider_name, "flow": flow, "mailbox": mailbox}
    if flow != "password":
        d["password_hash"] = hash_password(password)
    d.update(over)
    return d


def token_key_file(workdir: str, fmt: str = "raw", name: str = "token.key") -> str:
    """A 0600 file with 32 random bytes (fmt "raw") or their 64 hex characters (fmt "hex")."""
    key = os.urandom(32)
    path = os.path.join(workdir, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key if fmt == "raw" else key.hex().encode() + b"\n")
    os.chmod(path, 0o600)
    return path


def admin_json(state_dir: str) -> dict:
    """<state_dir>/admin.json written by a running proxy: {"url", "pid", "token"}."""
    with open(os.path.join(state_dir, "admin.json"), encoding="utf-8") as f:
        return json.load(f)


def http_request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
                 timeout: float = 30.0, follow: bool = True) -> tuple[int, dict, bytes]:
    """A plain HTTP(S) request; returns (status, headers with lower-case names, body); never raises on
    an HTTP error status. follow=False returns a redirect as is."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    handlers = [urllib.request.ProxyHandler({})]
    if not follow:
        handlers.append(NoRedirect())
    if url.startswith("https:"):
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(
            cafile=testbed_info()["ca_file"])))
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def http_get(url: str, **kw) -> tuple[int, dict, bytes]:
    return http_request(url, "GET", **kw)


def api(proxy: "Proxy", method: str, path: str, body: dict | None = None, token: str | None = None,
        timeout: float = 30.0) -> tuple[int, object]:
    """Calls the proxy's admin API with the token from <state_dir>/admin.json (or `token`; "" = none).
    Returns (HTTP status, parsed JSON or the raw text)."""
    if proxy.admin_url is None:
        raise HarnessError("the proxy logged no 'admin listening on' line")
    if token is None:
        token = admin_json(proxy.state_dir)["token"]
    headers = {"Accept": "application/json"}
    if token:
        headers[ADMIN_TOKEN_HEADER] = token
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    status, _, raw = http_request(proxy.admin_url + path, method, data, headers, timeout)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def account_status(proxy: "Proxy", login: str) -> dict:
    status, out = api(proxy, "GET", "/api/accounts/" + urllib.parse.quote(login, safe="@"))
    if status != 200 or not isinstance(out, dict):
        raise AssertionError(f"GET /api/accounts/{login} -> {status} {out!r}")
    return out


def wait_account_state(proxy: "Proxy", login: str, states, timeout: float = 30.0) -> dict:
    """Polls /api/accounts/<login> until its "state" is one of `states`; returns the account JSON."""
    states = (states,) if isinstance(states, str) else tuple(states)
    last: dict = {}

    def check():
        nonlocal last
        last = account_status(proxy, login)
        return last if last.get("state") in states else None
    try:
        return wait_until(check, timeout, f"account {login} in state {states}", interval=0.1)
    except AssertionError as e:
        raise AssertionError(f"{e}; last: {last}") from None


def authorize_url(client_id: str, redirect_uri: str, state: str = "st", scope: str | None = None,
                  login_hint: str | None = None) -> str:
    """A /authorize URL of the mock (for tests of the mock and the browser driver)."""
    tb = testbed_info()
    q = {"client_id": client_id, "response_type": "code", "redirect_uri": redirect_uri, "state": state,
         "response_mode": "query",
         "scope": scope or "offline_access https://outlook.office.com/IMAP.AccessAsUser.All"}
    if login_hint:
        q["login_hint"] = login_hint
    return f"{tb['idp_url']}/{tb['tenant']}/oauth2/v2.0/authorize?" + urllib.parse.urlencode(q)


def follow_authorize(url: str) -> str:
    """Opens an authorize URL as a browser would with the mock's auto_approve on, and returns the
    redirect (the final URL: redirect URI + ?code=...&state=...) without following it."""
    status, headers, body = http_get(url, follow=False)
    if status != 302 or "location" not in headers:
        text = body.decode("utf-8", "replace")
        m = re.search(r'<p id="error"[^>]*>(.*?)</p>', text, re.S)
        raise AssertionError(f"the mock did not redirect (HTTP {status}): "
                             f"{m.group(1) if m else text[:300]!r}; is auto_approve set and does the "
                             f"authorize URL carry login_hint? URL: {url}")
    return headers["location"]


def query_of(url: str) -> dict:
    return {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).items()}


AUTH_URL_RE = re.compile(r"Open this URL in a browser:\s*(\S+)")
DEVICE_RE = re.compile(r"Go to (\S+) and enter the code ([A-Z0-9-]+)")


class AuthorizeCLI:
    """`xoauth-proxy authorize --config FILE ACCOUNT [--device] [--timeout S]` as a child process with
    stdin kept open (for a pasted final URL) and its output collected by a reader thread."""

    def __init__(self, config_path: str, account_login: str, device: bool = False, timeout: int | None = 60,
                 extra: tuple[str, ...] = (), env: dict | None = None):
        args = [proxy_bin(), "authorize", "--config", config_path, account_login]
        if device:
            args.append("--device")
        if timeout is not None:
            args += ["--timeout", str(timeout)]
        args += list(extra)
        self.args = args
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=dict(proxy_env(), **(env or {})),
                                     start_new_session=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        threading.Thread(target=self._pump, name="authorize-cli", daemon=True).start()
        _LIVE_CLIS.add(self)

    def _pump(self):
        for raw in iter(self.proc.stdout.readline, b""):
            with self._cond:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, regex: "re.Pattern[str] | str", timeout: float = 30.0) -> "re.Match[str]":
        """The first output match of regex (waits for it); AssertionError with the output at the deadline
        or when the command exits without printing it."""
        rx = re.compile(regex) if isinstance(regex, str) else regex
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search("\n".join(self.lines))
                if m:
                    return m
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    rc = self.proc.poll()
                    raise AssertionError(f"`{' '.join(self.args[1:])}` did not print /{rx.pattern}/ "
                                         f"({'exited ' + str(rc) if self._eof else f'within {timeout}s'}); "
                                         f"output:\n{chr(10).join(self.lines)}")
                self._cond.wait(min(left, 0.5))

    def authorize_url(self, timeout: float = 30.0) -> str:
        return self.wait_for(AUTH_URL_RE, timeout).group(1)

    def device_prompt(self, timeout: float = 30.0) -> tuple[str, str]:
        m = self.wait_for(DEVICE_RE, timeout)
        return m.group(1), m.group(2)

    def paste(self, text: str):
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 60.0) -> int:
        """Exit status (kills the command at the deadline and raises AssertionError)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"`authorize` still running after {timeout}s; output:\n{self.output}") from None
        with self._cond:  # let the reader drain the last lines
            self._cond.wait_for(lambda: self._eof, 5)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for s in (self.proc.stdin, self.proc.stdout):
            try:
                s.close()
            except OSError:
                pass
        _LIVE_CLIS.discard(self)


_LIVE_CLIS: "set[AuthorizeCLI]" = set()


@atexit.register
def _kill_live_clis():
    for c in list(_LIVE_CLIS):
        c.kill()


# --- shared by the test files ---------------------------------------------------------------------
KEEP_WORKDIRS = os.environ.get("XOAUTH_KEEP_WORKDIRS") == "1"


def new_workdir(owner, prefix: str) -> str:
    """A private (0700) temporary directory removed when `owner` (a TestCase, or a TestCase class
    for class-level setup) cleans up; XOAUTH_KEEP_WORKDIRS=1 keeps it and prints its path."""
    d = tempfile.mkdtemp(prefix=prefix)
    os.chmod(d, 0o700)

    def cleanup():
        if KEEP_WORKDIRS:
            print(f"\n[kept work dir {d}]", file=sys.stderr)
        else:
            shutil.rmtree(d, ignore_errors=True)
    (owner.addClassCleanup if isinstance(owner, type) else owner.addCleanup)(cleanup)
    return d


def run_tests(name: str, check=None) -> int:
    """An integration test file's main(): names the binary under test, attaches to (or starts) the
    test bed, then runs unittest. check(testbed_info) may return a reason not to run (exit 2)."""
    import unittest
    try:
        print(f"[proxy binary: {proxy_bin()}]", file=sys.stderr)
    except HarnessError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    info = testbed_info()
    why = check(info) if check else None
    if why:
        print(f"{name}: {why}", file=sys.stderr)
        return 2
    print(f"[test bed ready in {time.monotonic() - t0:.2f}s]", file=sys.stderr)
    prog = unittest.main(module="__main__", exit=False, verbosity=2)
    return 0 if prog.result.wasSuccessful() else 1
