#!/usr/bin/env python3
"""Delegated sign-in (issue 5) integration tests: authorization code, device code and password
grants against the test bed's mock Microsoft identity platform, then IMAP/SMTP/POP3 logins through
the proxy to the real Dovecot and Postfix with the tokens those grants produced.

    XOAUTH_PROXY_BIN=build/xoauth-proxy python3 tests/integration/test_delegated.py [-v] [-k PATTERN]

Optional: XOAUTH_TESTBED_DIR=/path (reuse or start a test bed there and leave it running),
XOAUTH_KEEP_WORKDIRS=1 (keep proxy work dirs: config, proxy.log, state). Exits non-zero on failure.

The "browser" here is urllib: the mock's auto_approve setting ("login_hint" = sign in the user the
authorize URL names) makes /authorize answer with a redirect to the proxy's callback at once; the
test then requests that callback URL as a browser would. test_browser.py does the same with a real
headless Chromium. Device codes are approved through the mock's /_admin/device/approve.

Token lifetimes: a grant obtained while the mock's token_lifetime is 2 s gives an access token that
is expired a few seconds later; the setting is put back to its default right after, so every
refresh yields a long-lived token. Each test waits for states and log lines with deadlines; the only
clock waits are for such a 2 s token to expire. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ALICE = "alice@contoso.test"
SCANNER = "scanner@contoso.test"
RECEIVER = "receiver@contoso.test"
RECEIVER2 = "receiver2@contoso.test"
BOB = "bob@contoso.test"  # MFA required at the mock
SINK = "receiver2@contoso.test"  # where the SMTP tests send mail
# Local passwords (what the mail client types) for the authorization_code / device_code accounts:
# deliberately not the users' Entra passwords.
LOCAL = {ALICE: "alice-local-Pw1", SCANNER: "scanner-local-Pw2", RECEIVER: "receiver-local-Pw3",
         RECEIVER2: "receiver2-local-Pw4"}
ENTRA = harness.ENTRA_PASSWORDS
TIMEOUT = 30.0
SHORT_LIFETIME = 2  # seconds: mock token_lifetime while a soon-expired grant is made
REFRESH = "refresh_token"
CODE = "authorization_code"
PASSWORD = "password"
DEVICE = harness.DEVICE_GRANT
STATES = {"not_authorized", "authorizing", "authorized", "needs_authorization", "locked", "store_error",
          "app_only"}
JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{40,}")
OPAQUE_RE = re.compile(r"1\.AQ[A-Za-z0-9_-]{40,}")  # the mock's refresh tokens, codes


def tb() -> dict:
    return harness.testbed_info()


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def slug(login: str) -> str:
    return login.replace("@", "-").replace(".", "-")


def setUpModule():
    harness.testbed_info()
    harness.mock_reset("stats,faults,config")
    harness.ensure_delegated_clients()


def tearDownModule():
    # Leave the shared mock as other suites expect it: default settings, no faults, seeded directory
    # (undoes revocations, consent and the apps registered here; they are registered again on use).
    try:
        harness.mock_reset("stats,faults,config,directory")
    except Exception as e:  # noqa: BLE001 - the test bed may already be gone
        print(f"[tearDownModule: mock reset failed: {e}]", file=sys.stderr)


# --------------------------------------------------------------------------------------------------------
class DelegatedCase(unittest.TestCase):
    """Helpers: work dirs, configs, proxies (their logs printed when a test fails), client logins."""

    maxDiff = None

    def setUp(self):
        harness.mock_reset("stats,faults,config")
        harness.ensure_delegated_clients()
        self._proxies: list[harness.Proxy] = []
        self._clis: list[harness.AuthorizeCLI] = []

    def tearDown(self):
        result = getattr(self._outcome, "result", None)
        failed = result is not None and any(getattr(t, "test_case", t) is self
                                            for t, _ in result.failures + result.errors)
        if failed:
            for p in self._proxies + list(getattr(type(self), "class_proxies", [])):
                print(f"\n----- proxy log ({p.log_path}) -----\n{p.log()[-8000:]}\n-----", file=sys.stderr)
            for c in self._clis:
                print(f"\n----- `{' '.join(c.args[1:])}` (exit {c.proc.poll()}) -----\n{c.output[-6000:]}\n-----",
                      file=sys.stderr)
        harness.mock_reset("faults,config")

    # --- setup helpers ---------------------------------------------------------------------------------
    @staticmethod
    def new_workdir(owner) -> str:
        return harness.new_workdir(owner, "xoauth-deleg-")

    @staticmethod
    def listeners(kinds=("imap", "smtp", "pop3")) -> list[dict]:
        out = []
        for k in kinds:
            if k == "imap":
                out.append(harness.listener(tls="none", upstream="imaps"))
            elif k == "smtp":
                out.append(harness.smtp_listener(tls="none", upstream="submission", ehlo_name="proxy.contoso.test"))
            elif k == "pop3":
                out.append(harness.listener(tls="none", upstream="pop3s", protocol="pop3"))
        return out

    @staticmethod
    def write(workdir: str, accounts: list[dict], providers: list[dict], kinds=("imap", "smtp", "pop3"),
              key: str | None = "raw", **proxy_opts) -> tuple[str, dict]:
        """Writes the config; returns (path, {protocol: listener index})."""
        px = dict(proxy_opts)
        if key:
            px["token_key_file"] = harness.token_key_file(workdir, key)
        cfg = harness.write_config(workdir, providers, DelegatedCase.listeners(kinds), accounts, proxy=px)
        return cfg, {k: i for i, k in enumerate(kinds)}

    def cli(self, cfg: str, login: str, **kw) -> harness.AuthorizeCLI:
        """`xoauth-proxy authorize` (killed at cleanup; its output printed when the test fails)."""
        c = harness.AuthorizeCLI(cfg, login, **kw)
        self._clis.append(c)
        self.addCleanup(c.kill)
        return c

    def proxy(self, cfg: str, n: int, start: bool = True) -> harness.Proxy:
        p = harness.Proxy(cfg, n, os.path.dirname(cfg), wait_admin=True)
        self._proxies.append(p)
        self.addCleanup(p.stop)
        if start:
            p.start()
        return p

    # --- admin API ------------------------------------------------------------------------------------------
    def api(self, proxy: harness.Proxy, method: str, path: str, body: dict | None = None, **kw):
        return harness.api(proxy, method, path, body, **kw)

    def accounts(self, proxy: harness.Proxy) -> list[dict]:
        status, out = self.api(proxy, "GET", "/api/accounts")
        self.assertEqual(status, 200, out)
        lst = out.get("accounts") if isinstance(out, dict) else out
        self.assertIsInstance(lst, list, f"/api/accounts: expected a list of accounts, got {out!r}")
        return lst

    def state(self, proxy: harness.Proxy, login: str) -> dict:
        return harness.account_status(proxy, login)

    def wait_state(self, proxy: harness.Proxy, login: str, states, timeout: float = TIMEOUT) -> dict:
        return harness.wait_account_state(proxy, login, states, timeout)

    def start_api_authorization(self, proxy: harness.Proxy, login: str, device: bool = False) -> dict:
        status, out = self.api(proxy, "POST", "/api/authorize", {"account": login, "device": device})
        self.assertEqual(status, 200, f"POST /api/authorize -> {status} {out!r}")
        self.assertIsInstance(out, dict, out)
        self.assertTrue(out.get("ok"), f"authorization did not start: {out}")
        return out

    def authorize_code_via_api(self, proxy: harness.Proxy, login: str) -> dict:
        """POST /api/authorize, the mock signs the user in at once (auto_approve = login_hint), the
        "browser" lands on the proxy's callback; returns the account JSON once authorized."""
        harness.mock_settings(auto_approve="login_hint")
        start = self.start_api_authorization(proxy, login)
        url = start.get("authorize_url") or ""
        self.check_authorize_url(url, proxy, login)
        final = harness.follow_authorize(url)
        self.land_on_callback(final)
        harness.mock_settings(auto_approve="")
        acct = self.wait_state(proxy, login, "authorized")
        return acct

    def check_authorize_url(self, url: str, proxy: harness.Proxy | None, login: str,
                            redirect_base: str | None = None):
        self.assertTrue(url.startswith(f"{tb()['idp_url']}/{tb()['tenant']}/oauth2/v2.0/authorize?"), url)
        q = harness.query_of(url)
        if redirect_base is None and proxy is not None:
            port = urllib.parse.urlsplit(proxy.admin_url).port
            redirect_base = f"http://localhost:{port}"
        if redirect_base is not None:
            self.assertEqual(q.get("redirect_uri"), redirect_base + harness.CALLBACK_PATH, url)
        self.assertEqual(q.get("response_type"), "code", url)
        self.assertEqual(q.get("code_challenge_method"), "S256", f"PKCE S256 expected: {url}")
        self.assertTrue(q.get("state"), url)
        self.assertEqual((q.get("login_hint") or "").lower(), login.lower(), f"login_hint expected: {url}")
        self.assertIn("offline_access", (q.get("scope") or "").split(), url)

    def land_on_callback(self, final_url: str) -> bytes:
        """Requests the redirect target (the proxy's or the CLI's /sso/oauth_callback) like a browser."""
        self.assertIn(harness.CALLBACK_PATH + "?", final_url)
        q = harness.query_of(final_url)
        self.assertIn("code", q, f"the mock redirected with an error: {final_url}")
        status, _, body = harness.http_get(final_url)
        self.assertEqual(status, 200, f"callback answered {status}: {body[:500]!r}")
        return body

    def authorize_then_expire(self, proxy: harness.Proxy, login: str):
        """Authorizes while the mock issues 2 s access tokens, stops the proxy (so that nothing
        refreshes), waits until every token it may have obtained has expired, and restores the
        default lifetime. The store then holds a grant whose access token is expired; the caller
        arms faults and starts the proxy again."""
        harness.mock_settings(token_lifetime=SHORT_LIFETIME)
        self.authorize_code_via_api(proxy, login)
        proxy.stop()
        self.wait_expired(time.time())
        harness.mock_settings(token_lifetime=3599)

    def wait_expired(self, since: float):
        """Waits (bounded) until an access token issued with SHORT_LIFETIME before `since` has expired."""
        harness.wait_until(lambda: time.time() >= since + SHORT_LIFETIME + 1.2, SHORT_LIFETIME + 10,
                           "the access token to expire", interval=0.1)

    # --- mail clients -----------------------------------------------------------------------------------------
    def imap_login(self, port: int, user: str, password: str) -> str:
        """LOGIN then (if OK) EXAMINE INBOX; returns the LOGIN reply (tag stripped)."""
        with harness.LineClient(port, timeout=60) as c:
            q = lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731
            resp, _ = c.cmd("a1", f"LOGIN {q(user)} {q(password)}")
            if resp.startswith("OK"):
                r2, lines = c.cmd("a2", "EXAMINE INBOX")
                self.assertTrue(r2.startswith("OK"), f"EXAMINE after login: {r2} {lines}")
                self.assertTrue(any(x.endswith(" EXISTS") for x in lines), lines)
                c.cmd("a3", "LOGOUT")
            return resp

    def assert_imap_ok(self, port: int, user: str, password: str):
        resp = self.imap_login(port, user, password)
        self.assertTrue(resp.startswith("OK"), f"IMAP login of {user}: {resp}")

    def smtp_auth(self, port: int, user: str, password: str, send: bool = True) -> harness.SmtpReply:
        """AUTH PLAIN; when accepted (and send) one message to SINK. Returns the AUTH reply."""
        with harness.SmtpClient(port, timeout=60) as c:
            self.assertEqual(c.ehlo().code, 250)
            r = c.cmd("AUTH PLAIN " + b64(f"\0{user}\0{password}"))
            if r.code == 235 and send:
                self.assertEqual(c.cmd(f"MAIL FROM:<{user}>").code, 250, c.transcript)
                self.assertEqual(c.cmd(f"RCPT TO:<{SINK}>").code, 250, c.transcript)
                self.assertEqual(c.cmd("DATA").code, 354, c.transcript)
                c.send_raw(f"From: <{user}>\r\nTo: <{SINK}>\r\nSubject: delegated {time.time()}\r\n\r\n"
                           f"sent with a delegated token\r\n.\r\n".encode())
                self.assertEqual(c.reply().code, 250, c.transcript)
            c.cmd("QUIT")
            return r

    def assert_smtp_ok(self, port: int, user: str, password: str):
        r = self.smtp_auth(port, user, password)
        self.assertEqual(r.code, 235, f"SMTP AUTH of {user}: {r}")

    def pop3_login(self, port: int, user: str, password: str) -> str:
        with harness.LineClient(port, timeout=60) as c:
            self.assertTrue(c.greeting.startswith("+OK"), c.greeting)
            c.send(f"USER {user}")
            r = c.readline()
            if not r.startswith("+OK"):
                return r
            c.send(f"PASS {password}")
            r = c.readline()
            if r.startswith("+OK"):
                c.send("STAT")
                self.assertTrue(c.readline().startswith("+OK"))
                c.send("QUIT")
            return r

    # Replies (protocol/*/responses.hpp): temporary = the identity platform failed, try later;
    # contact admin = the grant is unusable until an administrator acts.
    def assert_imap_temporary(self, resp: str):
        self.assertTrue(resp.startswith("NO [UNAVAILABLE]"), f"expected NO [UNAVAILABLE], got {resp!r}")

    def assert_imap_contact_admin(self, resp: str):
        self.assertTrue(resp.startswith("NO [CONTACTADMIN]"), f"expected NO [CONTACTADMIN], got {resp!r}")

    def assert_smtp_temporary(self, r: harness.SmtpReply):
        self.assertEqual(r.code, 454, r)
        self.assertTrue(r.lines[-1].startswith("4.7.0"), r)
        self.assertNotIn("administrator", r.text, f"a transient failure is not a 'contact admin' case: {r}")

    def assert_smtp_contact_admin(self, r: harness.SmtpReply):
        self.assertEqual(r.code, 454, r)
        self.assertIn("administrator", r.text, f"expected the 'contact admin' 454: {r}")

    def assert_pop3_temporary(self, resp: str):
        self.assertTrue(resp.startswith("-ERR [SYS/TEMP]"), f"expected -ERR [SYS/TEMP], got {resp!r}")

    def assert_pop3_contact_admin(self, resp: str):
        self.assertTrue(resp.startswith("-ERR [SYS/PERM]"), f"expected -ERR [SYS/PERM], got {resp!r}")

    def assert_no_token_leak(self, text: str, where: str):
        self.assertFalse(JWT_RE.search(text), f"an access/id token appears in {where}")
        self.assertFalse(OPAQUE_RE.search(text), f"a refresh token or code appears in {where}")

    def assert_store(self, proxy: harness.Proxy, n_files: int | None = None) -> list[str]:
        """<state_dir>/tokens/: regular 0600 files, none holding a token in plaintext."""
        d = os.path.join(proxy.state_dir, "tokens")
        self.assertTrue(os.path.isdir(d), f"no token store directory {d}")
        files = sorted(os.path.join(d, f) for f in os.listdir(d)
                       if not f.startswith(".") and os.path.isfile(os.path.join(d, f)))
        if n_files is not None:
            self.assertEqual(len(files), n_files, f"token store files: {files}")
        for f in files:
            mode = stat.S_IMODE(os.stat(f).st_mode)
            self.assertEqual(mode & 0o077, 0, f"{f} has mode {oct(mode)}")
            with open(f, "rb") as fh:
                data = fh.read()
            text = data.decode("latin-1")
            self.assert_no_token_leak(text, f)
            self.assertNotIn(b"refresh_token", data, f"{f} looks like plaintext JSON")
            self.assertNotIn(b"access_token", data, f"{f} looks like plaintext JSON")
        return files


# --------------------------------------------------------------------------------------------------------
class A_CodeFlowProxyRunning(DelegatedCase):
    """One proxy, an authorization_code account (confidential web app, token key file): the admin
    endpoints, refusal before authorization, authorization through POST /api/authorize and the
    callback, then IMAP, SMTP and POP3 with the delegated token."""

    class_proxies: list = []

    @classmethod
    def setUpClass(cls):
        harness.ensure_delegated_clients()
        wd = cls.new_workdir(cls)
        prov = harness.delegated_provider(wd, "web")
        acct = harness.delegated_account(ALICE, "authorization_code", prov["name"], LOCAL[ALICE])
        cfg, cls.idx = cls.write(wd, [acct], [prov])
        cls.px = harness.Proxy(cfg, 3, wd, wait_admin=True)
        cls.class_proxies = [cls.px]
        cls.addClassCleanup(cls.px.stop)
        cls.px.start()

    def port(self, proto: str) -> int:
        return self.px.ports[self.idx[proto]]

    def test_1_admin_endpoints(self):
        px = self.px
        self.assertIsNotNone(px.admin_url, "no 'admin listening on http://127.0.0.1:PORT' log line")
        self.assertRegex(px.admin_url, r"^http://127\.0\.0\.1:\d+$")
        # admin.json: url, pid, token; mode 0600
        path = os.path.join(px.state_dir, "admin.json")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, "admin.json must be 0600")
        aj = harness.admin_json(px.state_dir)
        self.assertEqual(aj.get("url"), px.admin_url, aj)
        self.assertEqual(aj.get("pid"), px.pid, aj)
        self.assertTrue(isinstance(aj.get("token"), str) and len(aj["token"]) >= 16, "admin token too short")
        # health / readiness
        status, _, body = harness.http_get(px.admin_url + "/healthz")
        self.assertEqual((status, body.strip()), (200, b"ok"))
        status, _, body = harness.http_get(px.admin_url + "/readyz")
        self.assertEqual(status, 200, body)
        json.loads(body)
        # the API needs the admin token
        for token in ("", "not-the-token"):
            status, out = self.api(px, "GET", "/api/accounts", token=token)
            self.assertIn(status, (401, 403), f"/api/accounts with token {token!r}: {status} {out!r}")
            status, out = self.api(px, "POST", "/api/authorize", {"account": ALICE, "device": False}, token=token)
            self.assertIn(status, (401, 403), f"/api/authorize with token {token!r}: {status} {out!r}")
        accts = self.accounts(px)
        me = [a for a in accts if a.get("login", a.get("account")) == ALICE]
        self.assertEqual(len(me), 1, accts)
        self.assertEqual(me[0]["state"], "not_authorized", me[0])
        one = self.state(px, ALICE)
        self.assertEqual(one["state"], "not_authorized", one)
        self.assertFalse(one.get("stored"), one)
        for a in accts:
            self.assertIn(a["state"], STATES, a)
        # the status page: row, state cell, authorize button in a POST /authorize form
        status, _, page = harness.http_get(px.admin_url + "/")
        self.assertEqual(status, 200)
        html = page.decode("utf-8", "replace")
        row = re.search(r'<tr[^>]*\bid="account-' + slug(ALICE) + r'"[^>]*>(.*?)</tr>', html, re.S)
        self.assertTrue(row, f"no row id=account-{slug(ALICE)} on the status page:\n{html[:3000]}")
        cell = re.search(r'<td[^>]*class="[^"]*\bstate\b[^"]*"[^>]*>(.*?)</td>', row.group(1), re.S)
        self.assertTrue(cell, f"no state cell in the row: {row.group(1)}")
        cell_text = re.sub(r"<[^>]+>", "", cell.group(1)).strip().lower().replace(" ", "_")
        self.assertIn("not_authorized", cell_text, cell.group(1))
        self.assertRegex(html, r'<form[^>]*method="post"[^>]*action="/authorize"|'
                               r'<form[^>]*action="/authorize"[^>]*method="post"')
        self.assertIn(f'id="authorize-{slug(ALICE)}"', html)

    def test_2_login_before_authorization_is_contact_admin(self):
        self.assert_imap_contact_admin(self.imap_login(self.port("imap"), ALICE, LOCAL[ALICE]))
        self.assert_smtp_contact_admin(self.smtp_auth(self.port("smtp"), ALICE, LOCAL[ALICE]))
        self.assert_pop3_contact_admin(self.pop3_login(self.port("pop3"), ALICE, LOCAL[ALICE]))
        # a wrong local password stays a plain authentication failure
        self.assertTrue(self.imap_login(self.port("imap"), ALICE, "wrong").startswith("NO [AUTHENTICATIONFAILED]"))
        st = harness.mock_stats()
        self.assertEqual(st["token_requests"], 0, f"no grant: nothing to ask the identity platform {st['grants']}")

    def test_3_authorize_via_api_then_imap_smtp_pop3(self):
        acct = self.authorize_code_via_api(self.px, ALICE)
        self.assertTrue(acct.get("access_expires"), acct)
        self.assertTrue(acct.get("stored"), f"with a token key file the grant is stored at once: {acct}")
        self.assertFalse(acct.get("last_error"), acct)
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, CODE), 1, st["grants"])
        self.assertEqual(st["codes_redeemed"], 1)
        self.assert_store(self.px, 1)
        dlog = harness.LogTail(tb()["logs"]["dovecot"])
        self.assert_imap_ok(self.port("imap"), ALICE, LOCAL[ALICE])
        self.assert_smtp_ok(self.port("smtp"), ALICE, LOCAL[ALICE])
        self.assertTrue(self.pop3_login(self.port("pop3"), ALICE, LOCAL[ALICE]).startswith("+OK"))
        # the token was a delegated one for alice (Dovecot's user passdb took it)
        st = harness.mock_stats()
        self.assertGreaterEqual(st["introspection"]["active"], 3, st["introspection"])
        self.assertEqual(st["token_requests"], 1, f"the authorization's token serves every login: {st['grants']}")
        harness.wait_until(lambda: "user=<alice@contoso.test>" in dlog.new(), 10, "Dovecot's login line")
        # the account JSON never carries a token
        self.assert_no_token_leak(json.dumps(self.state(self.px, ALICE)), "/api/accounts")
        self.assertEqual(self.state(self.px, ALICE)["state"], "authorized")

    def test_4_callback_with_unknown_state_is_refused(self):
        for q in ("code=1.AQbogus&state=not-a-state", "error=access_denied&state=not-a-state", ""):
            status, _, body = harness.http_get(f"{self.px.admin_url}{harness.CALLBACK_PATH}?{q}")
            self.assertTrue(400 <= status < 500, f"callback ?{q} -> {status} {body[:200]!r}")
        self.assertEqual(harness.mock_stats()["token_requests"], 0, "an unknown state must not redeem anything")

    def test_5_no_secrets_in_log(self):
        log = self.px.log()
        self.assertTrue(log)
        self.assert_no_token_leak(log, "the proxy log")
        self.assertNotIn(harness.ensure_delegated_clients()["web"]["client_secret"], log)
        self.assertNotIn(LOCAL[ALICE], log)
        self.assertNotIn(harness.admin_json(self.px.state_dir)["token"], log, "the admin token is logged")


# --------------------------------------------------------------------------------------------------------
class B_CodeFlowCLI(DelegatedCase):
    """`xoauth-proxy authorize` for an authorization_code account: with the proxy running (the CLI
    drives the running proxy's admin API), with the proxy stopped (the CLI serves the callback
    itself and stores the grant for the next start), and with a pasted final URL."""

    def setup_account(self, login: str, **proxy_opts) -> tuple[str, dict]:
        wd = self.new_workdir(self)
        prov = harness.delegated_provider(wd, "web")
        acct = harness.delegated_account(login, "authorization_code", prov["name"], LOCAL[login])
        return self.write(wd, [acct], [prov], kinds=("imap", "smtp"), **proxy_opts)

    def test_cli_with_proxy_running(self):
        cfg, idx = self.setup_account(SCANNER)
        px = self.proxy(cfg, 2)
        harness.mock_settings(auto_approve="login_hint")
        cli = self.cli(cfg, SCANNER, timeout=60)
        url = cli.authorize_url()
        self.check_authorize_url(url, px, SCANNER)  # the running proxy's callback
        self.land_on_callback(harness.follow_authorize(url))
        rc = cli.wait(60)
        self.assertEqual(rc, 0, cli.output)
        self.assertIn("is authorized", cli.output)
        # the running proxy has the grant at once: no restart, no new token request for the login
        self.assertEqual(self.state(px, SCANNER)["state"], "authorized")
        before = harness.mock_stats()["token_requests"]
        self.assert_imap_ok(px.ports[idx["imap"]], SCANNER, LOCAL[SCANNER])
        self.assert_smtp_ok(px.ports[idx["smtp"]], SCANNER, LOCAL[SCANNER])
        self.assertEqual(harness.mock_stats()["token_requests"], before)
        self.assert_no_token_leak(cli.output, "the authorize command's output")

    def test_cli_with_proxy_stopped_then_start(self):
        cfg, idx = self.setup_account(RECEIVER)
        harness.mock_settings(auto_approve="login_hint")
        cli = self.cli(cfg, RECEIVER, timeout=60)
        url = cli.authorize_url()
        q = harness.query_of(url)
        ru = urllib.parse.urlsplit(q.get("redirect_uri", ""))
        self.assertEqual((ru.scheme, ru.hostname, ru.path), ("http", "localhost", harness.CALLBACK_PATH), url)
        self.assertTrue(ru.port, f"the CLI's own callback listener port: {url}")
        self.check_authorize_url(url, None, RECEIVER)
        self.land_on_callback(harness.follow_authorize(url))
        self.assertEqual(cli.wait(60), 0, cli.output)
        self.assertIn("is authorized", cli.output)
        harness.mock_settings(auto_approve="")
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, CODE), 1, st["grants"])
        # the next start uses the stored grant: no new sign-in
        px = self.proxy(cfg, 2)
        self.assert_store(px, 1)
        self.assertEqual(self.wait_state(px, RECEIVER, "authorized")["state"], "authorized")
        self.assert_imap_ok(px.ports[idx["imap"]], RECEIVER, LOCAL[RECEIVER])
        self.assert_smtp_ok(px.ports[idx["smtp"]], RECEIVER, LOCAL[RECEIVER])
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, CODE), 1, st["grants"])
        self.assertEqual(st["authorize"]["requests"], 1, st["authorize"])

    def test_cli_pasted_final_url_with_public_base_url(self):
        """The browser runs on another machine: the redirect goes to public_base_url, which this
        host does not serve; the administrator pastes the address the browser ended on."""
        cfg, idx = self.setup_account(RECEIVER2, public_base_url=harness.REMOTE_BASE_URL)
        harness.mock_settings(auto_approve="login_hint")
        cli = self.cli(cfg, RECEIVER2, timeout=60)
        url = cli.authorize_url()
        self.check_authorize_url(url, None, RECEIVER2, redirect_base=harness.REMOTE_BASE_URL)
        final = harness.follow_authorize(url)
        self.assertTrue(final.startswith(harness.REMOTE_BASE_URL + harness.CALLBACK_PATH + "?"), final)
        cli.paste(final)
        self.assertEqual(cli.wait(60), 0, cli.output)
        self.assertIn("is authorized", cli.output)
        px = self.proxy(cfg, 2)
        self.assertEqual(self.state(px, RECEIVER2)["state"], "authorized")
        self.assert_imap_ok(px.ports[idx["imap"]], RECEIVER2, LOCAL[RECEIVER2])

    def test_cli_failures_exit_non_zero_with_reason(self):
        cfg, _ = self.setup_account(SCANNER)
        r = harness.run_cli("authorize", "--config", cfg, "nobody@contoso.test", "--timeout", "10", timeout=30)
        self.assertNotEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("nobody@contoso.test", r.stdout + r.stderr)
        # the user cancels at the identity platform: error=access_denied comes back to the callback
        cli = self.cli(cfg, SCANNER, timeout=60)
        url = cli.authorize_url()
        status, _, body = harness.http_get(url)  # the mock's sign-in form (auto_approve off)
        self.assertEqual(status, 200)
        ctx = re.search(rb'name="ctx" value="([^"]+)"', body).group(1).decode()
        tenant_path = f"/{tb()['tenant']}/oauth2/v2.0/authorize"
        status, headers, _ = harness.http_request(
            tb()["idp_url"] + tenant_path, "POST", urllib.parse.urlencode({"ctx": ctx, "action": "decline"}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"}, follow=False)
        self.assertEqual(status, 302)
        self.assertIn("error=access_denied", headers["location"])
        harness.http_get(headers["location"])  # the browser lands on the callback with the error
        rc = cli.wait(60)
        self.assertNotEqual(rc, 0, cli.output)
        self.assertNotIn("is authorized", cli.output)
        self.assertRegex(cli.output, r"(?i)access_denied|declin|cancel|65004", cli.output)
        # nobody completes the sign-in: --timeout ends the command
        t0 = time.monotonic()
        cli = self.cli(cfg, SCANNER, timeout=3)
        cli.authorize_url()
        rc = cli.wait(60)
        self.assertNotEqual(rc, 0, cli.output)
        self.assertLess(time.monotonic() - t0, 30, "--timeout 3 was not honoured")
        self.assertRegex(cli.output, r"(?i)tim(e|ed) ?out|expired|no answer|gave up", cli.output)


# --------------------------------------------------------------------------------------------------------
class C_DeviceCode(DelegatedCase):
    """device_code accounts (public client): the CLI with --device (proxy running and stopped), the
    admin API, approval and denial at the mock."""

    def setUp(self):
        super().setUp()
        harness.mock_settings(device_interval=1)

    def setup_account(self, login: str) -> tuple[str, dict]:
        wd = self.new_workdir(self)
        prov = harness.delegated_provider(wd, "public")
        self.assertNotIn("client_secret_file", prov)
        acct = harness.delegated_account(login, "device_code", prov["name"], LOCAL[login])
        return self.write(wd, [acct], [prov], kinds=("imap", "smtp"))

    def run_device_cli(self, cfg: str, login: str, approve: bool = True) -> harness.AuthorizeCLI:
        cli = self.cli(cfg, login, device=True, timeout=60)
        uri, code = cli.device_prompt()
        self.assertEqual(uri, f"{tb()['idp_url']}/devicelogin", cli.output)
        dev = [d for d in harness.mock_devices() if d["user_code"] == code.replace("-", "")]
        self.assertEqual(len(dev), 1, f"user code {code} unknown to the mock")
        self.assertEqual(dev[0]["status"], "pending")
        if approve:
            harness.mock_device_approve(login, code)
        else:
            harness.admin("device/deny", {"user_code": code})
        return cli

    def test_device_cli_with_proxy_running(self):
        cfg, idx = self.setup_account(ALICE)
        px = self.proxy(cfg, 2)
        cli = self.run_device_cli(cfg, ALICE)
        self.assertEqual(cli.wait(60), 0, cli.output)
        self.assertIn("is authorized", cli.output)
        self.assertEqual(self.state(px, ALICE)["state"], "authorized")
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, DEVICE, "successes"), 1, st["grants"])
        self.assertEqual(st.get("errors", {}).get(f"{DEVICE}:slow_down", 0), 0,
                         f"the poller went faster than the interval: {st['errors']}")
        self.assert_imap_ok(px.ports[idx["imap"]], ALICE, LOCAL[ALICE])
        self.assert_smtp_ok(px.ports[idx["smtp"]], ALICE, LOCAL[ALICE])
        self.assertEqual(harness.mock_stats()["token_requests"], st["token_requests"])

    def test_device_cli_with_proxy_stopped_then_start(self):
        cfg, idx = self.setup_account(SCANNER)
        cli = self.run_device_cli(cfg, SCANNER)
        self.assertEqual(cli.wait(60), 0, cli.output)
        self.assertIn("is authorized", cli.output)
        px = self.proxy(cfg, 2)
        self.assertEqual(self.state(px, SCANNER)["state"], "authorized")
        self.assert_imap_ok(px.ports[idx["imap"]], SCANNER, LOCAL[SCANNER])
        st = harness.mock_stats()
        self.assertEqual(st["devicecode_requests"], 1, "no second device sign-in after the restart")

    def test_device_via_api(self):
        cfg, idx = self.setup_account(RECEIVER)
        px = self.proxy(cfg, 2)
        out = self.start_api_authorization(px, RECEIVER, device=True)
        self.assertEqual(out.get("verification_uri"), f"{tb()['idp_url']}/devicelogin", out)
        self.assertTrue(out.get("user_code"), out)
        self.assertGreater(int(out.get("expires_in") or 0), 0, out)
        self.assertEqual(self.state(px, RECEIVER)["state"], "authorizing")
        harness.mock_device_approve(RECEIVER, out["user_code"])
        self.wait_state(px, RECEIVER, "authorized")
        self.assert_imap_ok(px.ports[idx["imap"]], RECEIVER, LOCAL[RECEIVER])

    def test_device_denied(self):
        cfg, _ = self.setup_account(RECEIVER2)
        cli = self.run_device_cli(cfg, RECEIVER2, approve=False)
        rc = cli.wait(60)
        self.assertNotEqual(rc, 0, cli.output)
        self.assertNotIn("is authorized", cli.output)
        self.assertRegex(cli.output, r"(?i)declin|denied|authorization_declined|65004", cli.output)


# --------------------------------------------------------------------------------------------------------
class D_PasswordFlow(DelegatedCase):
    """flow = "password" (ROPC, public client): the client's password is the user's Entra password."""

    def setUp(self):
        super().setUp()
        wd = self.new_workdir(self)
        prov = harness.delegated_provider(wd, "public")
        accts = [harness.delegated_account(ALICE, "password", prov["name"]),
                 harness.delegated_account(BOB, "password", prov["name"])]
        cfg, self.idx = self.write(wd, accts, [prov], kinds=("imap", "smtp", "pop3"))
        self.px = self.proxy(cfg, 3)

    def test_password_grant_then_reuse(self):
        imap = self.px.ports[self.idx["imap"]]
        self.assert_imap_ok(imap, ALICE, ENTRA[ALICE])
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, PASSWORD), 1, st["grants"])
        self.assertEqual(harness.grant_count(st, PASSWORD, "successes"), 1, st["grants"])
        # a second login with the same password: no new token request
        self.assert_imap_ok(imap, ALICE, ENTRA[ALICE])
        self.assert_smtp_ok(self.px.ports[self.idx["smtp"]], ALICE, ENTRA[ALICE])
        self.assertTrue(self.pop3_login(self.px.ports[self.idx["pop3"]], ALICE, ENTRA[ALICE]).startswith("+OK"))
        st = harness.mock_stats()
        self.assertEqual(st["token_requests"], 1, f"later logins must reuse the token: {st['grants']}")
        self.assertEqual(self.state(self.px, ALICE)["state"], "authorized")

    def test_wrong_password_is_auth_failure_and_keeps_the_grant(self):
        imap = self.px.ports[self.idx["imap"]]
        self.assert_imap_ok(imap, ALICE, ENTRA[ALICE])
        resp = self.imap_login(imap, ALICE, "not-" + ENTRA[ALICE])
        self.assertTrue(resp.startswith("NO [AUTHENTICATIONFAILED]"), resp)
        r = self.smtp_auth(self.px.ports[self.idx["smtp"]], ALICE, "wrong-again", send=False)
        self.assertEqual(r.code, 535, r)
        self.assertEqual(self.state(self.px, ALICE)["state"], "authorized", "a typo must not cost the grant")
        self.assert_imap_ok(imap, ALICE, ENTRA[ALICE])
        self.assertNotIn(ENTRA[ALICE], self.px.log())

    def test_mfa_user_is_contact_admin(self):
        resp = self.imap_login(self.px.ports[self.idx["imap"]], BOB, ENTRA[BOB])
        self.assert_imap_contact_admin(resp)
        self.assertGreaterEqual(harness.mock_stats()["errors"].get("password:invalid_grant", 0), 1)


# --------------------------------------------------------------------------------------------------------
class E_Refresh(DelegatedCase):
    """Access-token expiry while running, single-flight refresh under a login storm, rotation kept
    across restarts and crashes (SIGKILL in the middle of a refresh)."""

    def setup_proxy(self, login: str = ALICE, kinds=("imap", "smtp"), **proxy_opts):
        wd = self.new_workdir(self)
        prov = harness.delegated_provider(wd, "web")
        acct = harness.delegated_account(login, "authorization_code", prov["name"], LOCAL[login])
        cfg, idx = self.write(wd, [acct], [prov], kinds=kinds, **proxy_opts)
        return self.proxy(cfg, len(kinds)), idx

    def test_expiry_mid_run_silent_refresh(self):
        """The proxy keeps running while its access token expires; logins after that just work
        (whether the sweeper or the login refreshed), and no expired token reaches Dovecot."""
        px, idx = self.setup_proxy(ALICE)
        harness.mock_settings(token_lifetime=SHORT_LIFETIME)
        self.authorize_code_via_api(px, ALICE)
        harness.mock_settings(token_lifetime=3599)
        self.wait_expired(time.time())
        self.assert_imap_ok(px.ports[idx["imap"]], ALICE, LOCAL[ALICE])
        self.assert_smtp_ok(px.ports[idx["smtp"]], ALICE, LOCAL[ALICE])
        self.assert_imap_ok(px.ports[idx["imap"]], ALICE, LOCAL[ALICE])
        st = harness.mock_stats()  # counted since before the authorization
        self.assertEqual(harness.grant_count(st, CODE), 1, st["grants"])
        self.assertGreaterEqual(harness.grant_count(st, REFRESH, "successes"), 1, st["grants"])
        self.assertEqual(st["introspection"]["inactive"], 0, f"an expired token reached Dovecot: {st['introspection']}")
        acct = self.state(px, ALICE)
        self.assertEqual(acct["state"], "authorized", acct)
        self.assertTrue(acct.get("access_expires"), acct)

    def test_proactive_refresh_ahead_of_expiry(self):
        """An account in use gets a new access token before the old one expires, with no login
        waiting for it: the sweeper refreshes once less than refresh_ahead (capped at half the
        token's life) is left."""
        px, idx = self.setup_proxy(ALICE, kinds=("imap",), refresh_ahead=30)
        harness.mock_settings(token_lifetime=40)
        self.authorize_code_via_api(px, ALICE)
        imap = px.ports[idx["imap"]]
        self.assert_imap_ok(imap, ALICE, LOCAL[ALICE])  # the account is in use
        first = self.state(px, ALICE)["access_expires_unix"]
        harness.mock_reset("stats")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if harness.grant_count(harness.mock_stats(), REFRESH, "successes") >= 1:
                break
            time.sleep(0.5)
        harness.mock_settings(token_lifetime=3599)
        st = harness.mock_stats()
        self.assertGreaterEqual(harness.grant_count(st, REFRESH, "successes"), 1,
                                f"no refresh ahead of expiry: {st['grants']}")
        # It happened before the first token expired, and without a login.
        self.assertLess(time.time(), first, "the refresh came only after the token had expired")
        self.assertGreater(self.state(px, ALICE)["access_expires_unix"], first)
        before = harness.grant_count(harness.mock_stats(), REFRESH)
        self.assert_imap_ok(imap, ALICE, LOCAL[ALICE])
        self.assertEqual(harness.grant_count(harness.mock_stats(), REFRESH), before,
                         "the login waited for a refresh although a fresh token was ready")

    def test_token_expired_at_the_idp_early(self):
        """The identity platform ends a token before its expires_in (mock /_admin/expire): the proxy
        cannot know in advance; after the upstream refuses it, the next login refreshes."""
        px, idx = self.setup_proxy(ALICE)
        self.authorize_code_via_api(px, ALICE)
        imap = px.ports[idx["imap"]]
        self.assert_imap_ok(imap, ALICE, LOCAL[ALICE])
        harness.mock_expire(user=ALICE)
        harness.mock_reset("stats")
        replies = [self.imap_login(imap, ALICE, LOCAL[ALICE]) for _ in range(2)]
        self.assertTrue(replies[-1].startswith("OK"), f"no recovery after an early expiry: {replies}")
        st = harness.mock_stats()
        self.assertGreaterEqual(harness.grant_count(st, REFRESH, "successes"), 1, st["grants"])
        self.assertEqual(harness.grant_count(st, CODE), 0, st["grants"])
        if not replies[0].startswith("OK"):
            print(f"\n[first login after the early expiry: {replies[0]!r}]", file=sys.stderr)

    def test_100_concurrent_logins_one_refresh(self):
        N = 100
        px, idx = self.setup_proxy(SCANNER, kinds=("imap",))
        self.authorize_then_expire(px, SCANNER)
        harness.mock_reset("stats")
        harness.mock_settings(latency_ms=1000)  # the refresh stays in flight while the logins pile up
        px.start()
        port = px.ports[idx["imap"]]
        barrier = threading.Barrier(N, timeout=60)
        results: list = [None] * N

        def worker(i: int):
            try:
                with harness.LineClient(port, timeout=120) as c:
                    barrier.wait()
                    resp, _ = c.cmd("a1", f'LOGIN "{SCANNER}" "{LOCAL[SCANNER]}"')
                    results[i] = resp.split(" ")[0] if resp.startswith("OK") else resp
                    if resp.startswith("OK"):
                        c.cmd("a2", "LOGOUT")
            except Exception as e:  # noqa: BLE001 - recorded and asserted below
                results[i] = repr(e)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(N)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 180
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self.assertFalse([t for t in threads if t.is_alive()], "logins did not finish in time")
        bad = [r for r in results if r != "OK"]
        self.assertFalse(bad, f"{len(bad)} of {N} logins failed: {bad[:5]}")
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, REFRESH), 1, f"expected exactly one refresh: {st['grants']}")
        self.assertEqual(st["token_requests"], 1, st["grants"])
        self.assertEqual(st["introspection"]["active"], N, st["introspection"])

    def test_restart_and_crash_keep_rotation(self):
        """Strict single-use refresh tokens (grace 0): every rotated refresh token must be in the
        store before its access token is used, so restarts (SIGTERM and SIGKILL) never need a new
        sign-in."""
        harness.mock_settings(refresh_grace_seconds=0)
        px, idx = self.setup_proxy(RECEIVER, kinds=("imap",))
        harness.mock_settings(token_lifetime=SHORT_LIFETIME)  # every access token expires quickly
        self.authorize_code_via_api(px, RECEIVER)
        harness.mock_settings(refresh_grace_seconds=0, token_lifetime=SHORT_LIFETIME)
        harness.mock_reset("stats")
        refreshes = 0
        for cycle, how in enumerate(("term", "kill", "kill", "term")):
            self.wait_expired(time.time())  # the current access token is expired: a refresh is due
            self.assert_imap_ok(px.ports[0], RECEIVER, LOCAL[RECEIVER])
            st = harness.mock_stats()
            self.assertGreater(harness.grant_count(st, REFRESH, "successes"), refreshes,
                               f"cycle {cycle}: the login did not refresh: {st['grants']}")
            refreshes = harness.grant_count(st, REFRESH, "successes")
            if how == "kill":
                px.kill()
                px.start()
            else:
                px.restart()
            self.assertIn(self.state(px, RECEIVER)["state"], ("authorized",), f"after {how} restart")
        self.wait_expired(time.time())
        self.assert_imap_ok(px.ports[0], RECEIVER, LOCAL[RECEIVER])
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, CODE), 0, st["grants"])
        self.assertEqual(st["refresh_reuse_rejected"], 0, f"a redeemed refresh token was used again: {st}")
        self.assertFalse({k: v for k, v in st["errors"].items() if k.startswith("refresh_token:")}, st["errors"])

    def crash_during_refresh(self, login: str, arm, expect_reuse: bool):
        """The stored access token is expired; arm() makes the next refresh slow; a login starts a
        refresh, the proxy is SIGKILLed while the identity platform holds the request, then started
        again: a login must work without a new sign-in (the store still holds a usable grant)."""
        px, idx = self.setup_proxy(login, kinds=("imap",))
        self.authorize_then_expire(px, login)
        harness.mock_reset("stats")
        arm()
        px.start()
        port = px.ports[0]
        t = threading.Thread(target=lambda: self._login_ignoring_errors(port, login), daemon=True)
        t.start()
        harness.wait_until(lambda: harness.mock_stats()["current_token_requests"] >= 1, 20,
                           "the refresh request to reach the identity platform")
        self.assertEqual(harness.grant_count(harness.mock_stats(), REFRESH), 1)
        px.kill()
        # let the identity platform finish the orphaned request (it redeems or fails it)
        harness.wait_until(lambda: harness.mock_stats()["current_token_requests"] == 0, 20,
                           "the orphaned refresh to finish at the identity platform")
        t.join(30)
        harness.mock_reset("faults")
        harness.mock_settings(latency_ms=0)
        px.start()
        self.assertIn(self.state(px, login)["state"], ("authorized",))
        self.assert_imap_ok(px.ports[0], login, LOCAL[login])
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, CODE), 0, st["grants"])
        self.assertGreaterEqual(harness.grant_count(st, REFRESH, "successes"), 1, st["grants"])
        if expect_reuse:
            self.assertGreaterEqual(st["refresh_reuse_within_grace"], 1,
                                    "the restarted proxy should have used the refresh token the crash "
                                    f"left in the store (already redeemed): {st}")
        else:
            self.assertEqual(st["refresh_reuse_rejected"], 0, st)
        return st

    def _login_ignoring_errors(self, port: int, login: str):
        try:
            with harness.LineClient(port, timeout=30) as c:
                c.cmd("k1", f'LOGIN "{login}" "{LOCAL[login]}"')
        except Exception:  # noqa: BLE001 - the proxy is killed under this login
            pass

    def test_sigkill_before_the_idp_answers(self):
        """The refresh request is held and then fails (an injected fault consumes nothing): the old
        refresh token in the store is still the valid one, even with strict single use."""
        self.crash_during_refresh(
            ALICE, lambda: (harness.mock_settings(refresh_grace_seconds=0),
                            harness.mock_fail(endpoint="token", grant_type="refresh_token", status=503,
                                              delay_ms=4000, count=1)), expect_reuse=False)

    def test_sigkill_after_the_idp_rotated(self):
        """The identity platform redeems the refresh token and answers a dead process: the new
        refresh token is lost. Like Entra, the mock keeps a redeemed refresh token usable for a while
        (refresh_grace_seconds), so the stored one still works after the restart."""
        self.crash_during_refresh(
            SCANNER, lambda: harness.mock_settings(refresh_grace_seconds=120, latency_ms=3000), expect_reuse=True)


# --------------------------------------------------------------------------------------------------------
class F_TransientFailures(DelegatedCase):
    """The identity platform fails the refresh with 500 or 429: tokens kept, clients told to retry,
    the account stays authorized, and logins work again once it recovers."""

    def setup_expired(self, login: str, fault: dict):
        wd = self.new_workdir(self)
        prov = harness.delegated_provider(wd, "web")
        acct = harness.delegated_account(login, "authorization_code", prov["name"], LOCAL[login])
        cfg, idx = self.write(wd, [acct], [prov], kinds=("imap", "smtp", "pop3"))
        px = self.proxy(cfg, 3)
        self.authorize_then_expire(px, login)
        harness.mock_reset("stats")
        harness.mock_fail(endpoint="token", grant_type="refresh_token", count=1000, **fault)
        px.start()
        return px, idx

    def check(self, login: str, fault: dict):
        px, idx = self.setup_expired(login, fault)
        self.assert_imap_temporary(self.imap_login(px.ports[idx["imap"]], login, LOCAL[login]))
        self.assert_smtp_temporary(self.smtp_auth(px.ports[idx["smtp"]], login, LOCAL[login]))
        self.assert_pop3_temporary(self.pop3_login(px.ports[idx["pop3"]], login, LOCAL[login]))
        st = harness.mock_stats()
        self.assertGreaterEqual(st["faults_injected"], 1, st)
        acct = self.state(px, login)
        self.assertEqual(acct["state"], "authorized", f"a transient failure must keep the grant: {acct}")
        self.assertTrue(acct.get("last_error"), f"last_error should say what failed: {acct}")
        self.assertTrue(acct.get("stored"), acct)
        harness.mock_clear_faults()
        t0 = time.monotonic()
        resp = ""
        while time.monotonic() - t0 < 30:
            resp = self.imap_login(px.ports[idx["imap"]], login, LOCAL[login])
            if resp.startswith("OK"):
                break
            self.assert_imap_temporary(resp)
            time.sleep(0.5)
        self.assertTrue(resp.startswith("OK"), f"no recovery within 30 s: {resp}")
        print(f"\n[login ok {time.monotonic() - t0:.1f}s after the identity platform recovered]", file=sys.stderr)
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, CODE), 0, f"no new sign-in needed: {st['grants']}")
        self.assertEqual(self.state(px, login)["state"], "authorized")

    def test_500(self):
        self.check(ALICE, {"status": 500})

    def test_429_retry_after(self):
        self.check(SCANNER, {"status": 429, "retry_after": 2})

    def test_connection_dropped(self):
        self.check(RECEIVER, {"drop": True})


# --------------------------------------------------------------------------------------------------------
class G_Revoked(DelegatedCase):
    """The grant is revoked at the identity platform: the account becomes needs_authorization, each
    protocol answers 'contact your administrator', and a new authorization brings it back."""

    def setUp(self):
        super().setUp()
        wd = self.new_workdir(self)
        prov = harness.delegated_provider(wd, "web")
        acct = harness.delegated_account(RECEIVER, "authorization_code", prov["name"], LOCAL[RECEIVER])
        cfg, self.idx = self.write(wd, [acct], [prov], kinds=("imap", "smtp", "pop3"))
        self.px = self.proxy(cfg, 3)

    def test_revoked_refresh_token(self):
        px, idx = self.px, self.idx
        self.authorize_then_expire(px, RECEIVER)
        out = harness.mock_revoke(RECEIVER)
        self.assertGreaterEqual(out["refresh_revoked"], 1, out)
        harness.mock_reset("stats")
        px.start()
        self.assert_imap_contact_admin(self.imap_login(px.ports[idx["imap"]], RECEIVER, LOCAL[RECEIVER]))
        acct = self.state(px, RECEIVER)
        self.assertEqual(acct["state"], "needs_authorization", acct)
        self.assertRegex(acct.get("last_error") or "", r"50173|invalid_grant", acct)
        self.assert_smtp_contact_admin(self.smtp_auth(px.ports[idx["smtp"]], RECEIVER, LOCAL[RECEIVER]))
        self.assert_pop3_contact_admin(self.pop3_login(px.ports[idx["pop3"]], RECEIVER, LOCAL[RECEIVER]))
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, REFRESH), 1,
                         f"once the grant is refused, logins must not keep asking the IdP: {st['grants']}")
        self.assertNotIn(LOCAL[RECEIVER], px.log())
        # a new authorization brings the account back without a restart
        self.authorize_code_via_api(px, RECEIVER)
        self.assert_imap_ok(px.ports[idx["imap"]], RECEIVER, LOCAL[RECEIVER])
        self.assert_smtp_ok(px.ports[idx["smtp"]], RECEIVER, LOCAL[RECEIVER])

    def test_revoked_while_access_token_valid(self):
        """Revocation also kills the access token the proxy holds: the upstream refuses it, the
        refresh is refused, and the account ends in needs_authorization within a few logins."""
        px, idx = self.px, self.idx
        self.authorize_code_via_api(px, RECEIVER)
        self.assert_imap_ok(px.ports[idx["imap"]], RECEIVER, LOCAL[RECEIVER])
        harness.mock_revoke(RECEIVER)
        replies = []
        for _ in range(3):
            replies.append(self.imap_login(px.ports[idx["imap"]], RECEIVER, LOCAL[RECEIVER]))
            if replies[-1].startswith("NO [CONTACTADMIN]"):
                break
        self.assertFalse([r for r in replies if r.startswith("OK")], replies)
        self.assert_imap_contact_admin(replies[-1])
        self.assertEqual(self.state(px, RECEIVER)["state"], "needs_authorization")


# --------------------------------------------------------------------------------------------------------
class I_Certificate(DelegatedCase):
    """A certificate credential instead of a secret (RS256 client assertion with x5t#S256), for
    app-only access and for redeeming an authorization code; a certificate the app does not know is
    a configuration fault (contact admin), never a retry loop."""

    CERT_CLIENT_ID = "5b0c2f6e-7d1a-4e8b-9c3f-2a1d0e4b6c8d"

    @staticmethod
    def make_cert(workdir: str, name: str) -> tuple[str, str]:
        key, cert = os.path.join(workdir, f"{name}.key"), os.path.join(workdir, f"{name}.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", f"/CN=xoauth-proxy test {name}"],
                       check=True, capture_output=True, timeout=60)
        os.chmod(key, 0o600)
        return cert, key

    def register(self, cert_pem: str):
        harness.ensure_delegated_clients()
        with open(cert_pem, encoding="ascii") as f:
            pem = f.read()
        harness.mock_register_client(
            client_id=self.CERT_CLIENT_ID, client_secret="", name="xoauth-proxy certificate app",
            certificates=[pem], public_client=False,
            redirect_uris=list(harness.CALLBACK_URIS), roles=["IMAP.AccessAsApp", "POP.AccessAsApp", "SMTP.SendAsApp"],
            delegated_permissions=list(harness.EXO_DELEGATED_SCOPES))

    def provider(self, cert: str, key: str) -> dict:
        tb = harness.testbed_info()
        return {"name": "cert", "tenant": tb["tenant"], "client_id": self.CERT_CLIENT_ID,
                "authority": tb["authority"], "ca_file": tb["ca_file"], "certificate_file": cert,
                "private_key_file": key}

    def test_app_only_and_code_flow_with_a_certificate(self):
        wd = self.new_workdir(self)
        cert, key = self.make_cert(wd, "app")
        self.register(cert)
        accounts = [harness.account(SCANNER, LOCAL[SCANNER], "cert", flow="client_credentials"),
                    harness.delegated_account(ALICE, "authorization_code", "cert", LOCAL[ALICE])]
        cfg, idx = self.write(wd, accounts, [self.provider(cert, key)], kinds=("imap",))
        px = self.proxy(cfg, 1)
        harness.mock_reset("stats")
        self.assert_imap_ok(px.ports[idx["imap"]], SCANNER, LOCAL[SCANNER])
        self.authorize_code_via_api(px, ALICE)
        self.assert_imap_ok(px.ports[idx["imap"]], ALICE, LOCAL[ALICE])
        st = harness.mock_stats()
        self.assertEqual(harness.grant_count(st, "client_credentials", "successes"), 1, st["grants"])
        self.assertEqual(harness.grant_count(st, CODE, "successes"), 1, st["grants"])
        self.assertNotIn("BEGIN", px.log(), "key or certificate material in the log")

    def test_unknown_certificate_is_a_configuration_fault(self):
        wd = self.new_workdir(self)
        registered, _ = self.make_cert(wd, "registered")
        cert, key = self.make_cert(wd, "other")
        self.register(registered)
        accounts = [harness.account(SCANNER, LOCAL[SCANNER], "cert", flow="client_credentials")]
        cfg, idx = self.write(wd, accounts, [self.provider(cert, key)], kinds=("imap",))
        px = self.proxy(cfg, 1)
        resp = self.imap_login(px.ports[idx["imap"]], SCANNER, LOCAL[SCANNER])
        self.assertIn("CONTACTADMIN", resp)
        self.assertIn("700027", px.log())  # the AADSTS code an admin can look up

    def test_check_rejects_a_key_that_does_not_match(self):
        wd = self.new_workdir(self)
        cert, _ = self.make_cert(wd, "a")
        _, key = self.make_cert(wd, "b")
        accounts = [harness.account(SCANNER, LOCAL[SCANNER], "cert", flow="client_credentials")]
        cfg, _ = self.write(wd, accounts, [self.provider(cert, key)], kinds=("imap",))
        r = subprocess.run([harness.proxy_bin(), "check", "--config", cfg], capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("provider cert:", r.stdout)
        self.assertNotIn("BEGIN", r.stdout + r.stderr)


# --------------------------------------------------------------------------------------------------------
class J_SecretsAtTrace(DelegatedCase):
    """Issue 8: every flow at log_level = "trace" (wire trace included), with IMAP, SMTP and POP3
    logins, an authorization through the callback and one through a device code, then a wrong
    password: no password, token, refresh token, code, client secret or admin token of the test
    appears in the log, /metrics, /readyz, the status page or the account API."""

    def test_no_secret_anywhere_at_trace_level(self):
        wd = self.new_workdir(self)
        web = harness.delegated_provider(wd, "web", name="web")
        pub = harness.delegated_provider(wd, "public", name="pub")
        app = harness.provider(wd, name="app")
        accounts = [
            harness.account(SCANNER, LOCAL[SCANNER], "app", flow="client_credentials"),
            harness.delegated_account(ALICE, "authorization_code", "web", LOCAL[ALICE]),
            harness.delegated_account(RECEIVER, "device_code", "pub", LOCAL[RECEIVER]),
            harness.delegated_account(RECEIVER2, "password", "pub"),
        ]
        cfg, idx = self.write(wd, accounts, [app, web, pub], log_level="trace")
        px = self.proxy(cfg, 3)
        ports = {k: px.ports[i] for k, i in idx.items()}
        self.authorize_code_via_api(px, ALICE)
        out = self.start_api_authorization(px, RECEIVER, device=True)
        harness.mock_device_approve(RECEIVER, out["user_code"])
        self.wait_state(px, RECEIVER, "authorized")
        logins = {SCANNER: LOCAL[SCANNER], ALICE: LOCAL[ALICE], RECEIVER: LOCAL[RECEIVER],
                  RECEIVER2: ENTRA[RECEIVER2]}
        for user, pw in logins.items():
            self.assert_imap_ok(ports["imap"], user, pw)
            self.assert_smtp_ok(ports["smtp"], user, pw)
            self.assertTrue(self.pop3_login(ports["pop3"], user, pw).startswith("+OK"), user)
        self.assertIn("AUTHENTICATIONFAILED", self.imap_login(ports["imap"], ALICE, "Wrong-" + LOCAL[ALICE]))

        secrets = [pw for pw in logins.values()] + ["Wrong-" + LOCAL[ALICE],
                   harness.testbed_info()["client_secret"],
                   harness.ensure_delegated_clients()["web"]["client_secret"],
                   harness.admin_json(px.state_dir)["token"]]
        _, _, page = harness.http_get(px.admin_url + "/", headers={"Host": px.admin_url.split("//")[1]})
        surfaces = {
            "log": px.log(),
            "/metrics": harness.http_get(px.admin_url + "/metrics")[2].decode(errors="replace"),
            "/readyz": harness.http_get(px.admin_url + "/readyz")[2].decode(errors="replace"),
            "/": page.decode(errors="replace"),
            "/api/accounts": json.dumps(self.accounts(px)),
        }
        self.assertIn("<redacted", surfaces["log"], "the wire trace did not run (log_level trace)")
        for where, text in surfaces.items():
            self.assertTrue(text, where)
            self.assert_no_token_leak(text, where)
            for s in secrets:
                self.assertNotIn(s, text, f"a secret of the test appears in {where}")
            # base64 of the XOAUTH2 response or of an AUTH PLAIN blob would hide the secrets
            self.assertNotRegex(text, r"dXNlcj1[A-Za-z0-9+/=]{40,}", f"an XOAUTH2 response in {where}")
            self.assertNotRegex(text, r"AHNjYW5uZXJAY29udG9zby50ZXN0A[A-Za-z0-9+/=]+", f"AUTH PLAIN in {where}")
        self.assert_store(px)


# --------------------------------------------------------------------------------------------------------
class H_TokenStore(DelegatedCase):
    """The encrypted token store: key file in hex, no key file (password-derived keys: "locked" until
    the account's first login after a start), and a wrong key (store_error, entry kept)."""

    def setup(self, login: str, key: str | None):
        wd = self.new_workdir(self)
        prov = harness.delegated_provider(wd, "web")
        acct = harness.delegated_account(login, "authorization_code", prov["name"], LOCAL[login])
        cfg, idx = self.write(wd, [acct], [prov], kinds=("imap",), key=key)
        return self.proxy(cfg, 1), cfg, wd

    def test_hex_key_file_restart(self):
        px, _, _ = self.setup(ALICE, "hex")
        self.authorize_code_via_api(px, ALICE)
        self.assert_store(px, 1)
        px.restart()
        self.assertEqual(self.state(px, ALICE)["state"], "authorized")
        self.assert_imap_ok(px.ports[0], ALICE, LOCAL[ALICE])
        self.assertEqual(harness.grant_count(harness.mock_stats(), CODE), 1)

    def test_password_keyed_store(self):
        px, _, _ = self.setup(SCANNER, None)
        acct = self.authorize_code_via_api(px, SCANNER)
        # no key yet: the grant is kept in memory until the account's password is seen
        self.assertFalse(acct.get("stored"), acct)
        self.assert_imap_ok(px.ports[0], SCANNER, LOCAL[SCANNER])
        self.assertTrue(self.state(px, SCANNER).get("stored"), "stored at the first login")
        self.assert_store(px, 1)
        px.restart()
        self.assertEqual(self.state(px, SCANNER)["state"], "locked")
        resp = self.imap_login(px.ports[0], SCANNER, "wrong-local-password")
        self.assertTrue(resp.startswith("NO [AUTHENTICATIONFAILED]"), resp)
        self.assertEqual(self.state(px, SCANNER)["state"], "locked")
        self.assert_imap_ok(px.ports[0], SCANNER, LOCAL[SCANNER])
        self.assertEqual(self.state(px, SCANNER)["state"], "authorized")
        self.assertEqual(harness.grant_count(harness.mock_stats(), CODE), 1, "no re-authorization after the restart")

    def test_cli_with_proxy_stopped_password_keyed(self):
        """No token_key_file and the proxy stopped: the CLI needs the account's local password to
        encrypt the grant (here from $XOAUTH_ACCOUNT_PASSWORD); the next start has it locked until
        the account's first login."""
        px, cfg, _ = self.setup(RECEIVER, None)
        px.stop()
        harness.mock_settings(auto_approve="login_hint")
        cli = self.cli(cfg, RECEIVER, timeout=60, env={"XOAUTH_ACCOUNT_PASSWORD": LOCAL[RECEIVER]})
        self.land_on_callback(harness.follow_authorize(cli.authorize_url()))
        self.assertEqual(cli.wait(60), 0, cli.output)
        self.assertIn("is authorized", cli.output)
        px.start()
        self.assert_store(px, 1)
        self.assertEqual(self.state(px, RECEIVER)["state"], "locked")
        self.assert_imap_ok(px.ports[0], RECEIVER, LOCAL[RECEIVER])
        self.assertEqual(self.state(px, RECEIVER)["state"], "authorized")
        self.assertEqual(harness.grant_count(harness.mock_stats(), CODE), 1)

    def test_wrong_key_is_store_error_and_entry_kept(self):
        px, cfg, wd = self.setup(RECEIVER2, "raw")
        self.authorize_code_via_api(px, RECEIVER2)
        [entry] = self.assert_store(px, 1)
        px.stop()
        with open(entry, "rb") as f:
            before = f.read()
        harness.token_key_file(wd, "raw")  # a different key in the same file
        px.start()
        acct = self.state(px, RECEIVER2)
        self.assertEqual(acct["state"], "store_error", acct)
        self.assertTrue(acct.get("last_error"), acct)
        self.assert_imap_contact_admin(self.imap_login(px.ports[0], RECEIVER2, LOCAL[RECEIVER2]))
        with open(entry, "rb") as f:
            self.assertEqual(f.read(), before, "an unreadable entry must never be replaced silently")


def main() -> int:
    return harness.run_tests("test_delegated")


if __name__ == "__main__":
    sys.exit(main())
