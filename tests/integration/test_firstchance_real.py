"""The workloads' first chance on the real kernel (issue #11, first slice), in the priority
inversion's domain (300M, memory.high 270M; db 140M and web 50M held): batch grows a cache;
its handler, told before cgoom acts, makes it drop the cache (SIGUSR1), memory falls back
below the threshold and nothing is killed. A handler that ignores the notice gets its
deadline and no more: batch is killed right after it. Each prints its figures."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom.testing import wait_until

from .conftest import holding_hog, python_cmd, report_figures
from .test_handler_real import inversion

Spawn = Callable[[cgoom.Cgroup, str], Any]
M = 1 << 20

CACHE = (  # ~40 MiB/s of cache until SIGUSR1, which drops it all and stops the growth
    "import signal, time\n"
    "cache, grow = [], [True]\n"
    "def drop(*_):\n"
    "    grow[0] = False\n"
    "    cache.clear()\n"
    "signal.signal(signal.SIGUSR1, drop)\n"
    "while True:\n"
    "    if grow[0]:\n"
    "        chunk = bytearray(4 << 20)\n"
    "        for i in range(0, len(chunk), 4096): chunk[i] = 1\n"
    "        cache.append(chunk)\n"
    "    time.sleep(0.1)\n"
)


def pids_of(cgroup: cgoom.Cgroup) -> list[int]:
    return list(cgroup.cgroup_procs())


@pytest.mark.parametrize("workload", ["drops its cache", "ignores the notice"])
async def test_the_first_chance(box: cgoom.Cgroup, spawn: Spawn, workload: str,
                                capsys: pytest.CaptureFixture[str]) -> None:
    parent, kids = inversion(box, early=True)
    spawn(kids["db"], holding_hog(140))
    spawn(kids["web"], holding_hog(50))
    wait_until(lambda: kids["db"].memory_current() > 135 * M
               and kids["web"].memory_current() > 45 * M, 60, "db and web to hold memory")
    told: list[cgoom.Notice] = []

    async def drop_cache(notice: cgoom.Notice) -> cgoom.Answer:
        # As a workload's own handler would: free, then answer "done". The signal is
        # handled once batch returns to user space, which memory.high's throttling delays
        # (up to 2 s a return; longer on 7.x than on 6.1 here): wait for the memory to go.
        told.append(notice)
        before = kids["batch"].memory_current()
        for pid in pids_of(kids["batch"]):
            os.kill(pid, signal.SIGUSR1)
        for _ in range(100):
            if kids["batch"].memory_current() < before // 2:
                break
            await asyncio.sleep(0.05)
        return cgoom.Answer("done")

    async def ignore(notice: cgoom.Notice) -> None:
        told.append(notice)
        await asyncio.sleep(3600)

    deadline = 4.0 if workload == "drops its cache" else 1.0
    rule = cgoom.Rule("inversion", parent.path, on="high", confirm_timeout=20,
                      first_chance=5.0)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
        handler.register(kids["batch"].path,
                         drop_cache if workload == "drops its cache" else ignore,
                         deadline=deadline)
        # The shell execs python: the cgroup's one process is the one to signal.
        spawn(kids["batch"], "exec " + python_cmd(CACHE))
        record = await asyncio.wait_for(handler.__anext__(), 60)
    assert isinstance(record, cgoom.IncidentRecord)
    chance = record.first_chance
    assert chance is not None and len(told) == 1, record.explain()
    assert told[0].reclaim_target > 0 and told[0].cgroup == kids["batch"].path
    assert parent.memory_events().oom_kill == 0
    assert kids["db"].cgroup_procs() and kids["web"].cgroup_procs()
    t = record.timings
    if workload == "drops its cache":
        assert chance.recovered and record.victim is None, record.explain()
        assert kids["batch"].cgroup_procs()  # alive
        assert chance.usage_after is not None and chance.threshold is not None
        assert chance.usage_after <= chance.threshold
        answered = chance.told[0].answered_ms
        # memory may come back before the handler's answer does: cgoom stops waiting then
        answer = ("memory came back before its answer" if answered is None
                  else f"it answered after {answered:.1f} ms")
        figures = (f"told to free {told[0].reclaim_target / M:.1f}M, {answer}; usage "
                   f"{(chance.usage_before or 0) / M:.0f}M -> {chance.usage_after / M:.0f}M "
                   f"(threshold {chance.threshold / M:.0f}M) in {chance.waited_ms:.0f} ms; "
                   "nothing killed")
    else:
        assert not chance.recovered and chance.told[0].answer == "no answer"
        assert record.victim is not None and record.victim.cgroup == kids["batch"].path
        assert t.kill_ms is not None and t.kill_ms >= deadline * 1000
        figures = (f"deadline {deadline * 1000:.0f} ms, notification to kill "
                   f"{t.kill_ms:.1f} ms ({t.kill_ms - deadline * 1000:.1f} ms past the "
                   f"deadline), to empty {t.confirmed_ms:.1f} ms")
    with capsys.disabled():
        report_figures(f"first chance, a workload that {workload}: {figures}")
