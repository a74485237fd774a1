#!/usr/bin/env bash
# t_vm_devlog.sh - the precise VFIO trackers proven against a real kernel
# with ldtest, libdirty's TEST DMA device (tests/vm/mdev/ldtest.c): per
# kernel, build ldtest.ko against the cached Debian headers (mdev/build.sh),
# boot the guest with it and run guest/vm_devlog.c, which plays the VMM:
#   1-7 the device DMA logging adapter (hv-adapters/vfio_devlog.c): exact
#       pages page by page through the merged view with IOVA != GPA; hint,
#       alignment, the device's range limit; unmap and IOVA reuse; the
#       re-arm window written into (0 pages lost); manual re-arm; every
#       error marks every mapped page;
#   8   type1's pinned scope through the type1 adapter (only ldtest in the
#       container): exactly the pinned or written pages;
#   9   the table: the same device writes seen by type1, the DMA log and
#       the merged view with the guest protocol covering type1.
# On a kernel without IOMMUFD_DRIVER (Debian 6.12) REPORT always fails:
# there the guest runs parts 8 and 10 (every sync marks every mapped page).
# Then no WARNING/BUG in dmesg.
#   VM_KERNELS   kernels to boot (default "6.1 6.12"; the proof is 6.1)
#   BUILD        build directory of the guest programs (default build)
# Exit 0 = pass, 1 = fail, 77 = skipped (the reason is printed).
set -euo pipefail

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
vm=tests/vm
build=${BUILD:-build}
kernels=${VM_KERNELS:-6.1 6.12}
guest="$build/tests/vm/vm_devlog"

if [ -n "${SAN:-}" ]; then echo "SKIP: VM tier runs in the plain build only (SAN=$SAN)"; exit 77; fi
command -v qemu-system-x86_64 >/dev/null ||
  { echo "SKIP: qemu-system-x86_64 not found (make deps installs qemu-system-x86)"; exit 77; }
[ -x "$guest" ] || { echo "FAIL: $guest missing: build it with 'make vm-guest' (make check-vm does)"; exit 1; }

tmp=$(mktemp -d)
pids=() bpids=()
cleanup() {
  local p
  for p in "${pids[@]}" "${bpids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
t_start=$(now)

cat >"$tmp/vm_devlog_run" <<'EOS'
#!/bin/sh
rc=0
vm_devlog "$@" || rc=1
if dmesg | grep -E 'WARNING:|BUG:|Oops|Call Trace|general protection|list_del corruption'; then
  echo "vm_devlog: FAIL the kernel log has the warnings above"; rc=1
else
  echo "vm_devlog: ok   no WARNING/BUG/Oops in dmesg"
fi
exit $rc
EOS
chmod +x "$tmp/vm_devlog_run"

skipped=() built=() ran=()
declare -A args=() krel=()
for k in $kernels; do
  set +e
  out=$("$vm/fetch.sh" --headers --env "$k" 2>"$tmp/fetch-$k.err")
  rc=$?
  set -e
  if [ $rc = 77 ]; then skipped+=("$k: $(grep -m1 '^SKIP' <<<"$out" | sed 's/^SKIP: //' || echo "fetch.sh skipped")"); continue; fi
  [ $rc = 0 ] || { echo "FAIL: fetch.sh --headers --env $k exited $rc:"; cat "$tmp/fetch-$k.err"; exit 1; }
  eval "$out"
  krel[$k]=$VM_KREL
  # REPORT needs the VFIO core's iova_bitmap: in vfio.ko up to 6.6, from
  # then on only with CONFIG_IOMMUFD_DRIVER (off in Debian's 6.12).
  args[$k]=""
  if [ "$k" != 6.1 ] && ! grep -q '^CONFIG_IOMMUFD_DRIVER=y' "$(dirname "$VM_VMLINUZ")/config-$VM_KREL" 2>/dev/null; then
    args[$k]="--no-report"
  fi
  (
    set +e
    BUILD="$top/$build" "$vm/mdev/build.sh" --kernel "$k" --cached >"$tmp/ko-$k" 2>"$tmp/build-$k.err"
  ) &
  bpids+=($!)
  built+=("$k")
done

i=0
for k in "${built[@]}"; do
  set +e
  wait "${bpids[$i]}"
  rc=$?
  set -e
  i=$((i + 1))
  ko=$(tail -n1 "$tmp/ko-$k")
  if [ $rc = 77 ]; then skipped+=("$k: $(grep -m1 '^SKIP' "$tmp/ko-$k" | sed 's/^SKIP: //' || echo "mdev/build.sh skipped")"); continue; fi
  [ $rc = 0 ] && [ -f "$ko" ] || { echo "FAIL: building ldtest.ko for $k:"; cat "$tmp/build-$k.err"; exit 1; }
  "$vm/mkinitramfs.sh" --kernel "$k" --out "$tmp/initrd-$k.gz" --ko "$ko" "$guest" "$tmp/vm_devlog_run" \
    2>"$tmp/mkinit-$k.err" || { echo "FAIL: mkinitramfs.sh --kernel $k:"; cat "$tmp/mkinit-$k.err"; exit 1; }
  "$vm/run-vm.sh" --kernel "$k" --initrd "$tmp/initrd-$k.gz" --timeout 120 \
    --cmd "vm_devlog_run ${args[$k]}" >"$tmp/out-$k" 2>&1 &
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
  result=$(sed -n 's/^vm_devlog: RESULT //p' "$tmp/out-$k" | head -n1)
  boot=$(sed -n 's/^run-vm.sh: .* after \([0-9.]*\)s.*/\1/p' "$tmp/out-$k" | tail -n1)
  nok=$(grep -c '^vm_devlog: ok  ' "$tmp/out-$k" || true)
  nfail=$(grep -c '^vm_devlog: FAIL' "$tmp/out-$k" || true)
  problems=()
  [ $rc = 0 ] || problems+=("guest exit $rc")
  [ -n "$result" ] || problems+=("no RESULT line from vm_devlog")
  case $result in *" failures=0" | "failures=0") ;; *) problems+=("vm_devlog reported failures") ;; esac
  [ "$nfail" = 0 ] || problems+=("$nfail FAIL lines")
  # Never pass by doing nothing: every part must have run its checks.
  if [ -n "${args[$k]}" ]; then parts="8 10" min=20; else parts="1 2 3 4 5 6 7 8 9" min=100; fi
  [ "$nok" -ge "$min" ] || problems+=("only $nok checks passed (expected at least $min)")
  for part in $parts; do
    grep -q "^vm_devlog: part $part took" "$tmp/out-$k" || problems+=("part $part did not finish")
  done
  if [ -z "${args[$k]}" ]; then
    grep -q 'window_lost=0' <<<"$result" || problems+=("the re-arm window result is missing")
    grep -q '^vm_devlog: TABLE 2:' "$tmp/out-$k" || problems+=("no table")
  fi
  if [ ${#problems[@]} = 0 ]; then
    echo "PASS $k ${krel[$k]} (boot+test ${boot:-?}s, $nok checks${args[$k]:+, ${args[$k]}}): $result"
    echo "     $(sed -n 's/^vm_devlog: part \([0-9]*\) took \(.*\)/part \1 \2/p' "$tmp/out-$k" | paste -sd, | sed 's/,/, /g')"
    sed -n 's/^vm_devlog: TABLE /     /p' "$tmp/out-$k"
  else
    echo "FAIL $k: $(IFS=';'; echo "${problems[*]}")"
    sed 's/^/     | /' "$tmp/out-$k"
    fail=1
  fi
done
echo "     total $(secs "$t_start" "$(now)")s (fetch + module + initramfs $(secs "$t_start" "$t_booted")s)"

for s in "${skipped[@]}"; do echo "SKIP: kernel $s"; done
[ $fail = 0 ] || exit 1
[ ${#ran[@]} -gt 0 ] || exit 77
[ ${#skipped[@]} = 0 ] || exit 77
exit 0
