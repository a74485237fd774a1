#!/usr/bin/env bash
# run-vm.sh - boot one Debian kernel under qemu-system-x86_64 (TCG) with an
# emulated Intel IOMMU, QEMU's edu DMA device and isa-debug-exit, optionally
# an ivshmem-plain BAR backed by a host file; run a command in the guest and
# exit with that command's status.
#
# Exit status: the guest command's status (0..123), or
#   124  the guest did not finish within --timeout (killed; console tail shown)
#   125  the guest ended without reporting a status (panic, QEMU died...)
#   126  QEMU could not start (its error is shown)
#   77   SKIP: QEMU, the kernel or busybox is not available
#   2    bad usage
# It is a plain foreground command: a host-side test may start it with `&`,
# watch the --shm file while the guest runs, then `wait` for the status.
# SIGTERM/SIGINT stop QEMU too.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: tests/vm/run-vm.sh --initrd FILE [options] [--cmd "COMMAND"]

  --kernel K        6.1 (default) or 6.12: the kernel fetch.sh unpacked
  --vmlinuz FILE    boot this kernel image instead (its modules must be in
                    the initramfs)
  --bzimage         boot the kernel's bzImage; by default QEMU boots the ELF
                    vmlinux fetch.sh extracted from it (PVH entry), which
                    skips the guest's decompression (~2 s of a 6.1 boot)
  --initrd FILE     initramfs from tests/vm/mkinitramfs.sh (for the same kernel)
  --cmd "COMMAND"   the guest command (run by /bin/sh -c); default: the
                    initramfs's --default-cmd
  --shm PATH        expose PATH as an ivshmem-plain BAR (1af4:1110, BAR 2;
                    guest: /sys/bus/pci/devices/*/resource2). PATH's size
                    must be a power of two (>= 4 KiB): QEMU maps all of it
  --timeout SECS    kill the guest after SECS seconds (default 120)
  --log FILE        keep the serial console here (default: a temp file,
                    removed unless the run failed)
  --mem SIZE        guest memory (default 512M)
  --smp N           vCPUs (default 1)
  --append ARGS     extra kernel command-line arguments
  --qemu-arg ARG    extra QEMU argument (repeatable)
  --quiet           do not copy the console to stdout at the end
  --stream          copy the console to stdout while the guest runs
  -h, --help        this text
EOF
}

die() { echo "run-vm.sh: $*" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)

kernel=6.1 vmlinuz="" initrd="" cmd="" shm="" timeout_s=120 log="" mem=512M smp=1
append="" quiet=0 stream=0 bzimage=0 qemu_extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --kernel|--vmlinuz|--initrd|--cmd|--shm|--timeout|--log|--mem|--smp|--append|--qemu-arg)
      [ $# -ge 2 ] || die "$1 needs a value"
      case $1 in
        --kernel) kernel=$2 ;; --vmlinuz) vmlinuz=$2 ;; --initrd) initrd=$2 ;;
        --cmd) cmd=$2 ;; --shm) shm=$2 ;; --timeout) timeout_s=$2 ;; --log) log=$2 ;;
        --mem) mem=$2 ;; --smp) smp=$2 ;; --append) append=$2 ;;
        --qemu-arg) qemu_extra+=("$2") ;;
      esac
      shift 2 ;;
    --quiet) quiet=1; shift ;;
    --bzimage) bzimage=1; shift ;;
    --stream) stream=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
[ -n "$initrd" ] || die "--initrd is required (build one with tests/vm/mkinitramfs.sh)"
[ -f "$initrd" ] || die "$initrd not found"
[[ $timeout_s =~ ^[0-9]+$ ]] && [ "$timeout_s" -gt 0 ] || die "--timeout wants whole seconds"

qemu=$(command -v qemu-system-x86_64) ||
  { echo "SKIP: qemu-system-x86_64 not found (make deps installs qemu-system-x86)"; exit 77; }

if [ -z "$vmlinuz" ]; then
  case $kernel in 6.1|6.12) ;; *) die "--kernel wants 6.1 or 6.12" ;; esac
  env_out=$("$here/fetch.sh" --env "$kernel" --cached) || exit $?
  eval "$env_out"
  vmlinuz=$VM_VMLINUZ
  [ $bzimage = 1 ] || [ -z "${VM_VMLINUX:-}" ] || vmlinuz=$VM_VMLINUX
fi
[ -f "$vmlinuz" ] || die "$vmlinuz not found"

# The command travels base64-encoded on the kernel command line (no quoting
# issues); x86 allows 2048 bytes there in all.
# no_timer_check: under a loaded TCG host the kernel's IO-APIC timer check
# can miss its ticks and panic ("timer doesn't work through
# Interrupt-remapped IO-APIC"), which was seen once in make check.
kargs="console=ttyS0 intel_iommu=on panic=-1 no_timer_check quiet $append"
[ -z "$cmd" ] || kargs="$kargs vmtest.cmd=$(printf '%s' "$cmd" | base64 -w0)"
[ ${#kargs} -lt 2000 ] ||
  die "the kernel command line would be ${#kargs} bytes (max ~2000): bake a script into the initramfs (mkinitramfs.sh --file/--default-cmd) and run that"

shm_args=()
if [ -n "$shm" ]; then
  [ -f "$shm" ] || die "--shm $shm: no such file (create it first, e.g. truncate -s 1M $shm)"
  size=$(stat -c %s "$shm")
  if [ "$size" -lt 4096 ] || [ $((size & (size - 1))) -ne 0 ]; then
    die "--shm $shm is $size bytes: ivshmem needs a power-of-two size >= 4096 (truncate -s 1M $shm)"
  fi
  # shellcheck disable=SC2054  # QEMU's option syntax
  shm_args=(-object "memory-backend-file,id=vmshm,share=on,mem-path=${shm//,/,,},size=$size"
            -device ivshmem-plain,memdev=vmshm)
fi

keep_log=0
if [ -z "$log" ]; then
  log=$(mktemp "${TMPDIR:-/tmp}/run-vm.XXXXXX.log")
else
  keep_log=1
  mkdir -p "$(dirname "$log")"
fi
: >"$log"
qerr=$(mktemp "${TMPDIR:-/tmp}/run-vm.XXXXXX.err")
qpid="" tpid=""
cleanup() {
  [ -z "$tpid" ] || kill "$tpid" 2>/dev/null || true
  rm -f "$qerr"
  [ $keep_log = 1 ] || rm -f "$log"
}
trap cleanup EXIT
# Stop QEMU with us (timeout(1) runs it in its own process group).
trap '[ -z "$qpid" ] || kill -TERM "$qpid" 2>/dev/null; wait 2>/dev/null; exit 143' TERM INT HUP

# intel-iommu goes first: QEMU wants the vIOMMU before the devices behind it.
# shellcheck disable=SC2054  # QEMU's option syntax
qemu_cmd=("$qemu" -nodefaults -machine q35,accel=tcg -cpu max -m "$mem" -smp "$smp"
  -device intel-iommu,intremap=on
  -kernel "$vmlinuz" -initrd "$initrd" -append "$kargs"
  -device edu -device isa-debug-exit,iobase=0xf4,iosize=0x04
  "${shm_args[@]}"
  -display none -monitor none -serial "file:$log" -no-reboot
  "${qemu_extra[@]}")

start=$(date +%s.%N)
timeout -k 5 "$timeout_s" "${qemu_cmd[@]}" </dev/null 2>"$qerr" &
qpid=$!
if [ $stream = 1 ]; then
  tail -n +1 -s 0.2 -f --pid="$qpid" "$log" | tr -d '\r' &
  tpid=$!
fi
set +e
wait "$qpid"
qrc=$?
set -e
qpid=""
if [ -n "$tpid" ]; then wait "$tpid" 2>/dev/null || true; tpid=""; fi
secs=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

# The status /init printed, if any.
marker=$(tr -d '\r' <"$log" | sed -n 's/^==== vm: exit \([0-9]*\)$/\1/p' | tail -n1)
krel=${VM_KREL:-$(basename "$vmlinuz")}

show_tail() {
  echo "---- last 30 lines of the guest console ($log) ----" >&2
  tail -n 30 "$log" | tr -d '\r' >&2
  echo "----" >&2
  if [ -s "$qerr" ]; then echo "---- QEMU stderr ----" >&2; cat "$qerr" >&2; fi
  keep_log=1
}

# A failing guest command: its console was copied already unless --quiet.
guest_failed() {
  if [ $quiet = 1 ]; then show_tail; else keep_log=1; echo "run-vm.sh: console kept in $log" >&2; fi
}

if [ $quiet = 0 ] && [ $stream = 0 ]; then tr -d '\r' <"$log"; fi

if [ $qrc = 124 ] || [ $qrc = 137 ]; then
  echo "run-vm.sh: FAIL: $krel: guest still running after ${timeout_s}s; killed" >&2
  show_tail
  exit 124
fi
if [ $((qrc & 1)) = 1 ] && [ -n "$marker" ] && [ $(((qrc - 1) / 2)) = "$marker" ]; then
  echo "run-vm.sh: $krel: guest exit $marker after ${secs}s" >&2
  [ "$marker" = 0 ] || guest_failed
  exit "$marker"
fi
if [ -n "$marker" ] && [ $qrc = 0 ]; then
  # /dev/port failed but init reported on the console and powered off.
  echo "run-vm.sh: $krel: guest exit $marker after ${secs}s (read from the console; isa-debug-exit not written)" >&2
  [ "$marker" = 0 ] || guest_failed
  exit "$marker"
fi
if [ $((qrc & 1)) = 1 ] && [ $qrc -gt 1 ] && [ -z "$marker" ]; then
  # isa-debug-exit written but the console lost the marker.
  echo "run-vm.sh: $krel: guest exit $(((qrc - 1) / 2)) after ${secs}s (no console marker)" >&2
  show_tail
  exit $(((qrc - 1) / 2))
fi
if [ ! -s "$log" ] && [ -s "$qerr" ]; then
  echo "run-vm.sh: FAIL: QEMU did not start (exit $qrc):" >&2
  cat "$qerr" >&2
  exit 126
fi
echo "run-vm.sh: FAIL: $krel: the guest ended after ${secs}s without reporting a status (QEMU exit $qrc; a kernel panic or a crashed /init?)" >&2
show_tail
exit 125
