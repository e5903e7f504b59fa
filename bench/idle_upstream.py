#!/usr/bin/env python3
"""A minimal implicit-TLS IMAP server for the 10,000-session concurrency figure only.

Dovecot on a 2-core VM cannot hold 10,000 logged-in sessions (one imap process each, several
MB apiece), so the concurrency figure uses this stand-in: it answers the greeting, CAPABILITY,
AUTHENTICATE XOAUTH2 (initial response checked for shape: user=...^Aauth=Bearer ...^A^A),
NOOP, IDLE/DONE and LOGOUT, and otherwise keeps the connection idle.

Prints "listening on 127.0.0.1:PORT" when ready; stops on SIGTERM/SIGINT or after
--max-seconds, printing its counters as one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import signal
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbio  # noqa: E402

GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 IDLE] bench idle upstream ready\r\n"
STATS = {"accepted": 0, "logins": 0, "bad_logins": 0, "open": 0, "max_open": 0, "closed": {}}


class ImapConn(nbio.NBConn):
    idle_tag = None

    def on_open(self):
        STATS["open"] += 1
        STATS["max_open"] = max(STATS["max_open"], STATS["open"])
        self.opened = True
        self.send(GREETING)

    def on_close(self, reason):
        if getattr(self, "opened", False):
            STATS["open"] -= 1
        key = reason.split(":")[0]
        STATS["closed"][key] = STATS["closed"].get(key, 0) + 1

    def on_line(self, line: bytes):
        if self.idle_tag is not None:
            if line.upper() == b"DONE":
                self.send(self.idle_tag + b" OK IDLE terminated\r\n")
                self.idle_tag = None
            return
        parts = line.split(b" ", 2)
        if len(parts) < 2:
            self.send(b"* BAD missing command\r\n")
            return
        tag, cmd = parts[0], parts[1].upper()
        arg = parts[2] if len(parts) > 2 else b""
        if cmd == b"CAPABILITY":
            self.send(b"* CAPABILITY IMAP4rev1 SASL-IR AUTH=XOAUTH2 IDLE\r\n" + tag + b" OK done\r\n")
        elif cmd == b"AUTHENTICATE":
            mech, _, ir = arg.partition(b" ")
            ok = False
            if mech.upper() == b"XOAUTH2":
                try:
                    dec = base64.b64decode(ir, validate=True)
                    ok = dec.startswith(b"user=") and b"\x01auth=Bearer " in dec and dec.endswith(b"\x01\x01")
                except (binascii.Error, ValueError):
                    ok = False
            if ok:
                STATS["logins"] += 1
                self.send(tag + b" OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n")
            else:
                STATS["bad_logins"] += 1
                self.send(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
        elif cmd == b"IDLE":
            self.idle_tag = tag
            self.send(b"+ idling\r\n")
        elif cmd == b"LOGOUT":
            self.close_after_flush = True
            self.send(b"* BYE Logging out\r\n" + tag + b" OK Logout completed.\r\n")
        else:
            self.send(tag + b" OK done\r\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cert", required=True, help="PEM chain")
    ap.add_argument("--key", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--max-seconds", type=float, default=1200)
    a = ap.parse_args()
    if not a.host.startswith("127.") and a.host != "::1":
        ap.error("loopback only")
    nbio.raise_nofile(1 << 20)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)
    if hasattr(ssl, "OP_NO_TICKET"):
        ctx.options |= ssl.OP_NO_TICKET  # like Dovecot's default: nothing to resume here anyway

    loop = nbio.Loop()
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.host, a.port))
    ls.listen(4096)
    ls.setblocking(False)

    def on_accept(_ev):
        for _ in range(256):
            try:
                s, _addr = ls.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE: leave it in the backlog
                print(f"accept failed: {e}", file=sys.stderr, flush=True)
                return
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            STATS["accepted"] += 1
            ImapConn(loop, s, tls=ctx, server_side=True)

    loop.sel.register(ls, nbio.R, on_accept)
    stop = {"now": False}

    def on_signal(_s, _f):
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"listening on {a.host}:{ls.getsockname()[1]}", flush=True)
    end = time.monotonic() + a.max_seconds
    while not stop["now"] and time.monotonic() < end:
        loop.run_once(0.5)
    print(json.dumps(STATS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
