#!/usr/bin/env bash
# t_vm_smoke.sh - prove the VM tier: for each kernel (6.1 and 6.12) boot a
# guest with an Intel vIOMMU, edu and an ivshmem BAR backed by a /dev/shm
# file, and in it (guest/vm_smoke.c) bind edu to vfio-pci, DMA-map 64
# pages, start type1 dirty tracking, let edu DMA a pattern into one page,
# check the bytes, and print how many pages type1 reports dirty. The host
# writes a pattern into the shm file before boot; the guest reads it through
# sysfs resource2 and writes a reply the host checks after QEMU exits.
# Both kernels boot at once (one vCPU each), the way a host-side test runs
# run-vm.sh in the background while it watches the shm file.
#   VM_KERNELS   kernels to boot (default "6.1 6.12")
#   BUILD        build directory of the guest programs (default build)
# Exit 0 = pass, 1 = fail, 77 = skipped (the reason is printed).
set -euo pipefail

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
vm=tests/vm
build=${BUILD:-build}
kernels=${VM_KERNELS:-6.1 6.12}
guest="$build/tests/vm/vm_smoke"

if [ -n "${SAN:-}" ]; then echo "SKIP: VM tier runs in the plain build only (SAN=$SAN)"; exit 77; fi
command -v qemu-system-x86_64 >/dev/null ||
  { echo "SKIP: qemu-system-x86_64 not found (make deps installs qemu-system-x86)"; exit 77; }
[ -x "$guest" ] || { echo "FAIL: $guest missing: build it with 'make vm-guest' (make check-vm does)"; exit 1; }

tmp=$(mktemp -d)
shmdir=/dev/shm
[ -d "$shmdir" ] && [ -w "$shmdir" ] || shmdir=$tmp
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f "$shmdir"/libdirty-vm-smoke-$$-*
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

shm_size=$((1 << 20))
skipped=() ran=()
for k in $kernels; do
  # The full fetch (newest kernel apt offers; downloads only once).
  set +e
  out=$("$vm/fetch.sh" --env "$k" 2>"$tmp/fetch-$k.err")
  rc=$?
  set -e
  if [ $rc = 77 ]; then skipped+=("$k: $(grep -m1 '^SKIP' <<<"$out" || echo "fetch.sh skipped")"); continue; fi
  [ $rc = 0 ] || { echo "FAIL: fetch.sh --env $k exited $rc:"; cat "$tmp/fetch-$k.err"; exit 1; }
  "$vm/mkinitramfs.sh" --kernel "$k" --out "$tmp/initrd-$k.gz" "$guest" 2>"$tmp/mkinit-$k.err" ||
    { echo "FAIL: mkinitramfs.sh --kernel $k:"; cat "$tmp/mkinit-$k.err"; exit 1; }

  # The host's pattern: a line at the start and one in the last 64 bytes.
  shm="$shmdir/libdirty-vm-smoke-$$-$k"
  nonce=$(od -An -tx1 -N8 /dev/urandom | tr -d ' \n')
  rm -f "$shm" && truncate -s "$shm_size" "$shm"
  printf 'LIBDIRTY-VM-SMOKE host nonce=%s\n' "$nonce" | dd of="$shm" conv=notrunc status=none
  printf 'LIBDIRTY-VM-SMOKE tail nonce=%s\n' "$nonce" |
    dd of="$shm" bs=1 seek=$((shm_size - 64)) conv=notrunc status=none
  echo "$nonce" >"$tmp/nonce-$k"
  "$vm/run-vm.sh" --kernel "$k" --initrd "$tmp/initrd-$k.gz" --shm "$shm" --timeout 90 \
    --cmd "vm_smoke --pages 64 --shm" >"$tmp/out-$k" 2>&1 &
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
  shm="$shmdir/libdirty-vm-smoke-$$-$k"
  nonce=$(cat "$tmp/nonce-$k")
  result=$(sed -n 's/^vm_smoke: RESULT //p' "$tmp/out-$k")
  secs=$(sed -n 's/^run-vm.sh: .* after \([0-9.]*\)s.*/\1/p' "$tmp/out-$k" | tail -n1)
  reply=$(dd if="$shm" bs=4096 skip=1 count=1 status=none | tr -d '\0' | head -n1)
  want="LIBDIRTY-VM-SMOKE guest nonce=$nonce kernel="
  problems=()
  [ $rc = 0 ] || problems+=("guest exit $rc")
  [ -n "$result" ] || problems+=("no RESULT line from vm_smoke")
  case $result in *" dma=ok "*) ;; *) problems+=("edu DMA content did not arrive") ;; esac
  case $result in *"dma_page_dirty=1"*) ;; *) problems+=("type1 did not report the DMA'd page") ;; esac
  case $reply in "$want"*" dma=ok "*) ;; *) problems+=("no valid guest reply in $shm (read: '${reply:0:100}')") ;; esac
  if [ ${#problems[@]} = 0 ]; then
    echo "PASS $k (${secs:-?}s boot+test): $result"
    echo "     host read back: $reply"
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
