"""One decision over 1,000 candidates, per built-in policy (target: under 10 ms).

    python benchmarks/policies.py [--json] [--candidates 1000] [--runs 200]

The candidates are a synthetic subtree: 10 groups of ~99 leaves under one root (1,000 cgroups),
with varied usage, swap, growth, pressure, priority, preference, killable flags and two
processes per leaf, built once as plain snapshots (policies do no I/O, so this measures the
policy alone). Each run is one call of the policy; the table gives the median and p99.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

import cgoom

M = 1 << 20


def candidates(n: int) -> dict[str, cgoom.CgroupSnapshot]:
    rng = random.Random(7)
    snaps = {"/jobs": cgoom.CgroupSnapshot("/jobs", usage=n * M, populated=True)}
    groups = max(1, n // 100)
    leaves = n - 1 - groups
    for g in range(groups):
        gpath = f"/jobs/g{g}"
        count = leaves // groups + (1 if g < leaves % groups else 0)
        snaps[gpath] = cgoom.CgroupSnapshot(gpath, usage=count * M, populated=True,
                                            priority=rng.randint(-2, 2))
        for i in range(count):
            path = f"{gpath}/c{i}"
            pids = (10_000 + len(snaps) * 2, 10_001 + len(snaps) * 2)
            snaps[path] = cgoom.CgroupSnapshot(
                path, usage=rng.randint(1, 500) * M, populated=True, pids=pids,
                swap=rng.randint(0, 50) * M, growth=rng.uniform(-1e6, 1e6),
                pressure=cgoom.Pressure(cgoom.PressureLine(rng.uniform(0, 50), 0, 0, 0)),
                priority=rng.randint(-5, 5), oom_group=rng.random() < 0.5,
                preference=rng.choice([None] * 8 + ["prefer", "avoid"]),
                killable=rng.random() < 0.05, memory_low=rng.randint(0, 100) * M,
                processes=tuple(cgoom.ProcessSnapshot(p, "w", rng.randint(-100, 100),
                                                      rng.randint(1, 400) * M) for p in pids))
    return snaps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    cands = candidates(args.candidates)
    incident = cgoom.Incident.create("/jobs")
    results = {}
    for name in cgoom.BUILTIN_POLICIES:
        policy = cgoom.load_policy(name)
        policy(incident, cands)  # warm up
        times = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            decision = policy(incident, cands)
            times.append((time.perf_counter() - t0) * 1000)
        times.sort()
        results[name] = {
            "p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
            "candidates": len(cands),
            "victims": len(decision.victims),
            "runs": args.runs,
        }
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'policy':<16} {'p50_ms':>8} {'p99_ms':>8} {'victims':>8}")
    for name, r in results.items():
        print(f"{name:<16} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['victims']:>8}")
    print(f"({len(cands)} candidates, {args.runs} runs each; target < 10 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
