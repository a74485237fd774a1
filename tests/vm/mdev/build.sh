#!/usr/bin/env bash
# build.sh - build ldtest.ko, libdirty's TEST DMA device (an mdev VFIO
# driver, see ldtest.c), out of tree against the Debian kernel headers that
# tests/vm/fetch.sh unpacks. The sources are copied into the output folder
# (kbuild writes next to its sources), so the tree stays clean; the .ko is
# never committed, it is built at test time.
#
#   tests/vm/mdev/build.sh [--kernel 6.1|6.12] [--out DIR] [--cached]
#
# Prints the path of the module on stdout. Default DIR:
# ${BUILD:-build}/tests/vm/mdev/<kernel release>. A module newer than its
# sources is reused. --cached asks fetch.sh for the settings an earlier run
# left (no apt). Exit 0 = built, 77 = cannot (prints "SKIP: why"), 1 = the
# build failed (kbuild's output is shown).
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "mdev/build.sh: $*" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../../.." && pwd)

kernel=6.1 out="" cached=()
while [ $# -gt 0 ]; do
  case $1 in
    --kernel) [ $# -ge 2 ] || die "--kernel needs 6.1 or 6.12"; kernel=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || die "--out needs a folder"; out=$2; shift 2 ;;
    --cached) cached=(--cached); shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
case $kernel in 6.1|6.12) ;; *) die "--kernel wants 6.1 or 6.12" ;; esac
command -v make >/dev/null || { echo "SKIP: make not found (needed to build kernel modules)"; exit 77; }
command -v gcc >/dev/null || { echo "SKIP: gcc not found (needed to build kernel modules)"; exit 77; }

# --headers: the headers and kbuild of this kernel (fetched once).
set +e
env_out=$("$top/tests/vm/fetch.sh" --headers --env "$kernel" "${cached[@]}")
rc=$?
set -e
if [ $rc = 77 ]; then echo "$env_out" | grep -m1 '^SKIP' || echo "SKIP: fetch.sh cannot fetch kernel $kernel"; exit 77; fi
[ $rc = 0 ] || die "fetch.sh --headers --env $kernel exited $rc"
eval "$env_out"
if [ -z "${VM_HEADERS:-}" ] || [ ! -f "$VM_HEADERS/Makefile" ]; then
  # A cached env from a run without --headers: ask fetch.sh for real.
  [ ${#cached[@]} = 0 ] || exec "$0" --kernel "$kernel" ${out:+--out "$out"}
  echo "SKIP: no kernel headers for $VM_KREL (fetch.sh --headers --env $kernel gave none)"
  exit 77
fi

[ -n "$out" ] || out="${BUILD:-$top/build}/tests/vm/mdev/$VM_KREL"
mkdir -p "$out"
out=$(cd "$out" && pwd)
ko="$out/ldtest.ko"
srcs=("$here/ldtest.c" "$here/ldtest-regs.h" "$here/Kbuild")
fresh=1
if [ -f "$ko" ]; then
  for s in "${srcs[@]}" "$VM_HEADERS/Makefile"; do [ "$s" -nt "$ko" ] && fresh=0; done
else
  fresh=0
fi
if [ $fresh = 1 ]; then echo "$ko"; exit 0; fi

cp "${srcs[@]}" "$out/"
extra=()
# 6.12 makes BTF for modules with pahole (package dwarves); without it, skip that step.
if [ "$kernel" = 6.12 ] && ! command -v pahole >/dev/null; then extra=(CONFIG_DEBUG_INFO_BTF_MODULES=); fi
jobs=$(nproc 2>/dev/null || echo 2)
if ! log=$(make -C "$VM_HEADERS" M="$out" -j"$jobs" "${extra[@]}" modules 2>&1) || [ ! -f "$ko" ]; then
  echo "$log" | tail -n 40 >&2
  die "building ldtest.ko against $VM_HEADERS failed (output above)"
fi
# Warnings are bugs here: the module runs in the test guest's kernel.
if grep -q 'warning:' <<<"$log"; then
  grep -B2 -A4 'warning:' <<<"$log" >&2
  rm -f "$ko"
  die "ldtest.c compiles with warnings (above)"
fi
vermagic=$(objcopy -O binary --only-section=.modinfo "$ko" /dev/stdout 2>/dev/null | tr '\0' '\n' | sed -n 's/^vermagic=//p')
case $vermagic in
  "$VM_KREL "*) ;;
  *) rm -f "$ko"; die "ldtest.ko has vermagic '$vermagic', not $VM_KREL" ;;
esac
echo "$ko"
