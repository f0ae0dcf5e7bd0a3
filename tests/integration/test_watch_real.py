"""The watcher on a real kernel: events come from kernel notifications (inotify on kernfs,
PSI triggers), with the kernel's rate limit and coalescing in play."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom.testing import collect_events

from .conftest import KERNEL_VERSION, hog, report_figures, sysctl, throttled

Spawn = Callable[[cgoom.Cgroup, str], Any]


async def gather(watcher: cgoom.Watcher, until: Callable[[cgoom.Event], bool],
                 seconds: float) -> list[cgoom.Event]:
    """Events until one satisfies ``until`` (fails after ``seconds``)."""
    return await collect_events(watcher, lambda events: until(events[-1]), seconds=seconds)


def memory_changes(events: list[cgoom.Event], path: str) -> list[cgoom.MemoryEventsChanged]:
    return [e for e in events
            if isinstance(e, cgoom.MemoryEventsChanged) and e.cgroup == path and not e.local]


async def test_high_events_while_throttled_and_nothing_missed(
        box: cgoom.Cgroup, spawn: Spawn) -> None:
    """Crossing memory.high gives `high` events as it happens; the deltas add up to the
    counter's growth, however the kernel coalesced its notifications."""
    c = throttled(box, "high")
    h = cgoom.Hierarchy.discover()
    async with cgoom.open_watcher(h, c.path) as w:
        baseline = c.memory_events().high
        p = spawn(c, hog(64))
        events = await gather(w, lambda e: isinstance(e, cgoom.MemoryEventsChanged)
                              and not e.local and e.totals.high - baseline >= 40, 90)
        assert p.proc.poll() is None  # throttled, not killed
        changes = memory_changes(events, c.path)
        assert len(changes) >= 2
        assert sum(e.delta.get("high", 0) for e in changes) == changes[-1].totals.high - baseline
        assert all("oom_kill" not in e.delta for e in changes)
        times = [e.time for e in changes]
        assert times == sorted(times)
        stats = w.statistics()
        assert stats.notifications >= len(changes)


async def test_oom_kill_events_and_populated(box: cgoom.Cgroup, spawn: Spawn) -> None:
    """An OOM kill shows as oom and oom_kill deltas, then populated goes to 0."""
    c = box.create_child("oom")
    c.set_memory_max("32M")
    c.set_memory_swap_max(0)
    h = cgoom.Hierarchy.discover()
    async with cgoom.open_watcher(h, c.path) as w:
        spawn(c, hog(128))
        events = await gather(w, lambda e: isinstance(e, cgoom.CgroupStateChanged)
                              and not e.state.populated, 120)
    changes = memory_changes(events, c.path)
    assert sum(e.delta.get("oom", 0) for e in changes) >= 1
    assert sum(e.delta.get("oom_kill", 0) for e in changes) >= 1
    local = [e for e in events if isinstance(e, cgoom.MemoryEventsChanged) and e.local]
    assert sum(e.delta.get("oom_kill", 0) for e in local) >= 1
    states = [e for e in events if isinstance(e, cgoom.CgroupStateChanged)]
    assert states[0].state.populated and not states[-1].state.populated


async def test_parent_watch_sees_child_oom_hierarchically(box: cgoom.Cgroup,
                                                          spawn: Spawn) -> None:
    """With include limited to the parent, a child's OOM kill reaches it via the
    hierarchical memory.events."""
    parent = box.create_child("p")
    parent.enable_controllers("memory")
    child = parent.create_child("c")
    child.set_memory_max("32M")
    child.set_memory_swap_max(0)
    h = cgoom.Hierarchy.discover()
    async with cgoom.open_watcher(h, parent.path, include=[parent.path.lstrip("/")]) as w:
        spawn(child, hog(128))
        events = await gather(w, lambda e: isinstance(e, cgoom.MemoryEventsChanged)
                              and "oom_kill" in e.delta, 120)
    assert {e.cgroup for e in events if isinstance(e, cgoom.MemoryEventsChanged)} == {
        parent.path}


async def test_created_and_removed_burst(box: cgoom.Cgroup) -> None:
    """Fifty cgroups made and removed in a burst: every creation and removal is seen."""
    h = cgoom.Hierarchy.discover()
    async with cgoom.open_watcher(h, box.path) as w:
        made = [box.create_child(f"b{i}") for i in range(50)]
        nested = made[0].create_child("nested")
        seen: set[str] = set()
        await gather(w, lambda e: isinstance(e, cgoom.CgroupCreated)
                     and (seen.add(e.cgroup) or len(seen) == 51), 60)  # type: ignore[func-returns-value]
        assert seen == {c.path for c in [*made, nested]}
        assert len(w.watched()) == 52
        nested.remove()
        for c in made:
            c.remove()
        removed: set[str] = set()
        await gather(w, lambda e: isinstance(e, cgoom.CgroupRemoved)
                     and (removed.add(e.cgroup) or len(removed) == 51), 60)  # type: ignore[func-returns-value]
        assert removed == {c.path for c in [*made, nested]}
        assert w.watched() == [box.path]


async def test_psi_trigger_fires_under_pressure(box: cgoom.Cgroup, spawn: Spawn) -> None:
    """A `some` trigger on the cgroup's memory.pressure fires while it is throttled."""
    c = throttled(box, "psi")
    h = cgoom.Hierarchy.discover()
    async with cgoom.open_watcher(h, c.path, files=["cgroup.events"]) as w:
        trigger = cgoom.PressureTrigger("some", 50_000, 500_000)  # 10% of 500 ms
        w.watch_pressure(c.path, trigger)
        assert w.statistics().triggers == 1
        started = time.monotonic()
        spawn(c, hog(64))
        events = await gather(w, lambda e: isinstance(e, cgoom.PressureTriggered), 90)
        fired = events[-1]
        assert isinstance(fired, cgoom.PressureTriggered)
        assert fired.cgroup == c.path and fired.trigger == trigger
        assert fired.time > started


async def test_sustained_pressure_rule(box: cgoom.Cgroup, spawn: Spawn) -> None:
    """"some above 10% for 2 s" holds while a hog is throttled over memory.high."""
    c = throttled(box, "sustained")
    h = cgoom.Hierarchy.discover()
    rule = cgoom.SustainedPressure("some", percent=10, duration_s=2, window_s=0.5)
    async with cgoom.open_watcher(h, c.path, files=["cgroup.events"]) as w:
        w.watch_sustained_pressure(c.path, rule)
        spawn(c, hog(64))
        events = await gather(w, lambda e: isinstance(e, cgoom.PressureSustained), 120)
    held = events[-1]
    assert isinstance(held, cgoom.PressureSustained)
    assert held.rule == rule and held.time - held.since >= 2
    assert not any(isinstance(e, cgoom.PressureTriggered) for e in events)


async def test_trigger_ends_when_its_cgroup_is_removed(box: cgoom.Cgroup) -> None:
    """Removing the cgroup ends its trigger cleanly and closes the fd."""
    c = box.create_child("doomed")
    h = cgoom.Hierarchy.discover()
    async with cgoom.open_watcher(h, box.path) as w:
        w.watch_pressure(c.path, cgoom.PressureTrigger("some", 100_000, 1_000_000))
        c.remove()
        events = await gather(w, lambda e: isinstance(e, cgoom.PressureTriggerEnded), 30)
        assert w.statistics().triggers == 0
    ended = events[-1]
    assert isinstance(ended, cgoom.PressureTriggerEnded) and ended.cgroup == c.path


async def test_system_wide_trigger_arms(box: cgoom.Cgroup) -> None:
    """/proc/pressure/memory accepts a trigger (root has CAP_SYS_RESOURCE); the kernel's
    refusal of a bad one (second trigger on one fd is impossible here: one fd each) is
    caught by validation first."""
    h = cgoom.Hierarchy.discover()
    async with cgoom.open_watcher(h, box.path) as w:
        w.watch_pressure(None, cgoom.PressureTrigger("full", 100_000, 1_000_000))
        w.watch_pressure(None, cgoom.PressureTrigger("some", 200_000, 1_000_000))
        assert w.statistics().triggers == 2
        with pytest.raises(cgoom.InvalidValue, match=r"at most 10 s"):
            w.watch_pressure(None, cgoom.PressureTrigger("some", 10_000, 11_000_000))
        short = cgoom.PressureTrigger("some", 10_000, 100_000)
        if KERNEL_VERSION >= (6, 5):  # 6.5 lowered the shortest window below 500 ms
            w.watch_pressure(None, short)
            assert w.statistics().triggers == 3
        else:
            with pytest.raises(cgoom.InvalidValue, match=r"at least 500 ms before Linux 6\.5"):
                w.watch_pressure(None, short)
    assert w.statistics().triggers == 0


WATCHES = "/proc/sys/fs/inotify/max_user_watches"


def max_user_watches(value: int | None = None) -> int:
    return sysctl(WATCHES, value)


async def test_watch_limit_is_raised_when_root(box: cgoom.Cgroup,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """With fs.inotify.max_user_watches too low for the subtree, a root watcher told to
    (raise_watch_limit=True) raises it and says so; by default the error names the sysctl."""
    saved = max_user_watches()
    for i in range(60):
        box.create_child(f"w{i}")
    try:
        max_user_watches(100)  # 61 cgroups x 6 watches need ~366
        h = cgoom.Hierarchy.discover()
        async with cgoom.open_watcher(h, box.path, raise_watch_limit=True) as w:
            assert w.statistics().watches == 61 * 6  # directory, subtree_control, 4 files
            assert max_user_watches() >= 61 * 6
        assert "raised fs.inotify.max_user_watches from 100 to" in caplog.text
        max_user_watches(100)
        with pytest.raises(cgoom.CgoomError, match=r"max_user_watches.*is 100.*sysctl -w"):
            async with cgoom.open_watcher(h, box.path, raise_watch_limit=False):
                pass
    finally:
        max_user_watches(saved)


async def test_memory_controller_disabled_and_enabled_again(
        box: cgoom.Cgroup, spawn: Spawn, capsys: pytest.CaptureFixture[str]) -> None:
    """-memory then +memory in a parent's cgroup.subtree_control: the kernel makes the
    child's memory files anew (new inodes, memory.oom.group back to 0). The watcher hears
    the write (ControllersChanged) and watches the new files, so an OOM kill in the child
    afterwards is seen; the handler sets memory.oom.group again."""
    parent = box.create_child("toggle")
    parent.enable_controllers("memory", "pids")
    child = parent.create_child("job")
    events_file = os.path.join(child.dir, "memory.events")
    h = cgoom.Hierarchy.discover()
    rule = cgoom.Rule("toggle", parent.path, oom_group_leaves=True, action="notify")
    async with cgoom.open_handler(h, rule), cgoom.open_watcher(h, parent.path) as w:
        assert child.memory_oom_group()
        inode = os.stat(events_file).st_ino
        parent.disable_controllers("memory")
        try:
            os.stat(events_file)
            gone = False
        except FileNotFoundError:
            gone = True
        parent.enable_controllers("memory")
        # No await since the writes: the handler has not run, this is the kernel's state.
        reset, new_inode = child.memory_oom_group(), os.stat(events_file).st_ino
        assert gone and not reset and new_inode != inode
        [changed] = [e for e in await gather(
            w, lambda e: isinstance(e, cgoom.ControllersChanged), 30)
            if isinstance(e, cgoom.ControllersChanged)]
        assert changed.cgroup == parent.path and child.path in changed.children
        deadline = time.monotonic() + 30
        while not child.memory_oom_group():
            assert time.monotonic() < deadline, "memory.oom.group was not set again"
            await asyncio.sleep(0.01)
        again = time.monotonic() - changed.time
        child.set_memory_max("32M")
        child.set_memory_swap_max(0)
        spawn(child, hog(128))
        events = await gather(w, lambda e: isinstance(e, cgoom.MemoryEventsChanged)
                              and e.cgroup == child.path and not e.local
                              and e.delta.get("oom_kill", 0) > 0, 120)
    kills = sum(e.delta.get("oom_kill", 0) for e in memory_changes(events, child.path))
    assert kills >= 1
    with capsys.disabled():
        report_figures(
            f"memory controller disabled and enabled again above a cgroup: its memory files "
            f"removed ({gone}), made anew (inode {inode} -> {new_inode}), memory.oom.group "
            f"reset to 0 by the kernel; cgoom set it again {again * 1000:.1f} ms after "
            f"hearing the write; an OOM kill afterwards seen from the new memory.events "
            f"(oom_kill +{kills})")
