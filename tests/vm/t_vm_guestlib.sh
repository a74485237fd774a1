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

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
vm=tests/vm
build=${BUILD:-build}
kernels=${VM_KERNELS:-6.1 6.12}
guest="$build/tests/vm/vm_guestlib"
host="$build/tests/vm/host/gp_host"
ram_mib=512

if [ -n "${SAN:-}" ]; then echo "SKIP: VM tier runs in the plain build only (SAN=$SAN)"; exit 77; fi
command -v qemu-system-x86_64 >/dev/null ||
  { echo "SKIP: qemu-system-x86_64 not found (make deps installs qemu-system-x86)"; exit 77; }
# QEMU maps the region from a file the host program creates; /dev/shm is
# where a VMM would put it (tmpfs: no disk I/O behind the guest's bitmaps).
probe="/dev/shm/libdirty-vm-guestlib-probe-$$"
if ! { [ -d /dev/shm ] && : 2>/dev/null >"$probe"; }; then
  echo "SKIP: /dev/shm is not writable (the region file goes there)"; exit 77
fi
rm -f "$probe"
for b in "$guest" "$host"; do
  [ -x "$b" ] || { echo "FAIL: $b missing: build it with 'make vm-guest' (make check-vm does)"; exit 1; }
done

tmp=$(mktemp -d)
pids=()
cleanup() {
  local p
  # gp_host stops its VM and removes its file on SIGTERM.
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f /dev/shm/libdirty-vm-guestlib-$$-*
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' INT TERM

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
t_start=$(now)

skipped=() ran=()
for k in $kernels; do
  set +e
  # --cached: a kernel already unpacked is used as is (no apt round trip).
  out=$("$vm/fetch.sh" --env "$k" --cached 2>"$tmp/fetch-$k.err")
  rc=$?
  set -e
  if [ $rc = 77 ]; then skipped+=("$k: $(grep -m1 '^SKIP' <<<"$out" | sed 's/^SKIP: //' || echo "fetch.sh skipped")"); continue; fi
  [ $rc = 0 ] || { echo "FAIL: fetch.sh --env $k exited $rc:"; cat "$tmp/fetch-$k.err"; exit 1; }
  "$vm/mkinitramfs.sh" --kernel "$k" --out "$tmp/initrd-$k.gz" "$guest" 2>"$tmp/mkinit-$k.err" ||
    { echo "FAIL: mkinitramfs.sh --kernel $k:"; cat "$tmp/mkinit-$k.err"; exit 1; }
  shm="/dev/shm/libdirty-vm-guestlib-$$-$k"
  rm -f "$shm"
  # gp_host creates $shm, then runs run-vm.sh on it; --log keeps the console
  # where gp_host can show it on a failure.
  "$host" --shm "$shm" --ram-mib $ram_mib --console "$tmp/console-$k" \
    --boot-timeout 90 --step-timeout 30 -- \
    "$vm/run-vm.sh" --kernel "$k" --initrd "$tmp/initrd-$k.gz" --shm "$shm" \
      --mem ${ram_mib}M --timeout 150 --quiet --log "$tmp/console-$k" \
      --cmd 'rc=0; vm_guestlib || rc=1; if dmesg | grep -E "WARNING:|BUG:|Oops|Call Trace"; then echo "vm_guestlib: FAIL the kernel log has the warnings above"; rc=1; fi; exit $rc' \
    >"$tmp/out-$k" 2>&1 &
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
  shm="/dev/shm/libdirty-vm-guestlib-$$-$k"
  result=$(sed -n 's/^gp_host: RESULT //p' "$tmp/out-$k" | head -n1)
  gresult=$(tr -d '\r' <"$tmp/console-$k" 2>/dev/null | sed -n 's/^vm_guestlib: RESULT //p' | head -n1)
  boot=$(sed -n 's/^run-vm.sh: .* after \([0-9.]*\)s.*/\1/p' "$tmp/out-$k" | tail -n1)
  nok=$(grep -c '^gp_host: ok ' "$tmp/out-$k" || true)
  nfail=$(grep -c '^gp_host: FAIL' "$tmp/out-$k" || true)
  problems=()
  [ $rc = 0 ] || problems+=("gp_host exit $rc")
  [ -n "$result" ] || problems+=("no RESULT line from gp_host")
  case $result in *" failures=0 "*) ;; *) problems+=("gp_host reported failures") ;; esac
  [ "$nfail" = 0 ] || problems+=("$nfail FAIL lines")
  case $gresult in "ok "*) ;; *) problems+=("the guest program did not finish ('${gresult:-no RESULT line}')") ;; esac
  # Never pass by doing nothing: every step's checks must have run.
  [ "$nok" -ge 24 ] || problems+=("only $nok host checks passed (expected at least 24)")
  [ ! -e "$shm" ] || problems+=("$shm was left behind")
  if [ ${#problems[@]} = 0 ]; then
    echo "PASS $k (boot+test ${boot:-?}s, $nok host checks): $result"
    echo "     guest: $gresult"
    sed -n 's/^gp_host: ok   \[[ 0-9.]* ms\] /     /p' "$tmp/out-$k"
  else
    echo "FAIL $k: $(IFS=';'; echo "${problems[*]}")"
    sed 's/^/     | /' "$tmp/out-$k"
    if ! grep -q '^gp_host: | ' "$tmp/out-$k" && [ -s "$tmp/console-$k" ]; then
      echo "     ---- guest console ----"
      tr -d '\r' <"$tmp/console-$k" | tail -n 40 | sed 's/^/     | /'
    fi
    fail=1
  fi
done
echo "     total $(secs "$t_start" "$(now)")s (fetch + initramfs $(secs "$t_start" "$t_booted")s)"

for s in "${skipped[@]}"; do echo "SKIP: kernel $s"; done
[ $fail = 0 ] || exit 1
[ ${#ran[@]} -gt 0 ] || exit 77
# A kernel the registry does not offer: the test is incomplete, say so.
[ ${#skipped[@]} = 0 ] || exit 77
exit 0
