"""Watcher benchmarks on a fake tree on tmpfs (the kernel's 10-16 ms rate limit is absent
there, so this measures cgoom's own cost).

    python benchmarks/events.py [--json] [--sizes 100,1000,10000] [--idle-seconds 60]

For each size N (each in a fresh interpreter, so memory figures are its own):

- start_s: time to start watching N cgroups (walk, 6 inotify watches each: the directory,
  cgroup.subtree_control and 4 files; baselines);
- max_loop_block_ms: the longest the event loop went without running another task while the
  watcher started (a probe task that yields in a loop records the largest gap);
- p50_ms / p99_ms: notification to delivery. A sample writes a new memory.events into a
  random watched cgroup (as the kernel would) and times until `async for` yields the event;
- idle_cpu_s: CPU seconds (user + system) the process used over the idle period;
- idle_wakeups: context switches of the process over the idle period (voluntary + involuntary,
  from /proc/self/status): every time the kernel woke it, for any reason;
- idle_watcher_wakeups: times the event loop called the watcher over the idle period;
- rss_mb: resident memory of the process while watching N cgroups, and rss_per_cgroup_kb the
  growth from starting the watcher, divided by N.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import cgoom
from cgoom.testing import FakeCgroupTree
from cgoom.testing._fake import PRESSURE_ZERO, memory_events_text

KERNEL = (6, 1)
# tmpfs, like cgroupfs a memory filesystem; mkdtemp makes a private directory inside it.
TMPFS = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def build(base: str | FakeCgroupTree, n: int) -> tuple[FakeCgroupTree, list[str]]:
    """N leaf cgroups as bench/g<k>/c<i>, 100 per group, with the files a watcher reads
    (in a new fake tree at ``base``, or in the tree given)."""
    tree = base if isinstance(base, FakeCgroupTree) else FakeCgroupTree(base)
    files = {
        "memory.events": memory_events_text(KERNEL),
        "memory.events.local": memory_events_text(KERNEL),
        "memory.swap.events": "high 0\nmax 0\nfail 0\n",
        "cgroup.events": "populated 0\nfrozen 0\n",
        "memory.pressure": PRESSURE_ZERO,
    }
    paths = []
    dirs = [("bench", None)] + [(f"bench/g{k}", None) for k in range((n + 99) // 100)]
    dirs += [(f"bench/g{i // 100}/c{i}", i) for i in range(n)]
    for rel, leaf in dirs:
        d = os.path.join(tree.mount, rel)
        os.mkdir(d)
        for name, text in files.items():
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
        if leaf is not None:
            paths.append("/" + rel)
    return tree, paths


async def measure(n: int, samples: int, idle_seconds: float) -> dict[str, float]:
    base = tempfile.mkdtemp(prefix="cgoom-bench-", dir=TMPFS)
    try:
        tree, paths = build(base, n)
        rss_before = _status("VmRSS")
        gaps: list[float] = []

        async def probe() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        # Import the watcher layer first (cgoom loads it lazily, ~40 ms): an application
        # imports before it watches, and an import is no work of the watcher's.
        assert cgoom.Watcher is not None
        prober = asyncio.create_task(probe())
        await asyncio.sleep(0)
        started = time.perf_counter()
        async with cgoom.open_watcher(tree.hierarchy, "bench",
                                      files=["memory.events", "memory.events.local",
                                             "memory.swap.events", "cgroup.events"]) as w:
            start_s = time.perf_counter() - started
            prober.cancel()
            max_block_ms = max(gaps, default=0.0) * 1000
            rss_kb = _status("VmRSS")
            rng = random.Random(42)
            latencies = []
            counts: dict[str, int] = {}
            it = w.__aiter__()
            for _ in range(samples):
                path = rng.choice(paths)
                counts[path] = counts.get(path, 0) + 1
                text = memory_events_text(KERNEL, high=counts[path])
                target = os.path.join(tree.mount, path.lstrip("/"), "memory.events")
                t0 = time.perf_counter()
                fd = os.open(target, os.O_WRONLY | os.O_TRUNC)
                os.write(fd, text.encode())
                os.close(fd)
                while True:
                    event = await it.__anext__()
                    if isinstance(event, cgoom.MemoryEventsChanged) and event.cgroup == path:
                        break
                latencies.append((time.perf_counter() - t0) * 1000)
            while w.statistics().queued:
                await it.__anext__()
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            switches0 = _status("voluntary_ctxt_switches") + _status("nonvoluntary_ctxt_switches")
            wakeups0 = w.statistics().wakeups
            await asyncio.sleep(idle_seconds)
            usage1 = resource.getrusage(resource.RUSAGE_SELF)
            switches1 = _status("voluntary_ctxt_switches") + _status("nonvoluntary_ctxt_switches")
            wakeups1 = w.statistics().wakeups
            watches = w.statistics().watches
        latencies.sort()
        return {
            "cgroups": n,
            "watches": watches,
            "start_s": round(start_s, 3),
            "max_loop_block_ms": round(max_block_ms, 2),
            "p50_ms": round(statistics.median(latencies), 3),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 3),
            "samples": samples,
            "idle_seconds": idle_seconds,
            "idle_cpu_s": round((usage1.ru_utime + usage1.ru_stime)
                                - (usage0.ru_utime + usage0.ru_stime), 4),
            # The asyncio.sleep above is itself one timer wake-up of this process.
            "idle_wakeups": switches1 - switches0,
            "idle_watcher_wakeups": wakeups1 - wakeups0,
            "rss_mb": round(rss_kb / 1024, 1),
            "rss_per_cgroup_kb": round((rss_kb - rss_before) / n, 2),
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(measure(args.one, args.samples, args.idle_seconds))))
        return 0
    results = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(size), "--samples", str(args.samples),
             "--idle-seconds", str(args.idle_seconds)],
            capture_output=True, text=True, check=True)
        results[str(size)] = json.loads(out.stdout)
    if args.json:
        print(json.dumps(results))
        return 0
    columns = ["cgroups", "watches", "start_s", "max_loop_block_ms", "p50_ms", "p99_ms",
               "idle_cpu_s", "idle_wakeups", "idle_watcher_wakeups", "rss_mb", "rss_per_cgroup_kb"]
    rows = [[str(r[c]) for c in columns] for r in results.values()]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    print(f"(fake tree on tmpfs; {args.samples} samples per size; idle {args.idle_seconds:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
