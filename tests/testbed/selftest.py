#!/usr/bin/env python3
"""Self-test of the test bed itself (no proxy involved): mock IdP + Dovecot XOAUTH2 + Postfix
submission (XOAUTH2 through Dovecot's auth socket, delivery over LMTP, read back over IMAP).

    python3 tests/testbed/selftest.py [--dir DIR] [--keep]

Without --dir a temporary test bed is started and stopped. Exits non-zero on failure.
Talks to Dovecot with a small raw IMAP/POP3 client so that every command line is one write
(see README: Dovecot's login process can stall when a SASL continuation line and its CRLF
arrive in separate TLS records).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import smtplib
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

    def fetch_literal(self, text: str) -> bytes:
        """Sends an IMAP command whose reply carries one literal (e.g. UID FETCH n BODY.PEEK[])."""
        self.n += 1
        tag = f"t{self.n}"
        self.send(f"{tag} {text}")
        data = None
        for _ in range(1000):
            raw = self.f.readline(1 << 20)
            if not raw:
                raise EOFError("connection closed")
            m = re.search(rb"\{(\d+)\}\r\n$", raw)
            if m and data is None:
                data = self.f.read(int(m.group(1)))
                continue
            if raw.startswith(tag.encode() + b" "):
                assert raw[len(tag) + 1:].startswith(b"OK"), raw
                assert data is not None, "no literal in the reply"
                return data
        raise AssertionError("no tagged reply")


def smtp_xoauth2(s: smtplib.SMTP, user: str, token: str) -> tuple[int, bytes]:
    """AUTH XOAUTH2 without initial response (the token does not fit in 512 octets), then the
    response line; an error challenge (334 <base64 JSON>) is answered with an empty line."""
    code, resp = s.docmd("AUTH", "XOAUTH2")
    if code != 334:
        return code, resp
    code, resp = s.docmd(xoauth2(user, token))
    if code == 334:
        code, resp = s.docmd("")
    return code, resp


def imap_find(user: str, message_id: str, timeout: float = 20.0) -> bytes:
    """Logs in to Dovecot (imaps, XOAUTH2) as user and returns the message with that Message-ID
    once it has arrived (polled)."""
    tok = testbed.fetch_token(INFO)
    c = Conn(INFO["dovecot"]["imaps"]["host"], INFO["dovecot"]["imaps"]["port"], tls=True)
    try:
        resp, _ = c.cmd(f"AUTHENTICATE XOAUTH2 {xoauth2(user, tok)}")
        assert resp.startswith("OK"), resp
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp, _ = c.cmd("SELECT INBOX")
            assert resp.startswith("OK"), resp
            resp, lines = c.cmd(f'UID SEARCH HEADER Message-ID "{message_id}"')
            uids = [u for line in lines if line.startswith("* SEARCH") for u in line.split()[2:]]
            if uids:
                return c.fetch_literal(f"UID FETCH {uids[-1]} (BODY.PEEK[])")
            time.sleep(0.1)
        raise AssertionError(f"{message_id} did not arrive in {user}'s INBOX within {timeout}s")
    finally:
        c.close()


TRACE_HEADERS = ("received", "return-path", "delivered-to", "x-original-to")


def strip_trace(msg: bytes) -> bytes:
    """The message without the trace header fields that Postfix and Dovecot add on top."""
    head, sep, body = msg.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    kept = [f for f in fields if f.split(b":", 1)[0].strip().lower().decode("latin-1") not in TRACE_HEADERS]
    return b"\r\n".join(kept) + sep + body


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


class PostfixSelfTest(unittest.TestCase):
    def setUp(self):
        testbed.admin(INFO, "reset", {"what": "stats,faults"})

    def connect(self, name: str) -> smtplib.SMTP:
        ep = INFO["postfix"][name]
        ctx = testbed.ssl_context(INFO)
        if ep["tls"] == "implicit":
            s = smtplib.SMTP_SSL(ep["host"], ep["port"], timeout=20, context=ctx)
        else:
            s = smtplib.SMTP(ep["host"], ep["port"], timeout=20)
            s.ehlo("selftest.invalid")
            self.assertIn("starttls", s.esmtp_features)
            self.assertNotIn("auth", s.esmtp_features, "AUTH must not be offered before STARTTLS")
            s.starttls(context=ctx)
        s.ehlo("selftest.invalid")
        return s

    def test_20_submission_xoauth2_delivered_over_lmtp(self):
        tok = testbed.fetch_token(INFO)
        sink = INFO["sinks"][0]
        for name in ("submission", "smtps"):
            with self.subTest(listener=name):
                s = self.connect(name)
                feats = s.esmtp_features
                self.assertEqual(feats.get("auth", "").split(), ["XOAUTH2", "OAUTHBEARER"])
                for ext in ("pipelining", "8bitmime", "chunking", "enhancedstatuscodes", "dsn", "smtputf8"):
                    self.assertIn(ext, feats)
                self.assertGreaterEqual(int(feats["size"]), 60 * 1024 * 1024)
                code, resp = smtp_xoauth2(s, "scanner@contoso.test", tok)
                self.assertEqual(code, 235, resp)
                mid = f"<selftest-{name}-{time.time_ns()}@testbed.invalid>"
                body = (f"Plain line\r\n..leading dot\r\n8-bit: \xe4\xf6\xfc\r\n"
                        + "x" * 990 + "\r\n").encode("latin-1")
                msg = (f"From: scanner@contoso.test\r\nTo: {sink}\r\nSubject: selftest {name}\r\n"
                       f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: {mid}\r\n"
                       f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
                       f"Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + body
                refused = s.sendmail("scanner@contoso.test", [sink], msg, mail_options=["BODY=8BITMIME"])
                self.assertEqual(refused, {})
                s.quit()
                got = imap_find(sink, mid)
                self.assertEqual(hashlib.sha256(strip_trace(got)).hexdigest(), hashlib.sha256(msg).hexdigest(),
                                 f"message changed on the way:\n{got[:2000]!r}")
        stats = testbed.admin(INFO, "stats")
        self.assertGreaterEqual(stats["introspection"]["by_service"].get("smtp", 0), 2)

    def test_21_postfix_refusals(self):
        tok = testbed.fetch_token(INFO)
        bad = tok[:-6] + ("AAAAAA" if not tok.endswith("AAAAAA") else "BBBBBB")
        imap_only = next(x for x in INFO["clients"] if x["roles"] == ["IMAP.AccessAsApp"])
        tok_imap_only = testbed.fetch_token(INFO, imap_only["client_id"], imap_only["client_secret"])
        for label, token in (("bad signature", bad), ("IMAP-only token", tok_imap_only)):
            with self.subTest(label):
                s = self.connect("submission")
                code, resp = s.docmd("AUTH", "XOAUTH2")
                self.assertEqual(code, 334)
                code, resp = s.docmd(xoauth2("scanner@contoso.test", token))
                self.assertEqual(code, 334, resp)  # the RFC 7628 error challenge
                self.assertEqual(json.loads(base64.b64decode(resp))["status"], "401")
                code, resp = s.docmd("")
                self.assertEqual(code, 535, resp)
                self.assertTrue(resp.startswith(b"5.7.8"), resp)
                s.close()
        s = self.connect("smtps")
        code, resp = s.mail("scanner@contoso.test")
        self.assertEqual(code, 250)
        code, resp = s.rcpt(INFO["sinks"][0])
        self.assertGreaterEqual(code, 500, "unauthenticated mail must be refused")
        s.rset()
        code, resp = smtp_xoauth2(s, "scanner@contoso.test", tok)
        self.assertEqual(code, 235, resp)
        s.mail("scanner@contoso.test")
        code, resp = s.rcpt("someone@example.com")
        self.assertGreaterEqual(code, 500, "mail to other domains must be refused")
        s.close()

    def test_22_wronghost_listener(self):
        ep = INFO["postfix"]["submission_wronghost"]
        self.assertEqual(ep["host"], "127.0.0.3")
        s = smtplib.SMTP(ep["host"], ep["port"], timeout=20)
        s.ehlo("selftest.invalid")
        with self.assertRaises(ssl.SSLCertVerificationError):
            s.starttls(context=testbed.ssl_context(INFO))
        s.close()


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
