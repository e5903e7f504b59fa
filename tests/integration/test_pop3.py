#!/usr/bin/env python3
"""POP3 integration tests for xoauth-proxy against the private Dovecot + mock IdP test bed.

    XOAUTH_PROXY_BIN=build/xoauth-proxy python3 tests/integration/test_pop3.py [-v] [-k PATTERN]

Optional: XOAUTH_TESTBED_DIR=/path (reuse or start a test bed there and leave it running),
XOAUTH_KEEP_WORKDIRS=1 (keep proxy work dirs: config, proxy.log). Exits non-zero on failure.
Everything listens on loopback; waits are polls with deadlines, loops are bounded.

Clients: python3 poplib, raw sockets (harness.LineClient), curl (pop3://, pop3s://) and fetchmail.
Proxy listeners: tls none / starttls / implicit upstream to Dovecot pop3s (implicit TLS), and tls none
upstream to pop3_starttls_forced (127.0.0.2, STLS required) with upstream_tls = starttls.

The 20 MB message is written straight into a Maildir (testbed-notes §5) of a mailbox no other test
counts: `bigpop@contoso.test` when the test bed has that user, else `shared@contoso.test`; only the file
this test wrote is deleted again, after the POP3 session has ended.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import os
import poplib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SCANNER = "scanner@contoso.test"
ALICE = "alice@contoso.test"
BIGPOP = "bigpop@contoso.test"  # a login of the proxy; its mailbox is big_mailbox()
PASSWORDS = {
    SCANNER: "  pop pass  word  ",           # leading, internal (double) and trailing spaces
    ALICE: 'alice "pop" \\pw',              # quotes and a backslash
    BIGPOP: "big-Pop-pass-20MB",
}
WRONG_PASSWORDS = ("not-the-pop-password", "whatever-pop")
POP_TIMEOUT = 30.0
KEEP = os.environ.get("XOAUTH_KEEP_WORKDIRS") == "1"
MODES = ("none", "starttls", "implicit")
APOP_TIMESTAMP = re.compile(r"<[^<>\s]*@[^<>\s]*>")
MAIL_UID = 8  # Debian's "mail" user and group (owner of the test bed's Maildirs)


def tb() -> dict:
    return harness.testbed_info()


def big_mailbox() -> str:
    return BIGPOP if BIGPOP in tb()["mailboxes"] else "shared@contoso.test"


def maildir(mailbox: str) -> str:
    local, domain = mailbox.split("@")
    return os.path.join(tb()["mail_root"], domain, local, "Maildir")


def seeded_inbox_file(mailbox: str, n: int) -> bytes:
    """The bytes of the seeded INBOX message n of mailbox, as the test bed wrote them."""
    local = mailbox.split("@")[0]
    subject = f"Subject: INBOX message {n} for {local}\r\n".encode()
    for path in sorted(glob.glob(os.path.join(maildir(mailbox), "cur", "*")) +
                       glob.glob(os.path.join(maildir(mailbox), "new", "*"))):
        with open(path, "rb") as f:
            data = f.read()
        if subject in data:
            return data
    raise AssertionError(f"seeded INBOX message {n} of {mailbox} not found in {maildir(mailbox)}")


def rc_string(v: str) -> str:
    """A double-quoted .fetchmailrc string (backslash escapes)."""
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def lines_to_bytes(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def start_proxy(cls_or_test, listeners: list[dict], accounts: list[dict] | None = None,
                providers: list[dict] | None = None, workdir: str | None = None) -> harness.Proxy:
    """Starts a proxy and registers its cleanup on the test class (or test case)."""
    workdir = workdir or tempfile.mkdtemp(prefix="xoauth-pop3-")
    os.chmod(workdir, 0o700)
    if providers is None:
        providers = [harness.provider(workdir)]
    if accounts is None:
        accounts = [harness.account(SCANNER, PASSWORDS[SCANNER]),
                    harness.account(ALICE, PASSWORDS[ALICE], mailbox=ALICE),
                    harness.account(BIGPOP, PASSWORDS[BIGPOP], mailbox=big_mailbox())]
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


def pop3_listener(tls: str = "none", upstream: str = "pop3s", **over) -> dict:
    return harness.listener(tls=tls, upstream=upstream, protocol="pop3", **over)


def pop_connect(port: int, mode: str) -> poplib.POP3:
    """poplib client; mode none (plaintext), starttls (STLS first) or implicit (POP3_SSL)."""
    ctx = harness.client_ssl_context()
    if mode == "implicit":
        return poplib.POP3_SSL("127.0.0.1", port, context=ctx, timeout=POP_TIMEOUT)
    m = poplib.POP3("127.0.0.1", port, timeout=POP_TIMEOUT)
    if mode == "starttls":
        m.stls(context=ctx)
    return m


def close_quietly(m: poplib.POP3):
    try:
        m.close()
    except OSError:
        pass


def raw_connect(port: int, mode: str) -> harness.LineClient:
    """Raw line client; for starttls the STLS exchange is done here."""
    c = harness.LineClient(port, tls=(mode == "implicit"), timeout=POP_TIMEOUT)
    if mode == "starttls":
        c.send("STLS")
        resp = c.readline()
        if not resp.startswith("+OK"):
            raise AssertionError(f"STLS refused: {resp}")
        c.sock = c.ctx.wrap_socket(c.sock, server_hostname=c.host)
        c.f = c.sock.makefile("rb")
    return c


def read_multiline(c: harness.LineClient) -> tuple[str, list[str]]:
    """Reads a status line and, if it is +OK, the lines up to the lone '.' (not unstuffed)."""
    status = c.readline()
    lines: list[str] = []
    if not status.startswith("+OK"):
        return status, lines
    for _ in range(1_000_000):
        line = c.readline()
        if line == ".":
            return status, lines
        lines.append(line)
    raise AssertionError("multi-line response without an end")


def cmd(c: harness.LineClient, line: str) -> str:
    c.send(line)
    return c.readline()


def multi(c: harness.LineClient, line: str) -> tuple[str, list[str]]:
    c.send(line)
    return read_multiline(c)


def plain_b64(user: str, password: str, authzid: str = "") -> str:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode()


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

    def wait_for(self, pattern: str, timeout: float = 10.0) -> list[str]:
        """Lines matching the regex, polling until at least one appears or the deadline passes."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            hits = [x for x in self.new().splitlines() if rx.search(x)]
            if hits or time.monotonic() >= deadline:
                return hits
            time.sleep(0.05)


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

    def assert_prefix(self, resp: str, prefix: str):
        self.assertTrue(resp.startswith(prefix), f"expected {prefix!r}, got {resp!r}")

    def assert_no_secrets(self, log: str):
        self.assertTrue(log, "proxy log is empty")
        secrets = list(PASSWORDS.values()) + [p.strip() for p in PASSWORDS.values()] + list(WRONG_PASSWORDS)
        for pw in secrets:
            self.assertNotIn(pw, log, f"a password appears in the proxy log: {pw!r}")
        for user, pw in PASSWORDS.items():
            self.assertNotIn(plain_b64(user, pw), log, "a SASL PLAIN response appears in the proxy log")
            self.assertNotIn(base64.b64encode(pw.encode()).decode(), log, "a base64 password appears in the log")
        self.assertNotIn(tb()["client_secret"], log, "the client secret appears in the proxy log")
        self.assertNotIn(harness.MOCK_JWT_HEADER, log, "an access token appears in the proxy log")

    def user_pass(self, port: int, user: str, password: str, mode: str = "none") -> str:
        """USER/PASS on a fresh raw connection; returns the reply to PASS."""
        with raw_connect(port, mode) as c:
            resp = cmd(c, f"USER {user}")
            self.assert_prefix(resp, "+OK")
            return cmd(c, f"PASS {password}")


# --------------------------------------------------------------------------------------------------------
class A_Pop3Proxy(ProxyTestCase):
    """One proxy: client TLS none / starttls / implicit upstream to Dovecot pop3s (implicit TLS), and
    'forced': client TLS none, upstream STLS to pop3_starttls_forced (127.0.0.2)."""

    LISTENERS = ("none", "starttls", "implicit", "forced")

    @classmethod
    def setUpClass(cls):
        cls.proxy = start_proxy(cls, [pop3_listener(tls=m) for m in MODES] +
                                [pop3_listener(tls="none", upstream="pop3_starttls_forced")])
        cls.port = dict(zip(cls.LISTENERS, cls.proxy.ports))

    @staticmethod
    def client_mode(listener: str) -> str:
        return "none" if listener == "forced" else listener

    # --- greeting, CAPA, AUTH listing -------------------------------------------------------------------
    def test_greeting_and_capa(self):
        for name in self.LISTENERS:
            with self.subTest(listener=name):
                mode = self.client_mode(name)
                m = pop_connect(self.port[name], "implicit" if mode == "implicit" else "none")
                try:
                    welcome = m.getwelcome().decode()
                    self.assert_prefix(welcome, "+OK")
                    self.assertIsNone(APOP_TIMESTAMP.search(welcome), f"APOP timestamp in {welcome!r}")
                    caps = m.capa()
                    for cap in ("USER", "SASL", "RESP-CODES", "AUTH-RESP-CODE", "UIDL", "TOP"):
                        self.assertIn(cap, caps, f"{name}: {caps}")
                    self.assertTrue({"PLAIN", "LOGIN"} <= set(caps["SASL"]), f"{name}: {caps}")
                    self.assertNotIn("XOAUTH2", caps["SASL"])
                    self.assertEqual("STLS" in caps, name == "starttls", f"{name}: {caps}")
                    if name == "starttls":
                        m.stls(context=harness.client_ssl_context())
                        caps = m.capa()
                        self.assertNotIn("STLS", caps, f"STLS still offered under TLS: {caps}")
                        self.assertIn("USER", caps)
                        self.assertTrue({"PLAIN", "LOGIN"} <= set(caps["SASL"]), caps)
                    self.assert_prefix(m.quit().decode(), "+OK")
                finally:
                    close_quietly(m)

    def test_bare_auth_listing_and_refusals_before_login(self):
        for mode in MODES:
            with self.subTest(mode=mode), raw_connect(self.port[mode], mode) as c:
                status, lines = multi(c, "AUTH")
                self.assert_prefix(status, "+OK")
                self.assertEqual({x.upper() for x in lines}, {"PLAIN", "LOGIN"}, lines)
                self.assert_prefix(cmd(c, "STAT"), "-ERR")       # not authenticated yet
                self.assert_prefix(cmd(c, f"APOP {SCANNER} 0123456789abcdef0123456789abcdef"), "-ERR")
                self.assert_prefix(cmd(c, "AUTH XOAUTH2"), "-ERR")  # only PLAIN and LOGIN locally
                if mode != "starttls":
                    self.assert_prefix(cmd(c, "STLS"), "-ERR")
                self.assert_prefix(cmd(c, "QUIT"), "+OK")

    # --- poplib USER/PASS, STAT, LIST, UIDL, TOP, RETR, QUIT ---------------------------------------------
    def test_poplib_user_pass_each_tls_mode(self):
        seed_count = tb()["seed"][SCANNER]["INBOX"]
        expected1 = seeded_inbox_file(SCANNER, 1)
        for name in self.LISTENERS:
            with self.subTest(listener=name):
                dlog = DovecotLog()
                m = pop_connect(self.port[name], self.client_mode(name))
                try:
                    self.assert_prefix(m.user(SCANNER).decode(), "+OK")
                    self.assert_prefix(m.pass_(PASSWORDS[SCANNER]).decode(), "+OK")
                    count, total = m.stat()
                    self.assertEqual(count, seed_count)
                    resp, listing, _ = m.list()
                    self.assert_prefix(resp.decode(), "+OK")
                    sizes = {int(n): int(s) for n, s in (x.split() for x in listing)}
                    self.assertEqual(sorted(sizes), list(range(1, seed_count + 1)))
                    self.assertEqual(sum(sizes.values()), total)
                    resp, uidl, _ = m.uidl()
                    uids = [x.split()[1] for x in uidl]
                    self.assertEqual(len(uids), seed_count)
                    self.assertEqual(len(set(uids)), seed_count, uids)
                    self.assertEqual(m.uidl(1).split()[2], uids[0])
                    resp, top, _ = m.top(1, 0)
                    headers = lines_to_bytes(top)
                    self.assertIn(b"Subject: INBOX message 1 for scanner", headers)
                    self.assertNotIn(b"Seeded test message", headers)
                    resp, body, octets = m.retr(1)
                    self.assertEqual(octets, sizes[1])
                    self.assertEqual(lines_to_bytes(body), expected1, "RETR 1 differs from the Maildir file")
                    self.assertEqual(m.noop(), b"+OK")
                    self.assert_prefix(m.quit().decode(), "+OK")
                finally:
                    close_quietly(m)
                logins = dlog.wait_for(r"pop3-login: .*Login: user=<scanner@contoso\.test>")
                self.assertTrue(logins, "no Dovecot POP3 login seen")
                self.assertIn("method=XOAUTH2", logins[-1])
                self.assertIn("TLS", logins[-1], "upstream login without TLS")
                lip = "127.0.0.2" if name == "forced" else "127.0.0.1"
                self.assertIn(f"lip={lip}", logins[-1])

    def test_mailbox_mapping_and_password_with_quotes(self):
        m = pop_connect(self.port["implicit"], "implicit")
        try:
            m.user(ALICE)
            m.pass_(PASSWORDS[ALICE])
            self.assertEqual(m.stat()[0], tb()["seed"][ALICE]["INBOX"])
            _, top, _ = m.top(1, 0)
            self.assertIn(b"Subject: INBOX message 1 for alice", lines_to_bytes(top))
            m.quit()
        finally:
            close_quietly(m)

    # --- AUTH PLAIN / LOGIN over raw sockets ----------------------------------------------------------------
    def test_auth_plain_with_and_without_initial_response(self):
        user, pw = SCANNER, PASSWORDS[SCANNER]
        for mode in MODES:
            for variant in ("initial response", "continuation", "LOGIN"):
                with self.subTest(mode=mode, variant=variant), raw_connect(self.port[mode], mode) as c:
                    if variant == "initial response":
                        resp = cmd(c, f"AUTH PLAIN {plain_b64(user, pw)}")
                    elif variant == "continuation":
                        cont = cmd(c, "AUTH PLAIN")
                        self.assertEqual(cont.rstrip(), "+", f"continuation: {cont!r}")
                        resp = cmd(c, plain_b64(user, pw))
                    else:
                        self.assertEqual(cmd(c, "AUTH LOGIN"), "+ VXNlcm5hbWU6")
                        self.assertEqual(cmd(c, base64.b64encode(user.encode()).decode()), "+ UGFzc3dvcmQ6")
                        resp = cmd(c, base64.b64encode(pw.encode()).decode())
                    self.assert_prefix(resp, "+OK")
                    stat = cmd(c, "STAT")
                    self.assertRegex(stat, rf"^\+OK {tb()['seed'][SCANNER]['INBOX']} \d+")
                    status, lines = multi(c, "UIDL")
                    self.assert_prefix(status, "+OK")
                    self.assertEqual(len(lines), tb()["seed"][SCANNER]["INBOX"])
                    self.assert_prefix(cmd(c, "QUIT"), "+OK")

    def test_auth_cancel_and_bad_base64(self):
        with raw_connect(self.port["none"], "none") as c:
            self.assertEqual(cmd(c, "AUTH PLAIN").rstrip(), "+")
            self.assert_prefix(cmd(c, "*"), "-ERR")
            self.assertEqual(cmd(c, "AUTH PLAIN").rstrip(), "+")
            self.assert_prefix(cmd(c, "!!!not-base64!!!"), "-ERR")
            # The connection is still usable afterwards.
            self.assert_prefix(cmd(c, f"AUTH PLAIN {plain_b64(SCANNER, PASSWORDS[SCANNER])}"), "+OK")
            self.assert_prefix(cmd(c, "STAT"), "+OK")
            self.assert_prefix(cmd(c, "QUIT"), "+OK")

    # --- curl -------------------------------------------------------------------------------------------------
    def curl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["curl", "-sS", "--max-time", "30", "--user", f"{SCANNER}:{PASSWORDS[SCANNER]}",
                               *args], capture_output=True, timeout=60)

    def test_curl_pop3_and_pop3s(self):
        ca = tb()["ca_file"]
        n = tb()["seed"][SCANNER]["INBOX"]
        expected1 = seeded_inbox_file(SCANNER, 1)
        urls = {
            "pop3": ([], f"pop3://127.0.0.1:{self.port['none']}"),
            "pop3 STLS": (["--ssl-reqd", "--cacert", ca], f"pop3://127.0.0.1:{self.port['starttls']}"),
            "pop3s": (["--cacert", ca], f"pop3s://127.0.0.1:{self.port['implicit']}"),
            "pop3 upstream STLS": ([], f"pop3://127.0.0.1:{self.port['forced']}"),
        }
        for name, (opts, base) in urls.items():
            for login_opts in ([], ["--login-options", "AUTH=LOGIN"]):
                with self.subTest(name, login_options=login_opts):
                    r = self.curl(*opts, *login_opts, base + "/")
                    self.assertEqual(r.returncode, 0, f"list: rc={r.returncode} {r.stderr!r}")
                    listing = r.stdout.decode().split()
                    self.assertEqual(listing[0::2], [str(i) for i in range(1, n + 1)], r.stdout)
                    self.assertEqual(int(listing[1]), len(expected1))
            with self.subTest(name, retrieve=1):
                r = self.curl(*opts, base + "/1")
                self.assertEqual(r.returncode, 0, f"retrieve: rc={r.returncode} {r.stderr!r}")
                self.assertEqual(r.stdout, expected1)
        with self.subTest("UIDL via -X"):
            r = self.curl("--cacert", ca, "-X", "UIDL", f"pop3s://127.0.0.1:{self.port['implicit']}/")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(len(r.stdout.decode().split()), 2 * n, r.stdout)
        with self.subTest("wrong password"):
            r = subprocess.run(["curl", "-sS", "--max-time", "30", "--user", f"{SCANNER}:{WRONG_PASSWORDS[0]}",
                                f"pop3://127.0.0.1:{self.port['none']}/"], capture_output=True, timeout=60)
            self.assertNotEqual(r.returncode, 0)
            self.assertEqual(r.stdout, b"")

    # --- fetchmail --------------------------------------------------------------------------------------------
    def fetchmail(self, name: str) -> tuple[subprocess.CompletedProcess, list[bytes]]:
        home = tempfile.mkdtemp(prefix="xoauth-pop3-fm-")
        self.addCleanup(shutil.rmtree, home, True)
        out = os.path.join(home, "out")
        os.mkdir(out)
        # fetchmail matches the certificate's CN/DNS names only, never an IP SAN (the proxy's certificate has
        # IP:127.0.0.1 and DNS:localhost), so the expected name is given with sslcommonname.
        ca = rc_string(tb()["ca_file"])
        tls = {
            "none": "sslproto '' no sslcertck",
            "forced": "sslproto '' no sslcertck",
            "starttls": f"sslproto 'tls1.2+' sslcertck sslcertfile {ca} sslcommonname localhost",
            "implicit": f"ssl sslcertck sslcertfile {ca} sslcommonname localhost",
        }[name]
        rc = (
            "set no syslog\n"
            "set invisible\n"
            f"poll 127.0.0.1 service {self.port[name]} protocol pop3 timeout 30\n"
            f"  user {rc_string(SCANNER)} there with password {rc_string(PASSWORDS[SCANNER])}"
            " is root here\n"
            f"  keep fetchall no rewrite {tls}\n"
            f"  mda \"cat > $(mktemp {out}/msg.XXXXXX)\"\n"
        )
        rcfile = os.path.join(home, "fetchmailrc")
        with open(rcfile, "w") as f:
            f.write(rc)
        os.chmod(rcfile, 0o600)
        env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        env.update(HOME=home, FETCHMAILHOME=home)
        r = subprocess.run(["fetchmail", "-f", rcfile, "-v", "-N", "-d0", "--pidfile", os.path.join(home, "pid"),
                            "--idfile", os.path.join(home, "ids")], capture_output=True, timeout=90,
                           env=env, stdin=subprocess.DEVNULL)
        msgs = []
        for path in sorted(glob.glob(os.path.join(out, "msg.*"))):
            with open(path, "rb") as f:
                msgs.append(f.read())
        return r, msgs

    def test_fetchmail_each_tls_mode(self):
        n = tb()["seed"][SCANNER]["INBOX"]
        expected = {i: seeded_inbox_file(SCANNER, i).replace(b"\r\n", b"\n") for i in range(1, n + 1)}
        for name in self.LISTENERS:
            with self.subTest(listener=name):
                r, msgs = self.fetchmail(name)
                transcript = (r.stdout + r.stderr).decode("utf-8", "replace")
                self.assertEqual(r.returncode, 0, f"fetchmail rc={r.returncode}:\n{transcript[-3000:]}")
                self.assertEqual(len(msgs), n, transcript[-3000:])
                self.assertEqual(sorted(msgs), sorted(expected.values()),
                                 "fetched messages differ from the Maildir files")
                self.assertIn(f"POP3> USER {SCANNER}", transcript)
                self.assertIn("POP3< +OK Logged in", transcript)
                self.assertEqual("POP3> STLS" in transcript, name == "starttls", transcript[-3000:])
                if name == "starttls":
                    self.assertIn("upgrade to TLS succeeded", transcript)
                if name in ("starttls", "implicit"):
                    self.assertRegex(transcript, r"SSL/TLS: using protocol TLSv1\.[23]")
                self.assertNotIn(PASSWORDS[SCANNER].encode(), r.stdout + r.stderr)

    # --- refusals ------------------------------------------------------------------------------------------------
    def test_wrong_password_and_unknown_account(self):
        harness.admin("reset", {"what": "stats"})
        port = self.port["none"]
        wrong = self.user_pass(port, SCANNER, WRONG_PASSWORDS[0])
        unknown = self.user_pass(port, "nobody@contoso.test", WRONG_PASSWORDS[1])
        self.assert_prefix(wrong, "-ERR [AUTH]")
        self.assert_prefix(unknown, "-ERR [AUTH]")
        self.assertEqual(normalize(wrong), normalize(unknown), "wrong password and unknown account must look alike")
        # The password with its spaces trimmed is a wrong password, not the right one.
        self.assert_prefix(self.user_pass(port, SCANNER, PASSWORDS[SCANNER].strip()), "-ERR [AUTH]")
        with raw_connect(self.port["implicit"], "implicit") as c:
            r1 = cmd(c, f"AUTH PLAIN {plain_b64(SCANNER, WRONG_PASSWORDS[0])}")
            r2 = cmd(c, f"AUTH PLAIN {plain_b64('nobody@contoso.test', WRONG_PASSWORDS[1])}")
            self.assert_prefix(r1, "-ERR [AUTH]")
            self.assert_prefix(r2, "-ERR [AUTH]")
            self.assertEqual(normalize(r1), normalize(wrong))
            self.assertEqual(normalize(r2), normalize(wrong))
        m = pop_connect(self.port["starttls"], "starttls")
        try:
            m.user(SCANNER)
            with self.assertRaises(poplib.error_proto) as cm:
                m.pass_(WRONG_PASSWORDS[0])
            self.assertTrue(str(cm.exception).startswith("b'-ERR [AUTH]"), cm.exception)
        finally:
            close_quietly(m)
        # The third failure on one connection announces the close, and the proxy closes it.
        with raw_connect(port, "none") as c:
            replies = []
            for i in range(3):
                self.assert_prefix(cmd(c, f"USER {SCANNER}"), "+OK")
                replies.append(cmd(c, f"PASS {WRONG_PASSWORDS[0]}-{i}"))
            self.assertEqual(replies[:2], [wrong, wrong])
            self.assert_prefix(replies[2], "-ERR [AUTH]")
            with self.assertRaises((EOFError, ConnectionError)):
                for _ in range(3):
                    cmd(c, "NOOP")
        # A locally refused login never reaches the IdP or Dovecot.
        stats = harness.admin("stats")
        self.assertEqual(stats["introspection"]["requests"], 0, stats["introspection"])

    # --- 20 MB message ---------------------------------------------------------------------------------------
    def test_large_message_20mb_intact(self):
        mailbox = big_mailbox()
        mdir = maildir(mailbox)
        for sub in ("cur", "new", "tmp"):
            self.assertTrue(os.path.isdir(os.path.join(mdir, sub)), f"{mdir}/{sub} missing")
        raw = base64.b64encode(os.urandom(15 * 1024 * 1024))  # 20 MiB of base64 text in 76-octet lines
        lines = [raw[i:i + 76] for i in range(0, len(raw), 76)]
        # Some lines start with '.', one is a lone '.': Dovecot dot-stuffs them, the proxy relays the bytes
        # as they are, poplib un-stuffs; a relay that ended at the first "\r\n.\r\n" would truncate here.
        for i in range(1000, len(lines), 9973):
            lines[i] = b"." + lines[i]
        lines[len(lines) // 2] = b"."
        body = b"".join(line + b"\r\n" for line in lines)
        unique = f"{int(time.time())}.M{os.getpid()}R{os.urandom(4).hex()}.pop3-it"
        msg = (f"From: POP3 big test <big@example.net>\r\nTo: {mailbox}\r\nSubject: pop3 20MB {unique}\r\n"
               f"Message-ID: <{unique}@testbed.invalid>\r\nMIME-Version: 1.0\r\n"
               "Content-Type: text/plain; charset=us-ascii\r\n\r\n").encode() + body
        self.assertGreaterEqual(len(msg), 20 * 1024 * 1024)
        digest = hashlib.sha256(msg).hexdigest()
        name = f"{unique},S={len(msg)},W={len(msg)}"
        tmp_path = os.path.join(mdir, "tmp", name)
        with open(tmp_path, "wb") as f:
            f.write(msg)
        os.chown(tmp_path, MAIL_UID, MAIL_UID)
        os.chmod(tmp_path, 0o600)
        dlog = DovecotLog()
        self.addCleanup(self.remove_seeded, mdir, unique, mailbox, dlog)
        os.rename(tmp_path, os.path.join(mdir, "new", name))

        m = pop_connect(self.port["implicit"], "implicit")
        try:
            m.user(BIGPOP)
            self.assert_prefix(m.pass_(PASSWORDS[BIGPOP]).decode(), "+OK")
            _, listing, _ = m.list()
            nums = [int(x.split()[0]) for x in listing if int(x.split()[1]) == len(msg)]
            self.assertEqual(len(nums), 1, f"the 20 MB message is not listed exactly once: {listing}")
            t0 = time.monotonic()
            resp, lines, octets = m.retr(nums[0])
            elapsed = time.monotonic() - t0
            got = lines_to_bytes(lines)
            self.assertEqual(octets, len(msg))
            self.assertEqual(len(got), len(msg))
            self.assertEqual(hashlib.sha256(got).hexdigest(), digest, "the 20 MB message was altered in transit")
            self.assert_prefix(m.quit().decode(), "+OK")
        finally:
            close_quietly(m)
        print(f"\n[20 MB RETR through TLS both sides in {elapsed:.2f}s]", file=sys.stderr)

    @staticmethod
    def remove_seeded(mdir: str, unique: str, mailbox: str, dlog: DovecotLog):
        """Deletes only the file this test wrote, once Dovecot has ended the POP3 session."""
        dlog.wait_for(rf"pop3\({re.escape(mailbox)}\).*Disconnected", timeout=10)
        for sub in ("tmp", "new", "cur"):
            for path in glob.glob(os.path.join(mdir, sub, unique + "*")):
                os.unlink(path)

    # --- logs ----------------------------------------------------------------------------------------------------
    def test_zz_no_secrets_in_log(self):
        log = self.proxy.log()
        self.assertIn("protocol=pop3", log)
        self.assertIn("logged in", log)
        self.assert_no_secrets(log)


# --------------------------------------------------------------------------------------------------------
class B_IdPFailures(ProxyTestCase):
    def tearDown(self):
        super().tearDown()
        harness.admin("reset", {"what": "faults"})

    def check_temp_failure(self, port: int):
        t0 = time.monotonic()
        resp = self.user_pass(port, SCANNER, PASSWORDS[SCANNER])
        self.assert_prefix(resp, "-ERR [SYS/TEMP]")
        with raw_connect(port, "none") as c:
            self.assert_prefix(cmd(c, f"AUTH PLAIN {plain_b64(SCANNER, PASSWORDS[SCANNER])}"), "-ERR [SYS/TEMP]")
        self.assertLess(time.monotonic() - t0, 60)

    def test_idp_503(self):
        self.local_proxy = start_proxy(self, [pop3_listener()])
        harness.admin("fail", {"status": 503, "count": 1000, "endpoint": "token"})
        self.check_temp_failure(self.local_proxy.ports[0])
        self.assertGreaterEqual(harness.admin("stats")["faults_injected"], 1)
        # Once the IdP is back, the same proxy logs in again (a failed fetch is held briefly: the
        # token cache answers from memory for failure_hold = 5 s, so poll with a deadline).
        harness.admin("reset", {"what": "faults"})
        t0 = time.monotonic()
        deadline = t0 + 20
        resp = ""
        while time.monotonic() < deadline:
            resp = self.user_pass(self.local_proxy.ports[0], SCANNER, PASSWORDS[SCANNER])
            if resp.startswith("+OK"):
                break
            self.assert_prefix(resp, "-ERR [SYS/TEMP]")
            time.sleep(0.5)
        self.assert_prefix(resp, "+OK")
        print(f"\n[login ok again {time.monotonic() - t0:.1f}s after the IdP recovered]", file=sys.stderr)
        self.assert_no_secrets(self.local_proxy.log())

    def test_idp_closed_port(self):
        workdir = tempfile.mkdtemp(prefix="xoauth-pop3-")
        closed = f"https://127.0.0.1:{harness.free_port()}"
        self.local_proxy = start_proxy(self, [pop3_listener()], workdir=workdir,
                                       providers=[harness.provider(workdir, authority=closed)])
        self.check_temp_failure(self.local_proxy.ports[0])
        self.assert_no_secrets(self.local_proxy.log())


# --------------------------------------------------------------------------------------------------------
class C_UpstreamTrust(ProxyTestCase):
    """The proxy never sends a token to an upstream it cannot verify, and never falls back to plaintext."""

    def check_refused(self, listener: dict):
        self.local_proxy = start_proxy(self, [listener])
        dlog = DovecotLog()
        harness.admin("reset", {"what": "stats"})
        resp = self.user_pass(self.local_proxy.ports[0], SCANNER, PASSWORDS[SCANNER])
        self.assert_prefix(resp, "-ERR [SYS/TEMP]")
        self.assertEqual(harness.admin("stats")["introspection"]["requests"], 0)
        self.assertNotIn("Login: user=<scanner@contoso.test>", dlog.new())

    def test_untrusted_upstream_implicit(self):
        self.check_refused(pop3_listener(upstream="pop3s", upstream_ca_file=None))

    def test_untrusted_upstream_stls_no_plaintext_fallback(self):
        # Dovecot's 127.0.0.1 pop3 port accepts XOAUTH2 without TLS (loopback), so a fallback would log in.
        self.check_refused(pop3_listener(upstream="pop3", upstream_tls="starttls", upstream_ca_file=None))


def main() -> int:
    missing = [t for t in ("curl", "fetchmail") if not shutil.which(t)]
    if missing:
        print(f"test_pop3: {', '.join(missing)} not installed (scripts/setup.sh)", file=sys.stderr)
        return 2
    return harness.run_tests("test_pop3")


if __name__ == "__main__":
    sys.exit(main())
