"""A hostile tenant on the real kernel (issue 19, item 1): it flips its hog between its own
delegated cgroups in a tight loop, so that the victim the engine decided on keeps slipping
away between the decision and the kill. The engine must never turn that into "kill the next
one on the list": batch (priority 10) and db (priority 100) live while the hog does, in
every incident."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom.testing import next_incident

from .conftest import holding_hog, python_cmd, report_figures
from .test_handler_real import GROW
from .test_hardening_real import as_user

Spawn = Callable[[cgoom.Cgroup, str], Any]
M = 1 << 20
ROUNDS = 3


def flipper(pid: int, a: cgoom.Cgroup, b: cgoom.Cgroup) -> subprocess.Popen[bytes]:
    """Moves ``pid`` from ``a`` to ``b`` and back as fast as a shell can write (thousands of
    times a second), from outside the domain, until killed."""
    script = (f"while :; do echo {pid} > {a.dir}/cgroup.procs; "
              f"echo {pid} > {b.dir}/cgroup.procs; done")
    return subprocess.Popen(["/bin/sh", "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


async def test_a_hog_flipped_between_its_own_cgroups_never_costs_a_neighbour(
        box: cgoom.Cgroup, spawn: Spawn, capsys: pytest.CaptureFixture[str]) -> None:
    parent = box.create_child("inv")
    parent.enable_controllers("memory", "pids")
    tenant = parent.create_child("tenant")
    tenant.set_priority(0)
    tenant.enable_controllers("memory", "pids")
    a, b = tenant.create_child("a"), tenant.create_child("b")
    batch, db = parent.create_child("batch"), parent.create_child("db")
    batch.set_priority(10)
    db.set_priority(100)
    for unit in (batch, db):
        unit.set_memory_oom_group(True)
    parent.set_memory_max("300M")
    parent.set_memory_high("270M")
    parent.set_memory_swap_max(0)
    batch_proc, db_proc = spawn(batch, holding_hog(50)), spawn(db, holding_hog(60))
    deadline = time.monotonic() + 60
    while batch.memory_current() < 45 * M or db.memory_current() < 55 * M:
        assert time.monotonic() < deadline, "batch and db to hold their memory"
        await asyncio.sleep(0.1)
    rule = cgoom.Rule("tenant", parent.path, on="high", cooldown=0.5, confirm_timeout=20)
    records: list[cgoom.IncidentRecord] = []
    figures = []
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
        handler.add_listener(lambda r: records.append(r)
                             if isinstance(r, cgoom.IncidentRecord) else None)
        for round_ in range(ROUNDS):
            hog = spawn(a, "exec " + python_cmd(GROW))
            flips = flipper(hog.pid, a, b)
            started = time.monotonic()
            try:
                while hog.proc.poll() is None:
                    assert time.monotonic() - started < 120, "the hog to be killed"
                    # While the hog lives, nobody else dies.
                    assert batch_proc.proc.poll() is None and db_proc.proc.poll() is None
                    await asyncio.sleep(0.02)
            finally:
                flips.kill()
                flips.wait(10)
            figures.append(f"round {round_ + 1}: hog gone after "
                           f"{time.monotonic() - started:.1f} s")
            assert hog.proc.returncode == -9
            assert batch_proc.proc.poll() is None and db_proc.proc.poll() is None
            await asyncio.sleep(rule.cooldown)
    acted = [x for r in records for x in r.actions if x.ok]
    stale = [x for r in records for x in r.actions if x.stale]
    explained = "\n".join(r.explain() for r in records)
    assert acted, explained
    # Only the tenant's: its hog in a or b, or the tenant whole when the hog was in neither
    # of them as they were read.
    assert all(x.cgroup in (tenant.path, a.path, b.path) for x in acted), explained
    assert batch.cgroup_procs() and db.cgroup_procs()
    kernel = parent.memory_events().oom_kill
    where = ", ".join(sorted({x.cgroup for x in acted}))
    with capsys.disabled():
        report_figures(f"flipping tenant: {ROUNDS} hogs, {len(records)} incident(s), "
              f"{len(acted)} kill(s), all in the tenant ({where}); "
              f"{len(stale)} victim(s) slipped away and were decided afresh; batch and db "
              f"alive throughout; kernel oom_kill {kernel}; " + "; ".join(figures)
              + "".join(f"\n[figures]   {r.explain().splitlines()[0]}; "
                        + "; ".join(f"{x.action} {x.cgroup}: {'ok' if x.ok else 'stale'}"
                                    for x in r.actions) for r in records))


def delegate(cgroup: cgoom.Cgroup, uid: int) -> None:
    """What systemd's Delegate=yes does: the directory and the files that let its owner
    make and fill child cgroups, chowned."""
    import os

    for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
        os.chown(os.path.join(cgroup.dir, name), uid, uid)


async def test_a_tenant_s_many_cgroups_cost_no_decision_and_no_neighbour(
        box: cgoom.Cgroup, spawn: Spawn, root: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """issue 19: a delegated tenant (uid 65534) makes 300 cgroups of its own, as far as
    the kernel's cgroup.max.descendants (300, set by root) lets it, and grows a hog in one
    of them. Read cgroup by cgroup (max_tenant_cgroups above 300: the engine before) the
    hog's cgroup is the victim, after reading all 300; with the default bound (256) the
    tenant is ranked by its own totals and dies whole, its cgroups unread. Either way
    batch and db live."""
    import errno
    import os

    parent = box.create_child("crowd")
    parent.enable_controllers("memory", "pids")
    tenant = parent.create_child("tenant")
    tenant.set_priority(0)
    tenant.enable_controllers("memory", "pids")
    tenant.write_file("cgroup.max.descendants", "300")
    delegate(tenant, 65534)
    batch, db = parent.create_child("batch"), parent.create_child("db")
    batch.set_priority(10)
    db.set_priority(100)
    parent.set_memory_max("300M")
    parent.set_memory_high("270M")
    parent.set_memory_swap_max(0)

    def make_cgroups() -> None:
        for i in range(301):
            try:
                os.mkdir(os.path.join(tenant.dir, f"c{i}"))
            except OSError as exc:  # its errno is the child's exit status
                os._exit(exc.errno or 1)
    # the 301st is refused by the kernel: EAGAIN (cgroup_mkdir, cgroup_check_hierarchy_limits)
    assert as_user(65534, make_cgroups) == errno.EAGAIN
    assert len(tenant.children()) == 300
    hog_home = tenant.child("c0")
    batch_proc, db_proc = spawn(batch, holding_hog(50)), spawn(db, holding_hog(60))
    deadline = time.monotonic() + 60
    while batch.memory_current() < 45 * M or db.memory_current() < 55 * M:
        assert time.monotonic() < deadline, "batch and db to hold their memory"
        await asyncio.sleep(0.1)
    rule = cgoom.Rule("crowd", parent.path, on="high", cooldown=0.5, confirm_timeout=20)
    figures, victims, readings = [], [], []
    for bound in (1000, cgoom.Snapshotter(cgoom.Hierarchy.discover()).max_tenant_cgroups):
        async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule,
                                      max_tenant_cgroups=bound) as handler:
            hog = spawn(hog_home, "exec " + python_cmd(GROW))
            record = await next_incident(handler, 120)
            deadline = time.monotonic() + 30
            while hog.proc.poll() is None:
                assert time.monotonic() < deadline, record.explain()
                await asyncio.sleep(0.05)
        assert batch_proc.proc.poll() is None and db_proc.proc.poll() is None, \
            record.explain()
        first = record.decision.first
        assert first is not None, record.explain()
        t = record.timings
        victims.append(first)
        readings.append(len(record.candidates))
        figures.append(
            f"max_tenant_cgroups {bound}: victim {first.cgroup} "
            f"({'whole' if first.whole else f'pid {first.pid}'}), {len(record.candidates)} "
            f"cgroups read, snapshot+decision {t.snapshot_ms + t.decision_ms:.1f} ms, "
            f"notification to kill {t.kill_ms:.1f} ms, to empty {t.confirmed_ms:.1f} ms")
    read_all, bounded = victims
    assert read_all.cgroup == hog_home.path and not read_all.whole
    assert readings[0] > 300
    assert bounded.cgroup == tenant.path and bounded.whole
    assert "uid 65534 made 300 cgroups below it" in bounded.reason
    assert readings[1] <= 4  # the domain, batch, db and the tenant: nothing below it
    assert not tenant.cgroup_events().populated
    assert batch.cgroup_procs() and db.cgroup_procs()
    with capsys.disabled():
        report_figures("crowded tenant (300 cgroups of uid 65534, cgroup.max.descendants "
              "refused the 301st: EAGAIN): " + "; ".join(figures)
              + "; batch and db alive")
