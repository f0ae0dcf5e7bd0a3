"""The stall watchdog on the fake cgroupfs: the event loop is blocked (a coroutine that
sleeps without awaiting, as a process starved or paging would be) while the kernel raises
memory.events; the watchdog's thread sees the loop stalled and the counters risen past what
the loop handled, and kills the last ranking's first victim, re-checking its identity; it
does nothing when memory is not short, leaves a rule with an incident in flight to it, and
passes over a victim re-created since the ranking. When the loop runs again, the events it
missed are folded into the watchdog's action, not a second kill."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

import cgoom
from cgoom._engine._stall import StallWatchdog
from cgoom.testing import FakeCgroupTree, FakeProcesses

M = 1 << 20


@pytest.fixture
def inversion(tree: FakeCgroupTree) -> FakeCgroupTree:
    for name, pid, prio in (("db", 100, 100), ("web", 200, 50), ("batch", 300, 0)):
        c = tree.add(f"t/{name}", procs=[pid], memory_current=100 * M)
        c.set_priority(prio)
        c.set_memory_oom_group(True)
        tree.add_process(pid, name=name, rss=100 * M)
    return tree


def stall_loop(seconds: float, during: float, raise_events: object = None) -> None:
    """Block the loop's thread for ``seconds``; ``raise_events()`` runs after ``during``."""
    deadline = time.monotonic() + seconds
    if callable(raise_events):
        time.sleep(during)
        raise_events()
    while time.monotonic() < deadline:
        time.sleep(0.01)


async def started(tree: FakeCgroupTree, rule: cgoom.Rule,
                  records: list[cgoom.IncidentRecord]) -> tuple[cgoom.Handler, StallWatchdog]:
    handler = cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/", kmsg=None,
                                 proc_events=False, processes=FakeProcesses(tree))
    await handler.__aenter__()
    watchdog = StallWatchdog(handler, 0.2, records.append)
    await watchdog.start()
    return handler, watchdog


async def test_a_stalled_loop_with_memory_short_kills_the_last_ranking(
        inversion: FakeCgroupTree) -> None:
    records: list[cgoom.IncidentRecord] = []
    handler, watchdog = await started(inversion, cgoom.Rule("t", "t", cooldown=5), records)
    try:
        ranking = watchdog.rankings["t"][0]
        assert ranking.first is not None and ranking.first.cgroup == "/t/batch"
        stall_loop(1.0, 0.1, lambda: inversion.memory_event("t", "max", 2))
        assert len(records) == 1
        record = records[0]
        assert record.trigger.text.startswith("stall watchdog: the event loop did not run for ")
        assert "/t memory.events rose unhandled: max +2" in record.trigger.text
        assert record.trigger.kind == "stall"
        assert record.victim is not None and record.victim.cgroup == "/t/batch"
        assert inversion.hierarchy.cgroup("t/batch").cgroup_procs() == ()
        assert inversion.hierarchy.cgroup("t/db").cgroup_procs() == (100,)
        assert "decided afresh by the stall watchdog thread" in record.decision.notes[-1]
        await asyncio.sleep(0.3)  # the loop runs again and reads the events it missed
        assert handler.statistics().incidents == 0  # folded into the action: resting
        assert inversion.hierarchy.cgroup("t/web").cgroup_procs() == (200,)
    finally:
        await watchdog.close()
        await handler.aclose()


async def test_a_stall_without_memory_pressure_does_nothing(
        inversion: FakeCgroupTree, caplog: pytest.LogCaptureFixture) -> None:
    records: list[cgoom.IncidentRecord] = []
    handler, watchdog = await started(inversion, cgoom.Rule("t", "t"), records)
    try:
        stall_loop(0.8, 0.0)
        assert records == [] and inversion.hierarchy.cgroup("t/batch").cgroup_procs() == (300,)
        assert "no rule's trigger holds now; looking again every 0.1 s" in caplog.text
    finally:
        await watchdog.close()
        await handler.aclose()


async def test_memory_short_later_in_a_stall_is_acted_on(inversion: FakeCgroupTree) -> None:
    """The trigger does not hold when the stall is first seen, and does later in it (found
    on the real kernel: batch reached memory.high 2 s into the stall): it looks again."""
    records: list[cgoom.IncidentRecord] = []
    handler, watchdog = await started(inversion, cgoom.Rule("t", "t"), records)
    try:
        stall_loop(1.5, 0.7, lambda: inversion.memory_event("t", "high"))
        assert len(records) == 1 and records[0].victim is not None
        assert records[0].victim.cgroup == "/t/batch"
    finally:
        await watchdog.close()
        await handler.aclose()


async def test_an_incident_in_flight_is_left_to_the_engine(
        inversion: FakeCgroupTree, caplog: pytest.LogCaptureFixture) -> None:
    records: list[cgoom.IncidentRecord] = []
    handler, watchdog = await started(inversion, cgoom.Rule("t", "t"), records)
    try:
        assert handler._states["t"].claim()  # as if the loop had begun an incident
        stall_loop(0.8, 0.1, lambda: inversion.memory_event("t", "max"))
        assert records == []
        assert "has an incident in flight: left to it" in caplog.text
    finally:
        handler._states["t"].finished(time.monotonic())
        await watchdog.close()
        await handler.aclose()


async def test_a_ranking_gone_stale_is_not_acted_on(inversion: FakeCgroupTree) -> None:
    """At start batch is empty, so the ranking names web; by the stall batch has a process
    and the trigger holds: the thread decides afresh and kills batch, not web (found on the
    real kernel: acting on the ranking would have been a wrong kill)."""
    # Moved out as the kernel would (cgroup.events follows: populated 0), not by writing
    # the fake's cgroup.procs behind its back.
    inversion.fs.write(inversion.hierarchy.root.dir + "/cgroup.procs", "300")
    records: list[cgoom.IncidentRecord] = []
    handler, watchdog = await started(inversion, cgoom.Rule("t", "t"), records)
    try:
        ranking = watchdog.rankings["t"][0]
        assert ranking.first is not None and ranking.first.cgroup == "/t/web"

        def batch_starts_and_grows() -> None:
            inversion.fs.write(inversion.cgroup("t/batch").dir + "/cgroup.procs", "300")
            inversion.memory_event("t", "high", 3)

        stall_loop(1.0, 0.1, batch_starts_and_grows)
        assert len(records) == 1 and records[0].victim is not None
        assert records[0].victim.cgroup == "/t/batch", records[0].explain()
        assert inversion.hierarchy.cgroup("t/web").cgroup_procs() == (200,)
    finally:
        await watchdog.close()
        await handler.aclose()


async def test_without_a_fresh_decision_the_ranking_is_used_and_rechecked(
        inversion: FakeCgroupTree, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the domain cannot be read afresh, the last ranking is the fallback, and its
    first victim, re-created since, is passed over by the identity check."""
    records: list[cgoom.IncidentRecord] = []
    handler, watchdog = await started(inversion, cgoom.Rule("t", "t"), records)

    def unreadable(*_args: object, **_kw: object) -> None:
        raise cgoom.CgroupGone("/t: cannot be read now (test)")

    try:
        monkeypatch.setattr(handler._snapshotter, "snapshot", unreadable)
        def recreate_and_raise() -> None:
            batch = inversion.hierarchy.cgroup("t/batch")
            old = os.stat(batch.dir).st_ino
            for n in range(10):  # the fake's filesystem may hand the old inode back
                inversion.remove_behind_our_back("t/batch")
                inversion.add(f"t/filler{n}")
                inversion.add("t/batch", procs=[301], memory_current=100 * M)
                if os.stat(batch.dir).st_ino != old:
                    break
            inversion.add_process(301, name="new", rss=100 * M)
            inversion.memory_event("t", "max")

        stall_loop(1.0, 0.1, recreate_and_raise)
        assert len(records) == 1
        actions = records[0].actions
        assert not actions[0].ok and "was removed and re-created" in actions[0].detail
        assert actions[1].ok and actions[1].cgroup == "/t/web"  # the ranking's next
        assert inversion.hierarchy.cgroup("t/batch").cgroup_procs() == (301,)
        assert "the last ranking, " in records[0].decision.notes[-1]
    finally:
        await watchdog.close()
        await handler.aclose()


async def test_the_watchdog_thread_is_named_and_stops(inversion: FakeCgroupTree) -> None:
    handler, watchdog = await started(inversion, cgoom.Rule("t", "t"), [])
    try:
        names = {t.name for t in threading.enumerate()}
        assert "cgoom-stall-watchdog" in names
    finally:
        await watchdog.close()
        await handler.aclose()
    assert "cgoom-stall-watchdog" not in {t.name for t in threading.enumerate()}
