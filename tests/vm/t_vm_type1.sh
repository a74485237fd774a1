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
. "$(dirname "$0")/common.sh"

vm_setup "$@"
guest="$build/tests/vm/vm_type1"
vm_need_bins "'make vm-guest' (make check-vm does)" "$guest"
vm_tmp

for k in $kernels; do
  # --cached: a kernel already unpacked is used as is (no apt round trip,
  # ~3 s per kernel); the first run fetches the newest.
  vm_fetch "$k" --cached || continue
  vm_initramfs "$k" "$guest"
  "$vm/run-vm.sh" --kernel "$k" --initrd "$tmp/initrd-$k.gz" --timeout 90 \
    --cmd "$(vm_dmesg_cmd vm_type1)" >"$tmp/out-$k" 2>&1 &
  vm_booted "$k"
done
t_booted=$(now)

check() {
  local k=$1
  vm_check_prog vm_type1 "$k" "$2"
  # Never pass by doing nothing: every part must have run its checks.
  [ "$nok" -ge 90 ] || problems+=("only $nok checks passed (expected at least 90)")
  vm_need_parts vm_type1 "$k" 1 2 3 4 5 6
  grep -q '^vm_type1: TABLE 4096 ' "$tmp/out-$k" || problems+=("no table row for 4096 pages")
}
pass() {
  echo "PASS $1 (boot+test ${boot:-?}s, $nok checks): $result"
  echo "     $(vm_parts_took vm_type1 "$1")"
  sed -n 's/^vm_type1: TABLE /     /p' "$tmp/out-$1"
}
vm_results check pass
vm_total "fetch + initramfs"
vm_finish
