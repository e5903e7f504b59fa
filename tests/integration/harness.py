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
"""

from __future__ import annotations

import atexit
import functools
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

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "testbed"))
import testbed  # noqa: E402

LISTEN_RE = re.compile(r"listening on ([0-9.]+):(\d+) protocol=(\w+)")
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
    px = {"state_dir": state, "log_format": "text", "log_level": "debug"}
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
    """One `xoauth-proxy run` process. ports[i] is the port of the i-th [[listener]]."""

    def __init__(self, config_path: str, n_listeners: int, workdir: str | None = None):
        self.config_path = config_path
        self.n_listeners = n_listeners
        self.workdir = workdir or os.path.dirname(config_path)
        self.log_path = os.path.join(self.workdir, "proxy.log")
        self.proc: subprocess.Popen | None = None
        self.listeners: list[tuple[str, int, str]] = []
        self.returncode: int | None = None

    @property
    def ports(self) -> list[int]:
        return [p for _, p, _ in self.listeners]

    def start(self, timeout: float = READY_TIMEOUT) -> "Proxy":
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([proxy_bin(), "run", "--config", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                     env=proxy_env(), start_new_session=True)
        logf.close()
        _LIVE_PROXIES.add(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.listeners = [(h, int(p), proto) for h, p, proto in LISTEN_RE.findall(self.log())]
            if len(self.listeners) >= self.n_listeners:
                self.listeners = self.listeners[:self.n_listeners]
                return self
            if self.proc.poll() is not None:
                raise HarnessError(f"proxy exited with {self.proc.returncode} before it was ready; log:\n"
                                   f"{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise HarnessError(f"proxy not ready within {timeout}s ({len(self.listeners)}/{self.n_listeners} "
                           f"listeners); log:\n{self.log()}")

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

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


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
