#!/usr/bin/env bash
# t_dirtymig_netns.sh - dirtymig between two "hosts": a source and a
# destination in two network namespaces joined by a veth pair, the source
# side rate-limited by tc (tbf, 500 Mbit/s), one libdirty migration over
# TCP that must succeed with 0 lost pages.
# Addresses are 192.0.2.1 and 192.0.2.2 (TEST-NET-1, documentation only),
# and they exist only inside the two namespaces: nothing is routed outside.
# Skips (77, "SKIP: reason") when not root, without ip or tc (Debian:
# iproute2), or when the kernel refuses the namespaces, the veth pair or
# the qdisc; or when dirtymig itself skips (no userfaultfd WP-async or
# io_uring). The namespaces are always deleted on exit.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/${BUILD:-build}/bin/dirtymig"
[ -x "$bin" ] || { echo "FAIL: $bin not built"; exit 1; }

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "network namespaces need root (uid is $(id -u))"
command -v ip >/dev/null || skip "'ip' not found (Debian package iproute2)"
command -v tc >/dev/null || skip "'tc' not found (Debian package iproute2)"

src="dm-src-$$" dst="dm-dst-$$"
vs="dmv$$s" vd="dmv$$d"	# interface names: at most 15 characters
src_ip=192.0.2.1 dst_ip=192.0.2.2
tmp=$(mktemp -d)
dpid=""
cleanup() {
  [ -n "$dpid" ] && kill -9 "$dpid" 2>/dev/null || true
  ip netns del "$src" 2>/dev/null || true	# takes its end of the veth pair along
  ip netns del "$dst" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

try() {  # what, command...: run it, or skip saying what the kernel refused
  local what=$1
  shift
  "$@" 2>"$tmp/ip.err" || skip "$what refused: $* -> $(head -n1 "$tmp/ip.err")"
}
try "network namespace creation" ip netns add "$src"
try "network namespace creation" ip netns add "$dst"
try "veth pair creation" ip link add "$vs" netns "$src" type veth peer name "$vd" netns "$dst"
for ns in "$src" "$dst"; do
  ip -n "$ns" link set lo up
done
ip -n "$src" addr add "$src_ip/24" dev "$vs"
ip -n "$dst" addr add "$dst_ip/24" dev "$vd"
ip -n "$src" link set "$vs" up
ip -n "$dst" link set "$vd" up
try "tc qdisc tbf" ip netns exec "$src" tc qdisc add dev "$vs" root tbf rate 500mbit burst 64kb latency 50ms
# (No ping: iputils-ping may be absent. The qdisc's byte count below shows
# the migration went over the veth pair.)

# The destination, in its namespace, on a port the kernel picks.
ip netns exec "$dst" "$bin" dest --listen "$dst_ip:0" >"$tmp/d.out" 2>"$tmp/d.err" &
dpid=$!
port=""
for _ in $(seq 100); do
  port=$(sed -n "s/^dirtymig dest: listening on ${dst_ip//./\\.}:\([0-9]*\)\$/\1/p" "$tmp/d.out")
  [ -n "$port" ] && break
  kill -0 "$dpid" 2>/dev/null || break
  sleep 0.05
done
if [ -z "$port" ]; then
  if grep -q "io_uring is not available" "$tmp/d.err"; then skip "$(head -n1 "$tmp/d.err")"; fi
  echo "FAIL: the destination did not start listening: $(cat "$tmp/d.err")"
  exit 1
fi

set +e
out=$(timeout 25 ip netns exec "$src" "$bin" source --to "$dst_ip:$port" --tracking=libdirty \
  --quick --json --quiet 2>"$tmp/s.err")
rc=$?
set -e
cat "$tmp/s.err"
[ "$rc" = 77 ] && skip "$(head -n1 "$tmp/s.err")"
echo "$out"
[ "$rc" = 0 ] || { echo "FAIL: the source exited $rc"; cat "$tmp/d.err"; exit 1; }
# The migration was flagged last: the destination exits 0 on its own.
if ! timeout 10 tail --pid="$dpid" -f /dev/null; then
  echo "FAIL: the destination still runs after the migration"
  exit 1
fi
set +e
wait "$dpid"
drc=$?
set -e
dpid=""
cat "$tmp/d.out" "$tmp/d.err"
[ "$drc" = 0 ] || { echo "FAIL: the destination exited $drc"; exit 1; }
sent=$(ip netns exec "$src" tc -s qdisc show dev "$vs" | sed -n 's/^ *Sent \([0-9]*\) bytes.*/\1/p' | head -n1)
python3 - "$out" "${sent:-0}" <<'PY'
import json, sys
o = json.loads(sys.argv[1].strip().splitlines()[-1])
sent = int(sys.argv[2])
assert o["mode"] == "libdirty", o
assert o["ok"], f"migration failed: {o['error']}"
assert o["lost_pages"] == 0, f"lost {o['lost_pages']} pages"
assert o["pages_sent"] >= o["guest_bytes"] // 4096, f"no full first pass: {o}"
assert sent >= o["bytes_sent"], f"the tbf qdisc carried {sent} bytes < {o['bytes_sent']} sent: not over the veth?"
print(f"two namespaces OK: {o['pages_sent']} pages over veth + tbf 500mbit "
      f"(qdisc carried {sent} bytes), measured {o['bandwidth'] / 1e6:.1f} MB/s, "
      f"downtime {o['downtime_ms']:.1f} ms, 0 lost")
PY
