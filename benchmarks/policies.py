"""One decision over 1,000 candidates, per built-in policy (target: under 10 ms), and an
async snapshot plus a priority decision on the fake tree (target: under 25 ms).

    python benchmarks/policies.py [--json] [--candidates 1000] [--runs 200]

The candidates are a synthetic subtree: 10 groups of ~99 leaves under one root (1,000 cgroups),
with varied usage, swap, growth, pressure, priority, preference, killable flags and two
processes per leaf, built once as plain snapshots (policies do no I/O, so this measures the
policy alone). Each run is one call of the policy; the table gives the median and p99.

``snapshot+priority``: the same shape built as a fake cgroupfs on tmpfs (/dev/shm when it
exists), with a fake /proc; each run is ``await Snapshotter.asnapshot()`` of the priority
policy's fields (structure given, as a handler's watcher knows it) then ``await adecide()``,
timed on the event loop. ``snapshot(walk)+priority`` lists every directory instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import cgoom
from cgoom.testing import FakeCgroupTree

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


def summary(times: list[float], runs: int, **extra: object) -> dict[str, object]:
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3),
            "p99_ms": round(times[min(len(times) - 1, int(len(times) * 0.99))], 3),
            "runs": runs, **extra}


def fake_tree(base: str, n: int) -> tuple[FakeCgroupTree, list[str]]:
    """The benchmark's shape as a fake cgroupfs with a fake /proc: 10 groups of leaves."""
    rng = random.Random(7)
    tree = FakeCgroupTree(base)
    groups = max(1, n // 100)
    leaves = n - 1 - groups
    pid = 10_000
    for g in range(groups):
        count = leaves // groups + (1 if g < leaves % groups else 0)
        tree.add(f"jobs/g{g}")
        tree.cgroup(f"jobs/g{g}").set_priority(rng.randint(-2, 2))
        for i in range(count):
            pids = [pid, pid + 1]
            pid += 2
            tree.add(f"jobs/g{g}/c{i}", procs=pids, memory_current=rng.randint(1, 500) * M)
            for p in pids:
                tree.add_process(p, oom_score_adj=rng.randint(-100, 100),
                                 rss=rng.randint(1, 400) * M)
    paths = [c.path for c in tree.hierarchy.walk("/jobs")]
    return tree, paths


async def snapshot_runs(tree: FakeCgroupTree, paths: list[str], runs: int,
                        known: bool) -> list[float]:
    policy = cgoom.load_policy("priority")
    snapper = cgoom.Snapshotter(tree.hierarchy)
    snapper.start()
    cgoom.start_policy_worker()
    incident = cgoom.Incident.create("/jobs")
    times = []
    try:
        for _ in range(runs + 1):
            t0 = time.perf_counter()
            snaps = await snapper.asnapshot("/jobs", fields=cgoom.policy_fields(policy),
                                            paths=paths if known else None)
            decision = await cgoom.adecide(policy, incident, snaps)
            times.append((time.perf_counter() - t0) * 1000)
            assert decision.notes == () and len(decision.victims) >= len(paths) * 0.9, (
                decision.notes)
    finally:
        snapper.close()
    return times[1:]  # the first one warms the caches


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
        results[name] = summary(times, args.runs, candidates=len(cands),
                                victims=len(decision.victims))
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 (tmpfs, as cgroupfs)
    base = tempfile.mkdtemp(prefix="cgoom-bench-", dir=shm)
    try:
        tree, paths = fake_tree(base, args.candidates)
        snap_runs = max(20, args.runs // 4)
        for key, known in (("snapshot+priority", True), ("snapshot(walk)+priority", False)):
            times = asyncio.run(snapshot_runs(tree, paths, snap_runs, known))
            results[key] = summary(times, snap_runs, candidates=len(paths))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"{'policy':<24} {'p50_ms':>8} {'p99_ms':>8} {'victims':>8}")
    for name, r in results.items():
        print(f"{name:<24} {r['p50_ms']:>8} {r['p99_ms']:>8} {r.get('victims', '-'):>8}")
    print(f"({len(cands)} candidates; targets: a decision < 10 ms, snapshot+decision < 25 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
