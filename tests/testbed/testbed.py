#!/usr/bin/env python3
"""Private test bed for xoauth-proxy: a mock Microsoft identity platform, a private Dovecot and a
private Postfix (submission with STARTTLS, implicit-TLS submission; SASL XOAUTH2 through Dovecot's
auth socket; delivery into Dovecot over LMTP).

CLI:
    testbed.py start  --dir DIR [--auth-debug]   start (idempotent), write DIR/testbed.json
    testbed.py stop   --dir DIR                  stop everything started for DIR
    testbed.py status --dir DIR                  exit 0 if everything runs, 3 if not
    testbed.py token  --dir DIR [--client-id ID] print a client_credentials access token

Module: start(dir) -> info dict, stop(dir), status(dir), load_info(dir), fetch_token(info, ...),
admin(info, name, body=None), ssl_context(info), http_request(info, method, path, ...).

Everything listens on loopback (127.0.0.1, plus 127.0.0.2/127.0.0.3 for special Dovecot
listeners and 127.0.0.3 for Postfix's wrong-host submission listener), on free high ports picked
at start; never on port 25. Python 3 stdlib only. Runs as root, no systemd.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
MOCK_IDP = os.path.join(HERE, "mock_idp.py")
MAKE_CERTS = os.path.join(HERE, "make_certs.sh")

TENANT = "contoso.test"
TENANT_ID = "8f1c2d3e-4b5a-4c6d-9e7f-0a1b2c3d4e5f"
DOMAIN = "contoso.test"
CLIENT_ID = "6731de76-14a6-49ae-97bc-6eba6914391e"
IMAP_ONLY_CLIENT_ID = "0b9e1f4a-7c2d-4e8b-a1f3-5d6c7b8a9e0f"
CCG_SCOPE = "https://outlook.office365.com/.default"
APP_ROLES = ["IMAP.AccessAsApp", "POP.AccessAsApp", "SMTP.SendAsApp"]
MAILBOXES = ["scanner@contoso.test", "alice@contoso.test", "shared@contoso.test"]
# Unseeded mailboxes that receive the SMTP tests' mail (so the seeded ones keep their counts).
SINKS = ["receiver@contoso.test", "receiver2@contoso.test"]
# Seeded folders and message counts per mailbox (INBOX always exists).
SEED = {"INBOX": 3, "Archive": 2, "Sent": 1}
MAIL_UID = 8  # Debian's "mail" user/group

READY_TIMEOUT = 15.0
POLL = 0.05


class TestbedError(RuntimeError):
    pass


# --- small utilities -------------------------------------------------------------------------------
def _paths(d: str) -> dict:
    d = os.path.abspath(d)
    return {
        "dir": d,
        "json": os.path.join(d, "testbed.json"),
        "lock": os.path.join(d, ".testbed.lock"),
        "pki": os.path.join(d, "pki"),
        "idp_dir": os.path.join(d, "idp"),
        "idp_config": os.path.join(d, "idp", "config.json"),
        "idp_port": os.path.join(d, "idp", "port"),
        "idp_pid": os.path.join(d, "idp", "idp.pid"),
        "idp_log": os.path.join(d, "idp", "idp.log"),
        "dc_dir": os.path.join(d, "dovecot"),
        "dc_conf": os.path.join(d, "dovecot", "dovecot.conf"),
        "dc_user_args": os.path.join(d, "dovecot", "oauth2-user.conf.ext"),
        "dc_app_args": os.path.join(d, "dovecot", "oauth2-app.conf.ext"),
        "dc_users": os.path.join(d, "dovecot", "users"),
        "dc_ports": os.path.join(d, "dovecot", "ports.json"),
        "dc_base": os.path.join(d, "dovecot", "run"),
        "dc_state": os.path.join(d, "dovecot", "state"),
        "dc_log": os.path.join(d, "dovecot", "dovecot.log"),
        "dc_pid": os.path.join(d, "dovecot", "run", "master.pid"),
        "mail": os.path.join(d, "mail"),
        "pf_root": os.path.join(d, "postfix"),
        # The config directory must not contain the queue or data directory: postfix-script
        # checks that everything below it is owned by root.
        "pf_dir": os.path.join(d, "postfix", "etc"),
        "pf_queue": os.path.join(d, "postfix", "queue"),
        "pf_data": os.path.join(d, "postfix", "data"),
        "pf_log": os.path.join(d, "postfix", "maillog"),
        "pf_pid": os.path.join(d, "postfix", "queue", "pid", "master.pid"),
        "pf_ports": os.path.join(d, "postfix", "ports.json"),
        "pf_mailboxes": os.path.join(d, "postfix", "etc", "mailboxes"),
        "pf_start_out": os.path.join(d, "postfix", "start.out"),
    }


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _write(path: str, text: str, mode: int = 0o644, group: int | None = None):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    if group is not None:
        os.chown(tmp, 0, group)
    os.replace(tmp, path)


def _read_pid(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text else None
    except ValueError:
        return None


def _reap(pid: int):
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _alive(pid: int | None, must_contain: list[str]) -> bool:
    """pid exists, is not a zombie, and its cmdline contains every string in must_contain."""
    if not pid or pid <= 1:
        return False
    _reap(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        state = stat.rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return all(s in cmd for s in must_contain)


def _signal_and_wait(pid: int, must_contain: list[str], timeout: float = 10.0) -> bool:
    """TERM, wait up to timeout, then KILL. The cmdline is checked before every signal."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 3.0)):
        if not _alive(pid, must_contain):
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _alive(pid, must_contain):
                return True
            time.sleep(POLL)
    return not _alive(pid, must_contain)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tcp_ok(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _imap_greeting(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"")
            data = s.recv(512)
            if data.startswith(b"* OK"):
                with contextlib.suppress(OSError):
                    s.sendall(b"r LOGOUT\r\n")
                return True
    except OSError:
        pass
    return False


def _check_traversable(path: str):
    """Dovecot's mail processes (uid 8) and auth (user dovecot) must be able to reach DIR."""
    p = os.path.abspath(path)
    while True:
        st = os.stat(p)
        if not st.st_mode & 0o001:
            raise TestbedError(f"{p} is not world-traversable (mode {oct(st.st_mode & 0o777)}); "
                               f"Dovecot's unprivileged processes could not reach the test bed")
        parent = os.path.dirname(p)
        if parent == p:
            return
        p = parent


# --- HTTP helpers (also used by tests) -----------------------------------------------------------------
def ssl_context(info: dict) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=info["ca_file"])


def http_request(info: dict, method: str, path: str, *, json_body=None, form=None, headers=None,
                 timeout: float = 10.0) -> tuple[int, dict, object]:
    """Request against the mock IdP. Returns (status, headers, parsed JSON or raw text)."""
    url = info["idp_url"] + path
    data = None
    hdrs = dict(headers or {})
    if json_body is not None:
        data = json.dumps(json_body).encode()
        hdrs["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, context=ssl_context(info), timeout=timeout) as r:
            status, rh, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, rh, raw = e.code, dict(e.headers), e.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return status, rh, body


def admin(info: dict, name: str, body: dict | None = None, method: str | None = None) -> dict:
    """Calls /_admin/<name>. POST when a body is given, else GET (override with method)."""
    method = method or ("POST" if body is not None else "GET")
    status, _, out = http_request(info, method, f"/_admin/{name}",
                                  json_body=body if body is not None else ({} if method == "POST" else None))
    if status != 200:
        raise TestbedError(f"/_admin/{name} -> {status} {out}")
    return out


def fetch_token(info: dict, client_id: str | None = None, client_secret: str | None = None,
                scope: str = CCG_SCOPE, tenant: str | None = None) -> str:
    status, _, body = http_request(info, "POST", f"/{tenant or info['tenant']}/oauth2/v2.0/token", form={
        "grant_type": "client_credentials", "client_id": client_id or info["client_id"],
        "client_secret": client_secret if client_secret is not None else info["client_secret"],
        "scope": scope})
    if status != 200:
        raise TestbedError(f"token request failed: {status} {body}")
    return body["access_token"]


def load_info(d: str) -> dict:
    text = _read(_paths(d)["json"])
    if text is None:
        raise TestbedError(f"no testbed.json in {d}; run: testbed.py start --dir {d}")
    return json.loads(text)


# --- mock IdP --------------------------------------------------------------------------------------------
def _idp_cmd_marker(p: dict) -> list[str]:
    return ["mock_idp.py", p["idp_config"]]


def _ensure_idp_config(p: dict) -> dict:
    text = _read(p["idp_config"])
    if text:
        return json.loads(text)
    cfg = {
        "tenants": [{
            "name": TENANT, "id": TENANT_ID, "domains": [DOMAIN],
            "clients": [
                {"client_id": CLIENT_ID, "client_secret": "tb~" + secrets.token_urlsafe(24),
                 "name": "xoauth-proxy test app", "roles": list(APP_ROLES)},
                {"client_id": IMAP_ONLY_CLIENT_ID, "client_secret": "tb~" + secrets.token_urlsafe(24),
                 "name": "IMAP-only test app", "roles": ["IMAP.AccessAsApp"]},
            ],
            "users": [],
        }],
        "settings": {},
    }
    _write(p["idp_config"], json.dumps(cfg, indent=2) + "\n", mode=0o600)
    return cfg


def _idp_healthy(port: int, ca_file: str) -> bool:
    ctx = ssl.create_default_context(cafile=ca_file)
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/health", context=ctx, timeout=2) as r:
            return r.status == 200
    except (OSError, ValueError):
        return False


def _idp_running(p: dict) -> int | None:
    pid = _read_pid(p["idp_pid"])
    port = _read_pid(p["idp_port"])
    if _alive(pid, _idp_cmd_marker(p)) and port and _idp_healthy(port, os.path.join(p["pki"], "ca.pem")):
        return port
    return None


def _start_idp(p: dict, prefer_port: int | None) -> int:
    ca = os.path.join(p["pki"], "ca.pem")
    for port_arg in ([prefer_port] if prefer_port else []) + [0]:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p["idp_port"])
        logf = open(p["idp_log"], "a", encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-u", MOCK_IDP, "--config", p["idp_config"],
             "--cert", os.path.join(p["pki"], "server.pem"), "--key", os.path.join(p["pki"], "server.key"),
             "--port", str(port_arg), "--port-file", p["idp_port"], "--log", p["idp_log"]],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True, close_fds=True)
        logf.close()
        _write(p["idp_pid"], f"{proc.pid}\n")
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            port = _read_pid(p["idp_port"])
            if port and _idp_healthy(port, ca):
                return port
            time.sleep(POLL)
        if proc.poll() is None:
            _signal_and_wait(proc.pid, _idp_cmd_marker(p))
            raise TestbedError(f"mock IdP not ready within {READY_TIMEOUT}s; see {p['idp_log']}")
        proc.wait()
        # Preferred port taken? Retry with port 0; otherwise report.
    raise TestbedError(f"mock IdP failed to start; tail of {p['idp_log']}:\n{_tail(p['idp_log'])}")


def _tail(path: str, n: int = 30) -> str:
    text = _read(path) or ""
    return "\n".join(text.splitlines()[-n:])


# --- Dovecot ----------------------------------------------------------------------------------------------
LISTENERS = [
    # name, service, host, tls
    ("imap", "imap-login", "127.0.0.1", "starttls"),
    ("imaps", "imap-login", "127.0.0.1", "implicit"),
    ("imap_starttls_forced", "imap-login", "127.0.0.2", "starttls"),
    ("imaps_wronghost", "imap-login", "127.0.0.3", "implicit"),
    ("pop3", "pop3-login", "127.0.0.1", "starttls"),
    ("pop3s", "pop3-login", "127.0.0.1", "implicit"),
    ("pop3_starttls_forced", "pop3-login", "127.0.0.2", "starttls"),
]


def _oauth2_args(p: dict, idp_port: int, attribute: str, fmt: str, debug: bool) -> str:
    return "\n".join([
        "# generated by testbed.py",
        f"introspection_url = https://127.0.0.1:{idp_port}/introspect",
        "introspection_mode = post",
        "force_introspection = yes",
        f"username_attribute = {attribute}",
        f"username_format = {fmt}",
        "active_attribute = active",
        "active_value = true",
        "send_auth_headers = yes",
        f"tls_ca_cert_file = {os.path.join(p['pki'], 'ca.pem')}",
        "timeout_msecs = 10000",
        "max_parallel_connections = 10",
        f"debug = {'yes' if debug else 'no'}",
        "",
    ])


def _dovecot_conf(p: dict, ports: dict, debug: bool) -> str:
    pki = p["pki"]
    inst = "xoauth-tb-" + hashlib.sha256(p["dir"].encode()).hexdigest()[:8]
    services = {}
    for name, service, host, tls in LISTENERS:
        services.setdefault(service, []).append(
            f"  inet_listener {name} {{\n    address = {host}\n    port = {ports[name]}\n"
            + ("    ssl = yes\n" if tls == "implicit" else "") + "  }")
    login_services = "\n".join(
        f"service {svc} {{\n" + "\n".join(ls) + "\n  process_limit = 200\n}"
        for svc, ls in services.items())
    return f"""# generated by testbed.py -- private instance, no /etc/dovecot includes
instance_name = {inst}
base_dir = {p['dc_base']}
state_dir = {p['dc_state']}
log_path = {p['dc_log']}
info_log_path = {p['dc_log']}
debug_log_path = {p['dc_log']}
log_timestamp = "%Y-%m-%d %H:%M:%S "
protocols = imap pop3 lmtp
listen = 127.0.0.1
shutdown_clients = yes

ssl = required
ssl_cert = <{pki}/server.pem
ssl_key = <{pki}/server.key
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = yes
login_trusted_networks =

# A second certificate for connections to 127.0.0.3 (the imaps_wronghost listener).
local 127.0.0.3 {{
  ssl_cert = <{pki}/wronghost.pem
  ssl_key = <{pki}/wronghost.key
}}

auth_mechanisms = xoauth2 oauthbearer
auth_cache_size = 0
auth_failure_delay = 0
auth_verbose = yes
auth_debug = {'yes' if debug else 'no'}
auth_username_format = %Lu

passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {p['dc_user_args']}
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {p['dc_app_args']}
}}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {p['dc_users']}
  default_fields = uid=mail gid=mail home={p['mail']}/%d/%n
}}

mail_location = maildir:{p['mail']}/%d/%n/Maildir
first_valid_uid = {MAIL_UID}
last_valid_uid = {MAIL_UID}
first_valid_gid = {MAIL_UID}
last_valid_gid = {MAIL_UID}
mail_privileged_group =

namespace inbox {{
  inbox = yes
  separator = /
  mailbox Archive {{
    special_use = \\Archive
  }}
  mailbox Sent {{
    special_use = \\Sent
  }}
}}

default_process_limit = 200
default_client_limit = 2000

{login_services}

service imap {{
  process_limit = 200
}}
service pop3 {{
  process_limit = 200
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0660
    user = postfix
    group = postfix
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0660
    user = postfix
    group = postfix
  }}
  client_limit = 2000
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
  client_limit = 2000
}}

protocol imap {{
  mail_max_userip_connections = 1000
}}
protocol pop3 {{
  mail_max_userip_connections = 1000
}}
protocol lmtp {{
  auth_username_format = %Lu
  postmaster_address = postmaster@{DOMAIN}
}}
"""


def _write_dovecot_users(p: dict):
    """passwd-file userdb (Dovecot re-reads it when it changes, so a running instance picks up new users)."""
    import grp
    want = "".join(f"{a}:::::::\n" for a in MAILBOXES + SINKS)
    if _read(p["dc_users"]) != want:
        os.makedirs(p["dc_dir"], exist_ok=True)
        _write(p["dc_users"], want, 0o640, grp.getgrnam("dovecot").gr_gid)


def _dovecot_running(p: dict) -> int | None:
    pid = _read_pid(p["dc_pid"])
    return pid if _alive(pid, ["dovecot", p["dc_conf"]]) else None


def _seed_mail(p: dict):
    marker = os.path.join(p["mail"], ".seeded")
    if os.path.exists(marker):
        return
    os.makedirs(p["mail"], exist_ok=True)
    t0 = 1700000000
    n = 0
    for addr in MAILBOXES:
        local, domain = addr.split("@")
        root = os.path.join(p["mail"], domain, local, "Maildir")
        for folder, count in SEED.items():
            fdir = root if folder == "INBOX" else os.path.join(root, "." + folder)
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(fdir, sub), exist_ok=True)
            for i in range(1, count + 1):
                n += 1
                date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(t0 + n * 60))
                msg = (f"From: Test Sender <sender@example.net>\r\nTo: {addr}\r\n"
                       f"Subject: {folder} message {i} for {local}\r\nDate: {date}\r\n"
                       f"Message-ID: <seed-{n}.{local}@testbed.invalid>\r\nMIME-Version: 1.0\r\n"
                       f"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
                       f"Seeded test message {i} in {folder} of {addr}.\r\n")
                name = f"{t0 + n}.M{n}P1.testbed,S={len(msg)}:2,{'S' if i > 1 else ''}"
                with open(os.path.join(fdir, "cur", name), "w", newline="") as f:
                    f.write(msg)
        with open(os.path.join(root, "subscriptions"), "w") as f:
            f.write("".join(f"{x}\n" for x in SEED if x != "INBOX"))
    for dirpath, dirnames, filenames in os.walk(p["mail"]):
        os.chown(dirpath, MAIL_UID, MAIL_UID)
        os.chmod(dirpath, 0o750 if dirpath == p["mail"] else 0o700)
        for fn in filenames:
            os.chown(os.path.join(dirpath, fn), MAIL_UID, MAIL_UID)
    with open(marker, "w") as f:
        f.write("seeded\n")


def _dovecot_ready(ports: dict, deadline: float, p: dict, pid_check) -> bool:
    need = [os.path.join(p["dc_base"], "auth-postfix"), os.path.join(p["dc_base"], "lmtp")]
    pending = {name: (host, ports[name]) for name, _, host, _ in LISTENERS}
    while time.monotonic() < deadline:
        if not pid_check():
            return False
        for name, (host, port) in list(pending.items()):
            ok = _imap_greeting(host, port) if name == "imap" else _tcp_ok(host, port)
            if ok:
                del pending[name]
        if not pending and all(os.path.exists(s) for s in need):
            return True
        time.sleep(POLL)
    return False


def _start_dovecot(p: dict, idp_port: int, debug: bool) -> dict:
    import grp
    dovecot_gid = grp.getgrnam("dovecot").gr_gid
    for d in (p["dc_dir"], p["dc_state"]):
        os.makedirs(d, exist_ok=True)
        os.chmod(d, 0o755)
    _write(p["dc_user_args"], _oauth2_args(p, idp_port, "username", "%Lu", debug), 0o640, dovecot_gid)
    _write(p["dc_app_args"], _oauth2_args(p, idp_port, "app_principal", "%Ld", debug), 0o640, dovecot_gid)
    _write_dovecot_users(p)
    last_err = ""
    for attempt in range(6):
        ports = {name: _free_port(host) for name, _, host, _ in LISTENERS}
        _write(p["dc_conf"], _dovecot_conf(p, ports, debug), 0o644)
        if attempt == 0:
            chk = subprocess.run(["doveconf", "-c", p["dc_conf"], "-n"], capture_output=True, text=True)
            if chk.returncode != 0:
                raise TestbedError(f"doveconf rejected {p['dc_conf']}:\n{chk.stderr}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p["dc_pid"])  # stale (we checked it is not running)
        # The daemonized master inherits stdout/stderr: use a file, never a pipe (run() would hang).
        out_path = os.path.join(p["dc_dir"], "start.out")
        with open(out_path, "w") as out:
            r = subprocess.run(["dovecot", "-c", p["dc_conf"]], stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT)
        if r.returncode != 0:
            last_err = (_read(out_path) or "").strip()
            if "in use" in last_err or "bind" in last_err:
                continue  # a port got taken between probing and binding
            raise TestbedError(f"dovecot failed to start: {last_err}\n{_tail(p['dc_log'])}")
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and not _dovecot_running(p):
            time.sleep(POLL)
        if _dovecot_ready(ports, deadline, p, lambda: _dovecot_running(p) is not None):
            _write(p["dc_ports"], json.dumps({"idp_port": idp_port, "debug": debug, "ports": ports}) + "\n")
            return ports
        last_err = _tail(p["dc_log"])
        _stop_dovecot(p)
        if "in use" not in last_err:
            raise TestbedError(f"dovecot not ready within {READY_TIMEOUT}s:\n{last_err}")
    raise TestbedError(f"dovecot could not bind its ports after retries: {last_err}")


def _stop_dovecot(p: dict) -> bool:
    pid = _read_pid(p["dc_pid"])
    ok = True
    if pid and _alive(pid, ["dovecot", p["dc_conf"]]):
        ok = _signal_and_wait(pid, ["dovecot", p["dc_conf"]], timeout=10.0)
    if ok:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p["dc_pid"])
    return ok


# --- Postfix ----------------------------------------------------------------------------------------------
# name, host, tls, cert name. "submission": STARTTLS required before AUTH; "smtps": implicit TLS
# (wrapper mode); "submission_wronghost": like submission, on 127.0.0.3 with the wrong-host
# certificate (for "the proxy must verify the upstream name" tests). Postfix has no loopback
# exemption (unlike Dovecot), so a 127.0.0.2 listener would add nothing.
PF_LISTENERS = [
    ("submission", "127.0.0.1", "starttls", "server"),
    ("smtps", "127.0.0.1", "implicit", "server"),
    ("submission_wronghost", "127.0.0.3", "starttls", "wronghost"),
]
PF_MESSAGE_SIZE_LIMIT = 64 * 1024 * 1024  # the SMTP tests send 20 MB


def _pf_syslog_name(p: dict) -> str:
    return "xoauth-tb-" + hashlib.sha256(p["dir"].encode()).hexdigest()[:8] + "/postfix"


def _postfix_main_cf(p: dict) -> str:
    pki = p["pki"]
    return f"""# generated by testbed.py -- private Postfix instance (postfix -c {p['pf_dir']})
compatibility_level = 3.6
config_directory = {p['pf_dir']}
queue_directory = {p['pf_queue']}
data_directory = {p['pf_data']}
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
daemon_directory = /usr/lib/postfix/sbin
command_directory = /usr/sbin
mail_owner = postfix
setgid_group = postdrop
syslog_name = {_pf_syslog_name(p)}
maillog_file = {p['pf_log']}
maillog_file_prefixes = {p['pf_root']}

# Loopback only; nothing leaves this machine.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = smtp.testbed.invalid
mydomain = testbed.invalid
myorigin = $myhostname
mydestination =
mynetworks = 127.0.0.0/8
relayhost =
smtp_dns_support_level = disabled
disable_dns_lookups = yes
default_transport = error:outside the test bed
relay_transport = error:outside the test bed
local_transport = error:no local delivery in the test bed
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
# Keep headers exactly as submitted (the tests compare them byte for byte).
local_header_rewrite_clients =
always_add_missing_headers = no
disable_mime_output_conversion = yes
smtputf8_enable = yes

# contoso.test mailboxes are delivered to Dovecot over LMTP.
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_maps = texthash:{p['pf_mailboxes']}
virtual_alias_maps =
virtual_transport = lmtp:unix:{os.path.join(p['dc_base'], 'lmtp')}
smtpd_recipient_restrictions = permit_sasl_authenticated, reject
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =

# SASL through Dovecot's auth socket (offers XOAUTH2 and OAUTHBEARER); enabled per service.
smtpd_sasl_auth_enable = no
smtpd_sasl_type = dovecot
smtpd_sasl_path = {os.path.join(p['dc_base'], 'auth-postfix')}
smtpd_sasl_security_options = noanonymous
smtpd_sasl_tls_security_options = noanonymous
broken_sasl_auth_clients = no

# TLS (server cert followed by the test CA).
smtpd_tls_cert_file = {pki}/server.pem
smtpd_tls_key_file = {pki}/server.key
smtpd_tls_protocols = >=TLSv1.2
smtpd_tls_mandatory_protocols = >=TLSv1.2
smtpd_tls_session_cache_database =
smtpd_tls_loglevel = 1
smtpd_tls_received_header = no
tls_random_source = dev:/dev/urandom

# Test-friendly limits.
message_size_limit = {PF_MESSAGE_SIZE_LIMIT}
mailbox_size_limit = 0
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
smtpd_client_auth_rate_limit = 0
smtpd_client_new_tls_session_rate_limit = 0
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_junk_command_limit = 1000
default_process_limit = 100
in_flow_delay = 0
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
delay_warning_time = 0
"""


def _postfix_master_cf(p: dict, ports: dict) -> str:
    pki = p["pki"]
    lines = ["# generated by testbed.py -- chroot 'n' everywhere (the private queue has no chroot files)",
             "# service type  private unpriv  chroot  wakeup  maxproc command + args"]
    for name, host, tls, cert in PF_LISTENERS:
        lines.append(f"{host}:{ports[name]} inet n - n - - smtpd")
        lines.append(f"  -o syslog_name={_pf_syslog_name(p)}/{name}")
        lines.append("  -o smtpd_sasl_auth_enable=yes")
        if tls == "implicit":
            lines.append("  -o smtpd_tls_wrappermode=yes")
            lines.append("  -o smtpd_tls_security_level=encrypt")
        else:
            lines.append("  -o smtpd_tls_security_level=encrypt")
            lines.append("  -o smtpd_tls_auth_only=yes")
        if cert != "server":
            lines.append(f"  -o smtpd_tls_cert_file={pki}/{cert}.pem")
            lines.append(f"  -o smtpd_tls_key_file={pki}/{cert}.key")
    lines += [
        "pickup    unix  n       -       n       60      1       pickup",
        "cleanup   unix  n       -       n       -       0       cleanup",
        "qmgr      unix  n       -       n       300     1       qmgr",
        "tlsmgr    unix  -       -       n       1000?   1       tlsmgr",
        "rewrite   unix  -       -       n       -       -       trivial-rewrite",
        "bounce    unix  -       -       n       -       0       bounce",
        "defer     unix  -       -       n       -       0       bounce",
        "trace     unix  -       -       n       -       0       bounce",
        "verify    unix  -       -       n       -       1       verify",
        "flush     unix  n       -       n       1000?   0       flush",
        "proxymap  unix  -       -       n       -       -       proxymap",
        "proxywrite unix -       -       n       -       1       proxymap",
        "smtp      unix  -       -       n       -       -       smtp",
        "relay     unix  -       -       n       -       -       smtp",
        "showq     unix  n       -       n       -       -       showq",
        "error     unix  -       -       n       -       -       error",
        "retry     unix  -       -       n       -       -       error",
        "discard   unix  -       -       n       -       -       discard",
        "lmtp      unix  -       -       n       -       -       lmtp",
        "anvil     unix  -       -       n       -       1       anvil",
        "scache    unix  -       -       n       -       1       scache",
        "postlog   unix-dgram n  -       n       -       1       postlogd",
    ]
    return "\n".join(lines) + "\n"


def _pf_marker(p: dict) -> list[str]:
    return ["/usr/lib/postfix/sbin/master"]


def _postfix_master(p: dict, exact: bool = True) -> int | None:
    """The pid in our pidfile when it is a live Postfix master whose MAIL_CONFIG (set by
    `postfix -c`) is our config directory (exact) or any directory below DIR (for stopping)."""
    pid = _read_pid(p["pf_pid"])  # space-padded content; int() trims it
    if not _alive(pid, _pf_marker(p)):
        return None
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = [e.decode(errors="replace") for e in f.read().split(b"\0")]
    except OSError:
        return None
    conf = next((e[len("MAIL_CONFIG="):] for e in env if e.startswith("MAIL_CONFIG=")), None)
    if conf is None:
        return None
    if exact:
        return pid if conf == p["pf_dir"] else None
    return pid if conf == p["pf_dir"] or conf.startswith(p["dir"] + "/") else None


def _postfix_running(p: dict) -> int | None:
    return _postfix_master(p, exact=True)


# Queue directories as `post-install create-missing` makes them (name, owner, group, mode).
# Creating them here is much faster than letting the first `postfix start` do it (~2.5 s).
PF_QUEUE_DIRS = [(d, "postfix", "root", 0o700) for d in
                 ("active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming",
                  "private", "saved", "trace")] + [
    ("maildrop", "postfix", "postdrop", 0o730), ("public", "postfix", "postdrop", 0o710),
    ("pid", "root", "root", 0o755)]


def _write_pf(path: str, text: str):
    """Postfix reads a configuration or table file only once its mtime is more than a second in
    the past (dict_load_file() dozes in 0.3 s steps until then): backdate what we write."""
    if _read(path) != text:
        _write(path, text)
        past = time.time() - 60
        os.utime(path, (past, past))


def _make_queue_dirs(p: dict):
    import grp
    import pwd
    for name, owner, group, mode in PF_QUEUE_DIRS:
        path = os.path.join(p["pf_queue"], name)
        os.makedirs(path, exist_ok=True)
        os.chown(path, pwd.getpwnam(owner).pw_uid, grp.getgrnam(group).gr_gid)
        os.chmod(path, mode)


def _smtp_probe(host: str, port: int, tls: str, ca_file: str, timeout: float = 1.0) -> bool:
    """Reads the 220 greeting (over TLS for implicit listeners) and says QUIT."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            s = raw
            if tls == "implicit":
                ctx = ssl.create_default_context(cafile=ca_file)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                s = ctx.wrap_socket(raw, server_hostname=host)
            data = b""
            for _ in range(20):
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
                if b"\r\n" in data:
                    break
            ok = data.startswith(b"220 ")
            if ok:
                with contextlib.suppress(OSError):
                    s.sendall(b"QUIT\r\n")
                    s.recv(512)
            return ok
    except (OSError, ssl.SSLError):
        return False


def _postfix_ready(p: dict, ports: dict, deadline: float) -> bool:
    ca = os.path.join(p["pki"], "ca.pem")
    pending = {name: (host, ports[name], tls) for name, host, tls, _ in PF_LISTENERS}
    while time.monotonic() < deadline:
        if not _postfix_running(p):
            return False
        for name, (host, port, tls) in list(pending.items()):
            if _smtp_probe(host, port, tls, ca):
                del pending[name]
        if not pending:
            return True
        time.sleep(POLL)
    return False


def _start_postfix(p: dict) -> dict:
    import pwd
    pf_uid = pwd.getpwnam("postfix").pw_uid
    for d, mode in ((p["pf_root"], 0o755), (p["pf_dir"], 0o755), (p["pf_queue"], 0o755)):
        os.makedirs(d, exist_ok=True)
        os.chown(d, 0, 0)
        os.chmod(d, mode)
    os.makedirs(p["pf_data"], exist_ok=True)
    os.chown(p["pf_data"], pf_uid, 0)
    os.chmod(p["pf_data"], 0o700)
    _write_pf(p["pf_mailboxes"], "".join(f"{a} OK\n" for a in MAILBOXES + SINKS))
    _write_pf(os.path.join(p["pf_dir"], "main.cf"), _postfix_main_cf(p))
    _make_queue_dirs(p)
    last_err = ""
    for attempt in range(6):
        ports = {name: _free_port(host) for name, host, _, _ in PF_LISTENERS}
        _write_pf(os.path.join(p["pf_dir"], "master.cf"), _postfix_master_cf(p, ports))
        if attempt == 0:
            chk = subprocess.run(["postfix", "-c", p["pf_dir"], "check"], capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL, timeout=60)
            if chk.returncode != 0:
                subprocess.run(["postfix", "-c", p["pf_dir"], "set-permissions"], capture_output=True,
                               stdin=subprocess.DEVNULL, timeout=60)
                chk = subprocess.run(["postfix", "-c", p["pf_dir"], "check"], capture_output=True,
                                     text=True, stdin=subprocess.DEVNULL, timeout=60)
                if chk.returncode != 0:
                    raise TestbedError(f"postfix check failed for {p['pf_dir']}:\n{chk.stderr}{chk.stdout}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p["pf_pid"])  # stale (we checked it is not running)
        log_offset = os.path.getsize(p["pf_log"]) if os.path.exists(p["pf_log"]) else 0
        # The daemonized master inherits stdout/stderr: a file, never a pipe.
        with open(p["pf_start_out"], "w") as out:
            r = subprocess.run(["postfix", "-c", p["pf_dir"], "start"], stdin=subprocess.DEVNULL,
                               stdout=out, stderr=subprocess.STDOUT, timeout=60)
        new_log = (_read(p["pf_log"]) or "")[log_offset:]
        if r.returncode != 0:
            last_err = ((_read(p["pf_start_out"]) or "") + new_log).strip()
            if "in use" in last_err:
                continue  # a port got taken between probing and binding
            raise TestbedError(f"postfix failed to start (rc={r.returncode}); for details run: "
                               f"script -qc 'postfix -c {p['pf_dir']} start' /dev/null\n{last_err}")
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline and not _postfix_running(p):
            time.sleep(POLL)
        if _postfix_ready(p, ports, deadline):
            _write(p["pf_ports"], json.dumps({"ports": ports, "dc_base": p["dc_base"]}) + "\n")
            return ports
        last_err = (_read(p["pf_log"]) or "")[log_offset:][-4000:]
        _stop_postfix(p)
        if "in use" not in last_err:
            raise TestbedError(f"postfix not ready within {READY_TIMEOUT}s:\n{last_err}")
    raise TestbedError(f"postfix could not bind its ports after retries: {last_err}")


def _stop_postfix(p: dict) -> bool:
    """TERM the master found through the pidfile (its children exit with it), then wait."""
    pid = _postfix_master(p, exact=False)
    ok = True
    if pid:
        ok = _signal_and_wait(pid, _pf_marker(p), timeout=10.0)
    if ok:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p["pf_pid"])
        if pid and os.path.isdir(p["pf_queue"]):
            # As `postfix stop` does: the next start skips the slow integrity check.
            with open(os.path.join(p["pf_queue"], "quick-start"), "a"):
                pass
    return ok


# --- public API ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _locked(p: dict):
    os.makedirs(p["dir"], exist_ok=True)
    with open(p["lock"], "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


def _info(p: dict, idp_port: int, ports: dict, cfg: dict, pf_ports: dict) -> dict:
    clients = cfg["tenants"][0]["clients"]
    idp_url = f"https://127.0.0.1:{idp_port}"
    dovecot = {}
    for name, _, host, tls in LISTENERS:
        dovecot[name] = {"host": host, "port": ports[name], "tls": tls, "address": f"{host}:{ports[name]}"}
    postfix = {}
    for name, host, tls, _ in PF_LISTENERS:
        postfix[name] = {"host": host, "port": pf_ports[name], "tls": tls,
                         "address": f"{host}:{pf_ports[name]}"}
    pki = p["pki"]
    return {
        "version": 1,
        "dir": p["dir"],
        "idp_url": idp_url,
        "idp_port": idp_port,
        "authority": idp_url,
        "token_url": f"{idp_url}/{TENANT}/oauth2/v2.0/token",
        "introspection_url": f"{idp_url}/introspect",
        "admin_url": f"{idp_url}/_admin",
        "ca_file": os.path.join(pki, "ca.pem"),
        "certs": {name: {"cert": os.path.join(pki, f"{name}.pem"), "key": os.path.join(pki, f"{name}.key")}
                  for name in ("server", "wronghost", "selfsigned")},
        "tenant": TENANT,
        "tenant_id": TENANT_ID,
        "domain": DOMAIN,
        "client_id": clients[0]["client_id"],
        "client_secret": clients[0]["client_secret"],
        "scope": CCG_SCOPE,
        "clients": [{"client_id": c["client_id"], "client_secret": c["client_secret"],
                     "name": c.get("name", ""), "roles": c.get("roles", APP_ROLES)} for c in clients],
        "mailboxes": list(MAILBOXES),
        "seed": {a: dict(SEED) for a in MAILBOXES},
        "dovecot": dovecot,
        "dovecot_conf": p["dc_conf"],
        "postfix": postfix,
        "postfix_conf_dir": p["pf_dir"],
        "postfix_message_size_limit": PF_MESSAGE_SIZE_LIMIT,
        "sinks": list(SINKS),
        "sockets": {"base_dir": p["dc_base"], "auth_postfix": os.path.join(p["dc_base"], "auth-postfix"),
                    "lmtp": os.path.join(p["dc_base"], "lmtp")},
        "logs": {"idp": p["idp_log"], "dovecot": p["dc_log"], "postfix": p["pf_log"]},
        "pids": {"idp": _read_pid(p["idp_pid"]), "dovecot": _read_pid(p["dc_pid"]),
                 "postfix": _read_pid(p["pf_pid"])},
        "mail_root": p["mail"],
        "started_at": time.time(),
    }


def start(d: str, auth_debug: bool = False) -> dict:
    """Starts (or reuses) the mock IdP, Dovecot and Postfix for directory d (in that order).
    Returns the testbed.json dict."""
    p = _paths(d)
    os.makedirs(p["dir"], exist_ok=True)
    os.chmod(p["dir"], 0o755)
    _check_traversable(p["dir"])
    with _locked(p):
        os.makedirs(p["idp_dir"], exist_ok=True)
        os.chmod(p["idp_dir"], 0o700)
        r = subprocess.run(["sh", MAKE_CERTS, p["pki"]], capture_output=True, text=True)
        if r.returncode != 0:
            raise TestbedError(f"make_certs.sh failed: {r.stderr}")
        os.chmod(p["pki"], 0o755)
        certs_changed = bool(r.stdout.strip())
        cfg = _ensure_idp_config(p)

        idp_port = None if certs_changed else _idp_running(p)
        if idp_port is None:
            old = _read_pid(p["idp_pid"])
            if old:
                _signal_and_wait(old, _idp_cmd_marker(p))
            idp_port = _start_idp(p, _read_pid(p["idp_port"]))

        _seed_mail(p)
        _write_dovecot_users(p)
        state = json.loads(_read(p["dc_ports"]) or "{}")
        ports = state.get("ports")
        reuse = (not certs_changed and _dovecot_running(p) and ports and state.get("idp_port") == idp_port
                 and state.get("debug") == auth_debug
                 and _dovecot_ready(ports, time.monotonic() + 2, p, lambda: True))
        if not reuse:
            _stop_postfix(p)  # it talks to Dovecot's sockets: restart it with Dovecot
            _stop_dovecot(p)
            ports = _start_dovecot(p, idp_port, auth_debug)

        pf_state = json.loads(_read(p["pf_ports"]) or "{}")
        pf_ports = pf_state.get("ports")
        pf_reuse = (not certs_changed and _postfix_running(p) and pf_ports
                    and set(pf_ports) == {n for n, _, _, _ in PF_LISTENERS}
                    and pf_state.get("dc_base") == p["dc_base"]
                    and _read(os.path.join(p["pf_dir"], "main.cf")) == _postfix_main_cf(p)
                    and _postfix_ready(p, pf_ports, time.monotonic() + 2))
        if not pf_reuse:
            _stop_postfix(p)
            pf_ports = _start_postfix(p)
        info = _info(p, idp_port, ports, cfg, pf_ports)
        _write(p["json"], json.dumps(info, indent=2) + "\n", mode=0o600)
        return info


def stop(d: str) -> bool:
    """Stops Postfix, Dovecot, then the mock IdP (pidfiles + cmdline checks). True when all are gone."""
    p = _paths(d)
    if not os.path.isdir(p["dir"]):
        return True
    with _locked(p):
        ok = _stop_postfix(p)
        ok = _stop_dovecot(p) and ok
        pid = _read_pid(p["idp_pid"])
        if pid:
            ok = _signal_and_wait(pid, _idp_cmd_marker(p)) and ok
        if ok:
            for f in (p["idp_pid"], p["idp_port"]):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f)
        return ok


def status(d: str) -> dict:
    p = _paths(d)
    state = json.loads(_read(p["dc_ports"]) or "{}")
    pf_state = json.loads(_read(p["pf_ports"]) or "{}")
    return {
        "idp": {"pid": _read_pid(p["idp_pid"]), "port": _idp_running(p)},
        "dovecot": {"pid": _dovecot_running(p), "ports": state.get("ports")},
        "postfix": {"pid": _postfix_running(p), "ports": pf_state.get("ports")},
        "running": bool(_idp_running(p) and _dovecot_running(p) and _postfix_running(p)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("start", "stop", "status", "token"):
        sp = sub.add_parser(name)
        sp.add_argument("--dir", required=True)
        if name == "start":
            sp.add_argument("--auth-debug", action="store_true",
                            help="Dovecot auth_debug + oauth2 debug (logs contain tokens)")
        if name == "token":
            sp.add_argument("--client-id")
            sp.add_argument("--client-secret")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        if args.cmd == "start":
            info = start(args.dir, auth_debug=args.auth_debug)
            eps = {**info["dovecot"], **{f"postfix.{k}": v for k, v in info["postfix"].items()}}
            print(f"testbed up in {time.monotonic() - t0:.2f}s: idp={info['idp_url']} "
                  + " ".join(f"{k}={v['address']}" for k, v in eps.items()))
            print(f"info: {_paths(args.dir)['json']}")
            return 0
        if args.cmd == "stop":
            ok = stop(args.dir)
            print(f"testbed {'stopped' if ok else 'NOT fully stopped'} in {time.monotonic() - t0:.2f}s")
            return 0 if ok else 1
        if args.cmd == "status":
            st = status(args.dir)
            print(json.dumps(st, indent=2))
            return 0 if st["running"] else 3
        if args.cmd == "token":
            info = load_info(args.dir)
            secret = args.client_secret
            if args.client_id and secret is None:
                secret = next((c["client_secret"] for c in info["clients"] if c["client_id"] == args.client_id), "")
            print(fetch_token(info, args.client_id, secret))
            return 0
    except TestbedError as e:
        print(f"testbed: error: {e}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
