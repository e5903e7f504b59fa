"""A small headless-Chromium driver over the Chrome DevTools Protocol (no Playwright, no Selenium).

    with Browser() as b:
        b.goto("https://127.0.0.1:PORT/page")
        b.fill("input[name=username]", "alice@contoso.test")
        b.click("button[value=accept]")
        b.wait_for("document.querySelector('#result') !== null")
        print(b.current_url(), b.text())

Chromium runs as `chromium --headless=new --no-sandbox --disable-gpu --remote-debugging-port=0
--user-data-dir=<temp dir> about:blank`; the DevTools websocket URL is read from its stderr
("DevTools listening on ws://..."). One page target is created and attached in flattened mode,
so every command carries a sessionId. Certificate errors are ignored (--ignore-certificate-errors):
everything the tests open is on loopback and served with the test bed's own CA. The process group
and the temporary profile are always removed (close(), the context manager, and at exit).

Needs the `websocket` module (Debian: python3-websocket). When the running interpreter is not
Debian's python3 (e.g. a pyenv build), the module is taken from /usr/lib/python3/dist-packages.

Self-test against the test bed's mock identity platform:  python3 tests/integration/browser.py
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

try:
    import websocket  # python3-websocket (websocket-client)
except ImportError:  # an interpreter that does not see Debian's dist-packages
    _DIST = "/usr/lib/python3/dist-packages"
    if os.path.isdir(os.path.join(_DIST, "websocket")) and _DIST not in sys.path:
        sys.path.append(_DIST)
    try:
        import websocket
    except ImportError:
        websocket = None

DEVTOOLS_RE = re.compile(r"DevTools listening on (ws://\S+)")
START_TIMEOUT = 30.0
DEFAULT_TIMEOUT = 30.0


class BrowserError(RuntimeError):
    pass


def chromium_path() -> str | None:
    """The Chromium binary ($XOAUTH_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH)."""
    env = os.environ.get("XOAUTH_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        p = shutil.which(name)
        if p:
            return p
    return None


def unavailable_reason() -> str | None:
    """Why a Browser cannot start here (None = it can)."""
    if chromium_path() is None:
        return "chromium not found (scripts/setup.sh installs it; or set XOAUTH_CHROMIUM)"
    if websocket is None:
        return "the websocket module is missing (Debian package python3-websocket)"
    return None


def live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies, which a container's PID 1 may
    never reap, are dead and not counted)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(name))
    return out


_LIVE: "set[Browser]" = set()


@atexit.register
def _close_all():
    for b in list(_LIVE):
        b.close()


class Browser:
    """One headless Chromium with one page. Not thread-safe: use it from one thread."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, extra_args: tuple[str, ...] = (),
                 start_timeout: float = START_TIMEOUT):
        reason = unavailable_reason()
        if reason:
            raise BrowserError(reason)
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self.session: str | None = None
        self.target_id: str | None = None
        self.events: list[dict] = []          # every CDP event received, in order
        self.stderr_lines: list[str] = []     # Chromium's stderr (last lines, for diagnostics)
        self.console: list[str] = []          # page console messages and uncaught exceptions
        self._next_id = 0
        self._responses: dict[int, dict] = {}
        self.profile = tempfile.mkdtemp(prefix="xoauth-chromium-")
        _LIVE.add(self)
        try:
            self._launch(extra_args, start_timeout)
            self._attach()
        except BaseException:
            self.close()
            raise

    # --- process and connection -------------------------------------------------------------------------
    def _launch(self, extra_args, start_timeout: float):
        args = [chromium_path(), "--headless=new", "--no-sandbox", "--disable-gpu",
                "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={self.profile}", "--ignore-certificate-errors",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--disable-dev-shm-usage",
                "--disable-component-update", "--disable-breakpad", "--disable-crash-reporter",
                "--no-proxy-server", "--password-store=basic",
                "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable,Translate",
                "--window-size=1200,900", *extra_args, "about:blank"]
        # Chromium's own helpers inherit the new session: close() signals the whole group.
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        found = threading.Event()
        url_box: list[str] = []

        def pump(stream=self.proc.stderr):
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.stderr_lines.append(line)
                if len(self.stderr_lines) > 400:
                    del self.stderr_lines[:100]
                m = DEVTOOLS_RE.search(line)
                if m and not found.is_set():
                    url_box.append(m.group(1))
                    found.set()
            found.set()  # EOF: Chromium exited

        threading.Thread(target=pump, name="chromium-stderr", daemon=True).start()
        if not found.wait(start_timeout) or not url_box:
            raise BrowserError(f"Chromium did not print its DevTools URL within {start_timeout}s "
                               f"(exit={self.proc.poll()}); stderr:\n" + "\n".join(self.stderr_lines[-30:]))
        self.ws_url = url_box[0]
        # Chromium refuses DevTools websockets with an Origin header unless allowed: send none.
        self.ws = websocket.create_connection(self.ws_url, timeout=self.timeout, suppress_origin=True,
                                              enable_multithread=False)

    def _attach(self):
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        self.target_id = target["targetId"]
        att = self.send("Target.attachToTarget", {"targetId": self.target_id, "flatten": True}, session=False)
        self.session = att["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Network.enable"):
            self.send(method)
        self.send("Page.setLifecycleEventsEnabled", {"enabled": True})

    def close(self):
        """Closes the browser and removes its profile; safe to call more than once."""
        if self.ws is not None:
            try:
                self.ws.settimeout(3)
                self._send_nowait("Browser.close", {}, session=False)
            except Exception:  # noqa: BLE001 - best effort, the process is killed below anyway
                pass
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001
                pass
            self.ws = None
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)  # the group this driver created (start_new_session)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    self.proc.wait(5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            # Stray helpers of the group (zygote, utility processes) die with SIGKILL to the group.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        if self.profile:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None
        _LIVE.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- CDP plumbing --------------------------------------------------------------------------------------
    def _send_nowait(self, method: str, params: dict | None, session: bool = True) -> int:
        if self.ws is None:
            raise BrowserError("browser is closed")
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        return self._next_id

    def _receive(self, timeout: float) -> bool:
        """Reads one message (up to timeout seconds); False on timeout."""
        self.ws.settimeout(max(0.01, timeout))
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            return False
        except (websocket.WebSocketConnectionClosedException, OSError) as e:
            raise BrowserError(f"DevTools connection lost: {e!r}; Chromium exit={self.proc and self.proc.poll()}; "
                               "stderr:\n" + "\n".join(self.stderr_lines[-20:])) from e
        if not raw:
            return True
        msg = json.loads(raw)
        if "id" in msg:
            self._responses[msg["id"]] = msg
        else:
            self.events.append(msg)
            m = msg.get("method")
            p = msg.get("params", {})
            if m == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:500])
        return True

    def send(self, method: str, params: dict | None = None, session: bool = True,
             timeout: float | None = None) -> dict:
        """Sends a CDP command and waits for its result (events that arrive meanwhile are kept)."""
        cid = self._send_nowait(method, params, session)
        deadline = time.monotonic() + (timeout or self.timeout)
        while cid not in self._responses:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer to {method} within {timeout or self.timeout}s")
            self._receive(left)
        msg = self._responses.pop(cid)
        if "error" in msg:
            raise BrowserError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    def pump(self, seconds: float):
        """Processes incoming events for up to `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._receive(deadline - time.monotonic())

    def wait_event(self, method: str, predicate=None, since: int = 0, timeout: float | None = None) -> dict:
        """The first event `method` (index >= since) for which predicate(params) holds."""
        deadline = time.monotonic() + (timeout or self.timeout)
        i = since
        while True:
            while i < len(self.events):
                ev = self.events[i]
                i += 1
                if ev.get("method") == method and (predicate is None or predicate(ev.get("params", {}))):
                    return ev.get("params", {})
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no {method} event within {timeout or self.timeout}s "
                                   f"(page {self.current_url()!r})")
            self._receive(min(left, 0.5))

    # --- page API -------------------------------------------------------------------------------------------
    def mark(self) -> int:
        """An event index: navigations() / wait_for_navigation(since=...) look only after it."""
        return len(self.events)

    def goto(self, url: str, timeout: float | None = None, check: bool = True) -> str:
        """Navigates and waits for the load event. Returns Chromium's errorText ('' on success);
        with check=True a network error (e.g. connection refused) raises BrowserError."""
        since = self.mark()
        res = self.send("Page.navigate", {"url": url}, timeout=timeout)
        err = res.get("errorText", "")
        if err and check:
            raise BrowserError(f"navigation to {url} failed: {err}")
        loader = res.get("loaderId")
        if loader:  # same-document navigations have no loader and no load event
            self.wait_event("Page.lifecycleEvent",
                            lambda p: p.get("name") == "load" and p.get("loaderId") == loader,
                            since=since, timeout=timeout)
        return err

    def eval(self, js: str, timeout: float | None = None):
        """Evaluates an expression in the page (promises awaited) and returns its JSON value."""
        res = self.send("Runtime.evaluate", {"expression": js, "returnByValue": True, "awaitPromise": True,
                                             "userGesture": True}, timeout=timeout)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            text = d.get("exception", {}).get("description") or d.get("text", "")
            raise BrowserError(f"JavaScript error: {text}")
        return res.get("result", {}).get("value")

    def wait_for(self, js_condition: str, timeout: float | None = None, interval: float = 0.1):
        """Polls a JS expression until it is truthy (page changes and reloads are tolerated);
        returns its value."""
        timeout = timeout or self.timeout
        deadline = time.monotonic() + timeout
        last_err = None
        while True:
            try:
                v = self.eval(js_condition, timeout=max(1.0, deadline - time.monotonic()))
                if v:
                    return v
            except BrowserError as e:  # e.g. "Execution context was destroyed" during a navigation
                last_err = e
            if time.monotonic() >= deadline:
                raise BrowserError(f"condition not met within {timeout}s: {js_condition!r} "
                                   f"(page {self.current_url()!r}, last error {last_err}); text: "
                                   f"{self.text()[:500]!r}")
            self.pump(interval)

    def _js_element(self, selector: str) -> str:
        return (f"(() => {{ const el = document.querySelector({json.dumps(selector)}); "
                f"if (!el) throw new Error('no element matches ' + {json.dumps(selector)}); return el; }})()")

    def click(self, selector: str, timeout: float | None = None):
        """Waits for the element, scrolls it into view and clicks its centre with real mouse events
        (so a hidden or covered element is not clicked)."""
        self.wait_for(f"!!document.querySelector({json.dumps(selector)})", timeout)
        box = self.eval(f"(() => {{ const el = {self._js_element(selector)}; el.scrollIntoView({{block:'center'}});"
                        "const r = el.getBoundingClientRect(); return {x: r.left + r.width / 2, "
                        "y: r.top + r.height / 2, w: r.width, h: r.height}; })()")
        if not box or box["w"] <= 0 or box["h"] <= 0:
            raise BrowserError(f"element {selector!r} is not visible: {box}")
        hit = self.eval(f"(() => {{ const el = {self._js_element(selector)}; "
                        f"const h = document.elementFromPoint({box['x']}, {box['y']}); "
                        "return !!h && (h === el || el.contains(h)); })()")
        if not hit:
            raise BrowserError(f"element {selector!r} is covered by another element")
        for typ in ("mouseMoved", "mousePressed", "mouseReleased"):
            p = {"type": typ, "x": box["x"], "y": box["y"]}
            if typ != "mouseMoved":
                p.update(button="left", clickCount=1)
            self.send("Input.dispatchMouseEvent", p)

    def fill(self, selector: str, text: str, timeout: float | None = None):
        """Focuses an input, clears it and types text (input events fire as for a user)."""
        self.wait_for(f"!!document.querySelector({json.dumps(selector)})", timeout)
        self.eval(f"(() => {{ const el = {self._js_element(selector)}; el.focus(); "
                  "if (el.select) el.select(); el.value = ''; return true; })()")
        if text:
            self.send("Input.insertText", {"text": text})
        got = self.eval(f"{self._js_element(selector)}.value")
        if got != text:
            raise BrowserError(f"fill {selector!r}: value is {got!r}")

    def check(self, selector: str, on: bool = True):
        """Sets a checkbox."""
        self.eval(f"(() => {{ const el = {self._js_element(selector)}; if (el.checked !== {json.dumps(on)}) "
                  "el.click(); return el.checked; })()")

    def submit(self, selector: str = "form"):
        """Submits a form (requestSubmit: validation and submit events as for a button press)."""
        self.eval(f"(() => {{ const f = {self._js_element(selector)}; "
                  "if (f.requestSubmit) f.requestSubmit(); else f.submit(); return true; })()")

    def current_url(self) -> str:
        """The URL of the current history entry (for an error page: the URL that failed)."""
        try:
            h = self.send("Page.getNavigationHistory", timeout=5)
            return h["entries"][h["currentIndex"]]["url"]
        except (BrowserError, KeyError, IndexError):
            return ""

    def text(self) -> str:
        try:
            return self.eval("document.body ? document.body.innerText : ''", timeout=5) or ""
        except BrowserError:
            return ""

    def html(self) -> str:
        return self.eval("document.documentElement ? document.documentElement.outerHTML : ''") or ""

    def navigations(self, since: int = 0) -> list[str]:
        """URLs of every document request since the mark, redirects included, in order."""
        out = []
        for ev in self.events[since:]:
            if ev.get("method") == "Network.requestWillBeSent":
                p = ev.get("params", {})
                if p.get("type") == "Document":
                    out.append(p.get("request", {}).get("url", ""))
        return out

    def document_status(self, pattern: str, since: int = 0, timeout: float | None = None) -> int:
        """HTTP status of the first document response (index >= since) whose URL matches the regex."""
        rx = re.compile(pattern)
        params = self.wait_event(
            "Network.responseReceived",
            lambda p: p.get("type") == "Document" and bool(rx.search(p.get("response", {}).get("url", ""))),
            since=since, timeout=timeout)
        return int(params["response"]["status"])

    def wait_for_navigation(self, pattern: str, since: int = 0, timeout: float | None = None) -> str:
        """Waits until a document request (also a redirect target that nobody serves) matches the
        regex; returns its URL."""
        rx = re.compile(pattern)
        params = self.wait_event(
            "Network.requestWillBeSent",
            lambda p: p.get("type") == "Document" and bool(rx.search(p.get("request", {}).get("url", ""))),
            since=since, timeout=timeout)
        return params["request"]["url"]

    def screenshot(self, path: str):
        import base64
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))


# --- self-test against the mock identity platform ---------------------------------------------------------------
def _selftest() -> int:
    import http.server
    import urllib.parse
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import harness

    reason = unavailable_reason()
    if reason:
        print(f"browser self-test: {reason}", file=sys.stderr)
        return 1
    harness.testbed_info()
    received: list[str] = []

    class Catch(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            received.append(self.path)
            body = b"<html><body><p id='got'>callback received</p></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Catch)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        client = harness.ensure_delegated_clients()["web"]
        harness.mock_settings(auto_approve="")
        redirect = f"http://localhost:{srv.server_address[1]}/sso/oauth_callback"
        state = "st-" + os.urandom(6).hex()
        url = harness.authorize_url(client["client_id"], redirect, state=state)
        t0 = time.monotonic()
        with Browser() as b:
            b.goto(url)
            b.fill("input[name=username]", "alice@contoso.test")
            b.fill("input[name=password]", "alice.Passw0rd")
            b.check("input[name=consent]")
            mark = b.mark()
            b.click("button[value=accept]")
            nav = b.wait_for_navigation(r"/sso/oauth_callback\?", since=mark)
            b.wait_for("!!document.querySelector('#got')")
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(nav).query)
            assert q.get("state") == [state], nav
            assert q.get("code", [""])[0].startswith("1.AQ"), nav
            assert any(r.startswith("/sso/oauth_callback?") and "code=" in r for r in received), received
            assert b.current_url().startswith(redirect), b.current_url()
            # A redirect to a port where nothing listens is still seen as a navigation.
            dead = f"http://localhost:{harness.free_port()}/sso/oauth_callback"
            harness.mock_settings(auto_approve="alice@contoso.test")
            mark = b.mark()
            err = b.goto(harness.authorize_url(client["client_id"], dead, state="s2"), check=False)
            nav2 = b.wait_for_navigation(r"/sso/oauth_callback\?.*code=", since=mark)
            assert nav2.startswith(dead) and "state=s2" in nav2, nav2
            print(f"browser self-test: ok in {time.monotonic() - t0:.1f}s (code flow via the mock's sign-in "
                  f"form; refused redirect seen as {err or 'no error'})", file=sys.stderr)
        return 0
    finally:
        harness.mock_settings(auto_approve="")
        srv.shutdown()
        srv.server_close()


if __name__ == "__main__":
    sys.exit(_selftest())
