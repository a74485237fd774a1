#!/usr/bin/env bash
# t_agent_pci.sh - dirty-agent's device discovery (libpci) on PCI dumps the
# VM tier captured from its Debian guests (tests/agent/dumps/): libpci's
# dump method reads the config space, a fake sysfs tree holds each
# ivshmem-plain function's resource2 (a region made with the host library,
# or a plain file). Asserts: the device, its BDF and BAR 2 (address from
# the dump, size from the resource file) are found; the daemon serves the
# one device that holds a region and passes over the one that does not;
# two devices with a region need --device (exit 2, both listed) and
# --device serves the one named; a --device that is not an ivshmem
# function, no ivshmem at all, or an ivshmem without a region: exit 3;
# a malformed --device: exit 2; a dump libpci rejects or that is missing:
# exit 1, with libpci's message, no crash; no PCI bus under --sysfs: exit 3.
# Exit 0 = pass, 1 = fail.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD:-build}
case $build in /*) ;; *) build="$top/$build" ;; esac
agent="$build/bin/dirty-agent"
mkregion="$build/tests/agent/agent_mkregion"
dumps="$top/tests/agent/dumps"
for b in "$agent" "$mkregion"; do
  [ -x "$b" ] || { echo "FAIL: $b missing: run make (make check builds it)"; exit 1; }
done

tmp=$(mktemp -d)
apid=""
cleanup() { if [ -n "$apid" ]; then kill "$apid" 2>/dev/null; wait "$apid" 2>/dev/null; fi; rm -rf "$tmp"; }
trap cleanup EXIT
fails=0 n=0
ok() { n=$((n + 1)); echo "ok   $*"; }
bad() { n=$((n + 1)); fails=$((fails + 1)); echo "FAIL $*"; }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

# fake NAME BDF:kind...: a sysfs tree with resource2 per ivshmem function.
fake() {
  local root="$tmp/$1" spec bdf kind; shift
  rm -rf "$root"
  for spec in "$@"; do
    bdf=${spec%%=*} kind=${spec#*=}
    mkdir -p "$root/bus/pci/devices/$bdf"
    case $kind in
      region) "$mkregion" "$root/bus/pci/devices/$bdf/resource2" --ram-mib 512 >/dev/null || return 1 ;;
      plain) truncate -s 65536 "$root/bus/pci/devices/$bdf/resource2" ;;
    esac
  done
  echo "$root"
}

# run_agent NAME ARGS...: start the daemon; st = its exit status if it
# ended within 3 s, else "running" (its pid in $apid).
run_agent() {
  local name=$1; shift
  "$agent" -v --socket "$tmp/$name.sock" --state-dir "$tmp/$name-state" "$@" >"$tmp/$name.log" 2>&1 &
  apid=$!
  st=running
  for _ in $(seq 300); do
    if ! kill -0 "$apid" 2>/dev/null; then
      wait "$apid"; st=$?; apid=""; return
    fi
    [ -S "$tmp/$name.sock" ] && "$agent" status --socket "$tmp/$name.sock" >/dev/null 2>&1 && return
    sleep 0.01
  done
}
stop_agent() { kill -TERM "$apid"; wait "$apid"; local rc=$?; apid=""; return $rc; }

# 1. The 6.12 guest: one ivshmem, holding the region.
d="$dumps/6.12-1ivshmem.lspci"
root=$(fake one 0000:00:02.0=region)
out=$("$agent" list --pci-dump "$d" --sysfs "$root" 2>&1); rc=$?
check "6.12 dump: list finds 0000:00:02.0, BAR 2 at 0xfebf0000, 65536 bytes, a libdirty region (exit $rc)" \
  grep -q '^0000:00:02.0  ivshmem-plain  BAR 2 at 0xfebf0000, 65536 bytes  libdirty region v1.1: 131072 pages' <<<"$out"
json=$("$agent" list --json --pci-dump "$d" --sysfs "$root" 2>&1)
check "6.12 dump: list --json: bdf, bar2_addr 4273930240, bar2_size 65536, libdirty true" \
  grep -q '"bdf": "0000:00:02.0", .*"bar2_addr": 4273930240, "bar2_size": 65536, "libdirty": true' <<<"$json"
run_agent one --pci-dump "$d" --sysfs "$root"
check "6.12 dump: the daemon starts and serves it (state: $st)" [ "$st" = running ]
if [ "$st" = running ]; then
  s=$("$agent" status --json --socket "$tmp/one.sock")
  check "status: region kind pci, bdf 0000:00:02.0, 131072 pages" \
    grep -q '"kind": "pci", "bdf": "0000:00:02.0", .*"pages": 131072' <<<"$s"
  stop_agent; rc=$?; check "SIGTERM: exit 0 (got $rc)" [ $rc = 0 ]
fi

# 2. The 6.1 guest: two ivshmem; only 00:02.0 holds a region.
d="$dumps/6.1-2ivshmem.lspci"
root=$(fake two 0000:00:02.0=region 0000:00:03.0=plain)
out=$("$agent" list --pci-dump "$d" --sysfs "$root" 2>&1)
check "6.1 dump: list finds both, 00:03.0 at 0xfebf0000 without a region" \
  grep -q '^0000:00:03.0  ivshmem-plain  BAR 2 at 0xfebf0000, 65536 bytes  no libdirty region' <<<"$out"
run_agent two --pci-dump "$d" --sysfs "$root"
check "6.1 dump: the daemon picks the one with a region by itself (state: $st)" [ "$st" = running ]
if [ "$st" = running ]; then
  check "its log says it serves PCI 0000:00:02.0" grep -q 'serving PCI 0000:00:02.0 BAR 2' "$tmp/two.log"
  stop_agent
fi

# 3. Both hold a region: --device is needed.
root=$(fake both 0000:00:02.0=region 0000:00:03.0=region)
run_agent both --pci-dump "$d" --sysfs "$root"
check "two regions, no --device: exit 2 (got $st)" [ "$st" = 2 ]
check "the message lists both and names --device" \
  bash -c "grep -q 'choose one with --device' '$tmp/both.log' && grep -q '0000:00:02.0' '$tmp/both.log' && grep -q '0000:00:03.0' '$tmp/both.log'"
run_agent both3 --pci-dump "$d" --sysfs "$root" --device 00:03.0
check "--device 00:03.0: serves it (state: $st)" [ "$st" = running ]
if [ "$st" = running ]; then
  check "its log says PCI 0000:00:03.0" grep -q 'serving PCI 0000:00:03.0 BAR 2' "$tmp/both3.log"
  stop_agent
fi
run_agent notivshmem --pci-dump "$d" --sysfs "$root" --device 0000:00:1f.0
check "--device 0000:00:1f.0 (not an ivshmem function): exit 3 (got $st)" [ "$st" = 3 ]
run_agent badbdf --pci-dump "$d" --sysfs "$root" --device 00:99
check "--device 00:99 (not an address): exit 2 (got $st)" [ "$st" = 2 ]

# 4. No ivshmem at all; an ivshmem without a region.
run_agent none --pci-dump "$dumps/6.12-0ivshmem.lspci" --sysfs "$tmp/one"
check "no ivshmem-plain device: exit 3 (got $st)" [ "$st" = 3 ]
check "the message says so and what QEMU needs" \
  bash -c "grep -q 'no ivshmem-plain device (PCI 1af4:1110) found' '$tmp/none.log' && grep -q -- '-device ivshmem-plain' '$tmp/none.log'"
out=$("$agent" list --pci-dump "$dumps/6.12-0ivshmem.lspci" --sysfs "$tmp/one" 2>&1); rc=$?
check "list with no ivshmem: exit 3 (got $rc)" [ $rc = 3 ]
root=$(fake noregion 0000:00:02.0=plain)
run_agent noregion --pci-dump "$dumps/6.12-1ivshmem.lspci" --sysfs "$root"
check "an ivshmem without a region: exit 3 (got $st)" [ "$st" = 3 ]
check "the message says none holds a region" grep -q 'none of the 1 ivshmem-plain device(s) holds a libdirty region' "$tmp/noregion.log"

# 5. Broken inputs: libpci's errors come back as exit 1 with its message.
run_agent nodump --pci-dump "$tmp/no-such-dump" --sysfs "$root"
check "a missing dump: exit 1 (got $st)" [ "$st" = 1 ]
{ printf '00:02.0 0500: 1af4:1110\n00: '; head -c 400 /dev/zero | tr '\0' 'a'; printf '\n'; } >"$tmp/long.lspci"
run_agent baddump --pci-dump "$tmp/long.lspci" --sysfs "$root"
check "a dump libpci rejects (a 400-byte line): exit 1 (got $st)" [ "$st" = 1 ]
check "with libpci's own message" grep -q 'libpci (dump method): dump: line too long' "$tmp/baddump.log"
mkdir -p "$tmp/emptysys"
run_agent nobus --sysfs "$tmp/emptysys"
check "no PCI bus under --sysfs (sysfs method): exit 3 (got $st)" [ "$st" = 3 ]
check "the message says is sysfs mounted" grep -q 'is sysfs mounted' "$tmp/nobus.log"

echo "RESULT pci: $n checks, $fails failed"
if [ $fails != 0 ]; then
  for f in "$tmp"/*.log; do echo "---- $f"; tail -n 8 "$f"; done
  exit 1
fi
exit 0
