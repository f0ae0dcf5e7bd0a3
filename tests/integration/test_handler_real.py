"""The engine on the real kernel (issue #9, first slice): the priority-inversion scenario,
a process killed through a pidfd with its memory freed by process_mrelease, and a stale
victim refused. Each prints the figures that matter: onset to kill, notification to gone."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom._engine._actions import Pidfds, kill_process
from cgoom.testing import wait_until

from .conftest import KERNEL_VERSION, holding_hog, python_cmd, report_figures

Spawn = Callable[[cgoom.Cgroup, str], Any]
M = 1 << 20

GROW = (  # ~40 MiB/s of touched anonymous memory, until killed
    "import time\n"
    "chunks = []\n"
    "while True:\n"
    "    chunk = bytearray(4 << 20)\n"
    "    for i in range(0, len(chunk), 4096): chunk[i] = 1\n"
    "    chunks.append(chunk); time.sleep(0.1)\n"
)


def inversion(box: cgoom.Cgroup, *, early: bool = True,
              ) -> tuple[cgoom.Cgroup, dict[str, cgoom.Cgroup]]:
    """The issue's scenario; ``early``: set memory.high (270M) and memory.oom.group here,
    else leave them to the handler's early-trigger set-up."""
    parent = box.create_child("inv")
    parent.enable_controllers("memory", "pids")
    kids = {}
    for name, priority in (("db", 100), ("web", 50), ("batch", 0)):
        kids[name] = parent.create_child(name)
        kids[name].set_priority(priority)
        if early:
            kids[name].set_memory_oom_group(True)
    parent.set_memory_max("300M")
    if early:
        parent.set_memory_high("270M")
    parent.set_memory_swap_max(0)
    return parent, kids


async def test_priority_inversion(box: cgoom.Cgroup, spawn: Spawn,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    """batch (priority 0) grows into the parent's memory.high, which the handler set 10%
    below memory.max (with memory.oom.group on the leaves): the engine kills batch whole
    before the kernel's OOM killer acts; db (140M, priority 100) and web are untouched; on
    exit the handler restores what it set."""
    parent, kids = inversion(box, early=False)
    db, web = spawn(kids["db"], holding_hog(140)), spawn(kids["web"], holding_hog(50))
    wait_until(lambda: kids["db"].memory_current() > 135 * M
               and kids["web"].memory_current() > 45 * M, 60, "db and web to hold memory")
    h = cgoom.Hierarchy.discover()
    rule = cgoom.Rule("inversion", parent.path, on="high", confirm_timeout=20,
                      high_below_max=0.1, oom_group_leaves=True)
    async with cgoom.open_handler(h, rule) as handler:
        assert parent.memory_high() == 270 * M
        assert all(k.memory_oom_group() for k in kids.values())
        hog = spawn(kids["batch"], python_cmd(GROW))
        record = await asyncio.wait_for(handler.__anext__(), 60)
    assert parent.memory_high() == "max"  # restored
    assert not any(k.memory_oom_group() for k in kids.values())
    assert record.victim is not None, record.explain()
    assert (record.victim.cgroup, record.victim.action) == (kids["batch"].path, "kill-cgroup")
    assert record.victim.confirmed_ms is not None, record.explain()
    assert hog.proc.wait(10) == -9
    assert db.proc.poll() is None and web.proc.poll() is None
    assert kids["db"].cgroup_procs() and kids["web"].cgroup_procs()
    assert parent.memory_events().oom_kill == 0
    assert record.memory_after is not None and record.memory_before is not None
    assert record.memory_after < record.memory_before
    # What batch was expected to free (anonymous: all of its usage, near enough) came back.
    assert record.expected_free is not None and record.expected_free > 50 * M, record
    assert record.memory_before - record.memory_after > record.expected_free * 0.8, \
        record.explain()
    t = record.timings
    assert t.kill_ms is not None and t.confirmed_ms is not None
    with capsys.disabled():
        report_figures(f"priority inversion, freed: {record.freed()}")
        report_figures(f"priority inversion: onset (first high) to kill {t.kill_ms:.1f} ms, "
              f"notification to empty {t.confirmed_ms:.1f} ms (started {t.started_ms:.1f} ms, "
              f"snapshot {t.snapshot_ms:.1f} ms, decision {t.decision_ms:.1f} ms); "
              f"{record.trigger}; memory "
              f"{record.memory_before >> 20}M -> {record.memory_after >> 20}M; kernel "
              f"oom_kill 0\n{record.explain()}")


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


async def test_one_process_freed_by_process_mrelease(box: cgoom.Cgroup, spawn: Spawn,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A leaf without oom.group gives up one process: SIGKILL through a pidfd, then
    process_mrelease frees its memory at once; the pidfd says when it exited."""
    parent = box.create_child("solo")
    parent.enable_controllers("memory", "pids")
    job = parent.create_child("job")
    parent.set_memory_max("300M")
    parent.set_memory_high("200M")
    parent.set_memory_swap_max(0)
    spawn(job, holding_hog(20))
    wait_until(lambda: job.memory_current() > 18 * M, 60, "the small hog")
    rule = cgoom.Rule("solo", parent.path, on="high", confirm_timeout=20)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
        # exec: the grower is the child of this test, which does not reap it until it waits.
        grower = spawn(job, "exec " + python_cmd(GROW))
        record = await asyncio.wait_for(handler.__anext__(), 60)
        # Not reaped yet: a zombie, its memory already uncharged from the cgroup.
        state = proc_state(grower.pid)
        usage_unreaped = job.memory_current()
    victim = record.victim
    assert victim is not None and victim.action == "kill-process", record.explain()
    assert victim.pid == grower.pid and state == "Z", (victim, state)
    assert record.memory_before is not None and usage_unreaped < record.memory_before - 50 * M
    assert grower.proc.wait(10) == -9
    # Either process_mrelease freed the memory, or the victim (woken from memory.high's
    # throttling sleep by SIGKILL) had already released it (ESRCH): both are recorded.
    assert ("freed at once (process_mrelease, in cgoom-reaper-" in victim.detail
            or "process_mrelease: its memory was already gone" in victim.detail), victim.detail
    assert victim.confirmed_ms is not None
    assert job.cgroup_procs()  # only the chosen process died
    # The identity check took the pidfd's own cgroup id where the kernel has it (6.13).
    path = "PIDFD_GET_INFO" if KERNEL_VERSION >= (6, 13) else "/proc"
    assert victim.identity == path, (KERNEL_VERSION, victim)
    with capsys.disabled():
        released = ("n/a (already gone)" if victim.mrelease_ms is None
                    else f"{victim.mrelease_ms:.1f} ms")
        report_figures(f"process kill (identity by {victim.identity}): signal "
              f"{victim.syscall_ms:.2f} ms, process_mrelease "
              f"{released}, kill to exit {victim.confirmed_ms:.1f} ms; memory "
              f"{(record.memory_before or 0) >> 20}M -> {(record.memory_after or 0) >> 20}M, "
              f"{usage_unreaped >> 20}M in the cgroup while the victim was still unreaped")


def test_a_stale_pid_is_refused(box: cgoom.Cgroup, spawn: Spawn) -> None:
    """A victim whose start time does not match the live process at that pid is not
    signalled: the pidfd is opened, the identity checked, and nothing is sent."""
    job = box.create_child("job")
    proc = spawn(job, "exec sleep 1000")
    wait_until(lambda: proc.pid in job.cgroup_procs(), 10, "the process")
    h = cgoom.Hierarchy.discover()
    with open(f"/proc/{proc.pid}/stat") as f:
        start = int(f.read().rsplit(")", 1)[1].split()[19])
    stale = cgoom.Victim(job.path, 0, "x", False, proc.pid, start_time=start + 1)
    result, handle = kill_process(h, stale, Pidfds(h))
    assert not result.ok and handle is None
    assert f"pid {proc.pid} was reused" in result.detail
    assert proc.proc.poll() is None  # alive: nothing was sent
    moved = cgoom.Victim(box.path, 0, "x", False, proc.pid, start_time=start)
    result, handle = kill_process(h, moved, Pidfds(h))
    assert not result.ok and "left" in result.detail and proc.proc.poll() is None
    good = cgoom.Victim(job.path, 0, "x", False, proc.pid, start_time=start)
    result, handle = kill_process(h, good, Pidfds(h))
    assert result.ok and handle is not None
    os.close(handle)
    assert proc.wait(10) == -9


async def test_dry_run_decides_and_the_kernel_acts(box: cgoom.Cgroup, spawn: Spawn,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Dry run: the same scenario yields a record naming batch, and cgoom kills nothing;
    with memory.high lifted the hog reaches memory.max and the kernel's OOM killer acts."""
    parent, kids = inversion(box)
    spawn(kids["db"], holding_hog(140))
    spawn(kids["web"], holding_hog(50))
    wait_until(lambda: kids["db"].memory_current() > 135 * M
               and kids["web"].memory_current() > 45 * M, 60, "db and web to hold memory")
    rule = cgoom.Rule("watch-only", parent.path, on="high", dry_run=True, cooldown=600)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
        hog = spawn(kids["batch"], python_cmd(GROW))
        record = await asyncio.wait_for(handler.__anext__(), 60)
        assert record.dry_run and record.victim is None
        assert record.decision.first is not None
        assert record.decision.first.cgroup == kids["batch"].path
        assert hog.proc.poll() is None  # cgoom killed nothing
        parent.set_memory_high("max")   # let it run into memory.max
        kernel = await asyncio.wait_for(handler.__anext__(), 60)  # from /dev/kmsg
        wait_until(lambda: any(not c.cgroup_events().populated for c in kids.values()), 30,
                   "the kernel's victims to exit")
    assert isinstance(kernel, cgoom.KernelOomKill), kernel
    assert kernel.oom_memcg == parent.path and kernel.constraint == "CONSTRAINT_MEMCG"
    assert kernel.task_memcg is not None and kernel.task_memcg.startswith(parent.path + "/")
    assert parent.memory_events().oom_kill > 0
    dead = [name for name, c in kids.items() if not c.cgroup_events().populated]
    with capsys.disabled():
        report_figures(f"dry run: cgoom chose {record.decision.first.cgroup}, killed "
              f"nothing; the kernel's OOM killer then emptied {dead} "
              f"(oom_kill {parent.memory_events().oom_kill}); in the stream: {kernel}")
    assert dead  # the kernel acted: with oom.group, a whole workload went


class FailsAtOomTime:
    """Passes validation (its trial incident), raises on the real one."""

    name = "fails-at-oom-time"

    def __call__(self, incident: cgoom.Incident, candidates: Any) -> cgoom.Decision:
        if incident.cgroup != "/trial":
            raise RuntimeError("the plugin broke")
        return cgoom.PriorityPolicy()(incident, candidates)


class HangsAtOomTime:
    """Passes validation, then never answers (a plugin stuck in a blocking call)."""

    name = "hangs-at-oom-time"

    def __call__(self, incident: cgoom.Incident, candidates: Any) -> cgoom.Decision:
        if incident.cgroup != "/trial":
            time.sleep(10)
        return cgoom.PriorityPolicy()(incident, candidates)


@pytest.mark.parametrize(("plugin", "said"), [
    (FailsAtOomTime(), "raised RuntimeError: the plugin broke"),
    (HangsAtOomTime(), "did not answer within its budget of 200 ms"),
])
async def test_a_failing_plugin_still_kills_the_right_victim(
        box: cgoom.Cgroup, spawn: Spawn, plugin: Any, said: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A plugin that raises, or hangs past its budget (0.2 s), at OOM time: the guard's
    fallback (the priority policy) still kills batch, and the record says why."""
    parent, kids = inversion(box)
    spawn(kids["db"], holding_hog(140))
    spawn(kids["web"], holding_hog(50))
    wait_until(lambda: kids["db"].memory_current() > 135 * M
               and kids["web"].memory_current() > 45 * M, 60, "db and web to hold memory")
    rule = cgoom.Rule("plugin", parent.path, on="high", policy=plugin, budget=0.2,
                      confirm_timeout=20)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
        spawn(kids["batch"], python_cmd(GROW))
        record = await asyncio.wait_for(handler.__anext__(), 60)
        assert handler.statistics().fallbacks == 1
    assert record.decision.policy == "priority"
    assert said in record.decision.notes[0], record.decision.notes
    t = record.timings
    with capsys.disabled():
        report_figures(f"a plugin that {plugin.name.split('-')[0]} at OOM time: the fallback "
              f"killed batch, decision {t.decision_ms:.1f} ms, onset to kill "
              f"{t.kill_ms:.1f} ms; {record.decision.notes[0][:120]}")
    assert record.victim is not None and record.victim.cgroup == kids["batch"].path
    assert kids["db"].cgroup_procs() and kids["web"].cgroup_procs()
    assert parent.memory_events().oom_kill == 0


def oom_score_adj(pid: int) -> int:
    with open(f"/proc/{pid}/oom_score_adj") as f:
        return int(f.read())


async def test_a_whole_kill_spares_oom_score_adj_minus_1000(box: cgoom.Cgroup,
                                                            spawn: Spawn) -> None:
    """batch holds a process with oom_score_adj -1000 beside its hog: the kernel's group kill
    would spare it and so does cgoom (freeze, pidfd kills, thaw); cgroup.kill would not."""
    parent, kids = inversion(box)
    spawn(kids["db"], holding_hog(140))
    spawn(kids["web"], holding_hog(50))
    guardian = spawn(kids["batch"], "echo -1000 > /proc/self/oom_score_adj; exec sleep 1000")
    wait_until(lambda: kids["db"].memory_current() > 135 * M
               and kids["web"].memory_current() > 45 * M, 60, "db and web to hold memory")
    wait_until(lambda: oom_score_adj(guardian.pid) == -1000, 10, "the guardian's -1000")
    rule = cgoom.Rule("spare", parent.path, on="high", confirm_timeout=20)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
        hog = spawn(kids["batch"], python_cmd(GROW))
        record = await asyncio.wait_for(handler.__anext__(), 60)
    victim = record.victim
    assert victim is not None and victim.cgroup == kids["batch"].path, record.explain()
    assert f"spared ({guardian.pid})" in victim.detail, victim.detail
    assert hog.proc.wait(10) == -9
    assert guardian.proc.poll() is None and guardian.pid in kids["batch"].cgroup_procs()
    assert kids["batch"].cgroup_freeze() is False
    assert parent.memory_events().oom_kill == 0


async def test_a_large_domain_read_level_by_level(box: cgoom.Cgroup, spawn: Spawn,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A domain of 3 groups with 30 services each (93 cgroups: more than the engine reads
    inline): db (140M) in a priority-100 group, batch growing in a priority-0 group with 29
    idle services beside it, web (50M) in a priority-50 group. The priority policy's descent
    reads the domain, its 3 groups and batch's group (34 cgroups, not 94) and batch dies
    whole; db and web are untouched."""
    parent = box.create_child("big")
    parent.enable_controllers("memory", "pids")
    groups = {}
    for name, priority in (("important", 100), ("middle", 50), ("spare", 0)):
        group = groups[name] = parent.create_child(name)
        group.enable_controllers("memory", "pids")
        group.set_priority(priority)
        for i in range(30):
            group.create_child(f"s{i}").set_memory_oom_group(True)
    db, web = groups["important"].child("s0"), groups["middle"].child("s0")
    batch = groups["spare"].child("s7")
    parent.set_memory_max("300M")
    parent.set_memory_high("270M")
    parent.set_memory_swap_max(0)
    held = spawn(db, holding_hog(140)), spawn(web, holding_hog(50))
    wait_until(lambda: db.memory_current() > 135 * M and web.memory_current() > 45 * M, 60,
               "db and web to hold memory")
    rule = cgoom.Rule("big", parent.path, on="high", confirm_timeout=20)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
        hog = spawn(batch, python_cmd(GROW))
        record = await asyncio.wait_for(handler.__anext__(), 60)
    assert record.victim is not None, record.explain()
    assert (record.victim.cgroup, record.victim.action) == (batch.path, "kill-cgroup")
    notes = "\n".join(record.decision.notes)
    assert "read level by level: 34 of 94 cgroups" in notes, notes
    assert hog.proc.wait(10) == -9
    assert all(h.proc.poll() is None for h in held)
    assert parent.memory_events().oom_kill == 0
    t = record.timings
    assert t.kill_ms is not None and t.confirmed_ms is not None
    with capsys.disabled():
        report_figures(f"a domain of 94 cgroups read level by level (34 read): batch "
              f"killed whole, onset (first high) to kill {t.kill_ms:.1f} ms (started "
              f"{t.started_ms:.1f} ms, snapshot {t.snapshot_ms:.1f} ms, decision "
              f"{t.decision_ms:.1f} ms), notification to "
              f"empty {t.confirmed_ms:.1f} ms; db and web untouched, kernel oom_kill 0")


SWAPPED_HOG = (  # 256 MiB of incompressible memory (zram cannot shrink it), held until killed
    "import os, sys, time\n"
    "block = bytearray(os.urandom(1 << 20)) * 256\n"
    "sys.stdout.write('held\\n'); sys.stdout.flush()\n"
    "time.sleep(1000)\n"
)


class TimedPidfds(Pidfds):
    """Real pidfds that note when the kill was sent and when process_mrelease ran, where."""

    def __init__(self, hierarchy: cgoom.Hierarchy) -> None:
        super().__init__(hierarchy)
        self.killed_at: float | None = None
        self.released: tuple[float, float, str] | None = None

    def kill(self, handle: int) -> None:
        super().kill(handle)
        self.killed_at = time.perf_counter()

    def release(self, handle: int) -> None:
        started = time.perf_counter()
        try:
            super().release(handle)
        finally:
            self.released = (started, time.perf_counter(), threading.current_thread().name)


def swap_in_use() -> bool:
    with open("/proc/swaps") as f:
        return len(f.read().splitlines()) > 1


async def test_a_swapped_process_is_killed_without_blocking_the_loop(
        box: cgoom.Cgroup, spawn: Spawn, capsys: pytest.CaptureFixture[str]) -> None:
    """A 256 MiB process, half of it pushed to the VM's zram swap by memory.max, is the
    victim: SIGKILL on the loop, process_mrelease in a reaper thread. The event loop keeps
    ticking (every 1 ms) while the memory is freed; the figure is its longest block from the
    kill until the exit was seen (or the release ended, if later), and when the cgroup's RAM
    and swap came back."""
    assert swap_in_use(), "the VM's zram swap is not set up (cgoom-vm makes it)"
    parent = box.create_child("reap")
    parent.enable_controllers("memory", "pids")
    job = parent.create_child("job")
    parent.set_memory_max("128M")
    hog_proc = spawn(job, "exec " + python_cmd(SWAPPED_HOG))
    wait_until(lambda: (if_swap(job) or 0) > 100 * M, 180, "the hog to be half in swap")
    before = (job.memory_current(), if_swap(job) or 0)
    h = cgoom.Hierarchy.discover()
    pidfds = TimedPidfds(h)
    ticks: list[tuple[float, float, int]] = []  # (time, block beyond the 1 ms asked, usage)
    stop = asyncio.Event()

    async def tick() -> None:
        while not stop.is_set():
            asked = time.perf_counter()
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            ticks.append((now, now - asked - 0.001, job.memory_current() + (if_swap(job) or 0)))

    rule = cgoom.Rule("reap", parent.path, on="max", confirm_timeout=60)
    async with cgoom.open_handler(h, rule, processes=pidfds) as handler:
        ticker = asyncio.create_task(tick())
        # A small newcomer pushes against memory.max: the max event; the hog is the largest.
        spawn(job, holding_hog(16))
        record = await asyncio.wait_for(handler.__anext__(), 120)
        await asyncio.sleep(0.2)
        stop.set()
        await ticker
    victim = record.victim
    assert victim is not None and victim.action == "kill-process", record.explain()
    assert victim.pid == hog_proc.pid, record.explain()
    assert hog_proc.proc.wait(10) == -9
    assert pidfds.killed_at is not None
    assert ("freed at once (process_mrelease, in cgoom-reaper-" in victim.detail
            or "process_mrelease: its memory was already gone" in victim.detail), victim.detail
    during = [t for t in ticks if t[0] >= pidfds.killed_at]
    assert during, "the loop never ticked after the kill"
    released = pidfds.released
    assert victim.confirmed_ms is not None
    end = pidfds.killed_at + victim.confirmed_ms / 1000  # the kill, until the exit is seen
    if released is not None:
        started, ended, thread = released
        assert thread.startswith("cgoom-reaper-"), thread
        end = max(end, ended)
        if ended - started > 0.1:  # a long release: the loop must have run meanwhile
            assert any(started < t[0] < ended for t in during), (released, during[:5])
    window = [t for t in during if t[0] <= end + 0.002]
    assert window, "the loop never ticked between the kill and the exit"
    longest = max(lag for _, lag, _ in window) * 1000
    total = before[0] + before[1]
    back = next((t for t, _, usage in during if usage < total - 200 * M), None)
    with capsys.disabled():
        took = ("n/a (already gone)" if released is None
                else f"{(released[1] - released[0]) * 1000:.1f} ms in {released[2]}")
        report_figures(
            f"kill of a swapped process ({before[0] >> 20}M RAM + {before[1] >> 20}M swap): "
            f"process_mrelease {took}; the loop's longest block from the kill to the exit "
            f"{longest:.2f} ms ({len(window)} ticks of 1 ms asked); RAM+swap back below "
            f"{(total - 200 * M) >> 20}M "
            + ("never seen" if back is None
               else f"{(back - pidfds.killed_at) * 1000:.1f} ms after the kill")
            + f"; kill to exit {victim.confirmed_ms or 0:.1f} ms")


def if_swap(cgroup: cgoom.Cgroup) -> int | None:
    try:
        with open(os.path.join(cgroup.dir, "memory.swap.current")) as f:
            return int(f.read())
    except OSError:
        return None


def test_reclaim_swappiness_zero_takes_no_anonymous_memory(box: cgoom.Cgroup,
                                                           spawn: Spawn) -> None:
    """memory.reclaim's swappiness= (Linux 6.10): 0 reclaims page cache only, so a cgroup
    holding only anonymous memory gives nothing (EAGAIN) and nothing goes to swap; without
    it, the same reclaim swaps the memory out to the VM's zram. Before 6.10 the kernel
    refuses the key (EINVAL), which cgoom reports naming the file."""
    assert swap_in_use(), "the VM's zram swap is not set up (cgoom-vm makes it)"
    job = box.create_child("anon")
    spawn(job, holding_hog(48))
    wait_until(lambda: job.memory_current() > 46 * M, 60, "the hog")
    swapped = if_swap(job) or 0
    if KERNEL_VERSION < (6, 10):
        with pytest.raises(cgoom.InvalidValue, match=r"memory\.reclaim"):
            job.reclaim("32M", swappiness=0)
        return
    assert job.reclaim("32M", swappiness=0) is False  # no page cache to give
    assert (if_swap(job) or 0) - swapped < 4 * M, "swappiness=0 swapped anonymous memory"
    job.reclaim("32M")
    assert (if_swap(job) or 0) - swapped >= 16 * M, "the plain reclaim swapped nothing"
