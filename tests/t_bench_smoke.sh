#!/usr/bin/env bash
# t_bench_smoke.sh - view-bench, proto-bench and uffd-bench run, verifies its own drains, and prints
# one well-formed JSON object per case with the documented keys. Timing
# is not judged here: benchmarks measure, tests assert.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/${BUILD:-build}/bin/view-bench"
[ -x "$bin" ] || { echo "FAIL: $bin not built"; exit 1; }
"$bin" --help | grep -q -- '--json' || { echo "FAIL: --help does not document --json"; exit 1; }
out=$("$bin" --quick --json)
echo "$out"
python3 - "$out" <<'PY'
import json, sys
lines = [l for l in sys.argv[1].splitlines() if l.strip()]
keys = {"case", "dirty_fraction", "view_ns", "flat_ns", "ratio_flat_over_view", "floor_ns"}
cases = [json.loads(l) for l in lines]
assert len(cases) == 8, f"expected 8 cases, got {len(cases)}"
for c in cases:
    missing = keys - c.keys()
    assert not missing, f"{c.get('case')}: missing {missing}"
    assert c["view_ns"] > 0 and c["flat_ns"] > 0 and c["floor_ns"] > 0, c
fr = sorted({c["dirty_fraction"] for c in cases})
assert fr == [0.0001, 0.01, 0.1, 1.0], fr
print("view-bench JSON OK:", len(cases), "cases")
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
