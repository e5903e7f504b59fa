#!/usr/bin/env python3
"""Operating the proxy (issue 6): SIGHUP reload while sessions are open, a broken config on
reload, SIGTERM during an SMTP DATA transfer, and /healthz, /readyz, /metrics scraped during
real sessions (no secret in any of them).

    XOAUTH_PROXY_BIN=build/xoauth-proxy python3 tests/integration/test_operations.py
"""
from __future__ import annotations

import base64
import os
import re
import signal
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SCANNER = "scanner@contoso.test"
ALICE = "alice@contoso.test"
RECEIVER = "receiver@contoso.test"
OLD_PW, NEW_PW, ALICE_PW = "scanner-old-Pw1", "scanner-new-Pw2", "alice-ops-Pw3"
TIMEOUT = 30.0


def q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def plain_ir(user: str, pw: str) -> str:
    return base64.b64encode(f"\0{user}\0{pw}".encode()).decode()


class Ops(unittest.TestCase):
    def setUp(self):
        self.wd = tempfile.mkdtemp(prefix="xoauth-ops-")
        self.proxy: harness.Proxy | None = None

    def tearDown(self):
        if self.proxy:
            self.proxy.stop()

    def write(self, accounts: list[dict], listeners: list[dict] | None = None, **proxy) -> str:
        prov = harness.provider(self.wd)
        listeners = listeners or [harness.listener(tls="none")]
        return harness.write_config(self.wd, [prov], listeners, accounts, proxy=proxy or None)

    def start(self, cfg: str, n: int = 1) -> harness.Proxy:
        self.proxy = harness.Proxy(cfg, n, self.wd, wait_admin=True).start()
        return self.proxy

    def imap_login(self, port: int, user: str, pw: str) -> str:
        with harness.LineClient(port, timeout=TIMEOUT) as c:
            resp, _ = c.cmd("a1", f"LOGIN {q(user)} {q(pw)}")
            if resp.startswith("OK"):
                c.cmd("a2", "LOGOUT")
            return resp

    def wait_log(self, text: str, count: int = 1):
        harness.wait_until(lambda: self.proxy.log().count(text) >= count, TIMEOUT, f"log line {text!r}")

    # ----------------------------------------------------------------------------------------------
    def test_sighup_changes_the_mapping_while_an_idle_session_stays(self):
        cfg = self.write([harness.account(SCANNER, OLD_PW)])
        px = self.start(cfg)
        port = px.ports[0]
        idle = harness.LineClient(port, timeout=TIMEOUT)
        self.addCleanup(idle.close)
        resp, _ = idle.cmd("i1", f"LOGIN {q(SCANNER)} {q(OLD_PW)}")
        self.assertTrue(resp.startswith("OK"), resp)
        idle.cmd("i2", "SELECT INBOX")
        idle.send("i3 IDLE")
        self.assertTrue(idle.readline().startswith("+"), "no IDLE continuation")

        # New mapping: scanner's password changes, alice appears.
        self.write([harness.account(SCANNER, NEW_PW), harness.account(ALICE, ALICE_PW, mailbox=ALICE)])
        os.kill(px.pid, signal.SIGHUP)
        self.wait_log("reload done")

        idle.send("DONE")
        resp, _ = idle.read_until_tag("i3")
        self.assertTrue(resp.startswith("OK"), f"the IDLE session did not survive the reload: {resp}")
        resp, _ = idle.cmd("i4", "NOOP")
        self.assertTrue(resp.startswith("OK"), resp)
        self.assertIn("AUTHENTICATIONFAILED", self.imap_login(port, SCANNER, OLD_PW))
        self.assertTrue(self.imap_login(port, SCANNER, NEW_PW).startswith("OK"))
        self.assertTrue(self.imap_login(port, ALICE, ALICE_PW).startswith("OK"))
        self.assertTrue(px.alive())

    def test_sighup_with_a_broken_config_keeps_the_old_one(self):
        cfg = self.write([harness.account(SCANNER, OLD_PW)])
        px = self.start(cfg)
        with open(cfg, "a") as f:
            f.write("\n[[account]]\nlogin = \"broken\"\nprovider = \"nowhere\"\n")
        os.kill(px.pid, signal.SIGHUP)
        self.wait_log("reload refused")
        log = px.log()
        self.assertIn("'broken' is not a login", log)  # the errors are logged with file:line
        self.assertRegex(log, r"xoauth-proxy\.toml:\d+:\d+: account\[2\]")
        self.assertTrue(self.imap_login(px.ports[0], SCANNER, OLD_PW).startswith("OK"))
        self.assertTrue(px.alive())

    def test_sighup_adds_and_closes_listeners(self):
        imap_only = [harness.listener(tls="none")]
        cfg = self.write([harness.account(SCANNER, OLD_PW)], imap_only)
        px = self.start(cfg)
        first = px.ports[0]
        pop_port = harness.free_port()
        self.write([harness.account(SCANNER, OLD_PW)],
                   [harness.listener(tls="none", protocol="pop3", upstream="pop3s",
                                     listen=f"127.0.0.1:{pop_port}")])
        os.kill(px.pid, signal.SIGHUP)
        self.wait_log("reload done")
        with harness.LineClient(pop_port, timeout=TIMEOUT) as c:
            self.assertTrue(c.greeting.startswith("+OK"))
            c.send(f"USER {SCANNER}")
            self.assertTrue(c.readline().startswith("+OK"))
            c.send(f"PASS {OLD_PW}")
            self.assertTrue(c.readline().startswith("+OK"), "POP3 login on the new listener")
            c.send("QUIT")
        with self.assertRaises(OSError):
            harness.LineClient(first, timeout=5).readline()

    def test_sigterm_during_smtp_data_lets_the_message_finish(self):
        cfg = self.write([harness.account(SCANNER, OLD_PW)], [harness.smtp_listener()], drain_timeout=30)
        px = self.start(cfg)
        c = harness.SmtpClient(px.ports[0], timeout=TIMEOUT)
        self.addCleanup(c.close)
        self.assertEqual(c.greeting.code, 220)
        self.assertEqual(c.ehlo().code, 250)
        self.assertEqual(c.cmd(f"AUTH PLAIN {plain_ir(SCANNER, OLD_PW)}").code, 235)
        self.assertEqual(c.cmd(f"MAIL FROM:<{SCANNER}>").code, 250)
        self.assertEqual(c.cmd(f"RCPT TO:<{RECEIVER}>").code, 250)
        self.assertEqual(c.cmd("DATA").code, 354)
        c.send_raw(b"Subject: sent across a SIGTERM\r\n\r\nfirst half\r\n")
        os.kill(px.pid, signal.SIGTERM)
        self.wait_log("draining")
        time.sleep(0.3)  # the rest arrives while the proxy is draining
        c.send_raw(b"second half\r\n.\r\n")
        self.assertEqual(c.reply().code, 250, "the message did not complete during the drain")
        self.assertEqual(c.cmd("QUIT").code, 221)
        c.close()
        self.assertEqual(px.proc.wait(TIMEOUT), 0, "exit code after SIGTERM")

    def test_health_ready_and_metrics_during_sessions(self):
        cfg = self.write([harness.account(SCANNER, OLD_PW)])
        px = self.start(cfg)
        status, _, body = harness.http_get(px.admin_url + "/healthz")
        self.assertEqual((status, body), (200, b"ok\n"))
        status, _, body = harness.http_get(px.admin_url + "/readyz")
        self.assertEqual(status, 200, body)
        held = harness.LineClient(px.ports[0], timeout=TIMEOUT)
        self.addCleanup(held.close)
        resp, _ = held.cmd("h1", f"LOGIN {q(SCANNER)} {q(OLD_PW)}")
        self.assertTrue(resp.startswith("OK"), resp)
        self.assertIn("AUTHENTICATIONFAILED", self.imap_login(px.ports[0], SCANNER, "wrong"))
        # The refused session has ended once the gauge is back to the one held session.
        harness.wait_until(lambda: 'xoauth_sessions_active{protocol="imap"} 1\n' in
                           harness.http_get(px.admin_url + "/metrics")[2].decode(), TIMEOUT,
                           "one active session")
        status, headers, body = harness.http_get(px.admin_url + "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers.get("content-type", "").startswith("text/plain; version=0.0.4"), headers)
        text = body.decode()

        def value(pattern: str) -> float:
            m = re.search(r"^" + pattern + r" ([0-9.e+]+)$", text, re.M)
            self.assertIsNotNone(m, f"{pattern} missing in:\n{text}")
            return float(m.group(1))

        self.assertEqual(value(r'xoauth_sessions_active\{protocol="imap"\}'), 1)
        self.assertEqual(value(r'xoauth_logins_total\{protocol="imap",result="ok",reason="ok"\}'), 1)
        self.assertEqual(value(r'xoauth_logins_total\{protocol="imap",result="bad_credentials",'
                               r'reason="wrong_password"\}'), 1)
        self.assertGreaterEqual(value(r'xoauth_token_requests_total\{grant="client_credentials",outcome="ok"\}'), 1)
        self.assertGreaterEqual(value(r'xoauth_upstream_connect_seconds_count\{protocol="imap"\}'), 1)
        held.cmd("h2", "LOGOUT")
        held.close()
        harness.wait_until(lambda: 'xoauth_sessions_active{protocol="imap"} 0' in
                           harness.http_get(px.admin_url + "/metrics")[2].decode(), TIMEOUT, "session gauge back to 0")
        text = harness.http_get(px.admin_url + "/metrics")[2].decode()
        self.assertRegex(text, r'xoauth_relayed_bytes_total\{protocol="imap",direction="upstream_to_client"\} [1-9]')
        # No secret in any response.
        secret = harness.testbed_info()["client_secret"]
        for path in ("/healthz", "/readyz", "/metrics", "/"):
            body = harness.http_get(px.admin_url + path)[2].decode(errors="replace")
            for s in (secret, OLD_PW, "eyJ"):
                self.assertNotIn(s, body, f"{path} shows a secret")


if __name__ == "__main__":
    harness.testbed_info()
    unittest.main(verbosity=2)
