"""What a kill frees, on the real kernel (issue #20, item 3): a cgroup of clean page cache
against one of anonymous memory, the cache one the larger by memory.current. Ranked by
usage the cache would die first; ranked by what a kill gives back (``freeable``: anon, swap,
the processes' kernel memory) the anonymous one does, and killing each shows why: the cache
stays charged to the emptied cgroup, the anonymous memory comes back: the handler's records
say so, with their freed timelines.

The page cache is a block device's: a fresh zram device (hot_add, no tool needed) read
with dd. Its pages are charged to the reader's cgroup and are clean (never written), the
kind the kernel reclaims without a kill. The VM's root filesystem (9p) keeps no cache.
Needs the zram module (the VM loads it for its swap)."""

from __future__ import annotations

import asyncio
import os
import select
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import cgoom
from cgoom._engine._freed import describe
from cgoom.testing import wait_until

from .conftest import holding_hog, python_cmd, report_figures

Spawn = Callable[[cgoom.Cgroup, str], Any]
M = 1 << 20
ZRAM = "/sys/class/zram-control"


@pytest.fixture
def block_device(root: None) -> Iterator[str]:
    """A new 256M zram device, never written (it reads as zeros); removed afterwards."""
    if not os.path.exists(ZRAM):
        pytest.fail(f"no {ZRAM}: the VM loads the zram module for its swap (cgoom-vm)")
    with open(os.path.join(ZRAM, "hot_add")) as f:
        number = int(f.read())
    held = None
    try:
        with open(f"/sys/block/zram{number}/disksize", "w") as f:
            f.write("256M\n")
        # Held open here, outside the test's cgroups: a block device's page cache is
        # dropped at its last close, and a filesystem's file cache is not; holding the
        # device makes its cache behave as a file's, charged on after the reader dies.
        held = os.open(f"/dev/zram{number}", os.O_RDONLY | os.O_CLOEXEC)
        yield f"/dev/zram{number}"
    finally:
        if held is not None:
            os.close(held)
        with open(f"/sys/block/zram{number}/reset", "w") as f:
            f.write("1\n")
        with open(os.path.join(ZRAM, "hot_remove"), "w") as f:
            f.write(f"{number}\n")


def size(value: int | None) -> str:
    return "?" if value is None else f"{value / M:.1f}M"


async def test_a_kill_frees_anonymous_memory_not_page_cache(
        box: cgoom.Cgroup, spawn: Spawn, block_device: str) -> None:
    domain = box.create_child("inv")
    domain.enable_controllers("memory", "pids")
    cache, anon = domain.create_child("cache"), domain.create_child("anon")
    spawn(cache, f"dd if={block_device} of=/dev/null bs=1M count=140 2>/dev/null; "
                 "exec sleep 1000")
    spawn(anon, holding_hog(100))
    wait_until(lambda: cache.memory_stat().file is not None
               and (cache.memory_stat().file or 0) > 130 * M
               and anon.memory_current() > 95 * M, 60, "140M of cache and 100M of anon")
    assert cache.memory_current() > anon.memory_current()  # by usage, cache is the larger

    snapshots = cgoom.Snapshotter(cgoom.Hierarchy.discover()).snapshot(domain.path)
    incident = cgoom.Incident.create(domain.path, "manual")
    by_freeable = cgoom.largest(protection_aware=False)(incident, snapshots)
    by_priority = cgoom.PriorityPolicy(whole=True)(incident, snapshots)
    c, a = snapshots[cache.path], snapshots[anon.path]
    assert c.freeable is not None and a.freeable is not None
    # The anonymous hog may still be filling (head still writing): most of it is there.
    # What matters is the order: cache larger by usage, anon larger by what a kill frees.
    assert c.freeable < 10 * M < 80 * M < a.freeable, (c, a)
    assert c.usage is not None and a.usage is not None and c.usage > a.usage
    assert by_freeable.victims[0].cgroup == anon.path, by_freeable
    assert by_priority.victims[0].cgroup == anon.path, by_priority
    assert "freeable" in by_priority.victims[0].reason

    # What each kill gives back, as the handler's records tell it: the cache stays charged
    # to the emptied cgroup, the anonymous memory comes back. One incident each, fired by a
    # small poke (priority 1000: never the victim) charging past the domain's memory.high;
    # anon is made the more important for the first, so cache dies first.
    for cgroup in (cache, anon):
        cgroup.set_memory_oom_group(True)
    anon.set_priority(100)
    records = {}
    for victim in (cache, anon):
        records[victim.name] = await poked_incident(domain, spawn)
    anon.set_priority(0)
    c_rec, a_rec = records["cache"], records["anon"]
    for record, victim in ((c_rec, cache), (a_rec, anon)):
        assert record.victim is not None and record.victim.cgroup == victim.path, \
            record.explain()
        assert record.freed_timeline and record.freed() is not None, record.explain()
    c_first, c_last = c_rec.freed_timeline[0], c_rec.freed_timeline[-1]
    a_first, a_last = a_rec.freed_timeline[0], a_rec.freed_timeline[-1]
    assert c_first.ram is not None and c_last.ram is not None
    assert a_first.ram is not None and a_last.ram is not None
    assert c_first.ram - c_last.ram < 20 * M, c_rec.explain()  # the cache is still charged
    assert cache.memory_current() > 100 * M
    assert a_first.ram - a_last.ram > 60 * M, a_rec.explain()   # the anon memory came back
    assert anon.memory_current() < 10 * M
    assert c_rec.expected_free is not None and c_rec.expected_free < 10 * M
    assert a_rec.expected_free is not None and a_rec.expected_free > 80 * M
    report_figures(
        f"what a kill frees: cache usage {size(c.usage)} (freeable {size(c.freeable)}), anon "
        f"usage {size(a.usage)} (freeable {size(a.freeable)}); ranked first: "
        f"{by_freeable.victims[0].cgroup.rsplit('/', 1)[1]} (largest and priority)")
    for name, record in records.items():
        report_figures(f"killing {name}: {record.freed()}; timeline: "
                       f"{describe(record.freed_timeline)}")


async def poked_incident(domain: cgoom.Cgroup, spawn: Spawn) -> cgoom.IncidentRecord:
    """One incident of a handler on ``domain``: memory.high set 4M above its usage, and a
    12M poke (its own child, priority 1000) charging past it. The poke is killed and
    memory.high put back afterwards."""
    poke = domain.create_child(f"poke{len(domain.children())}")
    poke.set_priority(1000)
    rule = cgoom.Rule("freed", domain.path, on="high", confirm_timeout=20, cooldown=600,
                      max_victims=1)
    try:
        async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
            domain.set_memory_high(domain.memory_current() + 4 * M)
            spawn(poke, holding_hog(12))
            record = await asyncio.wait_for(handler.__anext__(), 60)
    finally:
        domain.set_memory_high("max")
        poke.kill()
        wait_until(lambda: not poke.cgroup_events().populated, 30, "the poke gone")
    assert isinstance(record, cgoom.IncidentRecord)
    return record


FORKED = (  # 100M of anonymous memory, then a fork: both map it, neither writes to it again
    "import os, time\n"
    "buf = bytearray(100 << 20)\n"
    "for i in range(0, len(buf), 4096): buf[i] = 1\n"
    "os.fork()\n"
    "time.sleep(1000)\n"
)


def test_pss_picks_the_process_whose_kill_frees_the_most(box: cgoom.Cgroup,
                                                         spawn: Spawn) -> None:
    """One unit, killed one process at a time: a forked pair sharing 100M (each RSS ~110M)
    and a 60M hog of its own. By RSS one of the pair dies, and its kill frees next to
    nothing (its twin still maps the memory); with ``pss`` (smaps_rollup) the hog does,
    and its 60M come back."""
    unit = box.create_child("workers")
    spawn(unit, python_cmd(FORKED))
    spawn(unit, holding_hog(60))
    h = cgoom.Hierarchy.discover()
    snapshotter = cgoom.Snapshotter(h)

    def ready() -> bool:
        procs = snapshotter.snapshot(box.path, fields={"processes"})[unit.path].processes
        return unit.memory_current() > 160 * M and sum(p.rss > 90 * M for p in procs) == 2
    wait_until(ready, 90, "the forked pair and the 60M hog")
    incident = cgoom.Incident.create(box.path, "manual")
    picks = {}
    for policy in (cgoom.PriorityPolicy(whole=False), cgoom.PriorityPolicy(whole=False,
                                                                           pss=True)):
        snaps = snapshotter.snapshot(box.path, fields=cgoom.policy_fields(policy))
        victim = policy(incident, snaps).victims[0]
        assert victim.cgroup == unit.path and victim.pid is not None, victim
        process = next(p for p in snaps[unit.path].processes if p.pid == victim.pid)
        picks["pss" if policy.pss else "rss"] = (process, victim.reason)
    (by_rss, _), (by_pss, pss_reason) = picks["rss"], picks["pss"]
    assert by_rss.rss > 90 * M and by_rss.name.startswith("python"), picks
    assert by_pss.name == "tail" and by_pss.freeable is not None, picks
    assert by_pss.freeable > 50 * M, picks
    assert "frees" in pss_reason
    # What each kill gave back: the twin's, next to nothing; the hog's, its 60M.
    back = {}
    for name, process in (("rss", by_rss), ("pss", by_pss)):
        pidfd = os.pidfd_open(process.pid)
        try:
            before = unit.memory_current()
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            # The pidfd turns readable at exit_notify, after exit_mm has uncharged its
            # memory. (cgroup.procs is no guide: a process leaves it as its exit begins.)
            assert select.select([pidfd], [], [], 30)[0], "the kill"
        finally:
            os.close(pidfd)
        back[name] = before - unit.memory_current()
    assert back["rss"] < 20 * M < 50 * M < back["pss"], back
    report_figures(
        f"one process of a unit: by RSS pid {by_rss.pid} ({by_rss.name}, rss "
        f"{size(by_rss.rss)}), its kill gave back {size(back['rss'])}; by PSS pid "
        f"{by_pss.pid} ({by_pss.name}, rss {size(by_pss.rss)}, pss {size(by_pss.pss)}, "
        f"frees {size(by_pss.freeable)}), its kill gave back {size(back['pss'])}")
