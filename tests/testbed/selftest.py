#!/usr/bin/env python3
"""Self-test of the test bed itself (no proxy involved): mock IdP + Dovecot XOAUTH2.

    python3 tests/testbed/selftest.py [--dir DIR] [--keep]

Without --dir a temporary test bed is started and stopped. Exits non-zero on failure.
Talks to Dovecot with a small raw IMAP/POP3 client so that every command line is one write
(see README: Dovecot's login process can stall when a SASL continuation line and its CRLF
arrive in separate TLS records).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testbed  # noqa: E402

INFO: dict = {}


def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def oauthbearer(user: str, token: str) -> str:
    return base64.b64encode(f"n,a={user},\x01auth=Bearer {token}\x01\x01".encode()).decode()


class Conn:
    """Minimal line client: IMAP or POP3, plain / implicit TLS / STARTTLS."""

    def __init__(self, host: str, port: int, tls: bool = False, ctx: ssl.SSLContext | None = None,
                 timeout: float = 10.0):
        self.ctx = ctx or testbed.ssl_context(INFO)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.host = host
        if tls:
            self.sock = self.ctx.wrap_socket(self.sock, server_hostname=host)
        self.f = self.sock.makefile("rb")
        self.greeting = self.readline()
        self.n = 0

    def readline(self) -> str:
        line = self.f.readline(1 << 20)
        if not line:
            raise EOFError("connection closed")
        return line.decode("utf-8", "replace").rstrip("\r\n")

    def send(self, line: str):
        self.sock.sendall(line.encode() + b"\r\n")  # one write per line

    def cmd(self, text: str, on_cont=None) -> tuple[str, list[str]]:
        """Sends an IMAP command; returns (tagged line, untagged/continuation lines)."""
        self.n += 1
        tag = f"t{self.n}"
        self.send(f"{tag} {text}")
        lines = []
        while True:
            line = self.readline()
            if line.startswith(tag + " "):
                return line[len(tag) + 1:], lines
            lines.append(line)
            if line.startswith("+"):
                if on_cont is None:
                    raise AssertionError(f"unexpected continuation: {line}")
                self.send(on_cont(line[2:] if len(line) > 2 else ""))

    def starttls(self):
        resp, _ = self.cmd("STARTTLS")
        assert resp.startswith("OK"), resp
        self.sock = self.ctx.wrap_socket(self.sock, server_hostname=self.host)
        self.f = self.sock.makefile("rb")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class TestbedSelfTest(unittest.TestCase):
    def setUp(self):
        testbed.admin(INFO, "reset", {"what": "stats,faults"})

    def dc(self, name):
        return INFO["dovecot"][name]["host"], INFO["dovecot"][name]["port"]

    def test_01_mock_token_and_errors(self):
        tok = testbed.fetch_token(INFO)
        header, payload, _ = tok.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        for k in ("aud", "iss", "iat", "nbf", "exp", "appid", "azp", "tid", "ver", "uti", "roles", "idtyp"):
            self.assertIn(k, claims)
        self.assertEqual(claims["roles"], ["IMAP.AccessAsApp", "POP.AccessAsApp", "SMTP.SendAsApp"])
        self.assertGreater(len(tok), 1200)
        st, hdrs, body = testbed.http_request(INFO, "POST", f"/{INFO['tenant']}/oauth2/v2.0/token", form={
            "grant_type": "client_credentials", "client_id": INFO["client_id"], "client_secret": "nope",
            "scope": INFO["scope"]})
        self.assertEqual(st, 401)
        self.assertEqual(body["error"], "invalid_client")
        self.assertEqual(body["error_codes"], [7000215])
        self.assertIn("\r\nTrace ID: ", body["error_description"])
        self.assertIn("x-ms-request-id", {k.lower() for k in hdrs})
        self.assertEqual(hdrs.get("Cache-Control", "").split(",")[0], "no-store")
        st, _, body = testbed.http_request(INFO, "POST", f"/{INFO['tenant_id']}/oauth2/v2.0/token", form={
            "grant_type": "password", "client_id": INFO["client_id"]})
        self.assertEqual((st, body["error"], body["error_codes"]), (400, "unsupported_grant_type", [70003]))
        stats = testbed.admin(INFO, "stats")
        self.assertEqual(stats["grants"]["client_credentials"], {"requests": 2, "successes": 1})

    def test_02_imaps_xoauth2_all_mailboxes(self):
        tok = testbed.fetch_token(INFO)
        for user in INFO["mailboxes"]:
            c = Conn(*self.dc("imaps"), tls=True)
            self.assertIn("AUTH=XOAUTH2", c.greeting)
            resp, _ = c.cmd(f"AUTHENTICATE XOAUTH2 {xoauth2(user, tok)}")
            self.assertTrue(resp.startswith("OK"), resp)
            resp, lines = c.cmd('LIST "" "*"')
            self.assertTrue(resp.startswith("OK"))
            names = " ".join(lines)
            for folder in INFO["seed"][user]:
                self.assertIn(folder, names)
            resp, lines = c.cmd("SELECT INBOX")
            self.assertIn(f"* {INFO['seed'][user]['INBOX']} EXISTS", lines)
            resp, lines = c.cmd("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            self.assertTrue(resp.startswith("OK"), resp)
            c.cmd("LOGOUT")
            c.close()
        stats = testbed.admin(INFO, "stats")
        # App token: user passdb (mismatch) + app passdb (match) = 2 introspections per login.
        self.assertEqual(stats["introspection"]["active"], 2 * len(INFO["mailboxes"]))

    def test_03_starttls_forced_on_127_0_0_2(self):
        tok = testbed.fetch_token(INFO)
        c = Conn(*self.dc("imap_starttls_forced"))
        self.assertIn("LOGINDISABLED", c.greeting)
        resp, _ = c.cmd(f"AUTHENTICATE XOAUTH2 {xoauth2('scanner@contoso.test', tok)}")
        self.assertTrue(resp.startswith("NO [PRIVACYREQUIRED]"), resp)
        c.close()
        # New connection: after a refused pre-TLS AUTHENTICATE, Dovecot 2.3.19 answers the next
        # AUTHENTICATE (after STARTTLS) with "BAD Invalid base64 data in initial response".
        c = Conn(*self.dc("imap_starttls_forced"))
        c.starttls()
        resp, _ = c.cmd(f"AUTHENTICATE XOAUTH2 {xoauth2('scanner@contoso.test', tok)}")
        self.assertTrue(resp.startswith("OK"), resp)
        resp, lines = c.cmd("EXAMINE INBOX")
        self.assertIn("* 3 EXISTS", lines)
        c.close()

    def test_04_plain_port_on_loopback_is_secured(self):
        # Dovecot treats 127.0.0.1 -> 127.0.0.1 as secured: no TLS demanded (testbed-notes §2).
        tok = testbed.fetch_token(INFO)
        c = Conn(*self.dc("imap"))
        self.assertIn("STARTTLS", c.greeting)
        resp, _ = c.cmd(f"AUTHENTICATE XOAUTH2 {xoauth2('alice@contoso.test', tok)}")
        self.assertTrue(resp.startswith("OK"), resp)
        c.close()

    def test_05_wrong_token_challenge_then_authenticationfailed(self):
        tok = testbed.fetch_token(INFO)
        bad = tok[:-6] + ("AAAAAA" if not tok.endswith("AAAAAA") else "BBBBBB")
        for mech, enc, reply in (("XOAUTH2", xoauth2, ""), ("OAUTHBEARER", oauthbearer, "AQ==")):
            c = Conn(*self.dc("imaps"), tls=True)
            challenges = []

            def on_cont(data):
                challenges.append(base64.b64decode(data).decode() if data else "")
                return reply
            t0 = time.monotonic()
            resp, _ = c.cmd(f"AUTHENTICATE {mech} {enc('scanner@contoso.test', bad)}", on_cont)
            elapsed = time.monotonic() - t0
            self.assertTrue(resp.startswith("NO [AUTHENTICATIONFAILED]"), resp)
            self.assertEqual(len(challenges), 1)
            if mech == "XOAUTH2":
                self.assertEqual(json.loads(challenges[0]), {"status": "401", "schemes": "bearer", "scope": "mail"})
            else:
                self.assertEqual(json.loads(challenges[0])["status"], "invalid_token")
            self.assertLess(elapsed, 5)
            c.close()
        stats = testbed.admin(INFO, "stats")
        self.assertEqual(stats["introspection"]["reasons"].get("bad_signature"), 4)

    def test_06_other_domain_rejected(self):
        tok = testbed.fetch_token(INFO)
        c = Conn(*self.dc("imaps"), tls=True)
        resp, _ = c.cmd(f"AUTHENTICATE XOAUTH2 {xoauth2('bob@fabrikam.test', tok)}", lambda d: "")
        self.assertTrue(resp.startswith("NO"), resp)
        c.close()

    def test_07_wronghost_listener_serves_wronghost_cert(self):
        ctx = testbed.ssl_context(INFO)
        host, port = self.dc("imaps_wronghost")
        with self.assertRaises(ssl.SSLCertVerificationError):
            Conn(host, port, tls=True, ctx=ctx)
        ctx2 = testbed.ssl_context(INFO)
        ctx2.check_hostname = False
        c = Conn(host, port, tls=True, ctx=ctx2)
        san = c.sock.getpeercert()["subjectAltName"]
        self.assertEqual(san, (("DNS", "wrong.example"),))
        c.close()

    def test_08_pop3_and_scope_enforcement(self):
        imap_only = next(x for x in INFO["clients"] if x["roles"] == ["IMAP.AccessAsApp"])
        tok_imap_only = testbed.fetch_token(INFO, imap_only["client_id"], imap_only["client_secret"])
        tok = testbed.fetch_token(INFO)
        c = Conn(*self.dc("pop3s"), tls=True)
        self.assertTrue(c.greeting.startswith("+OK"))
        c.send(f"AUTH XOAUTH2 {xoauth2('shared@contoso.test', tok)}")
        self.assertTrue(c.readline().startswith("+OK"))
        c.send("STAT")
        self.assertTrue(c.readline().startswith("+OK 3 "))
        c.close()
        c = Conn(*self.dc("pop3s"), tls=True)
        c.send(f"AUTH XOAUTH2 {xoauth2('shared@contoso.test', tok_imap_only)}")
        line = c.readline()
        self.assertTrue(line.startswith("+ "), line)
        c.send("")
        self.assertTrue(c.readline().startswith("-ERR"))
        c.close()
        stats = testbed.admin(INFO, "stats")
        self.assertGreaterEqual(stats["introspection"]["reasons"].get("insufficient_scope", 0), 1)

    def test_09_revoke_and_introspection_fault(self):
        tok = testbed.fetch_token(INFO)
        testbed.admin(INFO, "revoke", {"client_id": INFO["client_id"]})
        c = Conn(*self.dc("imaps"), tls=True)
        resp, _ = c.cmd(f"AUTHENTICATE XOAUTH2 {xoauth2('scanner@contoso.test', tok)}", lambda d: "")
        self.assertTrue(resp.startswith("NO [AUTHENTICATIONFAILED]"), resp)
        c.close()
        tok = testbed.fetch_token(INFO)
        testbed.admin(INFO, "fail", {"endpoint": "introspect", "status": 500, "count": 2})
        c = Conn(*self.dc("imaps"), tls=True)
        try:
            resp, _ = c.cmd(f"AUTHENTICATE XOAUTH2 {xoauth2('scanner@contoso.test', tok)}", lambda d: "")
            self.assertTrue(resp.startswith("NO [UNAVAILABLE]"), resp)
        except EOFError:
            pass  # Dovecot may also drop the connection on a tempfail
        c.close()
        testbed.admin(INFO, "reset", {"what": "faults"})

    def test_10_token_fault_injection_and_latency(self):
        testbed.admin(INFO, "fail", {"status": 503, "count": 1, "retry_after": 7})
        st, hdrs, body = testbed.http_request(INFO, "POST", f"/{INFO['tenant']}/oauth2/v2.0/token", form={
            "grant_type": "client_credentials", "client_id": INFO["client_id"],
            "client_secret": INFO["client_secret"], "scope": INFO["scope"]})
        self.assertEqual((st, hdrs.get("Retry-After"), body["error"]), (503, "7", "temporarily_unavailable"))
        testbed.admin(INFO, "fail", {"drop": True, "count": 1})
        with self.assertRaises(Exception):
            testbed.fetch_token(INFO)
        testbed.fetch_token(INFO)
        testbed.admin(INFO, "config", {"latency_ms": 300})
        import threading
        ths = [threading.Thread(target=testbed.fetch_token, args=(INFO,)) for _ in range(5)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(20)
        testbed.admin(INFO, "config", {"latency_ms": 0})
        stats = testbed.admin(INFO, "stats")
        self.assertEqual(stats["peak_concurrent_token_requests"], 5)
        self.assertEqual(stats["grants"]["client_credentials"], {"requests": 8, "successes": 6})
        self.assertEqual(stats["faults_injected"], 2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir")
    ap.add_argument("--keep", action="store_true", help="do not stop a temporary test bed")
    args, rest = ap.parse_known_args()
    d = args.dir or tempfile.mkdtemp(prefix="xoauth-tb-")
    t0 = time.monotonic()
    INFO.update(testbed.start(d))
    print(f"testbed start: {time.monotonic() - t0:.2f}s ({d})", file=sys.stderr)
    try:
        prog = unittest.main(argv=[sys.argv[0]] + rest, exit=False, verbosity=2)
        ok = prog.result.wasSuccessful()
    finally:
        if not args.dir and not args.keep:
            t0 = time.monotonic()
            testbed.stop(d)
            print(f"testbed stop: {time.monotonic() - t0:.2f}s", file=sys.stderr)
            shutil.rmtree(d, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
