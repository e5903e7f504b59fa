#!/usr/bin/env bash
# Container test: builds the image from the Dockerfile with Debian's podman, runs it next to a
# private test bed and logs in through it with real clients (python3 imaplib, poplib, smtplib).
#
#   scripts/container-test.sh          (root: rootful podman; BUILD_DIR defaults to build/)
#
# No registry is reachable, so the base image is made here: `debootstrap --variant=minbase
# bookworm` from the Debian mirror that apt uses, slimmed like debian:bookworm-slim, cached as
# $BUILD_DIR/container/debian-bookworm-minbase.tar (rebuilt after XOAUTH_BASE_MAX_AGE_DAYS, 30)
# and loaded with `podman import`. The image is built with --pull=never --format docker (keeps
# HEALTHCHECK) --build-arg BASE=that image. podman runs with runc and lowered default ulimits
# (podman's defaults are above what this machine allows), through a private containers.conf.
#
# What it checks: the image (non-root user, volume, health check, ports, no compiler, every
# shared library found); the proxy container on the host network (read-only root, no
# capabilities) with config, CA and secrets mounted and a named volume as state_dir, against its
# own test bed in $BUILD_DIR/container-testbed (never the shared one); IMAP, POP3 and SMTP logins
# through it, a wrong password refused; `podman healthcheck run` (and the same check failing
# where no admin listener is); `xoauth-proxy check` in the container; a clean stop on SIGTERM.
# Then, when scripts/check-examples.sh has left a .deb in $BUILD_DIR/package: that package
# installed in a container with systemd as PID 1 (scripts/container-test.systemd.Containerfile),
# xoauth-proxy.service started with examples/config.toml pointed at the test bed
# (scripts/container-test-config.py), the same logins through it.
#
# Exit status: 0 passed, 1 failed, 77 skipped: podman cannot run a container here at all (for
# example no permission to create namespaces); a banner on stderr says so.
# Environment: XOAUTH_CONTAINER_JOBS (compile jobs in the image build, default 2),
# XOAUTH_DEBIAN_MIRROR / XOAUTH_DEBIAN_SECURITY_MIRROR (default: from /etc/apt/sources*),
# XOAUTH_KEEP_CONTAINER=1 (leave the container, volume and test bed for a look afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
WORK=$BUILD_DIR/container
RUN_DIR=$WORK/run
TB_DIR=$BUILD_DIR/container-testbed
BASE_TAR=$WORK/debian-bookworm-minbase.tar
BASE_IMAGE=localhost/xoauth-proxy-base:bookworm
# Names of their own per BUILD_DIR, so that two checkouts can run this at once.
TAG=test-$(printf '%s' "$BUILD_DIR" | sha256sum | cut -c1-8)
IMAGE=localhost/xoauth-proxy:$TAG
BUILD_IMAGE=localhost/xoauth-proxy-build:$TAG        # the build stage, tagged so its layers stay cached
SD_IMAGE=localhost/xoauth-proxy-systemd:$TAG         # the .deb installed, systemd as PID 1
NAME=xoauth-proxy-c$TAG
SD_NAME=xoauth-proxy-c$TAG-systemd
VOLUME=xoauth-proxy-c$TAG-state
JOBS=${XOAUTH_CONTAINER_JOBS:-2}
BASE_MAX_AGE_DAYS=${XOAUTH_BASE_MAX_AGE_DAYS:-30}
SYS_PYTHON=/usr/bin/python3     # Debian's, whatever python3 is first on PATH
T0=$SECONDS

log() { printf '[container-test +%ss] %s\n' "$((SECONDS - T0))" "$*"; }
fail() { printf '[container-test] FAILED: %s\n' "$*" >&2; exit 1; }
banner() {
  {
    printf '\n%s\n' "########################################################################"
    printf '#  CONTAINER TEST SKIPPED: %s\n' "$1"
    shift
    for line in "$@"; do printf '#  %s\n' "$line"; done
    printf '%s\n\n' "########################################################################"
  } >&2
}

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    exec sudo -n --preserve-env=BUILD_DIR,XOAUTH_CONTAINER_JOBS,XOAUTH_DEBIAN_MIRROR,XOAUTH_DEBIAN_SECURITY_MIRROR,XOAUTH_KEEP_CONTAINER,XOAUTH_BASE_MAX_AGE_DAYS "$0" "$@"
  fi
  banner "not root" "This test uses rootful podman and debootstrap; run it as root."
  exit 77
fi
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/setup.sh installs it)"
done
mkdir -p "$WORK" "$RUN_DIR"
# The clients, used against the image and against the .deb under systemd.
cat > "$WORK/clients.py" <<'EOF'
import imaplib, poplib, smtplib, sys
imap_port, pop3_port, smtp_port = (int(p) for p in sys.argv[1:4])
password, login = sys.argv[4], "scanner@contoso.test"

m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
typ, data = m.login(login, password)
assert typ == "OK", (typ, data)
typ, data = m.select("INBOX", readonly=True)
assert typ == "OK" and int(data[0]) >= 1, (typ, data)
exists = int(data[0])
typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert typ == "OK" and b"Subject" in data[0][1], (typ, data)
m.logout()
print(f"  imap: logged in, INBOX has {exists} messages, fetched one")

m = imaplib.IMAP4("127.0.0.1", imap_port, timeout=30)
try:
    m.login(login, password + "-wrong")
    raise AssertionError("IMAP login with a wrong password succeeded")
except imaplib.IMAP4.error as e:
    print(f"  imap: wrong password refused: {e}")
m.logout()

p = poplib.POP3("127.0.0.1", pop3_port, timeout=30)
p.user(login)
p.pass_(password)
count, size = p.stat()
assert count >= 1, (count, size)
p.quit()
print(f"  pop3: logged in, {count} messages")

s = smtplib.SMTP("127.0.0.1", smtp_port, timeout=30)
s.ehlo("container-test")
s.login(login, password)
refused = s.sendmail(login, ["receiver@contoso.test"],
                     "From: scanner@contoso.test\r\nTo: receiver@contoso.test\r\n"
                     "Subject: container test\r\n\r\nsent through the xoauth-proxy container\r\n")
assert not refused, refused
s.quit()
print("  smtp: logged in, message accepted")
EOF

# --- podman settings: runc, ulimits this machine allows, no systemd needed ------------------------
hard_nofile=$(ulimit -Hn); [ "$hard_nofile" = unlimited ] && hard_nofile=1048576
hard_nproc=$(ulimit -Hu); [ "$hard_nproc" = unlimited ] && hard_nproc=1048576
nofile=$(( hard_nofile < 65536 ? hard_nofile : 65536 ))
nproc=$(( hard_nproc < 16384 ? hard_nproc : 16384 ))   # podman itself caps its children lower
cat > "$WORK/containers.conf" <<EOF
# Written by scripts/container-test.sh (CONTAINERS_CONF); the system's containers.conf is not used.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF=$WORK/containers.conf
# Without systemd as PID 1 podman cannot schedule the periodic health check (a systemd timer); it
# still runs it on demand (`podman healthcheck run`), which is what this test does.
HEALTH_OPTS=()
[ -d /run/systemd/system ] || HEALTH_OPTS=(--health-interval=disable)

# --- the base image: debootstrap minbase, cached --------------------------------------------------
apt_mirrors() {  # prints "MIRROR SECURITY_MIRROR" for bookworm from apt's sources
  "$SYS_PYTHON" - <<'EOF'
import glob, re
main = sec = ""
def consider(uris, suites):
    global main, sec
    for u in uris:
        if not main and "bookworm" in suites:
            main = u
        if not sec and "bookworm-security" in suites:
            sec = u
files = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*"))
for f in files:
    try:
        text = open(f).read()
    except OSError:
        continue
    if f.endswith(".sources"):
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
                if m:
                    fields[m.group(1).lower()] = m.group(2).split()
            if "deb" in fields.get("types", []) and fields.get("enabled", ["yes"]) != ["no"]:
                consider(fields.get("uris", []), fields.get("suites", []))
    elif f.endswith(".list"):
        for line in text.splitlines():
            line = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb":
                consider([line[1]], [line[2]])
print(main or "http://deb.debian.org/debian", sec or "")
EOF
}

make_base_tarball() {
  local mirror=$1 security=$2 root=$WORK/base-root
  log "debootstrap --variant=minbase bookworm from $mirror (about 30-60 s)"
  rm -rf "$root"
  if ! debootstrap --variant=minbase bookworm "$root" "$mirror" > "$WORK/debootstrap.log" 2>&1; then
    tail -20 "$WORK/debootstrap.log" >&2
    fail "debootstrap failed (log: $WORK/debootstrap.log)"
  fi
  # Slim it like debian:bookworm-slim: no package caches, lists, manuals, docs or translations,
  # and dpkg told not to install them later.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/cache/apt/*.bin "$root"/var/lib/apt/lists/* \
         "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
         "$root"/var/log/*.log "$root"/var/log/apt/*
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  cat > "$root/etc/dpkg/dpkg.cfg.d/xoauth-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
  rm -f "$root/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\n' "$mirror"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$security" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\n' "$security"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } > "$root/etc/apt/sources.list.d/debian.sources"
  : > "$root/etc/machine-id"
  tar -C "$root" --numeric-owner -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  rm -rf "$root"
}

read -r MIRROR SECURITY_MIRROR < <(apt_mirrors)
MIRROR=${XOAUTH_DEBIAN_MIRROR:-$MIRROR}
SECURITY_MIRROR=${XOAUTH_DEBIAN_SECURITY_MIRROR:-$SECURITY_MIRROR}
if [ ! -s "$BASE_TAR" ] || [ -n "$(find "$BASE_TAR" -mtime +"$BASE_MAX_AGE_DAYS" 2>/dev/null)" ]; then
  make_base_tarball "$MIRROR" "$SECURITY_MIRROR"
else
  log "base tarball cached: $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1), from $(date -r "$BASE_TAR" +%F))"
fi
base_sum=$(sha256sum "$BASE_TAR" | cut -c1-64)
if [ "$(podman image inspect --format '{{index .Labels "xoauth.base.sha256"}}' "$BASE_IMAGE" 2>/dev/null || true)" != "$base_sum" ]; then
  log "podman import $BASE_TAR -> $BASE_IMAGE"
  podman import -q --change 'CMD ["bash"]' --change "LABEL xoauth.base.sha256=$base_sum" \
    "$BASE_TAR" "$BASE_IMAGE" > /dev/null
fi

# --- can podman run a container here at all? -------------------------------------------------------
if ! probe=$(podman run --rm --network none "$BASE_IMAGE" true 2>&1); then
  banner "podman cannot run a container in this environment" \
    "podman run --rm --network none $BASE_IMAGE true said:" \
    "${probe//$'\n'/ | }" \
    "The image was NOT built or tested. (scripts/container-test.sh)"
  exit 77
fi

# --- build the image -------------------------------------------------------------------------------
build_args=(--pull=never --format docker --build-arg "BASE=$BASE_IMAGE" --build-arg "JOBS=$JOBS"
            -f "$ROOT/Dockerfile")
log "podman build (the build stage compiles xoauth-proxy with -j$JOBS: several minutes when the sources changed)"
t=$SECONDS
if ! podman build "${build_args[@]}" --target build -t "$BUILD_IMAGE" "$ROOT" > "$WORK/build.log" 2>&1 \
   || ! podman build "${build_args[@]}" -t "$IMAGE" "$ROOT" >> "$WORK/build.log" 2>&1; then
  tail -40 "$WORK/build.log" >&2
  fail "podman build failed (log: $WORK/build.log)"
fi
log "image built in $((SECONDS - t)) s (log: $WORK/build.log)"
# Drop what earlier builds of this Dockerfile left behind: untagged images carrying its labels
# (the current images and their layers stay; other images are not touched).
for title in xoauth-proxy xoauth-proxy-build; do
  podman image prune -f --filter "label=org.opencontainers.image.title=$title" > /dev/null 2>&1 || true
done

# --- the image's metadata and contents ---------------------------------------------------------------
inspect() { podman image inspect --format "$1" "$IMAGE"; }
size=$(inspect '{{.Size}}')
log "image $IMAGE: $((size / 1000000)) MB (base $(( $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE") / 1000000 )) MB)"
user=$(inspect '{{.Config.User}}')
[ -n "$user" ] && [ "${user%%:*}" != 0 ] && [ "${user%%:*}" != root ] || fail "image user is '$user', expected non-root"
health=$(inspect '{{json .Config.Healthcheck}}')
grep -q '/healthz' <<< "$health" || fail "no HEALTHCHECK on /healthz in the image (got $health; built with --format docker?)"
inspect '{{json .Config.Volumes}}' | grep -q '"/var/lib/xoauth-proxy"' || fail "/var/lib/xoauth-proxy is not a VOLUME"
for p in 1143 1110 1587 8025; do
  inspect '{{json .Config.ExposedPorts}}' | grep -q "\"$p/tcp\"" || fail "port $p is not EXPOSEd"
done
podman run --rm --network none --no-healthcheck --entrypoint bash "$IMAGE" -c '
  set -e
  for tool in gcc g++ cc c++ cmake ninja make curl wget; do
    if command -v "$tool" >/dev/null; then echo "build or network tool in the runtime image: $tool" >&2; exit 1; fi
  done
  if ldd /usr/local/bin/xoauth-proxy | grep "not found"; then exit 1; fi
  [ "$(id -u)" = 10001 ] && [ "$(stat -c %u:%a /var/lib/xoauth-proxy)" = 10001:700 ]
  xoauth-proxy --version' > "$WORK/image-check.log" 2>&1 \
  || { cat "$WORK/image-check.log" >&2; fail "runtime image contents"; }
log "image checks passed: user $user, $(cat "$WORK/image-check.log")"

# --- the test bed and a config for the container --------------------------------------------------
cleanup() {
  local rc=$?
  if [ "${XOAUTH_KEEP_CONTAINER:-0}" = 1 ]; then
    log "kept: containers $NAME and $SD_NAME, volume $VOLUME, test bed $TB_DIR"
  else
    podman rm -f -t 0 "$NAME" "$SD_NAME" > /dev/null 2>&1 || true
    podman volume rm -f "$VOLUME" > /dev/null 2>&1 || true
    python3 "$ROOT/tests/testbed/testbed.py" stop --dir "$TB_DIR" > /dev/null 2>&1 || true
    rm -rf "$RUN_DIR/secrets" "$RUN_DIR/systemd-etc"
  fi
  exit $rc
}
trap cleanup EXIT
podman rm -f -t 0 "$NAME" "$SD_NAME" > /dev/null 2>&1 || true   # left over from an interrupted run
podman volume rm -f "$VOLUME" > /dev/null 2>&1 || true

log "starting the test bed in $TB_DIR"
python3 "$ROOT/tests/testbed/testbed.py" start --dir "$TB_DIR" > "$WORK/testbed.log" 2>&1 \
  || { cat "$WORK/testbed.log" >&2; fail "test bed did not start"; }

PASSWORD="ctest-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
HASH=$(printf '%s\n' "$PASSWORD" | podman run --rm -i --network none --no-healthcheck "$IMAGE" hash-password)
[[ $HASH == '$argon2id$'* ]] || fail "hash-password in the container printed '$HASH'"

# examples/config.toml pointed at the test bed; its secret files go to a mount of their own at
# /run/secrets, as compose does with secrets, and CREDENTIALS_DIRECTORY names it.
rm -rf "$RUN_DIR" && mkdir -p "$RUN_DIR/etc" "$RUN_DIR/secrets"
read -r IMAP_PORT POP3_PORT SMTP_PORT ADMIN_PORT < <("$SYS_PYTHON" "$ROOT/scripts/container-test-config.py" \
  "$ROOT/examples/config.toml" "$TB_DIR/testbed.json" "$RUN_DIR/etc" "$HASH")
mv "$RUN_DIR/etc/client_secret" "$RUN_DIR/etc/token_key" "$RUN_DIR/secrets/"
# The proxy runs as uid 10001: what it reads must be readable by it (as with real mounts).
chown -R 10001:10001 "$RUN_DIR/secrets" && chmod 0500 "$RUN_DIR/secrets" && chmod 0400 "$RUN_DIR"/secrets/*
chmod 0644 "$RUN_DIR/etc/config.toml" "$RUN_DIR/etc/ca.pem"

# --- run the proxy container -------------------------------------------------------------------------
log "podman run $IMAGE on the host network (imap $IMAP_PORT, pop3 $POP3_PORT, smtp $SMTP_PORT, admin $ADMIN_PORT)"
podman volume create "$VOLUME" > /dev/null
podman run -d --name "$NAME" --network host \
  --read-only --cap-drop ALL --security-opt no-new-privileges \
  -e CREDENTIALS_DIRECTORY=/run/secrets -e "XOAUTH_HEALTHCHECK_ADDR=127.0.0.1:$ADMIN_PORT" \
  -v "$RUN_DIR/etc/config.toml:/etc/xoauth-proxy/config.toml:ro" \
  -v "$RUN_DIR/etc/ca.pem:/etc/xoauth-proxy/ca.pem:ro" \
  -v "$RUN_DIR/secrets:/run/secrets:ro" \
  -v "$VOLUME:/var/lib/xoauth-proxy" \
  "${HEALTH_OPTS[@]}" "$IMAGE" > /dev/null 2> "$WORK/run.err" \
  || { cat "$WORK/run.err" >&2; fail "podman run"; }

ready=0
for _ in $(seq 1 150); do
  logs=$(podman logs "$NAME" 2>&1 || true)
  if [ "$(grep -c 'listening on .* protocol=' <<< "$logs")" -ge 3 ] && grep -q 'admin listening on' <<< "$logs"; then
    ready=1; break
  fi
  [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" = true ] || break
  sleep 0.2
done
if [ "$ready" != 1 ]; then
  podman logs "$NAME" >&2 || true
  fail "the proxy container did not come up (state: $(podman inspect --format '{{.State.Status}} exit {{.State.ExitCode}}' "$NAME"))"
fi
log "proxy ready"

# --- health check, check, state ---------------------------------------------------------------------
podman healthcheck run "$NAME" > "$WORK/health.log" 2>&1 || { cat "$WORK/health.log" >&2; fail "podman healthcheck run"; }
status=$(podman inspect --format '{{.State.Health.Status}}' "$NAME" 2>/dev/null \
         || podman inspect --format '{{.State.Healthcheck.Status}}' "$NAME")
[ "$status" = healthy ] || fail "health status '$status' after podman healthcheck run"
log "podman healthcheck run: $status"
# The same check must fail when nothing listens there, and when what answers is no HTTP server.
health_script=$(podman image inspect --format '{{json .Config.Healthcheck.Test}}' "$IMAGE" \
  | "$SYS_PYTHON" -c 'import json,sys; t=json.load(sys.stdin); assert t[:3]==["CMD","bash","-c"], t; print(t[3])')
closed_port=$("$SYS_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
for addr in "127.0.0.1:$closed_port" "127.0.0.1:$IMAP_PORT"; do
  if podman exec -e "XOAUTH_HEALTHCHECK_ADDR=$addr" "$NAME" bash -c "$health_script" > /dev/null 2>&1; then
    fail "the health check passed against $addr (nothing there / not the admin listener)"
  fi
done
log "the health check fails against a closed port and against the IMAP listener"
podman exec "$NAME" xoauth-proxy check > "$WORK/check.log" 2>&1 \
  || { cat "$WORK/check.log" >&2; fail "xoauth-proxy check inside the container"; }
podman exec "$NAME" bash -c 'set -e; cd /var/lib/xoauth-proxy; [ "$(stat -c %u:%a .)" = 10001:700 ]; test -s admin.json' \
  || fail "state_dir volume: expected owner 10001, mode 0700 and admin.json in it"

# --- real clients through the proxy ------------------------------------------------------------------
log "IMAP, POP3 and SMTP logins through the container"
"$SYS_PYTHON" "$WORK/clients.py" "$IMAP_PORT" "$POP3_PORT" "$SMTP_PORT" "$PASSWORD" \
  || { podman logs --tail 30 "$NAME" >&2; fail "logins through the container"; }
logs=$(podman logs "$NAME" 2>&1)
if grep -q "$PASSWORD" <<< "$logs"; then fail "the local password appears in the container log"; fi

# --- a clean stop --------------------------------------------------------------------------------------
podman stop -t 20 "$NAME" > "$WORK/stop.log" 2>&1
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || { podman logs --tail 20 "$NAME" >&2; fail "the proxy exited with $code on SIGTERM"; }
log "stopped cleanly on SIGTERM"

# --- the .deb and its systemd unit, run by systemd in a container -------------------------------------
# Whether the unit's hardening (DynamicUser, credentials, ProtectSystem=strict, the system call
# filter, MemoryDenyWriteExecute ...) lets the proxy work shows only when systemd runs it. The
# config is examples/config.toml with the test bed's endpoints; it and the secrets are root-only
# files in /etc/xoauth-proxy that reach the service through LoadCredential=.
deb=$(ls "$BUILD_DIR"/package/xoauth-proxy_*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ]; then
  log "NOTE: no .deb in $BUILD_DIR/package (scripts/check-examples.sh builds it): the systemd part did not run"
else
  log "the .deb under systemd: $(basename "$deb")"
  sd_ctx=$WORK/systemd-image
  rm -rf "$sd_ctx" && mkdir -p "$sd_ctx"
  cp "$deb" "$sd_ctx/xoauth-proxy.deb"
  cp "$ROOT/scripts/container-test.systemd.Containerfile" "$sd_ctx/Containerfile"
  podman build --pull=never --format docker --build-arg "BASE=$BASE_IMAGE" -t "$SD_IMAGE" "$sd_ctx" \
    > "$WORK/systemd-build.log" 2>&1 || { tail -20 "$WORK/systemd-build.log" >&2; fail "building the systemd test image"; }
  podman image prune -f --filter "label=org.opencontainers.image.title=xoauth-proxy-systemd-test" > /dev/null 2>&1 || true

  sd_etc=$RUN_DIR/systemd-etc
  mkdir -p "$sd_etc"
  read -r SD_IMAP SD_POP3 SD_SMTP _ < <("$SYS_PYTHON" "$ROOT/scripts/container-test-config.py" \
    "$ROOT/examples/config.toml" "$TB_DIR/testbed.json" "$sd_etc" "$HASH")
  chmod 0755 "$sd_etc"
  chmod 0600 "$sd_etc/config.toml" "$sd_etc/client_secret" "$sd_etc/token_key"
  chmod 0644 "$sd_etc/ca.pem"
  podman run -d --name "$SD_NAME" --network host --systemd=always --no-healthcheck \
    -v "$sd_etc:/etc/xoauth-proxy:ro" "$SD_IMAGE" > /dev/null 2> "$WORK/systemd-run.err" \
    || { cat "$WORK/systemd-run.err" >&2; fail "podman run (systemd)"; }
  state=""
  for _ in $(seq 1 60); do
    state=$(podman exec "$SD_NAME" systemctl is-system-running 2>/dev/null || true)
    case $state in running|degraded) break ;; esac
    sleep 0.5
  done
  case $state in
    running|degraded) ;;
    *)
      banner "systemd did not boot in a container here (state '$state')" \
        "The image test above PASSED; only the .deb/systemd part was not run."
      log "PASSED in $((SECONDS - T0)) s (image $((size / 1000000)) MB; systemd part skipped)"
      exit 0 ;;
  esac
  podman exec "$SD_NAME" systemctl enable --now xoauth-proxy > "$WORK/systemd-enable.log" 2>&1 \
    || { podman exec "$SD_NAME" journalctl -u xoauth-proxy --no-pager >&2 || true; fail "systemctl enable --now xoauth-proxy"; }
  ready=0
  for _ in $(seq 1 100); do
    if podman exec "$SD_NAME" journalctl -u xoauth-proxy --no-pager -o cat 2>/dev/null | grep -q 'admin listening on'; then
      ready=1; break
    fi
    sleep 0.2
  done
  if [ "$ready" != 1 ]; then
    podman exec "$SD_NAME" systemctl status xoauth-proxy --no-pager >&2 || true
    podman exec "$SD_NAME" journalctl -u xoauth-proxy --no-pager >&2 || true
    fail "xoauth-proxy.service did not come up under systemd"
  fi
  "$SYS_PYTHON" "$WORK/clients.py" "$SD_IMAP" "$SD_POP3" "$SD_SMTP" "$PASSWORD" \
    || { podman exec "$SD_NAME" journalctl -u xoauth-proxy --no-pager -n 30 >&2 || true; fail "logins through the systemd service"; }
  # DynamicUser: not root, the state in /var/lib/private/xoauth-proxy, 0700, owned by that user.
  podman exec "$SD_NAME" bash -c '
    set -e
    pid=$(systemctl show -p MainPID --value xoauth-proxy)
    uid=$(awk "/^Uid:/ {print \$2}" /proc/$pid/status)
    [ "$uid" != 0 ]
    [ "$(stat -c %u:%a /var/lib/private/xoauth-proxy)" = "$uid:700" ]
    [ -L /var/lib/xoauth-proxy ] && test -s /var/lib/private/xoauth-proxy/admin.json
    systemctl stop xoauth-proxy
    [ "$(systemctl show -p Result --value xoauth-proxy)" = success ]' > "$WORK/systemd-check.log" 2>&1 \
    || { cat "$WORK/systemd-check.log" >&2; fail "the service's user, state directory or stop"; }
  exposure=$(podman exec "$SD_NAME" systemd-analyze security xoauth-proxy --no-pager 2>/dev/null \
             | grep -o 'Overall exposure level.*' || true)
  podman rm -f -t 0 "$SD_NAME" > /dev/null 2>&1 || true
  log "xoauth-proxy.service from the .deb: logins work under DynamicUser and the hardening; ${exposure:-}"
fi
log "PASSED in $((SECONDS - T0)) s (image $((size / 1000000)) MB)"
