#!/usr/bin/env python3
"""Load generator for the concurrency figure: N IMAP sessions through the proxy, each logged in
(LOGIN) and then idle in IMAP IDLE.

Control over stdin/stdout, one line each:
  -> prints  READY {"ok": n, "failed": m, "seconds": s, "errors": {...}}   when all N have settled
  <- CHECK   every session sends DONE and must get its tagged OK back (checks none was dropped)
  -> prints  CHECKED {"alive": n, "dropped": m, "seconds": s, ...}
  <- CLOSE   (or EOF on stdin) closes every connection and exits
Bounded: gives up after --max-seconds in total, and after --phase-seconds in any one phase.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbio  # noqa: E402

COUNT = {"ready": 0, "failed": 0, "checked": 0, "dropped": 0, "pending": 0}
ERRORS: dict[str, int] = {}


def note_error(reason: str):
    key = reason[:80]
    ERRORS[key] = ERRORS.get(key, 0) + 1


class Session(nbio.NBConn):
    user = b""
    password = b""

    def on_open(self):
        self.phase = "greeting"

    def on_line(self, line: bytes):
        p = self.phase
        if p == "greeting":
            if not line.startswith(b"* OK"):
                return self.fail(f"greeting {line[:60]!r}")
            self.phase = "login"
            self.send(b"a LOGIN " + self.user + b" " + self.password + b"\r\n")
        elif p == "login":
            if line.startswith(b"* "):
                return
            if not line.startswith(b"a OK"):
                return self.fail(f"login {line[:60]!r}")
            self.phase = "idle_start"
            self.send(b"b IDLE\r\n")
        elif p == "idle_start":
            if line.startswith(b"+"):
                self.phase = "idle"
                COUNT["ready"] += 1
                COUNT["pending"] -= 1
            elif not line.startswith(b"* "):
                return self.fail(f"IDLE {line[:60]!r}")
        elif p == "idle":
            if not line.startswith(b"* "):
                self.phase = "broken"
                note_error(f"unexpected while idle {line[:60]!r}")
        elif p == "done":
            if line.startswith(b"b OK"):
                self.phase = "checked"
                COUNT["checked"] += 1
            elif not line.startswith(b"* "):
                self.phase = "broken"
                COUNT["dropped"] += 1
                note_error(f"DONE {line[:60]!r}")

    def fail(self, why: str):
        note_error(why)
        if self.phase not in ("idle", "done", "checked", "failed", "broken"):
            COUNT["failed"] += 1
            COUNT["pending"] -= 1
        self.phase = "failed"
        self.close(why)

    def on_close(self, reason: str):
        ph = getattr(self, "phase", "connecting")
        if ph in ("failed", "closing"):
            return
        if ph in ("idle", "done"):
            COUNT["dropped"] += 1
            note_error(f"dropped while {ph}: {reason}")
        elif ph == "checked":
            return
        elif ph != "broken":
            COUNT["failed"] += 1
            COUNT["pending"] -= 1
            note_error(f"{ph}: {reason}")
        self.phase = "failed"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls", action="store_true", help="implicit TLS to the proxy")
    ap.add_argument("--ca", help="CA file for --tls")
    ap.add_argument("--sessions", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=100, help="logins in flight at once")
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--phase-seconds", type=float, default=240)
    ap.add_argument("--max-seconds", type=float, default=900)
    a = ap.parse_args()
    if not a.host.startswith("127."):
        ap.error("loopback only")
    Session.user = a.user.encode()
    Session.password = a.password.encode()
    nofile = nbio.raise_nofile(a.sessions + 1000)
    if nofile < a.sessions + 100:
        print(f"READY {json.dumps({'ok': 0, 'failed': a.sessions, 'errors': {'nofile': nofile}})}",
              flush=True)
        return 2
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context(cafile=a.ca)
    loop = nbio.Loop()
    sessions: list[Session] = []
    started_at = time.monotonic()
    hard_end = started_at + a.max_seconds
    t0 = time.perf_counter()
    phase_end = time.monotonic() + a.phase_seconds
    while time.monotonic() < min(phase_end, hard_end):
        while len(sessions) < a.sessions and COUNT["pending"] < a.concurrency:
            COUNT["pending"] += 1
            try:
                sessions.append(nbio.connect_nb(loop, a.host, a.port, Session, tls=ctx,
                                                server_hostname=a.host if a.tls else None))
            except OSError as e:
                COUNT["pending"] -= 1
                COUNT["failed"] += 1
                note_error(f"connect: {e}")
                sessions.append(None)  # type: ignore[arg-type]
        if len(sessions) >= a.sessions and COUNT["pending"] <= 0:
            break
        loop.run_once(0.2)
    ramp = time.perf_counter() - t0
    print("READY " + json.dumps({"ok": COUNT["ready"], "failed": COUNT["failed"],
                                  "not_settled": COUNT["pending"], "seconds": round(ramp, 2),
                                  "errors": ERRORS}), flush=True)

    # Idle: only watch for drops and wait for a command on stdin.
    cmd_box: list[str] = []

    def on_stdin(_ev):
        line = sys.stdin.readline()
        cmd_box.append(line.strip() or "CLOSE")

    loop.sel.register(sys.stdin, nbio.R, on_stdin)
    while True:
        while not cmd_box and time.monotonic() < hard_end:
            loop.run_once(1.0)
        cmd = cmd_box.pop(0) if cmd_box else "CLOSE"
        if cmd == "CHECK":
            t1 = time.perf_counter()
            live = [s for s in sessions if s is not None and s.phase == "idle"]
            for s in live:
                s.phase = "done"
                s.send(b"DONE\r\n")
            end = min(time.monotonic() + a.phase_seconds, hard_end)
            while time.monotonic() < end and COUNT["checked"] + COUNT["dropped"] < len(live):
                loop.run_once(0.2)
            print("CHECKED " + json.dumps({"alive": COUNT["checked"], "dropped": COUNT["dropped"],
                                            "asked": len(live), "unanswered": len(live) - COUNT["checked"] - COUNT["dropped"],
                                            "seconds": round(time.perf_counter() - t1, 2),
                                            "errors": ERRORS}), flush=True)
            continue
        break
    for s in sessions:
        if s is not None and not s.closed:
            s.phase = "closing"
            s.close("closing")
    print("CLOSED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
