#!/usr/bin/env bash
# t_dirtymig.sh - the downtime harness end to end on loopback, briefly:
#  1. `dirtymig demo --quick --json`: one short migration per tracking mode
#     on a tiny guest; libdirty and all-mapped lose no page, cpu-only must
#     lose some (the DMA writes), libdirty's downtime is below all-mapped's;
#  2. a destination refuses a wrong version, a bad magic and a truncated
#     stream with a clear message and a non-zero exit;
#  3. a source whose destination dies mid-migration reports the dropped
#     connection, exits non-zero and says its dirty state was kept;
#  1c. per KVM dirty-log mode (bitmap, clear-log, ring; those the kernel
#     has): libdirty loses 0 pages, cpu-only loses the NIC's;
#  1d. per NIC completion (unmap alone, sync_for_cpu alone with buffers
#     recycled mapped) and the DEFER policy: the same;
#  4. a destination that resets the first connection mid-round
#     (--drop-after-pages) and a source with --retry 1: the first attempt
#     fails with a clear message, the second succeeds with 0 lost pages.
# Skips (77) when the kernel lacks userfaultfd WP-async or io_uring.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/${BUILD:-build}/bin/dirtymig"
[ -x "$bin" ] || { echo "FAIL: $bin not built"; exit 1; }
# Not `--help | grep -q`: grep leaving early is a SIGPIPE, a failure under pipefail.
grep -q -- '--tracking' <<<"$("$bin" --help)" || { echo "FAIL: --help does not document --tracking"; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# ---- 1. one short migration per mode ------------------------------------
set +e
out=$(timeout 60 "$bin" demo --quick --vcpu=threads --json --quiet 2>"$tmp/demo.err")
rc=$?
set -e
if [ $rc = 77 ]; then
  echo "SKIP: $(head -n1 "$tmp/demo.err")"
  exit 77
fi
echo "$out"
cat "$tmp/demo.err"
[ $rc = 0 ] || { echo "FAIL: dirtymig demo --quick exited $rc"; exit 1; }
python3 - "$out" <<'PY'
import json, sys
runs = {}
for line in sys.argv[1].splitlines():
    if line.strip():
        o = json.loads(line)
        runs[o["mode"]] = o
assert set(runs) == {"libdirty", "cpu-only", "all-mapped"}, f"modes: {sorted(runs)}"
keys = {"mode", "total_ms", "downtime_ms", "rounds", "pages_sent", "bytes_sent",
        "final_pages", "lost_pages", "link_bytes_per_s", "limit_ms"}
for m, o in runs.items():
    missing = keys - o.keys()
    assert not missing, f"{m}: missing {missing}"
    assert o["ok"], f"{m} failed: {o['error']}"
    assert o["pages_sent"] >= o["guest_bytes"] // 4096, f"{m}: no full first pass: {o}"
    assert o["downtime_ms"] > 0 and o["total_ms"] >= o["downtime_ms"], o
ld, co, am = runs["libdirty"], runs["cpu-only"], runs["all-mapped"]
assert ld["lost_pages"] == 0, f"libdirty lost {ld['lost_pages']} pages"
assert am["lost_pages"] == 0, f"all-mapped lost {am['lost_pages']} pages"
assert co["lost_pages"] > 0, "cpu-only lost no page: the DMA writes were not exercised"
assert ld["downtime_ms"] < am["downtime_ms"], \
    f"libdirty downtime {ld['downtime_ms']} ms not below all-mapped's {am['downtime_ms']} ms"
assert am["final_pages"] == am["guest_bytes"] // 4096, "all-mapped must resend all RAM at the stop"
print(f"modes OK: libdirty {ld['downtime_ms']:.1f} ms / 0 lost, cpu-only {co['lost_pages']} lost, "
      f"all-mapped {am['downtime_ms']:.1f} ms / 0 lost")
PY

# ---- 1b. the same with a real KVM guest (--vcpu=kvm); skipped without KVM --
set +e
out=$(timeout 60 "$bin" demo --quick --vcpu=kvm --json --quiet 2>"$tmp/kvm.err")
rc=$?
set -e
if [ $rc = 77 ]; then
  echo "skip kvm case: $(head -n1 "$tmp/kvm.err")"
else
  cat "$tmp/kvm.err"
  [ $rc = 0 ] || { echo "$out"; echo "FAIL: dirtymig demo --quick --vcpu=kvm exited $rc"; exit 1; }
  python3 - "$out" <<'PY'
import json, sys
runs = {o["mode"]: o for o in map(json.loads, filter(str.strip, sys.argv[1].splitlines()))}
ld, co = runs["libdirty"], runs["cpu-only"]
assert ld["ok"] and co["ok"], (ld.get("error"), co.get("error"))
assert ld["vcpu_writes"] > 0, "the KVM vCPU wrote nothing"
assert ld["lost_pages"] == 0, f"kvm: libdirty lost {ld['lost_pages']} pages"
assert co["lost_pages"] > 0, "kvm: cpu-only lost no page"
print(f"kvm OK: libdirty 0 lost ({ld['vcpu_writes']} guest page writes), cpu-only {co['lost_pages']} lost")
PY
fi

# ---- 1c. every KVM dirty-log mode the kernel has -------------------------
# Clear-log is QEMU's default without a ring: a page is reported once until
# a claim re-protects it (the source's prepare_read). cpu-only must still
# lose the NIC's DMA pages in every mode.
for kmode in bitmap clear-log ring; do
  set +e
  out=$(timeout 60 "$bin" demo --quick --vcpu=kvm --kvm-mode="$kmode" --tracking=libdirty,cpu-only \
        --json --quiet 2>"$tmp/km.err")
  rc=$?
  set -e
  if [ $rc = 77 ]; then
    echo "skip kvm-mode $kmode: $(head -n1 "$tmp/km.err")"
    continue
  fi
  cat "$tmp/km.err"
  [ $rc = 0 ] || { echo "$out"; echo "FAIL: dirtymig --kvm-mode=$kmode exited $rc"; exit 1; }
  python3 - "$out" "$kmode" <<'PY'
import json, sys
runs = {o["mode"]: o for o in map(json.loads, filter(str.strip, sys.argv[1].splitlines()))}
want = sys.argv[2]
ld, co = runs["libdirty"], runs["cpu-only"]
for o in (ld, co):
    assert o["ok"], o.get("error")
    assert o["vcpu"] == "kvm" and o["kvm_mode"] == want, f"ran {o['vcpu']}/{o['kvm_mode']}, asked kvm/{want}"
assert ld["vcpu_writes"] > 0, "the KVM vCPU wrote nothing"
assert ld["rounds"] >= 2, f"{want}: no pre-copy round after the first pass: {ld['rounds']}"
assert ld["lost_pages"] == 0, f"kvm/{want}: libdirty lost {ld['lost_pages']} pages"
assert co["lost_nic_pages"] > 0, f"kvm/{want}: cpu-only lost no NIC page"
print(f"kvm/{want} OK: libdirty 0 lost in {ld['rounds']} rounds, cpu-only {co['lost_pages']} lost")
PY
done
# ---- 1d. every way the NIC's driver reports DMA, and the DEFER policy ----
# unmap alone, sync_for_cpu alone (buffers recycled still mapped, as a page
# pool does: pins never drop), and DEFER (claims keep pinned pages back,
# final sends them): libdirty loses 0 pages, cpu-only loses the NIC's.
for variant in "unmap defer" "sync send" "sync defer"; do
  set -- $variant
  set +e
  out=$(timeout 60 "$bin" demo --quick --nic-completion="$1" --pinned="$2" --tracking=libdirty,cpu-only \
        --json --quiet 2>"$tmp/nv.err")
  rc=$?
  set -e
  cat "$tmp/nv.err"
  [ $rc = 0 ] || { echo "$out"; echo "FAIL: dirtymig --nic-completion=$1 --pinned=$2 exited $rc"; exit 1; }
  python3 - "$out" "$1" "$2" <<'PY'
import json, sys
runs = {o["mode"]: o for o in map(json.loads, filter(str.strip, sys.argv[1].splitlines()))}
how, pinned = sys.argv[2], sys.argv[3]
ld, co = runs["libdirty"], runs["cpu-only"]
for o in (ld, co):
    assert o["ok"], o.get("error")
    assert o["nic_completion"] == how and o["pinned"] == pinned, o
assert ld["dma_packets"] > 0 and ld["nic_errors"] == 0, ld
assert ld["lost_pages"] == 0, f"{how}/{pinned}: libdirty lost {ld['lost_pages']} pages"
assert co["lost_nic_pages"] > 0, f"{how}/{pinned}: cpu-only lost no NIC page"
if pinned == "defer":
    assert ld["gp_kept_back"] > 0, f"{how}/defer: no claim kept a pinned page back"
print(f"nic {how}/{pinned} OK: libdirty 0 lost ({ld['gp_kept_back']} kept back, stop {ld['stop']}), "
      f"cpu-only {co['lost_nic_pages']} NIC pages lost")
PY
done
set --

# A mode asked of the threads vCPU is a usage error, not a silent fallback.
set +e
"$bin" demo --quick --vcpu=threads --kvm-mode=ring --quiet >/dev/null 2>"$tmp/km.err"
rc=$?
set -e
[ $rc = 2 ] && grep -q "needs --vcpu=kvm" "$tmp/km.err" ||
  { cat "$tmp/km.err"; echo "FAIL: --kvm-mode with --vcpu=threads exited $rc"; exit 1; }

# ---- 2. the destination refuses broken streams ----------------------------
start_dest() {  # extra dest options
  "$bin" dest --listen 127.0.0.1:0 "$@" >"$tmp/d.out" 2>"$tmp/d.err" &
  dpid=$!
  pids+=("$dpid")
  port=""
  for _ in $(seq 100); do
    port=$(sed -n 's/^dirtymig dest: listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$tmp/d.out")
    [ -n "$port" ] && return 0
    kill -0 "$dpid" 2>/dev/null || break
    sleep 0.05
  done
  echo "FAIL: the destination did not start listening: $(cat "$tmp/d.err")"
  exit 1
}

# Send a crafted stream (wire format: tools/dirtymig/transport/stream.h).
craft() {
  python3 - "$port" "$1" <<'PY'
import socket, struct, sys
port, kind = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("127.0.0.1", port), timeout=10)
magic = b"NOTDIRTY" if kind == "magic" else b"DIRTYMIG"
major = 2 if kind == "version" else 1
s.sendall(magic + struct.pack("<HHIQII16s", major, 0, 4096, 1 << 20, 1, 0, b"t_dirtymig"))
reply = s.recv(16)
if kind == "truncate":
    assert reply[:4] == struct.pack("<I", 0x81), f"no HELLO_OK: {reply!r}"
    # A page record announcing 4 pages, cut off in the second page's data.
    s.sendall(struct.pack("<IIQ", 1, 4, 0) + struct.pack("<4Q", 0, 4096, 8192, 12288) + b"x" * 5000)
s.close()
PY
}

expect_refusal() {  # kind, message the destination must print
  start_dest
  craft "$1"
  if ! timeout 20 tail --pid="$dpid" -f /dev/null; then
    echo "FAIL: $1: the destination still runs 20 s after the stream"
    exit 1
  fi
  set +e
  wait "$dpid"
  drc=$?
  set -e
  cat "$tmp/d.err"
  [ "$drc" != 0 ] || { echo "FAIL: $1: the destination accepted the stream (exit 0)"; exit 1; }
  grep -q "$2" "$tmp/d.err" || { echo "FAIL: $1: no '$2' in the destination's message"; exit 1; }
  echo "refused OK: $1 (exit $drc)"
}
expect_refusal version "unsupported stream version 2.0"
expect_refusal magic "not a dirtymig stream"
expect_refusal truncate "truncated stream"

# ---- 3. the destination dies mid-migration --------------------------------
start_dest
disown "$dpid"	# killed on purpose below: no job-status noise
# 32 MiB over a 50 Mbit/s link: the first pass alone takes ~5 s.
( sleep 0.7; kill -9 "$dpid" ) &
pids+=($!)
set +e
timeout 30 "$bin" source --to "127.0.0.1:$port" --quick --link-mbps 50 --quiet >"$tmp/s.out" 2>"$tmp/s.err"
src=$?
set -e
cat "$tmp/s.err"
[ "$src" = 1 ] || { echo "FAIL: source exited $src after losing its destination (expected 1)"; exit 1; }
grep -Eq "closed the connection|broken pipe|Connection reset" "$tmp/s.err" ||
  { echo "FAIL: the source does not say the connection dropped"; exit 1; }
grep -q "stay dirty in the view for a retry" "$tmp/s.err" ||
  { echo "FAIL: the source does not report its kept dirty state"; exit 1; }
echo "dropped connection OK"

# ---- 4. connection dropped mid-round, then a retry ------------------------
# 32 MiB is 8192 pages: the destination resets the first session at ~2000.
start_dest --drop-after-pages 2000
set +e
out=$(timeout 30 "$bin" source --to "127.0.0.1:$port" --quick --retry 1 --json --quiet 2>"$tmp/s.err")
src=$?
set -e
echo "$out"
cat "$tmp/s.err"
[ "$src" = 0 ] || { echo "FAIL: source with --retry 1 exited $src"; exit 1; }
grep -Eq "attempt 1 failed: .*(closed the connection|broken pipe|Connection reset).*retrying" "$tmp/s.err" ||
  { echo "FAIL: the source does not report the first attempt's dropped connection"; exit 1; }
grep -q "dropping the connection in round" "$tmp/d.err" ||
  { echo "FAIL: the destination did not drop the first connection"; exit 1; }
if ! timeout 20 tail --pid="$dpid" -f /dev/null; then
  echo "FAIL: the destination still runs after the retried (last) migration"
  exit 1
fi
set +e
wait "$dpid"
drc=$?
set -e
[ "$drc" = 0 ] || { echo "FAIL: the destination exited $drc after the retried migration"; cat "$tmp/d.err"; exit 1; }
python3 - "$out" <<'PY'
import json, sys
o = json.loads(sys.argv[1].strip().splitlines()[-1])
assert o["ok"], f"retried migration failed: {o['error']}"
assert o["attempts"] == 2, f"expected 2 attempts, got {o['attempts']}"
assert o["lost_pages"] == 0, f"retried migration lost {o['lost_pages']} pages"
assert o["pages_sent"] >= o["guest_bytes"] // 4096, f"no full pass on the retry: {o}"
print(f"retry OK: attempt 2 of 2, {o['pages_sent']} pages, 0 lost, downtime {o['downtime_ms']:.1f} ms")
PY

# ---- 5. the connection reset in every phase, then a retry ------------------
# The destination resets the first connection during the first pass, at a
# middle round's marker, and at the final marker (the source's vCPUs and
# device are stopped then: the retry must resume them and migrate again).
# Rounds are forced (a target no round meets, a round cap) so round 2
# exists. Every case: attempt 1 fails, attempt 2 loses 0 pages.
for at in pages:1500 round:2 final; do
  set +e
  out=$(timeout 60 "$bin" demo --quick --tracking libdirty --downtime-ms 0.001 --max-rounds 4 \
        --drop-at "$at" --retry 2 --json --quiet 2>"$tmp/f.err")
  rc=$?
  set -e
  [ "$rc" = 0 ] || { cat "$tmp/f.err"; echo "FAIL: reset at $at: dirtymig exited $rc"; exit 1; }
  python3 - "$out" "$at" <<'PY'
import json, sys
o = json.loads(sys.argv[1].strip().splitlines()[-1])
at = sys.argv[2]
assert o["ok"], f"reset at {at}: the retried migration failed: {o['error']}"
assert o["attempts"] == 2, f"reset at {at}: expected the reset to cost one attempt, got {o['attempts']}"
assert o["lost_pages"] == 0, f"reset at {at}: lost {o['lost_pages']} pages"
print(f"reset at {at}: attempt 2 of 2, 0 lost, downtime {o['downtime_ms']:.1f} ms")
PY
done
