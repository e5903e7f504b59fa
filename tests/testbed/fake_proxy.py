#!/usr/bin/env python3
"""FAKE stand-in for the xoauth-proxy binary, used only to validate the integration tests and the
harness before the C++ proxy exists. Not the product, not a reference implementation.

    XOAUTH_PROXY_BIN=tests/testbed/fake_proxy.py python3 tests/integration/test_imap.py

Implements the agreed CLI (run/check/hash-password/--version), IMAP only, client_credentials only.
"hash-password" prints a FAKE "$argon2id$" string (PBKDF2 inside; stdlib has no Argon2).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request

CAPS = "IMAP4rev1 SASL-IR LITERAL+ ID IDLE AUTH=PLAIN"
# Deliberate defects, to check that the tests notice them (mutation testing):
# no_single_flight, insecure_upstream, leak_token, same_reply_off
BUGS = set(filter(None, os.environ.get("XOAUTH_FAKE_BUGS", "").split(",")))
LOG_LOCK = threading.Lock()


def log(msg: str):
    with LOG_LOCK:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


# --- passwords --------------------------------------------------------------------------------------
def hash_password(pw: str) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.pbkdf2_hmac("sha256", pw.encode(), salt, 20000)
    b = lambda x: base64.b64encode(x).decode().rstrip("=")  # noqa: E731
    return f"$argon2id$v=19$m=19456,t=2,p=1${b(salt)}${b(dk)}"


def verify_password(pw: str, h: str) -> bool:
    try:
        _, _, _, _, salt, dk = h.split("$")
        pad = lambda x: base64.b64decode(x + "=" * (-len(x) % 4))  # noqa: E731
        return hmac.compare_digest(hashlib.pbkdf2_hmac("sha256", pw.encode(), pad(salt), 20000), pad(dk))
    except ValueError:
        return False


# --- config ---------------------------------------------------------------------------------------------
ALLOWED = {
    "proxy": {"state_dir", "log_format", "log_level"},
    "provider": {"name", "tenant", "client_id", "client_secret_file", "client_secret", "authority", "ca_file"},
    "listener": {"protocol", "listen", "tls", "cert_file", "key_file", "upstream", "upstream_tls",
                 "upstream_ca_file"},
    "account": {"login", "provider", "flow", "mailbox", "password_hash"},
}


def check_config(path: str) -> tuple[dict | None, list[str]]:
    text = open(path, encoding="utf-8").read()
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+), column (\d+)", str(e))
        return None, [f"{path}:{m.group(1) if m else 1}:{m.group(2) if m else 1}: toml: {e}"]
    errors = []
    # Map (section, index, key) -> line by scanning the text (good enough for a fake).
    pos = {}
    sec, counts = None, {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        m = re.match(r"^\[\[(\w+)\]\]$", s) or re.match(r"^\[(\w+)\]$", s)
        if m:
            sec = m.group(1)
            counts[sec] = counts.get(sec, -1) + 1
            continue
        m = re.match(r"^(\w+)\s*=", s)
        if m and sec:
            pos[(sec, counts[sec], m.group(1))] = (n, len(line) - len(line.lstrip()) + 1)

    def err(sec, i, key, msg):
        n, c = pos.get((sec, i, key), (1, 1))
        label = sec if sec == "proxy" else f"{sec}[{i}]"
        errors.append(f"{path}:{n}:{c}: {label}.{key}: {msg}")

    for sec in ALLOWED:
        items = cfg.get(sec, {} if sec == "proxy" else [])
        items = [items] if isinstance(items, dict) else items
        for i, t in enumerate(items):
            for k, v in t.items():
                if k not in ALLOWED[sec]:
                    err(sec, i, k, "unknown key")
                elif sec != "proxy" and k in ("listen",) and not isinstance(v, str):
                    err(sec, i, k, "expected a string")
            if sec == "listener":
                if t.get("tls", "none") not in ("none", "starttls", "implicit"):
                    err(sec, i, "tls", "must be one of none, starttls, implicit")
                if t.get("upstream_tls", "implicit") not in ("starttls", "implicit"):
                    err(sec, i, "upstream_tls", "must be implicit or starttls")
    return (cfg if not errors else None), errors


# --- tokens (single flight per provider) ----------------------------------------------------------------
class TokenError(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # "temporary" | "config"


class TokenCache:
    def __init__(self, provider: dict):
        self.p = provider
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.token = None
        self.exp = 0.0
        self.busy = False
        self.last_error: TokenError | None = None

    def get(self) -> str:
        if "no_single_flight" in BUGS:
            return self.fetch()[0]
        with self.cond:
            if self.token and time.time() < self.exp - 300:
                return self.token
            if self.busy:
                self.cond.wait_for(lambda: not self.busy, timeout=60)
                if self.token and time.time() < self.exp - 300:
                    return self.token
                raise self.last_error or TokenError("temporary", "token fetch failed")
            self.busy = True
        try:
            tok, exp = self.fetch()
            with self.cond:
                self.token, self.exp, self.last_error = tok, exp, None
            return tok
        except TokenError as e:
            with self.cond:
                self.last_error = e
            raise
        finally:
            with self.cond:
                self.busy = False
                self.cond.notify_all()

    def fetch(self) -> tuple[str, float]:
        p = self.p
        secret = p.get("client_secret")
        if "client_secret_file" in p:
            secret = open(p["client_secret_file"]).read().strip()
        url = f"{p['authority'].rstrip('/')}/{p['tenant']}/oauth2/v2.0/token"
        data = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": p["client_id"],
                                       "client_secret": secret,
                                       "scope": "https://outlook.office365.com/.default"}).encode()
        ctx = ssl.create_default_context(cafile=p.get("ca_file"))
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data), context=ctx, timeout=15) as r:
                body = json.loads(r.read())
                return body["access_token"], time.time() + int(body["expires_in"])
        except urllib.error.HTTPError as e:
            try:
                err = json.loads(e.read()).get("error", "")
            except ValueError:
                err = ""
            log(f"token endpoint: HTTP {e.code} error={err}")
            if e.code >= 500 or e.code == 429 or err in ("temporarily_unavailable", "server_error"):
                raise TokenError("temporary", f"HTTP {e.code}")
            raise TokenError("config", f"HTTP {e.code} {err}")
        except (OSError, ValueError, KeyError) as e:
            log(f"token endpoint: {type(e).__name__}")
            raise TokenError("temporary", type(e).__name__)


# --- IMAP session -----------------------------------------------------------------------------------------
class Closed(Exception):
    pass


class Session:
    def __init__(self, sock: socket.socket, listener: dict, server: "Server"):
        self.sock = sock
        self.l = listener
        self.srv = server
        self.buf = b""
        self.tls = listener.get("tls", "none") == "implicit"

    def send(self, data: bytes):
        self.sock.sendall(data)

    def readline(self) -> bytes:
        for _ in range(10000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            if len(self.buf) > 65536:
                raise Closed()
            d = self.sock.recv(65536)
            if not d:
                raise Closed()
            self.buf += d
        raise Closed()

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            d = self.sock.recv(65536)
            if not d:
                raise Closed()
            self.buf += d
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def caps(self) -> str:
        return CAPS + (" STARTTLS" if self.l.get("tls") == "starttls" and not self.tls else "")

    def parse_args(self, rest: bytes) -> list[str]:
        """Parses astrings (atoms, quoted, literals) from rest, reading literals as needed."""
        out, i = [], 0
        while True:
            while i < len(rest) and rest[i:i + 1] == b" ":
                i += 1
            if i >= len(rest):
                return out
            c = rest[i:i + 1]
            if c == b'"':
                j, s = i + 1, bytearray()
                while j < len(rest) and rest[j:j + 1] != b'"':
                    if rest[j:j + 1] == b"\\":
                        j += 1
                    s += rest[j:j + 1]
                    j += 1
                out.append(s.decode())
                i = j + 1
            elif c == b"{":
                m = re.match(rb"\{(\d+)(\+?)\}$", rest[i:])
                if not m:
                    raise ValueError("bad literal")
                n = int(m.group(1))
                if not m.group(2):
                    self.send(b"+ Ready for literal data\r\n")
                data = self.read_exact(n)
                out.append(data.decode())
                rest, i = self.readline(), 0
            else:
                j = rest.find(b" ", i)
                j = len(rest) if j < 0 else j
                out.append(rest[i:j].decode())
                i = j

    def run(self):
        try:
            if self.tls:
                self.sock = self.ctx.wrap_socket(self.sock, server_side=True)
            self.send(f"* OK [CAPABILITY {self.caps()}] xoauth-proxy (fake) ready\r\n".encode())
            for _ in range(1000):
                line = self.readline()
                m = re.match(rb"^(\S+) (\S+) ?(.*)$", line)
                if not m:
                    self.send(b"* BAD syntax\r\n")
                    continue
                tag, cmd, rest = m.group(1).decode(), m.group(2).decode().upper(), m.group(3)
                if cmd == "CAPABILITY":
                    self.send(f"* CAPABILITY {self.caps()}\r\n{tag} OK done\r\n".encode())
                elif cmd == "NOOP" or cmd == "ID":
                    self.send(f"{tag} OK done\r\n".encode())
                elif cmd == "LOGOUT":
                    self.send(f"* BYE bye\r\n{tag} OK done\r\n".encode())
                    return
                elif cmd == "STARTTLS" and self.l.get("tls") == "starttls" and not self.tls:
                    self.send(f"{tag} OK Begin TLS\r\n".encode())
                    self.sock = self.ctx.wrap_socket(self.sock, server_side=True)
                    self.tls, self.buf = True, b""
                elif cmd == "LOGIN":
                    args = self.parse_args(rest)
                    if len(args) != 2:
                        self.send(f"{tag} BAD LOGIN needs 2 arguments\r\n".encode())
                        continue
                    if self.login(tag, *args):
                        return
                elif cmd == "AUTHENTICATE":
                    parts = rest.split(b" ")
                    if parts[0].upper() != b"PLAIN":
                        self.send(f"{tag} NO Unsupported mechanism\r\n".encode())
                        continue
                    if len(parts) > 1:
                        resp = parts[1]
                    else:
                        self.send(b"+ \r\n")
                        resp = self.readline()
                    if resp == b"*":
                        self.send(f"{tag} BAD cancelled\r\n".encode())
                        continue
                    try:
                        _, user, pw = base64.b64decode(resp, validate=True).decode().split("\0")
                    except ValueError:
                        self.send(f"{tag} BAD invalid base64\r\n".encode())
                        continue
                    if self.login(tag, user, pw):
                        return
                else:
                    self.send(f"{tag} BAD command not allowed now\r\n".encode())
        except (Closed, OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def login(self, tag: str, user: str, pw: str) -> bool:
        acct = self.srv.find_account(user)
        if acct is None or not verify_password(pw, acct["password_hash"]):
            log(f"login refused user={user}")
            text = "Unknown user" if acct is None and "same_reply_off" in BUGS else "Authentication failed"
            self.send(f"{tag} NO [AUTHENTICATIONFAILED] {text}\r\n".encode())
            return False
        try:
            token = self.srv.tokens[acct["provider"]].get()
        except TokenError as e:
            code = "CONTACTADMIN" if e.kind == "config" else "UNAVAILABLE"
            self.send(f"{tag} NO [{code}] Temporary authentication failure\r\n".encode())
            return False
        try:
            up = self.upstream_login(tag, acct.get("mailbox") or user, token)
        except (OSError, ssl.SSLError, Closed) as e:
            log(f"upstream failed: {e!r}")
            self.send(f"{tag} NO [UNAVAILABLE] Upstream unavailable\r\n".encode())
            return False
        if up is None:
            self.send(f"{tag} NO [AUTHORIZATIONFAILED] Upstream refused the token\r\n".encode())
            return False
        usock, ubuf, okline = up
        self.send(okline)
        self.splice(usock, ubuf)
        return True

    def upstream_login(self, tag: str, mailbox: str, token: str):
        host, port = self.l["upstream"].rsplit(":", 1)
        ctx = ssl.create_default_context(cafile=self.l.get("upstream_ca_file"))
        if "insecure_upstream" in BUGS:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        s = socket.create_connection((host, int(port)), timeout=15)
        buf = b""

        def rl():
            nonlocal buf
            for _ in range(10000):
                i = buf.find(b"\r\n")
                if i >= 0:
                    line, buf = buf[:i], buf[i + 2:]
                    return line
                d = s.recv(65536)
                if not d:
                    raise Closed()
                buf += d
            raise Closed()
        if self.l.get("upstream_tls", "implicit") == "implicit":
            s = ctx.wrap_socket(s, server_hostname=host)
            rl()
        else:
            rl()
            s.sendall(b"x0 STARTTLS\r\n")
            while not (line := rl()).startswith(b"x0 "):
                pass
            if not line.startswith(b"x0 OK"):
                raise Closed()
            s = ctx.wrap_socket(s, server_hostname=host)
        if "leak_token" in BUGS:
            log(f"debug: using token {token}")
        ir = base64.b64encode(f"user={mailbox}\x01auth=Bearer {token}\x01\x01".encode())
        s.sendall(b"x1 AUTHENTICATE XOAUTH2 " + ir + b"\r\n")
        for _ in range(100):
            line = rl()
            if line.startswith(b"+"):
                s.sendall(b"\r\n")
            elif line.startswith(b"x1 OK"):
                s.settimeout(None)
                return s, buf, tag.encode() + line[2:] + b"\r\n"
            elif line.startswith(b"x1 "):
                s.close()
                return None
        raise Closed()

    def splice(self, usock, ubuf: bytes):
        self.sock.settimeout(None)
        if ubuf:
            self.send(ubuf)
        if self.buf:
            usock.sendall(self.buf)

        def pump(a, b):
            try:
                while True:
                    d = a.recv(65536)
                    if not d:
                        break
                    b.sendall(d)
            except OSError:
                pass
            for x in (a, b):
                try:
                    x.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        t = threading.Thread(target=pump, args=(usock, self.sock), daemon=True)
        t.start()
        pump(self.sock, usock)
        t.join(5)
        usock.close()


class Server:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.tokens = {p["name"]: TokenCache(p) for p in cfg.get("provider", [])}
        self.accounts = cfg.get("account", [])

    def find_account(self, login: str):
        login = login.lower()
        for a in self.accounts:
            pat = a["login"].lower()
            if pat == login or (pat.startswith("*@") and login.endswith(pat[1:])):
                return a
        return None

    def serve(self):
        socks = []
        for l in self.cfg.get("listener", []):
            host, port = l["listen"].rsplit(":", 1)
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
            s.listen(128)
            socks.append((s, l))
            log(f"listening on {host}:{s.getsockname()[1]} protocol={l.get('protocol', 'imap')} tls={l.get('tls')}")
        for s, l in socks:
            threading.Thread(target=self.accept_loop, args=(s, l), daemon=True).start()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        signal.signal(signal.SIGINT, lambda *a: stop.set())
        while not stop.wait(0.2):
            pass
        log("shutting down")

    def accept_loop(self, s, l):
        ctx = None
        if l.get("tls", "none") != "none":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(l["cert_file"], l["key_file"])
        while True:
            c, _ = s.accept()
            c.settimeout(120)
            sess = Session(c, l, self)
            sess.ctx = ctx
            threading.Thread(target=sess.run, daemon=True).start()


def main(argv: list[str]) -> int:
    if argv[:1] == ["--version"]:
        print("xoauth-proxy 0.0.0-fake")
        return 0
    if argv[:1] == ["hash-password"]:
        print(hash_password(sys.stdin.readline().rstrip("\r\n")))
        return 0
    if len(argv) == 3 and argv[0] in ("run", "check") and argv[1] == "--config":
        cfg, errors = check_config(argv[2])
        for e in errors:
            print(e, file=sys.stderr)
        if errors:
            return 1
        if argv[0] == "check":
            return 0
        Server(cfg).serve()
        return 0
    print("usage: xoauth-proxy run|check --config FILE | hash-password | --version", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
