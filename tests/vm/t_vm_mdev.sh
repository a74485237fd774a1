#!/usr/bin/env bash
# t_vm_mdev.sh - what VFIO reports about DMA a device really did, proven
# with ldtest, libdirty's TEST DMA device (tests/vm/mdev/ldtest.c, an mdev
# VFIO driver). Per kernel: build ldtest.ko against the cached Debian
# headers into $BUILD/tests/vm/mdev/<release>/ (tests/vm/mdev/build.sh),
# boot the guest with it and run guest/vm_mdev.c:
#   a. type1 dirty tracking reports exactly the pages the device pinned or
#      wrote (pinned-page scope), also through unmap-with-dirty-bitmap;
#   b. device DMA logging (DMA_LOGGING_START/REPORT/STOP) reports exactly
#      the pages written inside the logged ranges, read-and-clear; on a
#      kernel built without IOMMUFD_DRIVER (Debian 6.12) REPORT must fail
#      with EOPNOTSUPP instead;
#   c. bad input fails cleanly; then rmmod, insmod, part c again, and no
#      WARNING/BUG in dmesg.
#   VM_KERNELS   kernels to boot (default "6.1 6.12"; the proof is 6.1)
#   BUILD        build directory of the guest programs (default build)
# Exit 0 = pass, 1 = fail, 77 = skipped (the reason is printed).
set -euo pipefail

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
vm=tests/vm
build=${BUILD:-build}
kernels=${VM_KERNELS:-6.1 6.12}
guest="$build/tests/vm/vm_mdev"

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

# The guest's script: the test, a clean unload and reload of the module,
# the bad-input part again on the fresh module, and a quiet kernel log.
cat >"$tmp/vm_mdev_run" <<'EOF'
#!/bin/sh
rc=0
vm_mdev "$@" || rc=1
if rmmod ldtest; then echo "vm_mdev: ok   rmmod ldtest"; else echo "vm_mdev: FAIL rmmod ldtest"; rc=1; fi
if insmod /lib/modules/ldtest.ko && vm_mdev --part c "$@" >/tmp/again.log 2>&1; then
  echo "vm_mdev: ok   insmod again, part c on the fresh module: $(grep -c ' ok  ' /tmp/again.log) checks"
else
  echo "vm_mdev: FAIL insmod again + vm_mdev --part c:"; cat /tmp/again.log; rc=1
fi
if dmesg | grep -E 'WARNING:|BUG:|Oops|Call Trace|general protection|list_del corruption'; then
  echo "vm_mdev: FAIL the kernel log has the warnings above"; rc=1
else
  echo "vm_mdev: ok   no WARNING/BUG/Oops in dmesg"
fi
exit $rc
EOF
chmod +x "$tmp/vm_mdev_run"

skipped=() built=() ran=()
declare -A build_s=() args=() krel=()
# Fetch, then build the modules of all kernels at once (a few seconds each).
for k in $kernels; do
  set +e
  # The kernel, busybox and this kernel's headers (downloaded once).
  out=$("$vm/fetch.sh" --headers --env "$k" 2>"$tmp/fetch-$k.err")
  rc=$?
  set -e
  if [ $rc = 77 ]; then skipped+=("$k: $(grep -m1 '^SKIP' <<<"$out" | sed 's/^SKIP: //' || echo "fetch.sh skipped")"); continue; fi
  [ $rc = 0 ] || { echo "FAIL: fetch.sh --headers --env $k exited $rc:"; cat "$tmp/fetch-$k.err"; exit 1; }
  eval "$out"
  krel[$k]=$VM_KREL
  # REPORT needs the core's iova_bitmap: in vfio.ko up to 6.6, from then
  # on only with CONFIG_IOMMUFD_DRIVER (off in Debian's 6.12).
  args[$k]=""
  if [ "$k" != 6.1 ] && ! grep -q '^CONFIG_IOMMUFD_DRIVER=y' "$(dirname "$VM_VMLINUZ")/config-$VM_KREL" 2>/dev/null; then
    args[$k]="--no-report"
  fi
  (
    t0=$(now)
    set +e
    BUILD="$top/$build" "$vm/mdev/build.sh" --kernel "$k" --cached >"$tmp/ko-$k" 2>"$tmp/build-$k.err"
    rc=$?
    secs "$t0" "$(now)" >"$tmp/build-s-$k"
    exit $rc
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
  build_s[$k]=$(cat "$tmp/build-s-$k")
  "$vm/mkinitramfs.sh" --kernel "$k" --out "$tmp/initrd-$k.gz" --ko "$ko" "$guest" "$tmp/vm_mdev_run" \
    2>"$tmp/mkinit-$k.err" || { echo "FAIL: mkinitramfs.sh --kernel $k:"; cat "$tmp/mkinit-$k.err"; exit 1; }
  "$vm/run-vm.sh" --kernel "$k" --initrd "$tmp/initrd-$k.gz" --timeout 90 \
    --cmd "vm_mdev_run ${args[$k]}" >"$tmp/out-$k" 2>&1 &
  pids+=($!)
  ran+=("$k")
done

fail=0 i=0
for k in "${ran[@]}"; do
  set +e
  wait "${pids[$i]}"
  rc=$?
  set -e
  i=$((i + 1))
  result=$(sed -n 's/^vm_mdev: RESULT //p' "$tmp/out-$k" | head -n1)
  boot=$(sed -n 's/^run-vm.sh: .* after \([0-9.]*\)s.*/\1/p' "$tmp/out-$k" | tail -n1)
  problems=()
  [ $rc = 0 ] || problems+=("guest exit $rc")
  [ -n "$result" ] || problems+=("no RESULT line from vm_mdev")
  case $result in *" failures=0") ;; *) problems+=("vm_mdev reported failures") ;; esac
  checks=$(grep -c '^vm_mdev: ok  ' "$tmp/out-$k" || true)
  if [ ${#problems[@]} = 0 ]; then
    echo "PASS $k ${krel[$k]} (module build ${build_s[$k]}s, boot+test ${boot:-?}s, $checks checks${args[$k]:+, ${args[$k]}}): $result"
  else
    echo "FAIL $k: $(IFS=';'; echo "${problems[*]}")"
    sed 's/^/     | /' "$tmp/out-$k"
    fail=1
  fi
done

for s in "${skipped[@]}"; do echo "SKIP: kernel $s"; done
[ $fail = 0 ] || exit 1
[ ${#ran[@]} -gt 0 ] || exit 77
# A kernel the registry does not offer: the test is incomplete, say so.
[ ${#skipped[@]} = 0 ] || exit 77
exit 0
