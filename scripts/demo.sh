#!/usr/bin/env bash
# The built-in demo: installs and builds (fresh Debian 12), starts local stand-ins for Microsoft
# (a mock identity platform and a Dovecot IMAP server that accepts XOAUTH2 tokens from it), runs
# the proxy on a demo config, shows a real IMAP login and mailbox listing through it, and leaves
# the proxy running.
#   scripts/demo.sh          set up and run
#   scripts/demo.sh stop     stop the proxy and the stand-ins
# DEMO_PORT (default 1143) is the proxy's IMAP port on 127.0.0.1; DEMO_ADMIN_PORT (default 8025)
# its admin page.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
DEMO_DIR=${DEMO_DIR:-$BUILD_DIR/demo}
DEMO_PORT=${DEMO_PORT:-1143}
DEMO_ADMIN_PORT=${DEMO_ADMIN_PORT:-8025}
DEMO_USER=scanner@contoso.test
DEMO_PASSWORD=demo-password

stop_demo() {
  if [ -f "$DEMO_DIR/proxy.pid" ]; then
    pid=$(cat "$DEMO_DIR/proxy.pid")
    if [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q xoauth-proxy; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$DEMO_DIR/proxy.pid"
  fi
  [ -d "$DEMO_DIR/testbed" ] && python3 tests/testbed/testbed.py stop --dir "$DEMO_DIR/testbed" || true
}

if [ "${1:-}" = "stop" ]; then
  stop_demo
  echo "demo stopped"
  exit 0
fi

scripts/setup.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$BUILD_DIR" -j "$(nproc)" --target xoauth-proxy
BIN=$BUILD_DIR/xoauth-proxy

stop_demo
mkdir -p "$DEMO_DIR"
python3 tests/testbed/testbed.py start --dir "$DEMO_DIR/testbed"
TB=$DEMO_DIR/testbed/testbed.json

# The demo config: one provider (the mock identity platform), one IMAP listener, one account.
HASH=$(printf '%s\n' "$DEMO_PASSWORD" | "$BIN" hash-password)
python3 - "$TB" "$DEMO_DIR" "$DEMO_PORT" "$HASH" "$DEMO_ADMIN_PORT" <<'PY'
import json, os, sys
tb = json.load(open(sys.argv[1]))
demo, port, pw_hash, admin = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
secret_file = os.path.join(demo, "client_secret")
with open(os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
    f.write(tb["client_secret"] + "\n")
up = tb["dovecot"]["imaps"]["address"]
open(os.path.join(demo, "demo.toml"), "w").write(f"""# xoauth-proxy demo: the identity platform and the IMAP server are local stand-ins.
[proxy]
state_dir = "{demo}/state"
log_level = "info"
admin_listen = "127.0.0.1:{admin}"   # status page, health, OAuth redirect callback

[[provider]]
name = "demo"
tenant = "{tb['tenant']}"
client_id = "{tb['client_id']}"
client_secret_file = "{secret_file}"
authority = "{tb['authority']}"   # stands in for https://login.microsoftonline.com
ca_file = "{tb['ca_file']}"

[[listener]]
protocol = "imap"
listen = "127.0.0.1:{port}"
tls = "none"
upstream = "{up}"                 # stands in for outlook.office365.com:993
upstream_tls = "implicit"
upstream_ca_file = "{tb['ca_file']}"

[[account]]
login = "scanner@contoso.test"
provider = "demo"
flow = "client_credentials"
password_hash = "{pw_hash}"
""")
PY

"$BIN" check --config "$DEMO_DIR/demo.toml"
nohup "$BIN" run --config "$DEMO_DIR/demo.toml" >"$DEMO_DIR/proxy.log" 2>&1 </dev/null &
echo $! >"$DEMO_DIR/proxy.pid"
for _ in $(seq 200); do
  grep -q "listening on" "$DEMO_DIR/proxy.log" && break
  kill -0 "$(cat "$DEMO_DIR/proxy.pid")" 2>/dev/null || { cat "$DEMO_DIR/proxy.log"; exit 1; }
  sleep 0.1
done
grep -q "listening on" "$DEMO_DIR/proxy.log" || { cat "$DEMO_DIR/proxy.log"; exit 1; }

echo
echo "== A real IMAP login through the proxy (python3 imaplib, plain password) =="
python3 - "$DEMO_PORT" "$DEMO_USER" "$DEMO_PASSWORD" <<'PY'
import imaplib, sys
port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
m = imaplib.IMAP4("127.0.0.1", port)
print("S:", m.welcome.decode())
typ, data = m.login(user, password)
print(f"C: LOGIN {user} ********  ->  {typ}")
typ, boxes = m.list()
print("mailboxes:")
for b in boxes:
    print("   ", b.decode())
typ, count = m.select("INBOX", readonly=True)
print(f"INBOX holds {count[0].decode()} message(s):")
typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
for part in data:
    if isinstance(part, tuple):
        print("   ", part[1].decode().strip())
m.logout()
PY

cat <<EOF2

The proxy is running (pid $(cat "$DEMO_DIR/proxy.pid"), log: $DEMO_DIR/proxy.log).
Point any IMAP client at 127.0.0.1:$DEMO_PORT, no TLS, user $DEMO_USER, password $DEMO_PASSWORD:
  curl -s --user '$DEMO_USER:$DEMO_PASSWORD' imap://127.0.0.1:$DEMO_PORT/INBOX -X 'FETCH 1 BODY[HEADER.FIELDS (SUBJECT)]'
Status page: http://127.0.0.1:$DEMO_ADMIN_PORT/   (health: /healthz)
Config: $DEMO_DIR/demo.toml     Stop everything: scripts/demo.sh stop
EOF2
