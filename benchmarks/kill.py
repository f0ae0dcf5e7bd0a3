"""The event loop during a process kill: how long the loop is blocked while a big process's
memory is freed by ``process_mrelease``, with the signal and the release in one of cgoom's
reaper threads (as the engine does it), with the signal on the loop and the release in a
thread, and both on the loop (as cgoom did before issue 20).

    python benchmarks/kill.py [--json] [--megabytes 1024] [--runs 5]

Any Linux 5.15+ host will do (no cgroup is needed: it kills its own child). Each run starts
a child holding ``--megabytes`` MiB of touched anonymous memory, opens a pidfd on it and,
while a task on the loop asks to sleep 1 ms again and again, sends SIGKILL through the
pidfd and releases its memory. Per mode, medians over the runs:

- ``loop_block_ms``: the loop's longest block (beyond the 1 ms asked) from the kill until
  the exit (pidfd readable) and the release's end, whichever is later. Target: under 5 ms
  with the reapers.
- ``mrelease_ms``: how long ``process_mrelease`` took; ``exit_ms``: kill to pidfd readable;
  ``memory_back_ms``: kill until MemAvailable has got back 90% of what the child's memory
  took from it (-1: not within 50 ms of the exit).

Keys: ``reaper``, ``loop_signals`` and ``on_loop`` (each with the four medians),
``megabytes``, ``runs``. With the signal on the loop, the victim's own exit starts before
the thread's ``process_mrelease`` and wins (it finds the memory already gone, ``mrelease_ms``
0), and the memory comes back later: why the engine sends the signal from the thread.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time

from cgoom._engine._actions import Pidfds, release_process
from cgoom._kernel._hierarchy import Hierarchy
from cgoom._kernel._worker import WorkerPool

M = 1 << 20

MODES = {
    "reaper": "a reaper thread signals and calls process_mrelease (the engine's way)",
    "loop_signals": "the loop signals, a reaper thread calls process_mrelease",
    "on_loop": "the loop signals and calls process_mrelease (cgoom before issue 20)",
}

CHILD = (
    "import sys, time\n"
    "block = bytearray({size})\n"
    "for i in range(0, len(block), 4096): block[i] = 1\n"
    "sys.stdout.write('held\\n'); sys.stdout.flush()\n"
    "time.sleep(1000)\n"
)


def available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def start_child(megabytes: int) -> subprocess.Popen[bytes]:
    """The victim, once it holds its memory (a short blocking wait, before the clock runs)."""
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(size=megabytes * M)],
                             stdout=subprocess.PIPE)
    assert child.stdout is not None
    if child.stdout.readline() != b"held\n":
        raise RuntimeError("the child did not start")
    return child


async def one_kill(megabytes: int, mode: str, reapers: WorkerPool,
                   pidfds: Pidfds) -> dict[str, float]:
    before_child = available()
    child = start_child(megabytes)
    assert child.stdout is not None
    handle = pidfds.open(child.pid)
    base = available()
    loop = asyncio.get_running_loop()
    ticks: list[tuple[float, float, int]] = []
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            asked = time.perf_counter()
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            ticks.append((now, now - asked - 0.001, available()))

    exited: asyncio.Future[float] = loop.create_future()
    loop.add_reader(handle, lambda: exited.done() or exited.set_result(time.perf_counter()))
    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    killed_at = time.perf_counter()
    if mode == "reaper":  # the kill and the release, both in the thread

        def both() -> tuple[float | None, str]:
            pidfds.kill(handle)
            return release_process(pidfds, handle)

        released_ms = (await asyncio.wrap_future(reapers.submit(both)))[0]
    elif mode == "on_loop":
        pidfds.kill(handle)
        released_ms = release_process(pidfds, handle)[0]
    else:  # the loop signals, a reaper releases
        pidfds.kill(handle)
        released_ms = (await asyncio.wrap_future(
            reapers.submit(lambda: release_process(pidfds, handle))))[0]
    released_at = time.perf_counter()
    exit_at = await asyncio.wait_for(exited, 30)
    await asyncio.sleep(0.05)
    stop.set()
    await ticker
    loop.remove_reader(handle)
    pidfds.close(handle)
    child.wait(10)
    child.stdout.close()
    end = max(exit_at, released_at)
    window = [lag for at, lag, _ in ticks if killed_at <= at <= end + 0.002]
    # With the release on the loop, the first tick after the kill waited for all of it.
    if mode == "on_loop":
        window += [lag for at, lag, _ in ticks if at > end][:1]
    taken = before_child - base  # what the child's memory took from MemAvailable
    back = next((at for at, _, avail in ticks
                 if at >= killed_at and avail - base >= 0.9 * taken), None)
    return {"loop_block_ms": max(window, default=0.0) * 1000,
            "mrelease_ms": released_ms if released_ms is not None else 0.0,
            "exit_ms": (exit_at - killed_at) * 1000,
            "memory_back_ms": -1.0 if back is None else (back - killed_at) * 1000}


async def main_async(megabytes: int, runs: int) -> dict[str, object]:
    pidfds = Pidfds(Hierarchy(mount="/sys/fs/cgroup"))
    reapers = WorkerPool("cgoom-reaper", 2)
    result: dict[str, object] = {"megabytes": megabytes, "runs": runs}
    try:
        for mode in MODES:
            rows = [await one_kill(megabytes, mode, reapers, pidfds) for _ in range(runs)]
            result[mode] = {key: round(statistics.median(r[key] for r in rows), 2)
                            for key in rows[0]}
    finally:
        reapers.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--megabytes", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    result = asyncio.run(main_async(args.megabytes, args.runs))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"kill of a {args.megabytes} MiB process, median of {args.runs} runs:")
    for mode in MODES:
        row = result[mode]
        assert isinstance(row, dict)
        print(f"  {MODES[mode]}: the loop's longest block {row['loop_block_ms']} ms; mrelease "
              f"{row['mrelease_ms']} ms; kill to exit {row['exit_ms']} ms; memory back "
              f"{row['memory_back_ms']} ms")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
