"""The workloads' first chance on the fake cgroupfs (issue #11, first slice): a registered
handler is told before cgoom acts, with a reclaim target; memory falling back below the
threshold means nothing is killed; a handler that hangs, swallows its cancellation, raises
or answers garbage is cut off at its deadline and cgoom acts; the record says who was told
and what each answered."""

from __future__ import annotations

import asyncio
import time

import pytest

import cgoom
from cgoom._engine._firstchance import RECOVERY_MARGIN, Registry, threshold_of
from cgoom._kernel._parse import format_size
from cgoom.testing import FakeCgroupTree, FakeProcesses, until

M = 1 << 20


@pytest.fixture
def domain(tree: FakeCgroupTree) -> FakeCgroupTree:
    """/t: memory.max 300M, memory.high 270M, usage 270M; db (priority 100) and batch (0)."""
    for name, pid, prio, usage in (("db", 100, 100, 140), ("batch", 300, 0, 130)):
        c = tree.add(f"t/{name}", procs=[pid], memory_current=usage * M)
        c.set_priority(prio)
        c.set_memory_oom_group(True)
        tree.add_process(pid, name=name, rss=usage * M)
    tree.hierarchy.cgroup("t").set_memory_max(300 * M)
    tree.hierarchy.cgroup("t").set_memory_high(270 * M)
    tree.set("t", "memory.current", f"{270 * M}\n")
    return tree


def handler_for(tree: FakeCgroupTree, seconds: float = 2.0) -> cgoom.Handler:
    rule = cgoom.Rule("t", "t", on="high", first_chance=seconds)
    return cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/", kmsg=None,
                              proc_events=False, processes=FakeProcesses(tree))


async def incident(tree: FakeCgroupTree, handler: cgoom.Handler) -> cgoom.IncidentRecord:
    tree.memory_event("t", "high")
    record = await asyncio.wait_for(handler.__anext__(), 10)
    assert isinstance(record, cgoom.IncidentRecord)
    return record


def test_threshold_and_registry() -> None:
    assert threshold_of(270 * M, 300 * M, 0.1) == int(270 * M * (1 - RECOVERY_MARGIN))
    assert threshold_of("max", 300 * M, None) == int(300 * M * 0.9 * (1 - RECOVERY_MARGIN))
    assert threshold_of("max", "max", None) is None
    registry = Registry()

    async def h(notice: cgoom.Notice) -> None:
        return None

    off = registry.register("/t/a", h, 1.0)
    registry.register("/u", h, 1.0)
    assert [r.cgroup for r in registry.inside("/t")] == ["/t/a"]
    off()
    assert registry.inside("/t") == []
    with pytest.raises(cgoom.InvalidValue, match="a number of seconds above 0"):
        registry.register("/t", h, 0)
    with pytest.raises(cgoom.InvalidValue, match="is not callable"):
        registry.register("/t", "h", 1.0)  # type: ignore[arg-type]


async def test_a_workload_that_frees_memory_is_not_killed(domain: FakeCgroupTree) -> None:
    notices: list[cgoom.Notice] = []

    async def drop_cache(notice: cgoom.Notice) -> cgoom.Answer:
        notices.append(notice)
        domain.set("t", "memory.current", f"{200 * M}\n")  # the cache went
        return cgoom.Answer("done", freed=70 * M)

    async with handler_for(domain) as handler:
        handler.register("t/batch", drop_cache, deadline=1.0)
        record = await incident(domain, handler)
    assert record.actions == () and record.victim is None
    assert domain.hierarchy.cgroup("t/batch").cgroup_procs() == (300,)
    chance = record.first_chance
    assert chance is not None and chance.recovered
    assert chance.told[0].answer == "done" and chance.told[0].freed == 70 * M
    notice = notices[0]
    assert (notice.domain, notice.cgroup, notice.level) == ("/t", "/t/batch", "oom")
    assert notice.usage == 270 * M and notice.deadline == 1.0
    assert notice.reclaim_target == 270 * M - notice.threshold > 0
    assert "first chance (/t/batch: done, freed 70.0M" in record.explain()
    assert "nothing more was done" in record.explain()
    assert cgoom.record_from_json(record.to_json()) == record


async def test_an_absurd_answer_is_recorded_not_lost(domain: FakeCgroupTree) -> None:
    """A workload answering ``freed`` 10**400 (a valid JSON int) made explain() raise
    OverflowError before the record was delivered: batch killed, and no record anywhere.
    The number is dropped as out of range, and the record delivered."""
    async def boast(notice: cgoom.Notice) -> cgoom.Answer:
        domain.set("t", "memory.current", f"{200 * M}\n")
        return cgoom.Answer("done", freed=10**400)

    async with handler_for(domain) as handler:
        handler.register("t/batch", boast, deadline=1.0)
        record = await incident(domain, handler)
    assert record.first_chance is not None
    assert record.first_chance.told[0].answer == "done"
    assert record.first_chance.told[0].freed is None
    assert "first chance (/t/batch: done" in record.explain()
    assert cgoom.parse_size(0) == 0 and format_size(10**400) == "over 8.0E"


async def test_a_record_is_delivered_whatever_is_in_it(
        domain: FakeCgroupTree, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A record that cannot be formatted still reaches its readers, and the log says so."""
    def broken(self: cgoom.IncidentRecord) -> str:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(cgoom.IncidentRecord, "explain", broken)
    caplog.set_level("INFO", "cgoom")
    heard: list[object] = []
    async with handler_for(domain) as handler:
        handler.add_listener(heard.append)
        record = await incident(domain, handler)
    assert heard == [record] and record.victim is not None
    assert "explain failed: OverflowError" in caplog.text


@pytest.mark.parametrize("behaviour", ["hang", "swallow", "raise", "garbage", "cannot",
                                       "not async"])
async def test_a_handler_that_does_not_help_is_cut_off(domain: FakeCgroupTree,
                                                       behaviour: str) -> None:
    async def hostile(notice: cgoom.Notice) -> object:
        if behaviour == "raise":
            raise RuntimeError("no")
        if behaviour == "garbage":
            return {"freed": "lots"}
        if behaviour == "cannot":
            return cgoom.Answer("cannot")
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            if behaviour != "swallow":
                raise
            # Swallows its cancellation and answers late; cgoom has acted meanwhile (a
            # handler that never ends would hold up only the loop's own shutdown).
            await asyncio.sleep(1.0)
        return cgoom.Answer("done")

    def not_async(notice: cgoom.Notice) -> None:
        return None

    async with handler_for(domain, seconds=5.0) as handler:
        handler.register("t/batch", not_async if behaviour == "not async" else hostile,
                         deadline=0.5)
        started = time.monotonic()
        record = await incident(domain, handler)
        took = time.monotonic() - started
    assert record.victim is not None and record.victim.cgroup == "/t/batch"
    assert took < 0.5 + 1.0, took  # its deadline, then the engine's own reaction
    answer = record.first_chance.told[0].answer if record.first_chance else ""
    expected = {"hang": "no answer", "swallow": "no answer", "raise": "error: RuntimeError: no",
                "garbage": "garbage: {'freed': 'lots'}", "cannot": "cannot",
                "not async": "error: TypeError"}[behaviour]
    assert answer.startswith(expected), answer


async def test_a_dry_run_gives_no_first_chance_and_tells_the_oom_level(
        domain: FakeCgroupTree) -> None:
    told: list[cgoom.Notice] = []

    async def h(notice: cgoom.Notice) -> None:
        told.append(notice)

    rule = cgoom.Rule("t", "t", on="high", first_chance=1.0, dry_run=True)
    clock = cgoom.testing.ManualClock()
    async with cgoom.open_handler(domain.hierarchy, rule, own_cgroup="/", kmsg=None,
                                  proc_events=False, clock=clock) as handler:
        handler.register("u", h, deadline=1.0)  # another domain's: not told
        record = await incident(domain, handler)
        assert record.first_chance is None and told == []
        handler.register("t/batch", h, deadline=1.0)
        await clock.advance(rule.cooldown + 0.1)
        record = await incident(domain, handler)
        await until(lambda: bool(told))
    # A dry run gives no first chance (it is part of acting), and tells what would happen.
    assert record.first_chance is None
    assert [(n.level, n.deadline, n.cgroup) for n in told] == [("oom", None, "/t/batch")]
