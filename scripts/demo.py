"""cgoom's main job today, on a real cgroup v2 kernel (run by scripts/demo).

Builds /cgoom-demo/{web,batch} (web priority 100, batch 0), sets memory.high below memory.max
on batch (the early-trigger pattern cgoom is built on), watches the subtree (kernel
notifications, no polling) with a sustained-pressure rule on batch, starts a quiet service in
web and a memory hog in batch, prints the events as the kernel reports them, and when the rule
holds asks the priority policy whom to kill, kills its first victim (cgroup.kill) and sees it
empty while web lives on. Cleans up after itself.

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
from cgoom.cli import format_decision
from cgoom.cli import main as cgoom_cli
from cgoom.testing import find_test_parent, kill_and_remove


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def start_in(cgroup: cgoom.Cgroup, script: str) -> subprocess.Popen[bytes]:
    """Start ``script`` paused, move it into ``cgroup``, release it: all it forks is inside."""
    proc = subprocess.Popen(["/bin/sh", "-c", f"read go; {script}"], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    cgroup.attach(proc.pid)
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    return proc


async def watch_and_act(hierarchy: cgoom.Hierarchy, demo_cg: cgoom.Cgroup,
                        batch: cgoom.Cgroup, web: cgoom.Cgroup,
                        procs: list[subprocess.Popen[bytes]]) -> None:
    rule = cgoom.SustainedPressure("some", percent=10, duration_s=2, window_s=0.5)
    async with cgoom.open_watcher(hierarchy, demo_cg.path) as watcher:
        watcher.watch_sustained_pressure(batch.path, rule)
        procs.append(start_in(web, "exec sleep 1000"))
        step(f"batch starts a hog that wants 80M; rule on batch: {rule}")
        procs.append(start_in(batch, "{ head -c 80M /dev/zero; sleep 1000; } | tail > /dev/null"))
        started = time.monotonic()
        killed_at = None
        async for event in watcher:
            if isinstance(event, cgoom.MemoryEventsChanged) and (
                    event.local or event.cgroup == demo_cg.path):
                continue  # batch's own hierarchical line says the same
            print(f"  +{time.monotonic() - started:6.3f}s  {event}", flush=True)
            if isinstance(event, cgoom.PressureSustained) and killed_at is None:
                step("cgoom status " + demo_cg.path)
                cgoom_cli(["status", demo_cg.path])
                step("the rule held: the priority policy decides (as `cgoom rank` shows it)")
                policy = cgoom.load_policy("priority")
                snapper = cgoom.Snapshotter(hierarchy)
                candidates = await snapper.asnapshot(demo_cg.path, fields=policy.fields,
                                                     paths=watcher.watched())
                decision = await cgoom.adecide(
                    policy, cgoom.Incident.create(demo_cg.path, "pressure",
                                                  own_cgroup=hierarchy.own_cgroup().path),
                    candidates)
                snapper.close()
                print("\n".join(format_decision(decision, demo_cg.path)))
                victim = decision.first
                assert victim is not None and victim.whole, decision
                stale = snapper.recheck(victim)  # the same cgroup as decided on, not a new one
                assert stale is None, stale
                step(f"kill {victim.cgroup} whole (cgroup.kill); the watcher sees it empty")
                killed_at = time.monotonic()
                await hierarchy.cgroup(victim.cgroup).akill()
            if (isinstance(event, cgoom.CgroupStateChanged) and event.cgroup == batch.path
                    and not event.state.populated and killed_at is not None):
                print(f"batch empty {(time.monotonic() - killed_at) * 1000:.1f} ms after the "
                      f"kill; web still populated: {web.cgroup_events().populated}")
                return


def demo() -> int:
    parent, reason = find_test_parent()
    if parent is None:
        print(f"demo: no usable cgroup v2 memory controller: {reason}", file=sys.stderr)
        return 1
    demo_cg = parent.child("cgoom-demo")
    if demo_cg.exists():
        kill_and_remove(demo_cg)
    demo_cg = parent.create_child("cgoom-demo")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        demo_cg.enable_controllers("memory", "pids")
        web, batch = demo_cg.create_child("web"), demo_cg.create_child("batch")
        step(f"{demo_cg.path}: web (priority 100, max 64M) and batch (priority 0, high 48M < "
             "max 96M, oom.group 1)")
        web.set_memory_max("64M")
        web.set_priority(100)
        batch.set_priority(0)
        batch.set_memory_high("48M")
        batch.set_memory_max("96M")
        batch.set_memory_swap_max(0)
        batch.set_memory_oom_group(True)
        hierarchy = cgoom.Hierarchy.discover()
        asyncio.run(asyncio.wait_for(watch_and_act(hierarchy, demo_cg, batch, web, procs), 120))
        step(f"cgoom status {demo_cg.path}")
        cgoom_cli(["status", demo_cg.path])
        return 0
    finally:
        kill_and_remove(demo_cg)
        for proc in procs:
            proc.wait(10)


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
