"""Notice fan-out: how long from a domain's memory event to the last registered client's
notice written to its socket, for N clients of the notice socket, on a fake tree on tmpfs
(the kernel's inotify rate limit is absent there: this measures cgoom's own cost).

    python benchmarks/notify.py [--json] [--clients 1000] [--rounds 100]

N clients connect (each its own Unix socket connection, from this process, never reading:
the notices wait in their receive buffers) and register for cgroups of one domain. Each
round raises the domain's level (a ``high`` event written into its memory.events, as the
kernel would), times until the server has written the N-th notice, then lets the domain
recover (usage below the threshold) so that the next round raises the level again.

- notice_p50_ms / notice_p99_ms: the event's write to the last client's socket write, per
  round (the issue's target: p99 under 20 ms for 1,000 clients);
- first_ms_p50: the same to the first client's write (the cost before the fan-out);
- clients, rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import socket
import statistics
import tempfile
import time
from collections.abc import Callable

import cgoom
import cgoom._engine._notifier
from cgoom._notices import _server
from cgoom.testing import FakeCgroupTree, FakeProcesses

M = 1 << 20
TMPFS = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def wait_for(condition: Callable[[], bool]) -> None:
    """Untimed waits between rounds (what they wait for raises no event to await)."""
    for _ in range(30_000):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise TimeoutError("the benchmark's set-up did not happen within a minute")


async def measure(clients: int, rounds: int) -> dict[str, float | int]:
    base = tempfile.mkdtemp(dir=TMPFS)
    sockdir = tempfile.mkdtemp()
    try:
        tree = FakeCgroupTree(base)
        for i in range(10):
            tree.add(f"t/w{i}", procs=[100 + i], memory_current=20 * M)
        domain = tree.hierarchy.cgroup("t")
        domain.set_memory_max(300 * M)
        domain.set_memory_high(270 * M)
        tree.set("t", "memory.current", f"{280 * M}\n")
        cgoom._engine._notifier.SETTLE_EVERY = 0.005  # recover quickly between rounds
        rule = cgoom.Rule("t", "t", on="max")  # high events are levels, never incidents
        path = os.path.join(sockdir, "n.sock")
        writes: list[float] = []
        all_written = asyncio.Event()
        real_send = _server._Client.send

        def send(self: _server._Client, data: bytes) -> bool:
            ok = real_send(self, data)
            if data.startswith(b'{"v":1,"op":"notice"'):
                writes.append(time.monotonic())
                if len(writes) == clients:
                    all_written.set()
            return ok

        _server._Client.send = send  # type: ignore[method-assign]
        async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/", kmsg=None,
                                      proc_events=False, processes=FakeProcesses(tree),
                                      notice_interval=0.0001) as handler, \
                cgoom.open_notice_server(handler, path, max_buffered=1 << 20) as server:
            socks = []
            loop = asyncio.get_running_loop()
            for i in range(clients):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                await loop.sock_connect(s, path)
                if i % 100 == 99:  # let the server accept them: the backlog is finite
                    await wait_for(lambda n=i: server.statistics().clients > n - 50)
                await loop.sock_sendall(
                    s, b'{"v":1,"op":"register","cgroup":"t/w%d","levels":["low"]}\n'
                    % (i % 10))
                socks.append(s)
            await wait_for(lambda: server.statistics().registrations >= clients)
            last, first = [], []
            for _ in range(rounds):
                writes.clear()
                all_written.clear()
                tree.set("t", "memory.current", f"{280 * M}\n")
                started = time.monotonic()
                tree.memory_event("t", "high")
                await asyncio.wait_for(all_written.wait(), 60)
                last.append((writes[-1] - started) * 1000)
                first.append((writes[0] - started) * 1000)
                tree.set("t", "memory.current", f"{100 * M}\n")  # recovered
                await wait_for(lambda: handler.level("/t") is None)
                for s in socks:  # empty the buffers between rounds (not timed)
                    try:
                        while s.recv(65536):
                            pass
                    except BlockingIOError:
                        pass
            for s in socks:
                s.close()
        _server._Client.send = real_send  # type: ignore[method-assign]
        return {"clients": clients, "rounds": rounds,
                "notice_p50_ms": round(statistics.median(last), 3),
                "notice_p99_ms": round(percentile(last, 0.99), 3),
                "first_ms_p50": round(statistics.median(first), 3)}
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * args.clients + 100:  # both ends of every connection are ours
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * args.clients + 100), hard))
    result = asyncio.run(measure(args.clients, args.rounds))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
