"""A small TCP fault proxy for the integration tests (issue 8, Python 3 stdlib only).

    fp = FaultProxy(("127.0.0.1", 993))              # listens on 127.0.0.1, port 0
    fp.set(Fault("reset", direction="s2c", after_bytes=10))
    ... point the system under test at ("127.0.0.1", fp.port) ...
    fp.close()

Every accepted connection copies the fault that is current when it is accepted (set() changes it
for later connections only) and forwards bytes both ways until the fault triggers. A Fault is an
action and a trigger:

  action   "pass"   forward forever (no fault)
           "reset"  abort both sides with a TCP RST (SO_LINGER 0), no TLS close_notify
           "close"  end both sides cleanly (TLS close_notify when TLS is used, then FIN):
                    with after_bytes this is a truncation
           "stall"  stop forwarding and keep both sockets open (what arrives is read and
                    dropped) until the client closes or the fault proxy is closed
  trigger  on_accept=True                at once, before any TLS handshake or upstream connect
                                         (reset = "connection reset at once")
           direction="c2s"/"s2c" with
             after_bytes=N               after N bytes in that direction were forwarded
                                         (N=0: as soon as the first chunk arrives, nothing forwarded)
             pattern=b"..."              when the pattern is seen in that direction; the bytes
                                         before it are forwarded, the pattern and what follows not

Options: tls=(cert_file, key_file) terminates TLS toward the client with that certificate (so
the test can present an expired/self-signed/wrong-host certificate, and see the plaintext);
target_tls=SSLContext originates TLS toward the target (re-encryption, to put the proxy in front
of an implicit-TLS server and still see the plaintext). close_listener() stops listening: new
connections are then refused (ECONNREFUSED).

Observations for assertions: accepted, handshake_failures, triggered, events (the last 2000),
c2s / s2c byte counters (plaintext after TLS termination), wait_for(pred, timeout).
Every thread is a daemon; every blocking call has a timeout; close() ends everything.
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass

IO_TIMEOUT = 10.0      # any single blocking send/recv/handshake
POLL = 0.2             # select() granularity (to notice close())


@dataclass(frozen=True)
class Fault:
    action: str = "pass"               # pass | reset | close | stall
    on_accept: bool = False
    direction: str | None = None       # c2s | s2c
    after_bytes: int | None = None
    pattern: bytes | None = None

    def __post_init__(self):
        if self.action not in ("pass", "reset", "close", "stall"):
            raise ValueError(f"unknown action {self.action!r}")
        if self.action != "pass" and not self.on_accept:
            if self.direction not in ("c2s", "s2c"):
                raise ValueError("a fault needs on_accept=True or direction c2s/s2c")
            if (self.after_bytes is None) == (self.pattern is None):
                raise ValueError("give exactly one of after_bytes / pattern")


PASS = Fault()


def _rst(sock: socket.socket | None):
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _clean_close(sock: socket.socket | None):
    if sock is None:
        return
    try:
        sock.settimeout(2.0)
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock = sock.unwrap()  # close_notify (waits at most the timeout for the peer's)
            except (OSError, ValueError, ssl.SSLError):
                pass
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
    except OSError:
        pass


class _Direction:
    """Trigger bookkeeping for one direction of one connection."""

    def __init__(self, name: str, fault: Fault):
        self.name = name
        self.fault = fault
        self.armed = fault.action != "pass" and not fault.on_accept and fault.direction == name
        self.forwarded = 0
        self.tail = b""

    def cut(self, chunk: bytes) -> int | None:
        """Where in chunk the fault triggers (bytes before it are forwarded), or None."""
        if not self.armed:
            return None
        f = self.fault
        if f.after_bytes is not None:
            left = f.after_bytes - self.forwarded
            return max(0, left) if len(chunk) >= left else None
        hay = self.tail + chunk
        i = hay.find(f.pattern)
        self.tail = hay[-(len(f.pattern) - 1):] if len(f.pattern) > 1 else b""
        if i < 0:
            return None
        return max(0, i - (len(hay) - len(chunk)))


class FaultProxy:
    def __init__(self, target: tuple[str, int], fault: Fault = PASS, tls: tuple[str, str] | None = None,
                 target_tls: ssl.SSLContext | None = None, target_server_name: str | None = None,
                 host: str = "127.0.0.1"):
        self.target = target
        self._fault = fault
        self.server_ctx = None
        if tls:
            self.server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.server_ctx.load_cert_chain(tls[0], tls[1])
        self.target_tls = target_tls
        self.target_server_name = target_server_name or target[0]
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closed = False
        self._socks: set = set()
        self.accepted = 0
        self.handshake_failures = 0
        self.triggered = 0
        self.events: deque[str] = deque(maxlen=2000)
        self.c2s = 0
        self.s2c = 0
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(64)
        self._listener.settimeout(POLL)
        self.host, self.port = self._listener.getsockname()[:2]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"faultproxy-{self.port}", daemon=True)
        self._acceptor.start()

    # --- control ------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def set(self, fault: Fault):
        with self._lock:
            self._fault = fault

    def set_tls(self, cert_file: str, key_file: str):
        """Presents another certificate on later connections."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        with self._lock:
            self.server_ctx = ctx

    def close_listener(self):
        """Stops listening: connecting to the port is refused from now on."""
        with self._lock:
            lst, self._listener = self._listener, None
        if lst is not None:
            lst.close()
        self._acceptor.join(5)

    def close(self):
        with self._lock:
            self._closed = True
            socks = list(self._socks)
            self._cond.notify_all()
        self.close_listener()
        for s in socks:
            _rst(s)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait_for(self, pred, timeout: float, what: str = "condition"):
        """Waits (bounded) until pred(self) is true; AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fault proxy: timed out after {timeout}s waiting for {what}; "
                                         f"events {list(self.events)[-10:]}")
                self._cond.wait(min(left, POLL))

    # --- internals --------------------------------------------------------------------------------------
    def _event(self, text: str, **counters):
        with self._cond:
            self.events.append(text)
            for k, v in counters.items():
                setattr(self, k, getattr(self, k) + v)
            self._cond.notify_all()

    def _track(self, s):
        with self._lock:
            if self._closed:
                return False
            self._socks.add(s)
            return True

    def _accept_loop(self):
        while True:
            with self._lock:
                lst = self._listener
            if lst is None or self._closed:
                return
            try:
                conn, _ = lst.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                fault, ctx = self._fault, self.server_ctx
            self._event("accept", accepted=1)
            threading.Thread(target=self._serve, args=(conn, fault, ctx), daemon=True).start()

    def _serve(self, client: socket.socket, fault: Fault, ctx: ssl.SSLContext | None):
        upstream = None
        if not self._track(client):
            _rst(client)
            return
        try:
            if fault.on_accept and fault.action != "pass":
                self._act(fault.action, client, None, "on accept")
                return
            client.settimeout(IO_TIMEOUT)
            if ctx is not None:
                try:
                    client = ctx.wrap_socket(client, server_side=True)
                except (OSError, ssl.SSLError) as e:
                    self._event(f"client TLS handshake failed: {e.__class__.__name__}", handshake_failures=1)
                    _rst(client)
                    return
                self._track(client)
            try:
                upstream = socket.create_connection(self.target, timeout=IO_TIMEOUT)
                self._track(upstream)
                if self.target_tls is not None:
                    upstream = self.target_tls.wrap_socket(upstream, server_hostname=self.target_server_name)
                    self._track(upstream)
            except (OSError, ssl.SSLError) as e:
                self._event(f"target connect failed: {e}")
                _rst(upstream)
                _rst(client)
                return
            self._pump(client, upstream, fault)
        except Exception as e:  # noqa: BLE001 - a fault proxy thread must never die loudly
            self._event(f"error: {e!r}")
            _rst(client)
            _rst(upstream)
        finally:
            with self._lock:
                self._socks.discard(client)
                self._socks.discard(upstream)

    def _act(self, action: str, client, upstream, where: str):
        self._event(f"{action} {where}", triggered=1)
        if action == "reset":
            _rst(client)
            _rst(upstream)
        elif action == "close":
            _clean_close(upstream)
            _clean_close(client)
        elif action == "stall":
            self._stall(client, upstream)

    def _stall(self, client, upstream):
        socks = [s for s in (client, upstream) if s is not None]
        while socks and not self._closed:
            ready = [s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                try:
                    ready, _, _ = select.select(socks, [], [], POLL)
                except (OSError, ValueError):
                    break
            for s in ready:
                try:
                    data = s.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                except (OSError, ssl.SSLError):
                    data = b""
                if not data:
                    if s is client:
                        socks = []  # the stalled client gave up: release the server side too
                        break
                    socks.remove(s)
        self._event("stall ended")
        _rst(client)
        _rst(upstream)

    def _pump(self, client, upstream, fault: Fault):
        dirs = {id(client): (_Direction("c2s", fault), upstream, "c2s"),
                id(upstream): (_Direction("s2c", fault), client, "s2c")}
        socks = [client, upstream]
        while not self._closed:
            ready = [s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                try:
                    ready, _, _ = select.select(socks, [], [], POLL)
                except (OSError, ValueError):
                    break
            for s in ready:
                d, other, name = dirs[id(s)]
                try:
                    data = s.recv(65536)
                except (socket.timeout, ssl.SSLWantReadError):
                    continue
                except (OSError, ssl.SSLError):
                    data = b""
                if not data:
                    # One side ended: end the other (a reset stays a reset: RST both).
                    self._event(f"{name} ended")
                    _clean_close(other)
                    _clean_close(s)
                    return
                cut = d.cut(data)
                send = data if cut is None else data[:cut]
                if send:
                    try:
                        other.sendall(send)
                    except (OSError, ssl.SSLError):
                        self._event(f"{name} send failed")
                        _rst(client)
                        _rst(upstream)
                        return
                    d.forwarded += len(send)
                    self._event(f"{name} {len(send)}", **{name: len(send)})
                if cut is not None:
                    if send and fault.action == "reset":
                        time.sleep(0.05)  # let what was forwarded leave before the RST discards it
                    self._act(fault.action, client, upstream, f"{name} after {d.forwarded} bytes")
                    return
        _rst(client)
        _rst(upstream)

