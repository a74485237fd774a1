#!/usr/bin/env bash
# t_faults.sh - injected faults, each ending with 0 lost pages or a clear
# error and the source intact (a retry then succeeds). Builds the
# fault-injection variant once (make BUILD=build/fault FAULT=1 tools:
# libdirty/fault.h's sites, never in a default build) and drives
# `dirtymig demo --tracking libdirty` with LIBDIRTY_FAULTS plans:
#   uffd.scan      PAGEMAP_SCAN fails once mid-migration (vCPU threads):
#                  the attempt fails, the retry loses nothing
#   uffd.scan      fails on every call from the second: a clear error that
#                  names the failed ioctl and says the dirty state was kept
#   kvm.ioctl      a KVM dirty-log ioctl fails once (each KVM mode the
#                  kernel has): retry, 0 lost
#   claim.alloc    the host is out of memory for a claim batch: retry, 0 lost
#   ring storm     (no injection) a vCPU dirtying faster than the 1 MiB ring
#                  drains: ring-full exits, 0 lost
#   --fault        (dirtymig, any build) a host-owned word of the guest region
#                  overwritten, or the guest's agent stopped, mid-migration:
#                  the host says why it stopped trusting the guest and sends
#                  every page in the final round, 0 lost
# Connection resets in every phase are tests/t_dirtymig.sh part 5.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${SAN:-}" ]; then
  echo "SKIP: the fault build is a plain build of its own (SAN=$SAN runs the other suites)"
  exit 77
fi
fb="$top/build/fault"
make -s -C "$top" BUILD=build/fault FAULT=1 tools >/dev/null
bin="$fb/bin/dirtymig"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# run NAME EXPECT(ok|fail) PLAN ARGS... : one demo migration under a plan.
run() {
  local name=$1 expect=$2 plan=$3
  shift 3
  set +e
  LIBDIRTY_FAULTS="$plan" timeout 120 "$bin" demo --quick --tracking libdirty --json --quiet "$@" \
    >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  set -e
  if [ $rc = 77 ]; then
    echo "skip $name: $(tail -n1 "$tmp/err")"
    return 0
  fi
  grep -q "fault injected" "$tmp/err" || [ -z "$plan" ] ||
    { cat "$tmp/err"; echo "FAIL: $name: the plan '$plan' injected nothing"; exit 1; }
  python3 - "$name" "$expect" "$rc" "$tmp/out" "$tmp/err" <<'PY'
import json, sys
name, expect, rc, out, err = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
lines = [l for l in open(out).read().splitlines() if l.strip()]
errtext = open(err).read()
if not lines:
    print(errtext)
    sys.exit(f"FAIL: {name}: no result (exit {rc})")
o = json.loads(lines[-1])
if expect == "ok":
    if rc != 0 or not o["ok"]:
        print(errtext)
        sys.exit(f"FAIL: {name}: exit {rc}, error {o['error']}")
    assert o["lost_pages"] == 0, f"{name}: lost {o['lost_pages']} pages"
    print(f"ok   {name}: attempts {o['attempts']}, 0 lost, downtime {o['downtime_ms']:.1f} ms")
else:
    assert rc != 0 and not o["ok"], f"{name}: expected a failure, got exit {rc}"
    assert "keeps its dirty state" in errtext or "keeps its dirty state" in (o["error"] or ""), \
        f"{name}: the error does not say the source kept its dirty state:\n{errtext}"
    print(f"ok   {name}: failed clearly: {(o['error'] or '')[:140]}")
PY
}

run "uffd scan fails once" ok "uffd.scan:EIO:3" --vcpu threads --retry 2
run "uffd scan keeps failing" fail "uffd.scan:EIO:2:0" --vcpu threads --retry 1
grep -q "PAGEMAP_SCAN" "$tmp/err" || { cat "$tmp/err"; echo "FAIL: the error does not name PAGEMAP_SCAN"; exit 1; }
if grep -q '"kvm.ioctl"' "$top/hv-adapters/kvm.c"; then
  for m in bitmap clear-log ring; do
    run "kvm $m ioctl fails once" ok "kvm.ioctl:EIO:4" --vcpu kvm --kvm-mode "$m" --retry 2
  done
fi
if grep -q '"claim.alloc"' "$top/libdirty/claim.c" "$top/migrate/migrate.c" 2>/dev/null; then
  run "claim batch out of memory" ok "claim.alloc:ENOMEM:2" --retry 2
fi
run "dirty ring full storm" ok "" --vcpu kvm --kvm-mode ring --dirty-rate 200000 --vcpus 2 --retry 0

# The guest's side breaks mid-migration (dirtymig --fault, any build): the
# host must stop trusting it, say why, and fall back to every page at final.
# Pre-copy runs 3.5 s (a target no round meets) so the 2 s heartbeat timeout
# passes inside it.
for f in "corrupt-region@1:npages was overwritten" "agent-stop@0:agent silent"; do
  spec=${f%%:*} want=${f#*:}
  set +e
  timeout 120 "$top/build/bin/dirtymig" demo --quick --tracking libdirty --fault "$spec" \
    --downtime-ms 0.001 --max-time 3.5 --max-rounds 100000 --json --quiet >"$tmp/out" 2>"$tmp/err"
  rc=$?
  set -e
  [ $rc = 0 ] || { cat "$tmp/err"; echo "FAIL: --fault $spec: exit $rc"; exit 1; }
  python3 - "$spec" "$want" "$tmp/out" <<'PY'
import json, sys
spec, want, out = sys.argv[1], sys.argv[2], sys.argv[3]
o = json.loads(open(out).read().splitlines()[-1])
assert o["ok"] and o["lost_pages"] == 0, f"--fault {spec}: ok {o['ok']}, lost {o['lost_pages']}"
assert o["gp_healthy"] is False and want in o["gp_reason"], f"--fault {spec}: health {o['gp_healthy']}: {o['gp_reason']}"
assert o["final_pages"] >= o["guest_bytes"] // 4096, f"--fault {spec}: no fallback: {o['final_pages']} final pages"
print(f"ok   --fault {spec}: 0 lost, every page in the final round ({o['final_pages']}), {o['gp_reason']}")
PY
done
echo "PASS"
