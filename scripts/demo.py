"""cgoom's main job, on a real cgroup v2 kernel (run by scripts/demo): the priority inversion.

A 300M workload, /cgoom-demo, holds db (140M, priority 100), web (50M, priority 50) and batch
(priority 0), a job whose memory grows about 40 MiB/s. Act 1: the kernel alone. batch runs into
memory.max and the kernel's OOM killer kills the largest: db, the most important. Act 2: the
same with cgoom's engine (``cgoom.open_handler``): the rule sets memory.high 10% below
memory.max, fires on the first ``high`` event, the priority policy chooses batch, cgoom kills
it whole before the kernel's OOM killer acts, db and web live on, and the incident record
says why, with its timings. Cleans up after itself.

On a host without a usable cgroup v2 memory controller it runs itself inside the VM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import cgoom
from cgoom.cli import main as cgoom_cli
from cgoom.testing import find_test_parent, kill_and_remove, wait_until

M = 1 << 20
GROW = ("import time\nchunks = []\nwhile True:\n    chunk = bytearray(4 << 20)\n"
        "    for i in range(0, len(chunk), 4096): chunk[i] = 1\n"
        "    chunks.append(chunk); time.sleep(0.1)\n")
HOLD = "{{ head -c {mb}M /dev/zero; exec sleep 1000; }} | tail > /dev/null"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def start_in(cgroup: cgoom.Cgroup, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` paused, move it into ``cgroup``, release it: all it forks is inside."""
    proc = subprocess.Popen(["/bin/sh", "-c", 'read go; exec "$@"', "sh", *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    cgroup.attach(proc.pid)
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    return proc


def build(parent: cgoom.Cgroup) -> tuple[cgoom.Cgroup, dict[str, cgoom.Cgroup]]:
    demo = parent.child("cgoom-demo")
    if demo.exists():
        kill_and_remove(demo)
    demo = parent.create_child("cgoom-demo")
    demo.enable_controllers("memory", "pids")
    kids = {}
    for name, priority in (("db", 100), ("web", 50), ("batch", 0)):
        kids[name] = demo.create_child(name)
        kids[name].set_priority(priority)
        kids[name].set_memory_oom_group(True)
    demo.set_memory_max("300M")
    demo.set_memory_swap_max(0)
    return demo, kids


def start_services(kids: dict[str, cgoom.Cgroup], procs: list[subprocess.Popen[bytes]],
                   ) -> None:
    for name, mb in (("db", 140), ("web", 50)):
        procs.append(start_in(kids[name], ["/bin/sh", "-c", HOLD.format(mb=mb)]))
    wait_until(lambda: kids["db"].memory_current() > 135 * M
               and kids["web"].memory_current() > 45 * M, 60, "db and web to hold memory")


def alive(kids: dict[str, cgoom.Cgroup]) -> str:
    return ", ".join(f"{n} {'alive' if c.cgroup_events().populated else 'DEAD'}"
                     for n, c in kids.items())


def act_one(parent: cgoom.Cgroup) -> None:
    demo, kids = build(parent)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        step("act 1, the kernel alone: db 140M (priority 100), web 50M (50), batch grows "
             "~40 MiB/s (0); /cgoom-demo memory.max 300M")
        start_services(kids, procs)
        procs.append(start_in(kids["batch"], [sys.executable, "-c", GROW]))
        started = time.monotonic()
        wait_until(lambda: demo.memory_events().oom_kill > 0, 60, "the kernel's OOM kill")
        wait_until(lambda: any(not c.cgroup_events().populated for c in kids.values()), 30,
                   "the kernel's victim to exit")
        print(f"  after {time.monotonic() - started:.1f} s the kernel's OOM killer acted "
              f"(oom_kill {demo.memory_events().oom_kill}): {alive(kids)}")
        print("  it killed the largest workload: the one that mattered most")
    finally:
        kill_and_remove(demo)
        for proc in procs:
            proc.wait(10)


async def engine(demo: cgoom.Cgroup, kids: dict[str, cgoom.Cgroup],
                 procs: list[subprocess.Popen[bytes]]) -> cgoom.IncidentRecord:
    rule = cgoom.Rule("demo", demo.path, on="high", high_below_max=0.1, confirm_timeout=20)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
        for line in handler.setup:
            print(f"  set-up: {line}")
        procs.append(start_in(kids["batch"], [sys.executable, "-c", GROW]))
        record = await asyncio.wait_for(handler.__anext__(), 60)
    print("  (on exit the handler restored memory.high: "
          f"{demo.memory_high()})")
    return record


def act_two(parent: cgoom.Cgroup) -> int:
    demo, kids = build(parent)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        step("act 2, the same with cgoom's engine (cgoom.open_handler, the priority policy)")
        start_services(kids, procs)
        record = asyncio.run(engine(demo, kids, procs))
        step("the incident record (record.explain())")
        print(record.explain())
        t = record.timings
        step("outcome")
        print(f"  {alive(kids)}; the kernel's oom_kill: {demo.memory_events().oom_kill}")
        print(f"  onset (first high) to kill {t.kill_ms:.1f} ms; notification to empty "
              f"{t.confirmed_ms:.1f} ms")
        step("cgoom status /cgoom-demo")
        cgoom_cli(["status", demo.path])
        ok = (record.victim is not None and record.victim.cgroup == kids["batch"].path
              and kids["db"].cgroup_events().populated and kids["web"].cgroup_events().populated)
        return 0 if ok else 1
    finally:
        kill_and_remove(demo)
        for proc in procs:
            proc.wait(10)


def demo() -> int:
    parent, reason = find_test_parent()
    if parent is None:
        print(f"demo: no usable cgroup v2 memory controller: {reason}", file=sys.stderr)
        return 1
    act_one(parent)
    return act_two(parent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--here", action="store_true", help="run on this host, never the VM")
    args = parser.parse_args()
    parent, _ = find_test_parent()
    if parent is not None or args.here:
        return demo()
    print("demo: this host has no usable cgroup v2 memory controller; running in the VM",
          file=sys.stderr, flush=True)
    from cgoom.testing import vm

    here = os.path.relpath(os.path.abspath(__file__))
    return vm.main(["run", "--", sys.executable, here, "--here"])


if __name__ == "__main__":
    sys.exit(main())
