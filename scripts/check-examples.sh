#!/usr/bin/env bash
# Checks examples/ and the packaging with the checkers this machine has:
#   - examples/xoauth-proxy.service: systemd-analyze verify (any message fails) and
#     systemd-analyze security --offline (exposure at most 2.0);
#   - examples/docker-compose.yml, examples/kubernetes-pod.yaml: parsed with python3-yaml, and the
#     sidecar set-up they promise checked (shared network namespace, secrets as files, the state
#     volume, a non-root read-only proxy);
#   - examples/config.toml: `xoauth-proxy check` with its secret files provided;
#   - cmake --install into a scratch prefix, then cpack -G DEB: the .deb's fields and contents.
# Usage: scripts/check-examples.sh   (BUILD_DIR defaults to build/, which must hold a built xoauth-proxy)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
BIN=$BUILD_DIR/xoauth-proxy
SYS_PYTHON=/usr/bin/python3     # Debian's python3 with python3-yaml
[ -x "$BIN" ] || { echo "check-examples: $BIN not built" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
failures=0
ok() { printf 'check-examples: ok    %s\n' "$*"; }
bad() { printf 'check-examples: FAIL  %s\n' "$*" >&2; failures=$((failures + 1)); }

# --- cmake --install: the layout -------------------------------------------------------------------
prefix=$TMP/prefix
if cmake --install "$BUILD_DIR" --prefix "$prefix" > "$TMP/install.log" 2>&1; then
  missing=()
  for f in bin/xoauth-proxy share/doc/xoauth-proxy/examples/config.toml \
           share/doc/xoauth-proxy/examples/docker-compose.yml \
           share/doc/xoauth-proxy/examples/kubernetes-pod.yaml \
           share/doc/xoauth-proxy/examples/xoauth-proxy.service \
           share/doc/xoauth-proxy/README.md share/doc/xoauth-proxy/configuration.md \
           lib/systemd/system/xoauth-proxy.service; do
    [ -e "$prefix/$f" ] || missing+=("$f")
  done
  if [ -e "$prefix/share/man/man1/xoauth-proxy.1.gz" ]; then
    help_doc="share/man/man1/xoauth-proxy.1.gz"
    # The manual page must render and name every subcommand.
    if command -v man > /dev/null; then
      zcat "$prefix/$help_doc" | MANWIDTH=100 man -l - 2>"$TMP/man.err" > "$TMP/man.txt" || true
    else
      zcat "$prefix/$help_doc" > "$TMP/man.txt"
    fi
    for sub in run check authorize hash-password; do
      grep -q "xoauth-proxy $sub" "$TMP/man.txt" || missing+=("$sub in the manual page")
    done
    [ ! -s "$TMP/man.err" ] || missing+=("a clean man rendering: $(head -3 "$TMP/man.err")")
  elif [ -e "$prefix/share/doc/xoauth-proxy/xoauth-proxy.txt" ]; then
    help_doc="share/doc/xoauth-proxy/xoauth-proxy.txt"
  else
    missing+=("the manual page or the --help text")
  fi
  grep -qx "ExecStart=$prefix/bin/xoauth-proxy run --config %d/config.toml" \
    "$prefix/lib/systemd/system/xoauth-proxy.service" || missing+=("the installed unit's ExecStart in $prefix/bin")
  if [ ${#missing[@]} -eq 0 ]; then
    ok "cmake --install: binary, $help_doc, examples, docs, systemd unit"
  else
    bad "cmake --install: missing ${missing[*]}"
  fi
else
  cat "$TMP/install.log" >&2
  bad "cmake --install failed"
fi

# --- systemd unit -----------------------------------------------------------------------------------
unit_dir=$TMP/unit
mkdir -p "$unit_dir"
# Verify it against the binary just built (verify checks that ExecStart= exists) and, when there
# is one, the manual page just installed (verify checks Documentation=man:).
sed "s#/usr/bin/xoauth-proxy#$BIN#g" examples/xoauth-proxy.service > "$unit_dir/xoauth-proxy.service"
man_opt=(--man=no)
if [ -e "$prefix/share/man/man1/xoauth-proxy.1.gz" ]; then
  export MANPATH="$prefix/share/man:"
  man_opt=(--man=yes)
fi
if out=$(systemd-analyze verify "${man_opt[@]}" "$unit_dir/xoauth-proxy.service" 2>&1) && [ -z "$out" ]; then
  ok "systemd-analyze verify examples/xoauth-proxy.service"
else
  bad "systemd-analyze verify examples/xoauth-proxy.service: $out"
fi
for key in 'DynamicUser=yes' 'StateDirectory=xoauth-proxy' 'ProtectSystem=strict' 'NoNewPrivileges=yes'; do
  grep -qx "$key" examples/xoauth-proxy.service || bad "examples/xoauth-proxy.service lacks $key"
done
if out=$(systemd-analyze security --offline=yes --threshold=20 "$unit_dir/xoauth-proxy.service" 2>&1); then
  ok "systemd-analyze security: $(grep -o 'Overall exposure level.*' <<< "$out")"
else
  bad "systemd-analyze security: exposure above 2.0: $(grep -o 'Overall exposure level.*' <<< "$out")"
fi

# --- YAML: compose and Kubernetes ---------------------------------------------------------------------
if out=$("$SYS_PYTHON" - examples/docker-compose.yml examples/kubernetes-pod.yaml 2>&1 <<'EOF'
import sys, yaml

compose_path, k8s_path = sys.argv[1:3]
problems = []
def need(cond, what):
    if not cond:
        problems.append(what)

with open(compose_path) as f:
    c = yaml.safe_load(f)
svc = c["services"]
proxy, app = svc["xoauth-proxy"], svc["legacy-app"]
need(app.get("network_mode") == "service:xoauth-proxy", "compose: the app does not share the proxy's network namespace")
need(app.get("depends_on", {}).get("xoauth-proxy", {}).get("condition") == "service_healthy",
     "compose: the app does not wait for a healthy proxy")
need(proxy.get("read_only") is True and "ALL" in proxy.get("cap_drop", []), "compose: proxy not read-only without capabilities")
need(any(str(v).endswith(":/var/lib/xoauth-proxy") for v in proxy.get("volumes", [])), "compose: no state volume")
need(any(str(v).endswith(":/etc/xoauth-proxy/config.toml:ro") for v in proxy.get("volumes", [])), "compose: no config mount")
for s in proxy.get("secrets", []):
    need(s in c.get("secrets", {}) and "file" in c["secrets"][s], f"compose: secret {s} not defined as a file")
need(set(proxy.get("secrets", [])) >= {"client_secret", "token_key"}, "compose: secrets missing")
need(proxy.get("environment", {}).get("CREDENTIALS_DIRECTORY") == "/run/secrets", "compose: CREDENTIALS_DIRECTORY")

with open(k8s_path) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
kinds = {d["kind"]: d for d in docs}
need(set(kinds) == {"Pod", "PersistentVolumeClaim"}, f"k8s: kinds {sorted(kinds)}")
pod = kinds["Pod"]["spec"]
sidecars = [x for x in pod.get("initContainers", []) if x.get("restartPolicy") == "Always"]
need(len(sidecars) == 1 and sidecars[0]["name"] == "xoauth-proxy", "k8s: xoauth-proxy is not a native sidecar")
px = sidecars[0] if sidecars else {}
need(len(pod.get("containers", [])) == 1, "k8s: expected one application container")
sc = px.get("securityContext", {})
need(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
     and sc.get("runAsUser") == 10001 and "ALL" in sc.get("capabilities", {}).get("drop", []),
     "k8s: proxy securityContext")
vols = {v["name"]: v for v in pod.get("volumes", [])}
mounts = {m["mountPath"]: m for m in px.get("volumeMounts", [])}
sec = mounts.get("/run/secrets/xoauth-proxy", {})
need(sec.get("readOnly") is True and "secret" in vols.get(sec.get("name"), {}), "k8s: Secret not mounted as files")
cfg = mounts.get("/etc/xoauth-proxy", {})
need("configMap" in vols.get(cfg.get("name"), {}), "k8s: config not mounted from a ConfigMap")
st = mounts.get("/var/lib/xoauth-proxy", {})
need("persistentVolumeClaim" in vols.get(st.get("name"), {}), "k8s: state_dir not on the PVC")
env = {e["name"]: e.get("value") for e in px.get("env", [])}
need(env.get("CREDENTIALS_DIRECTORY") == "/run/secrets/xoauth-proxy", "k8s: CREDENTIALS_DIRECTORY")
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    need("/dev/tcp/127.0.0.1/8025" in " ".join(px.get(probe, {}).get("exec", {}).get("command", [])),
         f"k8s: {probe} does not ask the admin listener")
if problems:
    print("; ".join(problems))
    sys.exit(1)
EOF
); then
  ok "YAML parses and the sidecar set-up holds: examples/docker-compose.yml, examples/kubernetes-pod.yaml"
else
  bad "YAML: $out"
fi

# --- the example config ------------------------------------------------------------------------------
creds=$TMP/credentials
mkdir -m 0700 "$creds"
echo "placeholder-client-secret" > "$creds/client_secret"
head -c 32 /dev/urandom > "$creds/token_key"
if out=$(CREDENTIALS_DIRECTORY=$creds "$BIN" check --config examples/config.toml 2>&1); then
  ok "xoauth-proxy check examples/config.toml"
else
  bad "xoauth-proxy check examples/config.toml: $out"
fi

# --- the Debian package -------------------------------------------------------------------------------
pkg_dir=$BUILD_DIR/package
rm -rf "$pkg_dir"
if cpack -G DEB -B "$pkg_dir" --config "$BUILD_DIR/CPackConfig.cmake" > "$TMP/cpack.log" 2>&1 \
   && deb=$(ls "$pkg_dir"/xoauth-proxy_*.deb 2>/dev/null) && [ -n "$deb" ]; then
  echo "--- $deb"
  dpkg-deb --field "$deb" | sed 's/^/    /'
  dpkg-deb --contents "$deb" | awk '{print "    " $1, $3, $6}'
  depends=$(dpkg-deb --field "$deb" Depends)
  contents=$(dpkg-deb --contents "$deb" | awk '{print $6}')
  missing=()
  for f in ./usr/bin/xoauth-proxy ./usr/share/doc/xoauth-proxy/examples/config.toml \
           ./usr/lib/systemd/system/xoauth-proxy.service; do
    grep -qx "$f" <<< "$contents" || missing+=("$f")
  done
  grep -qE '^\./usr/share/(man/man1/xoauth-proxy\.1\.gz|doc/xoauth-proxy/xoauth-proxy\.txt)$' <<< "$contents" \
    || missing+=("manual page or --help text")
  for d in libc6 libssl3 ca-certificates; do
    grep -q "\b$d\b" <<< "$depends" || missing+=("Depends: $d")
  done
  dpkg-deb --extract "$deb" "$TMP/deb"
  grep -qx 'ExecStart=/usr/bin/xoauth-proxy run --config %d/config.toml' \
    "$TMP/deb/usr/lib/systemd/system/xoauth-proxy.service" || missing+=("ExecStart=/usr/bin/xoauth-proxy in the unit")
  "$TMP/deb/usr/bin/xoauth-proxy" --version > /dev/null || missing+=("a working binary")
  if [ ${#missing[@]} -eq 0 ]; then
    ok "cpack -G DEB: $(basename "$deb"), $(du -h "$deb" | cut -f1), Depends: $depends"
  else
    bad "the .deb lacks: ${missing[*]}"
  fi
else
  cat "$TMP/cpack.log" >&2
  bad "cpack -G DEB did not produce a .deb"
fi

if [ "$failures" -ne 0 ]; then
  echo "check-examples: $failures check(s) failed" >&2
  exit 1
fi
echo "check-examples: all passed"
