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
. "$(dirname "$0")/common.sh"

vm_setup "$@"
guest="$build/tests/vm/vm_smoke"
vm_need_bins "'make vm-guest' (make check-vm does)" "$guest"

vm_tmp
shmdir=/dev/shm
[ -d "$shmdir" ] && [ -w "$shmdir" ] || shmdir=$tmp
vm_cleanup_prefixes+=("$shmdir/libdirty-vm-smoke-$$-")

shm_size=$((1 << 20))
for k in $kernels; do
  # The full fetch (newest kernel apt offers; downloads only once).
  vm_fetch "$k" || continue
  vm_initramfs "$k" "$guest"

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
  vm_booted "$k"
done

check() {
  local k=$1 rc=$2 shm nonce want
  shm="$shmdir/libdirty-vm-smoke-$$-$k"
  nonce=$(cat "$tmp/nonce-$k")
  result=$(sed -n 's/^vm_smoke: RESULT //p' "$tmp/out-$k")
  boot=$(vm_boot_secs "$k")
  reply=$(dd if="$shm" bs=4096 skip=1 count=1 status=none | tr -d '\0' | head -n1)
  want="LIBDIRTY-VM-SMOKE guest nonce=$nonce kernel="
  [ $rc = 0 ] || problems+=("guest exit $rc")
  [ -n "$result" ] || problems+=("no RESULT line from vm_smoke")
  case $result in *" dma=ok "*) ;; *) problems+=("edu DMA content did not arrive") ;; esac
  case $result in *"dma_page_dirty=1"*) ;; *) problems+=("type1 did not report the DMA'd page") ;; esac
  case $reply in "$want"*" dma=ok "*) ;; *) problems+=("no valid guest reply in $shm (read: '${reply:0:100}')") ;; esac
}
pass() {
  echo "PASS $1 (${boot:-?}s boot+test): $result"
  echo "     host read back: $reply"
}
vm_results check pass
vm_finish
