#!/usr/bin/env python3
"""SMTP integration tests for xoauth-proxy against the private Postfix + Dovecot + mock IdP test bed.

    XOAUTH_PROXY_BIN=build/xoauth-proxy python3 tests/integration/test_smtp.py [-v] [-k PATTERN]

Optional: XOAUTH_TESTBED_DIR=/path (reuse or start a test bed there and leave it running),
XOAUTH_KEEP_WORKDIRS=1 (keep proxy work dirs: config, proxy.log). Exits non-zero on failure.

Mail goes client -> proxy -> Postfix (submission with STARTTLS, or implicit TLS; SASL XOAUTH2
checked by Dovecot against the mock IdP) -> Dovecot over LMTP into the test bed's sink mailbox,
and is read back through an IMAP listener of the same proxy (imaplib, FETCH BODY.PEEK[]). The
comparison is byte for byte after removing the trace header fields the servers add
(harness.TRACE_HEADERS). Everything listens on loopback; waits are polls with deadlines and every
loop is bounded. Most classes share one proxy process (started on first use).
"""

from __future__ import annotations

import base64
import hashlib
import imaplib
import os
import re
import shutil
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SCANNER = "scanner@contoso.test"
ALICE = "alice@contoso.test"
RECEIVER = "receiver@contoso.test"  # testbed.json "sinks"[0]: unseeded, only these tests write to it
PASSWORDS = {
    SCANNER: "scanner-Pass-1",
    ALICE: 'correct horse "battery" \\staple',  # space, quotes and a backslash
    RECEIVER: "receiver-Pass-2",
}
EHLO_NAME = "proxy.contoso.test"
KEEP = os.environ.get("XOAUTH_KEEP_WORKDIRS") == "1"
TIMEOUT = 30.0
DELIVERY_TIMEOUT = 60.0
# What the proxy relays from the upstream EHLO (protocol/smtp/responses.hpp relayed_extensions).
RELAYED = ("SIZE", "8BITMIME", "PIPELINING", "SMTPUTF8", "CHUNKING", "ENHANCEDSTATUSCODES", "DSN", "BINARYMIME")
# What Postfix 3.7 offers and the issue requires to come through.
REQUIRED_RELAYED = ("SIZE", "8BITMIME", "PIPELINING", "CHUNKING", "ENHANCEDSTATUSCODES", "DSN", "SMTPUTF8")
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{97,}")
XOAUTH2_IR_RE = re.compile(r"dXNlcj1[A-Za-z0-9+/=]{60,}")  # base64 of "user=..." (an XOAUTH2 response)
SECRET_FINDINGS: list[str] = []  # filled by proxy cleanups (their logs are gone afterwards)


def tb() -> dict:
    return harness.testbed_info()


def b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def plain_ir(user: str, password: str, authzid: str = "") -> str:
    return b64(f"{authzid}\0{user}\0{password}")


def secrets_in(text: str) -> list[str]:
    """Secrets found in a proxy log (names, never the values)."""
    found = []
    for user, pw in PASSWORDS.items():
        if pw in text:
            found.append(f"password of {user}")
        if plain_ir(user, pw) in text or plain_ir(user, pw, user) in text:
            found.append(f"AUTH PLAIN response of {user}")
        if b64(pw) in text:
            found.append(f"base64 password of {user} (AUTH LOGIN)")
    if tb()["client_secret"] in text:
        found.append("client secret")
    if harness.MOCK_JWT_HEADER in text or JWT_RE.search(text):
        found.append("an access token (eyJ...)")
    if XOAUTH2_IR_RE.search(text):
        found.append("an XOAUTH2 initial response (dXNlcj1...)")
    return found


def start_proxy(owner, listeners: list[dict], accounts: list[dict] | None = None,
                providers: list[dict] | None = None, workdir: str | None = None) -> harness.Proxy:
    """Starts a proxy; its cleanup (registered on owner: a test class, a test case, or None for
    the module) scans its log for secrets before the work dir goes."""
    workdir = workdir or tempfile.mkdtemp(prefix="xoauth-smtp-")
    os.chmod(workdir, 0o700)
    if providers is None:
        providers = [harness.provider(workdir)]
    if accounts is None:
        accounts = [harness.account(SCANNER, PASSWORDS[SCANNER]),
                    harness.account(ALICE, PASSWORDS[ALICE], mailbox=ALICE),
                    harness.account(RECEIVER, PASSWORDS[RECEIVER])]
    cfg = harness.write_config(workdir, providers, listeners, accounts)
    proxy = harness.Proxy(cfg, len(listeners), workdir)

    def cleanup():
        proxy.stop()
        found = secrets_in(proxy.log())
        if found:
            SECRET_FINDINGS.append(f"{proxy.log_path}: {', '.join(found)}")
        if KEEP or found:
            print(f"\n[kept proxy workdir {workdir}]", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if owner is None:
        unittest.addModuleCleanup(cleanup)
    elif isinstance(owner, type):
        owner.addClassCleanup(cleanup)
    else:
        owner.addCleanup(cleanup)
    proxy.start()
    return proxy


# --- the shared proxy ------------------------------------------------------------------------------------
def _shared_listeners() -> dict[str, dict]:
    s = lambda tls, up="submission", **kw: harness.smtp_listener(tls, up, ehlo_name=EHLO_NAME, **kw)  # noqa: E731
    return {
        # local TLS mode -> Postfix submission (upstream STARTTLS)
        "none": s("none"),
        "starttls": s("starttls"),
        "implicit": s("implicit"),
        # local TLS mode -> Postfix smtps (upstream implicit TLS)
        "none_up_implicit": s("none", "smtps"),
        "starttls_up_implicit": s("starttls", "smtps"),
        "implicit_up_implicit": s("implicit", "smtps"),
        # anonymous senders
        "anon_allowed": s("none", anonymous_account=SCANNER, allow_from=["127.0.0.0/8"]),
        "anon_denied": s("none", anonymous_account=SCANNER, allow_from=["192.0.2.0/24"]),
        # upstreams the proxy must not trust
        "up_wronghost": s("none", "submission_wronghost"),
        "up_untrusted": s("none", "submission", upstream_ca_file=None),
        "up_closed": s("none", f"127.0.0.1:{harness.free_port()}", upstream_tls="starttls"),
        # read-back
        "imap": harness.listener(tls="implicit", upstream="imaps"),
    }


_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()


def shared() -> tuple[harness.Proxy, dict[str, int]]:
    """The module's shared proxy and its ports by listener name (started on first use)."""
    with _SHARED_LOCK:
        if not _SHARED:
            listeners = _shared_listeners()
            proxy = start_proxy(None, list(listeners.values()))
            _SHARED["proxy"] = proxy
            _SHARED["ports"] = dict(zip(listeners, proxy.ports))
        return _SHARED["proxy"], _SHARED["ports"]


def local_tls(name: str) -> str:
    return name.split("_", 1)[0] if name.split("_", 1)[0] in ("none", "starttls", "implicit") else "none"


# --- messages and read-back ------------------------------------------------------------------------------------
def make_message(label: str, sender: str = SCANNER, body: bytes | None = None,
                 extra_headers: str = "", content_type: str = "text/plain; charset=us-ascii") -> tuple[str, bytes]:
    mid = f"<smtp-it.{re.sub(r'[^A-Za-z0-9.-]', '-', label)}.{uuid.uuid4().hex}@contoso.test>"
    if body is None:
        body = (f"Test message {label}.\r\n"
                ".A line that starts with a dot (dot-stuffing must be transparent).\r\n"
                "\r\n"
                "Tabs\tand  spaces  stay.\r\n"
                + "0123456789" * 90 + "\r\n"
                "Last line.\r\n").encode()
    head = (f"From: Test Sender <{sender}>\r\n"
            f"To: <{RECEIVER}>\r\n"
            f"Subject: smtp-it {label}\r\n"
            f"Date: Thu, 01 Jan 2026 12:00:00 +0000\r\n"
            f"Message-ID: {mid}\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: {content_type}\r\n"
            f"{extra_headers}"
            f"\r\n").encode()
    return mid, head + body


def wait_for_log(tail: harness.LogTail, text: str, count: int = 1, timeout: float = 10.0) -> str:
    """Polls a log until text shows up count times; returns what was logged (in any case)."""
    deadline = time.monotonic() + timeout
    new = tail.new()
    while new.count(text) < count and time.monotonic() < deadline:
        time.sleep(0.05)
        new = tail.new()
    return new


def first_difference(a: bytes, b: bytes) -> str:
    n = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
    return (f"lengths {len(a)} vs {len(b)}; first difference at offset {n}:\n"
            f"  got:  {a[max(0, n - 60):n + 60]!r}\n  want: {b[max(0, n - 60):n + 60]!r}")


class SinkReader:
    """Reads the sink mailbox through the shared proxy's IMAP listener (LOGIN as RECEIVER)."""

    def __init__(self):
        _, ports = shared()
        self.m = imaplib.IMAP4_SSL("127.0.0.1", ports["imap"], ssl_context=harness.client_ssl_context(),
                                   timeout=TIMEOUT)
        typ, _ = self.m.login(RECEIVER, PASSWORDS[RECEIVER])
        assert typ == "OK"

    def wait_for(self, mids: list[str], timeout: float = DELIVERY_TIMEOUT) -> dict[str, bytes]:
        """Polls until every Message-ID has arrived; returns the raw messages (BODY.PEEK[]) and
        deletes them from the mailbox."""
        found: dict[str, bytes] = {}
        deadline = time.monotonic() + timeout
        while True:
            typ, _ = self.m.select("INBOX")
            assert typ == "OK"
            for mid in mids:
                if mid in found:
                    continue
                typ, data = self.m.uid("SEARCH", "HEADER", "Message-ID", f'"{mid}"')
                uids = data[0].split() if typ == "OK" and data and data[0] else []
                if uids:
                    typ, fetched = self.m.uid("FETCH", uids[-1], "(BODY.PEEK[])")
                    assert typ == "OK", fetched
                    found[mid] = next(x[1] for x in fetched if isinstance(x, tuple))
                    for u in uids:
                        self.m.uid("STORE", u, "+FLAGS.SILENT", "(\\Deleted)")
            if len(found) == len(mids) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.m.expunge()
        return found

    def close(self):
        try:
            self.m.logout()
        except (imaplib.IMAP4.error, OSError):
            pass


class SmtpTestCase(unittest.TestCase):
    """Prints the proxy log and SMTP transcripts of a failing test; compares delivered mail."""

    local_proxy: harness.Proxy | None = None

    def setUp(self):
        harness.admin("reset", {"what": "stats,faults"})
        self.clients: list[harness.SmtpClient] = []

    def tearDown(self):
        for c in self.clients:
            c.close()
        result = getattr(self._outcome, "result", None)
        failed = result is not None and any(getattr(t, "test_case", t) is self
                                            for t, _ in result.failures + result.errors)
        if failed:
            for c in self.clients:
                print("\n----- SMTP transcript -----\n" + "\n".join(c.transcript[-60:]), file=sys.stderr)
            for p in self.proxies():
                print(f"\n----- proxy log ({p.log_path}) -----\n{p.log()[-6000:]}\n-----", file=sys.stderr)

    def proxies(self) -> list[harness.Proxy]:
        return [p for p in (_SHARED.get("proxy"), getattr(self, "local_proxy", None)) if p]

    def smtp(self, port: int, tls: bool = False) -> harness.SmtpClient:
        c = harness.SmtpClient(port, tls=tls, timeout=TIMEOUT)
        self.clients.append(c)
        return c

    def ports(self) -> dict[str, int]:
        return shared()[1]

    def assert_reply(self, r: harness.SmtpReply, code: int, prefix: str = ""):
        self.assertEqual(r.code, code, f"expected {code} {prefix}: got {r}")
        if prefix:
            self.assertTrue(r.lines[-1].startswith(prefix), f"expected {code} {prefix}: got {r}")

    def assert_delivered(self, sent: dict[str, bytes], normalize=None):
        """Every message arrived; byte-equal after dropping the trace fields (and normalize(sent))."""
        reader = SinkReader()
        try:
            got = reader.wait_for(list(sent))
        finally:
            reader.close()
        missing = [mid for mid in sent if mid not in got]
        self.assertFalse(missing, f"{len(missing)} of {len(sent)} message(s) did not arrive: {missing}")
        for mid, msg in sent.items():
            want = normalize(msg) if normalize else msg
            have = harness.strip_trace_headers(got[mid])
            if have != want:
                self.fail(f"{mid} changed on the way: {first_difference(have, want)}")

    def login_session(self, port: int, tls: bool = False, user: str = SCANNER) -> harness.SmtpClient:
        c = self.smtp(port, tls)
        self.assert_reply(c.ehlo(), 250)
        self.assert_reply(c.cmd(f"AUTH PLAIN {plain_ir(user, PASSWORDS[user])}"), 235, "2.7.0")
        return c

    def send_data(self, c: harness.SmtpClient, sender: str, msg: bytes, mail_params: str = ""):
        self.assert_reply(c.cmd(f"MAIL FROM:<{sender}>{mail_params}"), 250)
        self.assert_reply(c.cmd(f"RCPT TO:<{RECEIVER}>"), 250)
        self.assert_reply(c.cmd("DATA"), 354)
        stuffed = re.sub(rb"(?m)^\.", b"..", msg)
        c.send_raw(stuffed + (b"" if stuffed.endswith(b"\r\n") else b"\r\n") + b".\r\n")
        self.assert_reply(c.reply(), 250)


# ==========================================================================================================
class A_Ehlo(SmtpTestCase):
    """What the proxy advertises, compared with what Postfix offers."""

    @classmethod
    def postfix_ehlo(cls, name: str) -> dict[str, str]:
        ep = tb()["postfix"][name]
        c = harness.SmtpClient(ep["port"], host=ep["host"], tls=ep["tls"] == "implicit", timeout=TIMEOUT)
        try:
            c.ehlo()
            if ep["tls"] == "starttls":
                c.starttls()
            r = c.ehlo()
            c.cmd("QUIT")
        finally:
            c.close()
        return {line.split(" ", 1)[0].upper(): (line.split(" ", 1) + [""])[1] for line in r.lines[1:]}

    def check_ehlo(self, r: harness.SmtpReply, upstream: dict[str, str], starttls_expected: bool, what: str):
        self.assertEqual(r.code, 250, what)
        self.assertEqual(r.lines[0].split()[0], EHLO_NAME, f"{what}: {r}")
        ext = {line.split(" ", 1)[0].upper(): (line.split(" ", 1) + [""])[1] for line in r.lines[1:]}
        self.assertEqual(ext.get("AUTH", "").split(), ["PLAIN", "LOGIN"], f"{what}: {r}")
        self.assertNotIn("XOAUTH2", r.text.upper(), f"{what}: {r}")
        self.assertNotIn("OAUTHBEARER", r.text.upper(), f"{what}: {r}")
        self.assertEqual("STARTTLS" in ext, starttls_expected, f"{what}: {r}")
        for name in RELAYED:
            if name in upstream:
                self.assertIn(name, ext, f"{what}: upstream offers {name}, the proxy does not: {r}")
                self.assertEqual(ext[name], upstream[name], f"{what}: {name} parameters differ")
        for name in ext:
            self.assertIn(name, set(RELAYED) | {"AUTH", "STARTTLS"}, f"{what}: unexpected extension {name}")
        for name in REQUIRED_RELAYED:
            self.assertIn(name, ext, f"{what}: {r}")

    def test_postfix_offers_the_required_extensions(self):
        for name in ("submission", "smtps"):
            up = self.postfix_ehlo(name)
            for ext in REQUIRED_RELAYED:
                self.assertIn(ext, up, f"Postfix {name} does not offer {ext}: {up}")
            self.assertEqual(up.get("AUTH", "").split(), ["XOAUTH2", "OAUTHBEARER"])
            self.assertGreaterEqual(int(up["SIZE"]), 60 * 1024 * 1024)

    def test_ehlo_each_listener(self):
        ups = {"submission": self.postfix_ehlo("submission"), "smtps": self.postfix_ehlo("smtps")}
        ports = self.ports()
        for name in ("none", "starttls", "implicit", "none_up_implicit", "starttls_up_implicit",
                     "implicit_up_implicit", "anon_allowed", "anon_denied"):
            with self.subTest(listener=name):
                mode = local_tls(name)
                up = ups["smtps" if name.endswith("up_implicit") else "submission"]
                c = self.smtp(ports[name], tls=mode == "implicit")
                self.assertEqual(c.greeting.code, 220)
                self.assertTrue(c.greeting.lines[0].startswith(EHLO_NAME + " "), c.greeting)
                self.check_ehlo(c.ehlo(), up, mode == "starttls", f"{name} EHLO")
                if mode == "starttls":
                    c.starttls()
                    self.check_ehlo(c.ehlo("again.example"), up, False, f"{name} EHLO after STARTTLS")
                r = c.cmd("HELO client.example")
                self.assert_reply(r, 250)
                self.assertEqual(r.lines[0].split()[0], EHLO_NAME)
                self.assert_reply(c.cmd("QUIT"), 221)


# ==========================================================================================================
class B_Senders(SmtpTestCase):
    """Real clients through every local TLS mode; each message is read back and compared."""

    def smtplib_connect(self, name: str) -> smtplib.SMTP:
        port = self.ports()[name]
        mode = local_tls(name)
        ctx = harness.client_ssl_context()
        if mode == "implicit":
            s = smtplib.SMTP_SSL("127.0.0.1", port, timeout=TIMEOUT, context=ctx)
        else:
            s = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
            if mode == "starttls":
                s.starttls(context=ctx)
        s.ehlo("client.example")
        return s

    def test_smtplib(self):
        def set_creds(s, user):
            s.user, s.password = user, PASSWORDS[user]
        variants = {
            "login()": (SCANNER, lambda s, u: s.login(u, PASSWORDS[u])),
            "auth PLAIN ir": (SCANNER, lambda s, u: (set_creds(s, u), s.auth("PLAIN", s.auth_plain))[1]),
            "auth PLAIN no-ir": (ALICE, lambda s, u: (set_creds(s, u), s.auth(
                "PLAIN", s.auth_plain, initial_response_ok=False))[1]),
            "auth_login ir": (ALICE, lambda s, u: (set_creds(s, u), s.auth("LOGIN", s.auth_login))[1]),
            "auth_login no-ir": (SCANNER, lambda s, u: (set_creds(s, u), s.auth(
                "LOGIN", s.auth_login, initial_response_ok=False))[1]),
        }
        cases = [(lst, v) for lst in ("none", "starttls", "implicit") for v in variants]
        cases += [(lst, "login()") for lst in ("none_up_implicit", "starttls_up_implicit", "implicit_up_implicit")]
        sent = {}
        for lst, variant in cases:
            with self.subTest(listener=lst, auth=variant):
                user, auth = variants[variant]
                s = self.smtplib_connect(lst)
                try:
                    code, resp = auth(s, user)
                    self.assertEqual(code, 235, resp)
                    mid, msg = make_message(f"smtplib {lst} {variant}", sender=user)
                    self.assertEqual(s.sendmail(user, [RECEIVER], msg), {})
                    sent[mid] = msg
                    s.quit()
                finally:
                    s.close()
        self.assert_delivered(sent)

    def test_concurrent_smtplib(self):
        n = 12
        names = ["none", "starttls", "implicit", "none_up_implicit"]
        msgs = [make_message(f"concurrent {i}") for i in range(n)]
        errors: list = [None] * n
        barrier = threading.Barrier(n, timeout=30)
        self.ports()  # start the shared proxy before the threads need it

        def worker(i: int):
            try:
                s = self.smtplib_connect(names[i % len(names)])
                try:
                    barrier.wait()
                    s.login(SCANNER, PASSWORDS[SCANNER])
                    refused = s.sendmail(SCANNER, [RECEIVER], msgs[i][1])
                    errors[i] = refused or "ok"
                    s.quit()
                finally:
                    s.close()
            except Exception as e:  # recorded and asserted below
                errors[i] = repr(e)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 90
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self.assertFalse([t for t in threads if t.is_alive()], "senders did not finish in time")
        self.assertEqual(errors, ["ok"] * n)
        self.assert_delivered(dict(msgs))

    def test_swaks(self):
        ports, ca = self.ports(), tb()["ca_file"]
        tls_args = {"none": [], "starttls": ["--tls", "--tls-verify", "--tls-ca-path", ca],
                    "implicit": ["--tlsc", "--tls-verify", "--tls-ca-path", ca]}
        cases = [(lst, mech, pipe) for lst in ("none", "starttls", "implicit") for mech in ("PLAIN", "LOGIN")
                 for pipe in (False, True) if not (pipe and mech == "LOGIN")]
        cases.append(("starttls_up_implicit", "LOGIN", True))
        workdir = tempfile.mkdtemp(prefix="xoauth-smtp-swaks-")
        self.addCleanup(shutil.rmtree, workdir, True)
        sent = {}
        for lst, mech, pipe in cases:
            with self.subTest(listener=lst, auth=mech, pipeline=pipe):
                user = ALICE if mech == "LOGIN" else SCANNER
                mid, msg = make_message(f"swaks {lst} {mech}{' pipeline' if pipe else ''}", sender=user)
                path = os.path.join(workdir, f"{uuid.uuid4().hex}.eml")
                with open(path, "wb") as f:
                    # swaks always sends CRLF before the final ".": leave the last CRLF to it.
                    f.write(msg[:-2])
                args = ["swaks", "--server", f"127.0.0.1:{ports[lst]}", "--helo", "client.example",
                        "--from", user, "--to", RECEIVER, "--auth", mech, "--auth-user", user,
                        "--auth-password", PASSWORDS[user], "--data", "@" + path, "--timeout", "30",
                        *tls_args[local_tls(lst)], *(["--pipeline"] if pipe else [])]
                r = subprocess.run(args, capture_output=True, text=True, timeout=90)
                self.assertEqual(r.returncode, 0, f"swaks rc={r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
                self.assertIn("235 2.7.0", r.stdout)
                if pipe:
                    # swaks sends MAIL, RCPT and DATA in one go when it uses PIPELINING.
                    self.assertRegex(r.stdout, r" [-~]> MAIL FROM:.*\n [-~]> RCPT TO:.*\n [-~]> DATA\n", r.stdout)
                sent[mid] = msg
        self.assert_delivered(sent)

    def test_curl(self):
        ports, ca = self.ports(), tb()["ca_file"]
        cases = {
            "smtp default": ("none", "smtp", []),
            "smtp AUTH=PLAIN": ("none", "smtp", ["--login-options", "AUTH=PLAIN"]),
            "smtp AUTH=LOGIN": ("none", "smtp", ["--login-options", "AUTH=LOGIN"]),
            "smtp PLAIN sasl-ir": ("none", "smtp", ["--login-options", "AUTH=PLAIN", "--sasl-ir"]),
            "smtp STARTTLS": ("starttls", "smtp", ["--ssl-reqd", "--cacert", ca]),
            "smtp STARTTLS LOGIN": ("starttls", "smtp", ["--ssl-reqd", "--cacert", ca, "--login-options", "AUTH=LOGIN"]),
            "smtps": ("implicit", "smtps", ["--cacert", ca]),
            "smtps LOGIN sasl-ir": ("implicit", "smtps", ["--cacert", ca, "--login-options", "AUTH=LOGIN", "--sasl-ir"]),
            "smtps up-implicit": ("implicit_up_implicit", "smtps", ["--cacert", ca]),
        }
        workdir = tempfile.mkdtemp(prefix="xoauth-smtp-curl-")
        self.addCleanup(shutil.rmtree, workdir, True)
        sent = {}
        for label, (lst, scheme, extra) in cases.items():
            with self.subTest(label):
                user = ALICE if "LOGIN" in label else SCANNER
                mid, msg = make_message(f"curl {label}", sender=user)
                path = os.path.join(workdir, f"{uuid.uuid4().hex}.eml")
                with open(path, "wb") as f:
                    f.write(msg)
                args = ["curl", "-sS", "-v", "--max-time", "60", f"{scheme}://127.0.0.1:{ports[lst]}/client.example",
                        "--mail-from", user, "--mail-rcpt", RECEIVER, "--upload-file", path,
                        "--user", f"{user}:{PASSWORDS[user]}", *extra]
                r = subprocess.run(args, capture_output=True, text=True, timeout=90)
                self.assertEqual(r.returncode, 0, f"curl rc={r.returncode}\n{r.stderr[-3000:]}")
                self.assertIn("< 235 2.7.0", r.stderr)
                if "STARTTLS" in label:
                    self.assertIn("> STARTTLS", r.stderr)
                mech = "LOGIN" if "LOGIN" in label else "PLAIN"
                self.assertIn(f"> AUTH {mech}", r.stderr)
                sent[mid] = msg
        self.assert_delivered(sent)

    def test_msmtp(self):
        ports, ca = self.ports(), tb()["ca_file"]
        workdir = tempfile.mkdtemp(prefix="xoauth-smtp-msmtp-")
        self.addCleanup(shutil.rmtree, workdir, True)
        tls = {"none": ("off", "off"), "starttls": ("on", "on"), "implicit": ("on", "off")}
        sent = {}
        for lst in ("none", "starttls", "implicit", "none_up_implicit"):
            for auth in ("plain", "login"):
                with self.subTest(listener=lst, auth=auth):
                    user = SCANNER
                    mid, msg = make_message(f"msmtp {lst} {auth}", sender=user)
                    logfile = os.path.join(workdir, f"msmtp-{lst}-{auth}.log")
                    cfg = os.path.join(workdir, f"msmtprc-{lst}-{auth}")
                    tls_on, starttls_on = tls[local_tls(lst)]
                    with open(cfg, "w") as f:
                        f.write(f"defaults\nlogfile {logfile}\ntimeout 30\n\n"
                                f"account test\nhost 127.0.0.1\nport {ports[lst]}\ndomain client.example\n"
                                f"from {user}\nauth {auth}\nuser {user}\npassword {PASSWORDS[user]}\n"
                                f"tls {tls_on}\ntls_starttls {starttls_on}\ntls_trust_file {ca}\n")
                    os.chmod(cfg, 0o600)
                    r = subprocess.run(["msmtp", "-C", cfg, "-a", "test", "-v", RECEIVER], input=msg,
                                       capture_output=True, timeout=90)
                    err = (r.stdout + r.stderr).decode("utf-8", "replace")  # -v: the SMTP dialogue
                    self.assertEqual(r.returncode, 0, f"msmtp rc={r.returncode}\n{err[-3000:]}")
                    self.assertIn(f"--> AUTH {auth.upper()}", err)
                    self.assertIn("<-- 235 2.7.0", err)
                    with open(logfile) as f:
                        self.assertIn("exitcode=EX_OK", f.read())
                    sent[mid] = msg
        self.assert_delivered(sent)


# ==========================================================================================================
class C_Protocol(SmtpTestCase):
    """Raw-socket SMTP through the shared proxy."""

    def test_auth_plain_variants(self):
        port = self.ports()["none"]
        # With an initial response; then a whole mail transaction.
        c = self.login_session(port)
        mid, msg = make_message("raw PLAIN ir")
        self.send_data(c, SCANNER, msg)
        self.assert_reply(c.cmd("QUIT"), 221)
        sent = {mid: msg}
        # Without an initial response: "334 " (empty challenge), then the response.
        c = self.smtp(port)
        c.ehlo()
        r = c.cmd("AUTH PLAIN")
        self.assertEqual((r.code, r.lines), (334, [""]))
        self.assert_reply(c.cmd(plain_ir(ALICE, PASSWORDS[ALICE])), 235, "2.7.0")
        mid, msg = make_message("raw PLAIN no-ir", sender=ALICE)
        self.send_data(c, ALICE, msg)
        sent[mid] = msg
        # authzid equal to the user.
        c = self.smtp(port)
        c.ehlo()
        self.assert_reply(c.cmd(f"AUTH PLAIN {plain_ir(SCANNER, PASSWORDS[SCANNER], authzid=SCANNER)}"), 235)
        mid, msg = make_message("raw PLAIN authzid")
        self.send_data(c, SCANNER, msg)
        sent[mid] = msg
        # "=" (an empty initial response), a foreign authzid, "*": refused, the session stays usable.
        c = self.smtp(port)
        c.ehlo()
        self.assert_reply(c.cmd("AUTH PLAIN ="), 535, "5.7.8")
        self.assert_reply(c.cmd(f"AUTH PLAIN {plain_ir(SCANNER, PASSWORDS[SCANNER], authzid=ALICE)}"), 535, "5.7.8")
        r = c.cmd("AUTH PLAIN")
        self.assertEqual(r.code, 334)
        self.assert_reply(c.cmd("*"), 501)
        self.assert_reply(c.cmd("NOOP"), 250)
        self.assert_reply(c.cmd(f"AUTH PLAIN {plain_ir(SCANNER, PASSWORDS[SCANNER])}"), 235)
        self.assert_reply(c.cmd("QUIT"), 221)
        self.assert_delivered(sent)

    def test_auth_login_variants(self):
        port = self.ports()["none"]
        sent = {}
        # Without an initial username.
        c = self.smtp(port)
        c.ehlo()
        r = c.cmd("AUTH LOGIN")
        self.assertEqual((r.code, r.lines), (334, [b64("Username:")]))
        r = c.cmd(b64(ALICE))
        self.assertEqual((r.code, r.lines), (334, [b64("Password:")]))
        self.assert_reply(c.cmd(b64(PASSWORDS[ALICE])), 235, "2.7.0")
        mid, msg = make_message("raw LOGIN", sender=ALICE)
        self.send_data(c, ALICE, msg)
        sent[mid] = msg
        # With the username as initial response.
        c = self.smtp(self.ports()["implicit"], tls=True)
        c.ehlo()
        r = c.cmd(f"AUTH LOGIN {b64(SCANNER)}")
        self.assertEqual((r.code, r.lines), (334, [b64("Password:")]))
        self.assert_reply(c.cmd(b64(PASSWORDS[SCANNER])), 235, "2.7.0")
        mid, msg = make_message("raw LOGIN initial username")
        self.send_data(c, SCANNER, msg)
        sent[mid] = msg
        self.assert_delivered(sent)

    def test_pipelined_mail_after_auth_plain_ir(self):
        sent = {}
        for lst in ("none", "implicit", "none_up_implicit"):
            with self.subTest(listener=lst):
                c = self.smtp(self.ports()[lst], tls=local_tls(lst) == "implicit")
                c.ehlo()
                mid, msg = make_message(f"pipelined {lst}")
                # One segment: AUTH with initial response, then MAIL, RCPT, DATA (RFC 2920 group).
                c.send_raw(f"AUTH PLAIN {plain_ir(SCANNER, PASSWORDS[SCANNER])}\r\n"
                           f"MAIL FROM:<{SCANNER}>\r\nRCPT TO:<{RECEIVER}>\r\nDATA\r\n".encode())
                replies = [c.reply() for _ in range(4)]
                self.assertEqual([r.code for r in replies], [235, 250, 250, 354], replies)
                self.assertTrue(replies[1].lines[0].startswith("2.1.0"), replies)
                self.assertTrue(replies[2].lines[0].startswith("2.1.5"), replies)
                c.send_raw(re.sub(rb"(?m)^\.", b"..", msg) + b".\r\nQUIT\r\n")
                self.assert_reply(c.reply(), 250)
                self.assert_reply(c.reply(), 221)
                sent[mid] = msg
        self.assert_delivered(sent)

    def test_8bit_body(self):
        raw = bytes(range(0x80, 0x100))
        body = (b"8-bit body: every octet from 0x80 to 0xFF below, in lines of 32.\r\n"
                + b"".join(raw[i:i + 32] + b"\r\n" for i in range(0, len(raw), 32))
                + "UTF-8: Grüße, Приве́т, 日本語, 🙂\r\n".encode()
                + b"Latin-1: \xe4\xf6\xfc\xdf\r\n")
        mid, msg = make_message("8bit", body=body, content_type="text/plain; charset=utf-8",
                                extra_headers="Content-Transfer-Encoding: 8bit\r\n")
        s = smtplib.SMTP("127.0.0.1", self.ports()["starttls"], timeout=TIMEOUT)
        try:
            s.starttls(context=harness.client_ssl_context())
            s.ehlo("client.example")
            self.assertIn("8bitmime", s.esmtp_features)
            s.login(SCANNER, PASSWORDS[SCANNER])
            self.assertEqual(s.sendmail(SCANNER, [RECEIVER], msg, mail_options=["BODY=8BITMIME"]), {})
            s.quit()
        finally:
            s.close()
        c = self.login_session(self.ports()["none"])
        mid2, msg2 = make_message("8bit raw", body=body, content_type="text/plain; charset=utf-8",
                                  extra_headers="Content-Transfer-Encoding: 8bit\r\n")
        self.send_data(c, SCANNER, msg2, " BODY=8BITMIME")
        self.assert_delivered({mid: msg, mid2: msg2})

    def test_large_message_20mb(self):
        size = 20 * 1024 * 1024
        blob = base64.encodebytes(os.urandom(size * 3 // 4 + 100)).replace(b"\n", b"\r\n")
        body = blob[:size - (size % 78)]  # whole 76-character lines
        self.assertTrue(body.endswith(b"\r\n"))
        mid, msg = make_message("20MB", body=body, content_type="application/octet-stream",
                                extra_headers="Content-Transfer-Encoding: base64\r\n")
        t0 = time.monotonic()
        s = smtplib.SMTP_SSL("127.0.0.1", self.ports()["implicit"], timeout=120,
                             context=harness.client_ssl_context())
        try:
            s.login(SCANNER, PASSWORDS[SCANNER])
            self.assertGreaterEqual(int(s.esmtp_features["size"]), len(msg))
            self.assertEqual(s.sendmail(SCANNER, [RECEIVER], msg), {})  # smtplib adds SIZE=
            s.quit()
        finally:
            s.close()
        sent_s = time.monotonic() - t0
        reader = SinkReader()
        try:
            got = reader.wait_for([mid]).get(mid)
        finally:
            reader.close()
        self.assertIsNotNone(got, "the 20 MB message did not arrive")
        got = harness.strip_trace_headers(got)
        got_head, _, got_body = got.partition(b"\r\n\r\n")
        want_head, _, want_body = msg.partition(b"\r\n\r\n")
        self.assertEqual(got_head, want_head)
        self.assertEqual(len(got_body), len(want_body))
        self.assertEqual(hashlib.sha256(got_body).hexdigest(), hashlib.sha256(want_body).hexdigest())
        print(f"\n[20 MB: sent in {sent_s:.1f}s, read back in {time.monotonic() - t0 - sent_s:.1f}s]",
              file=sys.stderr)

    def test_bdat_chunking(self):
        c = self.smtp(self.ports()["none"])
        r = c.ehlo()
        if "CHUNKING" not in [x.split()[0].upper() for x in r.lines[1:]]:
            self.skipTest("the proxy does not advertise CHUNKING")
        self.assert_reply(c.cmd(f"AUTH PLAIN {plain_ir(SCANNER, PASSWORDS[SCANNER])}"), 235)
        # Binary-ish body: every octet but NUL, CR and LF, bare LF line ends, a line starting
        # with "." (BDAT has no dot-stuffing) and a lone "." line.
        octets = bytes(b for b in range(1, 256) if b not in (0x0A, 0x0D))
        body = (b"BDAT body with bare LF line ends\n"
                + b"".join(octets[i:i + 50] + b"\n" for i in range(0, len(octets), 50))
                + b".leading dot, not stuffed\n.\nCRLF line\r\nlast line\n")
        mid, msg = make_message("bdat", body=body, content_type="application/octet-stream")
        chunks = [msg[:100], msg[100:101], msg[101:]]
        self.assert_reply(c.cmd(f"MAIL FROM:<{SCANNER}> BODY=8BITMIME"), 250)
        self.assert_reply(c.cmd(f"RCPT TO:<{RECEIVER}>"), 250)
        # The first two chunks pipelined in one write, the third alone, then an empty LAST chunk.
        c.send_raw(b"".join(f"BDAT {len(x)}\r\n".encode() + x for x in chunks[:2]))
        self.assert_reply(c.reply(), 250)
        self.assert_reply(c.reply(), 250)
        c.send_raw(f"BDAT {len(chunks[2])}\r\n".encode() + chunks[2])
        self.assert_reply(c.reply(), 250)
        r = c.cmd("BDAT 0 LAST")
        self.assert_reply(r, 250, "2.0.0")
        self.assert_reply(c.cmd("QUIT"), 221)
        # Postfix stores lines, so a bare LF comes back as CRLF (IMAP always uses CRLF).
        self.assert_delivered({mid: msg}, normalize=lambda m: re.sub(rb"(?<!\r)\n", b"\r\n", m))

    def test_overlong_command_line_refused(self):
        """A command line longer than the proxy's limit (16 KiB: RFC 4954 allows AUTH lines of
        12,288 octets) gets "500 5.5.6 Line too long" and the connection is closed -- also when
        the whole line arrives in one segment."""
        for n in (20000, 200000):
            with self.subTest(length=n):
                c = self.smtp(self.ports()["none"])
                c.ehlo()
                c.send_raw(b"NOOP " + b"x" * n + b"\r\n")
                r = c.reply()
                self.assert_reply(r, 500, "5.5.6")
                self.assertTrue(c.closed_by_peer(), "connection not closed after an overlong line")

    def test_wrong_password_and_unknown_account(self):
        port = self.ports()["none"]
        harness.admin("reset", {"what": "stats"})
        pf_log = harness.LogTail(tb()["logs"]["postfix"])
        c = self.smtp(port)
        c.ehlo()
        wrong = c.cmd(f"AUTH PLAIN {plain_ir(SCANNER, 'not-the-password')}")
        self.assert_reply(wrong, 535, "5.7.8")
        r = c.cmd("AUTH LOGIN")
        c.cmd(b64(SCANNER))
        wrong_login = c.cmd(b64("not-the-password"))
        self.assert_reply(wrong_login, 535, "5.7.8")
        # The third failure on one connection closes it.
        r = c.cmd(f"AUTH PLAIN {plain_ir(ALICE, 'nope')}")
        self.assertEqual(r.code, 535)
        r = c.reply()
        self.assert_reply(r, 421, "4.7.0")
        self.assertTrue(c.closed_by_peer(), "connection not closed after 3 failures")
        c = self.smtp(port)
        c.ehlo()
        unknown = c.cmd(f"AUTH PLAIN {plain_ir('nobody@contoso.test', 'whatever')}")
        self.assert_reply(unknown, 535, "5.7.8")
        self.assertEqual(wrong.lines, unknown.lines, "wrong password and unknown account must look alike")
        self.assert_reply(c.cmd("MAIL FROM:<nobody@contoso.test>"), 530, "5.7.0")
        for user, pw in ((SCANNER, "wrong"), ("nobody@contoso.test", "whatever")):
            s = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
            try:
                with self.assertRaises(smtplib.SMTPAuthenticationError) as cm:
                    s.login(user, pw)
                self.assertEqual(cm.exception.smtp_code, 535)
            finally:
                s.close()
        c.close()
        # Four client connections = four prepared upstream sessions; wait until Postfix logged
        # their ends ("disconnect from ... ehlo=2 starttls=1 quit=1 commands=4", no "auth=").
        new = wait_for_log(pf_log, "disconnect from", count=4)
        stats = harness.admin("stats")
        self.assertEqual(stats["introspection"]["requests"], 0, "a refused login reached Dovecot/the IdP")
        self.assertEqual(stats["token_requests"], 0)
        self.assertNotIn("sasl_method", new)
        self.assertNotIn("authentication failed", new)
        # Only the smtpd processes that this test's connections started (earlier tests' sessions
        # may end in the same window).
        ours = set(re.findall(r"smtpd\[(\d+)\]: connect from", new))
        self.assertFalse([x for x in new.splitlines() if "disconnect from" in x and " auth=" in x
                          and re.search(r"smtpd\[(\d+)\]", x).group(1) in ours],
                         f"Postfix saw AUTH:\n{new}")


# ==========================================================================================================
class D_TokenProblems(SmtpTestCase):
    """Token endpoint failing (503) and unreachable (closed port): a 4xx so the sender retries.
    A token that the upstream refuses: the proxy answers the error challenge itself.
    Own proxy: its token cache starts empty."""

    IMAP_ONLY_LOGIN = "imaponly@contoso.test"

    @classmethod
    def setUpClass(cls):
        workdir = tempfile.mkdtemp(prefix="xoauth-smtp-idp-")
        closed = f"https://127.0.0.1:{harness.free_port()}"
        imap_only = next(c for c in tb()["clients"] if "SMTP.SendAsApp" not in c["roles"])
        providers = [harness.provider(workdir), harness.provider(workdir, name="dead", authority=closed),
                     harness.provider(workdir, name="imaponly", client_id=imap_only["client_id"],
                                      client_secret_value=imap_only["client_secret"])]
        accounts = [harness.account(SCANNER, PASSWORDS[SCANNER]),
                    harness.account(ALICE, PASSWORDS[ALICE], provider_name="dead"),
                    harness.account(cls.IMAP_ONLY_LOGIN, PASSWORDS[SCANNER], provider_name="imaponly",
                                    mailbox="shared@contoso.test")]
        listeners = [harness.smtp_listener("none", ehlo_name=EHLO_NAME),
                     harness.smtp_listener("implicit", "smtps", ehlo_name=EHLO_NAME),
                     harness.smtp_listener("none", ehlo_name=EHLO_NAME, anonymous_account=SCANNER,
                                           allow_from=["127.0.0.1/32"])]
        cls.local_proxy = start_proxy(cls, listeners, accounts=accounts, providers=providers, workdir=workdir)

    def tearDown(self):
        super().tearDown()
        harness.admin("reset", {"what": "faults"})

    def test_token_endpoint_503(self):
        harness.admin("fail", {"status": 503, "count": 1000, "endpoint": "token", "retry_after": 1})
        pf_log = harness.LogTail(tb()["logs"]["postfix"])
        t0 = time.monotonic()
        c = self.smtp(self.local_proxy.ports[0])
        c.ehlo()
        r = c.cmd(f"AUTH PLAIN {plain_ir(SCANNER, PASSWORDS[SCANNER])}")
        self.assert_reply(r, 454, "4.7.0")
        self.assertLess(time.monotonic() - t0, 60)
        self.assert_reply(c.cmd("NOOP"), 250)  # the session stays usable for a retry
        s = smtplib.SMTP_SSL("127.0.0.1", self.local_proxy.ports[1], timeout=TIMEOUT,
                             context=harness.client_ssl_context())
        try:
            with self.assertRaises(smtplib.SMTPAuthenticationError) as cm:
                s.login(SCANNER, PASSWORDS[SCANNER])
            self.assertEqual(cm.exception.smtp_code // 100, 4, cm.exception)
        finally:
            s.close()
        c.close()
        stats = harness.admin("stats")
        self.assertGreaterEqual(stats["faults_injected"], 1)
        self.assertEqual(stats["introspection"]["requests"], 0)
        new = wait_for_log(pf_log, "disconnect from", count=2)
        self.assertNotIn("sasl_method", new)
        self.assertFalse([x for x in new.splitlines() if "disconnect from" in x and " auth=" in x], new)

    def test_token_endpoint_503_anonymous_sender(self):
        harness.admin("fail", {"status": 503, "count": 1000, "endpoint": "token", "retry_after": 1})
        c = self.smtp(self.local_proxy.ports[2])
        c.ehlo()
        r = c.cmd(f"MAIL FROM:<{SCANNER}>")
        self.assertEqual(r.code // 100, 4, f"an anonymous sender must see a 4xx when the IdP fails: {r}")
        self.assertTrue(r.lines[-1].startswith("4."), r)
        self.assert_reply(c.cmd("QUIT"), 221)

    def test_token_refused_upstream_challenge_answered(self):
        """Postfix (via Dovecot) rejects a token without SMTP.SendAsApp with an XOAUTH2 error
        challenge; the proxy must answer it and give the client a final reply (no hang)."""
        pf_log = harness.LogTail(tb()["logs"]["postfix"])
        t0 = time.monotonic()
        c = self.smtp(self.local_proxy.ports[0])
        c.ehlo()
        r = c.cmd(f"AUTH PLAIN {plain_ir(self.IMAP_ONLY_LOGIN, PASSWORDS[SCANNER])}")
        self.assertEqual(r.code // 100, 5, f"a refused token is a permanent failure here: {r}")
        self.assertNotEqual(r.code, 334, "the upstream's challenge was forwarded to the client")
        self.assertLess(time.monotonic() - t0, 20)
        self.assert_reply(c.cmd("NOOP"), 250)
        self.assert_reply(c.cmd("QUIT"), 221)
        self.assertIn("SASL XOAUTH2 authentication failed",
                      wait_for_log(pf_log, "SASL XOAUTH2 authentication failed"))
        stats = harness.admin("stats")
        self.assertGreaterEqual(stats["introspection"]["reasons"].get("insufficient_scope", 0), 1)
        self.assertIn("upstream refused the token", self.local_proxy.log())

    def test_authority_closed_port(self):
        t0 = time.monotonic()
        c = self.smtp(self.local_proxy.ports[0])
        c.ehlo()
        r = c.cmd("AUTH LOGIN")
        c.cmd(b64(ALICE))
        r = c.cmd(b64(PASSWORDS[ALICE]))
        self.assert_reply(r, 454, "4.7.0")
        self.assertLess(time.monotonic() - t0, 60)
        self.assert_reply(c.cmd("QUIT"), 221)


# ==========================================================================================================
class E_Anonymous(SmtpTestCase):
    def test_allow_listed_sender_without_auth(self):
        c = self.smtp(self.ports()["anon_allowed"])
        self.assert_reply(c.ehlo(), 250)
        mid, msg = make_message("anonymous allowed")
        self.send_data(c, SCANNER, msg)
        # A second transaction on the same (now relayed) session.
        mid2, msg2 = make_message("anonymous allowed second")
        self.send_data(c, SCANNER, msg2)
        self.assert_reply(c.cmd("QUIT"), 221)
        # Pipelined MAIL/RCPT/DATA without AUTH.
        c = self.smtp(self.ports()["anon_allowed"])
        c.ehlo()
        mid3, msg3 = make_message("anonymous pipelined")
        c.send_raw(f"MAIL FROM:<{SCANNER}>\r\nRCPT TO:<{RECEIVER}>\r\nDATA\r\n".encode())
        self.assertEqual([c.reply().code for _ in range(3)], [250, 250, 354])
        c.send_raw(re.sub(rb"(?m)^\.", b"..", msg3) + b".\r\n")
        self.assert_reply(c.reply(), 250)
        self.assert_delivered({mid: msg, mid2: msg2, mid3: msg3})

    def test_sender_outside_allow_from(self):
        harness.admin("reset", {"what": "stats"})
        c = self.smtp(self.ports()["anon_denied"])
        c.ehlo()
        self.assert_reply(c.cmd(f"MAIL FROM:<{SCANNER}>"), 530, "5.7.0")
        self.assertEqual(c.transcript[-1], "S: 530 5.7.0 Authentication required")
        self.assert_reply(c.cmd(f"RCPT TO:<{RECEIVER}>"), 530)
        # AUTH still works there.
        self.assert_reply(c.cmd(f"AUTH PLAIN {plain_ir(SCANNER, PASSWORDS[SCANNER])}"), 235)
        self.assert_reply(c.cmd("QUIT"), 221)
        self.assertEqual(harness.admin("stats")["token_requests"], 0)

    def test_check_refuses_anonymous_without_allow_from(self):
        workdir = tempfile.mkdtemp(prefix="xoauth-smtp-check-")
        self.addCleanup(shutil.rmtree, workdir, True)
        path = harness.write_config(workdir, [harness.provider(workdir)],
                                    [harness.smtp_listener("none", anonymous_account=SCANNER)],
                                    [harness.account(SCANNER, PASSWORDS[SCANNER])])
        r = harness.run_cli("check", "--config", path)
        out = r.stdout + r.stderr
        self.assertEqual(r.returncode, 1, out)
        self.assertIn("anonymous_account", out)
        self.assertIn("allow_from", out)
        self.assertRegex(out, re.escape(path) + r":\d+")
        # With allow_from the same file is fine.
        path = harness.write_config(workdir, [harness.provider(workdir)],
                                    [harness.smtp_listener("none", anonymous_account=SCANNER,
                                                           allow_from=["127.0.0.1"])],
                                    [harness.account(SCANNER, PASSWORDS[SCANNER])], filename="ok.toml")
        r = harness.run_cli("check", "--config", path)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


# ==========================================================================================================
class F_StartTLS(SmtpTestCase):
    def test_pipelined_plaintext_after_starttls_refused(self):
        harness.admin("reset", {"what": "stats"})
        c = self.smtp(self.ports()["starttls"])
        c.ehlo()
        c.send_raw(f"STARTTLS\r\nAUTH PLAIN {plain_ir(SCANNER, PASSWORDS[SCANNER])}\r\n".encode())
        r = c.reply()
        self.assert_reply(r, 554, "5.5.1")
        self.assertTrue(c.closed_by_peer(), "the proxy kept the connection open")
        self.assertEqual(harness.admin("stats")["token_requests"], 0)

    def test_starttls_not_offered_without_tls(self):
        c = self.smtp(self.ports()["none"])
        c.ehlo()
        self.assert_reply(c.cmd("STARTTLS"), 454, "4.7.0")
        self.assert_reply(c.cmd("NOOP"), 250)
        c = self.smtp(self.ports()["implicit"], tls=True)
        c.ehlo()
        self.assertGreaterEqual(c.cmd("STARTTLS").code, 500)

    def test_starttls_then_auth(self):
        c = self.smtp(self.ports()["starttls"])
        c.ehlo()
        c.starttls()
        r = c.ehlo()
        self.assertNotIn("STARTTLS", r.text)
        self.assertGreaterEqual(c.cmd("STARTTLS").code, 500)  # not twice
        self.assert_reply(c.cmd(f"AUTH PLAIN {plain_ir(SCANNER, PASSWORDS[SCANNER])}"), 235)
        self.assert_reply(c.cmd("QUIT"), 221)


# ==========================================================================================================
class G_UpstreamTrust(SmtpTestCase):
    """An upstream whose certificate does not verify: refused before any login is attempted."""

    def check_refused(self, name: str):
        harness.admin("reset", {"what": "stats"})
        c = self.smtp(self.ports()[name])
        self.assertEqual(c.greeting.code // 100, 4, f"greeting {c.greeting}")
        self.assertTrue(c.closed_by_peer(), "connection not closed")
        self.assertEqual(harness.admin("stats")["introspection"]["requests"], 0)
        self.assertEqual(harness.admin("stats")["token_requests"], 0)

    def test_upstream_wrong_hostname(self):
        self.check_refused("up_wronghost")

    def test_upstream_untrusted_ca(self):
        self.check_refused("up_untrusted")

    def test_upstream_down(self):
        self.check_refused("up_closed")
        c = self.smtp(self.ports()["up_closed"])
        self.assertEqual(c.greeting.code, 421, c.greeting)
        self.assertTrue(c.greeting.lines[0].startswith("4.3.2"), c.greeting)


# ==========================================================================================================
class H_AccountAllowedFrom(SmtpTestCase):
    """An [[account]] with allowed_from may use those MAIL FROM addresses only: anything else gets
    550 5.7.1 from the proxy and never reaches Postfix, pipelined or not, in any transaction."""

    @classmethod
    def setUpClass(cls):
        accounts = [harness.account(SCANNER, PASSWORDS[SCANNER],
                                    allowed_from=[SCANNER, "*@fabrikam.test"]),
                    harness.account(RECEIVER, PASSWORDS[RECEIVER])]
        cls.local_proxy = start_proxy(cls, [harness.smtp_listener("none", "submission",
                                                                  ehlo_name=EHLO_NAME)], accounts)
        cls.port = cls.local_proxy.ports[0]

    def postfix_log(self) -> str:
        path = harness.testbed_info()["logs"]["postfix"]
        with open(path, errors="replace") as f:
            return f.read()

    def test_allowed_sender_is_delivered(self):
        c = self.login_session(self.port)
        mid, msg = make_message("allowed-from ok")
        self.send_data(c, SCANNER, msg)
        mid2, msg2 = make_message("allowed-from domain", sender="printer@fabrikam.test")
        self.send_data(c, "printer@fabrikam.test", msg2)
        self.assert_reply(c.cmd("QUIT"), 221)
        self.assert_delivered({mid: msg, mid2: msg2})

    def test_refused_sender_gets_550_and_never_reaches_postfix(self):
        bad = f"boss-{uuid.uuid4().hex[:8]}@contoso.test"
        c = self.login_session(self.port)
        self.assert_reply(c.cmd(f"MAIL FROM:<{bad}>"), 550, "5.7.1")
        self.assertGreaterEqual(c.cmd(f"RCPT TO:<{RECEIVER}>").code, 500)  # no transaction upstream
        self.assert_reply(c.cmd("RSET"), 250)
        # Pipelined: MAIL (refused) + RCPT + DATA in one segment; the replies keep their order.
        c.send_raw(f"MAIL FROM:<{bad}>\r\nRCPT TO:<{RECEIVER}>\r\nDATA\r\n".encode())
        self.assert_reply(c.reply(), 550, "5.7.1")
        self.assertGreaterEqual(c.reply().code, 500)
        self.assertGreaterEqual(c.reply().code, 500)
        # The same session can still send as an allowed address.
        self.assert_reply(c.cmd("RSET"), 250)
        mid, msg = make_message("allowed-from after refusal")
        self.send_data(c, SCANNER, msg)
        self.assert_reply(c.cmd("QUIT"), 221)
        self.assert_delivered({mid: msg})
        self.assertNotIn(bad, self.postfix_log())
        self.assertIn("refused 2 MAIL FROM", self.local_proxy.log())

    def test_body_lines_that_look_like_commands_are_not_checked(self):
        c = self.login_session(self.port)
        body = b"MAIL FROM:<boss@contoso.test>\r\nRCPT TO:<x@y.z>\r\nnot a command\r\n"
        mid, msg = make_message("allowed-from body", body=body)
        self.send_data(c, SCANNER, msg)
        self.assert_reply(c.cmd("QUIT"), 221)
        self.assert_delivered({mid: msg})


# ==========================================================================================================
class Z_Logs(SmtpTestCase):
    def test_no_secrets_in_proxy_logs(self):
        proxy, _ = shared()
        log = proxy.log()
        self.assertTrue(log, "proxy log is empty")
        found = secrets_in(log)
        self.assertFalse(found, f"secrets in the shared proxy log {proxy.log_path}: {found}")
        self.assertFalse(SECRET_FINDINGS, f"secrets in other proxy logs: {SECRET_FINDINGS}")
        self.assertIn("protocol=smtp", log)


def main() -> int:
    def has_postfix(info):
        if "postfix" not in info or RECEIVER not in info.get("sinks", []):
            return "the test bed has no Postfix / sink mailbox (restart it with this testbed.py)"
        return None
    return harness.run_tests("test_smtp", has_postfix)


if __name__ == "__main__":
    sys.exit(main())
