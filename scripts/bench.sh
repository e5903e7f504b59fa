#!/usr/bin/env bash
# Benchmark suite (issue 7): relay throughput, login latency, 10,000 idle sessions, login storm,
# SMTP, CPU per GB -- each against the direct path (client speaking XOAUTH2 straight to the same
# Dovecot/Postfix) in the same run. Loopback only; every load loop is bounded and stops by itself.
#
# Usage: scripts/bench.sh [--quick] [--only throughput,latency,smtp,storm,concurrency] [--keep-testbed]
#   --quick   small sizes (under a minute); the full run takes 5-7 minutes on 2 cores (plus the build)
#   --only    a subset (cpu = throughput, which also yields the CPU-per-GB figure)
# Needs scripts/setup.sh to have run (packages) and root (the test bed runs Dovecot/Postfix as
# root, and the hard open-file limit is raised for 10,000 sessions).
# Builds the Release binary in build-bench/ (BENCH_DIR), starts its own test bed in
# build-bench/testbed, prints the table and writes build-bench/bench-results.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BENCH_DIR=${BENCH_DIR:-$ROOT/build-bench}

for tool in cmake ninja python3 openssl dovecot postqueue; do
  command -v "$tool" >/dev/null || { echo "bench: $tool missing: run scripts/setup.sh first" >&2; exit 2; }
done
if [ "$(id -u)" -ne 0 ]; then
  echo "bench: run as root (the test bed starts Dovecot and Postfix; nofile limits are raised)" >&2
  exit 2
fi

echo "bench: building the Release binary in $BENCH_DIR (log: $BENCH_DIR/build.log)"
mkdir -p "$BENCH_DIR"
if ! { cmake -S . -B "$BENCH_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DXOAUTH_TESTS=OFF &&
       cmake --build "$BENCH_DIR" --target xoauth-proxy; } >"$BENCH_DIR/build.log" 2>&1; then
  tail -40 "$BENCH_DIR/build.log" >&2
  echo "bench: build failed" >&2
  exit 2
fi

# 10,000 sessions need a little over 20,000 descriptors in the proxy (client + upstream socket
# each): raise the hard limit for everything started from here (test bed, proxy, load tools); the
# proxy itself raises its soft limit to the hard limit at start. Where the hard limit cannot be
# raised (a container without CAP_SYS_RESOURCE), the concurrency figure runs as many sessions as
# fit and says so.
ulimit -Hn 262144 2>/dev/null || echo "bench: cannot raise the hard open-file limit above $(ulimit -Hn)"
ulimit -Sn "$(ulimit -Hn)"

exec python3 "$ROOT/bench/run.py" --out "$BENCH_DIR" --bin "$BENCH_DIR/xoauth-proxy" "$@"
