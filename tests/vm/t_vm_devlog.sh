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
. "$(dirname "$0")/common.sh"

vm_setup "$@"
guest="$build/tests/vm/vm_devlog"
vm_need_bins "'make vm-guest' (make check-vm does)" "$guest"
vm_tmp

vm_guest_script vm_devlog </dev/null

vm_ldtest_builds
vm_with_ldtest vm_devlog 120
t_booted=$(now)

check() {
  local k=$1 parts min
  vm_check_prog vm_devlog "$k" "$2"
  # Never pass by doing nothing: every part must have run its checks.
  if [ -n "${args[$k]}" ]; then parts="8 10" min=20; else parts="1 2 3 4 5 6 7 8 9" min=100; fi
  [ "$nok" -ge "$min" ] || problems+=("only $nok checks passed (expected at least $min)")
  # shellcheck disable=SC2086 # the part numbers are words
  vm_need_parts vm_devlog "$k" $parts
  if [ -z "${args[$k]}" ]; then
    grep -q 'window_lost=0' <<<"$result" || problems+=("the re-arm window result is missing")
    grep -q '^vm_devlog: TABLE 2:' "$tmp/out-$k" || problems+=("no table")
  fi
}
pass() {
  local k=$1
  echo "PASS $k ${krel[$k]} (boot+test ${boot:-?}s, $nok checks${args[$k]:+, ${args[$k]}}): $result"
  echo "     $(vm_parts_took vm_devlog "$k")"
  sed -n 's/^vm_devlog: TABLE /     /p' "$tmp/out-$k"
}
vm_results check pass
vm_total "fetch + module + initramfs"
vm_finish
