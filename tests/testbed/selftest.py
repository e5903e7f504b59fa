#!/usr/bin/env python3
"""Self-test of the test bed itself (no proxy involved): mock IdP + Dovecot XOAUTH2 + Postfix
submission (XOAUTH2 through Dovecot's auth socket, delivery over LMTP, read back over IMAP), and the
mock's delegated flows (authorization code + PKCE, refresh rotation, ROPC, device code, client assertion).

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
import http.client
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import uuid

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
            "grant_type": "urn:example:no-such-grant", "client_id": INFO["client_id"]})
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

# --- delegated sign-in (issue 5) ---------------------------------------------------------------------
EXO = "https://outlook.office.com/"
MAIL_SCOPES = f"{EXO}IMAP.AccessAsUser.All {EXO}POP.AccessAsUser.All {EXO}SMTP.Send"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def token_request(form: dict, tenant: str | None = None) -> tuple[int, dict]:
    st, _, body = testbed.http_request(INFO, "POST", f"/{tenant or INFO['tenant']}/oauth2/v2.0/token", form=form)
    return st, body


def raw_https(method: str, path: str, form: dict | None = None) -> tuple[int, dict, str]:
    """One request to the mock without following redirects: (status, headers, text)."""
    c = http.client.HTTPSConnection("127.0.0.1", INFO["idp_port"], context=testbed.ssl_context(INFO), timeout=10)
    try:
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        hdrs = {"Content-Type": "application/x-www-form-urlencoded"} if form is not None else {}
        c.request(method, path, body=body, headers=hdrs)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace")
    finally:
        c.close()


def pkce() -> tuple[str, str]:
    verifier = base64.urlsafe_b64encode(os.urandom(48)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def claims_of(jwt: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))


def passwords() -> dict:
    d = testbed.admin(INFO, "directory")
    return {u["upn"]: u["password"] for t in d["tenants"] for u in t["users"]}


def query_of(location: str) -> dict:
    return {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(location).query).items()}


def authorize_path(redirect_uri: str, challenge: str | None, state: str = "st-123", scope: str | None = None,
                   **extra) -> str:
    q = {"client_id": INFO["client_id"], "response_type": "code", "redirect_uri": redirect_uri,
         "response_mode": "query", "scope": scope or f"{MAIL_SCOPES} offline_access openid profile",
         "state": state, **extra}
    if challenge:
        q.update(code_challenge=challenge, code_challenge_method="S256")
    return f"/{INFO['tenant']}/oauth2/v2.0/authorize?" + urllib.parse.urlencode(q)


def ropc(user: str, password: str | None = None, scope: str | None = None, **extra) -> tuple[int, dict]:
    return token_request({"grant_type": "password", "client_id": INFO["client_id"], "username": user,
                          "password": password if password is not None else passwords()[user],
                          "scope": scope or f"{MAIL_SCOPES} offline_access", **extra})


def refresh(rt: str, **extra) -> tuple[int, dict]:
    return token_request({"grant_type": "refresh_token", "client_id": INFO["client_id"], "refresh_token": rt,
                          **extra})


def imap_login(user: str, token: str) -> str:
    c = Conn(INFO["dovecot"]["imaps"]["host"], INFO["dovecot"]["imaps"]["port"], tls=True)
    try:
        resp, _ = c.cmd(f"AUTHENTICATE XOAUTH2 {xoauth2(user, token)}", lambda d: "")
        return resp
    finally:
        c.close()


class DelegatedSelfTest(unittest.TestCase):
    """The delegated grants of the mock (authorization code + PKCE, refresh rotation, ROPC, device code,
    client assertion) and a delegated token at Dovecot."""

    def setUp(self):
        testbed.admin(INFO, "reset", {"what": "stats,faults,config,directory"})

    def tearDown(self):
        testbed.admin(INFO, "reset", {"what": "faults,config,directory"})

    def assertAad(self, st_body, status, error, code):
        st, body = st_body
        self.assertIsInstance(body, dict, body)
        self.assertEqual((st, body.get("error"), body.get("error_codes")), (status, error, [code]),
                         body.get("error_description"))
        self.assertIn(f"AADSTS{code}: ", body["error_description"])
        return body

    def redeem(self, code, redirect_uri, verifier, **extra):
        return token_request({"grant_type": "authorization_code", "client_id": INFO["client_id"], "code": code,
                              "redirect_uri": redirect_uri, "code_verifier": verifier, **extra})

    def test_30_directory_seeded_users(self):
        d = testbed.admin(INFO, "directory")
        users = {u["upn"]: u for t in d["tenants"] for u in t["users"]}
        for mb in INFO["mailboxes"] + INFO["sinks"]:
            self.assertIn(mb, users)
        self.assertTrue(users["shared@contoso.test"]["disabled"])
        self.assertTrue(users["bob@contoso.test"]["mfa_required"])
        self.assertEqual(users["carol@contoso.test"]["consented_scopes"], [])
        self.assertEqual(users["alice@contoso.test"]["consented_scopes"],
                         ["IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send"])
        self.assertTrue(users["alice@contoso.test"]["password"])
        out = testbed.admin(INFO, "user", {"upn": "dave@contoso.test", "password": "dave.pw", "mfa_required": True})
        self.assertTrue(out["created"])
        out = testbed.admin(INFO, "user", {"upn": "dave@contoso.test", "mfa_required": False})
        self.assertFalse(out["created"] or out["user"]["mfa_required"])
        self.assertEqual(ropc("dave@contoso.test", "dave.pw")[0], 200)
        conf = testbed.http_request(INFO, "GET", f"/{INFO['tenant']}/v2.0/.well-known/openid-configuration")[2]
        for g in ("authorization_code", "refresh_token", "password", DEVICE_GRANT, "client_credentials"):
            self.assertIn(g, conf["grant_types_supported"])

    def test_31_auth_code_pkce_auto_approve(self):
        testbed.admin(INFO, "config", {"auto_approve": "alice@contoso.test"})
        ruri = "http://127.0.0.1:53682/oauth/callback"   # loopback: any port matches the registered URI
        verifier, challenge = pkce()
        st, hdrs, _ = raw_https("GET", authorize_path(ruri, challenge, nonce="n-1"))
        self.assertEqual(st, 302)
        loc = hdrs["location"]
        self.assertTrue(loc.startswith(ruri + "?"), loc)
        q = query_of(loc)
        self.assertEqual(q["state"], "st-123")
        code = q["code"]
        self.assertAad(self.redeem(code, ruri, pkce()[0]), 400, "invalid_grant", 501481)
        self.assertAad(self.redeem(code, ruri.replace("53682", "53683"), verifier), 400, "invalid_grant", 500112)
        self.assertAad(token_request({"grant_type": "authorization_code", "client_id": INFO["client_id"],
                                      "code": code, "redirect_uri": ruri}), 400, "invalid_grant", 501481)
        st, body = self.redeem(code, ruri, verifier)
        self.assertEqual(st, 200, body)
        for k in ("access_token", "refresh_token", "id_token", "scope", "expires_in", "ext_expires_in"):
            self.assertIn(k, body)
        self.assertEqual(body["token_type"], "Bearer")
        self.assertIn(f"{EXO}IMAP.AccessAsUser.All", body["scope"].split())
        c = claims_of(body["access_token"])
        self.assertEqual((c["upn"], c["idtyp"], c["aud"]), ("alice@contoso.test", "user", "https://outlook.office.com"))
        self.assertEqual(c["scp"].split(), ["IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "SMTP.Send"])
        idt = claims_of(body["id_token"])
        self.assertEqual((idt["aud"], idt["preferred_username"], idt["nonce"]),
                         (INFO["client_id"], "alice@contoso.test", "n-1"))
        self.assertAad(self.redeem(code, ruri, verifier), 400, "invalid_grant", 54005)   # single use
        stats = testbed.admin(INFO, "stats")
        self.assertEqual(stats["codes_redeemed"], 1)
        self.assertEqual(stats["grants"]["authorization_code"], {"requests": 5, "successes": 1})
        self.assertEqual(stats["authorize"]["auto_approved"], 1)
        # a code is bound to its client, and expires
        testbed.admin(INFO, "config", {"auto_approve": "login_hint"})
        st, hdrs, _ = raw_https("GET", authorize_path(ruri, challenge, login_hint="scanner@contoso.test"))
        code2 = query_of(hdrs["location"])["code"]
        other = next(x for x in INFO["clients"] if x["client_id"] != INFO["client_id"])
        self.assertAad(token_request({"grant_type": "authorization_code", "client_id": other["client_id"],
                                      "client_secret": other["client_secret"], "code": code2,
                                      "redirect_uri": ruri, "code_verifier": verifier}), 400, "invalid_grant", 70000)
        testbed.admin(INFO, "expire", {"access": False, "codes": True})
        self.assertAad(self.redeem(code2, ruri, verifier), 400, "invalid_grant", 70008)
        # prompt=none without auto-approve: login_required back to the app
        testbed.admin(INFO, "config", {"auto_approve": ""})
        st, hdrs, _ = raw_https("GET", authorize_path(ruri, challenge, prompt="none"))
        self.assertEqual((st, query_of(hdrs["location"])["error"]), (302, "login_required"))

    def test_32_auth_code_via_html_form(self):
        ruri = "http://localhost:40001/oauth/callback"
        verifier, challenge = pkce()
        st, _, page = raw_https("GET", authorize_path(ruri, challenge, login_hint="alice@contoso.test"))
        self.assertEqual(st, 200)
        self.assertIn('value="alice@contoso.test"', page)
        ctx = re.search(r'name="ctx" value="([^"]+)"', page).group(1)
        path = f"/{INFO['tenant']}/oauth2/v2.0/authorize"
        st, _, page = raw_https("POST", path, {"ctx": ctx, "username": "alice@contoso.test", "password": "wrong",
                                               "consent": "yes", "action": "accept"})
        self.assertEqual(st, 200)
        self.assertIn("AADSTS50126", page)
        st, hdrs, _ = raw_https("POST", path, {"ctx": ctx, "username": "alice@contoso.test",
                                               "password": passwords()["alice@contoso.test"], "action": "accept"})
        self.assertEqual(st, 302)   # alice has consented already: the box is not needed
        q = query_of(hdrs["location"])
        self.assertEqual(q["state"], "st-123")
        st, body = self.redeem(q["code"], ruri, verifier)
        self.assertEqual(st, 200, body)
        self.assertEqual(claims_of(body["access_token"])["upn"], "alice@contoso.test")
        self.assertEqual(raw_https("POST", path, {"ctx": ctx, "username": "x", "password": "y"})[0], 400)  # ctx used
        # Cancel -> access_denied; carol has not consented: without the box it is a decline, with it a code
        for form, want in (({"action": "decline"}, "access_denied"),
                           ({"action": "accept"}, "access_denied"),
                           ({"action": "accept", "consent": "yes"}, None)):
            st, _, page = raw_https("GET", authorize_path(ruri, challenge, state="s2"))
            ctx = re.search(r'name="ctx" value="([^"]+)"', page).group(1)
            st, hdrs, _ = raw_https("POST", path, {"ctx": ctx, "username": "carol@contoso.test",
                                                   "password": passwords()["carol@contoso.test"], **form})
            q = query_of(hdrs["location"])
            self.assertEqual((st, q.get("error"), q["state"]), (302, want, "s2"), q)
            if want:
                self.assertTrue(q["error_description"].startswith("AADSTS65004:"), q)
        st, body = self.redeem(q["code"], ruri, verifier)
        self.assertEqual(st, 200, body)
        users = {u["upn"]: u for t in testbed.admin(INFO, "directory")["tenants"] for u in t["users"]}
        self.assertIn("IMAP.AccessAsUser.All", users["carol@contoso.test"]["consented_scopes"])

    def test_33_redirect_uri_rules_and_authorize_errors(self):
        testbed.admin(INFO, "client", {"client_id": INFO["client_id"],
                                       "redirect_uris": ["http://localhost/cb", "https://app.example.test/cb"]})
        testbed.admin(INFO, "config", {"auto_approve": "alice@contoso.test"})
        for uri, ok in (("http://localhost:1234/cb", True), ("http://localhost/cb", True),
                        ("https://app.example.test/cb", True), ("http://localhost:1234/cb2", False),
                        ("http://127.0.0.1:1234/cb", False), ("https://app.example.test:444/cb", False),
                        ("https://app.example.test/cb/", False), ("http://localhost.evil.test/cb", False),
                        ("https://evil.example/cb", False)):
            st, hdrs, page = raw_https("GET", authorize_path(uri, None))
            if ok:
                self.assertEqual(st, 302, uri)
                self.assertIn("code", query_of(hdrs["location"]))
            else:
                self.assertEqual(st, 400, uri)
                self.assertIn("AADSTS50011", page)
        st, _, page = raw_https("GET", authorize_path("http://localhost/cb", None).replace(
            INFO["client_id"], "00000000-0000-0000-0000-000000000001"))
        self.assertEqual(st, 400)
        self.assertIn("AADSTS700016", page)
        st, hdrs, _ = raw_https("GET", authorize_path("http://localhost/cb", None,
                                                      scope=f"{MAIL_SCOPES} https://graph.microsoft.com/Mail.Read"))
        q = query_of(hdrs["location"])
        self.assertEqual((st, q["error"]), (302, "invalid_scope"))
        self.assertTrue(q["error_description"].startswith("AADSTS700022"), q)

    def test_34_refresh_rotation_grace_and_binding(self):
        st, body = ropc("alice@contoso.test", client_secret=INFO["client_secret"])
        self.assertEqual(st, 200, body)
        rt1 = body["refresh_token"]
        self.assertAad(refresh(rt1), 401, "invalid_client", 7000218)   # confidential stays confidential
        sec = {"client_secret": INFO["client_secret"]}
        st, body = refresh(rt1, **sec)
        self.assertEqual(st, 200, body)
        rt2 = body["refresh_token"]
        self.assertNotEqual(rt1, rt2)
        self.assertAad(refresh(rt1, **sec), 400, "invalid_grant", 70000)   # grace 0: strictly single use
        other = next(x for x in INFO["clients"] if x["client_id"] != INFO["client_id"])
        self.assertAad(token_request({"grant_type": "refresh_token", "client_id": other["client_id"],
                                      "client_secret": other["client_secret"], "refresh_token": rt2}),
                       400, "invalid_grant", 70000)
        # simultaneous use with grace 0: exactly one wins
        results = []
        ths = [threading.Thread(target=lambda: results.append(refresh(rt2, **sec)[0])) for _ in range(6)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(20)
        self.assertEqual(sorted(results), [200] + [400] * 5)
        # public refresh token; grace period
        st, body = ropc("alice@contoso.test")
        rt = body["refresh_token"]
        testbed.admin(INFO, "config", {"refresh_grace_seconds": 1})
        st, body = refresh(rt)
        self.assertEqual(st, 200, body)
        st, body2 = refresh(rt)
        self.assertEqual(st, 200, body2)   # reused within the grace period
        self.assertNotEqual(body["refresh_token"], body2["refresh_token"])
        time.sleep(1.3)
        self.assertAad(refresh(rt), 400, "invalid_grant", 70000)
        stats = testbed.admin(INFO, "stats")
        self.assertEqual(stats["refresh_reuse_within_grace"], 1)
        self.assertEqual(stats["refresh_reuse_rejected"], 7)
        # scope on refresh: subset of the consent, one resource
        st, body = refresh(body2["refresh_token"], scope=f"{EXO}IMAP.AccessAsUser.All offline_access")
        self.assertEqual(st, 200, body)
        self.assertAad(refresh(body["refresh_token"], scope=f"{EXO}EWS.AccessAsUser.All"), 400, "invalid_grant",
                       65001)
        # expiry (inactivity)
        testbed.admin(INFO, "expire", {"access": True, "refresh": True, "user": "alice@contoso.test"})
        self.assertAad(refresh(body["refresh_token"]), 400, "invalid_grant", 700082)

    def test_35_ropc(self):
        st, body = ropc("alice@contoso.test", scope=f"{EXO}IMAP.AccessAsUser.All")
        self.assertEqual(st, 200, body)
        self.assertNotIn("refresh_token", body)     # no offline_access
        self.assertNotIn("id_token", body)
        self.assertEqual(claims_of(body["access_token"])["amr"], ["pwd"])
        st, body = ropc("alice@contoso.test", scope="https://outlook.office365.com/IMAP.AccessAsUser.All openid")
        self.assertEqual(st, 200, body)
        self.assertEqual(claims_of(body["access_token"])["aud"], "https://outlook.office365.com")
        self.assertIn("id_token", body)
        self.assertAad(ropc("alice@contoso.test", "wrong"), 400, "invalid_grant", 50126)
        self.assertAad(ropc("nobody@contoso.test", "x"), 400, "invalid_grant", 50034)
        self.assertAad(ropc("shared@contoso.test"), 400, "invalid_grant", 50057)
        b = self.assertAad(ropc("bob@contoso.test"), 400, "invalid_grant", 50076)
        self.assertEqual(b["suberror"], "basic_action")
        self.assertIn("claims", b)
        b = self.assertAad(ropc("carol@contoso.test"), 400, "invalid_grant", 65001)
        self.assertEqual(b["suberror"], "consent_required")
        self.assertAad(token_request({"grant_type": "password", "client_id": INFO["client_id"],
                                      "username": "alice@contoso.test", "password": "x", "scope": MAIL_SCOPES},
                                     tenant="common"), 400, "invalid_request", 9001023)
        self.assertAad(ropc("alice@contoso.test", scope=f"{MAIL_SCOPES} User.Read"), 400, "invalid_scope", 700022)
        self.assertAad(ropc("alice@contoso.test", scope=f"{EXO}Mail.Frobnicate"), 400, "invalid_scope", 70011)
        self.assertAad(ropc("alice@contoso.test", scope="openid offline_access"), 400, "invalid_scope", 70011)
        st, _, body = testbed.http_request(INFO, "POST", "/organizations/oauth2/v2.0/token", form={
            "grant_type": "password", "client_id": INFO["client_id"], "username": "alice@contoso.test",
            "password": passwords()["alice@contoso.test"], "scope": MAIL_SCOPES})
        self.assertEqual(st, 200, body)
        # smart lockout emulation
        testbed.admin(INFO, "config", {"lockout_threshold": 2, "lockout_seconds": 30})
        for _ in range(2):
            self.assertAad(ropc("scanner@contoso.test", "wrong"), 400, "invalid_grant", 50126)
        self.assertAad(ropc("scanner@contoso.test"), 400, "invalid_grant", 50053)
        stats = testbed.admin(INFO, "stats")
        self.assertEqual(stats["grants"]["password"]["successes"], 3)

    def device_start(self, method="POST", scope=None):
        form = {"client_id": INFO["client_id"], "scope": scope or f"{MAIL_SCOPES} offline_access"}
        path = f"/{INFO['tenant']}/oauth2/v2.0/devicecode"
        if method == "GET":
            st, _, body = testbed.http_request(INFO, "GET", path + "?" + urllib.parse.urlencode(form))
        else:
            st, _, body = testbed.http_request(INFO, "POST", path, form=form)
        self.assertEqual(st, 200, body)
        return body

    def poll(self, dc):
        return token_request({"grant_type": DEVICE_GRANT, "client_id": INFO["client_id"], "device_code": dc})

    def test_36_device_code(self):
        testbed.admin(INFO, "config", {"device_interval": 1, "device_slow_down_increment": 1})
        dev = self.device_start()
        for k in ("device_code", "user_code", "verification_uri", "expires_in", "interval", "message"):
            self.assertIn(k, dev)
        self.assertEqual((dev["interval"], dev["expires_in"]), (1, 900))
        self.assertIn(dev["user_code"], dev["message"])
        self.assertAad(self.poll(dev["device_code"]), 400, "authorization_pending", 70016)
        self.assertEqual(self.poll(dev["device_code"])[1]["error"], "slow_down")      # polled too fast
        time.sleep(2.1)   # interval is now 1 + 1
        self.assertEqual(self.poll(dev["device_code"])[1]["error"], "authorization_pending")
        testbed.admin(INFO, "device/approve", {"user_code": dev["user_code"].lower(), "user": "alice@contoso.test"})
        time.sleep(2.1)
        st, body = self.poll(dev["device_code"])
        self.assertEqual(st, 200, body)
        self.assertIn("refresh_token", body)
        self.assertEqual(claims_of(body["access_token"])["upn"], "alice@contoso.test")
        self.assertAad(self.poll(dev["device_code"]), 400, "invalid_grant", 54005)
        # forced slow_down, deny, verification page (GET /devicecode as one real client does)
        dev = self.device_start("GET")
        testbed.admin(INFO, "config", {"slow_down": True})
        self.assertEqual(self.poll(dev["device_code"])[1]["error"], "slow_down")
        testbed.admin(INFO, "device/deny", {"user_code": dev["user_code"]})
        time.sleep(2.1)
        self.assertEqual(self.poll(dev["device_code"])[1]["error"], "authorization_declined")
        dev = self.device_start()
        vpath = urllib.parse.urlsplit(dev["verification_uri"]).path
        st, _, page = raw_https("GET", vpath)
        self.assertEqual(st, 200)
        self.assertIn('name="user_code"', page)
        form = {"user_code": dev["user_code"], "username": "alice@contoso.test", "password": "wrong",
                "action": "accept"}
        st, _, page = raw_https("POST", vpath, form)
        self.assertIn("AADSTS50126", page)
        form["password"] = passwords()["alice@contoso.test"]
        st, _, page = raw_https("POST", vpath, form)
        self.assertIn('class="approved"', page)
        st, body = self.poll(dev["device_code"])
        self.assertEqual(st, 200, body)
        # expiry
        testbed.admin(INFO, "config", {"device_expires_in": 1})
        dev = self.device_start()
        time.sleep(1.2)
        self.assertAad(self.poll(dev["device_code"]), 400, "expired_token", 70019)
        stats = testbed.admin(INFO, "stats")
        self.assertEqual(stats["device_polls"], 9)
        self.assertEqual(stats["grants"][DEVICE_GRANT], {"requests": 9, "successes": 2})

    def test_37_revoke_user_and_expire(self):
        st, body = ropc("alice@contoso.test")
        at, rt = body["access_token"], body["refresh_token"]
        self.assertTrue(imap_login("alice@contoso.test", at).startswith("OK"))
        out = testbed.admin(INFO, "revoke", {"user": "alice@contoso.test"})
        self.assertGreaterEqual(out["refresh_revoked"], 1)
        self.assertTrue(imap_login("alice@contoso.test", at).startswith("NO"))
        self.assertAad(refresh(rt), 400, "invalid_grant", 50173)
        st, body = ropc("alice@contoso.test")      # a fresh sign-in works again
        self.assertEqual(st, 200, body)
        self.assertTrue(imap_login("alice@contoso.test", body["access_token"]).startswith("OK"))
        testbed.admin(INFO, "expire", {"access": True, "user": "alice@contoso.test"})
        self.assertTrue(imap_login("alice@contoso.test", body["access_token"]).startswith("NO"))
        st, body2 = refresh(body["refresh_token"])   # refresh token still fine: only access tokens expired
        self.assertEqual(st, 200, body2)
        testbed.admin(INFO, "user", {"upn": "alice@contoso.test", "disabled": True})
        self.assertTrue(imap_login("alice@contoso.test", body2["access_token"]).startswith("NO"))
        self.assertAad(refresh(body2["refresh_token"]), 400, "invalid_grant", 50057)
        reasons = testbed.admin(INFO, "stats")["introspection"]["reasons"]
        for r in ("revoked", "expired", "user_disabled"):
            self.assertGreaterEqual(reasons.get(r, 0), 1, reasons)

    def test_38_client_assertion(self):
        d = tempfile.mkdtemp(prefix="idp-assert-")
        try:
            for n in ("a", "b"):
                subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                                f"{d}/{n}.key", "-out", f"{d}/{n}.pem", "-days", "2", "-subj", f"/CN=assert-{n}"],
                               check=True, capture_output=True)
            testbed.admin(INFO, "client", {"client_id": INFO["client_id"], "certificate": f"{d}/a.pem"})
            with open(f"{d}/a.pem") as f:
                thumb = base64.urlsafe_b64encode(hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).digest()
                                                 ).rstrip(b"=").decode()
            aud = INFO["token_url"]

            def assertion(key="a", alg="RS256", x5t=None, **over):
                t = int(time.time())
                claims = {"aud": aud, "iss": INFO["client_id"], "sub": INFO["client_id"],
                          "jti": str(uuid.uuid4()), "nbf": t, "iat": t, "exp": t + 600, **over}
                h = base64.urlsafe_b64encode(json.dumps({"alg": alg, "typ": "JWT", "x5t#S256": x5t or thumb}
                                                        ).encode()).rstrip(b"=").decode()
                b = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
                args = ["openssl", "dgst", "-sha256", "-sign", f"{d}/{key}.key"]
                if alg == "PS256":
                    args += ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]
                sig = subprocess.run(args, input=f"{h}.{b}".encode(), capture_output=True, check=True).stdout
                return f"{h}.{b}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()

            def ccg(a):
                return token_request({"grant_type": "client_credentials", "client_id": INFO["client_id"],
                                      "scope": INFO["scope"], "client_assertion_type":
                                      "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                      "client_assertion": a})
            for alg in ("RS256", "PS256"):
                st, body = ccg(assertion(alg=alg))
                self.assertEqual(st, 200, body)
            st, body = ropc("alice@contoso.test", client_assertion_type=
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", client_assertion=assertion())
            self.assertEqual(st, 200, body)
            self.assertAad(ccg(assertion(key="b")), 401, "invalid_client", 700027)      # wrong key, same x5t
            self.assertAad(ccg(assertion(x5t="AAAA")), 401, "invalid_client", 700027)   # unknown thumbprint
            self.assertAad(ccg(assertion(aud="https://login.microsoftonline.com/x/oauth2/v2.0/token")),
                           401, "invalid_client", 700023)
            self.assertAad(ccg(assertion(exp=int(time.time()) - 900, nbf=int(time.time()) - 1500)),
                           401, "invalid_client", 700024)
            self.assertAad(ccg(assertion(iss="someone-else")), 401, "invalid_client", 700021)
            a = assertion()
            self.assertAad(ccg(a[:-8] + ("AAAAAAAA" if not a.endswith("AAAAAAAA") else "BBBBBBBB")),
                           401, "invalid_client", 700027)
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def test_39_delegated_token_at_dovecot(self):
        st, body = ropc("alice@contoso.test", scope=f"{MAIL_SCOPES} offline_access")
        self.assertEqual(st, 200, body)
        tok = body["access_token"]
        testbed.admin(INFO, "reset", {"what": "stats"})
        c = Conn(*[INFO["dovecot"]["imaps"][k] for k in ("host", "port")], tls=True)
        resp, _ = c.cmd(f"AUTHENTICATE XOAUTH2 {xoauth2('alice@contoso.test', tok)}")
        self.assertTrue(resp.startswith("OK"), resp)
        resp, lines = c.cmd("SELECT INBOX")
        self.assertIn(f"* {INFO['seed']['alice@contoso.test']['INBOX']} EXISTS", lines)
        c.close()
        intro = testbed.admin(INFO, "stats")["introspection"]
        self.assertEqual((intro["active"], intro["inactive"]), (1, 0))   # user passdb matches at once
        self.assertTrue(imap_login("scanner@contoso.test", tok).startswith("NO"))  # another user's mailbox
        ep = INFO["postfix"]["submission"]
        s = smtplib.SMTP(ep["host"], ep["port"], timeout=20)
        s.starttls(context=testbed.ssl_context(INFO))
        s.ehlo("selftest.invalid")
        code, resp = smtp_xoauth2(s, "alice@contoso.test", tok)
        self.assertEqual(code, 235, resp)
        s.quit()
        testbed.admin(INFO, "user", {"upn": "alice@contoso.test", "consented_scopes": ["IMAP.AccessAsUser.All"]})
        st, body = ropc("alice@contoso.test", scope=f"{EXO}IMAP.AccessAsUser.All")
        s = smtplib.SMTP(ep["host"], ep["port"], timeout=20)
        s.starttls(context=testbed.ssl_context(INFO))
        s.ehlo("selftest.invalid")
        code, resp = smtp_xoauth2(s, "alice@contoso.test", body["access_token"])
        self.assertEqual(code, 535, resp)   # IMAP-only consent: no SMTP
        s.close()

    def test_40_faults_match_new_grants(self):
        st, body = ropc("alice@contoso.test")
        rt = body["refresh_token"]
        testbed.admin(INFO, "fail", {"grant_type": "refresh_token", "status": 429, "count": 1})
        self.assertEqual(ropc("alice@contoso.test")[0], 200)       # another grant: not affected
        st, hdrs, body = testbed.http_request(INFO, "POST", f"/{INFO['tenant']}/oauth2/v2.0/token", form={
            "grant_type": "refresh_token", "client_id": INFO["client_id"], "refresh_token": rt})
        self.assertEqual((st, hdrs.get("Retry-After"), body["error"]), (429, "60", "temporarily_unavailable"))
        self.assertEqual(refresh(rt)[0], 200)   # the injected failure did not consume the refresh token
        testbed.admin(INFO, "fail", {"endpoint": "devicecode", "status": 503, "count": 1})
        st, _, body = testbed.http_request(INFO, "POST", f"/{INFO['tenant']}/oauth2/v2.0/devicecode",
                                           form={"client_id": INFO["client_id"], "scope": MAIL_SCOPES})
        self.assertEqual((st, body["error"]), (503, "temporarily_unavailable"))
        testbed.admin(INFO, "fail", {"grant_type": DEVICE_GRANT, "drop": True, "count": 1})
        dev = self.device_start()
        with self.assertRaises(Exception):
            self.poll(dev["device_code"])
        stats = testbed.admin(INFO, "stats")
        self.assertEqual(stats["errors"].get("refresh_token:injected_429"), 1)
        self.assertEqual(stats["errors"].get("devicecode:injected_503"), 1)
        self.assertEqual(stats["errors"].get(f"{DEVICE_GRANT}:injected_drop"), 1)
        self.assertEqual(stats["faults_injected"], 3)


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
