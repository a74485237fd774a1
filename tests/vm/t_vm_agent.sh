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
. "$(dirname "$0")/common.sh"

vm_setup "$@"
guest="$build/tests/vm/vm_agent"
host="$build/tests/vm/host/agent_host"
agent="$build/bin/dirty-agent"
mkregion="$build/tests/agent/agent_mkregion"
ram_mib=512
vm_need_shm agent
vm_need_bins "'make all vm-guest' (make check does)" "$guest" "$host" "$agent" "$mkregion"
vm_tmp
vm_cleanup_prefixes+=("/dev/shm/libdirty-vm-agent-$$-")

for k in $kernels; do
  vm_fetch "$k" --cached || continue
  vm_initramfs "$k" "$guest" "$agent"
  shm="/dev/shm/libdirty-vm-agent-$$-$k"
  extra=()
  if [ "$k" = 6.1 ]; then
    # A second ivshmem-plain device over a plain (zero) file: no region in it.
    plain="/dev/shm/libdirty-vm-agent-$$-$k-plain"
    truncate -s 65536 "$plain"
    extra=(--qemu-arg -object --qemu-arg "memory-backend-file,id=plain0,share=on,mem-path=$plain,size=65536"
           --qemu-arg -device --qemu-arg ivshmem-plain,memdev=plain0)
  fi
  vm_host_boot "$k" "$host" vm_agent "$shm" "${extra[@]}"
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

check() {
  local k=$1
  vm_check_host agent_host vm_agent "$k" "$2" 20 "/dev/shm/libdirty-vm-agent-$$-$k" ok
  dumpmsg=""
  if [ ${#problems[@]} = 0 ]; then
    if ! dumpmsg=$(check_dump "$k" 2>&1); then problems+=("lspci dump: $dumpmsg"); fi
  fi
}
pass() {
  local k=$1 dec
  echo "PASS $k (boot+test ${boot:-?}s, $nok host checks): $result"
  dec=$(tr -d '\r' <"$tmp/console-$k" | grep -c 'memory decoding was off' || true)
  echo "     guest: $(tr -d '\r' <"$tmp/console-$k" | grep -c '^dirty-agent\[') agent log lines ($dec device(s) had memory decoding off); lspci: $dumpmsg"
  sed -n 's/^agent_host: ok   \[[ 0-9.]* ms\] /     /p' "$tmp/out-$k"
}
console() { vm_console_tail agent_host 60 "$1"; }
vm_results check pass console
vm_total "fetch + initramfs"
vm_finish
