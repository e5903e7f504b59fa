"""Small, fast mail clients and /proc readers for the benchmark suite (Python 3 stdlib only).

Clients never parse message content: bulk data is read with recv_into() into a preallocated
buffer and only the end marker of the response is searched for (the tagged IMAP line, the POP3
"CRLF.CRLF"). Every read has a socket timeout and every loop a deadline, so nothing waits forever.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class BenchError(RuntimeError):
    pass


# --- /proc ---------------------------------------------------------------------------------------------------
def proc_cpu(pid: int) -> float:
    """utime + stime of a process in seconds (children not included)."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {key}")


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    total = sum(parts[:8])
    return total - idle, total


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class CpuMeter:
    """CPU used by a set of pids and by the whole machine between start() and stop()."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.result: dict = {}

    def start(self):
        self.t0 = time.perf_counter()
        self.c0 = {k: proc_cpu(p) for k, p in self.pids.items()}
        self.m0 = machine_jiffies()
        self.s0 = os.times()
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t0
        c1 = {k: proc_cpu(p) for k, p in self.pids.items()}
        m1 = machine_jiffies()
        s1 = os.times()
        busy = m1[0] - self.m0[0]
        total = max(1, m1[1] - self.m0[1])
        self.result = {
            "wall_s": wall,
            "cpu_s": {k: c1[k] - self.c0[k] for k in c1},
            "client_cpu_s": (s1.user - self.s0.user) + (s1.system - self.s0.system),
            "machine_busy_pct": 100.0 * busy / total,  # of all cores
        }
        return self.result


# --- helpers -------------------------------------------------------------------------------------------------
def xoauth2(user: str, token: str) -> str:
    return base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if n == 0:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


class Conn:
    """One client connection: buffered line reads before the bulk phase, raw reads during it."""

    def __init__(self, host: str, port: int, tls_ctx: ssl.SSLContext | None = None,
                 timeout: float = 30.0):
        self.host = host
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls_ctx is not None:
            self.sock = tls_ctx.wrap_socket(self.sock, server_hostname=host)
        self.buf = b""

    def starttls(self, ctx: ssl.SSLContext):
        if self.buf:
            raise BenchError("data pipelined past STARTTLS")
        self.sock = ctx.wrap_socket(self.sock, server_hostname=self.host)

    def readline(self) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 1], self.buf[i + 1:]
                return line.rstrip(b"\r\n")
            if len(self.buf) > 1 << 20:
                raise BenchError("line too long")
            d = self.sock.recv(65536)
            if not d:
                raise BenchError("connection closed by peer")
            self.buf += d

    def send(self, data: bytes):
        self.sock.sendall(data)

    def line(self, text: str):
        self.sock.sendall(text.encode() + b"\r\n")  # one write per line (see testbed README)

    def until_tag(self, tag: str, limit: int = 100000) -> bytes:
        t = tag.encode() + b" "
        for _ in range(limit):
            line = self.readline()
            if line.startswith(t):
                return line[len(t):]
        raise BenchError("no tagged reply")

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --- bulk readers --------------------------------------------------------------------------------------------
_BULK = bytearray(1 << 20)


def read_to_marker(conn: Conn, marker: bytes, initial_tail: bytes = b"") -> tuple[int, bytes]:
    """Reads raw bytes until `marker` has been seen and the line it starts is complete.
    Returns (bytes read, the text from the marker to the end of that line).
    The caller makes sure that the marker cannot occur inside the payload."""
    if conn.buf:
        raise BenchError("unexpected buffered data before the bulk phase")
    mv = memoryview(_BULK)
    keep = len(marker) + 64
    tail = initial_tail
    total = 0
    recv_into = conn.sock.recv_into
    while True:
        n = recv_into(mv)
        if n == 0:
            raise BenchError("connection closed during bulk transfer")
        total += n
        head = tail + bytes(mv[:min(n, keep)])
        i = head.find(marker)
        if i >= 0:
            rest = head[i:] + bytes(mv[min(n, keep):n])
            break
        i = _BULK.find(marker, 0, n)
        if i >= 0:
            rest = bytes(mv[i:n])
            break
        tail = bytes(mv[max(0, n - keep):n])
    while b"\n" not in rest[len(marker) - 1:]:
        d = conn.sock.recv(4096)
        if not d:
            raise BenchError("connection closed in the final line")
        total += len(d)
        rest += d
    j = rest.index(b"\n", len(marker) - 1)
    conn.buf = rest[j + 1:]
    return total, rest[:j].rstrip(b"\r")


# --- IMAP ----------------------------------------------------------------------------------------------------
def imap_login_proxy(port: int, user: str, password: str, timeout: float = 30.0) -> Conn:
    c = Conn("127.0.0.1", port, None, timeout)
    g = c.readline()
    if not g.startswith(b"* OK"):
        raise BenchError(f"proxy greeting {g[:100]!r}")
    c.line(f"a LOGIN {user} {password}")
    r = c.until_tag("a")
    if not r.startswith(b"OK"):
        raise BenchError(f"proxy LOGIN: {r[:200]!r}")
    return c


def imap_login_direct(host: str, port: int, ctx: ssl.SSLContext, user: str, token: str,
                      timeout: float = 30.0) -> Conn:
    c = Conn(host, port, ctx, timeout)
    g = c.readline()
    if not g.startswith(b"* OK"):
        raise BenchError(f"upstream greeting {g[:100]!r}")
    c.line(f"a AUTHENTICATE XOAUTH2 {xoauth2(user, token)}")
    r = c.until_tag("a")
    if not r.startswith(b"OK"):
        raise BenchError(f"direct AUTHENTICATE: {r[:200]!r}")
    return c


def imap_fetch_all(c: Conn, mailbox: str = "INBOX") -> tuple[int, float, int]:
    """SELECT, then one FETCH 1:* BODY.PEEK[] timed from the command to the tagged OK.
    Returns (bytes received, seconds, messages)."""
    c.line(f"s SELECT {mailbox}")
    exists = 0
    for _ in range(1000):
        line = c.readline()
        if line.startswith(b"* ") and line.endswith(b" EXISTS"):
            exists = int(line.split()[1])
        if line.startswith(b"s "):
            if not line.startswith(b"s OK"):
                raise BenchError(f"SELECT: {line[:200]!r}")
            break
    if exists == 0:
        raise BenchError("mailbox is empty")
    t0 = time.perf_counter()
    c.line("BF1 FETCH 1:* BODY.PEEK[]")
    n, final = read_to_marker(c, b"\r\nBF1 ", initial_tail=b"\r\n")
    dt = time.perf_counter() - t0
    if not final.startswith(b"\r\nBF1 OK"):
        raise BenchError(f"FETCH: {final[:200]!r}")
    return n, dt, exists


def imap_logout(c: Conn):
    try:
        c.line("z LOGOUT")
        c.until_tag("z", 100)
    except (OSError, BenchError):
        pass
    c.close()


# --- POP3 ----------------------------------------------------------------------------------------------------
def _pop_ok(c: Conn, what: str) -> bytes:
    r = c.readline()
    if not r.startswith(b"+OK"):
        raise BenchError(f"{what}: {r[:200]!r}")
    return r


def pop3_login_proxy(port: int, user: str, password: str, timeout: float = 30.0) -> Conn:
    c = Conn("127.0.0.1", port, None, timeout)
    _pop_ok(c, "proxy greeting")
    c.line(f"USER {user}")
    _pop_ok(c, "USER")
    c.line(f"PASS {password}")
    _pop_ok(c, "PASS")
    return c


def pop3_login_direct(host: str, port: int, ctx: ssl.SSLContext, user: str, token: str,
                      timeout: float = 30.0) -> Conn:
    c = Conn(host, port, ctx, timeout)
    _pop_ok(c, "upstream greeting")
    c.line(f"AUTH XOAUTH2 {xoauth2(user, token)}")
    _pop_ok(c, "AUTH XOAUTH2")
    return c


def pop3_retr_all(c: Conn, limit: int, deadline: float) -> tuple[int, float, int]:
    """STAT, then RETR 1..n one after the other (n <= limit), timed from the first RETR to the
    last terminator. Returns (bytes received, seconds, messages)."""
    c.line("STAT")
    count = int(_pop_ok(c, "STAT").split()[1])
    count = min(count, limit)
    if count == 0:
        raise BenchError("maildrop is empty")
    total = 0
    t0 = time.perf_counter()
    for i in range(1, count + 1):
        if time.monotonic() > deadline:
            raise BenchError("POP3 run over its time limit")
        c.line(f"RETR {i}")
        n, _ = read_to_marker(c, b"\r\n.\r\n")
        total += n
    dt = time.perf_counter() - t0
    return total, dt, count


def pop3_quit(c: Conn):
    try:
        c.line("QUIT")
        c.readline()
    except (OSError, BenchError):
        pass
    c.close()


# --- SMTP ----------------------------------------------------------------------------------------------------
def smtp_reply(c: Conn) -> tuple[int, bytes]:
    lines = []
    for _ in range(200):
        line = c.readline()
        if len(line) < 3 or not line[:3].isdigit():
            raise BenchError(f"bad SMTP reply line {line[:100]!r}")
        lines.append(line)
        if len(line) == 3 or line[3:4] == b" ":
            return int(line[:3]), b"\n".join(lines)
    raise BenchError("SMTP reply too long")


def smtp_expect(c: Conn, cmd: str | None, code: int) -> bytes:
    if cmd is not None:
        c.line(cmd)
    got, text = smtp_reply(c)
    if got != code:
        raise BenchError(f"SMTP {cmd!r}: expected {code}, got {text[:300]!r}")
    return text


def smtp_login_proxy(port: int, user: str, password: str, timeout: float = 60.0) -> Conn:
    c = Conn("127.0.0.1", port, None, timeout)
    smtp_expect(c, None, 220)
    smtp_expect(c, "EHLO bench.client", 250)
    ir = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
    smtp_expect(c, f"AUTH PLAIN {ir}", 235)
    return c


def smtp_login_direct(host: str, port: int, ctx: ssl.SSLContext, user: str, token: str,
                      timeout: float = 60.0) -> Conn:
    c = Conn(host, port, None, timeout)
    smtp_expect(c, None, 220)
    smtp_expect(c, "EHLO bench.client", 250)
    smtp_expect(c, "STARTTLS", 220)
    c.starttls(ctx)
    smtp_expect(c, "EHLO bench.client", 250)
    # The token does not fit in RFC 4954's 512 octets: no initial response (as the proxy does).
    smtp_expect(c, "AUTH XOAUTH2", 334)
    smtp_expect(c, xoauth2(user, token), 235)
    return c


def make_body(size: int, seed: bytes) -> bytes:
    """About `size` bytes of 76-column base64 text lines with CRLF (no line starts with '.')."""
    b64 = base64.b64encode(seed)
    lines = [b64[i:i + 76] for i in range(0, len(b64) - 76, 76)]
    out = bytearray()
    k = 0
    while len(out) < size:
        out += lines[k % len(lines)] + b"\r\n"
        k += 1
    return bytes(out)


def smtp_send_many(c: Conn, sender: str, rcpt: str, body: bytes, count: int, deadline: float,
                   label: str) -> tuple[int, float, int]:
    """count messages one after the other (no pipelining): MAIL, RCPT, DATA, message, '.'.
    Timed from the first MAIL to the last 250. Returns (bytes sent, seconds, messages)."""
    sent = 0
    t0 = time.perf_counter()
    done = 0
    for i in range(count):
        if time.monotonic() > deadline:
            break
        smtp_expect(c, f"MAIL FROM:<{sender}>", 250)
        smtp_expect(c, f"RCPT TO:<{rcpt}>", 250)
        smtp_expect(c, "DATA", 354)
        head = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: bench {label} {i}\r\n"
                f"Message-ID: <bench-{label}-{i}-{time.time_ns()}@bench.invalid>\r\n\r\n").encode()
        c.send(head)
        c.send(body)
        c.send(b".\r\n")
        smtp_expect(c, None, 250)
        sent += len(head) + len(body) + 3
        done += 1
    return sent, time.perf_counter() - t0, done


def smtp_quit(c: Conn):
    try:
        c.line("QUIT")
        smtp_reply(c)
    except (OSError, BenchError):
        pass
    c.close()
