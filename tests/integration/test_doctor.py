#!/usr/bin/env python3
"""`xoauth-proxy doctor` (issue 6) against the test bed: mock IdP, Dovecot (IMAP, POP3), Postfix.

    XOAUTH_PROXY_BIN=build/xoauth-proxy python3 tests/integration/test_doctor.py [-v] [-k PATTERN]

Optional: XOAUTH_TESTBED_DIR=/path (reuse or start a test bed there), XOAUTH_KEEP_WORKDIRS=1.
Each case writes a config (one IMAP, one SMTP and one POP3 listener; no proxy is started: doctor
talks to the upstreams itself) and checks the ✓/✗ lines, the fix text, the exit code and --json.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SCANNER = "scanner@contoso.test"
KEEP = os.environ.get("XOAUTH_KEEP_WORKDIRS") == "1"


def tb() -> dict:
    return harness.testbed_info()


def listeners() -> list[dict]:
    pop = harness.listener(protocol="pop3", upstream=tb()["dovecot"]["pop3s"]["address"],
                           upstream_tls="implicit")
    return [harness.listener(), harness.smtp_listener(), pop]


class FakeExchange:
    """A TLS server on loopback (the test bed's certificate) that answers like Exchange Online in
    two situations the real test bed cannot produce: SMTP AUTH disabled (535 5.7.139) and an IMAP
    login accepted for a mailbox the app may not open ("User is authenticated but not connected")."""

    def __init__(self, protocol: str):
        self.protocol = protocol
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tb()["certs"]["server"]["cert"], tb()["certs"]["server"]["key"])
        self.ctx = ctx
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(60)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            raw, _ = self.sock.accept()
        except OSError:
            return
        with self.ctx.wrap_socket(raw, server_side=True) as c:
            c.settimeout(30)
            f = c.makefile("rb")
            say = lambda text: c.sendall(text.encode() + b"\r\n")  # noqa: E731
            if self.protocol == "smtp":
                say("220 fake.outlook.test Microsoft ESMTP MAIL Service ready")
                for _ in range(10):
                    line = f.readline().decode(errors="replace").strip()
                    if not line:
                        return
                    verb = line.split(" ")[0].upper()
                    if verb == "EHLO":
                        say("250-fake.outlook.test Hello\r\n250-SIZE 157286400\r\n250 AUTH LOGIN XOAUTH2")
                    elif verb == "AUTH":
                        say("535 5.7.139 Authentication unsuccessful, SMTP Auth is disabled for the Tenant.")
                    elif verb == "QUIT":
                        say("221 2.0.0 Service closing transmission channel")
                        return
                    else:
                        say("250 2.0.0 OK")
            else:
                say("* OK The Microsoft Exchange IMAP4 service is ready.")
                for _ in range(10):
                    line = f.readline().decode(errors="replace").strip()
                    if not line:
                        return
                    tag, _, rest = line.partition(" ")
                    cmd = rest.split(" ")[0].upper()
                    if cmd == "CAPABILITY":
                        say("* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS IDLE")
                        say(f"{tag} OK CAPABILITY completed.")
                    elif cmd == "AUTHENTICATE":
                        say(f"{tag} OK AUTHENTICATE completed.")
                    elif cmd == "LOGOUT":
                        say("* BYE Microsoft Exchange Server IMAP4 server signing off.")
                        say(f"{tag} OK LOGOUT completed.")
                        return
                    else:
                        say(f"{tag} BAD User is authenticated but not connected.")

    def close(self):
        self.sock.close()


class DoctorTest(unittest.TestCase):
    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="xoauth-doctor-")
        os.chmod(self.workdir, 0o700)
        if not KEEP:
            self.addCleanup(shutil.rmtree, self.workdir, True)

    def config(self, provider_over: dict | None = None, account_over: dict | None = None,
               accounts: list[dict] | None = None, proxy: dict | None = None,
               providers: list[dict] | None = None) -> str:
        if providers is None:
            providers = [harness.provider(self.workdir, **(provider_over or {}))]
        if accounts is None:
            accounts = [harness.account(SCANNER, "scanner-Pass-1", **(account_over or {}))]
        return harness.write_config(self.workdir, providers, listeners(), accounts, proxy=proxy)

    def doctor(self, cfg: str, *args: str) -> tuple[int, list[str], str]:
        r = harness.run_cli("doctor", "--config", cfg, *args, timeout=120)
        text = r.stdout + r.stderr
        self.assertNotIn(harness.MOCK_JWT_HEADER, text, "doctor printed a token")
        self.assertNotIn(tb()["client_secret"], text, "doctor printed the client secret")
        return r.returncode, r.stdout.splitlines(), text

    def line(self, lines: list[str], name_part: str) -> str:
        found = [l for l in lines if name_part in l]
        self.assertTrue(found, f"no line with {name_part!r} in:\n" + "\n".join(lines))
        return found[0]

    def json_report(self, cfg: str, *args: str) -> tuple[int, dict]:
        r = harness.run_cli("doctor", "--config", cfg, "--json", *args, timeout=120)
        return r.returncode, json.loads(r.stdout)

    # ---- the five cases of the issue ------------------------------------------------------------------
    def test_healthy_account_all_pass(self):
        cfg = self.config()
        rc, lines, text = self.doctor(cfg)
        self.assertEqual(rc, 0, text)
        marks = [l for l in lines if l.startswith(("✓", "✗", "-", "!"))]
        self.assertTrue(marks and all(l.startswith("✓") for l in marks), text)
        for proto in ("imap", "smtp", "pop3"):
            self.assertIn(f"✓ account {SCANNER}: {proto} login", text)
        self.assertIn(f"✓ account {SCANNER}: roles: IMAP.AccessAsApp, SMTP.SendAsApp, POP.AccessAsApp", text)
        self.assertIn(f"(tid {tb()['tenant_id']})", text)
        self.assertIn("IMAP.AccessAsApp, SMTP.SendAsApp, POP.AccessAsApp of Office 365 Exchange Online, "
                      "with admin consent", text)
        rc, rep = self.json_report(cfg)
        self.assertEqual(rc, 0)
        self.assertTrue(rep["ok"])
        self.assertEqual(rep["failed"], 0)
        self.assertTrue(all(c["ok"] and c["status"] == "ok" for c in rep["checks"]), rep)
        self.assertEqual({"name", "status", "ok", "detail", "fix"}, set(rep["checks"][0]))

    def test_wrong_client_secret(self):
        cfg = self.config(provider_over={"client_secret_value": "not-the-secret"})
        rc, lines, text = self.doctor(cfg)
        self.assertEqual(rc, 1, text)
        l = self.line(lines, f"account {SCANNER}: token")
        self.assertTrue(l.startswith("✗"), l)
        self.assertIn("AADSTS7000215", l)
        self.assertIn("fix: the client secret is wrong: put the secret's Value (not its ID)", l)
        self.assertNotIn("login (", text)  # no token, no login attempt
        rc, rep = self.json_report(cfg)
        self.assertEqual(rc, 1)
        self.assertFalse(rep["ok"])
        bad = [c for c in rep["checks"] if not c["ok"]]
        self.assertEqual(len(bad), 1, bad)
        self.assertIn("Value (not its ID)", bad[0]["fix"])

    def test_wrong_tenant(self):
        cfg = self.config(provider_over={"tenant": "nosuch-tenant.test"})
        rc, lines, text = self.doctor(cfg)
        self.assertEqual(rc, 1, text)
        l = self.line(lines, f"account {SCANNER}: token")
        self.assertTrue(l.startswith("✗"), l)
        self.assertIn("AADSTS90002", l)
        self.assertIn("fix: the tenant does not exist: set tenant to the directory ID (GUID)", l)

    def test_token_without_smtp_role(self):
        imap_only = next(c for c in tb()["clients"] if c["roles"] == ["IMAP.AccessAsApp"])
        cfg = self.config(provider_over={"client_id": imap_only["client_id"],
                                         "client_secret_value": imap_only["client_secret"]})
        rc, lines, text = self.doctor(cfg)
        self.assertEqual(rc, 1, text)
        l = self.line(lines, f"account {SCANNER}: roles")
        self.assertTrue(l.startswith("✗"), l)
        self.assertIn("the token lacks SMTP.SendAsApp, POP.AccessAsApp (has: IMAP.AccessAsApp)", l)
        self.assertIn(f"fix: in the app registration {imap_only['client_id']} add the application permission "
                      "SMTP.SendAsApp, POP.AccessAsApp of Office 365 Exchange Online", l)
        self.assertIn("grant admin consent", l)
        self.assertIn(f"✓ account {SCANNER}: imap login", text)
        smtp = self.line(lines, f"account {SCANNER}: smtp login")
        self.assertTrue(smtp.startswith("✗"), smtp)
        self.assertIn("fix: the token has no SMTP.SendAsApp permission", smtp)

    def test_upstream_rejects_login(self):
        # The app's token is good, but the mailbox is in a domain the app may not open: Dovecot
        # (like Exchange for a mailbox without permission) refuses the XOAUTH2 login.
        mailbox = "scanner@fabrikam.test"
        cfg = self.config(account_over={"mailbox": mailbox})
        rc, lines, text = self.doctor(cfg)
        self.assertEqual(rc, 1, text)
        self.assertIn(f"✓ account {SCANNER}: token", text)
        imap = self.line(lines, f"account {SCANNER}: imap login")
        self.assertTrue(imap.startswith("✗"), imap)
        self.assertIn(f"XOAUTH2 as {mailbox} refused: a NO [AUTHENTICATIONFAILED]", imap)
        self.assertIn("may open the mailbox (Exchange Online PowerShell): New-ServicePrincipal -AppId "
                      f"{tb()['client_id']} -ObjectId ", imap)
        self.assertRegex(imap, r"Add-MailboxPermission -Identity scanner@fabrikam\.test -User "
                               r"[0-9a-f-]{36} -AccessRights FullAccess")
        smtp = self.line(lines, f"account {SCANNER}: smtp login")
        self.assertIn("refused: 535 ", smtp)
        pop = self.line(lines, f"account {SCANNER}: pop3 login")
        self.assertIn("refused: -ERR", pop)

    def fake_upstream_config(self, protocol: str) -> tuple[str, FakeExchange]:
        fake = FakeExchange(protocol)
        self.addCleanup(fake.close)
        if protocol == "smtp":
            lst = harness.smtp_listener(upstream=f"127.0.0.1:{fake.port}", upstream_tls="implicit")
        else:
            lst = harness.listener(upstream=f"127.0.0.1:{fake.port}", upstream_tls="implicit")
        cfg = harness.write_config(self.workdir, [harness.provider(self.workdir)], [lst],
                                   [harness.account(SCANNER, "scanner-Pass-1")])
        return cfg, fake

    def test_exchange_smtp_auth_disabled(self):
        cfg, _ = self.fake_upstream_config("smtp")
        rc, lines, text = self.doctor(cfg)
        self.assertEqual(rc, 1, text)
        smtp = self.line(lines, f"account {SCANNER}: smtp login")
        self.assertTrue(smtp.startswith("✗"), smtp)
        self.assertIn("535 5.7.139", smtp)
        self.assertIn(f"Set-CASMailbox -Identity {SCANNER} -SmtpClientAuthenticationDisabled $false", smtp)
        self.assertIn("Set-TransportConfig -SmtpClientAuthenticationDisabled $false", smtp)

    def test_exchange_authenticated_but_not_connected(self):
        cfg, _ = self.fake_upstream_config("imap")
        rc, lines, text = self.doctor(cfg)
        self.assertEqual(rc, 1, text)
        imap = self.line(lines, f"account {SCANNER}: imap login")
        self.assertTrue(imap.startswith("✗"), imap)
        self.assertIn("not connected", imap)
        self.assertIn(f"New-ServicePrincipal -AppId {tb()['client_id']} -ObjectId ", imap)
        self.assertRegex(imap, rf"Add-MailboxPermission -Identity {SCANNER} -User [0-9a-f-]{{36}} "
                               r"-AccessRights FullAccess")

    # ---- more --------------------------------------------------------------------------------------
    def test_unreachable_upstream(self):
        cfg = self.config()
        with open(cfg) as f:
            text = f.read()
        imaps = tb()["dovecot"]["imaps"]["address"]
        port = harness.free_port()
        with open(cfg, "w") as f:
            f.write(text.replace(f'upstream = "{imaps}"', f'upstream = "127.0.0.1:{port}"', 1))
        rc, lines, out = self.doctor(cfg)
        self.assertEqual(rc, 1, out)
        imap = self.line(lines, f"account {SCANNER}: imap login")
        self.assertIn("connect 127.0.0.1:", imap)
        self.assertIn("fix: check the listener's upstream address and upstream_tls", imap)

    def test_invalid_config(self):
        cfg = os.path.join(self.workdir, "bad.toml")
        with open(cfg, "w") as f:
            f.write("[proxy]\nno_such_key = 1\n")
        rc, lines, text = self.doctor(cfg)
        self.assertEqual(rc, 1, text)
        self.assertTrue(lines[0].startswith("✗ config: "), text)
        self.assertIn("no_such_key", lines[0])

    def test_unknown_account_argument(self):
        cfg = self.config()
        rc, lines, text = self.doctor(cfg, "nobody@elsewhere.test")
        self.assertEqual(rc, 1, text)
        self.assertIn("✗ account nobody@elsewhere.test: no [[account]] matches this login", text)

    def test_delegated_account_not_refreshed(self):
        key = harness.token_key_file(self.workdir)
        prov = harness.delegated_provider(self.workdir)
        acct = harness.delegated_account("alice@contoso.test", "authorization_code", prov["name"],
                                         password="alice-Pass-1")
        cfg = self.config(providers=[prov], accounts=[acct], proxy={"token_key_file": key})
        rc, lines, text = self.doctor(cfg)
        self.assertIn(f"✓ provider {prov['name']}: redirect URI: register http://localhost:", text)
        self.assertIn("/sso/oauth_callback (platform \"Web\")", text)
        self.assertIn("offline_access, IMAP.AccessAsUser.All, SMTP.Send, POP.AccessAsUser.All", text)
        l = self.line(lines, "account alice@contoso.test: token")
        self.assertTrue(l.startswith("✗"), l)
        self.assertIn("fix: xoauth-proxy authorize alice@contoso.test", l)
        self.assertEqual(rc, 1)


if __name__ == "__main__":
    unittest.main()
