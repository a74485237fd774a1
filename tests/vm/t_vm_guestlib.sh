#!/usr/bin/env bash
# t_vm_guestlib.sh - the guest library in a real Linux guest. Per kernel (6.1
# and 6.12, booted at once) the host program host/gp_host.c creates a view of
# the guest's 512 MiB of RAM and a guest-protocol region at a /dev/shm path
# (dirty_gp_create; a power-of-two file, exactly dirty_gp_size() bytes), then
# starts run-vm.sh with that file as the ivshmem-plain BAR. In the guest,
# guest/vm_guestlib.c opens the BAR's resource2 with the guest library,
# drives edu on vfio-pci and reports its DMA with the vectored calls over
# dirty_guest_pieces(). Stepping with the guest through a test-only mailbox
# past the protocol region, the host asserts page by page: the handshake
# (start waits until the agent acknowledged; then TRUSTED; the first pass),
# exactly the mapped pages pinned, exactly the DMA'd pages dirty after the
# FROM_DEVICE unmap, nothing dirty after a TO_DEVICE map/read/unmap.
#   VM_KERNELS   kernels to boot (default "6.1 6.12")
#   BUILD        build directory (default build): tests/vm/vm_guestlib and
#                tests/vm/host/gp_host, both from 'make vm-guest'
# Exit 0 = pass, 1 = fail, 77 = skipped (the reason is printed).
set -euo pipefail
. "$(dirname "$0")/common.sh"

vm_setup "$@"
guest="$build/tests/vm/vm_guestlib"
host="$build/tests/vm/host/gp_host"
ram_mib=512
vm_need_shm guestlib
vm_need_bins "'make vm-guest' (make check-vm does)" "$guest" "$host"
vm_tmp
vm_cleanup_prefixes+=("/dev/shm/libdirty-vm-guestlib-$$-")

for k in $kernels; do
  # --cached: a kernel already unpacked is used as is (no apt round trip).
  vm_fetch "$k" --cached || continue
  vm_initramfs "$k" "$guest"
  shm="/dev/shm/libdirty-vm-guestlib-$$-$k"
  # gp_host creates $shm, then runs run-vm.sh on it.
  vm_host_boot "$k" "$host" vm_guestlib "$shm"
done
t_booted=$(now)

check() {
  vm_check_host gp_host vm_guestlib "$1" "$2" 24 "/dev/shm/libdirty-vm-guestlib-$$-$1" 'ok *'
}
pass() {
  echo "PASS $1 (boot+test ${boot:-?}s, $nok host checks): $result"
  echo "     guest: $gresult"
  sed -n 's/^gp_host: ok   \[[ 0-9.]* ms\] /     /p' "$tmp/out-$1"
}
console() { vm_console_tail gp_host 40 "$1"; }
vm_results check pass console
vm_total "fetch + initramfs"
vm_finish
