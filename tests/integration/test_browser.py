#!/usr/bin/env python3
"""Sign-in through a real (headless) browser: Chromium driven over the DevTools Protocol
(tests/integration/browser.py) opens the proxy's admin page, presses "Authorize", signs in on the
mock identity platform's page (auto_approve off, so the form is filled in and submitted like a
person would), lands on the proxy's /sso/oauth_callback page, and the status page then shows the
account as authorized. Also: the device-code page of the identity platform, and the driver itself
against the mock alone.

    XOAUTH_PROXY_BIN=build/xoauth-proxy python3 tests/integration/test_browser.py [-v] [-k PATTERN]

Needs `chromium` and `python3-websocket` (scripts/setup.sh). Without a Chromium binary the tests are
reported as skipped (that is the only skip); every other problem is a failure.
Optional: XOAUTH_TESTBED_DIR, XOAUTH_KEEP_WORKDIRS=1 (as for the other suites),
XOAUTH_SCREENSHOTS=DIR (a PNG of the page when a browser test fails).
"""

from __future__ import annotations

import json
import os
import sys
import time
import unittest
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import browser  # noqa: E402
import harness  # noqa: E402
from test_delegated import LOCAL, DelegatedCase, slug  # noqa: E402

ALICE = "alice@contoso.test"
SCANNER = "scanner@contoso.test"
ENTRA = harness.ENTRA_PASSWORDS
NO_CHROMIUM = browser.chromium_path() is None
SKIP_REASON = "chromium is not installed (scripts/setup.sh installs it)"


def setUpModule():
    harness.testbed_info()
    harness.mock_reset("stats,faults,config")
    harness.ensure_delegated_clients()


def tearDownModule():
    try:
        harness.mock_reset("stats,faults,config,directory")
    except Exception as e:  # noqa: BLE001
        print(f"[tearDownModule: mock reset failed: {e}]", file=sys.stderr)


class BrowserCase(DelegatedCase):
    def open_browser(self) -> browser.Browser:
        b = browser.Browser(timeout=30)
        self.browser = b
        self.addCleanup(b.close)
        return b

    def tearDown(self):
        result = getattr(self._outcome, "result", None)
        failed = result is not None and any(getattr(t, "test_case", t) is self
                                            for t, _ in result.failures + result.errors)
        b = getattr(self, "browser", None)
        if failed and b is not None and b.ws is not None:
            print(f"\n----- browser at {b.current_url()!r} -----\n{b.text()[:2000]}\n"
                  f"console: {b.console[-10:]}\n-----", file=sys.stderr)
            shots = os.environ.get("XOAUTH_SCREENSHOTS")
            if shots:
                os.makedirs(shots, exist_ok=True)
                path = os.path.join(shots, f"{self.id()}.png")
                try:
                    b.screenshot(path)
                    print(f"[screenshot {path}]", file=sys.stderr)
                except browser.BrowserError as e:
                    print(f"[screenshot failed: {e}]", file=sys.stderr)
        super().tearDown()

    def state_cell(self, b: browser.Browser, login: str) -> str:
        sel = f"#account-{slug(login)} .state"
        return (b.wait_for(f"(document.querySelector({json.dumps(sel)}) || {{}}).textContent") or "").strip()


# --------------------------------------------------------------------------------------------------------
@unittest.skipIf(NO_CHROMIUM, SKIP_REASON)
class A_DriverAgainstTheMock(BrowserCase):
    """The driver on its own: the mock's sign-in form, a wrong password, then the redirect with a code."""

    def test_sign_in_form_and_redirect(self):
        client = harness.ensure_delegated_clients()["web"]
        redirect = f"http://localhost:{harness.free_port()}{harness.CALLBACK_PATH}"  # nothing listens
        url = harness.authorize_url(client["client_id"], redirect, state="drv-1", login_hint=ALICE)
        b = self.open_browser()
        b.goto(url)
        self.assertEqual(b.eval("document.querySelector('input[name=username]').value"), ALICE)
        b.fill("input[name=password]", "wrong-password")
        b.check("input[name=consent]")
        b.click("button[value=accept]")
        err = b.wait_for("(document.querySelector('#error') || {}).textContent")
        self.assertIn("AADSTS50126", err)
        b.fill("input[name=password]", ENTRA[ALICE])
        b.check("input[name=consent]")
        mark = b.mark()
        b.click("button[value=accept]")
        nav = b.wait_for_navigation(r"/sso/oauth_callback\?", since=mark)
        q = harness.query_of(nav)
        self.assertEqual(q.get("state"), "drv-1", nav)
        self.assertTrue(q.get("code", "").startswith("1.AQ"), nav)
        st = harness.mock_stats()["authorize"]
        self.assertGreaterEqual(st["login_failures"], 1, st)
        self.assertGreaterEqual(st["codes_issued"], 1, st)

    def test_close_removes_process_and_profile(self):
        b = browser.Browser(timeout=30)
        pid, profile = b.proc.pid, b.profile
        b.goto("about:blank")
        b.close()
        self.assertFalse(os.path.exists(profile), profile)
        self.assertEqual(browser.live_group_members(pid), [], "Chromium processes left running")


# --------------------------------------------------------------------------------------------------------
@unittest.skipIf(NO_CHROMIUM, SKIP_REASON)
class B_AdminPageSignIn(BrowserCase):
    """The administrator's path: status page → Authorize → identity platform sign-in → callback."""

    def test_authorize_button_sign_in_and_status_page(self):
        wd = self.new_workdir(self)
        prov = harness.delegated_provider(wd, "web")
        acct = harness.delegated_account(ALICE, "authorization_code", prov["name"], LOCAL[ALICE])
        cfg, idx = self.write(wd, [acct], [prov], kinds=("imap",))
        px = self.proxy(cfg, 1)
        harness.mock_settings(auto_approve="")  # the person fills in the form
        b = self.open_browser()
        b.goto(px.admin_url + "/")
        self.assertIn("not", self.state_cell(b, ALICE).lower())
        mark = b.mark()
        b.click(f"#authorize-{slug(ALICE)}")
        idp = harness.testbed_info()["idp_url"]
        b.wait_for(f"location.href.startsWith({json.dumps(idp)}) && !!document.querySelector('input[name=password]')")
        auth_nav = [u for u in b.navigations(mark) if u.startswith(idp)]
        self.assertTrue(auth_nav, b.navigations(mark))
        q = harness.query_of(auth_nav[0])
        port = urllib.parse.urlsplit(px.admin_url).port
        self.assertEqual(q.get("redirect_uri"), f"http://localhost:{port}{harness.CALLBACK_PATH}", auth_nav[0])
        self.assertEqual(q.get("code_challenge_method"), "S256", auth_nav[0])
        # the account shows as being authorized while the person signs in
        self.assertEqual(self.state(px, ALICE)["state"], "authorizing")
        b.fill("input[name=username]", ALICE)
        b.fill("input[name=password]", ENTRA[ALICE])
        b.check("input[name=consent]")
        mark = b.mark()
        t0 = time.monotonic()
        b.click("button[value=accept]")
        cb = b.wait_for_navigation(r"^http://localhost:%d/sso/oauth_callback\?" % port, since=mark)
        self.assertIn("code=", cb)
        self.assertEqual(b.document_status(r"/sso/oauth_callback\?", since=mark), 200)
        b.wait_for("document.readyState === 'complete' && location.pathname === '/sso/oauth_callback'")
        print(f"\n[callback page after {time.monotonic() - t0:.2f}s: {b.text()[:200]!r}]", file=sys.stderr)
        self.assertEqual(self.wait_state(px, ALICE, "authorized")["state"], "authorized")
        b.goto(px.admin_url + "/")
        cell = self.state_cell(b, ALICE).lower()
        self.assertIn("authorized", cell)
        self.assertNotIn("not", cell)
        # the page never shows a token
        self.assert_no_token_leak(b.html(), "the status page")
        self.assert_imap_ok(px.ports[idx["imap"]], ALICE, LOCAL[ALICE])

    def test_device_code_page(self):
        """A device_code account: the code from the admin API is entered on the identity platform's
        device login page in the browser."""
        wd = self.new_workdir(self)
        prov = harness.delegated_provider(wd, "public")
        acct = harness.delegated_account(SCANNER, "device_code", prov["name"], LOCAL[SCANNER])
        cfg, idx = self.write(wd, [acct], [prov], kinds=("imap",))
        harness.mock_settings(device_interval=1)
        px = self.proxy(cfg, 1)
        out = self.start_api_authorization(px, SCANNER, device=True)
        b = self.open_browser()
        b.goto(out["verification_uri"])
        b.fill("input[name=user_code]", out["user_code"])
        b.fill("input[name=username]", SCANNER)
        b.fill("input[name=password]", ENTRA[SCANNER])
        b.check("input[name=consent]")
        b.click("button[value=accept]")
        b.wait_for("!!document.querySelector('#result.approved')")
        self.wait_state(px, SCANNER, "authorized")
        self.assert_imap_ok(px.ports[idx["imap"]], SCANNER, LOCAL[SCANNER])


def main() -> int:
    if NO_CHROMIUM:
        print(f"test_browser: SKIPPED: {SKIP_REASON}", file=sys.stderr)
    else:
        why = browser.unavailable_reason()
        if why:
            print(f"test_browser: {why}", file=sys.stderr)
            return 2
    return harness.run_tests("test_browser")


if __name__ == "__main__":
    sys.exit(main())
