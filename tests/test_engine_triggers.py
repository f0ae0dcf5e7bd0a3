"""The engine's other triggers and actions on the fake cgroupfs: the whole-machine memory.high
tripwires and adaptive polling, PSI rules, graceful/freeze/reclaim/raise-limit/notify, the
next victim when a kill freed too little, the cgroup.kill fallback before 5.14, and what the
kernel did during an incident."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Mapping
from typing import Any

import pytest

import cgoom
from cgoom._engine._rules import RuleState
from cgoom._engine._tripwire import MIN_STEP, levels
from cgoom._kernel._meminfo import parse_meminfo
from cgoom.testing import FakeCgroupTree, FakeProcesses, next_incident, until

M = 1 << 20
G = 1 << 30


async def settle(seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)


@pytest.fixture
def machine(tree: FakeCgroupTree) -> FakeCgroupTree:
    """A 4 GiB machine, 3 GiB available; top-level db (priority 100), web (50), hog (0)."""
    for name, pid, prio, usage in (("db", 100, 100, 140), ("web", 200, 50, 50),
                                   ("hog", 300, 0, 400)):
        c = tree.add(name, procs=[pid], memory_current=usage * M)
        c.set_priority(prio)
        tree.add_process(pid, name=name, rss=usage * M)
    tree.set_meminfo(total=4 * G, available=3 * G)
    return tree


class TestParts:
    def test_meminfo(self) -> None:
        info = parse_meminfo("MemTotal: 1000 kB\nMemFree: 5 kB\nMemAvailable: 250 kB\n", "m")
        assert (info.total, info.available) == (1024000, 256000)
        assert info.fraction_available() == 0.25
        with pytest.raises(cgoom.ParseError, match="m: no MemAvailable line"):
            parse_meminfo("MemTotal: 1000 kB\n", "m")
        with pytest.raises(cgoom.ParseError, match="MemTotal is not 'N kB'"):
            parse_meminfo("MemTotal: lots\nMemAvailable: 1 kB\n", "m")

    def test_levels_share_the_headroom_and_never_sit_on_usage(self) -> None:
        assert levels({"/a": 100 * M, "/b": 10 * M}, 200 * M) == {"/a": 200 * M, "/b": 110 * M}
        # No headroom left: at least MIN_STEP above usage, rounded up to a page.
        assert levels({"/a": 4097}, -5 * M) == {"/a": 4097 // 4096 * 4096 + 4096 + MIN_STEP}

    def test_signal_starts_folds_and_rests(self) -> None:
        state = RuleState(cgoom.Rule("r", "/", available_below=0.1, cooldown=5))
        assert state.signal(1.0)
        assert not state.signal(1.1) and state.folded == 1
        assert state.finished(2.0) == 1
        assert not state.signal(6.9)  # resting
        assert state.signal(7.1)

    @pytest.mark.parametrize(("kw", "match"), [
        ({"on": ()}, "has no trigger"),
        ({"available_below": 1.5}, "a fraction of MemTotal"),
        ({"available_below": 0.1, "poll_below": 0.05}, "poll_below=0.05 polls while"),
        ({"poll_below": 0.2}, "give available_below="),
        ({"action": "explode"}, "action"),
        ({"action": "reclaim"}, "needs reclaim="),
        ({"action": "raise-limit"}, "needs raise_by="),
        ({"action": "reclaim", "reclaim": "8M", "reclaim_swappiness": 201},
         "reclaim_swappiness=201, an integer from 0"),
        ({"action": "reclaim", "reclaim": "8M", "reclaim_swappiness": True},
         "reclaim_swappiness=True"),
        ({"max_victims": 1.5}, "max_victims"),
        ({"min_freed": "lots"}, "lots"),
        ({"pressure": "some 10"}, "pressure"),
        ({"pressure_scope": "cluster"}, "pressure_scope"),
    ])
    def test_bad_rules_are_refused(self, kw: dict[str, object], match: str) -> None:
        with pytest.raises((cgoom.InvalidValue, TypeError, ValueError), match=match):
            cgoom.Rule("r", "t", **kw)  # type: ignore[arg-type]

    def test_defaults(self) -> None:
        assert cgoom.Rule("r", "t").on == {"high", "max", "oom"}
        assert cgoom.Rule("r", "/", available_below=0.1).on == frozenset()
        assert cgoom.Rule("r", "/", available_below=0.1, on="oom").on == {"oom"}
        assert cgoom.Rule("r", "t", action="reclaim", reclaim="64M").reclaim == 64 * M


class TestTripwires:
    async def test_armed_released_rearmed_and_restored(self, machine: FakeCgroupTree) -> None:
        """Each top-level cgroup gets usage + a third of (3 GiB - 10% of 4 GiB); a trip with
        memory still plentiful releases that one and re-arms all: no incident."""
        rule = cgoom.Rule("machine", "/", available_below=0.1)
        headroom = 3 * G - int(4 * G * 0.1)
        async with cgoom.open_handler(machine.hierarchy, rule, own_cgroup="/",
                                      processes=FakeProcesses(machine)) as handler:
            share = headroom // 3
            assert machine.cgroup("hog").memory_high() == -(-(400 * M + share) // 4096) * 4096
            assert machine.cgroup("db").memory_high() == -(-(140 * M + share) // 4096) * 4096
            assert any("memory.high tripwires on 3 of 3" in s for s in handler.setup)
            machine.set("hog", "memory.current", f"{900 * M}\n")
            machine.memory_event("hog", "high")
            await until(lambda: machine.cgroup("hog").memory_high()
                        == -(-(900 * M + (headroom // 3)) // 4096) * 4096, 5,
                        what="the hog's tripwire re-armed above its new usage")
            assert handler.statistics().tripwire_trips == 1
            assert handler.statistics().incidents == 0
        for name in ("db", "web", "hog"):
            assert machine.cgroup(name).memory_high() == "max"

    async def test_fires_when_memory_is_short_and_kills_the_least_important(
            self, machine: FakeCgroupTree) -> None:
        rule = cgoom.Rule("machine", "/", available_below=0.1)
        procs = FakeProcesses(machine)
        async with cgoom.open_handler(machine.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            machine.set_meminfo(total=4 * G, available=300 * M)
            machine.set("hog", "memory.current", f"{3000 * M}\n")
            machine.memory_event("hog", "high")
            record = await next_incident(handler)
            assert machine.cgroup("hog").memory_high() == "max"  # released at once
        assert record.trigger.text.startswith("MemAvailable 300.0M < 10% of MemTotal 4.0G "
                                              "(tripwire on /hog)"), record.trigger
        assert (record.trigger.kind, record.trigger.reading, record.trigger.source) == (
            "available", 300 * M, "tripwire on /hog")
        assert record.victim is not None and record.victim.cgroup == "/hog"
        assert record.available_before == 300 * M
        assert machine.cgroup("db").cgroup_procs() == (100,)
        assert machine.cgroup("web").cgroup_procs() == (200,)

    async def test_short_from_the_start_fires_at_once(self, machine: FakeCgroupTree) -> None:
        machine.set_meminfo(total=4 * G, available=100 * M)
        rule = cgoom.Rule("machine", "/", available_below=0.1, max_victims=1)
        async with cgoom.open_handler(machine.hierarchy, rule, own_cgroup="/",
                                      processes=FakeProcesses(machine)) as handler:
            record = await next_incident(handler)
        assert "(when arming)" in record.trigger.text and record.trigger.kind == "available"
        assert record.victim is not None and record.victim.cgroup == "/hog"

    async def test_a_lower_memory_high_is_left_alone(self, machine: FakeCgroupTree) -> None:
        machine.cgroup("web").set_memory_high(60 * M)
        async with cgoom.open_handler(machine.hierarchy, cgoom.Rule(
                "m", "/", available_below=0.1), own_cgroup="/",
                processes=FakeProcesses(machine)):
            assert machine.cgroup("web").memory_high() == 60 * M
        assert machine.cgroup("web").memory_high() == 60 * M

    async def test_a_new_top_level_cgroup_is_armed(self, machine: FakeCgroupTree) -> None:
        async with cgoom.open_handler(machine.hierarchy, cgoom.Rule(
                "m", "/", available_below=0.1), own_cgroup="/",
                processes=FakeProcesses(machine)):
            late = machine.add("late", memory_current=10 * M)
            await until(lambda: late.memory_high() != "max", 5, what="the new tripwire")
        assert late.memory_high() == "max"

    async def test_a_machine_rule_goes_on_while_memory_stays_short(
            self, machine: FakeCgroupTree) -> None:
        """The fake's MemAvailable stays low after the first kill: the next victim, up to
        max_victims, in the same incident."""
        rule = cgoom.Rule("machine", "/", available_below=0.1, max_victims=2)
        procs = FakeProcesses(machine)
        async with cgoom.open_handler(machine.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            machine.set_meminfo(total=4 * G, available=100 * M)
            machine.memory_event("hog", "high")
            record = await next_incident(handler)
        assert [a.cgroup for a in record.actions if a.ok] == ["/hog", "/web"]
        assert machine.cgroup("db").cgroup_procs() == (100,)

    async def test_adaptive_polling_only_while_low(self, machine: FakeCgroupTree) -> None:
        rule = cgoom.Rule("m", "/", available_below=0.1, poll_below=0.3)
        clock = cgoom.testing.ManualClock()
        async with cgoom.open_handler(machine.hierarchy, rule, own_cgroup="/", clock=clock,
                                      processes=FakeProcesses(machine)) as handler:
            await clock.advance(10.0)
            assert handler.statistics().polls == 0  # 75% available: no polling
            machine.set_meminfo(total=4 * G, available=1 * G)  # 25%: below poll_below
            machine.memory_event("db", "high")  # any event that re-reads MemAvailable
            await until(lambda: handler.statistics().polls >= 1, 5, what="polling")
            polls = handler.statistics().polls
            await clock.advance(1.0)  # at most a second between two reads while low
            assert handler.statistics().polls > polls
            machine.set_meminfo(total=4 * G, available=200 * M)  # below the reserve
            await clock.advance(1.0)
            record = await next_incident(handler)
        assert record.trigger.text.endswith("(poll)") and record.victim is not None
        assert record.trigger.source == "poll"
        assert record.victim.cgroup == "/hog"


class TestPressureRules:
    def test_a_fake_tree_cannot_arm_psi(self, tree: FakeCgroupTree) -> None:
        tree.add("t/a")
        rule = cgoom.Rule("p", "t", pressure=cgoom.PressureTrigger("some", 150_000, 2_000_000))

        async def go() -> None:
            async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/",
                                          processes=FakeProcesses(tree)):
                pass

        with pytest.raises(cgoom.CgoomError, match="not a kernel pressure file"):
            asyncio.run(go())


@pytest.fixture
def two(tree: FakeCgroupTree) -> FakeCgroupTree:
    tree.add("t/keep", procs=[100], memory_current=100 * M).set_priority(100)
    tree.add("t/lose", procs=[300, 301], memory_current=200 * M)
    tree.add_process(100, rss=100 * M)
    tree.add_process(300, rss=150 * M)
    tree.add_process(301, rss=50 * M)
    tree.cgroup("t/lose").set_memory_oom_group(True)
    tree.set("t", "memory.current", f"{300 * M}\n")
    tree.cgroup("t").set_memory_max(400 * M)
    return tree


class TestActions:
    async def test_graceful_cgroup_ends_on_sigterm(self, two: FakeCgroupTree) -> None:
        procs = FakeProcesses(two)
        rule = cgoom.Rule("r", "t", action="graceful", grace=5)
        async with cgoom.open_handler(two.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            two.memory_event("t/lose", "high")
            record = await next_incident(handler)
        assert sorted(procs.terminated) == [300, 301] and procs.killed == []
        victim = record.victim  # stopped by SIGTERM: nothing had to be killed
        assert victim is not None and victim.action == "terminate-cgroup"
        assert "populated 0 within the grace period" in victim.detail
        assert handler.statistics().kills == 1

    async def test_graceful_kills_after_the_grace_period(self, two: FakeCgroupTree) -> None:
        procs = FakeProcesses(two)
        procs.stubborn.add(301)
        rule = cgoom.Rule("r", "t", action="graceful", grace=0.2)
        async with cgoom.open_handler(two.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            two.memory_event("t/lose", "high")
            record = await next_incident(handler)
        assert record.victim is not None and record.victim.action == "kill-cgroup"
        assert "still there after 0.2 s" in record.victim.detail
        assert two.cgroup("t/lose").cgroup_procs() == ()
        assert two.cgroup("t/keep").cgroup_procs() == (100,)

    async def test_graceful_process(self, tree: FakeCgroupTree) -> None:
        tree.add("t/a", procs=[300, 301], memory_current=100 * M)
        tree.add_process(300, rss=90 * M)
        tree.add_process(301, rss=10 * M)
        procs = FakeProcesses(tree)
        procs.stubborn.add(300)
        rule = cgoom.Rule("r", "t", action="graceful", grace=0.2)
        async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            tree.memory_event("t/a", "high")
            record = await next_incident(handler)
        assert procs.terminated == [300] and procs.killed == [300]
        assert record.victim is not None and record.victim.pid == 300
        assert "SIGTERM sent through a pidfd; still there after 0.2 s" in record.victim.detail
        assert tree.cgroup("t/a").cgroup_procs() == (301,)

    async def test_freeze_then_thaw_on_stop(self, two: FakeCgroupTree) -> None:
        rule = cgoom.Rule("r", "t", action="freeze")
        async with cgoom.open_handler(two.hierarchy, rule, own_cgroup="/") as handler:
            two.memory_event("t/lose", "high")
            record = await next_incident(handler)
            assert two.cgroup("t/lose").cgroup_freeze()
        assert record.actions[0].action == "freeze" and record.actions[0].ok
        assert not two.cgroup("t/lose").cgroup_freeze()
        assert two.cgroup("t/lose").cgroup_procs() == (300, 301)

    async def test_reclaim(self, two: FakeCgroupTree) -> None:
        rule = cgoom.Rule("r", "t", action="reclaim", reclaim="64M")
        async with cgoom.open_handler(two.hierarchy, rule, own_cgroup="/") as handler:
            two.memory_event("t/lose", "high")
            record = await next_incident(handler)
        action = record.actions[0]
        assert action.action == "reclaim" and action.ok, action
        assert f"memory.reclaim {64 * M}" in action.detail
        assert two.cgroup("t/lose").cgroup_procs() == (300, 301)

    @pytest.mark.parametrize("kernel", [(6, 1), (6, 12)])
    async def test_reclaim_with_swappiness(self, tmp_path: object, kernel: tuple[int, int],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
        """swappiness= goes with the amount where the kernel takes it (6.10); before, the
        kernel's EINVAL is recorded with what to do about it."""
        import cgoom._engine._actions as actions

        monkeypatch.setattr(actions, "kernel_release", lambda: kernel)
        tree = FakeCgroupTree(tmp_path, kernel=kernel)  # type: ignore[arg-type]
        tree.add("t", memory_current=200 * M)
        tree.add("t/lose", procs=[300], memory_current=150 * M)
        tree.add_process(300, rss=150 * M)
        rule = cgoom.Rule("r", "t", action="reclaim", reclaim="64M", reclaim_swappiness=0)
        async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/") as handler:
            tree.memory_event("t/lose", "high")
            record = await next_incident(handler)
        action = record.actions[0]
        if kernel >= (6, 10):
            assert action.ok and f"memory.reclaim {64 * M} swappiness=0:" in action.detail
            assert tree.cgroup("t/lose").memory_current() == 86 * M
        else:
            assert not action.ok, action
            assert "memory.reclaim takes swappiness= from Linux 6.10; this is 6.1" in \
                action.detail and "drop reclaim_swappiness" in action.detail

    async def test_raise_limit_when_there_is_room(self, two: FakeCgroupTree) -> None:
        rule = cgoom.Rule("r", "t", action="raise-limit", raise_by="100M", cooldown=0.2)
        procs = FakeProcesses(two)
        async with cgoom.open_handler(two.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            two.memory_event("t/lose", "max")
            record = await next_incident(handler)
            assert two.cgroup("t").memory_max() == 500 * M
            assert two.cgroup("t").get_xattr("user.cgoom.overlimit") == "1"
            # Usage fits under the old limit again: put back after the cooldown.
            two.set("t", "memory.current", f"{200 * M}\n")
            # memory.max, memory.high and the mark are written one after the other in the
            # writer's thread: wait for the last, not the first.
            await until(lambda: two.cgroup("t").memory_max() == 400 * M
                        and two.cgroup("t").get_xattr("user.cgoom.overlimit") is None,
                        5, what="the limit put back and the mark removed")
        assert [a.action for a in record.actions] == ["raise-limit"] and procs.killed == []

    async def test_raise_limit_stays_while_usage_is_above(
            self, two: FakeCgroupTree, caplog: pytest.LogCaptureFixture) -> None:
        rule = cgoom.Rule("r", "t", action="raise-limit", raise_by="100M", cooldown=0.1)
        clock = cgoom.testing.ManualClock()
        async with cgoom.open_handler(two.hierarchy, rule, own_cgroup="/", clock=clock,
                                      processes=FakeProcesses(two)) as handler:
            two.set("t", "memory.current", f"{450 * M}\n")
            two.memory_event("t/lose", "max")
            await next_incident(handler)
            assert clock.pending >= 1  # the look to put it back, a second on
            for _ in range(3):  # three looks: usage stays above the original 400M
                await clock.advance(1.0)
                assert two.cgroup("t").memory_max() == 500 * M  # never below usage
            assert clock.pending >= 1  # and it keeps looking
        assert two.cgroup("t").memory_max() == 500 * M
        assert "memory.max of /t stays raised: usage 471859200 is above the original " \
            "419430400" in caplog.text

    async def test_raise_limit_without_room_kills(self, two: FakeCgroupTree) -> None:
        two.set_meminfo(total=4 * G, available=420 * M)
        procs = FakeProcesses(two)
        rule = cgoom.Rule("r", "t", action="raise-limit", raise_by="100M")
        async with cgoom.open_handler(two.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            two.memory_event("t/lose", "max")
            record = await next_incident(handler)
        assert [a.action for a in record.actions] == ["raise-limit", "kill-cgroup"]
        assert "the machine has no room" in record.actions[0].detail
        assert two.cgroup("t").memory_max() == 400 * M
        assert record.victim is not None and record.victim.cgroup == "/t/lose"

    async def test_notify_does_nothing(self, two: FakeCgroupTree) -> None:
        procs = FakeProcesses(two)
        async with cgoom.open_handler(two.hierarchy, cgoom.Rule("r", "t", action="notify"),
                                      own_cgroup="/", processes=procs) as handler:
            two.memory_event("t/lose", "high")
            record = await next_incident(handler)
        assert record.actions[0].action == "notify" and not record.dry_run
        assert procs.killed == [] and record.decision.first is not None

    async def test_freed_too_little_takes_the_next_victim(self, two: FakeCgroupTree) -> None:
        """The fake's memory.current does not fall after a kill: with min_freed the engine
        goes on to the next victim, at most max_victims."""
        procs = FakeProcesses(two)
        rule = cgoom.Rule("r", "t", min_freed="50M", max_victims=2)
        async with cgoom.open_handler(two.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            two.memory_event("t/lose", "high")
            record = await next_incident(handler)
        assert [a.cgroup for a in record.actions if a.ok] == ["/t/lose", "/t/keep"]

    async def test_enough_freed_stops_at_one(self, two: FakeCgroupTree) -> None:
        class Uncharges:
            """Decides as priority does, then plays the kernel: the victim's 200M will be
            uncharged from t by the time the engine looks (after the decision's snapshot)."""

            name = "uncharges"

            def __call__(self, incident: cgoom.Incident,
                         candidates: Mapping[str, cgoom.CgroupSnapshot]) -> cgoom.Decision:
                if incident.cgroup == "/t":  # not the validation's trial incident
                    two.set("t", "memory.current", f"{100 * M}\n")
                return cgoom.PriorityPolicy()(incident, candidates)

        procs = FakeProcesses(two)
        rule = cgoom.Rule("r", "t", min_freed="50M", max_victims=2, policy=Uncharges())
        async with cgoom.open_handler(two.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            two.memory_event("t/lose", "high")
            record = await next_incident(handler)
        assert record.memory_before == 300 * M and record.memory_after == 100 * M
        assert [a.cgroup for a in record.actions if a.ok] == ["/t/lose"]


async def test_kill_without_cgroup_kill_before_5_14(tmp_path: object) -> None:
    tree = FakeCgroupTree(str(tmp_path), kernel=(5, 10))
    tree.add("t/keep", procs=[100], memory_current=10 * M).set_priority(100)
    tree.add("t/lose", procs=[300], memory_current=90 * M).set_memory_oom_group(True)
    tree.add_process(100, rss=10 * M)
    tree.add_process(300, rss=90 * M)
    assert "cgroup.kill" not in tree.cgroup("t/lose").interface_files()
    procs = FakeProcesses(tree)
    async with cgoom.open_handler(tree.hierarchy, cgoom.Rule("r", "t"), own_cgroup="/",
                                  processes=procs) as handler:
        tree.memory_event("t/lose", "oom")
        record = await next_incident(handler)
    assert procs.killed == [300]
    assert record.victim is not None and "no cgroup.kill on this kernel" in record.victim.detail
    assert not tree.cgroup("t/lose").cgroup_freeze()  # thawed


async def test_kernel_kills_during_an_incident_are_in_its_record(two: FakeCgroupTree) -> None:
    """The victim does not die (the kill is not confirmed for 0.5 s); meanwhile the kernel's
    OOM killer counts a kill in the domain: the record carries the oom_kill delta."""
    procs = FakeProcesses(two)
    procs.survive.update({300, 301})
    two.cgroup("t/lose").set_memory_oom_group(False)
    rule = cgoom.Rule("r", "t", confirm_timeout=0.5, max_victims=1)
    async with cgoom.open_handler(two.hierarchy, rule, own_cgroup="/",
                                  processes=procs) as handler:
        two.memory_event("t/lose", "high")
        await until(lambda: procs.killed, 5, what="the kill")
        two.memory_event("t/lose", "oom_kill")
        record = await next_incident(handler)
    assert record.kernel_oom_kills == 1
    assert "meanwhile the kernel's OOM killer: 1 oom_kill event(s)" in record.explain()


class TestProcessConnector:
    """The decoding and the bookkeeping of one kill (the socket itself is tested on the real
    kernel: tests/integration/test_machine_real.py)."""

    def test_events_from_pyroute2_messages(self) -> None:
        from cgoom._kernel._netlink import ProcessExit, ProcessFork, _event

        exit_ = {"event": "PROC_EVENT_EXIT", "process_pid": 7, "process_tgid": 7,
                 "parent_tgid": 1, "exit_code": 9, "timestamp_ns": 5}
        assert _event(exit_) == ProcessExit(7, 1, 9, 5) and ProcessExit(7, 1, 9, 5).signal == 9
        assert ProcessExit(7, 1, 3 << 8, 5).signal is None  # exit(3)
        assert _event({**exit_, "process_pid": 8}) is None  # a thread of 7
        fork = {"event": "PROC_EVENT_FORK", "parent_tgid": 7, "child_pid": 9,
                "child_tgid": 9, "timestamp_ns": 6}
        assert _event(fork) == ProcessFork(7, 9, 6)
        assert _event({**fork, "child_tgid": 7}) is None  # a new thread
        assert _event({"event": "PROC_EVENT_EXEC"}) is None

    async def test_a_kill_watch(self) -> None:
        from cgoom._engine._executor import KillWatch as _KillWatch
        from cgoom._kernel._netlink import ProcessExit, ProcessFork

        watch = _KillWatch([10, 11], 100, "/t/lose", asyncio.get_running_loop())
        assert watch.see(ProcessExit(10, 1, 9, 50)) is None  # before the kill: not ours
        assert watch.see(ProcessFork(11, 12, 150)) == 12     # racing a whole kill
        assert watch.see(ProcessFork(99, 13, 150)) is None   # someone else's child
        for pid in (10, 11, 12):
            watch.see(ProcessExit(pid, 1, 9, 200))
        assert watch.all_exited.done()
        watch.raced.append(12)
        assert watch.summary() == ("; the process connector saw 3 of 3 exit(s) (3 by SIGKILL); "
                                   "1 fork(s) during the kill, racing it: killed 12")
        one = _KillWatch([10], 100, None, asyncio.get_running_loop())
        assert one.see(ProcessFork(10, 12, 150)) is None  # one process: its child is spared
        one.see(ProcessExit(10, 1, 0, 200))
        assert one.summary() == ("; the process connector saw 1 of 2 exit(s) (1 with exit "
                                 "code 0); 1 fork(s) during the kill")


class TestProtectSelf:
    def test_oom_score_adj_and_memory_min(self, tree: FakeCgroupTree) -> None:
        tree.add("cgoom.service")
        with open(f"{tree.base}/proc/self/cgroup", "w") as f:
            f.write("0::/cgoom.service\n")
        done = cgoom.protect_self(tree.hierarchy, memory_min="16M")
        assert (done.oom_score_adj, done.memory_min, done.locked) == (-1000, 16 * M, None)
        with open(f"{tree.base}/proc/self/oom_score_adj") as f:
            assert f.read().startswith("-1000")
        assert tree.cgroup("cgoom.service").memory_min() == 16 * M
        assert done.notes[1] == "memory.min of /cgoom.service set to 16.0M"

    def test_what_could_not_be_done_is_said(self, tree: FakeCgroupTree) -> None:
        tree.add("a/cgoom")
        with open(f"{tree.base}/proc/self/cgroup", "w") as f:
            f.write("0::/a/cgoom\n")
        tree.hierarchy.options = frozenset({"nsdelegate"})
        done = cgoom.protect_self(tree.hierarchy, oom_score_adj=False, memory_min="8M")
        assert done.oom_score_adj is None and done.memory_min == 8 * M
        assert "but /a has memory.min 0 and the hierarchy is not mounted with " \
               "memory_recursiveprot" in done.notes[1]
        with open(f"{tree.base}/proc/self/cgroup", "w") as f:
            f.write("0::/\n")
        done = cgoom.protect_self(tree.hierarchy, oom_score_adj=False, memory_min="8M")
        assert done.memory_min is None
        assert "the root cgroup, which has no memory.min" in done.notes[0]
        with pytest.raises(cgoom.InvalidValue, match="memory_min"):
            cgoom.protect_self(tree.hierarchy, memory_min="lots")


class TestTaskstats:
    @staticmethod
    def stats(version: int, pid: int, reclaim_ns: int, thrashing_ns: int) -> bytes:
        raw = bytearray(400)
        struct.pack_into("=H", raw, 0, version)
        struct.pack_into("=Q", raw, 56, 5_000_000)  # swap-in
        struct.pack_into("=I", raw, 128, pid)
        struct.pack_into("=Q", raw, 320, reclaim_ns)
        struct.pack_into("=Q", raw, 336, thrashing_ns)
        struct.pack_into("=Q", raw, 360, 1_000_000)
        return bytes(raw)

    def test_the_fixed_prefix_of_every_version(self) -> None:
        from cgoom._kernel._taskstats import MemoryStall, parse_stats

        assert parse_stats(self.stats(13, 42, 812_000_000, 3_000_000)) == MemoryStall(
            42, 812.0, 3.0, 5.0, 1.0)
        old = parse_stats(self.stats(8, 42, 1_000_000, 3_000_000))
        assert old is not None and old.thrashing_ms is None and old.compact_ms is None
        assert parse_stats(b"\0" * 100) is None
        assert str(MemoryStall(1, 812.4, 3.0, 0.0, None)) == \
            "pid 1: reclaim 812 ms, thrashing 3 ms, swap-in 0 ms"

    def test_exit_messages(self) -> None:
        from cgoom._kernel._taskstats import parse_exit

        def nla(kind: int, payload: bytes) -> bytes:
            return struct.pack("=HH", 4 + len(payload), kind) + payload + \
                b"\0" * (-len(payload) % 4)

        def message(family: int, aggr: int, pid: int, stats: bytes) -> bytes:
            body = struct.pack("=BBH", 2, 1, 0) + nla(aggr, nla(1 if aggr == 4 else 2,
                                                                  struct.pack("=I", pid))
                                                       + nla(3, stats))
            return struct.pack("=IHHII", 16 + len(body), family, 0, 0, 0) + body

        data = (message(31, 4, 7, self.stats(13, 7, 1_000_000, 0))
                + message(31, 5, 7, self.stats(13, 7, 2_000_000, 0))
                + message(99, 4, 8, self.stats(13, 8, 0, 0)))  # another family: skipped
        got = parse_exit(data, 31)
        assert [(p, s.pid, s.reclaim_ms) for p, s in got] == [(False, 7, 1.0), (True, 7, 2.0)]
        error = struct.pack("=IHHII", 36, 2, 0, 0, 0) + struct.pack("=i", -1) + b"\0" * 16
        with pytest.raises(OSError, match="taskstats: Operation not permitted"):
            parse_exit(error, 31)

    async def test_a_kill_watch_keeps_the_process_totals(self) -> None:
        from cgoom._engine._executor import KillWatch as _KillWatch
        from cgoom._kernel._taskstats import MemoryStall

        watch = _KillWatch([7, 8], 0, "/t", asyncio.get_running_loop())
        watch.stall(True, MemoryStall(7, 800.0, 10.0, 0.0, 0.0))
        watch.stall(False, MemoryStall(7, 1.0, 0.0, 0.0, 0.0))  # its leader thread alone
        watch.stall(False, MemoryStall(8, 2.0, None, 0.0, None))
        watch.stall(True, MemoryStall(99, 5.0, 0.0, 0.0, 0.0))  # not ours
        assert watch.summary().endswith(
            "; memory stall before death (taskstats): pid 7: reclaim 800 ms, thrashing 10 ms, "
            "swap-in 0 ms, compaction 0 ms; pid 8: reclaim 2 ms, swap-in 0 ms")


async def test_a_child_removed_behind_our_back_does_not_stop_the_tripwires(
        machine: FakeCgroupTree) -> None:
    """web vanishes between the list of children and the re-arm: the others are re-armed,
    and memory short still fires the rule."""
    rule = cgoom.Rule("machine", "/", available_below=0.1)
    async with cgoom.open_handler(machine.hierarchy, rule, own_cgroup="/",
                                  processes=FakeProcesses(machine)) as handler:
        machine.fs.remove_pid(200)
        machine.remove_behind_our_back("web")
        machine.set("hog", "memory.current", f"{1000 * M}\n")
        machine.memory_event("hog", "high")
        await until(lambda: machine.cgroup("hog").memory_high() not in ("max",)
                         and machine.cgroup("hog").memory_high() > 1000 * M, 5, what="re-armed")
        machine.set_meminfo(total=4 * G, available=100 * M)
        machine.memory_event("hog", "high")
        record = await next_incident(handler)
    assert record.victim is not None and record.victim.cgroup == "/hog"
    assert machine.cgroup("db").memory_high() == "max"


def test_arming_skips_a_vanished_child(machine: FakeCgroupTree) -> None:
    from cgoom._engine._tripwire import Tripwires

    wires = Tripwires(machine.hierarchy, "/", 0.1)
    info, problems = wires.arm(["/gone", "/hog"])
    assert problems == [] and set(wires.armed) == {"/hog"}
    assert info.available == 3 * G
    assert wires.restore() == [] and machine.cgroup("hog").memory_high() == "max"


async def test_tripwires_come_back_after_another_rules_incident(
        tree: FakeCgroupTree) -> None:
    """Another rule's incident holds the domain when the hog's tripwire fires: the tripwire
    is released and left so while that incident runs (it decides for the domain; no re-arm
    churn), then re-armed when it ends."""
    import time

    for name, pid in (("db", 100), ("hog", 300)):
        tree.add(f"lab/{name}", procs=[pid], memory_current=100 * M)
        tree.add_process(pid, rss=100 * M)

    class Slow:
        name = "slow"

        def __call__(self, incident: cgoom.Incident,
                     candidates: Mapping[str, cgoom.CgroupSnapshot]) -> cgoom.Decision:
            if incident.cgroup == "/lab":
                time.sleep(0.5)
            return cgoom.PriorityPolicy()(incident, candidates)

    events = cgoom.Rule("events", "lab", on="max", action="notify", cooldown=0,
                        policy=Slow(), budget=2.0)
    machine = cgoom.Rule("machine", "lab", available_below=0.1, cooldown=0)
    async with cgoom.open_handler(tree.hierarchy, events, machine, own_cgroup="/",
                                  processes=FakeProcesses(tree)) as handler:
        assert tree.cgroup("lab/hog").memory_high() != "max"
        tree.memory_event("lab", "max")
        await until(lambda: handler.statistics().in_flight == 1, 5, what="the incident")
        tree.memory_event("lab/hog", "high")
        await until(lambda: handler.statistics().tripwire_trips == 1, 5, what="the trip")
        await settle(0.1)
        assert tree.cgroup("lab/hog").memory_high() == "max"  # released, left to the incident
        record = await next_incident(handler)
        assert record.rule == "events"
        await until(lambda: tree.cgroup("lab/hog").memory_high() != "max", 5,
                    what="the tripwire re-armed")


class TestSustainedAndUsage:
    def test_sustained_high(self) -> None:
        state = RuleState(cgoom.Rule("r", "t", on="high", window=1.0, sustained=3.0,
                                     cooldown=0))
        assert not state.observe({"high": 5}, 10.0)   # the run begins
        assert not state.observe({"high": 5}, 10.9)
        assert not state.observe({"high": 5}, 12.5)   # a gap over the window: begins again
        assert not state.observe({"high": 5}, 13.4)
        assert not state.observe({"high": 5}, 14.3)
        assert not state.observe({"high": 1}, 15.2)   # 2.7 s
        assert state.observe({"high": 1}, 15.6)       # 3.1 s of events without a gap
        state.finished(15.7)
        assert not state.observe({"high": 1}, 15.8)   # a new run after the incident

    async def test_usage_above_a_fraction_of_memory_max(self, two: FakeCgroupTree) -> None:
        """t: memory.max 400M, usage 300M; usage_above=0.9 arms memory.high at 360M; the
        first high event with usage at 380M releases it and fires the rule."""
        procs = FakeProcesses(two)
        rule = cgoom.Rule("usage", "t", usage_above=0.9, cooldown=0)
        assert rule.on == frozenset()
        async with cgoom.open_handler(two.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            level = 360 * M // 4096 * 4096
            assert two.cgroup("t").memory_high() == level
            assert any("usage tripwire on /t at 360.0M (90% of memory.max" in line
                       for line in handler.setup), handler.setup
            two.memory_event("t/keep", "high")  # a descendant's own: usage still 300M
            await until(lambda: handler.statistics().tripwire_trips == 1, 5, what="trip")
            await until(lambda: two.cgroup("t").memory_high() == level, 5, what="re-armed")
            assert handler.statistics().incidents == 0
            two.set("t", "memory.current", f"{380 * M}\n")
            two.memory_event("t/lose", "high")
            record = await next_incident(handler)
            assert two.cgroup("t").memory_high() in ("max", level)  # released, or re-armed after
        assert record.trigger.text.startswith("usage 380.0M >= 90% of memory.max (360.0M, "
                                              "tripwire on /t)"), record.trigger
        assert (record.trigger.kind, record.trigger.cgroup, record.trigger.reading) == (
            "usage", "/t", 380 * M)
        assert record.victim is not None and record.victim.cgroup == "/t/lose"
        assert two.cgroup("t").memory_high() == "max"  # restored

    async def test_usage_above_without_memory_max_is_said(self, tree: FakeCgroupTree) -> None:
        tree.add("t/a")
        async with cgoom.open_handler(tree.hierarchy, cgoom.Rule("u", "t", usage_above=0.9),
                                      own_cgroup="/", processes=FakeProcesses(tree)) as h:
            assert any("no usage tripwire: /t has no memory.max" in line for line in h.setup)


async def test_an_incident_that_fails_inside_the_engine_still_yields_a_record(
        two: FakeCgroupTree, monkeypatch: pytest.MonkeyPatch) -> None:
    procs = FakeProcesses(two)
    async with cgoom.open_handler(two.hierarchy, cgoom.Rule("r", "t"), own_cgroup="/",
                                  processes=procs) as handler:
        def broken(*args: object, **kwargs: object) -> object:
            raise cgoom.CgroupGone("/t vanished mid-snapshot")

        monkeypatch.setattr(handler._snapshotter, "snapshot", broken)
        two.memory_event("t/lose", "high")
        record = await next_incident(handler)
        assert handler.statistics().errors == 1
        assert handler.statistics().fallbacks == 0
    assert record.actions[0].action == "error" and procs.killed == []
    assert "the incident failed: CgroupGone: /t vanished mid-snapshot" in record.explain()


def test_a_tripwire_steps_up_at_once(machine: FakeCgroupTree) -> None:
    from cgoom._engine._tripwire import Tripwires
    from cgoom._kernel._meminfo import MemInfo

    wires = Tripwires(machine.hierarchy, "/", 0.1)
    wires.arm(["/db", "/hog"])
    before = wires.armed["/hog"]
    machine.set("hog", "memory.current", f"{before + M}\n")  # past it: it fired
    info = MemInfo(total=4 * G, available=2 * G)
    assert wires.step("/hog", info)
    share = (2 * G - int(4 * G * 0.1)) // 2
    assert wires.armed["/hog"] == machine.cgroup("hog").memory_high() == \
        -(-(before + M + share) // 4096) * 4096  # a page up
    machine.set("hog", "memory.current", f"{100 * M}\n")
    assert not wires.step("/hog", MemInfo(total=4 * G, available=int(0.1 * 4 * G)))  # no raise
    assert not wires.step("/web", info)  # not armed
    wires.restore()


def test_an_arm_older_than_a_step_leaves_that_tripwire_alone(machine: FakeCgroupTree,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             ) -> None:
    """The worker's re-arm read MemAvailable and usages, then the loop stepped the hog's
    tripwire up with newer figures: the re-arm must not overwrite it with its stale level."""
    from cgoom._engine import _tripwire
    from cgoom._kernel._meminfo import MemInfo

    wires = _tripwire.Tripwires(machine.hierarchy, "/", 0.1)
    wires.arm(["/db", "/hog"])
    real_read = _tripwire.read_meminfo

    stepped: list[int] = []

    def read_then_step(h: object) -> MemInfo:
        info = real_read(machine.hierarchy)  # the arm's (stale) figures: 3 GiB available
        machine.set("hog", "memory.current", f"{wires.armed['/hog'] + M}\n")
        assert wires.step("/hog", MemInfo(total=4 * G, available=500 * M))
        stepped.append(wires.armed["/hog"])
        return info

    monkeypatch.setattr(_tripwire, "read_meminfo", read_then_step)
    wires.arm(["/db", "/hog"])
    assert wires.armed["/hog"] == stepped[0] == machine.cgroup("hog").memory_high()
    wires.restore()


async def test_a_fork_racing_a_whole_kill_is_killed_unless_minus_1000(
        two: FakeCgroupTree) -> None:
    """The process connector reports forks during a whole kill of /t/lose: a child inside
    the subtree is killed; one with oom_score_adj -1000 (a spared process's child) is not,
    nor one outside the subtree."""
    from cgoom._engine._executor import KillWatch as _KillWatch
    from cgoom._kernel._netlink import ProcessFork

    procs = FakeProcesses(two)
    two.add_process(310, oom_score_adj=0)
    two.add_process(311, oom_score_adj=-1000)
    two.add_process(312)
    two.cgroup("t/lose").attach(310)
    two.cgroup("t/lose").attach(311)
    two.cgroup("t/keep").attach(312)
    handler = cgoom.Handler(two.hierarchy, [cgoom.Rule("r", "t")], own_cgroup="/",
                            processes=procs)
    watch = _KillWatch([300, 301], 0, "/t/lose", asyncio.get_running_loop())
    handler._executor._watches.append(watch)
    for child in (310, 311, 312):
        handler._executor._on_proc_event(ProcessFork(300, child, 10))
    assert procs.killed == [310] and watch.raced == [310]


async def test_freeze_never_reaches_child_cgroups_of_an_internal_unit(
        tree: FakeCgroupTree) -> None:
    """The victim is a process beside child cgroups (an internal unit of /t/mid): freezing
    /t/mid would freeze /t/mid/child too, so it is refused, and nothing is frozen."""
    tree.add("t/mid/child", procs=[100], memory_current=10 * M)
    tree.add_process(100, rss=10 * M)
    tree.cgroup("t/mid/child").set_priority(100)
    tree.set("t/mid", "cgroup.procs", "300\n")  # beside the child, as the kernel allows
    tree.add_process(300, rss=200 * M)
    tree.set("t/mid", "memory.current", f"{210 * M}\n")
    rule = cgoom.Rule("r", "t", action="freeze")
    async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/") as handler:
        tree.memory_event("t/mid", "high")
        record = await next_incident(handler)
    assert record.decision.first is not None and record.decision.first.pid == 300
    assert not record.actions[0].ok, record.explain()
    assert "also has child cgroups (/t/mid/child)" in record.actions[0].detail
    assert not tree.cgroup("t/mid").cgroup_freeze()


def test_a_psi_rule_that_loses_its_trigger_says_so(tree: FakeCgroupTree,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The domain of a PSI rule is removed: the kernel ends the trigger (EPOLLERR), and the
    handler says the rule lost it instead of going quiet."""
    tree.add("t/a")
    trigger = cgoom.PressureTrigger("some", 150_000, 2_000_000)
    handler = cgoom.Handler(tree.hierarchy, [cgoom.Rule("p", "t", pressure=trigger)],
                            own_cgroup="/")
    handler._on_event(cgoom.PressureTriggerEnded("/t", trigger, "the cgroup was removed", 1.0))
    assert "rule 'p' no longer has its PSI trigger: the cgroup was removed" in caplog.text


async def test_reconfigure_is_all_or_nothing(tree: FakeCgroupTree) -> None:
    """A running handler takes new decision fields and priorities in place (the rule state
    object is kept); an added rule, a moved domain or a policy that does not load is
    refused before anything changes, naming the rule and the reason."""
    tree.add("t/a", procs=[100], memory_current=10 * M)
    tree.add_process(100, rss=10 * M)
    rule = cgoom.Rule("t", "t", action="notify")
    async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/", kmsg=None,
                                  proc_events=False,
                                  processes=FakeProcesses(tree)) as handler:
        state = handler._states["t"]
        changed = handler.reconfigure([cgoom.Rule("t", "t", action="notify", cooldown=9)],
                                      priorities=[("t/a", 5)])
        assert changed == ["rule 't': cooldown changed", "priorities: 1 pattern(s), were 0"]
        assert handler._states["t"] is state and state.rule.cooldown == 9
        for rules, message in (
                ([cgoom.Rule("t", "t"), cgoom.Rule("u", "t")], r"rule\(s\) added: u"),
                ([cgoom.Rule("t", "/u")], r"rule 't': domain: '/t' -> '/u'"),
                ([cgoom.Rule("t", "t", usage_above=0.9)],
                 r"rule 't': usage_above: None -> 0.9"),
                ([cgoom.Rule("t", "t", policy="no-such-policy")], "no-such-policy")):
            with pytest.raises(cgoom.CgoomError, match=message):
                handler.reconfigure(rules, priorities=[("t/a", 1)])
            assert handler.rules[0].cooldown == 9
            assert handler._snapshotter.priorities == (("t/a", 5),)


async def test_an_early_trigger_and_a_tripwire_on_one_cgroup(machine: FakeCgroupTree) -> None:
    """A machine rule listed before a rule with an early trigger on a top-level cgroup: the
    early trigger is set first, so the tripwire finds it (and leaves it as that cgroup's own
    tripwire) instead of being overwritten by it and, on release, writing "max" over it."""
    db = machine.hierarchy.cgroup("db")
    db.set_memory_max(200 * M)
    rules = [cgoom.Rule("m", "/", available_below=0.1, action="notify"),
             cgoom.Rule("db", "db", high_below_max=0.1, action="notify")]
    async with cgoom.open_handler(machine.hierarchy, *rules, own_cgroup="/", kmsg=None,
                                  proc_events=False) as handler:
        assert db.memory_high() == 180 * M, handler.setup
        assert machine.hierarchy.cgroup("hog").memory_high() != "max"  # the others are armed
    assert db.memory_high() == "max"


async def test_oom_group_patterns_make_pods_units_as_they_appear(tree: FakeCgroupTree) -> None:
    """kubernetes-qos may only choose units; the kubelet leaves pods without
    memory.oom.group, so a rule's oom_group patterns set it at start and on each pod that
    appears (not on containers), and put it back on stop."""
    pod = "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice"
    tree.add(pod.format("a") + "/ctr", procs=[10], memory_current=50 * M)
    tree.set(pod.format("a"), "memory.current", f"{50 * M}\n")
    rule = cgoom.Rule("pods", "kubepods.slice", policy="kubernetes-qos", action="notify",
                      oom_group="kubepods.slice/*/kubepods-*-pod*.slice")
    async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/", kmsg=None,
                                  proc_events=False) as handler:
        assert tree.cgroup(pod.format("a")).memory_oom_group()
        tree.add(pod.format("b") + "/ctr", procs=[20], memory_current=80 * M)
        tree.set(pod.format("b"), "memory.current", f"{80 * M}\n")
        await until(lambda: tree.cgroup(pod.format("b")).memory_oom_group(),
                    5, what="the new pod's memory.oom.group")
        assert not tree.cgroup(pod.format("b") + "/ctr").memory_oom_group()
        tree.memory_event("kubepods.slice", "oom")
        record = await next_incident(handler)
        assert [v.cgroup for v in record.decision.victims] == [
            "/" + pod.format("b"), "/" + pod.format("a")], record.explain()
        assert record.decision.policy == "kubernetes-qos"
    assert not tree.cgroup(pod.format("a")).memory_oom_group()
    assert not tree.cgroup(pod.format("b")).memory_oom_group()


def test_oom_group_patterns_are_checked() -> None:
    with pytest.raises(cgoom.InvalidValue, match="oom_group pattern '/': a glob"):
        cgoom.Rule("r", "t", oom_group=["/"])
    assert cgoom.Rule("r", "t", oom_group="/a/*").oom_group == ("a/*",)


async def test_a_dry_run_writes_nothing(machine: FakeCgroupTree,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """issue 18: a dry run is a first trial on a production host: no memory.high (early
    triggers, tripwires), no memory.oom.group, no xattr, no freeze, ever. It decides as if
    its set-up were in place (units whole where it would have set memory.oom.group), sees a
    machine rule's shortage by polling MemAvailable, and says what it cannot see."""
    from cgoom.testing import FakeCgroupFS

    machine.add("pods/pod-a", procs=[301], memory_current=100 * M)
    machine.add_process(301, name="pod-a", rss=100 * M)
    machine.cgroup("pods").set_memory_max(500 * M)
    machine.cgroup("db").set_memory_max(200 * M)
    writes: list[tuple[str, str]] = []
    recording = True
    for name in ("write", "setxattr", "mkdir", "rmdir"):
        real = getattr(FakeCgroupFS, name)

        def spy(self: FakeCgroupFS, path: str, *args: object, _real: Any = real,
                _name: str = name) -> object:
            if recording:
                writes.append((_name, path))
            return _real(self, path, *args)
        monkeypatch.setattr(FakeCgroupFS, name, spy)
    rules = [cgoom.Rule("m", "/", available_below=0.2, dry_run=True),
             cgoom.Rule("pods", "pods", on="max", high_below_max=0.1,
                        oom_group_leaves=True, oom_group="pods/pod-*", dry_run=True),
             cgoom.Rule("db", "db", usage_above=0.5, dry_run=True)]
    async with cgoom.open_handler(machine.hierarchy, *rules, own_cgroup="/", kmsg=None,
                                  proc_events=False, processes=FakeProcesses(machine)) as h:
        said = "\n".join(h.setup)
        assert "pods: dry run: memory.high of /pods not set (it would be 450.0M)" in said
        assert "pods: dry run: memory.oom.group not set on any cgroup of /pods; the " \
            "decisions are made as if it were" in said
        assert "db: dry run: no usage tripwire on /db (it writes memory.high): the rule " \
            "cannot see usage cross its level in a dry run" in said
        assert "m: dry run: no memory.high tripwires (they write memory.high); " \
            "MemAvailable is polled every 0.1-1 s instead" in said
        machine.memory_event("pods", "max")
        record = await next_incident(h)
        first = record.decision.first
        assert record.dry_run and first is not None and first.cgroup == "/pods/pod-a"
        assert first.whole and "memory.oom.group=1" in first.reason  # as if it were set
        recording = False
        machine.add("pods/pod-b", procs=[302], memory_current=10 * M)  # a pod appears
        recording = True
        machine.set_meminfo(total=4 * G, available=400 * M)  # under 20%: polled, not wired
        record = await next_incident(h, 5)
        assert record.rule == "m" and record.dry_run and "poll" in str(record.trigger)
    assert writes == [], writes
    assert machine.cgroup("pods").memory_high() == "max"
    assert not machine.cgroup("pods/pod-a").memory_oom_group()
    assert not machine.cgroup("pods/pod-b").memory_oom_group()
    assert all(machine.cgroup(n).memory_high() == "max" for n in ("db", "web", "hog", "pods"))
