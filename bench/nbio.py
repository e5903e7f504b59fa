"""A tiny non-blocking line-protocol engine (selectors/epoll + ssl), for tens of thousands of
mostly idle TLS or plain connections in one Python process.

asyncio is not used on purpose: its SSL transport allocates a 256 KiB read buffer per
connection (Python 3.11), which would make 10,000 sessions cost gigabytes in the load tools.
"""

from __future__ import annotations

import errno
import selectors
import socket
import ssl

R = selectors.EVENT_READ
W = selectors.EVENT_WRITE


class Loop:
    def __init__(self):
        self.sel = selectors.DefaultSelector()

    def run_once(self, timeout: float):
        for key, ev in self.sel.select(timeout):
            key.data(ev)


class NBConn:
    """One connection. Subclasses override on_open(), on_line(bytes) and on_close(reason)."""

    max_line = 65536

    def __init__(self, loop: Loop, sock: socket.socket, *, connecting: bool = False,
                 tls: ssl.SSLContext | None = None, server_side: bool = False,
                 server_hostname: str | None = None):
        self.loop = loop
        self.raw = sock
        self.sock = sock
        self.tls = tls
        self.server_side = server_side
        self.server_hostname = server_hostname
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closed = False
        self.close_after_flush = False
        self.events = 0
        self.state = "connecting" if connecting else "new"
        loop.sel.register(sock, W if connecting else R, self._on_event)
        self.events = W if connecting else R
        if not connecting:
            self._established()

    # --- plumbing ---
    def _set_events(self, ev: int):
        if ev != self.events and not self.closed:
            self.loop.sel.modify(self.sock, ev, self._on_event)
            self.events = ev

    def _established(self):
        if self.tls is not None:
            # Unregister before wrapping: wrap_socket() detaches the plain socket object.
            self.loop.sel.unregister(self.raw)
            self.sock = self.tls.wrap_socket(self.raw, server_side=self.server_side,
                                             server_hostname=self.server_hostname,
                                             do_handshake_on_connect=False)
            self.loop.sel.register(self.sock, R, self._on_event)
            self.events = R
            self.state = "handshake"
            self._handshake()
        else:
            self.state = "open"
            self.on_open()

    def _handshake(self):
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._set_events(R)
            return
        except ssl.SSLWantWriteError:
            self._set_events(W)
            return
        except (ssl.SSLError, OSError) as e:
            self.close(f"TLS handshake failed: {e}")
            return
        self.state = "open"
        self._set_events(R)
        self.on_open()

    def _on_event(self, ev: int):
        if self.closed:
            return
        if self.state == "connecting":
            err = self.raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.close(f"connect failed: {errno.errorcode.get(err, err)}")
                return
            self._set_events(R)
            self._established()
            return
        if self.state == "handshake":
            self._handshake()
            return
        if ev & W:
            self._flush()
        if ev & R and not self.closed:
            self._read()

    def _read(self):
        while not self.closed:
            try:
                d = self.sock.recv(16384)
            except (ssl.SSLWantReadError, BlockingIOError):
                break
            except ssl.SSLWantWriteError:
                self._set_events(R | W)
                break
            except (ssl.SSLError, OSError) as e:
                self.close(f"read error: {e}")
                return
            if not d:
                self.close("eof")
                return
            self.inbuf += d
            while not self.closed:
                i = self.inbuf.find(b"\n")
                if i < 0:
                    if len(self.inbuf) > self.max_line:
                        self.close("line too long")
                    break
                line = bytes(self.inbuf[:i]).rstrip(b"\r")
                del self.inbuf[:i + 1]
                self.on_line(line)

    def _flush(self):
        while self.outbuf and not self.closed:
            try:
                n = self.sock.send(self.outbuf)
            except (ssl.SSLWantWriteError, BlockingIOError):
                self._set_events(R | W)
                return
            except ssl.SSLWantReadError:
                self._set_events(R)
                return
            except (ssl.SSLError, OSError) as e:
                self.close(f"write error: {e}")
                return
            del self.outbuf[:n]
        if not self.closed:
            if self.close_after_flush:
                self.close("closed by us")
                return
            self._set_events(R)

    # --- API ---
    def send(self, data: bytes):
        if self.closed:
            return
        self.outbuf += data
        self._flush()

    def close(self, reason: str = "closed"):
        if self.closed:
            return
        self.closed = True
        try:
            self.loop.sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        self.on_close(reason)

    def on_open(self):
        pass

    def on_line(self, line: bytes):
        pass

    def on_close(self, reason: str):
        pass


def connect_nb(loop: Loop, host: str, port: int, cls, *args, **kw):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rc = s.connect_ex((host, port))
    if rc not in (0, errno.EINPROGRESS):
        s.close()
        raise OSError(rc, errno.errorcode.get(rc, str(rc)))
    return cls(loop, s, *args, connecting=True, **kw)


def raise_nofile(want: int) -> int:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(want, hard) if hard != resource.RLIM_INFINITY else want
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
