"""The watcher on the fake cgroupfs: real inotify on a real directory tree (without the
kernel's rate limit), so delivery, diffing, subtree following, overflow and clean shutdown
are exercised for real. PSI triggers need kernel files: tests/integration covers them."""

from __future__ import annotations

import asyncio
import errno
import logging
import os

import pytest

import cgoom
import cgoom._kernel._linux
from cgoom._kernel._linux import read_int
from cgoom._watch._events import SustainedState, counter_delta, trigger_problem
from cgoom.testing import FakeCgroupTree
from cgoom.testing import collect_events as collect
from cgoom.testing import events_of_type as of_type


def overflow(tree: FakeCgroupTree, first: str, second: str) -> int:
    """Write memory.events of two cgroups in turn (so the kernel cannot merge consecutive
    identical events) until the inotify queue overflows; each ends at ``high`` = the number
    returned."""
    limit = read_int("/proc/sys/fs/inotify/max_queued_events")
    assert limit is not None
    for i in range(limit // 2 + 100):
        tree.set_memory_events(first, high=i + 1)
        tree.set_memory_events(second, high=i + 1)
    return limit // 2 + 100


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


class TestCounters:
    async def test_burst_is_one_event_with_the_whole_delta(self, tree: FakeCgroupTree) -> None:
        """Many changes before the watcher reads are one event carrying the summed delta."""
        tree.add("lab/batch")
        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            tree.memory_event("lab/batch", "high", 30)
            tree.memory_event("lab/batch", "high", 7)
            tree.memory_event("lab/batch", "max", 2)
            tree.memory_event("lab/batch", "oom_kill")
            events = await collect(w, lambda ev: len(of_type(ev, cgoom.MemoryEventsChanged)) == 3)
        changed = {(e.cgroup, e.local): e for e in of_type(events, cgoom.MemoryEventsChanged)}
        batch = changed[("/lab/batch", False)]
        assert batch.delta == {"high": 37, "max": 2, "oom_kill": 1}
        assert batch.totals.high == 37 and batch.totals.oom_kill == 1
        assert str(batch) == "/lab/batch memory.events: high +37, max +2, oom_kill +1"
        assert changed[("/lab/batch", True)].delta == batch.delta  # .local at the origin
        assert changed[("/lab", False)].delta == batch.delta  # hierarchical in the parent
        assert ("/lab", True) not in changed

    async def test_swap_events(self, tree: FakeCgroupTree) -> None:
        tree.add("lab")
        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            tree.set("lab", "memory.swap.events", "high 0\nmax 3\nfail 1\n")
            [event] = await collect(w, lambda ev: len(ev) == 1)
        assert isinstance(event, cgoom.SwapEventsChanged)
        assert event.delta == {"max": 3, "fail": 1}

    async def test_populated_and_frozen(self, tree: FakeCgroupTree) -> None:
        tree.add("lab/a", procs=[10])
        a = tree.cgroup("lab/a")
        async with cgoom.open_watcher(tree.hierarchy, "lab/a") as w:
            a.freeze()
            a.kill()
            events = await collect(w, lambda ev: not ev[-1].state.populated)  # type: ignore[union-attr]
        last = events[-1]
        assert isinstance(last, cgoom.CgroupStateChanged)
        assert last.state == cgoom.CgroupEvents(populated=False, frozen=True)
        assert events[0].previous == cgoom.CgroupEvents(populated=True, frozen=False)  # type: ignore[union-attr]

    async def test_unchanged_file_gives_no_event(self, tree: FakeCgroupTree) -> None:
        tree.add("lab")
        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            tree.set("lab", "memory.events", tree.cgroup("lab").read_file("memory.events"))
            tree.memory_event("lab", "low")
            [event] = await collect(w, lambda ev: len(ev) == 2 or "low" in ev[-1].delta)  # type: ignore[union-attr]
        assert event.delta == {"low": 1}  # type: ignore[union-attr]

    async def test_garbage_is_logged_not_fatal(self, tree: FakeCgroupTree,
                                               caplog: pytest.LogCaptureFixture) -> None:
        tree.add("lab")
        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            tree.set("lab", "memory.events", "this is not memory.events\n")
            await asyncio.sleep(0.05)
            tree.set_memory_events("lab", oom=1)  # the kernel's format again, one oom more
            [event] = await collect(w, lambda ev: True)
        assert "is not 'key value'" in caplog.text
        assert event.delta == {"oom": 1}  # type: ignore[union-attr]


class TestHierarchyChanges:
    async def test_created_subtree_is_followed(self, tree: FakeCgroupTree) -> None:
        """A cgroup created with children before we look is followed whole."""
        tree.add("lab")
        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            tree.add("lab/new/deep")
            created = await collect(w, lambda ev: len(of_type(ev, cgoom.CgroupCreated)) == 2)
            assert [e.cgroup for e in of_type(created, cgoom.CgroupCreated)] == [
                "/lab/new", "/lab/new/deep"]
            assert w.watched() == ["/lab", "/lab/new", "/lab/new/deep"]
            tree.memory_event("lab/new/deep", "high")
            events = await collect(w, lambda ev: len([
                e for e in of_type(ev, cgoom.MemoryEventsChanged)
                if e.cgroup == "/lab/new/deep"]) == 2)
        # The new cgroup's own files are watched, memory.events and memory.events.local:
        # each says the counter that rose.
        deep = [e for e in of_type(events, cgoom.MemoryEventsChanged)
                if e.cgroup == "/lab/new/deep"]
        assert sorted((e.local, dict(e.delta)) for e in deep) == [
            (False, {"high": 1}), (True, {"high": 1})], events

    async def test_removed_subtree_ends(self, tree: FakeCgroupTree) -> None:
        tree.add("lab/old/deep")
        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            before = w.statistics().watches
            tree.remove_behind_our_back("lab/old")
            events = await collect(w, lambda ev: len(of_type(ev, cgoom.CgroupRemoved)) == 2)
            assert [e.cgroup for e in of_type(events, cgoom.CgroupRemoved)] == [
                "/lab/old/deep", "/lab/old"]
            assert w.watched() == ["/lab"]
            assert w.statistics().watches == before - 2 * (2 + len(cgoom.DEFAULT_FILES))

    async def test_memory_disabled_and_enabled_again_is_still_watched(
            self, tree: FakeCgroupTree) -> None:
        """-memory then +memory in lab's cgroup.subtree_control: job's memory.* files are
        removed and made anew; their events still come, from the new files."""
        tree.add("lab/job")
        tree.memory_event("lab/job", "high", 3)
        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            before = w.statistics().watches
            for change in (tree.cgroup("lab").disable_controllers,
                           tree.cgroup("lab").enable_controllers):
                change("memory")
                [changed] = of_type(await collect(w, lambda ev: bool(
                    of_type(ev, cgoom.ControllersChanged))), cgoom.ControllersChanged)
                assert (changed.cgroup, changed.children) == ("/lab", ("/lab/job",))
                if change == tree.cgroup("lab").disable_controllers:
                    # job's three memory files are gone, and so are their watches
                    assert w.statistics().watches == before - 3
            assert w.statistics().watches == before  # the new files' watches, not more
            tree.memory_event("lab/job", "oom")  # counted in the new file, from 0
            events = await collect(w, lambda ev: any(
                e.cgroup == "/lab/job" and not e.local
                for e in of_type(ev, cgoom.MemoryEventsChanged)))
        [event] = [e for e in of_type(events, cgoom.MemoryEventsChanged)
                   if e.cgroup == "/lab/job" and not e.local]
        assert event.delta == {"oom": 1}

    async def test_recreated_name_counts_from_zero(self, tree: FakeCgroupTree) -> None:
        tree.add("lab/job")
        tree.memory_event("lab/job", "oom_kill", 5)
        async with cgoom.open_watcher(tree.hierarchy, "lab/job") as w:
            tree.set_memory_events("lab/job", oom_kill=1)  # counters went down: a new cgroup
            [event] = await collect(w, lambda ev: True)
        assert event.delta == {"oom_kill": 1}  # type: ignore[union-attr]

    async def test_include_and_exclude(self, tree: FakeCgroupTree) -> None:
        for path in ("ws/batch-1", "ws/web", "ws/skip/inner"):
            tree.add(path)
        async with cgoom.open_watcher(tree.hierarchy, "ws", include=["ws/batch-*"],
                                      exclude=["ws/skip"]) as w:
            assert w.watched() == ["/ws", "/ws/batch-1", "/ws/web"]
            for path in ("ws/web", "ws/skip/inner", "ws/batch-1"):
                tree.memory_event(path, "max")
            tree.add("ws/batch-2")
            # Generous: ~8,300 queued events then a resync, on a shared machine under the
            # rest of the suite (5 s was once not enough there).
            events = await collect(w, lambda ev: any(isinstance(e, cgoom.CgroupCreated)
                                                     for e in ev), seconds=60)
        assert {e.cgroup for e in events} == {"/ws/batch-1", "/ws/batch-2"}

    async def test_overflow_resynchronizes(self, tree: FakeCgroupTree) -> None:
        """Past fs.inotify.max_queued_events the kernel drops notifications and says
        IN_Q_OVERFLOW; the watcher re-reads everything, so the counts are still right."""
        tree.add("lab/a")
        tree.add("lab/b")
        async with cgoom.open_watcher(tree.hierarchy, "lab", files=["memory.events"]) as w:
            limit = overflow(tree, "lab/a", "lab/b")
            tree.add("lab/c")  # its IN_CREATE is lost too: found by the resync
            # Generous: ~8,300 queued events then a resync, on a shared machine under the
            # rest of the suite (5 s was once not enough there).
            events = await collect(w, lambda ev: any(isinstance(e, cgoom.CgroupCreated)
                                                     for e in ev), seconds=60)
            assert w.statistics().resyncs == 1
            assert "/lab/c" in w.watched()  # checked while open: close() forgets everything
        assert isinstance(events[0], cgoom.Resynchronized)
        assert "IN_Q_OVERFLOW" in str(events[0])
        totals = {e.cgroup: e.totals.high for e in of_type(events, cgoom.MemoryEventsChanged)}
        assert totals["/lab/a"] == totals["/lab/b"] == limit

    async def test_overflow_finds_a_recreated_cgroup(self, tree: FakeCgroupTree) -> None:
        """A cgroup removed and re-created at the same path while notifications were lost
        has new files and dead watches: the resync sees another id and watches it anew."""
        tree.add("lab/a")
        tree.add("lab/b")
        tree.add("lab/c")
        async with cgoom.open_watcher(tree.hierarchy, "lab", files=["memory.events"]) as w:
            overflow(tree, "lab/b", "lab/c")
            tree.remove_behind_our_back("lab/a")
            tree.add("lab/spacer")  # so tmpfs does not hand the same inode back
            tree.add("lab/a/x")
            events = await collect(w, lambda ev: any(
                isinstance(e, cgoom.CgroupCreated) and e.cgroup == "/lab/a/x" for e in ev),
                seconds=60)  # as above: a flood, then a resync, on a loaded machine
            assert {"/lab/a", "/lab/a/x"} <= set(w.watched())
            tree.memory_event("lab/a/x", "high")
            later = await collect(w, lambda ev: any(
                isinstance(e, cgoom.MemoryEventsChanged) and e.cgroup == "/lab/a/x"
                for e in ev))
        assert "/lab/a removed" in [str(e) for e in events]
        assert "/lab/a created" in [str(e) for e in events]
        assert of_type(later, cgoom.MemoryEventsChanged)[-1].delta == {"high": 1}

    async def test_watch_limit_at_run_time_is_an_event(self, tree: FakeCgroupTree,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        """A burst of new cgroups past the watch limit: the new one is reported as not
        watched, everything else in the batch is still delivered, and it is retried (and
        announced) once a removal frees watches."""
        tree.add("lab/a")
        tree.add("lab/old")
        real = cgoom._kernel._linux.Inotify.add_watch
        full = [False]

        def add_watch(self: object, path: str, mask: int) -> int:
            if full[0]:
                raise OSError(errno.ENOSPC, "No space left on device", path)
            return real(self, path, mask)  # type: ignore[arg-type]

        monkeypatch.setattr("cgoom._kernel._linux.Inotify.add_watch", add_watch)
        async with cgoom.open_watcher(tree.hierarchy, "lab", files=["memory.events"]) as w:
            full[0] = True
            tree.add("lab/new")
            tree.memory_event("lab/a", "high")
            events = await collect(w, lambda ev: len(of_type(ev, cgoom.MemoryEventsChanged)) >= 2)
            failed = of_type(events, cgoom.WatchFailed)
            assert [e.cgroup for e in failed] == ["/lab/new"]
            assert "fs.inotify.max_user_watches" in failed[0].reason
            assert {e.cgroup for e in of_type(events, cgoom.MemoryEventsChanged)} == {
                "/lab", "/lab/a"}
            assert list(w.untracked()) == ["/lab/new"] and w.statistics().untracked == 1
            full[0] = False
            tree.remove_behind_our_back("lab/old")
            retried = await collect(w, lambda ev: any(
                isinstance(e, cgoom.CgroupCreated) for e in ev))
            assert "/lab/new" in w.watched() and w.untracked() == {}
        assert [str(e) for e in retried][-2:] == ["/lab/old removed", "/lab/new created"]

    async def test_queue_is_bounded(self, tree: FakeCgroupTree) -> None:
        """A consumer that stops reading costs at most max_queued events; then one
        Resynchronized says what was dropped. Listeners still see everything."""
        tree.add("lab/a")
        heard: list[cgoom.Event] = []
        async with cgoom.open_watcher(tree.hierarchy, "lab/a", files=["memory.events"],
                                      max_queued=3) as w:
            w.add_listener(heard.append)
            for _ in range(10):
                tree.memory_event("lab/a", "high")
                await asyncio.sleep(0.01)
            assert w.statistics().queued <= 4 and w.statistics().dropped >= 6
        queued = [e async for e in w]
        assert isinstance(queued[0], cgoom.Resynchronized)
        assert "the consumer fell behind" in queued[0].reason
        assert len(of_type(heard, cgoom.MemoryEventsChanged)) == 10

    async def test_start_yields_to_the_loop(self, tree: FakeCgroupTree,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
        for i in range(20):
            tree.add(f"lab/c{i}")
        monkeypatch.setattr("cgoom._watch._watcher.SLICE_SECONDS", 0.0)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            during = ticks - before
            assert w.statistics().cgroups == 21
        task.cancel()
        assert during >= 20  # the loop ran between cgroups

    def test_watch_limit_is_not_raised_by_default(self, tree: FakeCgroupTree) -> None:
        assert cgoom.open_watcher(tree.hierarchy).raise_watch_limit is False


class TestLifecycle:
    async def test_no_fds_leak_and_iteration_ends(self, tree: FakeCgroupTree) -> None:
        tree.add("lab/a")
        before = open_fds()
        w = cgoom.open_watcher(tree.hierarchy, "lab")
        async with w:
            assert len(open_fds() - before) == 1  # the inotify fd (an epoll per PSI trigger)
            tree.memory_event("lab/a", "high")
            await asyncio.sleep(0.05)
        assert open_fds() <= before
        assert [type(e).__name__ async for e in w] == ["MemoryEventsChanged"] * 3
        w.close()  # twice is fine

    async def test_cancelled_consumer_loses_nothing(self, tree: FakeCgroupTree) -> None:
        tree.add("lab")
        before = open_fds()
        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            task = asyncio.create_task(w.__anext__())
            await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            tree.memory_event("lab", "max")
            [event] = await collect(w, lambda ev: True)
            assert event.delta == {"max": 1}  # type: ignore[union-attr]
        assert open_fds() <= before

    async def test_start_failure_releases_fds(self, tree: FakeCgroupTree) -> None:
        before = open_fds()
        with pytest.raises(cgoom.CgroupGone, match="no such cgroup"):
            async with cgoom.open_watcher(tree.hierarchy, "missing"):
                pass
        assert open_fds() <= before

    async def test_listeners(self, tree: FakeCgroupTree, caplog: pytest.LogCaptureFixture) -> None:
        tree.add("lab")
        seen: list[cgoom.Event] = []

        def broken(event: cgoom.Event) -> None:
            raise RuntimeError("listener bug")

        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            w.add_listener(broken)
            w.add_listener(seen.append)
            tree.memory_event("lab", "high")
            await collect(w, lambda ev: True)
        assert len(seen) == 2  # memory.events and memory.events.local
        assert "listener bug" in caplog.text

    async def test_idle_watcher_never_wakes(self, tree: FakeCgroupTree) -> None:
        for i in range(20):
            tree.add(f"lab/c{i}")
        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            await asyncio.sleep(0.3)
            stats = w.statistics()
        assert stats.wakeups == 0 and stats.cgroups == 21
        assert stats.watches == 21 * 6  # the directory, cgroup.subtree_control, 4 files

    async def test_statistics_and_repr(self, tree: FakeCgroupTree) -> None:
        tree.add("lab")
        w = cgoom.open_watcher(tree.hierarchy, "lab")
        assert repr(w) == "<Watcher /lab (not started, 0 cgroups)>"
        async with w:
            tree.memory_event("lab", "high")
            await collect(w, lambda ev: True)
            stats = w.statistics()
            assert (stats.wakeups, stats.events, stats.queued) == (1, 2, 1)
            assert repr(w) == "<Watcher /lab (open, 1 cgroups)>"

    def test_unknown_file(self, tree: FakeCgroupTree) -> None:
        with pytest.raises(cgoom.InvalidValue, match=r"cannot watch 'memory\.stat'"):
            cgoom.open_watcher(tree.hierarchy, files=["memory.stat"])

    async def test_watch_limit_error_names_the_sysctl(self, tree: FakeCgroupTree,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        tree.add("lab")

        def full(self: object, path: str, mask: int) -> int:
            raise OSError(errno.ENOSPC, "No space left on device", path)

        monkeypatch.setattr("cgoom._kernel._linux.Inotify.add_watch", full)
        with pytest.raises(cgoom.CgoomError, match=r"fs\.inotify\.max_user_watches") as info:
            async with cgoom.open_watcher(tree.hierarchy, "lab", raise_watch_limit=False):
                pass
        assert info.value.errno == errno.ENOSPC and "sysctl -w" in str(info.value)


class TestPressureRules:
    @pytest.mark.parametrize(("trigger", "kernel", "privileged", "problem"), [
        (cgoom.PressureTrigger("some", 150_000, 1_000_000), (6, 1), False, None),
        (cgoom.PressureTrigger("some", 50_000, 100_000), (6, 1), True, "at least 500 ms"),
        (cgoom.PressureTrigger("some", 50_000, 100_000), (6, 6), True, None),
        (cgoom.PressureTrigger("full", 50_000, 1_000_000), (6, 6), False, "multiples of 2 s"),
        (cgoom.PressureTrigger("some", 0, 1_000_000), (6, 1), True, "from 1 us"),
        (cgoom.PressureTrigger("some", 2_000_000, 1_000_000), (6, 1), True, "from 1 us"),
        (cgoom.PressureTrigger("some", 1, 20_000_000), (6, 1), True, "at most 10 s"),
        (cgoom.PressureTrigger("half", 1, 1_000_000), (6, 1), True, "'some' or 'full'"),  # type: ignore[arg-type]
    ])
    def test_trigger_problem(self, trigger: cgoom.PressureTrigger, kernel: tuple[int, int],
                             privileged: bool, problem: str | None) -> None:
        found = trigger_problem(trigger, kernel=kernel, privileged=privileged)
        assert found == problem if problem is None else problem in (found or "")

    def test_trigger_line_ends_in_newline(self) -> None:
        assert cgoom.PressureTrigger.percent("some", 40, 1.0).line() == "some 400000 1000000\n"

    def test_sustained_state(self) -> None:
        state = SustainedState(cgoom.SustainedPressure("some", 40, duration_s=3, window_s=1))
        assert [state.fired(t) for t in (10.0, 11.0, 12.0)] == [None, None, None]
        assert state.fired(13.0) == 10.0  # held for 3 s
        assert state.fired(14.0) is None  # counting restarted at 13
        assert state.fired(20.0) is None  # a gap of > 2 windows: pressure had stopped
        assert [state.fired(t) for t in (21.0, 22.0, 23.0)] == [None, None, 20.0]

    async def test_invalid_trigger_is_refused_before_any_io(self, tree: FakeCgroupTree) -> None:
        tree.add("lab")
        async with cgoom.open_watcher(tree.hierarchy, "lab") as w:
            with pytest.raises(cgoom.InvalidValue, match=r"'some 0 2000000'.*from 1 us"):
                w.watch_pressure("lab", cgoom.PressureTrigger("some", 0, 2_000_000))
            with pytest.raises(cgoom.CgoomError, match="not a kernel pressure file"):
                w.watch_pressure("lab", cgoom.PressureTrigger("some", 100_000, 2_000_000))
            assert w.statistics().triggers == 0

    def test_arming_outside_the_context_is_an_error(self, tree: FakeCgroupTree) -> None:
        w = cgoom.open_watcher(tree.hierarchy)
        with pytest.raises(RuntimeError, match="arm triggers inside `async with`"):
            w.watch_pressure(None, cgoom.PressureTrigger("some", 100_000, 1_000_000))


@pytest.mark.parametrize(("old", "new", "delta"), [
    ({"high": 1}, {"high": 3, "max": 0}, {"high": 2}),
    ({"high": 3}, {"high": 3}, {}),
    ({"high": 3}, {"high": 1}, None),
    ({}, {"new_key": 4}, {"new_key": 4}),
])
def test_counter_delta(old: dict[str, int], new: dict[str, int],
                       delta: dict[str, int] | None) -> None:
    assert counter_delta(old, new) == delta


def test_events_render_for_logs() -> None:
    trigger = cgoom.PressureTrigger("some", 100_000, 1_000_000)
    assert str(cgoom.PressureTriggered(None, trigger, 1.0)) == \
        "system memory pressure: some 100000us/1000000us"
    assert str(cgoom.CgroupCreated("/a", 1.0)) == "/a created"
    logging.getLogger("cgoom").debug("%s", cgoom.CgroupRemoved("/a", 1.0))
