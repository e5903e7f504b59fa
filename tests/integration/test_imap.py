#!/usr/bin/env python3
"""IMAP integration tests for xoauth-proxy against the private Dovecot + mock IdP test bed.

    XOAUTH_PROXY_BIN=build/xoauth-proxy python3 tests/integration/test_imap.py [-v] [-k PATTERN]

Optional: XOAUTH_TESTBED_DIR=/path (reuse or start a test bed there and leave it running),
XOAUTH_KEEP_WORKDIRS=1 (keep proxy work dirs: config, proxy.log). Exits non-zero on failure.
Everything listens on 127.0.0.1; waits are polls with deadlines, loops are bounded.
"""

from __future__ import annotations

import base64
import imaplib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SCANNER = "scanner@contoso.test"
ALICE = "alice@contoso.test"
PASSWORDS = {
    SCANNER: "scanner-Pass-1",
    ALICE: 'correct horse "battery" \\staple',  # space, quotes and a backslash
}
IMAP_TIMEOUT = 30.0
KEEP = os.environ.get("XOAUTH_KEEP_WORKDIRS") == "1"
CAPS_REQUIRED = {"IMAP4REV1", "SASL-IR", "LITERAL+", "ID", "IDLE", "AUTH=PLAIN"}


def tb() -> dict:
    return harness.testbed_info()


def start_proxy(cls_or_test, listeners: list[dict], accounts: list[dict] | None = None,
                providers: list[dict] | None = None, workdir: str | None = None) -> harness.Proxy:
    """Starts a proxy and registers its cleanup on the test class (or test case)."""
    workdir = workdir or tempfile.mkdtemp(prefix="xoauth-it-")
    os.chmod(workdir, 0o700)
    if providers is None:
        providers = [harness.provider(workdir)]
    if accounts is None:
        accounts = [harness.account(SCANNER, PASSWORDS[SCANNER]),
                    harness.account(ALICE, PASSWORDS[ALICE], mailbox=ALICE)]
    cfg = harness.write_config(workdir, providers, listeners, accounts)
    proxy = harness.Proxy(cfg, len(listeners), workdir)

    def cleanup():
        proxy.stop()
        if KEEP:
            print(f"\n[kept proxy workdir {workdir}]", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if isinstance(cls_or_test, type):
        cls_or_test.addClassCleanup(cleanup)
    else:
        cls_or_test.addCleanup(cleanup)
    proxy.start()
    return proxy


def imap_connect(port: int, mode: str) -> imaplib.IMAP4:
    ctx = harness.client_ssl_context()
    if mode == "implicit":
        return imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=ctx, timeout=IMAP_TIMEOUT)
    m = imaplib.IMAP4("127.0.0.1", port, timeout=IMAP_TIMEOUT)
    if mode == "starttls":
        m.starttls(ssl_context=ctx)
    return m


def close_quietly(m: imaplib.IMAP4):
    """imaplib's shutdown() raises EBADF after logout(); ignore that."""
    try:
        m.shutdown()
    except OSError:
        pass


def curl_version() -> tuple[int, ...]:
    out = subprocess.run(["curl", "--version"], capture_output=True, text=True, timeout=10).stdout
    m = re.match(r"curl (\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else (0, 0, 0)


def plain_auth(user: str, password: str):
    return lambda _challenge: f"\0{user}\0{password}".encode()


def normalize(text: str) -> str:
    """Drops ids/timestamps so that two failure texts can be compared."""
    return re.sub(r"[0-9A-Za-z+/=_-]{16,}|\d{1,4}[-:]\d{2}[-:]\d{2}\S*", "#", text)


class DovecotLog:
    """Reads what Dovecot logged since construction."""

    def __init__(self):
        self.path = tb()["logs"]["dovecot"]
        self.offset = os.path.getsize(self.path)

    def new(self) -> str:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            f.seek(self.offset)
            return f.read()


class ProxyTestCase(unittest.TestCase):
    """Prints the proxy log of a failing test."""

    proxy: harness.Proxy | None = None

    def setUp(self):
        harness.admin("reset", {"what": "stats,faults"})

    def tearDown(self):
        result = getattr(self._outcome, "result", None)
        failed = result is not None and any(getattr(t, "test_case", t) is self
                                            for t, _ in result.failures + result.errors)
        if failed:
            for p in self.proxies():
                print(f"\n----- proxy log ({p.log_path}) -----\n{p.log()[-6000:]}\n-----", file=sys.stderr)

    def proxies(self) -> list[harness.Proxy]:
        return [p for p in (getattr(self, "proxy", None), getattr(self, "local_proxy", None)) if p]

    def assert_tagged(self, resp: str, prefix: str):
        self.assertTrue(resp.startswith(prefix), f"expected {prefix!r}, got {resp!r}")

    def raw_login(self, port: int, user: str, password: str, tag: str = "a1") -> str:
        with harness.LineClient(port) as c:
            quoted = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
            resp, _ = c.cmd(tag, f"LOGIN {quoted(user)} {quoted(password)}")
            return resp


# --------------------------------------------------------------------------------------------------------
class A_StandardProxy(ProxyTestCase):
    """One proxy with client TLS none / starttls / implicit, upstream implicit TLS (Dovecot imaps)."""

    MODES = ("none", "starttls", "implicit")

    @classmethod
    def setUpClass(cls):
        cls.proxy = start_proxy(cls, [harness.listener(tls=m, upstream="imaps") for m in cls.MODES])
        cls.port = dict(zip(cls.MODES, cls.proxy.ports))

    def test_capabilities(self):
        for mode in self.MODES:
            with self.subTest(mode=mode):
                m = imap_connect(self.port[mode], "implicit" if mode == "implicit" else "none")
                try:
                    caps = set(m.capabilities)
                    self.assertTrue(CAPS_REQUIRED <= caps, f"{mode}: {caps}")
                    self.assertEqual("STARTTLS" in caps, mode == "starttls", f"{mode}: {caps}")
                    if mode == "starttls":
                        m.starttls(ssl_context=harness.client_ssl_context())
                        self.assertNotIn("STARTTLS", m.capabilities)
                finally:
                    close_quietly(m)

    def test_login_and_authenticate_plain_each_tls_mode(self):
        seed = tb()["seed"][SCANNER]
        for mode in self.MODES:
            for method in ("LOGIN", "AUTHENTICATE PLAIN"):
                with self.subTest(mode=mode, method=method):
                    m = imap_connect(self.port[mode], mode)
                    try:
                        if method == "LOGIN":
                            typ, _ = m.login(SCANNER, PASSWORDS[SCANNER])
                        else:
                            typ, _ = m.authenticate("PLAIN", plain_auth(SCANNER, PASSWORDS[SCANNER]))
                        self.assertEqual(typ, "OK")
                        typ, data = m.select("INBOX", readonly=True)
                        self.assertEqual((typ, int(data[0])), ("OK", seed["INBOX"]))
                        typ, data = m.list()
                        self.assertEqual(typ, "OK")
                        listing = b" ".join(data).decode()
                        for folder in seed:
                            self.assertIn(folder, listing)
                        typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                        self.assertEqual(typ, "OK")
                        self.assertIn(b"Subject: INBOX message 1 for scanner", data[0][1])
                        m.close()
                        m.logout()
                    finally:
                        close_quietly(m)

    def test_password_with_quotes_and_mailbox_mapping(self):
        for method in ("LOGIN", "AUTHENTICATE PLAIN"):
            with self.subTest(method=method):
                m = imap_connect(self.port["implicit"], "implicit")
                try:
                    if method == "LOGIN":
                        m.login(ALICE, PASSWORDS[ALICE])
                    else:
                        m.authenticate("PLAIN", plain_auth(ALICE, PASSWORDS[ALICE]))
                    self.assertEqual(m.select("INBOX", readonly=True)[0], "OK")
                    typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                    self.assertEqual(typ, "OK")
                    self.assertIn(b"for alice", data[0][1])
                    m.logout()
                finally:
                    close_quietly(m)

    def curl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "--max-time", "30", *args], capture_output=True, text=True,
                              timeout=60)

    def test_curl_imap_and_imaps(self):
        user = f"{SCANNER}:{PASSWORDS[SCANNER]}"
        ca = tb()["ca_file"]
        cases = {
            "imap default": [f"imap://127.0.0.1:{self.port['none']}/"],
            "imap PLAIN": ["--login-options", "AUTH=PLAIN", f"imap://127.0.0.1:{self.port['none']}/"],
            "imap STARTTLS": ["--ssl-reqd", "--cacert", ca, f"imap://127.0.0.1:{self.port['starttls']}/"],
            "imaps default": ["--cacert", ca, f"imaps://127.0.0.1:{self.port['implicit']}/"],
            "imaps PLAIN": ["--cacert", ca, "--login-options", "AUTH=PLAIN",
                            f"imaps://127.0.0.1:{self.port['implicit']}/"],
        }
        # "AUTH=+LOGIN" (the IMAP LOGIN command instead of SASL) needs curl >= 8.2.0;
        # Debian 12 ships 7.88, where LOGIN is covered by the imaplib and raw-socket tests instead.
        if curl_version() >= (8, 2, 0):
            cases["imap LOGIN"] = ["--login-options", "AUTH=+LOGIN", f"imap://127.0.0.1:{self.port['none']}/"]
            cases["imaps LOGIN"] = ["--cacert", ca, "--login-options", "AUTH=+LOGIN",
                                    f"imaps://127.0.0.1:{self.port['implicit']}/"]
        for name, args in cases.items():
            with self.subTest(name):
                r = self.curl("--user", user, *args)
                self.assertEqual(r.returncode, 0, f"{name}: rc={r.returncode} {r.stderr}")
                self.assertRegex(r.stdout, r'\* LIST \([^)]*\) "/" "?INBOX"?')
                self.assertIn("Archive", r.stdout)
        r = self.curl("--user", user, "--cacert", ca, f"imaps://127.0.0.1:{self.port['implicit']}/INBOX;UID=1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Subject: INBOX message 1 for scanner", r.stdout)

    def test_wrong_password_and_unknown_account(self):
        port = self.port["none"]
        harness.admin("reset", {"what": "stats"})
        wrong = self.raw_login(port, SCANNER, "not-the-password", "w1")
        unknown = self.raw_login(port, "nobody@contoso.test", "whatever", "u1")
        self.assert_tagged(wrong, "NO [AUTHENTICATIONFAILED]")
        self.assert_tagged(unknown, "NO [AUTHENTICATIONFAILED]")
        self.assertEqual(normalize(wrong), normalize(unknown), "wrong password and unknown account must look alike")
        with harness.LineClient(port) as c:
            pl = base64.b64encode(f"\0{SCANNER}\0wrong".encode()).decode()
            resp, _ = c.cmd("p1", f"AUTHENTICATE PLAIN {pl}")
            self.assert_tagged(resp, "NO [AUTHENTICATIONFAILED]")
            pl = base64.b64encode(b"\0nobody@contoso.test\0wrong").decode()
            resp, _ = c.cmd("p2", f"AUTHENTICATE PLAIN {pl}")
            self.assert_tagged(resp, "NO [AUTHENTICATIONFAILED]")
        # A locally refused login must never reach Dovecot.
        self.assertEqual(harness.admin("stats")["introspection"]["requests"], 0)

    def test_literal_login_synchronizing_and_nonsynchronizing(self):
        user, pw = SCANNER, PASSWORDS[SCANNER]
        with harness.LineClient(self.port["none"]) as c:
            c.send(f"L1 LOGIN {{{len(user)}}}")
            cont = c.readline()
            self.assertTrue(cont.startswith("+"), cont)
            c.send(f"{user} {{{len(pw)}}}")
            cont = c.readline()
            self.assertTrue(cont.startswith("+"), cont)
            c.send(pw)
            resp, _ = c.read_until_tag("L1")
            self.assert_tagged(resp, "OK")
            resp, lines = c.cmd("L2", "EXAMINE INBOX")
            self.assert_tagged(resp, "OK")
            self.assertIn(f"* {tb()['seed'][SCANNER]['INBOX']} EXISTS", lines)
        with harness.LineClient(self.port["none"]) as c:
            c.send_raw(f"P1 LOGIN {{{len(user)}+}}\r\n{user} {{{len(pw)}+}}\r\n{pw}\r\n".encode())
            resp, lines = c.read_until_tag("P1")
            self.assert_tagged(resp, "OK")
            self.assertFalse([x for x in lines if x.startswith("+")], f"no continuation with LITERAL+: {lines}")
            resp, _ = c.cmd("P2", "NOOP")
            self.assert_tagged(resp, "OK")

    def test_idle_through_relay(self):
        with harness.LineClient(self.port["implicit"], tls=True) as c:
            resp, _ = c.cmd("i1", f'LOGIN "{SCANNER}" "{PASSWORDS[SCANNER]}"')
            self.assert_tagged(resp, "OK")
            resp, _ = c.cmd("i2", "SELECT INBOX")
            self.assert_tagged(resp, "OK")
            c.send("i3 IDLE")
            cont = c.readline()
            self.assertTrue(cont.startswith("+"), cont)
            self.assertIn("idling", cont.lower())
            c.send("DONE")
            resp, _ = c.read_until_tag("i3")
            self.assert_tagged(resp, "OK")
            resp, _ = c.cmd("i4", "LOGOUT")
            self.assert_tagged(resp, "OK")

    def test_client_half_close_still_gets_the_replies(self):
        """A client that sends its last commands and shuts down its sending side (as `printf ... |
        nc` does) must still receive every reply; the relay must not drop the upstream early."""
        import socket as socketlib
        s = socketlib.create_connection(("127.0.0.1", self.port["none"]), timeout=30)
        try:
            s.recv(4096)  # greeting
            s.sendall(f'h1 LOGIN "{SCANNER}" "{PASSWORDS[SCANNER]}"\r\n'.encode())
            buf = b""
            while b"h1 " not in buf:
                chunk = s.recv(65536)
                self.assertTrue(chunk, "connection closed during login")
                buf += chunk
            self.assertIn(b"h1 OK", buf)
            s.sendall(b"h2 SELECT INBOX\r\nh3 FETCH 1:* BODY.PEEK[]\r\nh4 LOGOUT\r\n")
            s.shutdown(socketlib.SHUT_WR)
            out = b""
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
        finally:
            s.close()
        self.assertIn(b"h2 OK", out)
        self.assertIn(b"h3 OK", out)
        self.assertIn(b"h4 OK", out)

    def test_zz_no_secrets_in_log(self):
        log = self.proxy.log()
        self.assertTrue(log, "proxy log is empty")
        for pw in PASSWORDS.values():
            self.assertNotIn(pw, log, "a local password appears in the proxy log")
        self.assertNotIn(tb()["client_secret"], log, "the client secret appears in the proxy log")
        self.assertNotIn(harness.MOCK_JWT_HEADER, log, "an access token appears in the proxy log")


# --------------------------------------------------------------------------------------------------------
class A2_PreLoginTimeout(ProxyTestCase):
    """Every pre-login step is bounded: a client that connects and says nothing, or stops in the
    middle of a command, is disconnected after login_timeout, and nothing is left behind."""

    @classmethod
    def setUpClass(cls):
        workdir = tempfile.mkdtemp(prefix="xoauth-imap-timeout-")
        cls.addClassCleanup(shutil.rmtree, workdir, True)
        cfg = harness.write_config(workdir, [harness.provider(workdir)],
                                   [harness.listener(tls="none", upstream="imaps")],
                                   [harness.account(SCANNER, PASSWORDS[SCANNER])],
                                   proxy={"login_timeout": 1})
        cls.proxy = harness.Proxy(cfg, 1, workdir)
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()

    def wait_closed(self, payload: bytes) -> float:
        import socket as socketlib
        s = socketlib.create_connection(("127.0.0.1", self.proxy.ports[0]), timeout=15)
        try:
            s.recv(4096)  # greeting
            if payload:
                s.sendall(payload)
            t0 = time.monotonic()
            while s.recv(4096):
                pass
            return time.monotonic() - t0
        finally:
            s.close()

    def test_silent_client_is_disconnected(self):
        self.assertLess(self.wait_closed(b""), 10)

    def test_client_stuck_mid_literal_is_disconnected(self):
        self.assertLess(self.wait_closed(b"a LOGIN {5}\r\n"), 10)
        # The summary line is written just after the socket closes: wait for it, boundedly.
        deadline = time.monotonic() + 10
        while "client timeout before login" not in self.proxy.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertIn("client timeout before login", self.proxy.log())


# --------------------------------------------------------------------------------------------------------
class B_UpstreamStartTLS(ProxyTestCase):
    def test_upstream_starttls_to_forced_tls_listener(self):
        ep = tb()["dovecot"]["imap_starttls_forced"]
        self.assertEqual(ep["host"], "127.0.0.2")
        self.local_proxy = start_proxy(self, [harness.listener(tls="none", upstream="imap_starttls_forced")])
        dlog = DovecotLog()
        m = imap_connect(self.local_proxy.ports[0], "none")
        try:
            m.login(SCANNER, PASSWORDS[SCANNER])
            typ, data = m.select("INBOX", readonly=True)
            self.assertEqual((typ, int(data[0])), ("OK", tb()["seed"][SCANNER]["INBOX"]))
            m.logout()
        finally:
            close_quietly(m)
        logins = [x for x in dlog.new().splitlines() if "Login: user=<scanner@contoso.test>" in x]
        self.assertTrue(logins, "no Dovecot login seen")
        self.assertIn("lip=127.0.0.2", logins[-1])
        self.assertIn("TLS", logins[-1])

    def test_upstream_implicit_tls(self):
        self.local_proxy = start_proxy(self, [harness.listener(tls="none", upstream="imaps")])
        dlog = DovecotLog()
        m = imap_connect(self.local_proxy.ports[0], "none")
        try:
            m.login(SCANNER, PASSWORDS[SCANNER])
            self.assertEqual(m.select("INBOX", readonly=True)[0], "OK")
            m.logout()
        finally:
            close_quietly(m)
        logins = [x for x in dlog.new().splitlines() if "Login: user=<scanner@contoso.test>" in x]
        self.assertTrue(logins and "TLS" in logins[-1], logins)


# --------------------------------------------------------------------------------------------------------
class C_IdPFailures(ProxyTestCase):
    def tearDown(self):
        super().tearDown()
        harness.admin("reset", {"what": "faults"})

    def test_idp_503(self):
        self.local_proxy = start_proxy(self, [harness.listener(tls="none")])
        harness.admin("fail", {"status": 503, "count": 1000})
        t0 = time.monotonic()
        resp = self.raw_login(self.local_proxy.ports[0], SCANNER, PASSWORDS[SCANNER])
        self.assert_tagged(resp, "NO [UNAVAILABLE]")
        self.assertLess(time.monotonic() - t0, 60)
        self.assertGreaterEqual(harness.admin("stats")["faults_injected"], 1)

    def test_idp_429_retry_after(self):
        self.local_proxy = start_proxy(self, [harness.listener(tls="none")])
        harness.admin("fail", {"status": 429, "count": 1000, "retry_after": 60})
        resp = self.raw_login(self.local_proxy.ports[0], SCANNER, PASSWORDS[SCANNER])
        self.assert_tagged(resp, "NO [UNAVAILABLE]")

    def test_idp_connection_dropped(self):
        self.local_proxy = start_proxy(self, [harness.listener(tls="none")])
        harness.admin("fail", {"drop": True, "count": 1000})
        resp = self.raw_login(self.local_proxy.ports[0], SCANNER, PASSWORDS[SCANNER])
        self.assert_tagged(resp, "NO [UNAVAILABLE]")

    def test_idp_closed_port(self):
        workdir = tempfile.mkdtemp(prefix="xoauth-it-")
        closed = f"https://127.0.0.1:{harness.free_port()}"
        self.local_proxy = start_proxy(self, [harness.listener(tls="none")], workdir=workdir,
                                       providers=[harness.provider(workdir, authority=closed)])
        t0 = time.monotonic()
        resp = self.raw_login(self.local_proxy.ports[0], SCANNER, PASSWORDS[SCANNER])
        self.assert_tagged(resp, "NO [UNAVAILABLE]")
        self.assertLess(time.monotonic() - t0, 60)

    def test_bad_client_secret_is_contactadmin(self):
        workdir = tempfile.mkdtemp(prefix="xoauth-it-")
        self.local_proxy = start_proxy(self, [harness.listener(tls="none")], workdir=workdir,
                                       providers=[harness.provider(workdir, client_secret_value="wrong-secret")])
        resp = self.raw_login(self.local_proxy.ports[0], SCANNER, PASSWORDS[SCANNER])
        self.assert_tagged(resp, "NO [CONTACTADMIN]")
        self.assertGreaterEqual(harness.admin("stats")["errors"].get("client_credentials:invalid_client", 0), 1)


# --------------------------------------------------------------------------------------------------------
class D_UpstreamTrust(ProxyTestCase):
    def check_refused(self, listener: dict):
        self.local_proxy = start_proxy(self, [listener])
        dlog = DovecotLog()
        harness.admin("reset", {"what": "stats"})
        resp = self.raw_login(self.local_proxy.ports[0], SCANNER, PASSWORDS[SCANNER])
        self.assert_tagged(resp, "NO [UNAVAILABLE]")
        # No token reached Dovecot (no introspection), and no login happened there.
        self.assertEqual(harness.admin("stats")["introspection"]["requests"], 0)
        self.assertNotIn("Login: user=<scanner@contoso.test>", dlog.new())

    def test_untrusted_upstream_implicit(self):
        self.check_refused(harness.listener(tls="none", upstream="imaps", upstream_ca_file=None))

    def test_untrusted_upstream_starttls_no_plaintext_fallback(self):
        # Dovecot's 127.0.0.1 port accepts XOAUTH2 without TLS, so a fallback would log in.
        self.check_refused(harness.listener(tls="none", upstream="imap", upstream_ca_file=None))

    def test_upstream_wrong_hostname(self):
        self.check_refused(harness.listener(tls="none", upstream="imaps_wronghost"))


# --------------------------------------------------------------------------------------------------------
class E_Concurrency(ProxyTestCase):
    N = 50
    LATENCY_MS = 1500

    def tearDown(self):
        super().tearDown()
        harness.admin("config", {"latency_ms": 0})

    def test_concurrent_cold_logins_single_token_request(self):
        harness.admin("reset", {"what": "stats,faults"})
        harness.admin("config", {"latency_ms": self.LATENCY_MS})
        self.local_proxy = start_proxy(self, [harness.listener(tls="none")])
        port = self.local_proxy.ports[0]
        barrier = threading.Barrier(self.N, timeout=60)
        results: list = [None] * self.N

        def worker(i: int):
            m = None
            try:
                m = imaplib.IMAP4("127.0.0.1", port, timeout=120)
                barrier.wait()
                typ, _ = m.login(SCANNER, PASSWORDS[SCANNER])
                typ2, _ = m.noop()
                m.logout()
                results[i] = (typ, typ2)
            except Exception as e:  # recorded and asserted below
                results[i] = repr(e)
            finally:
                if m is not None:
                    close_quietly(m)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(self.N)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 180
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self.assertFalse([t for t in threads if t.is_alive()], "logins did not finish in time")
        bad = [r for r in results if r != ("OK", "OK")]
        self.assertFalse(bad, f"{len(bad)} of {self.N} logins failed: {bad[:5]}")
        stats = harness.admin("stats")
        self.assertEqual(stats["grants"].get("client_credentials", {}).get("requests"), 1,
                         f"expected exactly one token request: {stats['grants']}")


# --------------------------------------------------------------------------------------------------------
class F_CheckConfig(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="xoauth-it-check-")
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def valid_config(self) -> str:
        return harness.write_config(
            self.workdir, [harness.provider(self.workdir)],
            [harness.listener(tls="none"), harness.listener(tls="implicit")],
            [harness.account(SCANNER, PASSWORDS[SCANNER])])

    def test_version(self):
        r = harness.run_cli("--version")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue((r.stdout + r.stderr).strip())

    def test_check_valid_config(self):
        path = self.valid_config()
        r = harness.run_cli("check", "--config", path)
        self.assertEqual(r.returncode, 0, f"stdout={r.stdout!r} stderr={r.stderr!r}")

    def test_check_three_mistakes(self):
        with open(self.valid_config()) as f:
            text = f.read().splitlines()
        mistakes = {}

        def replace(prefix: str, new: str, nth: int = 0):
            idx = [i for i, line in enumerate(text) if line.startswith(prefix)][nth]
            text[idx] = new
            mistakes[idx + 1] = new  # 1-based line number

        replace("log_level = ", 'lgo_level = "debug"')              # unknown key
        replace("tls = ", 'tls = "sometimes"')                       # invalid enum value
        replace("listen = ", "listen = 1143", nth=1)                 # wrong type
        path = os.path.join(self.workdir, "broken.toml")
        with open(path, "w") as f:
            f.write("\n".join(text) + "\n")
        r = harness.run_cli("check", "--config", path)
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 1, out)
        found = [int(m.group(1)) for m in re.finditer(re.escape(path) + r":(\d+)(?::\d+)?:", out)]
        self.assertEqual(len(found), 3, f"expected 3 diagnostics naming {path}:\n{out}")
        self.assertEqual(sorted(found), sorted(mistakes), f"line numbers {found} vs {sorted(mistakes)}:\n{out}")


def main() -> int:
    return harness.run_tests("test_imap")


if __name__ == "__main__":
    sys.exit(main())
