#!/usr/bin/env python3
"""Password-guessing lockout (issue 8) against the private Dovecot/Postfix + mock IdP test bed.

    XOAUTH_PROXY_BIN=build/xoauth-proxy python3 tests/integration/test_lockout.py [-v] [-k PATTERN]

The proxy runs with lockout_failures = 3, lockout_window = 60, lockout_duration = 5. Clients bind
their sockets to different loopback addresses (Linux routes all of 127/8 to lo) to be different
source addresses; each test uses its own addresses, so the tests do not disturb each other.
Every attempt is a fresh connection. Optional: XOAUTH_TESTBED_DIR, XOAUTH_KEEP_WORKDIRS=1.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SCANNER = "scanner@contoso.test"
PASSWORD = "scanner-Pass-1"
WRONG = ["wrong-Guess-1", "wrong-Guess-2", "wrong-Guess-3", "wrong-Guess-4"]
FAILURES, WINDOW, DURATION = 3, 60, 5
IMAP_FAILED = "NO [AUTHENTICATIONFAILED] Authentication failed"
POP3_FAILED = "-ERR [AUTH] Authentication failed"
KEEP = os.environ.get("XOAUTH_KEEP_WORKDIRS") == "1"
TIMEOUT = 30.0


class Client:
    """A raw line client whose socket is bound to `source` (one login attempt per connection)."""

    def __init__(self, port: int, source: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0))
        self.f = self.sock.makefile("rb")
        self.greeting = self.readline()

    def readline(self) -> str:
        line = self.f.readline(1 << 16)
        if not line:
            raise EOFError("connection closed by peer")
        return line.decode("utf-8", "replace").rstrip("\r\n")

    def send(self, line: str):
        self.sock.sendall(line.encode() + b"\r\n")

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def quoted(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def imap_login(port: int, source: str, user: str, password: str) -> tuple[str, float]:
    """The tagged reply to LOGIN (without the tag) and how long it took."""
    with Client(port, source) as c:
        t0 = time.monotonic()
        c.send(f"a1 LOGIN {quoted(user)} {quoted(password)}")
        for _ in range(1000):
            line = c.readline()
            if line.startswith("a1 "):
                took = time.monotonic() - t0
                c.send("a2 LOGOUT")
                return line[3:], took
        raise AssertionError("no tagged reply to LOGIN")


def pop3_login(port: int, source: str, user: str, password: str) -> str:
    with Client(port, source) as c:
        c.send(f"USER {user}")
        r = c.readline()
        if not r.startswith("+OK"):
            return r
        c.send(f"PASS {password}")
        reply = c.readline()
        c.send("QUIT")
        return reply


def smtp_reply(c: Client) -> str:
    lines = []
    for _ in range(100):
        line = c.readline()
        lines.append(line)
        if len(line) < 4 or line[3] == " ":
            return "\n".join(lines)
    raise AssertionError("SMTP reply too long")


def smtp_login(port: int, source: str, user: str, password: str) -> str:
    with Client(port, source) as c:
        c.send("EHLO client.example")
        smtp_reply(c)
        ir = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        c.send(f"AUTH PLAIN {ir}")
        reply = smtp_reply(c)
        c.send("QUIT")
        return reply


class Lockout(unittest.TestCase):
    proxy: harness.Proxy

    @classmethod
    def setUpClass(cls):
        workdir = tempfile.mkdtemp(prefix="xoauth-lockout-")
        os.chmod(workdir, 0o700)
        listeners = [harness.listener(tls="none", upstream="imaps"),
                     harness.listener(tls="none", upstream="pop3s", protocol="pop3"),
                     harness.smtp_listener("none", "submission", ehlo_name="proxy.example")]
        cfg = harness.write_config(workdir, [harness.provider(workdir)], listeners,
                                   [harness.account(SCANNER, PASSWORD)],
                                   proxy={"lockout_failures": FAILURES, "lockout_address_failures": FAILURES,
                                          "lockout_window": WINDOW,
                                          "lockout_duration": DURATION})
        cls.proxy = harness.Proxy(cfg, len(listeners), workdir)

        def cleanup():
            cls.proxy.stop()
            if KEEP:
                print(f"\n[kept proxy workdir {workdir}]", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        cls.addClassCleanup(cleanup)
        cls.proxy.start()
        cls.imap, cls.pop3, cls.smtp = cls.proxy.ports

    def tearDown(self):
        result = getattr(self._outcome, "result", None)
        failed = result is not None and any(getattr(t, "test_case", t) is self
                                            for t, _ in result.failures + result.errors)
        if failed:
            print(f"\n----- proxy log -----\n{self.proxy.log()[-8000:]}\n-----", file=sys.stderr)

    def audit(self) -> list[str]:
        return [line for line in self.proxy.log().splitlines() if "[audit]" in line]

    def wait_for_log(self, pattern: str) -> None:
        harness.wait_until(lambda: re.search(pattern, self.proxy.log()), 10, f"log line /{pattern}/")

    # --------------------------------------------------------------------------------------------------
    def test_imap_lockout_same_reply_other_address_and_expiry(self):
        a, b = "127.0.0.11", "127.0.0.12"
        ok, _ = imap_login(self.imap, a, SCANNER, PASSWORD)
        self.assertTrue(ok.startswith("OK"), ok)  # also puts the right password in the cache

        wrong_replies = []
        for i in range(FAILURES):
            # Logins are case-insensitive, so is the count: "SCANNER@..." is the same account.
            user = SCANNER.upper() if i == 1 else SCANNER
            reply, _ = imap_login(self.imap, a, user, WRONG[i])
            wrong_replies.append(reply)
        locked_at = time.monotonic()
        self.assertEqual(wrong_replies, [IMAP_FAILED] * FAILURES)

        # Locked: the right password gets exactly the reply of a wrong one.
        reply, took = imap_login(self.imap, a, SCANNER, PASSWORD)
        self.assertEqual(reply, IMAP_FAILED)
        self.assertGreaterEqual(took, 0.2, "a refusal waits like a failure (250 ms at 3 failures)")
        reply, _ = imap_login(self.imap, a, SCANNER, WRONG[3])
        self.assertEqual(reply, IMAP_FAILED)

        # The real device on another address is not locked out.
        reply, _ = imap_login(self.imap, b, SCANNER, PASSWORD)
        self.assertTrue(reply.startswith("OK"), reply)

        # After lockout_duration the right password works again.
        time.sleep(max(0.0, locked_at + DURATION + 0.5 - time.monotonic()))
        reply, _ = imap_login(self.imap, a, SCANNER, PASSWORD)
        self.assertTrue(reply.startswith("OK"), reply)

        self.wait_for_log(rf'lockout account="{re.escape(SCANNER)}" client={re.escape(a)} scope=pair')
        audit = self.audit()
        failures = [x for x in audit if f"client={a} " in x and "login failure" in x]
        self.assertEqual(len([x for x in failures if "reason=wrong_password" in x]), FAILURES + 0, failures)
        self.assertEqual(len([x for x in failures if "reason=locked_out" in x]), 2, failures)
        for x in failures:
            self.assertRegex(x, r'login failure account="[^"]+" client=127\.0\.0\.11 reason=\w+')
        lockouts = [x for x in audit if "lockout account=" in x and f"client={a} " in x]
        self.assertTrue(any("scope=pair" in x and f"for {DURATION} s" in x for x in lockouts), lockouts)
        self.assertTrue(any("scope=address" in x for x in lockouts), lockouts)
        self.assertFalse([x for x in audit if f"client={b} " in x], "no audit line for the good address")

    def test_pop3_locked_reply_is_the_wrong_password_reply(self):
        a, b = "127.0.0.21", "127.0.0.22"
        wrong = [pop3_login(self.pop3, a, SCANNER, WRONG[i]) for i in range(FAILURES)]
        self.assertEqual(wrong, [POP3_FAILED] * FAILURES)
        self.assertEqual(pop3_login(self.pop3, a, SCANNER, PASSWORD), POP3_FAILED)
        self.assertTrue(pop3_login(self.pop3, b, SCANNER, PASSWORD).startswith("+OK"))

    def test_smtp_locked_reply_is_the_wrong_password_reply(self):
        a, b = "127.0.0.31", "127.0.0.32"
        wrong = [smtp_login(self.smtp, a, SCANNER, WRONG[i]) for i in range(FAILURES)]
        self.assertTrue(wrong[0].startswith("535 "), wrong[0])
        self.assertEqual(wrong, [wrong[0]] * FAILURES)
        self.assertEqual(smtp_login(self.smtp, a, SCANNER, PASSWORD), wrong[0])
        self.assertTrue(smtp_login(self.smtp, b, SCANNER, PASSWORD).startswith("235 "))

    def test_unknown_account_is_counted_too(self):
        a = "127.0.0.41"
        for i in range(FAILURES):
            reply, _ = imap_login(self.imap, a, "nobody@contoso.test", WRONG[i])
            self.assertEqual(reply, IMAP_FAILED)
        self.wait_for_log(r'lockout account="nobody@contoso\.test" client=127\.0\.0\.41 scope=pair')
        # The address is locked as well (3 failures), for every account.
        reply, _ = imap_login(self.imap, a, SCANNER, PASSWORD)
        self.assertEqual(reply, IMAP_FAILED)
        self.wait_for_log(r'account="scanner@contoso\.test" client=127\.0\.0\.41 reason=locked_out')

    def test_zz_no_password_in_log(self):
        log = self.proxy.log()
        self.assertIn("[audit]", log)
        for pw in [PASSWORD] + WRONG:
            self.assertNotIn(pw, log, "a password appears in the proxy log")
        self.assertNotIn(harness.MOCK_JWT_HEADER, log, "an access token appears in the proxy log")


def main() -> int:
    return harness.run_tests("test_lockout")


if __name__ == "__main__":
    sys.exit(main())
