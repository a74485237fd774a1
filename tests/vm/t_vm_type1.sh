#!/usr/bin/env bash
# t_vm_type1.sh - the VFIO type1 adapter (hv-adapters/vfio_type1.c) proven
# against a real kernel: per kernel (6.1 and 6.12, booted at once) the guest
# runs guest/vm_type1.c, which plays the VMM of a type1 container holding
# QEMU's edu (bound to vfio-pci) with libdirty built for the guest:
#   1 every mapped page on every sync (COARSE), also through an unmap with
#     the dirty bitmap, after which the registration is gone;
#   2 the guest protocol covering type1: exactly the page edu wrote, while
#     type1 reported all; the agent stops and type1's bits count again;
#   3 IOVA != GPA (vIOMMU): bits at the right guest pages, none at the IOVAs;
#   4 pieces of whole mappings with a forced small piece, exact reports;
#   5 errors: refused registrations, failing GET_BITMAP/unmap mark all;
#   6 the table: pages type1 reports vs the merged view, per buffer size.
#   VM_KERNELS   kernels to boot (default "6.1 6.12")
#   BUILD        build directory of the guest programs (default build)
# Exit 0 = pass, 1 = fail, 77 = skipped (the reason is printed).
set -euo pipefail

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
vm=tests/vm
build=${BUILD:-build}
kernels=${VM_KERNELS:-6.1 6.12}
guest="$build/tests/vm/vm_type1"

if [ -n "${SAN:-}" ]; then echo "SKIP: VM tier runs in the plain build only (SAN=$SAN)"; exit 77; fi
command -v qemu-system-x86_64 >/dev/null ||
  { echo "SKIP: qemu-system-x86_64 not found (make deps installs qemu-system-x86)"; exit 77; }
[ -x "$guest" ] || { echo "FAIL: $guest missing: build it with 'make vm-guest' (make check-vm does)"; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
t_start=$(now)

skipped=() ran=()
for k in $kernels; do
  set +e
  # --cached: a kernel already unpacked is used as is (no apt round trip,
  # ~3 s per kernel); the first run fetches the newest.
  out=$("$vm/fetch.sh" --env "$k" --cached 2>"$tmp/fetch-$k.err")
  rc=$?
  set -e
  if [ $rc = 77 ]; then skipped+=("$k: $(grep -m1 '^SKIP' <<<"$out" | sed 's/^SKIP: //' || echo "fetch.sh skipped")"); continue; fi
  [ $rc = 0 ] || { echo "FAIL: fetch.sh --env $k exited $rc:"; cat "$tmp/fetch-$k.err"; exit 1; }
  "$vm/mkinitramfs.sh" --kernel "$k" --out "$tmp/initrd-$k.gz" "$guest" 2>"$tmp/mkinit-$k.err" ||
    { echo "FAIL: mkinitramfs.sh --kernel $k:"; cat "$tmp/mkinit-$k.err"; exit 1; }
  # The guest program, then a kernel log with no warning from VFIO.
  "$vm/run-vm.sh" --kernel "$k" --initrd "$tmp/initrd-$k.gz" --timeout 90 \
    --cmd 'rc=0; vm_type1 || rc=1; if dmesg | grep -E "WARNING:|BUG:|Oops|Call Trace"; then echo "vm_type1: FAIL the kernel log has the warnings above"; rc=1; fi; exit $rc' \
    >"$tmp/out-$k" 2>&1 &
  pids+=($!)
  ran+=("$k")
done
t_booted=$(now)

fail=0 i=0
for k in "${ran[@]}"; do
  set +e
  wait "${pids[$i]}"
  rc=$?
  set -e
  i=$((i + 1))
  result=$(sed -n 's/^vm_type1: RESULT //p' "$tmp/out-$k" | head -n1)
  boot=$(sed -n 's/^run-vm.sh: .* after \([0-9.]*\)s.*/\1/p' "$tmp/out-$k" | tail -n1)
  nok=$(grep -c '^vm_type1: ok  ' "$tmp/out-$k" || true)
  nfail=$(grep -c '^vm_type1: FAIL' "$tmp/out-$k" || true)
  problems=()
  [ $rc = 0 ] || problems+=("guest exit $rc")
  [ -n "$result" ] || problems+=("no RESULT line from vm_type1")
  case $result in *" failures=0") ;; *) problems+=("vm_type1 reported failures") ;; esac
  [ "$nfail" = 0 ] || problems+=("$nfail FAIL lines")
  # Never pass by doing nothing: every part must have run its checks.
  [ "$nok" -ge 90 ] || problems+=("only $nok checks passed (expected at least 90)")
  for part in 1 2 3 4 5 6; do
    grep -q "^vm_type1: part $part took" "$tmp/out-$k" || problems+=("part $part did not finish")
  done
  grep -q '^vm_type1: TABLE 4096 ' "$tmp/out-$k" || problems+=("no table row for 4096 pages")
  if [ ${#problems[@]} = 0 ]; then
    echo "PASS $k (boot+test ${boot:-?}s, $nok checks): $result"
    echo "     $(sed -n 's/^vm_type1: part \(.*\) took \(.*\)/part \1 \2/p' "$tmp/out-$k" | paste -sd, | sed 's/,/, /g')"
    sed -n 's/^vm_type1: TABLE /     /p' "$tmp/out-$k"
  else
    echo "FAIL $k: $(IFS=';'; echo "${problems[*]}")"
    sed 's/^/     | /' "$tmp/out-$k"
    fail=1
  fi
done
echo "     total $(secs "$t_start" "$(now)")s (fetch + initramfs $(secs "$t_start" "$t_booted")s)"

for s in "${skipped[@]}"; do echo "SKIP: kernel $s"; done
[ $fail = 0 ] || exit 1
[ ${#ran[@]} -gt 0 ] || exit 77
# A kernel the registry does not offer: the test is incomplete, say so.
[ ${#skipped[@]} = 0 ] || exit 77
exit 0
