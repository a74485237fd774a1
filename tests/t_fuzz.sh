#!/usr/bin/env bash
# t_fuzz.sh - the libFuzzer targets in tests/fuzz: builds them (make
# fuzz-build), replays each over its committed seed corpus, then fuzzes each
# for FUZZ_TEST_SECONDS (default 15) on a temporary copy of that corpus. Any
# crash, sanitizer report, invariant failure, leak or hang fails; the input
# is kept as build/fuzz/<target>-crash-* (replay: build/fuzz/<target> FILE).
# Long runs: make fuzz FUZZ_SECONDS=3600.
set -euo pipefail
if [ -n "${SAN:-}" ]; then
  echo "SKIP: fuzzing runs only in the plain build (SAN=$SAN); the targets carry their own ASan+UBSan"
  exit 77
fi
top=$(cd "$(dirname "$0")/.." && pwd)
secs=${FUZZ_TEST_SECONDS:-15}
command -v clang >/dev/null || { echo "SKIP: clang not found on PATH (Debian package: clang)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# libFuzzer is a separate package from the compiler: probe by linking.
printf '%s\n' '#include <stddef.h>' '#include <stdint.h>' \
  'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);' \
  'int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }' >"$tmp/probe.c"
if ! clang -fsanitize=fuzzer,address,undefined -o "$tmp/probe" "$tmp/probe.c" 2>"$tmp/probe.err"; then
  ver=$(clang -dumpversion | cut -d. -f1)
  echo "SKIP: clang cannot link libFuzzer (-fsanitize=fuzzer): install libclang-rt-$ver-dev"
  sed 's/^/  /' "$tmp/probe.err" | head -5
  exit 77
fi

grep -q '^include tests/fuzz/fuzz.mk' "$top/Makefile" ||
  { echo "FAIL: the top Makefile lacks 'include tests/fuzz/fuzz.mk' (it defines fuzz-build)"; exit 1; }
make -s -C "$top" fuzz-build
out="$top/build/fuzz"
# Flags as in fuzz.mk's `make fuzz`.
flags=(-timeout=25 -rss_limit_mb=2048 -print_final_stats=1)
for t in fuzz_host_region fuzz_guest_open fuzz_agent_msg fuzz_dest_stream; do
  seeds=("$top/tests/fuzz/corpus/$t"/*)
  echo "== $t: replay of ${#seeds[@]} seeds"
  "$out/$t" "${flags[@]}" "${seeds[@]}" >"$tmp/$t.replay" 2>&1 ||
    { tail -n 40 "$tmp/$t.replay"; echo "FAIL: $t crashed on a committed seed"; exit 1; }

  echo "== $t: fuzzing for $secs s"
  mkdir "$tmp/corpus-$t"
  cp "${seeds[@]}" "$tmp/corpus-$t/"
  if ! "$out/$t" "${flags[@]}" -max_total_time="$secs" -artifact_prefix="$out/$t-" \
       "$tmp/corpus-$t" >"$tmp/$t.log" 2>&1; then
    tail -n 60 "$tmp/$t.log"
    echo "FAIL: $t found a crash; input: $(ls -t "$out/$t"-* 2>/dev/null | head -n1)"
    exit 1
  fi
  grep -m1 'DONE' "$tmp/$t.log" || true
  grep '^stat::\(number_of_executed_units\|average_exec_per_sec\|new_units_added\)' "$tmp/$t.log" || true
done
echo "fuzz targets OK: seeds replayed, ${secs}s of fuzzing each without a finding"
