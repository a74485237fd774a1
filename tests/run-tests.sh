#!/usr/bin/env bash
# run-tests.sh - run test binaries and scripts, each under a timeout.
# Exit 0 = pass, 77 = skipped (the test prints why), anything else = fail.
# Prints one line per test, the output of failures, and a summary line.
#   TEST_TIMEOUT  seconds per test (default 600)
#   SAN           asan|tsan when the binaries carry a sanitizer
set -u
timeout_s=${TEST_TIMEOUT:-600}
pass=0 fail=0 skip=0 failed_names=()
logdir=$(mktemp -d)
trap 'rm -rf "$logdir"' EXIT

case "${SAN:-}" in
  tsan) export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(cd "$(dirname "$0")" && pwd)/tsan.supp ${TSAN_OPTIONS:-}"
        export DIRTY_TEST_SCALE=${DIRTY_TEST_SCALE:-0.2} ;;
  asan) export ASAN_OPTIONS="abort_on_error=0 detect_leaks=1 ${ASAN_OPTIONS:-}"
        export UBSAN_OPTIONS="print_stacktrace=1 halt_on_error=1 ${UBSAN_OPTIONS:-}"
        export DIRTY_TEST_SCALE=${DIRTY_TEST_SCALE:-0.3} ;;
esac

for t in "$@"; do
  name=$(basename "$t")
  log="$logdir/$name.log"
  start=$(date +%s.%N)
  if [[ "$t" == *.sh ]]; then
    timeout -k 10 "$timeout_s" bash "$t" >"$log" 2>&1
  else
    timeout -k 10 "$timeout_s" "$t" >"$log" 2>&1
  fi
  rc=$?
  secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')
  case $rc in
    0)  pass=$((pass + 1)); printf 'PASS  %-28s %6ss\n' "$name" "$secs" ;;
    77) skip=$((skip + 1))
        printf 'SKIP  %-28s %6ss  %s\n' "$name" "$secs" "$(grep -m1 '^SKIP' "$log" || tail -n1 "$log")" ;;
    124|137) fail=$((fail + 1)); failed_names+=("$name")
        printf 'FAIL  %-28s %6ss  timed out after %ss\n' "$name" "$secs" "$timeout_s"
        tail -n 30 "$log" | sed 's/^/      /' ;;
    *)  fail=$((fail + 1)); failed_names+=("$name")
        printf 'FAIL  %-28s %6ss  exit %d\n' "$name" "$secs" "$rc"
        # The verdicts first: a sanitizer's report (a leak after a failed
        # assertion, say) can push them out of the tail.
        grep -E '^[^ ]+:[0-9]+:[FE]:|^FAIL|ERROR: [A-Za-z]+Sanitizer|runtime error:' "$log" |
          head -n 10 | sed 's/^/    > /'
        tail -n 40 "$log" | sed 's/^/      /' ;;
  esac
done

echo
[ $fail -gt 0 ] && echo "failed: ${failed_names[*]}"
echo "$pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
