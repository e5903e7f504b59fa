#!/usr/bin/env python3
"""Fault matrix (issue 8): the identity platform, the upstream servers, the clients and the state
directory misbehave, and the proxy must neither crash nor hang, must give each client the reply
its protocol code defines (protocol/*/responses.hpp), must log why, and must never lose a
refresh token.

    XOAUTH_PROXY_BIN=build/xoauth-proxy XOAUTH_TESTBED_DIR=/tmp/tb python3 tests/integration/test_faults.py -v

Faults come from the mock identity platform's admin API (/_admin/fail: HTTP 500, 429 with
Retry-After, a 200 whose body is not JSON) and from tests/integration/faultproxy.py, a TCP proxy
of our own put between xoauth-proxy and the mock or Dovecot/Postfix (reset after N bytes or on a
byte pattern, stall, refuse, TLS termination with a bad certificate). Certificates are made here
with the openssl CLI (expired: `openssl ca -startdate/-enddate` signed by the test bed's CA).

Replies expected (temporary = "try again later"; contact admin = an administrator must act):
  identity platform down/slow/garbled: IMAP "NO [UNAVAILABLE] Temporary authentication failure",
      SMTP "454 4.7.0 Temporary authentication failure", POP3 "-ERR [SYS/TEMP] Temporary ..."
  upstream unreachable / reset during login / bad certificate: IMAP "NO [UNAVAILABLE] Mail server
      unavailable", SMTP "421 4.3.2" at the greeting (the upstream is prepared before it) or
      "454 4.7.0 Mail server unavailable" after AUTH, POP3 "-ERR [SYS/TEMP] Mail server unavailable"
  upstream reset after login: the client's connection is closed at once (no reply is owed)
  client too slow: closed at 5 x login_timeout, no reply; line too long: IMAP "* BAD Line too
      long" / "<tag> BAD Response too long", SMTP "500 5.5.6 Line too long", POP3 "-ERR Line too
      long", then closed
  store entry unreadable: "contact admin" replies (NO [CONTACTADMIN], 454 4.7.0 ... administrator,
      -ERR [SYS/PERM]); store not writable: logins go on with the in-memory tokens.
The state-directory cases mount (bind read-only, a tiny tmpfs): they need root, and are skipped
with a loud reason when mount is refused. Everything listens on 127.0.0.1, ports chosen by the
kernel; every wait is a bounded poll.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from faultproxy import PASS, Fault, FaultProxy  # noqa: E402

SCANNER = "scanner@contoso.test"
ALICE = "alice@contoso.test"
SHARED = "shared@contoso.test"
RECEIVER = "receiver@contoso.test"
SINK = "receiver2@contoso.test"
PW = {SCANNER: "scanner-fault-Pw1", ALICE: "alice-fault-Pw2", SHARED: "shared-fault-Pw3",
      RECEIVER: "receiver-fault-Pw4"}
TIMEOUT = 30.0
CODE = "authorization_code"
REFRESH = "refresh_token"
CCG = "client_credentials"

# Replies (protocol/*/responses.hpp).
IMAP_TEMP = "NO [UNAVAILABLE] Temporary authentication failure, try again later"
IMAP_UP_DOWN = "NO [UNAVAILABLE] Mail server unavailable, try again later"
IMAP_CONTACT = "NO [CONTACTADMIN]"
SMTP_TEMP = "4.7.0 Temporary authentication failure, try again later"
SMTP_UP_DOWN = "4.7.0 Mail server unavailable, try again later"
SMTP_GREETING_DOWN = "4.3.2 Mail server unavailable, try again later"
POP_TEMP = "-ERR [SYS/TEMP] Temporary authentication failure, try again later"
POP_UP_DOWN = "-ERR [SYS/TEMP] Mail server unavailable, try again later"
POP_CONTACT = "-ERR [SYS/PERM]"


def tb() -> dict:
    return harness.testbed_info()


def q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


# --- certificates ------------------------------------------------------------------------------------------
PKI: dict = {}
_PKI_DIR: tempfile.TemporaryDirectory | None = None

LEAF_EXT = """basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {san}
"""


def _openssl(*args: str):
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {r.stderr.strip()}")


def make_certificates(d: str) -> dict:
    """good (test CA, IP:127.0.0.1), expired (test CA, valid only in January 2020), wronghost
    (test CA, DNS:wrong.example only), selfsigned (IP:127.0.0.1, no CA). Each: {"cert", "key"}
    with the chain (leaf + CA) in "cert"."""
    ca_pem, ca_key = tb()["ca_file"], os.path.join(os.path.dirname(tb()["ca_file"]), "ca.key")
    out = {}

    def leaf(name: str, san: str, dates: tuple[str, str] | None = None):
        key, csr, crt, ext = (os.path.join(d, f"{name}.{x}") for x in ("key", "csr", "crt", "ext"))
        _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj",
                 f"/CN=fault-{name}/O=xoauth-proxy fault tests", "-keyout", key, "-out", csr)
        with open(ext, "w") as f:
            f.write(LEAF_EXT.format(san=san))
        if dates is None:
            _openssl("x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-set_serial",
                     str(int.from_bytes(os.urandom(8), "big")), "-sha256", "-days", "2", "-extfile", ext,
                     "-out", crt)
        else:
            # OpenSSL 3.0's x509 -req has no -not_before: `openssl ca` takes explicit dates.
            cadir = os.path.join(d, "ca-" + name)
            os.makedirs(cadir)
            open(os.path.join(cadir, "index.txt"), "w").close()
            with open(os.path.join(cadir, "serial"), "w") as f:
                f.write(os.urandom(8).hex() + "\n")
            cnf = os.path.join(cadir, "ca.cnf")
            with open(cnf, "w") as f:
                f.write(f"[ca]\ndefault_ca = fault\n[fault]\ndatabase = {cadir}/index.txt\n"
                        f"serial = {cadir}/serial\nnew_certs_dir = {cadir}\ndefault_md = sha256\n"
                        "policy = any\nunique_subject = no\ncopy_extensions = none\n"
                        "[any]\ncommonName = supplied\norganizationName = optional\n")
            _openssl("ca", "-batch", "-config", cnf, "-cert", ca_pem, "-keyfile", ca_key, "-in", csr,
                     "-startdate", dates[0], "-enddate", dates[1], "-extfile", ext, "-notext", "-out", crt)
        chain = os.path.join(d, f"{name}.pem")
        with open(chain, "w") as f, open(crt) as c, open(ca_pem) as a:
            f.write(c.read() + a.read())
        out[name] = {"cert": chain, "key": key}

    leaf("good", "IP:127.0.0.1")
    leaf("expired", "IP:127.0.0.1", ("20200101000000Z", "20200201000000Z"))
    leaf("wronghost", "DNS:wrong.example")
    key, cert = os.path.join(d, "selfsigned.key"), os.path.join(d, "selfsigned.pem")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2", "-subj",
             "/CN=127.0.0.1/O=self-signed", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key,
             "-out", cert)
    out["selfsigned"] = {"cert": cert, "key": key}
    return out


def setUpModule():
    global _PKI_DIR
    harness.testbed_info()
    harness.mock_reset("stats,faults,config")
    harness.ensure_delegated_clients()
    _PKI_DIR = tempfile.TemporaryDirectory(prefix="xoauth-faults-pki-")
    PKI.update(make_certificates(_PKI_DIR.name))


def tearDownModule():
    try:
        harness.mock_reset("stats,faults,config")
    except Exception as e:  # noqa: BLE001 - the test bed may be gone already
        print(f"[tearDownModule: mock reset failed: {e}]", file=sys.stderr)
    if _PKI_DIR is not None:
        _PKI_DIR.cleanup()


def target_ctx() -> ssl.SSLContext:
    """How the fault proxy talks TLS to the real servers (they present the test bed's cert)."""
    return ssl.create_default_context(cafile=tb()["ca_file"])


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --- mounts (state directory cases) --------------------------------------------------------------------------
def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30)


def is_mount_point(path: str) -> bool:
    """From /proc/self/mountinfo (os.path.ismount misses a bind mount within one file system)."""
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].encode().decode("unicode_escape")  # octal escapes such as \040
            if mp == path:
                return True
    return False


def _umount_all(path: str):
    for _ in range(4):  # bounded: a bind mount and a remount stack at most twice here
        if not is_mount_point(path):
            return
        subprocess.run(["umount", path], capture_output=True, text=True, timeout=30)


# ------------------------------------------------------------------------------------------------------------
class FaultCase(unittest.TestCase):
    """Work dirs, proxies and fault proxies (closed at cleanup; proxy logs printed on failure),
    client helpers that return the reply a client saw, bounded in time."""

    maxDiff = None

    def setUp(self):
        harness.mock_reset("stats,faults")
        self._proxies: list[harness.Proxy] = []

    def tearDown(self):
        result = getattr(self._outcome, "result", None)
        failed = result is not None and any(getattr(t, "test_case", t) is self
                                            for t, _ in result.failures + result.errors)
        if failed:
            for p in self._proxies + list(getattr(type(self), "class_proxies", [])):
                print(f"\n----- proxy log ({p.log_path}) -----\n{p.run_log()[-8000:]}\n-----", file=sys.stderr)
        harness.mock_reset("faults")

    @staticmethod
    def new_workdir(owner) -> str:
        return harness.new_workdir(owner, "xoauth-faults-")

    def fault_proxy(self, target: tuple[str, int], **kw) -> FaultProxy:
        fp = FaultProxy(target, **kw)
        self.addCleanup(fp.close)
        return fp

    def proxy(self, cfg: str, n: int, start: bool = True) -> harness.Proxy:
        p = harness.Proxy(cfg, n, os.path.dirname(cfg), wait_admin=True)
        self._proxies.append(p)
        self.addCleanup(p.stop)
        if start:
            p.start()
        return p

    # --- bounded client actions ------------------------------------------------------------------------
    def bounded(self, seconds: float, fn, *args):
        """Runs fn(*args); fails when it took longer than `seconds` (a hang past the timeout)."""
        t0 = time.monotonic()
        out = fn(*args)
        took = time.monotonic() - t0
        self.assertLessEqual(took, seconds, f"{fn.__name__} took {took:.1f}s, more than its bound {seconds}s")
        return out

    def imap_login(self, port: int, user: str, pw: str, timeout: float = TIMEOUT) -> str:
        """LOGIN (then EXAMINE INBOX and LOGOUT when accepted); the LOGIN reply without its tag."""
        with harness.LineClient(port, timeout=timeout) as c:
            resp, _ = c.cmd("a1", f"LOGIN {q(user)} {q(pw)}")
            if resp.startswith("OK"):
                r2, lines = c.cmd("a2", "EXAMINE INBOX")
                self.assertTrue(r2.startswith("OK"), f"EXAMINE after login: {r2} {lines}")
                c.cmd("a3", "LOGOUT")
            return resp

    def smtp_auth(self, port: int, user: str, pw: str, timeout: float = TIMEOUT) -> harness.SmtpReply:
        """EHLO, AUTH PLAIN; the AUTH reply (or the greeting when that was not 220)."""
        with harness.SmtpClient(port, timeout=timeout) as c:
            if c.greeting.code != 220:
                return c.greeting
            self.assertEqual(c.ehlo().code, 250, c.transcript)
            r = c.cmd("AUTH PLAIN " + b64(f"\0{user}\0{pw}"))
            try:
                c.cmd("QUIT")
            except (OSError, EOFError):
                pass
            return r

    def pop3_login(self, port: int, user: str, pw: str, timeout: float = TIMEOUT) -> str:
        with harness.LineClient(port, timeout=timeout) as c:
            self.assertTrue(c.greeting.startswith("+OK"), c.greeting)
            c.send(f"USER {user}")
            r = c.readline()
            if not r.startswith("+OK"):
                return r
            c.send(f"PASS {pw}")
            r = c.readline()
            if r.startswith("+OK"):
                c.send("STAT")
                self.assertTrue(c.readline().startswith("+OK"))
                c.send("QUIT")
            return r

    def login(self, proto: str, port: int, user: str, pw: str, timeout: float = TIMEOUT) -> str:
        """One login in any protocol, as a comparable string ("OK ...", "454 4.7.0 ...", "-ERR ...")."""
        if proto == "imap":
            return self.imap_login(port, user, pw, timeout)
        if proto == "pop3":
            return self.pop3_login(port, user, pw, timeout)
        r = self.smtp_auth(port, user, pw, timeout)
        return f"{r.code} {r.lines[-1] if r.lines else ''}"

    def assert_login_ok(self, proto: str, port: int, user: str, pw: str):
        resp = self.login(proto, port, user, pw)
        ok = resp.startswith("OK") if proto == "imap" else resp.startswith("+OK") if proto == "pop3" \
            else resp.startswith("235")
        self.assertTrue(ok, f"{proto} login of {user}: {resp!r}")

    def wait_login_ok(self, proto: str, port: int, user: str, pw: str, timeout: float = 30.0,
                      allowed: tuple[str, ...] = ()) -> str:
        """Retries a login (every 0.3 s, bounded) until it succeeds; each failure must be one of
        `allowed` (prefixes). Returns the last reply."""
        deadline = time.monotonic() + timeout
        while True:
            resp = self.login(proto, port, user, pw)
            if resp.startswith(("OK", "+OK", "235")):
                return resp
            if allowed:
                self.assertTrue(resp.startswith(allowed), f"unexpected reply while recovering: {resp!r}")
            self.assertLess(time.monotonic(), deadline, f"{proto} login of {user} did not recover: {resp!r}")
            time.sleep(0.3)

    def assert_serving(self, px: harness.Proxy, proto: str, port: int, user: str, pw: str):
        """The proxy survived: alive, and a normal login works."""
        self.assertTrue(px.alive(), f"the proxy died (exit {px.proc.poll() if px.proc else px.returncode})")
        self.assert_login_ok(proto, port, user, pw)
        self.assertTrue(px.alive(), "the proxy died during a normal login")

    def wait_log(self, px: harness.Proxy, pattern: str, since: int = 0, timeout: float = 10.0) -> re.Match:
        rx = re.compile(pattern)

        def find():
            return rx.search(px.run_log()[since:])
        return harness.wait_until(find, timeout, f"proxy log line /{pattern}/")

    # --- delegated accounts ----------------------------------------------------------------------------------
    def authorize(self, px: harness.Proxy, login: str):
        """Authorization code flow through POST /api/authorize, the mock's auto-approving /authorize
        and the proxy's callback (as test_delegated does)."""
        harness.mock_settings(auto_approve="login_hint")
        try:
            status, out = harness.api(px, "POST", "/api/authorize", {"account": login, "device": False})
            self.assertEqual(status, 200, out)
            self.assertTrue(out.get("ok"), out)
            final = harness.follow_authorize(out["authorize_url"])
            status, _, body = harness.http_get(final)
            self.assertEqual(status, 200, body[:300])
        finally:
            harness.mock_settings(auto_approve="")
        harness.wait_account_state(px, login, "authorized")

    def authorize_then_expire(self, px: harness.Proxy, login: str):
        """Authorizes while access tokens live 2 s, stops the proxy, waits until the access token has
        expired and restores the default lifetime: the store then holds a grant whose next use needs
        a refresh. The caller starts the proxy again."""
        harness.mock_settings(token_lifetime=2)
        try:
            self.authorize(px, login)
            issued = time.time()
        finally:
            harness.mock_settings(token_lifetime=3599)
        px.stop()
        harness.wait_until(lambda: time.time() >= issued + 3.2, 15, "the access token to expire", 0.1)

    def store_file(self, px: harness.Proxy) -> str:
        d = os.path.join(px.state_dir, "tokens")
        files = [os.path.join(d, f) for f in sorted(os.listdir(d))
                 if not f.startswith(".") and ".tmp" not in f and ".unreadable-" not in f]
        self.assertEqual(len(files), 1, f"token store files: {os.listdir(d)}")
        return files[0]

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()


# ============================================================================================================
class A_IdentityPlatform(FaultCase):
    """1. The identity platform fails: HTTP 500, 429 with Retry-After, no answer (stall), a body
    that is not JSON, a certificate the proxy does not trust. Every provider's authority is a fault
    proxy (TLS terminated with a trusted certificate, re-encrypted to the mock) except the healthy
    one's. Accounts: scanner (client credentials), alice (authorization code, her access token
    expired so that her next login refreshes), shared (client credentials on the healthy provider)."""

    def setUp(self):
        super().setUp()
        self.wd = self.new_workdir(self)
        idp = (tb()["idp_url"].split("//")[1].split(":")[0], int(tb()["idp_port"]))
        self.fp = self.fault_proxy(idp, tls=(PKI["good"]["cert"], PKI["good"]["key"]), target_tls=target_ctx())
        authority = f"https://127.0.0.1:{self.fp.port}"
        providers = [harness.provider(self.wd, name="app", authority=authority),
                     harness.delegated_provider(self.wd, "web", name="web", authority=authority),
                     harness.provider(self.wd, name="healthy")]
        accounts = [harness.account(SCANNER, PW[SCANNER], "app"),
                    harness.delegated_account(ALICE, CODE, "web", PW[ALICE]),
                    harness.account(SHARED, PW[SHARED], "healthy")]
        listeners = [harness.listener(tls="none", upstream="imaps"),
                     harness.smtp_listener(tls="none", upstream="submission"),
                     harness.listener(tls="none", upstream="pop3s", protocol="pop3")]
        cfg = harness.write_config(self.wd, providers, listeners, accounts, proxy={
            "token_key_file": harness.token_key_file(self.wd), "token_timeout": 2, "login_timeout": 5})
        self.px = self.proxy(cfg, 3)
        self.imap, self.smtp, self.pop3 = self.px.ports
        self.authorize_then_expire(self.px, ALICE)
        harness.mock_reset("stats")
        self.px.start()
        self.imap, self.smtp, self.pop3 = self.px.ports

    def check_temporary(self, log_error: str, bound: float = 15.0, at_the_mock: bool = True):
        """While the fault lasts: every protocol answers with its temporary reply within `bound`
        seconds, and the log names the cause. A fault of the fault proxy leaves the healthy
        provider (straight to the mock) working meanwhile; a fault injected at the mock hits it
        too, so then it is checked afterwards (check_recovered)."""
        since = len(self.px.run_log())
        self.assertEqual(self.bounded(bound, self.imap_login, self.imap, SCANNER, PW[SCANNER]), IMAP_TEMP)
        self.assertEqual(self.bounded(bound, self.imap_login, self.imap, ALICE, PW[ALICE]), IMAP_TEMP)
        r = self.bounded(bound, self.smtp_auth, self.smtp, ALICE, PW[ALICE])
        self.assertEqual((r.code, r.lines[-1]), (454, SMTP_TEMP), r)
        self.assertEqual(self.bounded(bound, self.pop3_login, self.pop3, SCANNER, PW[SCANNER]), POP_TEMP)
        for user, prov in ((SCANNER, "app"), (ALICE, "web")):
            self.wait_log(self.px, rf'no token for user="{re.escape(user)}" provider={prov} kind=transient '
                                   rf'error=[^\n]*{log_error}', since)
        acct = harness.account_status(self.px, ALICE)
        self.assertEqual(acct["state"], "authorized", f"a transient failure must keep the grant: {acct}")
        self.assertTrue(acct.get("last_error"), acct)
        if not at_the_mock:
            self.assert_serving(self.px, "imap", self.imap, SHARED, PW[SHARED])

    def check_recovered(self):
        """After the fault: logins work again without a new authorization, the store entry still
        opens after a restart, and no refresh token was refused."""
        self.wait_login_ok("imap", self.imap, SCANNER, PW[SCANNER], allowed=(IMAP_TEMP,))
        self.wait_login_ok("imap", self.imap, ALICE, PW[ALICE], allowed=(IMAP_TEMP,))
        self.assert_login_ok("smtp", self.smtp, ALICE, PW[ALICE])
        self.px.restart()
        self.imap = self.px.ports[0]
        self.assertEqual(harness.account_status(self.px, ALICE)["state"], "authorized")
        self.assert_login_ok("imap", self.imap, ALICE, PW[ALICE])
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, CODE), 0, f"a new sign-in was needed: {st['grants']}")
        self.assertGreaterEqual(harness.grant_count(st, REFRESH, "successes"), 1, st["grants"])
        self.assertEqual(st["refresh_reuse_rejected"], 0, st)
        self.assert_serving(self.px, "imap", self.imap, SHARED, PW[SHARED])

    def test_http_500(self):
        harness.mock_fail(endpoint="token", status=500, count=1000)
        self.check_temporary(r"server_error AADSTS90033")
        harness.mock_clear_faults()
        self.check_recovered()

    def test_http_429_retry_after_is_honoured(self):
        """One 429 per grant, Retry-After 10 s (longer than the proxy's 5 s failure hold): logins in
        the meantime are answered from memory without asking the identity platform again."""
        harness.mock_fail(faults=[
            {"endpoint": "token", "grant_type": CCG, "status": 429, "retry_after": 10, "count": 1},
            {"endpoint": "token", "grant_type": REFRESH, "status": 429, "retry_after": 10, "count": 1}])
        t0 = time.monotonic()
        self.assertEqual(self.imap_login(self.imap, SCANNER, PW[SCANNER]), IMAP_TEMP)
        self.assertEqual(self.imap_login(self.imap, ALICE, PW[ALICE]), IMAP_TEMP)
        self.wait_log(self.px, r"kind=transient error=temporarily_unavailable AADSTS50196")
        self.assertEqual(harness.account_status(self.px, ALICE)["state"], "authorized")
        # Within Retry-After: the same replies, no new request (no retry storm).
        for _ in range(3):
            self.assertEqual(self.imap_login(self.imap, SCANNER, PW[SCANNER]), IMAP_TEMP)
            self.assertEqual(self.pop3_login(self.pop3, ALICE, PW[ALICE]), POP_TEMP)
        st = harness.mock_stats()
        if time.monotonic() - t0 < 9:  # else Retry-After may have run out (a very slow machine)
            self.assertEqual((harness.grant_count(st, CCG), harness.grant_count(st, REFRESH)), (1, 1),
                             f"the identity platform was asked again within Retry-After: {st['grants']}")
        else:
            print("\n[429 test: the checks took longer than Retry-After; request counts not compared]",
                  file=sys.stderr)
        self.wait_login_ok("imap", self.imap, SCANNER, PW[SCANNER], timeout=20, allowed=(IMAP_TEMP,))
        self.wait_login_ok("imap", self.imap, ALICE, PW[ALICE], timeout=20, allowed=(IMAP_TEMP,))
        st = harness.mock_stats()
        self.assertEqual((harness.grant_count(st, CCG), harness.grant_count(st, REFRESH)), (2, 2), st["grants"])
        self.check_recovered()

    def test_timeout_idp_accepts_but_never_answers(self):
        """The fault proxy accepts the connection and stalls: token_timeout (2 s) ends each request."""
        self.fp.set(Fault("stall", on_accept=True))
        self.check_temporary(r"timeout", bound=2 + 8, at_the_mock=False)
        self.assertGreaterEqual(self.fp.accepted, 2)
        self.fp.set(PASS)
        # The proxy gave up on every stalled connection (none is left open).
        self.fp.wait_for(lambda f: sum(e == "stall ended" for e in f.events) >=
                         sum(e == "stall on accept" for e in f.events), 10, "the stalled connections to close")
        self.check_recovered()

    def test_invalid_json_body(self):
        harness.mock_fail(endpoint="token", status=200, body='{"access_token": "x", "token_type": ',
                          content_type="application/json; charset=utf-8", count=1000)
        self.check_temporary(r"invalid_response: HTTP 200: body is not a JSON object")
        harness.mock_clear_faults()
        self.check_recovered()

    def test_untrusted_certificate(self):
        """The identity platform's endpoint presents a self-signed certificate: nothing is sent
        (no client secret, no refresh token), the log says why."""
        self.fp.set_tls(PKI["selfsigned"]["cert"], PKI["selfsigned"]["key"])
        plaintext_before = self.fp.c2s
        self.check_temporary(r"tls: certificate verify failed: self-signed certificate", at_the_mock=False)
        self.assertGreaterEqual(self.fp.handshake_failures, 2)
        self.assertEqual(self.fp.c2s, plaintext_before, "bytes went over a TLS session the proxy should have refused")
        self.fp.set_tls(PKI["good"]["cert"], PKI["good"]["key"])
        self.check_recovered()


# ============================================================================================================
class B_Upstream(FaultCase):
    """2. The upstream fails: connection refused or reset at once, reset during the greeting,
    reset during the upstream AUTHENTICATE/AUTH, reset mid-relay, a greeting that never comes.
    One proxy; per protocol a listener through a fault proxy (TLS terminated with a trusted
    certificate, re-encrypted to Dovecot's/Postfix's implicit-TLS port, so faults can match the
    plaintext), one straight to the server (healthy) and one to a port nobody listens on."""

    class_proxies: list = []

    @classmethod
    def setUpClass(cls):
        wd = cls.new_workdir(cls)
        dc, pf = tb()["dovecot"], tb()["postfix"]
        tls = (PKI["good"]["cert"], PKI["good"]["key"])
        cls.fps = {
            "imap": FaultProxy((dc["imaps"]["host"], dc["imaps"]["port"]), tls=tls, target_tls=target_ctx()),
            "smtp": FaultProxy((pf["smtps"]["host"], pf["smtps"]["port"]), tls=tls, target_tls=target_ctx()),
            "pop3": FaultProxy((dc["pop3s"]["host"], dc["pop3s"]["port"]), tls=tls, target_tls=target_ctx()),
        }
        dead = {p: FaultProxy(("127.0.0.1", 9)) for p in cls.fps}
        for fp in list(cls.fps.values()) + list(dead.values()):
            cls.addClassCleanup(fp.close)
        for fp in dead.values():
            fp.close_listener()  # its port now refuses connections
        listeners, cls.port_index = [], {}

        def add(key, listener):
            cls.port_index[key] = len(listeners)
            listeners.append(listener)
        for proto in ("imap", "smtp", "pop3"):
            if proto == "smtp":
                mk = lambda up, **kw: harness.smtp_listener(tls="none", upstream=up, **kw)  # noqa: E731
                add(("smtp", "healthy"), mk("submission"))
            else:
                mk = lambda up, proto=proto, **kw: harness.listener(tls="none", upstream=up,  # noqa: E731
                                                                   protocol=proto)
                add((proto, "healthy"), mk("imaps" if proto == "imap" else "pop3s"))
            kw = {"upstream_tls": "implicit"} if proto == "smtp" else {}
            add((proto, "fault"), mk(cls.fps[proto].address, **kw))
            add((proto, "dead"), mk(dead[proto].address, **kw))
        cfg = harness.write_config(wd, [harness.provider(wd)], listeners,
                                   [harness.account(SCANNER, PW[SCANNER])], proxy={"login_timeout": 2})
        cls.px = harness.Proxy(cfg, len(listeners), wd, wait_admin=True)
        cls.class_proxies = [cls.px]
        cls.addClassCleanup(cls.px.stop)
        cls.px.start()

    def setUp(self):
        super().setUp()
        for fp in self.fps.values():
            fp.set(PASS)

    def port(self, proto: str, kind: str) -> int:
        return self.px.ports[self.port_index[(proto, kind)]]

    def after_fault(self, proto: str):
        """Alive, a normal login on the healthy listener, and the faulted one works again."""
        self.fps[proto].set(PASS)
        self.assert_serving(self.px, proto, self.port(proto, "healthy"), SCANNER, PW[SCANNER])
        self.assert_login_ok(proto, self.port(proto, "fault"), SCANNER, PW[SCANNER])

    def expect_login_failure(self, proto: str, kind: str, log_reason: str, smtp_at_greeting: bool = True):
        """A login through `kind` gets the protocol's 'mail server unavailable' reply, within the
        pre-login bound (5 x login_timeout plus slack), and the log says why. SMTP prepares the
        upstream before its greeting: a failure then is a 421 greeting, a failure during the
        upstream AUTH a 454."""
        since = len(self.px.run_log())
        reply = self.bounded(15, self.login, proto, self.port(proto, kind), SCANNER, PW[SCANNER])
        expected = {"imap": IMAP_UP_DOWN, "pop3": POP_UP_DOWN,
                    "smtp": f"421 {SMTP_GREETING_DOWN}" if smtp_at_greeting else f"454 {SMTP_UP_DOWN}"}[proto]
        self.assertEqual(reply, expected, f"{proto} via {kind}")
        self.wait_log(self.px, log_reason, since)
        return reply

    # -- cases ---------------------------------------------------------------------------------------------
    def test_connection_refused(self):
        for proto in ("imap", "smtp", "pop3"):
            with self.subTest(proto=proto):
                self.expect_login_failure(proto, "dead", r"upstream unavailable: connect 127\.0\.0\.1:\d+: "
                                                         r"Connection refused")
                self.assert_serving(self.px, proto, self.port(proto, "healthy"), SCANNER, PW[SCANNER])

    def test_reset_at_once(self):
        """Accepted, then a TCP RST before the TLS handshake. (The RST may reach the proxy before
        it has seen its connect complete: then the connect, not the handshake, fails.)"""
        for proto in ("imap", "smtp", "pop3"):
            with self.subTest(proto=proto):
                self.fps[proto].set(Fault("reset", on_accept=True))
                self.expect_login_failure(proto, "fault",
                                          r"upstream unavailable: (?:tls|connect) 127\.0\.0\.1:\d+: ")
                self.after_fault(proto)

    def test_reset_or_truncation_during_greeting(self):
        """After 5 bytes of the greeting the upstream connection is reset (RST), or closed cleanly
        (TLS close_notify, FIN: a truncated greeting)."""
        for proto, action in ((p, a) for p in ("imap", "smtp", "pop3") for a in ("reset", "close")):
            with self.subTest(proto=proto, action=action):
                self.fps[proto].set(Fault(action, direction="s2c", after_bytes=5))
                self.expect_login_failure(proto, "fault",
                                          r"upstream login failed: upstream closed the connection")
                self.after_fault(proto)

    def test_reset_during_upstream_authenticate(self):
        """The upstream connection is reset when the proxy sends AUTHENTICATE/AUTH XOAUTH2 (the
        token never arrives). The client may simply retry on the same connection."""
        patterns = {"imap": b"AUTHENTICATE XOAUTH2", "smtp": b"AUTH XOAUTH2", "pop3": b"AUTH XOAUTH2"}
        for proto in ("imap", "smtp", "pop3"):
            with self.subTest(proto=proto):
                self.fps[proto].set(Fault("reset", direction="c2s", pattern=patterns[proto]))
                before = harness.mock_stats()["introspection"]["requests"]
                self.expect_login_failure(proto, "fault", r"upstream login failed: ", smtp_at_greeting=False)
                self.assertEqual(harness.mock_stats()["introspection"]["requests"], before,
                                 "the token reached the server although the connection was reset before it")
                self.after_fault(proto)
        # Retry on the same client connection after a reset during AUTHENTICATE.
        self.fps["imap"].set(Fault("reset", direction="c2s", pattern=patterns["imap"]))
        with harness.LineClient(self.port("imap", "fault"), timeout=TIMEOUT) as c:
            self.assertEqual(c.cmd("a1", f"LOGIN {q(SCANNER)} {q(PW[SCANNER])}")[0], IMAP_UP_DOWN)
            self.fps["imap"].set(PASS)
            self.assertTrue(c.cmd("a2", f"LOGIN {q(SCANNER)} {q(PW[SCANNER])}")[0].startswith("OK"))
        self.fps["smtp"].set(Fault("reset", direction="c2s", pattern=patterns["smtp"]))
        with harness.SmtpClient(self.port("smtp", "fault"), timeout=TIMEOUT) as c:
            c.ehlo()
            r = c.cmd("AUTH PLAIN " + b64(f"\0{SCANNER}\0{PW[SCANNER]}"))
            self.assertEqual((r.code, r.lines[-1]), (454, SMTP_UP_DOWN))
            self.fps["smtp"].set(PASS)
            self.assertEqual(c.cmd("AUTH PLAIN " + b64(f"\0{SCANNER}\0{PW[SCANNER]}")).code, 235, c.transcript)

    def test_upstream_greeting_never_comes(self):
        """The upstream accepts (TLS completes) but never sends its greeting: after login_timeout
        the client gets the temporary reply, not a silent close."""
        for proto in ("imap", "smtp", "pop3"):
            with self.subTest(proto=proto):
                self.fps[proto].set(Fault("stall", direction="s2c", after_bytes=0))
                self.expect_login_failure(proto, "fault", r"upstream timeout during login")
                self.after_fault(proto)

    def closed_promptly(self, sock_file, sock: socket.socket, bound: float = 10.0) -> bytes:
        """Reads until the proxy closes the client connection; fails if that takes longer than bound."""
        sock.settimeout(bound)
        got = b""
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < bound:
                chunk = sock_file.read1(65536)
                if not chunk:
                    return got
                got += chunk
        except (ConnectionError, ssl.SSLError):
            return got
        except (socket.timeout, TimeoutError):
            pass
        self.fail(f"the client connection was left open {bound}s after the upstream reset")

    def test_reset_mid_relay(self):
        # IMAP: reset when the client's FETCH goes upstream, and when the FETCH reply comes back;
        # the FETCH reply cut by a clean close inside the first message (at its Subject line).
        for action, direction, pattern in (("reset", "c2s", b"FETCH"), ("reset", "s2c", b"* 1 FETCH"),
                                           ("close", "s2c", b"Subject:")):
            with self.subTest(proto="imap", action=action, direction=direction):
                self.fps["imap"].set(Fault(action, direction=direction, pattern=pattern))
                since = len(self.px.run_log())
                c = harness.LineClient(self.port("imap", "fault"), timeout=TIMEOUT)
                self.addCleanup(c.close)
                self.assertTrue(c.cmd("a1", f"LOGIN {q(SCANNER)} {q(PW[SCANNER])}")[0].startswith("OK"))
                self.assertTrue(c.cmd("a2", "SELECT INBOX")[0].startswith("OK"))
                c.send("a3 FETCH 1:* (BODY.PEEK[])")
                rest = self.closed_promptly(c.f, c.sock)
                self.assertNotIn(b"a3 OK", rest)
                self.wait_log(self.px, r'summary protocol=imap [^\n]*logged_in=true[^\n]*end="[^"]*closed', since)
                self.after_fault("imap")
        with self.subTest(proto="smtp"):
            self.fps["smtp"].set(Fault("reset", direction="c2s", pattern=b"X-Fault-Marker"))
            c = harness.SmtpClient(self.port("smtp", "fault"), timeout=TIMEOUT)
            self.addCleanup(c.close)
            c.ehlo()
            self.assertEqual(c.cmd("AUTH PLAIN " + b64(f"\0{SCANNER}\0{PW[SCANNER]}")).code, 235)
            self.assertEqual(c.cmd(f"MAIL FROM:<{SCANNER}>").code, 250, c.transcript)
            self.assertEqual(c.cmd(f"RCPT TO:<{SINK}>").code, 250, c.transcript)
            self.assertEqual(c.cmd("DATA").code, 354, c.transcript)
            c.send_raw(b"Subject: reset mid-DATA\r\nX-Fault-Marker: 1\r\n\r\n" + b"body line\r\n" * 100 + b".\r\n")
            rest = self.closed_promptly(c.f, c.sock)
            self.assertNotIn(b"250", rest, "a message cut off mid-DATA must not be acknowledged")
            self.after_fault("smtp")
        with self.subTest(proto="pop3"):
            self.fps["pop3"].set(Fault("reset", direction="c2s", pattern=b"RETR"))
            c = harness.LineClient(self.port("pop3", "fault"), timeout=TIMEOUT)
            self.addCleanup(c.close)
            c.send(f"USER {SCANNER}")
            c.readline()
            c.send(f"PASS {PW[SCANNER]}")
            self.assertTrue(c.readline().startswith("+OK"))
            c.send("RETR 1")
            self.closed_promptly(c.f, c.sock)
            self.after_fault("pop3")


# ============================================================================================================
class C_UpstreamCertificates(FaultCase):
    """3. The upstream presents an expired certificate, one for another host name, or a self-signed
    one (the fault proxy terminates TLS with it in front of Dovecot/Postfix): the proxy refuses the
    TLS session, so not one byte (no token) goes over it; the client gets the temporary reply and
    the log says what was wrong with the certificate. A good certificate works (control)."""

    class_proxies: list = []

    @classmethod
    def setUpClass(cls):
        wd = cls.new_workdir(cls)
        dc, pf = tb()["dovecot"], tb()["postfix"]
        good = (PKI["good"]["cert"], PKI["good"]["key"])
        cls.fps = {
            "imap": FaultProxy((dc["imaps"]["host"], dc["imaps"]["port"]), tls=good, target_tls=target_ctx()),
            "smtp": FaultProxy((pf["smtps"]["host"], pf["smtps"]["port"]), tls=good, target_tls=target_ctx()),
            "pop3": FaultProxy((dc["pop3s"]["host"], dc["pop3s"]["port"]), tls=good, target_tls=target_ctx()),
        }
        for fp in cls.fps.values():
            cls.addClassCleanup(fp.close)
        listeners = [harness.listener(tls="none", upstream=cls.fps["imap"].address),
                     harness.smtp_listener(tls="none", upstream=cls.fps["smtp"].address, upstream_tls="implicit"),
                     harness.listener(tls="none", upstream=cls.fps["pop3"].address, protocol="pop3")]
        cfg = harness.write_config(wd, [harness.provider(wd)], listeners, [harness.account(SCANNER, PW[SCANNER])],
                                   proxy={"login_timeout": 2})
        cls.px = harness.Proxy(cfg, 3, wd, wait_admin=True)
        cls.class_proxies = [cls.px]
        cls.addClassCleanup(cls.px.stop)
        cls.px.start()
        cls.ports = dict(zip(("imap", "smtp", "pop3"), cls.px.ports))

    def setUp(self):
        super().setUp()
        for fp in self.fps.values():
            fp.set_tls(PKI["good"]["cert"], PKI["good"]["key"])

    def check_refused(self, cert: str, why: str, protos=("imap", "smtp", "pop3")):
        for proto in protos:
            with self.subTest(cert=cert, proto=proto):
                fp = self.fps[proto]
                fp.set_tls(PKI[cert]["cert"], PKI[cert]["key"])
                plaintext, failures = fp.c2s, fp.handshake_failures
                introspections = harness.mock_stats()["introspection"]["requests"]
                since = len(self.px.run_log())
                reply = self.bounded(15, self.login, proto, self.ports[proto], SCANNER, PW[SCANNER])
                expected = {"imap": IMAP_UP_DOWN, "pop3": POP_UP_DOWN, "smtp": f"421 {SMTP_GREETING_DOWN}"}[proto]
                self.assertEqual(reply, expected)
                self.wait_log(self.px, rf"upstream unavailable: tls 127\.0\.0\.1:{fp.port}: [^\n]*{why}", since)
                fp.wait_for(lambda f: f.handshake_failures > failures, 5, "the refused handshake")
                self.assertEqual(fp.c2s, plaintext, "the proxy sent data over a TLS session it should have refused")
                self.assertEqual(harness.mock_stats()["introspection"]["requests"], introspections,
                                 "a token reached the server")
                fp.set_tls(PKI["good"]["cert"], PKI["good"]["key"])
                self.assert_serving(self.px, proto, self.ports[proto], SCANNER, PW[SCANNER])

    def test_control_good_certificate(self):
        for proto in ("imap", "smtp", "pop3"):
            self.assert_login_ok(proto, self.ports[proto], SCANNER, PW[SCANNER])
            self.assertGreater(self.fps[proto].c2s, 0)

    def test_expired_certificate(self):
        self.check_refused("expired", "certificate has expired")

    def test_wrong_host_name(self):
        self.check_refused("wronghost", "(IP address mismatch|[Hh]ostname mismatch)")

    def test_self_signed_certificate(self):
        self.check_refused("selfsigned", "self-signed certificate")


# ============================================================================================================
class D_Clients(FaultCase):
    """4. Hostile or broken clients: a slow-loris client (one byte every 0.25 s, never a line end)
    is closed at 5 x login_timeout; a client that streams 1 GB without a line end is cut off early
    with the protocol's "line too long" reply, with the proxy's memory bounded."""

    class_proxies: list = []
    LOGIN_TIMEOUT = 2

    @classmethod
    def setUpClass(cls):
        wd = cls.new_workdir(cls)
        listeners = [harness.listener(tls="none", upstream="imaps"),
                     harness.smtp_listener(tls="none", upstream="submission"),
                     harness.listener(tls="none", upstream="pop3s", protocol="pop3")]
        cfg = harness.write_config(wd, [harness.provider(wd)], listeners, [harness.account(SCANNER, PW[SCANNER])],
                                   proxy={"login_timeout": cls.LOGIN_TIMEOUT})
        cls.px = harness.Proxy(cfg, 3, wd, wait_admin=True)
        cls.class_proxies = [cls.px]
        cls.addClassCleanup(cls.px.stop)
        cls.px.start()
        cls.ports = dict(zip(("imap", "smtp", "pop3"), cls.px.ports))

    def test_slow_loris(self):
        cap = 5 * self.LOGIN_TIMEOUT
        results: dict = {}

        def loris(proto: str, prefix: bytes):
            s = socket.create_connection(("127.0.0.1", self.ports[proto]), timeout=cap + 10)
            got = b""
            t0 = time.monotonic()
            f = s.makefile("rb")
            try:
                greeting = f.readline()
                s.setblocking(False)
                i = 0
                while time.monotonic() - t0 < cap + 10:
                    try:
                        s.send(prefix[i:i + 1] if i < len(prefix) else b"x")
                        i += 1
                    except OSError:
                        break
                    try:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        got += chunk
                    except BlockingIOError:
                        pass
                    except OSError:
                        break
                    time.sleep(0.25)
                results[proto] = (greeting, got, time.monotonic() - t0, i)
            finally:
                f.close()
                s.close()

        threads = [threading.Thread(target=loris, args=a, daemon=True) for a in
                   (("imap", b"a1 LOGIN scanner"), ("smtp", b"EHLO slow.example"), ("pop3", b"USER scanner"))]
        since = len(self.px.run_log())
        for t in threads:
            t.start()
        for t in threads:
            t.join(cap + 20)
        for proto in ("imap", "smtp", "pop3"):
            with self.subTest(proto=proto):
                self.assertIn(proto, results, "the slow client thread did not finish")
                greeting, got, took, sent = results[proto]
                self.assertTrue(greeting, "no greeting")
                self.assertLess(took, cap + 5, f"still open {took:.1f}s after connecting ({sent} bytes sent)")
                self.assertEqual(got, b"", "a timed-out client gets no reply, only the close")
        self.wait_log(self.px, r"(?s)(client timeout before login.*){3}", since)
        for proto in ("imap", "smtp", "pop3"):
            self.assert_serving(self.px, proto, self.ports[proto], SCANNER, PW[SCANNER])

    def flood(self, proto: str, preamble: list[bytes], expect: bytes, limit: int = 1 << 30):
        """Sends the preamble lines (reading one reply each), then up to `limit` bytes without a line
        end until the proxy closes. Returns (reply after the flood, bytes sent, peak RSS growth KiB)."""
        pid = self.px.pid
        base = rss_kib(pid)
        peak = [base]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], rss_kib(pid))
                except OSError:
                    return
                time.sleep(0.02)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        s = socket.create_connection(("127.0.0.1", self.ports[proto]), timeout=TIMEOUT)
        f = s.makefile("rb")
        received = bytearray()
        try:
            f.readline()
            for line in preamble:
                s.sendall(line)
                while True:  # one reply (SMTP: multi-line until "NNN ")
                    r = f.readline()
                    self.assertTrue(r, f"closed after {line!r}")
                    if proto != "smtp" or r[3:4] == b" ":
                        break

            def reader():
                try:
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            return
                        received.extend(chunk)
                except OSError:
                    return
            rt = threading.Thread(target=reader, daemon=True)
            rt.start()
            chunk = b"A" * 65536
            sent = 0
            t0 = time.monotonic()
            while sent < limit and time.monotonic() - t0 < 60:
                try:
                    s.sendall(chunk)
                except OSError:
                    break
                sent += len(chunk)
            rt.join(10)
        finally:
            stop.set()
            sampler.join(5)
            f.close()
            s.close()
        self.assertLess(sent, limit, "the proxy read 1 GB without a line end")
        self.assertIn(expect, bytes(received), f"{proto}: reply after the flood: {bytes(received)[:200]!r}")
        return bytes(received), sent, peak[0] - base

    def test_one_gigabyte_without_a_line_end(self):
        cases = [("imap", [], b"* BAD Line too long\r\n"),
                 ("imap", [b"a1 AUTHENTICATE PLAIN\r\n"], b"a1 BAD Response too long\r\n"),
                 ("smtp", [b"EHLO flood.example\r\n"], b"500 5.5.6 Line too long\r\n"),
                 ("smtp", [b"EHLO flood.example\r\n", b"AUTH PLAIN\r\n"], b"500 5.5.6 Line too long\r\n"),
                 ("pop3", [], b"-ERR Line too long\r\n")]
        for proto, preamble, expect in cases:
            with self.subTest(proto=proto, preamble=preamble):
                got, sent, growth = self.flood(proto, preamble, expect)
                self.assertLess(growth, 64 * 1024, f"RSS grew by {growth} KiB during the flood")
                print(f"\n[{proto} {preamble!r}: cut off after {sent / 1048576:.1f} MiB sent, "
                      f"RSS +{growth} KiB]", file=sys.stderr)
                self.assert_serving(self.px, proto, self.ports[proto], SCANNER, PW[SCANNER])


# ============================================================================================================
class E_StateDirectory(FaultCase):
    """5. The state directory is read-only, full, or holds a corrupted entry. Delegated accounts
    with a token key file; refresh tokens strictly single use at the mock (grace 0), so a refresh
    token that only lived in memory and was lost would show as a refused reuse."""

    def setUp(self):
        super().setUp()
        harness.mock_settings(refresh_grace_seconds=0)
        self.addCleanup(harness.mock_settings, refresh_grace_seconds=0, token_lifetime=3599)

    def make(self, logins=(ALICE,), state_dir: str | None = None, **proxy_opts) -> harness.Proxy:
        self.wd = self.new_workdir(self)
        prov = harness.delegated_provider(self.wd, "web", name="web")
        accounts = [harness.delegated_account(lg, CODE, "web", PW[lg]) for lg in logins]
        listeners = [harness.listener(tls="none", upstream="imaps"),
                     harness.smtp_listener(tls="none", upstream="submission"),
                     harness.listener(tls="none", upstream="pop3s", protocol="pop3")]
        opts = {"token_key_file": harness.token_key_file(self.wd), "refresh_ahead": 30}
        if state_dir:
            opts["state_dir"] = state_dir
        opts.update(proxy_opts)
        cfg = harness.write_config(self.wd, [prov], listeners, accounts, proxy=opts)
        return self.proxy(cfg, 3, start=False)

    def mount_or_skip(self, *args: str, path: str):
        r = _mount(*args)
        if r.returncode != 0:
            msg = f"!!! SKIPPED: `mount {' '.join(args)}` was refused ({r.stderr.strip()}): this case needs root " \
                  f"and permission to mount !!!"
            print("\n" + msg, file=sys.stderr)
            self.skipTest(msg)
        self.addCleanup(self.unmount, path)

    def unmount(self, path: str):
        for p in self._proxies:  # a running proxy keeps files open below the mount point
            p.stop()
        _umount_all(path)
        if is_mount_point(path):
            subprocess.run(["umount", "-l", path], capture_output=True, timeout=30)

    def bind_ro(self, path: str):
        """Makes `path` read-only for every process, root included (a read-only bind mount on itself)."""
        if not is_mount_point(path):
            self.mount_or_skip("--bind", path, path, path=path)
        self.mount_or_skip("-o", "remount,ro,bind", path, path=path)

    def make_rw(self, path: str):
        r = _mount("-o", "remount,rw,bind", path)
        self.assertEqual(r.returncode, 0, r.stderr)

    def expired_refresh_due(self, px: harness.Proxy, login: str):
        """Authorized with 2 s access tokens, proxy restarted after expiry: the next login refreshes."""
        self.authorize_then_expire(px, login)
        px.start()

    def check_in_memory_then_persisted(self, px: harness.Proxy, entry: str, make_writable, log_error: str):
        """The store cannot be written: a login that refreshes still works (tokens in memory), the
        error is logged, the entry on disk is untouched; once writable again the proxy stores the
        newer grant by itself, and after a restart the account works without a new sign-in."""
        before = self.read(entry)
        since = len(px.run_log())
        harness.mock_reset("stats")
        # The new access token lives 30 s: after the restart below it is not reused (less than a
        # minute left), so that login must redeem the refresh token the store holds.
        harness.mock_settings(token_lifetime=30)
        self.assert_login_ok("imap", px.ports[0], ALICE, PW[ALICE])
        self.assertEqual(harness.grant_count(harness.mock_stats(), REFRESH, "successes"), 1)
        self.wait_log(px, rf'account="{re.escape(ALICE)}": cannot store its tokens: input/output error: [^\n]*{log_error}', since)
        acct = harness.account_status(px, ALICE)
        self.assertEqual(acct["state"], "authorized", acct)
        self.assertFalse(acct.get("stored"), f"the account claims its tokens are stored: {acct}")
        self.assertIn("token store", acct.get("last_error", ""), acct)
        self.assert_login_ok("smtp", px.ports[1], ALICE, PW[ALICE])  # from memory, no new request
        self.assertEqual(self.read(entry), before, "the stored entry changed although the store was not writable")
        make_writable()
        acct = harness.wait_account_state(px, ALICE, "authorized")
        harness.wait_until(lambda: harness.account_status(px, ALICE).get("stored"), 30,
                           "the proxy to store the grant once the directory is writable again", 0.3)
        self.assertNotEqual(self.read(entry), before)
        self.assertFalse(harness.account_status(px, ALICE).get("last_error"))
        px.restart()
        self.assertEqual(harness.account_status(px, ALICE)["state"], "authorized")
        self.assert_login_ok("imap", px.ports[0], ALICE, PW[ALICE])
        st = harness.mock_stats()
        self.assertGreaterEqual(harness.grant_count(st, REFRESH, "successes"), 2, st["grants"])
        self.assertEqual(harness.grant_count(st, CODE), 0, st["grants"])
        self.assertEqual(st["refresh_reuse_rejected"], 0, f"a redeemed refresh token came back from the store: {st}")
        self.assertTrue(px.alive())

    def test_read_only_at_start(self):
        """A proxy started on a read-only state directory refuses to start, saying why (it could
        keep no lock and store no rotated refresh token); nothing in the store changes."""
        px = self.make()
        px.start()
        self.authorize(px, ALICE)
        px.stop()
        entry = self.store_file(px)
        before = self.read(entry)
        self.bind_ro(px.state_dir)
        with self.assertRaises(harness.HarnessError) as cm:
            px.start(timeout=20)
        rc = px.proc.poll() if px.proc else None
        self.assertIsNotNone(rc, "the proxy neither started nor exited")
        self.assertGreater(rc, 0, f"exit status {rc} (negative: killed by a signal)")
        self.assertRegex(str(cm.exception), r"state_dir [^\n]*Read-only file system")
        px.proc = None
        self.assertEqual(self.read(entry), before)
        _umount_all(px.state_dir)
        px.start()
        self.assertEqual(harness.account_status(px, ALICE)["state"], "authorized")
        self.assert_login_ok("imap", px.ports[0], ALICE, PW[ALICE])
        self.assertEqual(harness.grant_count(harness.mock_stats(), CODE), 1)

    def test_read_only_while_running(self):
        """The token store's directory turns read-only under the running proxy. (A read-only
        remount of the whole state directory is refused while the proxy holds its lock file open
        for writing, so the tokens/ directory gets its own read-only bind mount.)"""
        px = self.make()
        px.start()
        self.expired_refresh_due(px, ALICE)
        entry = self.store_file(px)
        tokens = os.path.dirname(entry)
        self.bind_ro(tokens)
        self.check_in_memory_then_persisted(px, entry, lambda: self.make_rw(tokens), "Read-only file system")

    def test_full(self):
        px = self.make()
        os.makedirs(px.state_dir, exist_ok=True)
        self.mount_or_skip("-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", px.state_dir, path=px.state_dir)
        px.start()
        self.expired_refresh_due(px, ALICE)
        entry = self.store_file(px)
        filler = os.path.join(px.state_dir, "filler")
        with open(filler, "wb", buffering=0) as f:
            try:
                for _ in range(4096):  # bounded: 4096 x 4 KiB = 16 MiB > the 512 KiB file system
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        with self.assertRaises(OSError):
            with open(os.path.join(px.state_dir, "probe"), "wb", buffering=0) as f:
                f.write(b"\0" * 8192)

        def free_space():
            for name in ("filler", "probe"):
                try:
                    os.unlink(os.path.join(px.state_dir, name))
                except FileNotFoundError:
                    pass
        self.addCleanup(free_space)
        self.check_in_memory_then_persisted(px, entry, free_space, "No space left on device")

    def test_corrupted_entry(self):
        """Garbage in one account's entry and a truncated one in another's: those accounts answer
        "contact your administrator" in every protocol (the entry is never replaced silently), the
        healthy account works, and a new authorization sets the bad entry aside instead of
        deleting it."""
        px = self.make(logins=(ALICE, SCANNER, RECEIVER))
        px.start()
        tokens = os.path.join(px.state_dir, "tokens")
        entries = {}
        for lg in (ALICE, SCANNER, RECEIVER):  # entry names are hashes: learn which is whose
            have = set(os.listdir(tokens)) if os.path.isdir(tokens) else set()
            self.authorize(px, lg)
            [new] = set(os.listdir(tokens)) - have
            entries[lg] = os.path.join(tokens, new)
        px.stop()
        with open(entries[ALICE], "wb") as f:
            f.write(os.urandom(700))
        data = self.read(entries[SCANNER])
        with open(entries[SCANNER], "wb") as f:
            f.write(data[:len(data) // 2])
        damaged = {lg: self.read(entries[lg]) for lg in (ALICE, SCANNER)}
        px.start()
        for lg in (ALICE, SCANNER):
            with self.subTest(account=lg):
                acct = harness.account_status(px, lg)
                self.assertEqual(acct["state"], "store_error", acct)
                self.wait_log(px, rf'account="{re.escape(lg)}": token store: (corrupt|cannot be decrypted with this key): ')
                self.assertTrue(self.imap_login(px.ports[0], lg, PW[lg]).startswith(IMAP_CONTACT))
                r = self.smtp_auth(px.ports[1], lg, PW[lg])
                self.assertEqual(r.code, 454, r)
                self.assertIn("administrator", r.text)
                self.assertTrue(self.pop3_login(px.ports[2], lg, PW[lg]).startswith(POP_CONTACT))
                self.assertEqual(self.read(entries[lg]), damaged[lg], "a damaged entry was replaced silently")
        self.assert_serving(px, "imap", px.ports[0], RECEIVER, PW[RECEIVER])
        # A new authorization replaces the entry and keeps the damaged one aside.
        self.authorize(px, ALICE)
        self.assert_login_ok("imap", px.ports[0], ALICE, PW[ALICE])
        kept = [n for n in os.listdir(tokens) if ".unreadable-" in n]
        self.assertTrue(kept, f"the damaged entry was deleted: {os.listdir(tokens)}")
        self.assertIn(damaged[ALICE], [self.read(os.path.join(tokens, n)) for n in kept])
        px.restart()
        self.assertEqual(harness.account_status(px, ALICE)["state"], "authorized")
        self.assertEqual(harness.account_status(px, SCANNER)["state"], "store_error")


# ============================================================================================================
class F_KillDuringTokenWrite(FaultCase):
    """6. SIGKILL while the proxy writes the token store: 20 rounds, alternately during a login
    that refreshes (the stored access token has less than a minute left, so every first login
    after a start refreshes) and during an authorization's callback, each killed after a different
    delay spread over the measured duration of that operation. After every kill the entry must
    still open (the restarted proxy shows the account authorized, never store_error), and at the
    end a login works without a new sign-in. The mock keeps a redeemed refresh token usable for a
    while (as Entra does), so a kill between the identity platform's answer and the write costs
    nothing; refresh_reuse_within_grace counts how often that happened."""

    ROUNDS = 20

    def test_sigkill_during_token_writes(self):
        harness.mock_settings(refresh_grace_seconds=600, token_lifetime=30)
        self.addCleanup(harness.mock_settings, refresh_grace_seconds=0, token_lifetime=3599)
        wd = self.new_workdir(self)
        prov = harness.delegated_provider(wd, "web", name="web")
        cfg = harness.write_config(wd, [prov], [harness.listener(tls="none", upstream="imaps")],
                                   [harness.delegated_account(ALICE, CODE, "web", PW[ALICE])],
                                   proxy={"token_key_file": harness.token_key_file(wd)})
        px = self.proxy(cfg, 1)
        self.authorize(px, ALICE)

        def login():
            s = socket.create_connection(("127.0.0.1", px.ports[0]), timeout=20)
            try:
                s.recv(4096)  # greeting
                s.sendall(f"k1 LOGIN {q(ALICE)} {q(PW[ALICE])}\r\n".encode())
                got = b""
                while b"k1 " not in got:  # the tagged reply, or the close at the kill
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
            except OSError:  # the proxy is killed under it
                pass
            finally:
                s.close()

        def callback(final_url: str):
            try:
                harness.http_get(final_url, timeout=20)
            except Exception:  # noqa: BLE001
                pass

        def start_authorization() -> str:
            harness.mock_settings(auto_approve="login_hint")
            try:
                status, out = harness.api(px, "POST", "/api/authorize", {"account": ALICE, "device": False})
                self.assertEqual(status, 200, out)
                return harness.follow_authorize(out["authorize_url"])
            finally:
                harness.mock_settings(auto_approve="")

        # How long each operation takes here (not killed), to spread the kill delays over it.
        px.restart()
        t0 = time.monotonic()
        login()
        t_login = time.monotonic() - t0
        final = start_authorization()
        t0 = time.monotonic()
        callback(final)
        t_callback = time.monotonic() - t0
        harness.wait_account_state(px, ALICE, "authorized")
        px.stop()
        harness.mock_reset("stats")
        kills = []
        for i in range(self.ROUNDS):
            px.start()
            acct = harness.account_status(px, ALICE)
            self.assertEqual(acct["state"], "authorized", f"round {i}: the entry did not open after the kill: {acct}")
            kind = "login" if i % 2 == 0 else "callback"
            span = (t_login if kind == "login" else t_callback) * 1.3
            delay = span * (i // 2) / (self.ROUNDS // 2 - 1)
            if kind == "login":
                t = threading.Thread(target=login, daemon=True)
            else:
                t = threading.Thread(target=callback, args=(start_authorization(),), daemon=True)
            t.start()
            time.sleep(delay)
            px.kill()
            t.join(20)
            self.assertFalse(t.is_alive(), f"round {i}: the client hung after the kill")
            kills.append(f"{kind}@{delay * 1000:.0f}ms")
        px.start()
        self.assertEqual(harness.account_status(px, ALICE)["state"], "authorized")
        self.assert_login_ok("imap", px.ports[0], ALICE, PW[ALICE])
        d = os.path.join(px.state_dir, "tokens")
        self.assertFalse([n for n in os.listdir(d) if ".unreadable-" in n], os.listdir(d))
        st = harness.mock_stats()
        self.assertEqual(st["refresh_reuse_rejected"], 0, st)
        self.assertFalse({k: v for k, v in st["errors"].items() if k.startswith("refresh_token:")}, st["errors"])
        print(f"\n[login {t_login * 1000:.0f} ms, callback {t_callback * 1000:.0f} ms; kills: {', '.join(kills)}; "
              f"refresh successes {harness.grant_count(st, REFRESH, 'successes')}, code redemptions "
              f"{harness.grant_count(st, CODE, 'successes')}, reuse within grace "
              f"{st['refresh_reuse_within_grace']}]", file=sys.stderr)


def main() -> int:
    return harness.run_tests("test_faults")


if __name__ == "__main__":
    sys.exit(main())
