"""The engine on the fake cgroupfs: rules fire on memory.events, the decision is made, the
victim is killed (fake: nothing real is signalled) and confirmed, and a record comes out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping

import pytest

import cgoom
import cgoom._engine._handler
from cgoom import CgroupSnapshot as S
from cgoom._engine._rules import RuleState
from cgoom.testing import FakeCgroupFS, FakeCgroupTree, FakeProcesses, next_incident

M = 1 << 20


class TestRules:
    def test_threshold_window_cooldown_and_folding(self) -> None:
        state = RuleState(cgoom.Rule("r", "t", on="high", threshold=3, window=1.0, cooldown=5))
        assert not state.observe({"high": 2}, 10.0)
        assert not state.observe({"max": 9}, 10.1)           # not a trigger of this rule
        assert not state.observe({"high": 1}, 11.5)          # the first two left the window
        assert state.observe({"high": 2}, 11.6)              # 1 + 2 within 1 s
        assert not state.observe({"high": 50}, 11.7)         # in flight: folded
        assert state.finished(12.0) == 50
        assert not state.observe({"high": 9}, 16.9)          # resting until 17.0
        assert state.observe({"high": 3}, 17.1)

    @pytest.mark.parametrize(("kw", "match"), [
        ({"on": "low"}, "memory.events counters to fire on are"),
        ({"threshold": 0}, "threshold=0, a positive number"),
        ({"cooldown": -1}, "cooldown=-1"),
        ({"dry_run": "yes"}, "dry_run"),
    ])
    def test_bad_rules_are_refused(self, kw: dict[str, object], match: str) -> None:
        with pytest.raises((cgoom.InvalidValue, TypeError), match=match):
            cgoom.Rule("r", "t", **kw)  # type: ignore[arg-type]


@pytest.fixture
def inversion(tree: FakeCgroupTree) -> FakeCgroupTree:
    """db important, web less, batch the hog; all oom.group units."""
    for name, pid, prio, usage in (("db", 100, 100, 140), ("web", 200, 50, 50),
                                   ("batch", 300, 0, 110)):
        c = tree.add(f"t/{name}", procs=[pid], memory_current=usage * M)
        c.set_priority(prio)
        c.set_memory_oom_group(True)
        tree.add_process(pid, name=name, rss=usage * M)
    tree.set("t", "memory.current", f"{300 * M}\n")
    return tree


class TestHandler:
    async def test_kills_the_low_priority_cgroup_whole(self, inversion: FakeCgroupTree) -> None:
        rule = cgoom.Rule("inversion", "t", on="high")
        async with cgoom.open_handler(inversion.hierarchy, rule, own_cgroup="/",
                                      processes=FakeProcesses(inversion)) as handler:
            inversion.memory_event("t/batch", "high", 5)
            record = await next_incident(handler)
            assert handler.statistics().kills == 1
        assert record.victim is not None and record.victim.cgroup == "/t/batch"
        assert "populated 0" in record.victim.detail and record.victim.confirmed_ms is not None
        assert inversion.cgroup("t/batch").cgroup_procs() == ()
        assert inversion.cgroup("t/db").cgroup_procs() == (100,)
        assert inversion.cgroup("t/web").cgroup_procs() == (200,)
        t = record.timings
        assert t.snapshot_ms >= 0 and t.kill_ms is not None and t.confirmed_ms is not None
        assert t.started_ms is not None and 0 <= t.started_ms <= t.snapshot_ms <= t.kill_ms
        assert t.kill_ms <= t.confirmed_ms
        assert "timings: started " in record.explain()
        assert record.memory_before == 300 * M
        assert record.trigger == cgoom.Trigger("memory.events", "/t memory.events: high +5",
                                               "/t", {"high": 5})
        assert {c.path for c in record.candidates} == {"/t", "/t/db", "/t/web", "/t/batch"}
        line = json.loads(record.to_json())
        assert line["decision"]["victims"][0]["cgroup"] == "/t/batch"
        assert "notification to kill" in record.explain()

    async def test_the_record_says_what_the_kill_was_expected_to_free(
            self, inversion: FakeCgroupTree) -> None:
        # batch: 110M charged, of it 30M page cache; 12M of its memory in swap.
        inversion.set_memory_stat("t/batch", anon=80 * M, file=30 * M)
        inversion.set("t/batch", "memory.swap.current", f"{12 * M}\n")
        inversion.set("t", "memory.swap.current", f"{12 * M}\n")
        async with cgoom.open_handler(inversion.hierarchy, cgoom.Rule("r", "t", on="high"),
                                      own_cgroup="/",
                                      processes=FakeProcesses(inversion)) as handler:
            inversion.memory_event("t/batch", "high")
            record = await next_incident(handler)
        assert record.victim is not None and record.victim.cgroup == "/t/batch"
        assert record.expected_free == 92 * M and record.swap_before == 12 * M
        # The fake kernel uncharges nothing when processes die: nothing came back.
        assert record.memory_after == 300 * M and record.swap_after == 12 * M
        assert "  freed: expected to free 92.0M; 0B RAM and 0B swap back in " in \
            record.explain()
        assert "usage 110.0M (freeable 92.0M)" in record.decision.victims[0].reason
        from cgoom._ops._recordlog import record_from_json, record_to_json
        back = record_from_json(record_to_json(record))  # the record log keeps them
        assert isinstance(back, cgoom.IncidentRecord) and back.freed() == record.freed()

    async def test_the_freed_timeline_reads_from_before_the_kill_to_after_it(
            self, inversion: FakeCgroupTree, monkeypatch: pytest.MonkeyPatch) -> None:
        kill = FakeCgroupFS._write_cgroup_kill

        def uncharging(fs: FakeCgroupFS, directory: str, value: str, path: str) -> None:
            """batch's cgroup.kill gives back its 110M (t: 300M to 190M) and 12M of swap,
            as the real kernel does; the fake kernel alone uncharges nothing."""
            kill(fs, directory, value, path)
            inversion.set("t", "memory.current", f"{190 * M}\n")
            inversion.set("t", "memory.swap.current", "0\n")

        monkeypatch.setattr(FakeCgroupFS, "_write_cgroup_kill", uncharging)
        inversion.set("t", "memory.swap.current", f"{12 * M}\n")
        async with cgoom.open_handler(inversion.hierarchy, cgoom.Rule("r", "t", on="high"),
                                      own_cgroup="/",
                                      processes=FakeProcesses(inversion)) as handler:
            inversion.memory_event("t/batch", "high")
            record = await next_incident(handler)
        timeline = record.freed_timeline
        assert record.victim is not None and record.victim.cgroup == "/t/batch"
        # The first reading before the kill, the last after it, and 50 ms of readings that
        # agreed before it stopped.
        assert (timeline[0].ms, timeline[0].ram, timeline[0].swap) == (0, 300 * M, 12 * M)
        assert (timeline[-1].ram, timeline[-1].swap) == (190 * M, 0)
        assert timeline[-1].ms >= 50 and all(s.available is None for s in timeline)
        explained = record.explain()
        assert f"  freed: expected to free 110.0M; 110.0M RAM and 12.0M swap back in " \
            f"{timeline[1].ms:.1f} ms\n" in explained
        assert "  timeline: 0.0 ms 300.0M/12.0M, " in explained
        assert f"{timeline[1].ms:.1f} ms 190.0M/0B" in explained
        from cgoom._ops._recordlog import record_from_json, record_to_json
        back = record_from_json(record_to_json(record))  # the record log keeps them
        assert isinstance(back, cgoom.IncidentRecord) and back.freed_timeline == timeline
        assert isinstance(back.freed_timeline[0], cgoom.FreedSample)

    async def test_a_machine_rule_timeline_has_memavailable(
            self, inversion: FakeCgroupTree) -> None:
        inversion.set_meminfo(total=1000 * M, available=50 * M)
        rule = cgoom.Rule("m", "t", available_below=0.1, cooldown=0)
        async with cgoom.open_handler(inversion.hierarchy, rule, own_cgroup="/",
                                      processes=FakeProcesses(inversion)) as handler:
            record = await next_incident(handler)
        assert record.kills == 1 and record.freed_timeline
        assert all(s.available == 50 * M for s in record.freed_timeline)

    async def test_one_process_through_the_process_control(self, tree: FakeCgroupTree) -> None:
        tree.add("t/db", procs=[100], memory_current=100 * M)
        tree.add("t/batch", procs=[300, 301], memory_current=60 * M)
        tree.cgroup("t/db").set_priority(100)
        tree.add_process(100, rss=100 * M)
        tree.add_process(300, rss=50 * M, start_time=777)
        tree.add_process(301, rss=10 * M)
        procs = FakeProcesses(tree)
        async with cgoom.open_handler(tree.hierarchy, cgoom.Rule("r", "t"), own_cgroup="/",
                                      processes=procs) as handler:
            tree.memory_event("t/batch", "max")
            record = await next_incident(handler)
        assert procs.killed == procs.released == [300]
        assert record.victim is not None and record.victim.pid == 300
        assert "process_mrelease" in record.victim.detail and "exited" in record.victim.detail
        assert tree.cgroup("t/batch").cgroup_procs() == (301,)

    async def test_dry_run_kills_nothing(self, inversion: FakeCgroupTree) -> None:
        procs = FakeProcesses(inversion)
        rule = cgoom.Rule("r", "t", dry_run=True)
        async with cgoom.open_handler(inversion.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            inversion.memory_event("t/batch", "oom")
            record = await next_incident(handler)
        assert record.dry_run and record.victim is None and procs.killed == []
        assert record.decision.first is not None and record.decision.first.cgroup == "/t/batch"
        assert inversion.cgroup("t/batch").cgroup_procs() == (300,)
        assert handler.statistics().dry_runs == 1

    async def test_a_reused_pid_is_never_the_next_victim_s_death(
            self, tree: FakeCgroupTree) -> None:
        """The first victim's pid is reused between the decision and the kill: refused, and,
        memory being still short, the domain is decided afresh (not the decision's next
        victim taken): the process now in t/a, the lowest-ranked unit, is the one killed."""
        tree.add("t/a", procs=[300], memory_current=90 * M).set_priority(0)
        tree.add("t/b", procs=[400], memory_current=10 * M).set_priority(10)
        tree.add_process(300, rss=90 * M, start_time=1)
        tree.add_process(400, rss=10 * M, start_time=2)

        class Reuses:
            name = "reuses"

            def __call__(self, incident: cgoom.Incident,
                         candidates: Mapping[str, S]) -> cgoom.Decision:
                decision = cgoom.PriorityPolicy()(incident, candidates)
                if incident.cgroup == "/t":  # not the validation's trial incident
                    tree.add_process(300, rss=90 * M, start_time=99)  # the race, staged
                return decision

        procs = FakeProcesses(tree)
        rule = cgoom.Rule("r", "t", policy=Reuses())
        async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            tree.memory_event("t/a", "high")
            record = await next_incident(handler)
        assert [(a.ok, a.stale) for a in record.actions] == [(False, True), (True, False)]
        assert "pid 300 was reused (start time 1 is now 99)" in record.actions[0].detail
        assert procs.killed == [300]
        assert any("slipped away" in n and "decided afresh" in n
                   for n in record.decision.notes), record.decision.notes

    async def test_cooldown_and_one_incident_at_a_time(self, inversion: FakeCgroupTree) -> None:
        procs = FakeProcesses(inversion)
        rule = cgoom.Rule("r", "t", on="high", cooldown=60, dry_run=True)
        async with cgoom.open_handler(inversion.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            inversion.memory_event("t/batch", "high")
            await next_incident(handler)
            inversion.memory_event("t/batch", "high")
            await asyncio.sleep(0.2)
            assert handler.statistics().incidents == 1  # resting

    async def test_its_watcher_queues_nothing_nobody_reads(
            self, inversion: FakeCgroupTree) -> None:
        """The handler reacts in its watcher's listener: the watcher keeps no queue (it
        held up to 10,000 events nobody read, and dropped them on the loop)."""
        rule = cgoom.Rule("r", "t", on="max", dry_run=True)
        async with cgoom.open_handler(inversion.hierarchy, rule, own_cgroup="/") as handler:
            for _ in range(50):
                inversion.memory_event("t/web", "high")
            inversion.memory_event("t", "max")
            await next_incident(handler)
            stats = handler._watcher.statistics()  # type: ignore[union-attr]
        assert stats.events >= 2 and stats.queued == 0 and stats.dropped == 0

    async def test_own_cgroup_is_never_chosen(self, inversion: FakeCgroupTree) -> None:
        async with cgoom.open_handler(inversion.hierarchy, cgoom.Rule("r", "t"),
                                      own_cgroup="/t/batch",
                                      processes=FakeProcesses(inversion)) as handler:
            inversion.memory_event("t/web", "high")
            record = await next_incident(handler)
        assert record.victim is not None and record.victim.cgroup == "/t/web"

    def test_real_pidfds_refuse_a_fake_tree(self, tree: FakeCgroupTree) -> None:
        with pytest.raises(cgoom.CgoomError, match="refusing real pidfds"):
            cgoom.Pidfds(tree.hierarchy)

    def test_rules_are_checked_when_the_handler_is_made(self, tree: FakeCgroupTree) -> None:
        with pytest.raises(cgoom.PluginError, match="no policy named 'nope'"):
            cgoom.open_handler(tree.hierarchy, cgoom.Rule("r", "t", policy="nope"),
                               own_cgroup="/")
        with pytest.raises(cgoom.InvalidValue, match="unique"):
            cgoom.open_handler(tree.hierarchy, cgoom.Rule("r", "t"), cgoom.Rule("r", "u"),
                               own_cgroup="/")


class TestEarlyTrigger:
    async def test_set_up_and_restored(self, inversion: FakeCgroupTree) -> None:
        inversion.cgroup("t").set_memory_max("300M")
        for name in ("db", "web", "batch"):
            inversion.cgroup(f"t/{name}").set_memory_oom_group(False)
        rule = cgoom.Rule("r", "t", high_below_max=0.1, oom_group_leaves=True, action="notify")
        async with cgoom.open_handler(inversion.hierarchy, rule, own_cgroup="/") as handler:
            assert inversion.cgroup("t").memory_high() == 283115520  # 90% of 300M
            assert all(inversion.cgroup(f"t/{n}").memory_oom_group()
                       for n in ("db", "web", "batch"))
            assert ("memory.high of /t set to 270.0M (10% below memory.max 300.0M"
                    in handler.setup[0])
            assert handler.setup[1] == "r: memory.oom.group=1 on 3 leaf cgroup(s) of /t"
        assert inversion.cgroup("t").memory_high() == "max"
        assert not any(inversion.cgroup(f"t/{n}").memory_oom_group()
                       for n in ("db", "web", "batch"))

    async def test_oom_group_set_again_after_the_controller_comes_back(
            self, inversion: FakeCgroupTree, caplog: pytest.LogCaptureFixture) -> None:
        """-memory then +memory in /t's cgroup.subtree_control makes db, web and batch's
        memory files anew, memory.oom.group 0: the handler sets it again, and says so."""
        for name in ("db", "web", "batch"):
            inversion.cgroup(f"t/{name}").set_memory_oom_group(False)
        rule = cgoom.Rule("r", "t", oom_group_leaves=True, action="notify")
        async with cgoom.open_handler(inversion.hierarchy, rule, own_cgroup="/"):
            leaves = [inversion.cgroup(f"t/{n}") for n in ("db", "web", "batch")]
            assert all(c.memory_oom_group() for c in leaves)
            inversion.cgroup("t").disable_controllers("memory")
            await asyncio.sleep(0.1)
            inversion.cgroup("t").enable_controllers("memory")
            assert not any(c.memory_oom_group() for c in leaves)  # the kernel's defaults
            deadline = asyncio.get_running_loop().time() + 5
            while not all(c.memory_oom_group() for c in leaves):
                assert asyncio.get_running_loop().time() < deadline, caplog.text
                await asyncio.sleep(0.01)
        assert "/t cgroup.subtree_control was written" in caplog.text
        assert "memory.oom.group=1 on /t/batch" in caplog.text
        assert not any(c.memory_oom_group() for c in leaves)  # put back on stop

    async def test_writes_that_may_reclaim_go_through_the_writer_thread(
            self, inversion: FakeCgroupTree, monkeypatch: pytest.MonkeyPatch) -> None:
        """memory.high and memory.reclaim writes run on the engine's own writer thread, not
        on the loop, nor on the snapshotter's thread where a slow reclaim would delay a
        snapshot queued behind it at OOM time."""
        import threading

        threads: list[tuple[str, str]] = []
        write = FakeCgroupFS.write

        def spy(fs: FakeCgroupFS, path: str, data: str) -> None:
            if path.endswith(("memory.high", "memory.reclaim")):
                threads.append((path.rsplit("/", 1)[1], threading.current_thread().name))
            write(fs, path, data)

        monkeypatch.setattr(FakeCgroupFS, "write", spy)
        inversion.cgroup("t").set_memory_max("300M")
        rule = cgoom.Rule("r", "t", high_below_max=0.1, action="reclaim", reclaim="8M")
        async with cgoom.open_handler(inversion.hierarchy, rule, own_cgroup="/",
                                      processes=FakeProcesses(inversion)) as handler:
            inversion.memory_event("t", "high")
            record = await next_incident(handler)
        assert record.victim is not None and record.victim.action == "reclaim"
        assert [name for name, _ in threads] == ["memory.high", "memory.reclaim",
                                                 "memory.high"]  # set, reclaim, put back
        assert {thread for _, thread in threads} == {"cgoom-writer"}, threads

    async def test_no_memory_max_is_said_not_guessed(self, inversion: FakeCgroupTree) -> None:
        rule = cgoom.Rule("r", "t", high_below_max=0.1, action="notify")
        async with cgoom.open_handler(inversion.hierarchy, rule, own_cgroup="/") as handler:
            assert inversion.cgroup("t").memory_high() == "max"
        assert "has no memory.max, so memory.high was not set" in handler.setup[0]

    async def test_kept_when_asked(self, inversion: FakeCgroupTree) -> None:
        inversion.cgroup("t").set_memory_max("300M")
        rule = cgoom.Rule("r", "t", high_below_max=0.5, action="notify")
        async with cgoom.open_handler(inversion.hierarchy, rule, own_cgroup="/",
                                      restore=False):
            pass
        assert inversion.cgroup("t").memory_high() == 150 * M

    def test_fraction_is_checked(self) -> None:
        with pytest.raises(cgoom.InvalidValue, match=r"a fraction of memory\.max"):
            cgoom.Rule("r", "t", high_below_max=10)


class TestSparing:
    async def test_oom_score_adj_minus_1000_survives_a_whole_kill(
            self, inversion: FakeCgroupTree) -> None:
        """cgroup.kill would kill it; the kernel's memory.oom.group kill would not: cgoom
        freezes batch, kills the others by pidfd, spares it, thaws."""
        inversion.cgroup("t/batch").attach(301)
        inversion.add_process(301, name="guardian", oom_score_adj=-1000, rss=M)
        procs = FakeProcesses(inversion)
        async with cgoom.open_handler(inversion.hierarchy, cgoom.Rule("r", "t"),
                                      own_cgroup="/", processes=procs) as handler:
            inversion.memory_event("t/batch", "high")
            record = await next_incident(handler)
        victim = record.victim
        assert victim is not None and victim.cgroup == "/t/batch", record.explain()
        assert procs.killed == [300]
        assert inversion.cgroup("t/batch").cgroup_procs() == (301,)
        assert "1 with oom_score_adj -1000 spared (301)" in victim.detail
        assert "the killed exited" in victim.detail and victim.confirmed_ms is not None
        assert inversion.cgroup("t/batch").cgroup_freeze() is False  # thawed

    def test_without_process_control_it_refuses(self, inversion: FakeCgroupTree) -> None:
        from cgoom._engine._actions import kill_cgroup

        inversion.cgroup("t/batch").attach(301)
        inversion.add_process(301, oom_score_adj=-1000)
        victim = cgoom.Victim("/t/batch", 0, "x", True)
        result, handles = kill_cgroup(inversion.hierarchy, victim)
        assert not result.ok and handles == [] and "oom_score_adj -1000 (301)" in result.detail
        assert inversion.cgroup("t/batch").cgroup_procs() == (300, 301)


async def test_one_incident_per_domain_across_rules(inversion: FakeCgroupTree) -> None:
    """Two rules on one domain see the same event: one incident runs, and the other rule's
    count is folded into it (without the domain-wide check there would be two)."""
    first = cgoom.Rule("first", "t", on="high", dry_run=True, cooldown=60)
    second = cgoom.Rule("second", "t", on={"high", "max"}, dry_run=True, cooldown=60)
    async with cgoom.open_handler(inversion.hierarchy, first, second, own_cgroup="/") as h:
        inversion.memory_event("t/batch", "high")
        record = await next_incident(h)
        await asyncio.sleep(0.3)  # room for a second incident, were there one
        assert h.statistics().incidents == 1
    assert (record.rule, record.folded) == ("first", 1)


@pytest.fixture
def groups(tree: FakeCgroupTree) -> FakeCgroupTree:
    """A domain of 80 candidates in 4 groups of 20 (more than the engine snapshots inline),
    each an oom.group unit with one process; group g2 is the largest, its c45 the largest."""
    for i in range(80):
        usage = (50 if i == 45 else i % 7 + 1) * M
        c = tree.add(f"t/g{i // 20}/c{i}", procs=[1000 + i], memory_current=usage)
        c.set_memory_oom_group(True)
        tree.add_process(1000 + i, rss=usage)
    tree.set("t/g2", "memory.current", f"{500 * M}\n")
    return tree


class TestDescent:
    """For the priority policy, a large domain is read level by level (Google's descent):
    only the children of the cgroups it goes into. The first victim it vouches for; any
    next one comes from a snapshot of the whole domain."""

    async def test_reads_only_the_levels_it_goes_into(self, groups: FakeCgroupTree) -> None:
        async with cgoom.open_handler(groups.hierarchy, cgoom.Rule("r", "t", on="high"),
                                      own_cgroup="/", processes=FakeProcesses(groups)) as h:
            groups.memory_event("t/g2/c45", "high")
            record = await next_incident(h)
        assert record.victim is not None and record.victim.cgroup == "/t/g2/c45"
        assert len(record.candidates) == 1 + 4 + 20
        assert "read level by level: 25 of 85 cgroups" in "\n".join(record.decision.notes)
        assert [v.cgroup for v in record.decision.victims] == ["/t/g2/c45"]

    async def test_a_next_victim_comes_from_the_whole_domain(
            self, groups: FakeCgroupTree) -> None:
        # min_freed: the fake's memory.current does not fall after a kill, so a second
        # victim is needed: the full ranking's second, the largest left in g2.
        rule = cgoom.Rule("r", "t", on="high", min_freed="1G", max_victims=2)
        full = cgoom.PriorityPolicy()(cgoom.Incident.create("/t"), cgoom.Snapshotter(
            groups.hierarchy).snapshot("/t"))
        async with cgoom.open_handler(groups.hierarchy, rule, own_cgroup="/",
                                      processes=FakeProcesses(groups)) as h:
            groups.memory_event("t/g2/c45", "high")
            record = await next_incident(h)
        killed = [a.cgroup for a in record.actions if a.ok]
        assert killed == [v.cgroup for v in full.victims[:2]]
        assert killed[0] == "/t/g2/c45"
        assert len(record.candidates) == 85  # the record holds the full read

    async def test_a_declaration_steers_it(self, groups: FakeCgroupTree) -> None:
        # g0 declared background-killable ranks before g2 (same priority): the descent goes
        # into g0, as the full ranking would.
        async with cgoom.open_handler(groups.hierarchy, cgoom.Rule("r", "t", on="high"),
                                      own_cgroup="/", processes=FakeProcesses(groups)) as h:
            h.declare_killable("t/g0")
            groups.memory_event("t/g2/c45", "high")
            record = await next_incident(h)
        assert record.victim is not None and record.victim.cgroup.startswith("/t/g0/")
        assert "read level by level" in "\n".join(record.decision.notes)


class TestManyTenantCgroups:
    """issue 19: a tenant that makes many cgroups in its own delegated cgroup makes no
    decision read them (docs/policies.md, "A tenant's many cgroups")."""

    @pytest.fixture
    def crowd(self, tree: FakeCgroupTree) -> FakeCgroupTree:
        """/t: db (priority 100, 20M), batch (priority 10, 30M), and a tenant (uid 65534,
        priority 0, 40M) with 70 cgroups of its own: 73 cgroups, more than the engine
        snapshots inline."""
        for name, pid, prio, usage in (("db", 100, 100, 20), ("batch", 200, 10, 30)):
            tree.add(f"t/{name}", procs=[pid], memory_current=usage * M).set_priority(prio)
            tree.add_process(pid, name=name, rss=usage * M)
        tree.add("t/tenant", memory_current=40 * M).set_priority(0)
        tree.chown("t/tenant", 65534)
        for i in range(70):
            tree.add(f"t/tenant/c{i}", procs=[300 + i], memory_current=M // 2)
            tree.chown(f"t/tenant/c{i}", 65534)
            tree.add_process(300 + i, name=f"c{i}", rss=M // 2)
        return tree

    @pytest.mark.parametrize("policy", ["priority", "largest"])
    async def test_the_tenant_dies_whole_and_its_cgroups_are_not_read(
            self, crowd: FakeCgroupTree, policy: str) -> None:
        rule = cgoom.Rule("r", "t", on="max", policy=policy)
        async with cgoom.open_handler(crowd.hierarchy, rule, own_cgroup="/",
                                      processes=FakeProcesses(crowd),
                                      max_tenant_cgroups=10) as h:
            crowd.memory_event("t", "max")
            record = await next_incident(h)
        assert record.victim is not None and record.victim.cgroup == "/t/tenant", \
            record.explain()
        first = record.decision.first
        assert first is not None and first.whole
        assert "uid 65534 made 70 cgroups below it" in first.reason
        assert record.actions[0].ok and record.actions[0].cgroup == "/t/tenant"
        assert crowd.cgroup("t/tenant").cgroup_events().populated is False
        assert crowd.cgroup("t/batch").cgroup_procs() == (200,)  # the innocents live
        assert crowd.cgroup("t/db").cgroup_procs() == (100,)
        assert {c.path for c in record.candidates} == {"/t", "/t/db", "/t/batch",
                                                       "/t/tenant"}


@pytest.fixture(params=["small", "level by level"])
def tenancy(request: pytest.FixtureRequest, tree: FakeCgroupTree) -> FakeCgroupTree:
    """/t (memory.max 400M, usage 390M): a delegated tenant (priority 0) whose hog (pid 300,
    300M) lives in tenant/a, batch (priority 10, pid 500), db (priority 100, pid 600).
    ``level by level``: db also holds 70 services, so the domain is read as Google's handler
    descends (over 64 cgroups)."""
    tree.add("t", memory_current=390 * M).set_memory_max("400M")
    tree.add("t/tenant", memory_current=300 * M).set_priority(0)
    tree.add("t/tenant/a", procs=[300], memory_current=300 * M)
    tree.add("t/tenant/b", memory_current=0)
    tree.add("t/batch", procs=[500], memory_current=50 * M).set_priority(10)
    tree.add("t/db", memory_current=40 * M).set_priority(100)
    tree.add("t/db/main", procs=[600], memory_current=40 * M)
    for pid, rss in ((300, 300), (500, 50), (600, 40)):
        tree.add_process(pid, rss=rss * M)
    if request.param == "level by level":
        for i in range(70):
            tree.add(f"t/db/s{i}", memory_current=1 * M)
    return tree


class Staged:
    """The priority policy, with the tenant's move staged right after its first decision
    (between the decision and the kill)."""

    name = "staged"

    def __init__(self, stage: Callable[[], None]) -> None:
        self.stage, self.staged = stage, False

    def __call__(self, incident: cgoom.Incident,
                 candidates: Mapping[str, S]) -> cgoom.Decision:
        decision = cgoom.PriorityPolicy()(incident, candidates)
        if incident.cgroup == "/t" and not self.staged:
            self.staged = True
            self.stage()
        return decision

    def descend(self, *args: object) -> object:
        return cgoom.PriorityPolicy().descend(*args)  # type: ignore[arg-type]


class TestASlippedVictim:
    """issue 19: a victim that slipped away since the decision never turns into "kill the
    next one on the list": batch (priority 10) is innocent of what the tenant did."""

    async def test_a_hog_moved_within_its_tenant_is_still_the_tenant_s_to_lose(
            self, tenancy: FakeCgroupTree) -> None:
        tree = tenancy
        move = Staged(lambda: tree.fs.write(
            tree.cgroup("t/tenant/b").dir + "/cgroup.procs", "300"))
        procs = FakeProcesses(tree)
        rule = cgoom.Rule("r", "t", policy=move)  # type: ignore[arg-type]
        async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            tree.memory_event("t", "max")
            record = await next_incident(handler)
        assert move.staged
        assert procs.killed == [300], record.explain()  # the hog, in its new cgroup
        stale, kill = record.actions
        assert stale.stale and "process 300 left /t/tenant/a" in stale.detail
        assert (kill.ok, kill.cgroup, kill.pid) == (True, "/t/tenant/b", 300)
        assert tree.cgroup("t/batch").cgroup_procs() == (500,)
        assert tree.cgroup("t/db/main").cgroup_procs() == (600,)

    async def test_a_hog_that_exited_freed_its_memory_nothing_more_dies(
            self, tenancy: FakeCgroupTree) -> None:
        tree = tenancy

        def exits() -> None:  # the hog exits (or the kernel got it): its memory is back
            tree.remove_process(300)
            tree.fs.remove_pid(300)
            for path in ("t", "t/tenant", "t/tenant/a"):
                usage = {"t": 90, "t/tenant": 0, "t/tenant/a": 0}[path]
                tree.set(path, "memory.current", f"{usage * M}\n")

        procs = FakeProcesses(tree)
        exit_staged = Staged(exits)
        rule = cgoom.Rule("r", "t", policy=exit_staged)  # type: ignore[arg-type]
        async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            tree.memory_event("t", "max")
            record = await next_incident(handler)
        assert exit_staged.staged
        assert procs.killed == [], record.explain()
        assert [a.stale for a in record.actions] == [True]
        assert any("memory came back" in n for n in record.decision.notes), record.explain()
        assert tree.cgroup("t/batch").cgroup_procs() == (500,)

    async def test_a_hog_that_keeps_moving_is_not_chased_for_ever(
            self, tenancy: FakeCgroupTree) -> None:
        """Every decision finds it moved again: after FRESH_DECISIONS the incident ends
        and says so; nobody else is killed."""
        tree = tenancy
        where = ["t/tenant/b"]

        class Flips:
            name = "flips"

            def __call__(self, incident: cgoom.Incident,
                         candidates: Mapping[str, S]) -> cgoom.Decision:
                decision = cgoom.PriorityPolicy()(incident, candidates)
                if incident.cgroup == "/t":
                    tree.fs.write(tree.cgroup(where[0]).dir + "/cgroup.procs", "300")
                    where[0] = "t/tenant/a" if where[0] == "t/tenant/b" else "t/tenant/b"
                return decision

        procs = FakeProcesses(tree)
        rule = cgoom.Rule("r", "t", policy=Flips())
        async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/",
                                      processes=procs) as handler:
            tree.memory_event("t", "max")
            record = await next_incident(handler)
        fresh = cgoom._engine._handler.FRESH_DECISIONS
        assert procs.killed == []
        assert [a.stale for a in record.actions] == [True] * (fresh + 1)
        assert f"after {fresh} fresh decision(s): left to the next incident" in \
            record.decision.notes[-1]



def test_a_whole_kill_asks_the_kernel_whether_the_cgroup_is_empty(
        tree: FakeCgroupTree) -> None:
    """The listing of a subtree's cgroup.procs reads one cgroup after another: a process
    moving between them is in none of the lists. "No process any more" (stale) is the
    kernel's populated 0, not an empty listing."""
    import os

    from cgoom._engine._actions import kill_cgroup

    tree.add("t/tenant/a", procs=[300])
    tree.add_process(300, rss=10 * M)
    tenant = tree.cgroup("t/tenant")
    victim = cgoom.Victim("/t/tenant", 0.0, "test", True,
                          cgroup_id=os.stat(tenant.dir).st_ino)
    tree.set("t/tenant/a", "cgroup.procs", "")  # listed nowhere, yet populated 1
    result, handles = kill_cgroup(tree.hierarchy, victim)
    assert (result.ok, result.stale, handles) == (True, False, []), result
    assert not tenant.cgroup_events().populated  # killed: empty for real now
    result, _ = kill_cgroup(tree.hierarchy, victim)
    assert (result.ok, result.stale) == (False, True), result
    assert "has no process any more" in result.detail
