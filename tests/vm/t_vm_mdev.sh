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
. "$(dirname "$0")/common.sh"

vm_setup "$@"
guest="$build/tests/vm/vm_mdev"
vm_need_bins "'make vm-guest' (make check-vm does)" "$guest"
vm_tmp

# The guest's script: the test, a clean unload and reload of the module,
# the bad-input part again on the fresh module, and a quiet kernel log.
vm_guest_script vm_mdev <<'EOF'
if rmmod ldtest; then echo "vm_mdev: ok   rmmod ldtest"; else echo "vm_mdev: FAIL rmmod ldtest"; rc=1; fi
if insmod /lib/modules/ldtest.ko && vm_mdev --part c "$@" >/tmp/again.log 2>&1; then
  echo "vm_mdev: ok   insmod again, part c on the fresh module: $(grep -c ' ok  ' /tmp/again.log) checks"
else
  echo "vm_mdev: FAIL insmod again + vm_mdev --part c:"; cat /tmp/again.log; rc=1
fi
EOF

vm_ldtest_builds
vm_with_ldtest vm_mdev 90

check() {
  vm_check_prog vm_mdev "$1" "$2"
}
pass() {
  local k=$1
  echo "PASS $k ${krel[$k]} (module build ${build_s[$k]}s, boot+test ${boot:-?}s, $nok checks${args[$k]:+, ${args[$k]}}): $result"
}
vm_results check pass
vm_finish
