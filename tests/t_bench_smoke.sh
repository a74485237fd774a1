#!/usr/bin/env bash
# t_bench_smoke.sh - view-bench, proto-bench and uffd-bench run, verify their own drains, and print
# one well-formed JSON object per case with the documented keys (view-bench:
# its fraction, fixed-set and claimer sections). Timing is not judged here:
# benchmarks measure, tests assert.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/${BUILD:-build}/bin/view-bench"
[ -x "$bin" ] || { echo "FAIL: $bin not built"; exit 1; }
"$bin" --help | grep -q -- '--json' || { echo "FAIL: --help does not document --json"; exit 1; }
out=$("$bin" --quick --json)
echo "$out"
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in sys.argv[1].splitlines() if l.strip()]
common = {"case", "dirty_pages", "mem_gib", "view_ns", "flat_ns", "ratio_flat_over_view"}
for r in rows:
    missing = common - r.keys()
    assert not missing, f"{r.get('case')}: missing {missing}"
    assert r["view_ns"] > 0 and r["flat_ns"] > 0 and r["dirty_pages"] > 0 and r["mem_gib"] > 0, r
    assert abs(r["ratio_flat_over_view"] - r["flat_ns"] / r["view_ns"]) < 1e-3 * r["ratio_flat_over_view"] + 1e-3, r
frac = [r for r in rows if r["section"] == "fractions"]
assert len(frac) == 8, f"expected 8 fraction cases, got {len(frac)}"
for r in frac:
    assert {"dirty_fraction", "floor_ns", "view_bytes"} <= r.keys() and r["floor_ns"] > 0, r
assert sorted({r["dirty_fraction"] for r in frac}) == [0.0001, 0.01, 0.1, 1.0]
sets = [r for r in rows if r["section"] == "sets"]
assert {r["dirty_pages"] for r in sets} == {1000, 10000, 100000}, sets
assert {r["case"].split("-")[0] for r in sets} == {"runs", "clustered"}, sets
assert len({r["mem_gib"] for r in sets}) >= 2, "sets at one memory size only"
assert all(r["view_bytes"] >= 0 for r in sets)
claim = [r for r in rows if r["section"] == "claimers"]
assert sorted(r["claimers"] for r in claim) == [1, 1, 2, 2], claim
print("view-bench JSON OK:", len(frac), "fraction,", len(sets), "set,", len(claim), "claimer cases")
PY

pb="$top/${BUILD:-build}/bin/proto-bench"
[ -x "$pb" ] || { echo "FAIL: $pb not built"; exit 1; }
"$pb" --help | grep -q -- '--json' || { echo "FAIL: proto-bench --help does not document --json"; exit 1; }
out=$("$pb" --quick --json)
echo "$out"
python3 - "$out" <<'PY'
import json, sys
cases = [json.loads(l) for l in sys.argv[1].splitlines() if l.strip()]
names = {c["case"] for c in cases}
for want in ("atomic-or", "mark-proto", "unmap", "map+unmap", "dummy-write"):
    assert any(n.startswith(want) for n in names), f"no {want} case in {sorted(names)}"
assert any(n.startswith("harvest-") for n in names), "no harvest cases"
print("proto-bench JSON OK:", len(cases), "cases")
PY

ub="$top/${BUILD:-build}/bin/uffd-bench"
[ -x "$ub" ] || { echo "FAIL: $ub not built"; exit 1; }
"$ub" --help | grep -q -- '--json' || { echo "FAIL: uffd-bench --help does not document --json"; exit 1; }
set +e
out=$("$ub" --quick --json)
rc=$?
set -e
if [ $rc = 77 ]; then
  echo "uffd-bench skipped itself (kernel lacks userfaultfd WP_ASYNC / PAGEMAP_SCAN): $out"
else
  [ $rc = 0 ] || { echo "FAIL: uffd-bench exited $rc"; exit 1; }
  echo "$out"
  python3 - "$out" <<'PY'
import json, sys
cases = [json.loads(l) for l in sys.argv[1].splitlines() if l.strip()]
names = {c["case"] for c in cases}
assert any(n.startswith("harvest-") for n in names), f"no harvest cases in {sorted(names)}"
assert "write-fault" in names, f"no write-fault case in {sorted(names)}"
print("uffd-bench JSON OK:", len(cases), "cases")
PY
fi
