#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""soak.py - back-to-back dirtymig migrations with a randomized workload.

Every migration runs in libdirty mode (`dirtymig demo --tracking libdirty`)
with memory size, vCPU kind and KVM dirty-log mode, dirty rate, packet rate
and size, RX ring, NIC completion, pinned-page policy, downtime target,
link cap and seed drawn at random; one run in four also has the
destination reset the connection mid-stream (--drop-after-pages) with the
source retrying. Each run's page-by-page comparison must find 0 lost pages.

Prints one line per run, then a summary (runs, pages compared, lost,
failures by cause) and writes it as JSON. A failing run prints the exact
command that replays it (the draw is fixed by --seed).

  tests/soak/soak.py --minutes 30 [--seed N] [--json FILE] [--bin PATH]
  make soak SOAK_MINUTES=30
"""
import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import time


def draw(rng, kvm_ok, kvm_modes):
    """One randomized configuration, as dirtymig arguments."""
    mem = rng.choice([16, 24, 32, 48, 64, 96, 128, 192, 256])
    pool = min(rng.choice([0.5, 1, 2, 4, 8]), mem / 4)
    ring = rng.choice([16, 32, 64, 128, 256])
    while ring >= pool * 256:          # the pool must outnumber the ring
        ring //= 2
    a = ["--mem-mib", mem, "--pool-mib", pool, "--ring", ring,
         "--vcpus", rng.randint(1, 4),
         "--dirty-rate", rng.choice([0, 100, 1000, 3000, 10000]),
         "--pkt-rate", rng.choice([0, 500, 3000, 10000, 30000]),
         "--pkt-size", rng.choice([64, 512, 1500, 4096]),
         "--nic-completion", rng.choice(["sync+unmap", "unmap", "sync"]),
         "--pinned", rng.choice(["send", "defer"]),
         "--downtime-ms", rng.choice([2, 5, 10, 30, 100]),
         "--link-mbps", rng.choice([0, 500, 1000, 4000, 10000]),
         "--max-time", rng.choice([0.3, 0.6, 1, 2]),
         "--max-rounds", rng.choice([3, 10, 30]),
         "--seed", rng.randrange(1, 1 << 31)]
    if kvm_ok and rng.random() < 0.6:
        a += ["--vcpu", "kvm", "--kvm-mode", rng.choice(kvm_modes)]
    else:
        a += ["--vcpu", "threads"]
    fault = None
    if rng.random() < 0.25:
        # Reset the first connection somewhere in the first pass or a later round.
        at = rng.randint(1, max(2, mem * 256 * 3 // 2))
        a += ["--drop-after-pages", at, "--retry", 2]
        fault = "reset after %d pages" % at
    return [str(x) for x in a], fault


def kvm_modes(binary):
    """The KVM dirty-log modes this kernel runs (dirtymig exits 77 otherwise)."""
    ok = []
    for m in ["bitmap", "clear-log", "ring"]:
        r = subprocess.run([binary, "demo", "--quick", "--tracking", "libdirty", "--vcpu", "kvm",
                            "--kvm-mode", m, "--json", "--quiet", "--max-time", "0.2"],
                           capture_output=True, text=True, timeout=120)
        if r.returncode == 0:
            ok.append(m)
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "1")))
    ap.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "0")) or None,
                    help="the draw's seed (default: from the clock; printed)")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("BUILD", "build"), "bin", "dirtymig"))
    ap.add_argument("--json", default=None, help="write the summary here too")
    ap.add_argument("--timeout", type=float, default=120, help="seconds one run may take")
    o = ap.parse_args()
    if not os.access(o.bin, os.X_OK):
        print(f"soak: {o.bin} is not built (make tools)", file=sys.stderr)
        return 1
    seed = o.seed or int(time.time()) % 1000000
    rng = random.Random(seed)
    modes = kvm_modes(o.bin)
    print(f"soak: {o.minutes:g} min, seed {seed}, KVM modes: {', '.join(modes) or 'none (threads only)'}",
          flush=True)

    s = {"seed": seed, "minutes": o.minutes, "runs": 0, "passed": 0, "skipped": 0,
         "pages_compared": 0, "pages_sent": 0, "lost_pages": 0, "faults_injected": 0,
         "retried_ok": 0, "failures": {}, "failed_commands": [], "by_vcpu": {}, "downtime_ms_max": 0.0}
    downtimes = []
    end = time.monotonic() + o.minutes * 60
    while time.monotonic() < end:
        args, fault = draw(rng, bool(modes), modes or ["bitmap"])
        cmd = [o.bin, "demo", "--tracking", "libdirty", "--json", "--quiet"] + args
        s["runs"] += 1
        s["faults_injected"] += bool(fault)
        t0 = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=o.timeout)
            rc, out, err = r.returncode, r.stdout, r.stderr
        except subprocess.TimeoutExpired:
            rc, out, err = -1, "", "timed out"
        cause, res = None, None
        if rc == 77:
            s["skipped"] += 1
            print(f"run {s['runs']:4d} SKIP {err.strip().splitlines()[-1] if err.strip() else ''}")
            continue
        try:
            res = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            cause = "hang" if rc == -1 else f"no result (exit {rc}): {err.strip()[-160:]}"
        if res is not None:
            s["pages_compared"] += res["guest_bytes"] // 4096
            s["pages_sent"] += res["pages_sent"]
            s["lost_pages"] += res["lost_pages"]
            s["downtime_ms_max"] = max(s["downtime_ms_max"], res["downtime_ms"])
            downtimes.append(res["downtime_ms"])
            v = res["vcpu"] if res["vcpu"] == "threads" else "kvm/" + res["kvm_mode"]
            s["by_vcpu"][v] = s["by_vcpu"].get(v, 0) + 1
            if not res["ok"]:
                cause = "migration failed: " + (res["error"] or "?")[:120]
            elif res["lost_pages"]:
                cause = "lost pages"
            elif rc != 0:
                cause = f"exit {rc}"
            elif fault and res.get("attempts", 1) > 1:
                s["retried_ok"] += 1
        secs = time.monotonic() - t0
        if cause:
            s["failures"][cause] = s["failures"].get(cause, 0) + 1
            line = " ".join(shlex.quote(c) for c in cmd)
            s["failed_commands"].append(line)
            print(f"run {s['runs']:4d} FAIL {cause} ({secs:.1f} s)\n  replay: {line}", flush=True)
        else:
            s["passed"] += 1
            print(f"run {s['runs']:4d} ok   {secs:5.1f} s  {res['vcpu']:7s} {res['kvm_mode']:9s} "
                  f"mem {res['guest_bytes'] >> 20:3d} MiB  rounds {res['rounds']:2d}  "
                  f"downtime {res['downtime_ms']:7.1f} ms  lost {res['lost_pages']}"
                  + (f"  [{fault}, attempts {res['attempts']}]" if fault else ""), flush=True)
    downtimes.sort()
    for q, k in ((0.5, "downtime_ms_p50"), (0.99, "downtime_ms_p99")):
        s[k] = downtimes[min(len(downtimes) - 1, int(q * len(downtimes)))] if downtimes else 0.0
    print(f"\nsoak summary (seed {seed}): {s['runs']} runs, {s['passed']} passed, {s['skipped']} skipped, "
          f"{sum(s['failures'].values())} failed; {s['pages_compared']} pages compared, "
          f"{s['lost_pages']} lost; {s['faults_injected']} connection resets injected, "
          f"{s['retried_ok']} recovered by retry; vCPUs {s['by_vcpu']}; downtime p50 "
          f"{s['downtime_ms_p50']:.1f} ms, p99 {s['downtime_ms_p99']:.1f} ms, max {s['downtime_ms_max']:.1f} ms")
    for c, n in sorted(s["failures"].items()):
        print(f"  failure: {n} x {c}")
    if o.json:
        with open(o.json, "w") as f:
            json.dump(s, f, indent=1)
    print(json.dumps({k: v for k, v in s.items() if k != "failed_commands"}))
    return 0 if not s["failures"] and s["lost_pages"] == 0 and s["passed"] > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
