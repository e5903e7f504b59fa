#!/usr/bin/env bash
# Sets up (apt), builds and runs the whole test suite through ctest: unit tests, then the
# integration tests against a real Dovecot and the project's mock identity platform on loopback.
# Usage: scripts/test.sh [extra ctest args]   (BUILD_DIR defaults to build/)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build}

scripts/setup.sh
scripts/check_layering.sh

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXOAUTH_WERROR=ON
cmake --build "$BUILD_DIR" -j "$(nproc)"

# Integration tests share one test bed (Dovecot + mock identity platform) per run.
export XOAUTH_TESTBED_DIR="$BUILD_DIR/testbed"
python3 "$ROOT/tests/testbed/testbed.py" start --dir "$XOAUTH_TESTBED_DIR"
trap 'python3 "$ROOT/tests/testbed/testbed.py" stop --dir "$XOAUTH_TESTBED_DIR" || true' EXIT

cd "$BUILD_DIR"
ctest --output-on-failure "$@"
