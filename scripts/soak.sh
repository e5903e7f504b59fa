#!/usr/bin/env bash
# Bounded soak (issue 8): thousands of IMAP/POP3/SMTP sessions opened and closed through one proxy
# for several minutes (logins, SELECT + FETCH, IDLE, POP3 RETR, SMTP submission, TLS and STARTTLS,
# abrupt cuts, wrong passwords); after a warm-up round and after every round, once the proxy is
# idle again (xoauth_sessions_active back to 0), its VmRSS and open descriptors are compared with
# the baseline. Prints a table and a verdict; exit 1 when the verdict fails or a session saw
# anything unexpected. The load engine is tests/integration/soak.py (also used by
# tests/integration/test_soak.py, the short form in the normal suite).
#
# Usage: scripts/soak.sh [--minutes N] [--concurrency C] [--round-seconds S] [--seed K]
#   --minutes N      wall time of the rounds after the warm-up (default 5); each round is S seconds
#                    of load (default 45) plus the wait for idle (up to ~30 s: the proxy may keep a
#                    session that a client abandoned after login for up to 60 s, its half-close wait)
#   --concurrency C  sessions open at a time (default 150)
# Binary: $XOAUTH_PROXY_BIN, else build/xoauth-proxy (not rebuilt here). Starts its own test bed in
# $SOAK_TESTBED_DIR (default: a new directory under /tmp), stopped and removed at exit; Dovecot's and
# Postfix's process limits are raised in that test bed only when the concurrency needs it.
# Loopback only; every loop is bounded. Needs root and scripts/setup.sh's packages.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BIN=${XOAUTH_PROXY_BIN:-$ROOT/build/xoauth-proxy}
if [ ! -x "$BIN" ]; then
  echo "soak: $BIN not found: build it (cmake --build build) or set XOAUTH_PROXY_BIN" >&2
  exit 2
fi
for tool in python3 dovecot doveconf postfix postqueue; do
  command -v "$tool" >/dev/null || { echo "soak: $tool missing: run scripts/setup.sh first" >&2; exit 2; }
done
if [ "$(id -u)" -ne 0 ]; then
  echo "soak: run as root (the test bed starts Dovecot and Postfix)" >&2
  exit 2
fi
# One descriptor per client session here; be generous.
[ "$(ulimit -Sn)" = unlimited ] || [ "$(ulimit -Sn)" -ge 8192 ] || ulimit -Sn 8192 2>/dev/null || true

TB=${SOAK_TESTBED_DIR:-$(mktemp -d /tmp/xoauth-soak-testbed.XXXXXX)}
cleanup() {
  python3 "$ROOT/tests/testbed/testbed.py" stop --dir "$TB" >/dev/null 2>&1 || true
  if [ -z "${SOAK_TESTBED_DIR:-}" ]; then rm -rf "$TB"; fi
}
trap cleanup EXIT
python3 "$ROOT/tests/testbed/testbed.py" start --dir "$TB"

rc=0
XOAUTH_TESTBED_DIR="$TB" XOAUTH_PROXY_BIN="$BIN" PYTHONUNBUFFERED=1 \
  python3 "$ROOT/tests/integration/soak.py" --own-testbed "$@" || rc=$?
exit "$rc"
