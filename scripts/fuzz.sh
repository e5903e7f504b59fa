#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz, clang, -fsanitize=fuzzer,address,undefined) in
# build-fuzz/ and runs each one for SECONDS (default 30), starting from its seed corpus
# tests/fuzz/corpus/<target>/. The repository corpus is only read: new inputs and crash artifacts
# go to a temporary directory, whose path is printed. Exit status 1 when any target crashed,
# leaked, timed out or broke an invariant.
#
# Usage: scripts/fuzz.sh [SECONDS]
#   FUZZ_TARGETS="fuzz_imap_flow fuzz_config"  only these targets (default: all nine)
#   FUZZ_JOBS=N           parallel compile jobs (default 1: the CI machine is shared)
#   FUZZ_BUILD_DIR=DIR    build directory (default build-fuzz)
#   FUZZ_OUT=DIR          keep new inputs and artifacts in DIR instead of a temporary directory
#   XO_FUZZ_ALLOW=id,...  known findings not to report while they are being fixed
#                         (invariant ids: tests/fuzz/README.md)
#
# A longer run, e.g. before a release or after changing a parser (an hour per target, then fold
# the new inputs into the seed corpus, minimized):
#   FUZZ_OUT=/tmp/xo-fuzz scripts/fuzz.sh 3600
#   for t in /tmp/xo-fuzz/corpus/*; do n=$(basename "$t")
#     build-fuzz/tests/fuzz/$n -merge=1 tests/fuzz/corpus/$n "$t"; done
# Several cores: run one target per core by hand, e.g.
#   build-fuzz/tests/fuzz/fuzz_imap_flow -fork=4 -max_total_time=3600 /tmp/new tests/fuzz/corpus/fuzz_imap_flow
# A crash: reproduce with the same binary (build-fuzz/tests/fuzz/<target> <artifact>) or, without
# clang, with fuzz_replay: build/tests/fuzz/fuzz_replay <target> <artifact>. Keep the input in
# tests/fuzz/crashes/<target>/ until the bug is fixed, then move it into corpus/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_TARGET=${1:-30}
BUILD_DIR=${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}
JOBS=${FUZZ_JOBS:-1}
ALL_TARGETS=(fuzz_imap_lexer fuzz_imap_flow fuzz_smtp_flow fuzz_pop3_flow fuzz_smtp_reply_parser
             fuzz_smtp_sender_filter fuzz_sasl fuzz_token_response fuzz_config)
read -r -a TARGETS <<<"${FUZZ_TARGETS:-${ALL_TARGETS[*]}}"

case "$SECONDS_PER_TARGET" in
  ''|*[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2 ;;
esac

# Longest input per target: enough for a whole login (several chunks of up to 4 KiB) or a config.
max_len() {
  case "$1" in
    fuzz_config) echo 16384 ;;
    fuzz_token_response) echo 8192 ;;
    fuzz_smtp_reply_parser) echo 4096 ;;
    *) echo 4096 ;;
  esac
}

# --- clang and its sanitizer/libFuzzer runtime (apt, idempotent, like scripts/setup.sh) ---
scripts/setup.sh
need=()
for p in clang libclang-rt-14-dev; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "fuzz: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"; then
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
fi

# --- build ---
CC=clang CXX=clang++ cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DXOAUTH_FUZZ=ON >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS" --target "${TARGETS[@]}"

# --- run ---
if [ -n "${FUZZ_OUT:-}" ]; then
  OUT=$FUZZ_OUT
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d /tmp/xo-fuzz.XXXXXX)
fi
failed=()
summary=()
for t in "${TARGETS[@]}"; do
  bin="$BUILD_DIR/tests/fuzz/$t"
  seeds="$ROOT/tests/fuzz/corpus/$t"
  dict="$ROOT/tests/fuzz/dict/$t.dict"
  new="$OUT/corpus/$t"
  art="$OUT/artifacts/$t"
  log="$OUT/$t.log"
  mkdir -p "$new" "$art"
  args=(-max_total_time="$SECONDS_PER_TARGET" -max_len="$(max_len "$t")" -timeout=10
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$art/")
  [ -f "$dict" ] && args+=(-dict="$dict")
  echo "fuzz: $t for ${SECONDS_PER_TARGET}s (log $log)"
  rc=0
  # The first directory receives new inputs; the seed corpus is only read.
  "$bin" "${args[@]}" "$new" "$seeds" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  status_line=$(grep -E '^#[0-9]+' "$log" | tail -n1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status_line")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status_line")
  corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$status_line")
  added=$(find "$new" -type f | wc -l)
  crashes=$(find "$art" -type f | wc -l)
  line=$(printf '%-26s execs=%-9s exec/s=%-7s cov=%-5s ft=%-6s corpus=%-5s new=%-4s crashes=%s' \
    "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$added" "$crashes")
  summary+=("$line")
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed+=("$t")
    echo "fuzz: $t FAILED (exit $rc):"
    grep -E 'ERROR: |\*\*\* fuzz|SUMMARY: |detail: |Test unit written|==[0-9]+==' "$log" | head -n 20 || true
  fi
done

echo
echo "fuzz: ${SECONDS_PER_TARGET}s per target; new inputs and artifacts in $OUT"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (artifacts in $OUT/artifacts/<target>/)"
  exit 1
fi
echo "fuzz: no crash, leak, timeout or broken invariant"
