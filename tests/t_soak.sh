#!/usr/bin/env bash
# t_soak.sh - a short soak in make check: tests/soak/soak.py for
# SOAK_MINUTES (default 1) with a fixed draw (SOAK_SEED, default 20261126)
# so a failure replays; every libdirty-mode migration must lose 0 pages
# (including those whose destination resets the connection mid-stream).
# `make soak` runs the long one with a fresh seed.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
[ -x "$top/$build/bin/dirtymig" ] || { echo "FAIL: $build/bin/dirtymig not built"; exit 1; }
command -v python3 >/dev/null || { echo "SKIP: python3 is not installed"; exit 77; }
# Sanitizer builds run each migration several times slower: fewer, smaller.
minutes=${SOAK_MINUTES:-1}
case "${SAN:-}" in asan|tsan) minutes=${SOAK_MINUTES:-0.5} ;; esac
set +e
BUILD=$build python3 "$top/tests/soak/soak.py" --minutes "$minutes" --seed "${SOAK_SEED:-20261126}" \
  --bin "$top/$build/bin/dirtymig" --timeout 90
rc=$?
set -e
[ $rc = 0 ] || { echo "FAIL: the soak lost pages or a migration failed (replay commands above)"; exit 1; }
echo "PASS"
