"""The stall watchdog on the real kernel: the handler's event loop is blocked (its thread
sleeps without returning to the loop, as a starved or paging process would) while batch grows
into the parent's memory.high; the watchdog's thread, armed before, sees the loop stalled and
the high counter risen past what the loop handled, decides afresh (the ranking taken at start,
batch being empty then, named web) and kills batch whole by cgroup.kill; db and web live on,
the kernel's OOM killer does not act. When the loop runs again, the events it missed start no
second incident."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom._engine._stall import StallWatchdog
from cgoom.testing import wait_until

from .conftest import holding_hog, python_cmd, report_figures
from .test_handler_real import GROW, inversion

Spawn = Callable[[cgoom.Cgroup, str], Any]
M = 1 << 20


def block_the_loop_until(done: Callable[[], bool], seconds: float) -> float:
    """Called on the loop's thread: it does not return to the loop until ``done()`` or
    ``seconds``; returns how long it blocked."""
    start = time.monotonic()
    while not done() and time.monotonic() - start < seconds:
        time.sleep(0.01)
    return time.monotonic() - start


async def test_the_stall_watchdog_kills_batch_from_its_thread(box: cgoom.Cgroup, spawn: Spawn,
                                                         capsys: pytest.CaptureFixture[str],
                                                         ) -> None:
    parent, kids = inversion(box, early=True)
    spawn(kids["db"], holding_hog(140))
    spawn(kids["web"], holding_hog(50))
    wait_until(lambda: kids["db"].memory_current() > 135 * M
               and kids["web"].memory_current() > 45 * M, 60, "db and web to hold memory")
    records: list[cgoom.IncidentRecord] = []
    rule = cgoom.Rule("inversion", parent.path, on="high", confirm_timeout=20, cooldown=10)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
        watchdog = StallWatchdog(handler, 1.0, records.append)
        await watchdog.start()
        try:
            # batch is empty yet: the ranking names web. Acting on it after batch has grown
            # would be a wrong kill; the thread decides afresh.
            ranking = watchdog.rankings["inversion"][0]
            assert ranking.first is not None and ranking.first.cgroup == kids["web"].path
            highs = parent.memory_events().high
            spawn(kids["batch"], python_cmd(GROW))
            blocked = block_the_loop_until(lambda: bool(records), 60)
            first_high = parent.memory_events().high > highs
            await asyncio.sleep(1.0)  # the loop reads what it missed: no second incident
            assert handler.statistics().incidents == 0, handler.statistics()
        finally:
            await watchdog.close()
    assert first_high and len(records) == 1, records
    record = records[0]
    assert record.victim is not None and record.victim.cgroup == kids["batch"].path, \
        record.explain()
    assert record.timings.confirmed_ms is not None, record.explain()
    assert kids["batch"].cgroup_procs() == ()
    assert kids["db"].cgroup_procs() and kids["web"].cgroup_procs()
    assert parent.memory_events().oom_kill == 0
    t = record.timings
    with capsys.disabled():
        report_figures(f"stall watchdog: the loop blocked {blocked:.1f} s; {record.trigger}; "
              f"detection to kill {t.kill_ms:.1f} ms, to empty {t.confirmed_ms:.1f} ms; "
              f"memory {(record.memory_before or 0) >> 20}M -> "
              f"{(record.memory_after or 0) >> 20}M; kernel oom_kill 0")
