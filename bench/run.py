#!/usr/bin/env python3
"""xoauth-proxy benchmark suite (issue 7). Normally started by scripts/bench.sh.

Starts its own test bed (mock identity platform, Dovecot, Postfix) in OUT/testbed, tunes it for
load, seeds large mailboxes, runs the figures (each against the direct path in the same run),
prints a table and writes OUT/bench-results.{md,json}. Stops everything it started.
Every load loop is bounded in count and in time; everything is on 127.0.0.1.

Figures: throughput (IMAP FETCH, POP3 RETR; also gives cpu = proxy CPU s/GB vs AES-256-GCM),
latency (warm-token logins), smtp (10 KB and 10 MB mails), storm (cold-token login storm),
concurrency (10,000 idle IMAP sessions).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "testbed"))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import benchlib as bl  # noqa: E402
import nbio  # noqa: E402
import testbed  # noqa: E402

FIGURES = ["throughput", "latency", "smtp", "storm", "concurrency"]
ALIASES = {"cpu": "throughput", "relay": "throughput", "login": "latency", "idle": "concurrency"}

SIZES = {
    "full": dict(imap_msgs=400, imap_msg_kib=512, pop_msgs=20, pop_msg_mib=10, rounds=5,
                 logins=1000, sessions=10000, idle_seconds=30, storm_accounts=100,
                 storm_per_account=10, smtp_small=200, smtp_big=10, smtp_rounds=2,
                 plain_variant=True),
    "quick": dict(imap_msgs=40, imap_msg_kib=512, pop_msgs=3, pop_msg_mib=10, rounds=1,
                  logins=100, sessions=500, idle_seconds=5, storm_accounts=20,
                  storm_per_account=10, smtp_small=20, smtp_big=2, smtp_rounds=1,
                  plain_variant=False),
}

PASSWORD = "Bench-pass-7"  # an IMAP atom: no quoting needed
DOMAIN = "contoso.test"
BULK_USER = f"bulk@{DOMAIN}"
POP_USER = f"popbulk@{DOMAIN}"
LAT_USER = f"alice@{DOMAIN}"
SMTP_USER = f"scanner@{DOMAIN}"
SMTP_RCPT = f"receiver@{DOMAIN}"
IDLE_USER = f"idle@{DOMAIN}"


def log(msg: str):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str):
        if self.left() <= 0:
            raise bl.BenchError(f"overall time limit reached during {what}")


# --- test bed preparation -----------------------------------------------------------------------------------
def tb_paths(d: str) -> dict:
    return testbed._paths(d)  # read-only use of the test bed's own layout


def add_dovecot_users(d: str, users: list[str]):
    p = tb_paths(d)
    with open(p["dc_users"]) as f:
        have = {line.split(":")[0] for line in f if line.strip()}
    new = [u for u in users if u not in have]
    if new:
        with open(p["dc_users"], "a") as f:
            f.write("".join(f"{u}:::::::\n" for u in new))


def tune_dovecot(d: str, limit: int):
    """Raises Dovecot's process and client limits so that the upstream, not the proxy, is never
    the bottleneck of the login storm (1,000 logins at once: one imap-login and one imap
    process each in Dovecot's default high-security mode). Reloads the running master (SIGHUP)."""
    p = tb_paths(d)
    with open(p["dc_conf"]) as f:
        conf = f.read()
    new = re.sub(r"process_limit = \d+", f"process_limit = {limit}", conf)
    new = re.sub(r"client_limit = \d+", f"client_limit = {limit * 5}", new)
    if new == conf:
        return
    with open(p["dc_conf"], "w") as f:
        f.write(new)
    chk = subprocess.run(["doveconf", "-c", p["dc_conf"], "-n"], capture_output=True, text=True)
    if chk.returncode != 0:
        raise bl.BenchError(f"doveconf rejected the tuned config: {chk.stderr}")
    pid = testbed._dovecot_running(p)
    if not pid:
        raise bl.BenchError("dovecot is not running")
    os.kill(pid, signal.SIGHUP)
    time.sleep(1.0)


def seed_maildir(mail_root: str, user: str, count: int, size: int, tag: str) -> int:
    """count messages of about `size` bytes (LF line ends, as Dovecot stores them) in user's INBOX,
    written as Maildir files owned by uid mail. Returns the bytes written."""
    local, dom = user.split("@")
    root = os.path.join(mail_root, dom, local, "Maildir")
    marker = os.path.join(root, f".bench-seeded-{tag}-{count}-{size}")
    if os.path.exists(marker):
        return 0
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    body = bl.make_body(size, os.urandom(3 << 20)).replace(b"\r\n", b"\n")
    written = 0
    t0 = 1700000000
    for i in range(1, count + 1):
        head = (f"From: Bench <bench@example.net>\nTo: {user}\nSubject: bench {tag} {i}\n"
                f"Date: Tue, 14 Nov 2023 22:13:20 +0000\nMessage-ID: <bench-{tag}-{i}@bench.invalid>\n"
                f"MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n").encode()
        msg = head + body
        vsize = len(msg) + msg.count(b"\n")
        name = f"{t0 + i}.M{i}P{os.getpid()}.bench,S={len(msg)},W={vsize}:2,S"
        with open(os.path.join(root, "cur", name), "wb") as f:
            f.write(msg)
        written += len(msg)
    for dirpath, _dirs, files in os.walk(os.path.join(mail_root, dom, local)):
        os.chown(dirpath, testbed.MAIL_UID, testbed.MAIL_UID)
        os.chmod(dirpath, 0o700)
        for fn in files:
            os.chown(os.path.join(dirpath, fn), testbed.MAIL_UID, testbed.MAIL_UID)
    with open(marker, "w") as f:
        f.write("seeded\n")
    return written


def children_cpu(ppid: int) -> float:
    """CPU seconds of ppid's live direct children (Dovecot's imap/pop3, Postfix's smtpd...)."""
    total = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                data = f.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        if int(fields[1]) == ppid:
            total += (int(fields[11]) + int(fields[12])) / bl.CLK_TCK
    return total


def proc_nofile(pid: int) -> int:
    """The soft 'Max open files' limit of a process."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise bl.BenchError("no open-file limit in /proc/<pid>/limits")


def thread_cpu(pid: int) -> dict:
    """{tid: (comm, CPU seconds)} for every thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        out[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / bl.CLK_TCK)
    return out


def time_hash_password(runs: int = 3) -> float:
    """Seconds for one argon2id hash with the proxy's parameters (best of a few hash-password
    runs, process start included, so slightly high)."""
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([os.environ["XOAUTH_PROXY_BIN"], "hash-password"], input="x" * 12 + "\n",
                       capture_output=True, text=True, timeout=60)
        best = min(best, time.perf_counter() - t0)
    return best


def postfix_queue_empty(info: dict) -> bool:
    r = subprocess.run(["postqueue", "-c", info["postfix_conf_dir"], "-p"], capture_output=True,
                       text=True, timeout=30)
    return "Mail queue is empty" in r.stdout


def wait_queue_empty(info: dict, seconds: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if postfix_queue_empty(info):
            return time.monotonic() - t0
        time.sleep(0.25)
    raise bl.BenchError(f"Postfix queue not empty after {seconds}s")


def openssl_aes_gcm(seconds: int = 3) -> dict:
    """Bytes per CPU second of AES-256-GCM at 16,384-byte blocks (openssl speed counts user CPU
    time, so a busy shared machine does not lower the figure much)."""
    r = subprocess.run(["openssl", "speed", "-evp", "aes-256-gcm", "-bytes", "16384", "-seconds",
                        str(seconds), "-mr"], capture_output=True, text=True, timeout=120)
    m = re.search(r"^\+F:\d+:[^:]+:([0-9.]+)\s*$", r.stdout, re.M)
    if not m:
        raise bl.BenchError(f"cannot parse openssl speed output: {r.stdout[-500:]} {r.stderr[-500:]}")
    rate = float(m.group(1))
    return {"bytes_per_cpu_s": rate, "s_per_gb": 1e9 / rate,
            "version": subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()}


# --- the suite --------------------------------------------------------------------------------------------------
class Suite:
    def __init__(self, args, harness):
        self.a = args
        self.h = harness
        self.sz = SIZES["quick" if args.quick else "full"]
        self.tb_dir = os.path.join(args.out, "testbed")
        self.work = os.path.join(args.out, "work")
        self.rows: list[dict] = []
        self.details: dict = {}
        self.proxies: list = []
        self.children: list[subprocess.Popen] = []
        self.deadline = Deadline(args.max_minutes * 60)
        self.info: dict = {}
        self.token = ""

    # --- rows ---
    def row(self, figure, proxy, direct, ratio, target, met, unit="", note=""):
        self.rows.append({"figure": figure, "proxy": proxy, "direct": direct, "ratio": ratio,
                          "target": target, "met": met, "unit": unit, "note": note})

    # --- setup ---
    def setup_testbed(self):
        if os.path.isdir(self.tb_dir):
            testbed.stop(self.tb_dir)
            shutil.rmtree(self.tb_dir, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work, exist_ok=True)
        t0 = time.monotonic()
        self.info = testbed.start(self.tb_dir)
        log(f"test bed up in {time.monotonic() - t0:.1f}s ({self.tb_dir})")
        users = [BULK_USER, POP_USER, IDLE_USER] + [self.storm_user(i) for i in range(self.sz["storm_accounts"])]
        add_dovecot_users(self.tb_dir, users)
        tune_dovecot(self.tb_dir, limit=max(1500, self.sz["storm_accounts"] * self.sz["storm_per_account"] + 500))
        self.token = testbed.fetch_token(self.info)
        self.ctx = testbed.ssl_context(self.info)
        self.dc_master = testbed._dovecot_running(tb_paths(self.tb_dir))
        self.pf_master = testbed._postfix_running(tb_paths(self.tb_dir))

    @staticmethod
    def storm_user(i: int) -> str:
        return f"storm{i:03d}@{DOMAIN}"

    def start_proxy(self, name: str, providers, listeners, accounts, proxy_over=None):
        wd = os.path.join(self.work, name)
        os.makedirs(wd, exist_ok=True)
        px = {"log_level": "info"}
        px.update(proxy_over or {})
        cfg = self.h.write_config(wd, providers, listeners, accounts, proxy=px)
        p = self.h.Proxy(cfg, len(listeners), wd).start()
        self.proxies.append(p)
        return p

    def stop_proxy(self, p):
        p.stop()
        if p in self.proxies:
            self.proxies.remove(p)

    def main_proxy(self):
        if getattr(self, "_main", None) is None:
            wd = os.path.join(self.work, "main")
            os.makedirs(wd, exist_ok=True)
            h = self.h
            prov = h.provider(wd, "contoso")
            listeners = [h.listener("none", "imaps"),
                         h.listener("none", "pop3s", protocol="pop3"),
                         h.smtp_listener("none", "submission")]
            accts = [h.account(u, PASSWORD, "contoso") for u in (BULK_USER, POP_USER, LAT_USER, SMTP_USER)]
            self._main = self.start_proxy("main", [prov], listeners, accts)
            log(f"main proxy pid {self._main.proc.pid} ports {self._main.ports}")
        return self._main

    def cleanup(self):
        for c in self.children:
            if c.poll() is None:
                c.terminate()
                try:
                    c.wait(10)
                except subprocess.TimeoutExpired:
                    c.kill()
                    c.wait(5)
        for p in list(self.proxies):
            self.stop_proxy(p)
        if os.path.isdir(self.tb_dir):
            ok = testbed.stop(self.tb_dir)
            log(f"test bed stopped ({'ok' if ok else 'NOT all processes ended'})")
            if ok and not self.a.keep_testbed:
                shutil.rmtree(self.tb_dir, ignore_errors=True)

    # --- figure 1 and 6: relay throughput, CPU per GB ---
    def fig_throughput(self):
        sz = self.sz
        mail = self.info["mail_root"]
        t0 = time.monotonic()
        w1 = seed_maildir(mail, BULK_USER, sz["imap_msgs"], sz["imap_msg_kib"] * 1024, "imap")
        w2 = seed_maildir(mail, POP_USER, sz["pop_msgs"], sz["pop_msg_mib"] << 20, "pop")
        log(f"seeded {(w1 + w2) / 1e6:.0f} MB in {time.monotonic() - t0:.1f}s")
        aes = openssl_aes_gcm(3)
        log(f"openssl speed aes-256-gcm 16384: {aes['bytes_per_cpu_s'] / 1e9:.2f} GB per CPU second")
        px = self.main_proxy()
        imap_port, pop_port = px.ports[0], px.ports[1]
        dc = self.info["dovecot"]
        pid = px.proc.pid

        def run(kind: str, path: str) -> dict:
            self.deadline.check(f"{kind} {path}")
            if kind == "imap":
                c = (bl.imap_login_proxy(imap_port, BULK_USER, PASSWORD) if path == "proxy" else
                     bl.imap_login_direct("127.0.0.1", dc["imaps"]["port"], self.ctx, BULK_USER, self.token))
            else:
                c = (bl.pop3_login_proxy(pop_port, POP_USER, PASSWORD) if path == "proxy" else
                     bl.pop3_login_direct("127.0.0.1", dc["pop3s"]["port"], self.ctx, POP_USER, self.token))
            meter = bl.CpuMeter({"proxy": pid}).start()
            dc0 = children_cpu(self.dc_master)
            if kind == "imap":
                n, dt, msgs = bl.imap_fetch_all(c)
            else:
                n, dt, msgs = bl.pop3_retr_all(c, 10000, time.monotonic() + 300)
            m = meter.stop()
            dcs = children_cpu(self.dc_master) - dc0
            (bl.imap_logout if kind == "imap" else bl.pop3_quit)(c)
            r = {"kind": kind, "path": path, "bytes": n, "seconds": dt, "messages": msgs,
                 "mb_s": n / 1e6 / dt, "proxy_cpu_s": m["cpu_s"]["proxy"] if path == "proxy" else 0.0,
                 "client_cpu_s": m["client_cpu_s"], "dovecot_cpu_s": dcs,
                 "machine_busy_pct": m["machine_busy_pct"]}
            log(f"  {kind:4} {path:6} {n / 1e6:7.1f} MB in {dt:6.2f}s = {r['mb_s']:6.1f} MB/s  "
                f"cpu: proxy {r['proxy_cpu_s']:.2f}s client {r['client_cpu_s']:.2f}s "
                f"dovecot {dcs:.2f}s  machine busy {r['machine_busy_pct']:.0f}%")
            return r

        runs = []
        log("throughput warm-up (page cache, Dovecot index, proxy token and password cache)")
        for kind in ("imap", "pop3"):
            run(kind, "direct")
            run(kind, "proxy")
        for rnd in range(sz["rounds"]):
            order = ("direct", "proxy") if rnd % 2 == 0 else ("proxy", "direct")
            for kind in ("imap", "pop3"):
                for path in order:
                    runs.append(run(kind, path))
        self.details["throughput"] = {"runs": runs, "aes": aes}
        for kind, label in (("imap", "IMAP FETCH 1:* BODY.PEEK[]"), ("pop3", "POP3 RETR")):
            pr = [r["mb_s"] for r in runs if r["kind"] == kind and r["path"] == "proxy"]
            dr = [r["mb_s"] for r in runs if r["kind"] == kind and r["path"] == "direct"]
            mb = runs[0]["bytes"] / 1e6 if kind == "imap" else next(r["bytes"] for r in runs if r["kind"] == "pop3") / 1e6
            p, d = bl.median(pr), bl.median(dr)
            self.row(f"1. {label} throughput, {mb:.0f} MB (MB/s, median of {len(pr)})",
                     f"{p:.1f}", f"{d:.1f}", f"{p / d:.2f}x", ">= 0.95x", p / d >= 0.95)
        # CPU per GB of every process on each path (medians over the rounds): the machine has 2
        # cores, so the path that needs more CPU in total is the slower one when both are busy.
        per_gb = {}
        for kind in ("imap", "pop3"):
            for path in ("direct", "proxy"):
                rs = [r for r in runs if r["kind"] == kind and r["path"] == path]
                per_gb[f"{kind}/{path}"] = {
                    k: round(bl.median([r[k] / (r["bytes"] / 1e9) for r in rs]), 3)
                    for k in ("client_cpu_s", "proxy_cpu_s", "dovecot_cpu_s")}
                per_gb[f"{kind}/{path}"]["total"] = round(sum(per_gb[f"{kind}/{path}"].values()), 3)
                per_gb[f"{kind}/{path}"]["machine_busy_pct"] = round(bl.median([r["machine_busy_pct"] for r in rs]), 1)
                log(f"  CPU s/GB {kind:4} {path:6}: {per_gb[f'{kind}/{path}']}")
        self.details["throughput"]["cpu_s_per_gb_by_process"] = per_gb
        pruns = [r for r in runs if r["path"] == "proxy"]
        cpu = sum(r["proxy_cpu_s"] for r in pruns)
        gb = sum(r["bytes"] for r in pruns) / 1e9
        s_per_gb = cpu / gb
        self.details["cpu_per_gb"] = {"proxy_cpu_s": cpu, "gb": gb, "s_per_gb": s_per_gb,
                                      "by_kind": {k: sum(r["proxy_cpu_s"] for r in pruns if r["kind"] == k) /
                                                  (sum(r["bytes"] for r in pruns if r["kind"] == k) / 1e9)
                                                  for k in ("imap", "pop3")}}
        ratio = s_per_gb / aes["s_per_gb"]
        self.row(f"6. Proxy CPU per GB relayed (s/GB; direct column = one AES-256-GCM pass, "
                 f"openssl speed 16 KiB blocks; {gb:.2f} GB)", f"{s_per_gb:.3f}", f"{aes['s_per_gb']:.3f}",
                 f"{ratio:.2f}x", "<= 3x", ratio <= 3.0)

    # --- figure 2: login latency, warm token ---
    def fig_latency(self):
        n = self.sz["logins"]
        px = self.main_proxy()
        port = px.ports[0]
        dc = self.info["dovecot"]["imaps"]

        def one(path: str) -> float:
            t0 = time.perf_counter()
            if path == "proxy":
                c = bl.imap_login_proxy(port, LAT_USER, PASSWORD, timeout=30)
            else:
                c = bl.imap_login_direct("127.0.0.1", dc["port"], self.ctx, LAT_USER, self.token, timeout=30)
            dt = time.perf_counter() - t0
            c.close()
            return dt * 1000

        for _ in range(10):  # warm: token, password cache, Dovecot's processes, page cache
            one("proxy")
            one("direct")
        lat = {"proxy": [], "direct": []}
        cpu0 = bl.proc_cpu(px.proc.pid)
        t_end = time.monotonic() + max(60.0, min(600.0, self.deadline.left() - 60))
        t0 = time.monotonic()
        for i in range(n):
            if time.monotonic() > t_end:
                log(f"latency: time limit after {i} pairs")
                break
            order = ("proxy", "direct") if i % 2 == 0 else ("direct", "proxy")
            for path in order:
                lat[path].append(one(path))
        proxy_ms = (bl.proc_cpu(px.proc.pid) - cpu0) * 1000 / max(1, len(lat["proxy"]))
        log(f"latency: {len(lat['proxy'])} logins per path in {time.monotonic() - t0:.1f}s; "
            f"proxy CPU {proxy_ms:.2f} ms per login")
        stats = {}
        for path, v in lat.items():
            stats[path] = {"n": len(v), "p50": bl.percentile(v, 50), "p90": bl.percentile(v, 90),
                           "p99": bl.percentile(v, 99), "max": max(v), "mean": sum(v) / len(v)}
            log(f"  {path:6} p50 {stats[path]['p50']:.2f} ms  p90 {stats[path]['p90']:.2f}  "
                f"p99 {stats[path]['p99']:.2f}  max {stats[path]['max']:.2f}")
        self.details["latency"] = {"stats": stats, "proxy_cpu_ms_per_login": proxy_ms,
                                   "samples_ms": lat}
        for q, lim in (("p50", 1.0), ("p99", 5.0)):
            p, d = stats["proxy"][q], stats["direct"][q]
            self.row(f"2. Login latency {q}, warm token, connect to tagged OK (ms, {stats['proxy']['n']} logins each)",
                     f"{p:.2f}", f"{d:.2f}", f"{p - d:+.2f} ms", f"<= +{lim:g} ms", p - d <= lim)

    # --- figure 5: SMTP ---
    def fig_smtp(self):
        sz = self.sz
        px = self.main_proxy()
        port = px.ports[2]
        sub = self.info["postfix"]["submission"]
        results = []
        seed = os.urandom(1 << 20)
        wait_queue_empty(self.info, 60)
        for label, size, count in (("10KB", 10_000, sz["smtp_small"]), ("10MB", 10_000_000, sz["smtp_big"])):
            body = bl.make_body(size, seed)
            for rnd in range(sz["smtp_rounds"]):
                order = ("direct", "proxy") if rnd % 2 == 0 else ("proxy", "direct")
                for path in order:
                    self.deadline.check("smtp")
                    c = (bl.smtp_login_proxy(port, SMTP_USER, PASSWORD) if path == "proxy" else
                         bl.smtp_login_direct("127.0.0.1", sub["port"], self.ctx, SMTP_USER, self.token))
                    meter = bl.CpuMeter({"proxy": px.proc.pid}).start()
                    pf0 = children_cpu(self.pf_master)
                    nbytes, dt, done = bl.smtp_send_many(c, SMTP_USER, SMTP_RCPT, body, count,
                                                         time.monotonic() + 240, f"{label}-{path}-{rnd}")
                    m = meter.stop()
                    pfc = children_cpu(self.pf_master) - pf0
                    bl.smtp_quit(c)
                    drain = wait_queue_empty(self.info, 180)
                    r = {"size": label, "path": path, "messages": done, "seconds": dt,
                         "msgs_s": done / dt, "mb_s": nbytes / 1e6 / dt,
                         "proxy_cpu_s": m["cpu_s"]["proxy"], "postfix_children_cpu_s": pfc,
                         "machine_busy_pct": m["machine_busy_pct"], "queue_drain_s": drain}
                    results.append(r)
                    log(f"  smtp {label:4} {path:6} {done} msgs in {dt:6.2f}s = {r['msgs_s']:7.1f} msg/s "
                        f"({r['mb_s']:.1f} MB/s) proxy cpu {r['proxy_cpu_s']:.2f}s postfix {pfc:.2f}s "
                        f"busy {r['machine_busy_pct']:.0f}%  queue drained in {drain:.1f}s")
        self.details["smtp"] = results
        for label in ("10KB", "10MB"):
            pr = [r["msgs_s"] for r in results if r["size"] == label and r["path"] == "proxy"]
            dr = [r["msgs_s"] for r in results if r["size"] == label and r["path"] == "direct"]
            n = next(r["messages"] for r in results if r["size"] == label)
            p, d = bl.median(pr), bl.median(dr)
            fmt = "{:.1f}" if p >= 10 else "{:.2f}"
            self.row(f"5. SMTP {label.replace('KB', ' KB').replace('MB', ' MB')} mails, one session, "
                     f"{n} in a row (msgs/s)", fmt.format(p), fmt.format(d), f"{p / d:.2f}x", ">= 0.9x",
                     p / d >= 0.9)

    # --- figure 4: login storm, cold tokens ---
    def fig_storm(self):
        sz = self.sz
        na, per = sz["storm_accounts"], sz["storm_per_account"]
        wd = os.path.join(self.work, "storm")
        os.makedirs(wd, exist_ok=True)
        h = self.h
        provs = [h.provider(wd, f"storm-p{i:03d}") for i in range(na)]
        accts = [h.account(self.storm_user(i), PASSWORD, f"storm-p{i:03d}") for i in range(na)]
        px = self.start_proxy("storm", provs, [h.listener("none", "imaps")], accts)
        port = px.ports[0]
        h.admin("reset", {"what": "stats,faults"})
        before = h.admin("stats")
        th0 = thread_cpu(px.proc.pid)
        cpu0 = bl.proc_cpu(px.proc.pid)
        order = [i for i in range(na) for _ in range(per)]
        random.Random(7).shuffle(order)
        res = run_storm(port, [self.storm_user(i) for i in order], PASSWORD,
                        max_seconds=min(300.0, max(30.0, self.deadline.left() - 60)))
        after = h.admin("stats")
        th1 = thread_cpu(px.proc.pid)
        cpu1 = bl.proc_cpu(px.proc.pid)
        self.stop_proxy(px)
        threads = {f"{th1[t][0]}/{t}": round(th1[t][1] - th0.get(t, ("", 0.0))[1], 2) for t in th1}
        hash_s = time_hash_password()
        res["proxy_cpu_s"] = round(cpu1 - cpu0, 2)
        res["proxy_threads_cpu_s"] = threads
        res["one_argon2_s"] = hash_s
        log(f"storm: proxy CPU {cpu1 - cpu0:.1f}s by thread {threads}; one argon2id hash "
            f"(hash-password) {hash_s * 1000:.0f} ms")
        tok = after["token_requests"] - before["token_requests"]
        log(f"storm: {res['ok']}/{len(order)} logins ok in {res['seconds']:.1f}s, token requests {tok}, "
            f"peak concurrent {after.get('peak_concurrent_token_requests')}, failures {res['errors']}")
        self.details["storm"] = {"result": res, "token_requests": tok, "stats_after": after,
                                 "accounts": na, "logins": len(order)}
        self.row(f"4. Login storm: {len(order)} logins, {na} accounts/providers, cold tokens: "
                 f"token requests at the mock ({res['ok']} logins OK in {res['seconds']:.1f}s)",
                 str(tok), "—", "—", f"= {na}", tok == na and res["ok"] == len(order))

    # --- figure 3: concurrency ---
    def fig_concurrency(self):
        sz = self.sz
        n = sz["sessions"]
        certs = self.info["certs"]["server"]
        up = subprocess.Popen([sys.executable, os.path.join(HERE, "idle_upstream.py"), "--cert", certs["cert"],
                               "--key", certs["key"], "--max-seconds", str(int(max(120, self.deadline.left())))],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
        self.children.append(up)
        line = up.stdout.readline()
        m = re.search(r"listening on ([0-9.]+):(\d+)", line)
        if not m:
            raise bl.BenchError(f"idle upstream did not start: {line}")
        up_port = int(m.group(2))
        h = self.h
        variants = [("client TLS + upstream TLS", True)]
        if sz["plain_variant"]:
            variants.append(("client plain + upstream TLS", False))
        out = []
        for label, tls in variants:
            self.deadline.check("concurrency")
            # A fresh proxy per variant, so "RSS before" is the same starting point for both.
            name = "idle-tls" if tls else "idle-plain"
            wd = os.path.join(self.work, name)
            os.makedirs(wd, exist_ok=True)
            prov = h.provider(wd, "contoso")
            upstream = f"127.0.0.1:{up_port}"  # a literal host:port: harness sets upstream_tls = implicit
            listeners = [h.listener("implicit", upstream), h.listener("none", upstream)]
            px = self.start_proxy(name, [prov], listeners, [h.account(IDLE_USER, PASSWORD, "contoso")])
            pid = px.proc.pid
            log(f"idle proxy pid {pid}, idle upstream pid {up.pid} port {up_port}")
            # Warm: one full session (token, password cache, first allocations), then measure.
            c = bl.imap_login_proxy(px.ports[1], IDLE_USER, PASSWORD)
            bl.imap_logout(c)
            time.sleep(0.5)
            # Two descriptors per session (client + upstream socket). The proxy raises its soft
            # limit to the hard one; where the hard limit cannot be raised (no CAP_SYS_RESOURCE),
            # fewer sessions fit, and the rows say how many were run.
            limit = proc_nofile(pid)
            base = bl.proc_fds(pid)
            fit = (limit - base - 24) // 2
            n_run = min(n, fit)
            if n_run < n:
                log(f"proxy open-file limit {limit} ({base} in use): {fit} sessions fit, not {n}")
            self.details["concurrency_limits"] = {"proxy_nofile": limit, "proxy_fds_idle": base,
                                                  "sessions_wanted": n, "sessions_run": n_run}
            r = self.idle_run(label, tls, px.ports[0] if tls else px.ports[1], n_run, pid, up.pid)
            r["nofile_limit"] = limit
            out.append(r)
            self.stop_proxy(px)
        up.terminate()
        try:
            up_out, _ = up.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            up.kill()
            up_out, _ = up.communicate(timeout=5)
        self.details["concurrency"] = {"runs": out, "upstream_stats": up_out.strip().splitlines()[-1:]}
        for r in out:
            short = "TLS both sides" if r["tls"] else "plain client side"
            main_row = r["tls"]
            cap = (f"; {r['sessions']:,} of {n:,}: the proxy's open-file limit is {r['nofile_limit']:,}"
                   if r["sessions"] < n else "")
            self.row(f"3. {r['ready']:,} idle IMAP sessions ({short}{cap}): RSS per session (KiB)",
                     f"{r['kib_per_session']:.1f}", "—", "—", "<= 100 KiB" if main_row else "(info)",
                     r["kib_per_session"] <= 100 if main_row else None)
            if main_row:
                self.row(f"3. {r['ready']:,} idle IMAP sessions: proxy CPU while idle "
                         f"({r['idle_seconds']:.0f} s, % of one core)", f"{r['idle_cpu_pct']:.2f}%", "—", "—",
                         "~0% (<= 1%)", r["idle_cpu_pct"] <= 1.0)
            self.row(f"3. {r['sessions']:,} idle IMAP sessions ({short}): sessions dropped or not established",
                     f"{r['lost']}", "—", "—", "0", r["lost"] == 0)

    def idle_run(self, label: str, tls: bool, port: int, n: int, pid: int, up_pid: int) -> dict:
        sz = self.sz
        rss0 = bl.proc_status_kib(pid, "VmRSS")
        cpu_ramp0 = bl.proc_cpu(pid)
        args = [sys.executable, os.path.join(HERE, "idle_clients.py"), "--port", str(port), "--sessions", str(n),
                "--user", IDLE_USER, "--password", PASSWORD, "--concurrency", "100",
                "--phase-seconds", "300", "--max-seconds", str(int(min(900, max(120, self.deadline.left()))))]
        if tls:
            args += ["--tls", "--ca", self.info["ca_file"]]
        log(f"concurrency [{label}]: opening {n} sessions")
        gen = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
        self.children.append(gen)
        ready = read_tagged(gen, "READY", 330)
        cpu_ramp = bl.proc_cpu(pid) - cpu_ramp0
        log(f"  ready: {ready}")
        time.sleep(2.0)
        rss1 = bl.proc_status_kib(pid, "VmRSS")
        hwm = bl.proc_status_kib(pid, "VmHWM")
        fds = bl.proc_fds(pid)
        c0, u0, g0 = bl.proc_cpu(pid), bl.proc_cpu(up_pid), bl.proc_cpu(gen.pid)
        t0 = time.perf_counter()
        time.sleep(sz["idle_seconds"])
        dt = time.perf_counter() - t0
        c1, u1, g1 = bl.proc_cpu(pid), bl.proc_cpu(up_pid), bl.proc_cpu(gen.pid)
        gen.stdin.write("CHECK\n")
        gen.stdin.flush()
        checked = read_tagged(gen, "CHECKED", 330)
        log(f"  checked: {checked}")
        gen.stdin.write("CLOSE\n")
        gen.stdin.flush()
        try:
            gen.wait(120)
        except subprocess.TimeoutExpired:
            gen.kill()
            gen.wait(5)
        self.children.remove(gen)
        # Let the proxy end the sessions (upstream closes after the client's EOF).
        t_end = time.monotonic() + 60
        while time.monotonic() < t_end and bl.proc_fds(pid) > 64:
            time.sleep(0.5)
        rss2 = bl.proc_status_kib(pid, "VmRSS")
        ok = ready.get("ok", 0)
        r = {"label": label, "tls": tls, "sessions": n, "ready": ok, "failed": ready.get("failed"),
             "ramp_s": ready.get("seconds"), "proxy_cpu_ramp_s": cpu_ramp,
             "rss_before_kib": rss0, "rss_with_sessions_kib": rss1, "vmhwm_kib": hwm,
             "rss_after_close_kib": rss2, "fds_with_sessions": fds,
             "kib_per_session": (rss1 - rss0) / max(1, ok), "idle_seconds": dt,
             "idle_cpu_s": c1 - c0, "idle_cpu_pct": 100.0 * (c1 - c0) / dt,
             "upstream_idle_cpu_s": u1 - u0, "loadgen_idle_cpu_s": g1 - g0,
             "alive_after_idle": checked.get("alive"), "dropped": checked.get("dropped"),
             "lost": n - (checked.get("alive") or 0), "errors": {**ready.get("errors", {}), **checked.get("errors", {})}}
        log(f"  RSS {rss0} -> {rss1} KiB (+{r['kib_per_session']:.1f} KiB/session), after close {rss2} KiB; "
            f"fds {fds}; idle CPU {r['idle_cpu_s']:.2f}s over {dt:.0f}s; ramp CPU {cpu_ramp:.1f}s")
        return r


def read_tagged(proc: subprocess.Popen, tag: str, seconds: float) -> dict:
    """Reads proc's stdout lines until 'TAG {json}' (bounded by a watchdog that kills proc)."""
    timer = threading.Timer(seconds, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
    finally:
        timer.cancel()
    raise bl.BenchError(f"{tag} never came (exit {proc.poll()})")


def run_storm(port: int, users: list[str], password: str, max_seconds: float) -> dict:
    """All logins at once (one connection each, non-blocking): greeting, LOGIN, tagged reply."""
    nbio.raise_nofile(len(users) * 2 + 1000)
    loop = nbio.Loop()
    st = {"ok": 0, "no": 0, "errors": {}, "lat": []}

    class S(nbio.NBConn):
        def on_open(self):
            self.phase = "greeting"
            self.t0 = time.perf_counter()

        def on_line(self, line):
            if self.phase == "greeting":
                self.phase = "login"
                self.send(f"a LOGIN {self.user} {password}\r\n".encode())
            elif self.phase == "login" and line.startswith(b"a "):
                self.phase = "done"
                st["lat"].append((time.perf_counter() - self.start) * 1000)
                if line.startswith(b"a OK"):
                    st["ok"] += 1
                else:
                    st["no"] += 1
                    k = line[:80].decode(errors="replace")
                    st["errors"][k] = st["errors"].get(k, 0) + 1
                self.close("done")

        def on_close(self, reason):
            if getattr(self, "phase", "") != "done":
                self.phase = "done"
                st["errors"][reason[:60]] = st["errors"].get(reason[:60], 0) + 1

    conns = []
    t0 = time.perf_counter()
    for u in users:
        c = nbio.connect_nb(loop, "127.0.0.1", port, S)
        c.user = u
        c.start = time.perf_counter()
        conns.append(c)
    end = time.monotonic() + max_seconds
    while time.monotonic() < end and any(not c.closed for c in conns):
        loop.run_once(0.2)
    for c in conns:
        c.close("time limit")
    lat = st["lat"]
    return {"ok": st["ok"], "refused": st["no"], "errors": st["errors"],
            "seconds": time.perf_counter() - t0,
            "latency_ms": {"p50": bl.percentile(lat, 50), "p99": bl.percentile(lat, 99),
                           "max": max(lat) if lat else None}}


# --- output ----------------------------------------------------------------------------------------------------
def met_text(m) -> str:
    return "info" if m is None else ("yes" if m else "NO")


def render_table(rows: list[dict]) -> tuple[str, str]:
    cols = ["figure", "proxy", "direct", "ratio", "target", "met?"]
    data = [[r["figure"], r["proxy"], r["direct"], r["ratio"], r["target"], met_text(r["met"])] for r in rows]
    widths = [max(len(c), *(len(str(d[i])) for d in data)) if data else len(c) for i, c in enumerate(cols)]
    widths[0] = min(widths[0], 100)
    lines = ["  ".join(c.ljust(widths[i]) for i, c in enumerate(cols)),
             "  ".join("-" * widths[i] for i in range(len(cols)))]
    for d in data:
        lines.append("  ".join(str(x).ljust(widths[i]) for i, x in enumerate(d)))
    text = "\n".join(lines)
    md = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for d in data:
        md.append("| " + " | ".join(str(x) for x in d) + " |")
    return text, "\n".join(md)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (under a minute after the build)")
    ap.add_argument("--only", default="", help=f"comma list of {','.join(FIGURES)} (cpu = throughput)")
    ap.add_argument("--out", default=os.path.join(REPO, "build-bench"))
    ap.add_argument("--bin", default=None, help="xoauth-proxy binary (default OUT/xoauth-proxy)")
    ap.add_argument("--keep-testbed", action="store_true", help="leave OUT/testbed on disk (it is stopped)")
    ap.add_argument("--max-minutes", type=float, default=20.0, help="overall time limit")
    a = ap.parse_args(argv)
    a.out = os.path.abspath(a.out)
    selected = FIGURES
    if a.only:
        want = {ALIASES.get(x.strip(), x.strip()) for x in a.only.split(",") if x.strip()}
        bad = want - set(FIGURES)
        if bad:
            ap.error(f"unknown figure(s) {sorted(bad)}; choose from {FIGURES} (+ cpu)")
        selected = [f for f in FIGURES if f in want]
    binary = os.path.abspath(a.bin or os.path.join(a.out, "xoauth-proxy"))
    if not os.access(binary, os.X_OK):
        ap.error(f"no proxy binary at {binary}")
    os.environ["XOAUTH_PROXY_BIN"] = binary
    os.environ["XOAUTH_TESTBED_DIR"] = os.path.join(a.out, "testbed")
    import harness  # noqa: E402  (reads the environment set above)

    def on_term(_s, _f):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    os.makedirs(a.out, exist_ok=True)
    meta = {"started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "mode": "quick" if a.quick else "full", "figures": selected,
            "load_before": bl.loadavg(), "nproc": os.cpu_count(), "kernel": platform.release(),
            "cpu": _cpu_model(), "python": platform.python_version(), "binary": binary,
            "git": _git_rev()}
    log(f"mode {meta['mode']}, figures {','.join(selected)}; load average before: {meta['load_before']}")
    suite = Suite(a, harness)
    t0 = time.monotonic()
    failed = []
    try:
        suite.setup_testbed()
        for f in selected:
            log(f"=== {f}")
            try:
                getattr(suite, f"fig_{f}")()
            except bl.BenchError as e:
                failed.append(f"{f}: {e}")
                log(f"FIGURE FAILED {f}: {e}")
    except KeyboardInterrupt:
        failed.append("interrupted")
        log("interrupted: stopping everything")
    finally:
        suite.cleanup()
    meta["load_after"] = bl.loadavg()
    meta["seconds"] = round(time.monotonic() - t0, 1)
    text, md = render_table(suite.rows)
    print()
    print(text)
    print()
    log(f"load average before {meta['load_before']}, after {meta['load_after']}; total {meta['seconds']}s")
    result = {"meta": meta, "rows": suite.rows, "details": suite.details, "failed": failed}
    with open(os.path.join(a.out, "bench-results.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.join(a.out, "bench-results.md"), "w") as f:
        f.write(f"# xoauth-proxy benchmark results ({meta['mode']} run)\n\n")
        f.write(f"{meta['started']}, git {meta['git']}, {meta['nproc']} cores ({meta['cpu']}), "
                f"kernel {meta['kernel']}, {meta['seconds']} s. Shared machine: load average "
                f"{meta['load_before']} before, {meta['load_after']} after.\n\n{md}\n")
        if failed:
            f.write("\nFailed figures:\n\n" + "".join(f"- {x}\n" for x in failed))
    log(f"wrote {os.path.join(a.out, 'bench-results.md')} and bench-results.json")
    if failed:
        for x in failed:
            log(f"FAILED: {x}")
        return 1
    return 0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_rev() -> str:
    r = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"], capture_output=True, text=True)
    return r.stdout.strip() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
