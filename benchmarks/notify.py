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

Then a flood (issue 19): ``--flood-connections`` connections (256: one user's share) from
another process, each re-registering its cgroup ``--flood-burst`` (100) messages back to
back, again as soon as all are answered, while the domain's memory.events ``max`` fires
``--flood-events`` times (a rule that decides and notifies). A heartbeat task sleeping 1 ms
at a time measures the loop's longest block:

- flood_max_loop_block_ms / quiet_max_loop_block_ms: the loop's longest block during the
  flood, and during the same events without it;
- flood_decision_p99_ms / quiet_decision_p99_ms: the event's write to the decision made
  (the incident's snapshot and policy done), p99, with and without the flood;
- flood_messages_per_s: what the flood got answered.

Then what one user can make cgoom hold (issue 19): ``--hold-connections`` connections (256)
of another user (uid 65534 when run as root, else this one), each registering a cgroup with
a long path (~3.8 KB an answer) ``--hold-messages`` (110) times without reading a reply, then
sending a 60 KiB line it never finishes:

- hold_rss_growth_mib: the server process's resident memory after, less before;
- hold_connections_dropped: the connections cgoom ended for holding too much.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
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


def fake_domain(base: str) -> FakeCgroupTree:
    """A fake host at ``base`` with the domain /t of ten workloads (20M each)."""
    tree = FakeCgroupTree(base)
    for i in range(10):
        tree.add(f"t/w{i}", procs=[100 + i], memory_current=20 * M)
    return tree


async def measure(clients: int, rounds: int) -> dict[str, float | int]:
    base = tempfile.mkdtemp(dir=TMPFS)
    sockdir = tempfile.mkdtemp()
    try:
        tree = fake_domain(base)
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


FLOOD_CLIENT = r'''
import selectors, socket, sys, time
path, conns, burst, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
line = b'{"v":1,"op":"register","cgroup":"t/w0","levels":["low"]}\n'
sel = selectors.DefaultSelector()
owed = {}
for _ in range(conns):
    s = socket.socket(socket.AF_UNIX); s.connect(path); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ)
    s.sendall(line * burst); owed[s] = burst
print("ready", flush=True)
end = time.monotonic() + seconds
sent = burst * conns
said = time.monotonic()
while time.monotonic() < end:
    if time.monotonic() - said > 0.2:
        print(sent, flush=True)
        said = time.monotonic()
    for key, _ in sel.select(0.05):
        s = key.fileobj
        try:
            data = s.recv(1 << 16)
        except BlockingIOError:
            continue
        if not data:
            sel.unregister(s); continue
        owed[s] -= data.count(b"\n")
        if owed[s] <= 0:  # all answered: another burst, back to back
            try:
                s.sendall(line * burst); owed[s] += burst; sent += burst
            except BlockingIOError:
                pass
print(sent, flush=True)
'''


class Heartbeat:
    """The loop's longest block: a task that sleeps 1 ms at a time and notes how late it
    woke."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _beat(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.001)
            self.longest = max(self.longest, time.monotonic() - before - 0.001)

    def start(self) -> None:
        self.longest = 0.0
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> float:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.longest * 1000


async def measure_flood(connections: int, burst: int, events: int) -> dict[str, float | int]:
    base = tempfile.mkdtemp(dir=TMPFS)
    sockdir = tempfile.mkdtemp()
    try:
        tree = fake_domain(base)
        rule = cgoom.Rule("t", "t", on="max", action="notify", cooldown=0)
        path = os.path.join(sockdir, "n.sock")
        records: asyncio.Queue[cgoom.IncidentRecord] = asyncio.Queue()
        async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/", kmsg=None,
                                      proc_events=False, processes=FakeProcesses(tree),
                                      ) as handler, \
                cgoom.open_notice_server(handler, path, max_clients=4 * connections,
                                         max_registrations=2):
            handler.add_listener(lambda r: records.put_nowait(r)
                                 if isinstance(r, cgoom.IncidentRecord) else None)
            heartbeat = Heartbeat()

            async def oom_events() -> list[float]:
                delays = []
                for _ in range(events):
                    started = time.monotonic()
                    tree.memory_event("t", "max")
                    record = await asyncio.wait_for(records.get(), 60)
                    t = record.timings
                    decided = t.notified + (t.snapshot_ms + t.decision_ms) / 1000
                    delays.append((decided - started) * 1000)
                    await asyncio.sleep(0.05)
                return delays

            heartbeat.start()
            quiet = await oom_events()
            quiet_block = await heartbeat.stop()
            seconds = events * 0.06 + 30
            flood = subprocess.Popen(  # noqa: ASYNC220 (started once, before the timing)
                [sys.executable, "-c", FLOOD_CLIENT, path, str(connections), str(burst),
                 str(seconds)], stdout=subprocess.PIPE, text=True)
            assert flood.stdout is not None
            ready = await asyncio.to_thread(flood.stdout.readline)
            assert ready.strip() == "ready", ready
            await asyncio.sleep(0.5)  # the flood under way
            heartbeat.start()
            flood_started = time.monotonic()
            flooded = await oom_events()
            flood_block = await heartbeat.stop()
            flood_seconds = time.monotonic() - flood_started
            flood.terminate()
            out, _ = await asyncio.to_thread(flood.communicate)
            sent = int(out.split()[-1]) if out.split() else 0
        return {"flood_connections": connections, "flood_burst": burst,
                "flood_events": events,
                "flood_max_loop_block_ms": round(flood_block, 3),
                "quiet_max_loop_block_ms": round(quiet_block, 3),
                "flood_decision_p99_ms": round(percentile(flooded, 0.99), 3),
                "quiet_decision_p99_ms": round(percentile(quiet, 0.99), 3),
                "flood_messages_per_s": round(sent / max(flood_seconds, 1e-9))}
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)


def hold_client(path: str, conns: int, messages: int, cgroup: str, uid: int) -> int:
    """Forked (the user may not run this virtualenv's interpreter): as ``uid``, ``conns``
    connections each sending ``messages`` registrations and never reading a reply, then a
    60 KiB line never finished; the child's pid (it waits for SIGKILL). Plain syscalls
    only in the child."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            if uid != os.geteuid():
                os.setgid(uid)
                os.setuid(uid)
            line = b'{"v":1,"op":"register","cgroup":"%s","levels":["low"]}\n' \
                % cgroup.encode()
            socks = []
            for _ in range(conns):
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                socks.append(s)
            for s in socks:  # read at 100 a second a connection: ~1.1 s to be answered
                s.setblocking(False)
                with contextlib.suppress(OSError):  # what the socket takes; cgoom may end it
                    s.send(line * messages)
            time.sleep(messages / 100 + 1.5)
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(b'{"v":1,"op":"register","cgroup":"' + b"x" * (60 << 10))
            os.write(w, b"held\n")
            while True:
                time.sleep(60)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        said = f.readline()
    if said != b"held\n":
        raise RuntimeError(f"the holding client failed: {said!r}")
    return pid


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


async def measure_hold(connections: int, messages: int) -> dict[str, float | int]:
    base = tempfile.mkdtemp(dir=TMPFS)
    sockdir = tempfile.mkdtemp()
    os.chmod(sockdir, 0o755)  # uid 65534 connects
    try:
        tree = fake_domain(base)
        uid = 65534 if os.geteuid() == 0 else os.geteuid()
        # a delegated cgroup of the user with a long path (each answer names it: ~3.8 KB)
        deep = "t/" + "/".join(f"{i}" + "d" * 250 for i in range(14))
        tree.add(deep, procs=[], memory_current=0)
        tree.chown(deep, uid)
        rule = cgoom.Rule("t", "t", on="max")
        path = os.path.join(sockdir, "n.sock")
        async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/", kmsg=None,
                                      proc_events=False, processes=FakeProcesses(tree),
                                      ) as handler, \
                cgoom.open_notice_server(handler, path) as server:
            await asyncio.sleep(0.5)
            before = rss_mib()
            pid = await asyncio.to_thread(hold_client, path, connections, messages,
                                          "/" + deep, uid)
            await asyncio.sleep(1.0)
            after = rss_mib()
            dropped = server.statistics().dropped
            os.kill(pid, 9)
            await asyncio.to_thread(os.waitpid, pid, 0)
        return {"hold_connections": connections,
                "hold_rss_growth_mib": round(after - before, 1),
                "hold_connections_dropped": dropped}
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(sockdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--flood-connections", type=int, default=256)
    parser.add_argument("--flood-burst", type=int, default=100)
    parser.add_argument("--flood-events", type=int, default=100)
    parser.add_argument("--hold-connections", type=int, default=256)
    parser.add_argument("--hold-messages", type=int, default=110)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * args.clients + 100:  # both ends of every connection are ours
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 2 * args.clients + 100), hard))
    result = asyncio.run(measure(args.clients, args.rounds))
    if args.flood_connections > 0:
        result |= asyncio.run(measure_flood(args.flood_connections, args.flood_burst,
                                            args.flood_events))
    if args.hold_connections > 0:
        result |= asyncio.run(measure_hold(args.hold_connections, args.hold_messages))
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
