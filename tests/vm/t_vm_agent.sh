#!/usr/bin/env bash
# t_vm_agent.sh - dirty-agent, the guest agent daemon, in a real Linux
# guest. Per kernel (6.1 and 6.12, booted at once) the host program
# host/agent_host.c creates a view of the guest's 512 MiB of RAM and a
# guest-protocol region at a /dev/shm path, then starts run-vm.sh with that
# file as an ivshmem-plain BAR (the 6.1 guest also gets a second
# ivshmem-plain device over a plain file, which discovery must pass over).
# In the guest, guest/vm_agent.c starts $BUILD/bin/dirty-agent with no
# device option (libpci finds the region) and two client processes that
# use dirty_guest_connect on one shared buffer. The host asserts page by
# page: the handshake (start waits while a client is inside an RCU reader
# section, the agent names that client in guest.waiting_pid, then
# TRUSTED), the pin bit staying set until the LAST of the two unmaps, the
# dirty pages, a killed client's pins kept and reported, guest state
# STOPPED after SIGTERM. The guest also prints every PCI function's
# config space in `lspci -nx` format: this script cuts the dumps out of
# the console and feeds them back to `dirty-agent list --pci-dump` over a
# fake sysfs, which must find the same device the guest's agent served.
#   VM_KERNELS             kernels to boot (default "6.1 6.12")
#   BUILD                  build directory (default build)
#   VM_AGENT_SAVE_DUMPS=1  also copy the dumps to tests/agent/dumps/
# Exit 0 = pass, 1 = fail, 77 = skipped (the reason is printed).
set -euo pipefail

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
  exit 0
fi
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
vm=tests/vm
build=${BUILD:-build}
kernels=${VM_KERNELS:-6.1 6.12}
guest="$build/tests/vm/vm_agent"
host="$build/tests/vm/host/agent_host"
agent="$build/bin/dirty-agent"
mkregion="$build/tests/agent/agent_mkregion"
ram_mib=512

if [ -n "${SAN:-}" ]; then echo "SKIP: VM tier runs in the plain build only (SAN=$SAN)"; exit 77; fi
command -v qemu-system-x86_64 >/dev/null ||
  { echo "SKIP: qemu-system-x86_64 not found (make deps installs qemu-system-x86)"; exit 77; }
probe="/dev/shm/libdirty-vm-agent-probe-$$"
if ! { [ -d /dev/shm ] && : 2>/dev/null >"$probe"; }; then
  echo "SKIP: /dev/shm is not writable (the region file goes there)"; exit 77
fi
rm -f "$probe"
for b in "$guest" "$host" "$agent" "$mkregion"; do
  [ -x "$b" ] || { echo "FAIL: $b missing: build it with 'make all vm-guest' (make check does)"; exit 1; }
done

tmp=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -f /dev/shm/libdirty-vm-agent-$$-*
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
  out=$("$vm/fetch.sh" --env "$k" --cached 2>"$tmp/fetch-$k.err")
  rc=$?
  set -e
  if [ $rc = 77 ]; then skipped+=("$k: $(grep -m1 '^SKIP' <<<"$out" | sed 's/^SKIP: //' || echo "fetch.sh skipped")"); continue; fi
  [ $rc = 0 ] || { echo "FAIL: fetch.sh --env $k exited $rc:"; cat "$tmp/fetch-$k.err"; exit 1; }
  "$vm/mkinitramfs.sh" --kernel "$k" --out "$tmp/initrd-$k.gz" "$guest" "$agent" 2>"$tmp/mkinit-$k.err" ||
    { echo "FAIL: mkinitramfs.sh --kernel $k:"; cat "$tmp/mkinit-$k.err"; exit 1; }
  shm="/dev/shm/libdirty-vm-agent-$$-$k"
  rm -f "$shm"
  extra=()
  if [ "$k" = 6.1 ]; then
    # A second ivshmem-plain device over a plain (zero) file: no region in it.
    plain="/dev/shm/libdirty-vm-agent-$$-$k-plain"
    truncate -s 65536 "$plain"
    extra=(--qemu-arg -object --qemu-arg "memory-backend-file,id=plain0,share=on,mem-path=$plain,size=65536"
           --qemu-arg -device --qemu-arg ivshmem-plain,memdev=plain0)
  fi
  "$host" --shm "$shm" --ram-mib $ram_mib --console "$tmp/console-$k" \
    --boot-timeout 90 --step-timeout 30 -- \
    "$vm/run-vm.sh" --kernel "$k" --initrd "$tmp/initrd-$k.gz" --shm "$shm" "${extra[@]}" \
      --mem ${ram_mib}M --timeout 150 --quiet --log "$tmp/console-$k" \
      --cmd 'rc=0; vm_agent || rc=1; if dmesg | grep -E "WARNING:|BUG:|Oops|Call Trace"; then echo "vm_agent: FAIL the kernel log has the warnings above"; rc=1; fi; exit $rc' \
    >"$tmp/out-$k" 2>&1 &
  pids+=($!)
  ran+=("$k")
done
t_booted=$(now)

# check_dump K: the guest's lspci dump through libpci's dump method.
check_dump() {
  local k=$1 dump="$tmp/lspci-$k.txt" fake="$tmp/fakesys-$k" served listed bdf n
  tr -d '\r' <"$tmp/console-$k" | sed -n 's/^vm_agent: lspci| \{0,1\}//p' >"$dump"
  n=$(grep -c '^[0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]\.[0-7] ' "$dump" || true)
  [ "$n" -gt 0 ] || { echo "no lspci dump in the console"; return 1; }
  served=$(tr -d '\r' <"$tmp/console-$k" | sed -n 's/.*serving PCI \([0-9a-f:.]*\) BAR 2.*/\1/p' | head -n1)
  [ -n "$served" ] || { echo "the guest's agent log names no PCI device it served"; return 1; }
  # A fake sysfs: a fresh region as the served device's BAR 2, zeros for any other ivshmem.
  for bdf in $(sed -n 's/^\([0-9a-f][0-9a-f]:[0-9a-f][0-9a-f]\.[0-7]\) [0-9a-f]*: 1af4:1110.*/\1/p' "$dump"); do
    mkdir -p "$fake/bus/pci/devices/0000:$bdf"
    if [ "0000:$bdf" = "$served" ]; then
      "$mkregion" "$fake/bus/pci/devices/0000:$bdf/resource2" --ram-mib $ram_mib >/dev/null
    else
      truncate -s 65536 "$fake/bus/pci/devices/0000:$bdf/resource2"
    fi
  done
  listed=$("$agent" list --pci-dump "$dump" --sysfs "$fake" 2>&1) || { echo "dirty-agent list failed: $listed"; return 1; }
  grep -q "^$served  ivshmem-plain .*libdirty region" <<<"$listed" ||
    { echo "dirty-agent list on the dump does not find $served with a region: $listed"; return 1; }
  echo "$n functions; dirty-agent list on the dump: $(tr '\n' ';' <<<"$listed" | sed 's/  */ /g')"
  if [ "${VM_AGENT_SAVE_DUMPS:-0}" = 1 ]; then
    local name="$k-$(grep -c ' 1af4:1110' "$dump")ivshmem.lspci"
    cp "$dump" "tests/agent/dumps/$name"
    echo "saved tests/agent/dumps/$name"
  fi
}

fail=0 i=0
for k in "${ran[@]}"; do
  set +e
  wait "${pids[$i]}"
  rc=$?
  set -e
  i=$((i + 1))
  shm="/dev/shm/libdirty-vm-agent-$$-$k"
  result=$(sed -n 's/^agent_host: RESULT //p' "$tmp/out-$k" | head -n1)
  gresult=$(tr -d '\r' <"$tmp/console-$k" 2>/dev/null | sed -n 's/^vm_agent: RESULT //p' | head -n1)
  boot=$(sed -n 's/^run-vm.sh: .* after \([0-9.]*\)s.*/\1/p' "$tmp/out-$k" | tail -n1)
  nok=$(grep -c '^agent_host: ok ' "$tmp/out-$k" || true)
  nfail=$(grep -c '^agent_host: FAIL' "$tmp/out-$k" || true)
  problems=()
  [ $rc = 0 ] || problems+=("agent_host exit $rc")
  [ -n "$result" ] || problems+=("no RESULT line from agent_host")
  case $result in *" failures=0 "*) ;; *) problems+=("agent_host reported failures") ;; esac
  [ "$nfail" = 0 ] || problems+=("$nfail FAIL lines")
  [ "$gresult" = ok ] || problems+=("the guest program did not finish ('${gresult:-no RESULT line}')")
  # Never pass by doing nothing: every step's checks must have run.
  [ "$nok" -ge 20 ] || problems+=("only $nok host checks passed (expected at least 20)")
  [ ! -e "$shm" ] || problems+=("$shm was left behind")
  dumpmsg=""
  if [ ${#problems[@]} = 0 ]; then
    if ! dumpmsg=$(check_dump "$k" 2>&1); then problems+=("lspci dump: $dumpmsg"); fi
  fi
  if [ ${#problems[@]} = 0 ]; then
    echo "PASS $k (boot+test ${boot:-?}s, $nok host checks): $result"
    dec=$(tr -d '\r' <"$tmp/console-$k" | grep -c 'memory decoding was off' || true)
    echo "     guest: $(tr -d '\r' <"$tmp/console-$k" | grep -c '^dirty-agent\[') agent log lines ($dec device(s) had memory decoding off); lspci: $dumpmsg"
    sed -n 's/^agent_host: ok   \[[ 0-9.]* ms\] /     /p' "$tmp/out-$k"
  else
    echo "FAIL $k: $(IFS=';'; echo "${problems[*]}")"
    sed 's/^/     | /' "$tmp/out-$k"
    if ! grep -q '^agent_host: | ' "$tmp/out-$k" && [ -s "$tmp/console-$k" ]; then
      echo "     ---- guest console ----"
      tr -d '\r' <"$tmp/console-$k" | tail -n 60 | sed 's/^/     | /'
    fi
    fail=1
  fi
done
echo "     total $(secs "$t_start" "$(now)")s (fetch + initramfs $(secs "$t_start" "$t_booted")s)"

for s in "${skipped[@]}"; do echo "SKIP: kernel $s"; done
[ $fail = 0 ] || exit 1
[ ${#ran[@]} -gt 0 ] || exit 77
[ ${#skipped[@]} = 0 ] || exit 77
exit 0
