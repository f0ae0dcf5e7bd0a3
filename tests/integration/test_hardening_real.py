"""Issue #8 on the real kernel: what a hostile workload can do to its name, its cgroup's
layout and its xattrs never turns into a wrong kill, and the watcher loses nothing when a
cgroup is re-created or the watch limit is hit while it runs."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom.testing import collect_events, events_of_type, wait_until

from .conftest import holding_hog, python_cmd, sysctl

Spawn = Callable[[cgoom.Cgroup, str], Any]
M = 1 << 20


def decide(box: cgoom.Cgroup, policy: str = "priority") -> tuple[cgoom.Decision, dict[
        str, cgoom.CgroupSnapshot]]:
    h = cgoom.Hierarchy.discover()
    pol = cgoom.load_policy(policy)
    snaps = cgoom.Snapshotter(h).snapshot(box.path, fields=cgoom.policy_fields(pol))
    incident = cgoom.Incident.create(box.path, own_cgroup=h.own_cgroup().path)
    return cgoom.decide(pol, incident, snaps), snaps


RENAME = (
    "import ctypes, os, time\n"
    "ctypes.CDLL(None).prctl(15, b'\\xff\\xfe) Z 1 (x\\n', 0, 0, 0)\n"  # PR_SET_NAME
    "data = bytearray(24 << 20)\n"
    "for i in range(0, len(data), 4096): data[i] = 1\n"
    "print('ready', flush=True); time.sleep(1000)\n"
)


def test_a_renamed_process_cannot_hide(box: cgoom.Cgroup, spawn: Spawn) -> None:
    """prctl(PR_SET_NAME) with bytes that are not UTF-8 (and a ')' and a newline): the
    process is still read, and it, not the priority-100 db, is the victim."""
    low, db = box.create_child("low"), box.create_child("db")
    db.set_priority(100)
    spawn(db, holding_hog(40))
    spawn(low, python_cmd(RENAME))
    wait_until(lambda: low.memory_current() > 20 * M and db.memory_current() > 30 * M, 60,
               "both to hold their memory")
    pids = low.cgroup_procs()
    decision, snaps = decide(box)
    renamed = [p for p in snaps[low.path].processes if "\ufffd" in p.name]
    assert renamed and renamed[0].pid in pids and renamed[0].oom_score_adj == 0
    assert decision.first is not None and decision.first.cgroup == low.path
    assert decision.first.pid == renamed[0].pid and decision.first.start_time
    assert db.path not in [v.cgroup for v in decision.victims[:1]]


def test_processes_beside_child_cgroups_are_candidates(box: cgoom.Cgroup, spawn: Spawn) -> None:
    """A cgroup that enables no controller for its children may hold processes and child
    cgroups at once: its own 30M hog dies before priority-100 db."""
    low, db = box.create_child("low"), box.create_child("db")
    low.create_child("idle")
    db.set_priority(100)
    spawn(db, holding_hog(40))
    spawn(low, holding_hog(30))
    wait_until(lambda: low.memory_current() > 25 * M and db.memory_current() > 30 * M, 60,
               "both to hold their memory")
    decision, _ = decide(box)
    first = decision.first
    assert first is not None and (first.cgroup, first.whole) == (low.path, False)
    assert first.pid in low.cgroup_procs()
    assert "its own processes (it also has child cgroups)" in first.reason


def as_user(uid: int, action: Callable[[], object]) -> int:
    """Run ``action`` in a forked child with uid and gid ``uid`` (no exec: the checkout's
    interpreter may not be readable by that user); its exit status, 0 if it returned."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            action()
        except BaseException:
            os._exit(1)
        os._exit(0)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_delegated_tenant_cannot_make_itself_immortal(box: cgoom.Cgroup,
                                                        spawn: Spawn) -> None:
    """chown to uid 65534 (as Delegate=yes does); the tenant, unprivileged, writes
    user.cgoom.priority=1000 and preference=omit on its own directory: both are ignored
    (and said so), and the tenant, not the root-set priority-100 db, is the victim."""
    tenant, db = box.create_child("tenant"), box.create_child("db")
    db.set_priority(100)
    os.chown(tenant.dir, 65534, 65534)
    assert as_user(65534, lambda: [
        os.setxattr(tenant.dir, "user.cgoom.priority", b"1000"),
        os.setxattr(tenant.dir, "user.cgoom.preference", b"omit"),
        os.setxattr(tenant.dir, "user.oomd_avoid", b"1")]) == 0  # the kernel let it write
    assert tenant.priority() == 1000 and tenant.get_xattr("user.cgoom.preference") == "omit"
    spawn(db, holding_hog(40))
    spawn(tenant, holding_hog(30))
    wait_until(lambda: tenant.memory_current() > 25 * M and db.memory_current() > 30 * M, 60,
               "both to hold their memory")
    decision, snaps = decide(box)
    snap = snaps[tenant.path]
    assert (snap.owner, snap.priority, snap.preference) == (65534, 0, None)
    assert any("user.cgoom.priority=1000 ignored: set by uid 65534" in p for p in snap.problems)
    assert decision.first is not None and decision.first.cgroup == tenant.path
    # Inside its own domain the tenant is trusted: an incident there honours its omit.
    own = cgoom.Snapshotter(cgoom.Hierarchy.discover()).snapshot(tenant.path)[tenant.path]
    assert own.preference == "omit"


def test_threaded_subtree_is_decided(box: cgoom.Cgroup, spawn: Spawn) -> None:
    """cgroup.procs is EOPNOTSUPP in a threaded cgroup: the snapshot marks it, its threaded
    domain is the unit, and the rest of the subtree is decided as usual."""
    dom, other = box.create_child("dom"), box.create_child("other")
    thr = dom.create_child("thr")
    thr.write_file("cgroup.type", "threaded")
    assert dom.cgroup_type() == "domain threaded"
    with pytest.raises(cgoom.NotSupported):
        thr.cgroup_procs()
    spawn(dom, holding_hog(30))
    spawn(other, holding_hog(10))
    wait_until(lambda: dom.memory_current() > 25 * M and other.memory_current() > 8 * M, 60,
               "both to hold their memory")
    decision, snaps = decide(box)
    assert snaps[thr.path].threaded and "threaded cgroup" in snaps[thr.path].problems[0]
    assert [v.cgroup for v in decision.victims] == [dom.path, other.path]
    assert decision.first is not None and decision.first.pid in dom.cgroup_procs()


def test_recheck_refuses_a_recreated_cgroup_and_a_dead_pid(box: cgoom.Cgroup,
                                                          spawn: Spawn) -> None:
    job = box.create_child("job")
    proc = spawn(job, holding_hog(8))
    wait_until(lambda: job.memory_current() > 6 * M, 60, "the hog")
    snapper = cgoom.Snapshotter(cgoom.Hierarchy.discover())
    decision = cgoom.decide(cgoom.PriorityPolicy(), cgoom.Incident(box.path),
                            snapper.snapshot(box.path))
    victim = decision.first
    assert victim is not None and snapper.recheck(victim) is None
    assert victim.cgroup_id == os.stat(job.dir).st_ino
    job.kill()
    wait_until(lambda: not job.cgroup_events().populated, 10, "the kill")
    proc.wait()
    assert snapper.recheck(victim) == f"process {victim.pid} is gone"
    job.remove()
    box.create_child("job")
    assert "was removed and re-created" in (snapper.recheck(victim) or "")


QUEUED = "/proc/sys/fs/inotify/max_queued_events"
WATCHES = "/proc/sys/fs/inotify/max_user_watches"


async def test_overflow_resync_follows_a_recreated_cgroup(box: cgoom.Cgroup,
                                                          spawn: Spawn) -> None:
    """With a tiny inotify queue (the VM is ours), creations overflow it; the cgroup that
    was removed and re-created meanwhile is watched anew (cgroup ids are never reused)."""
    box.create_child("a")
    saved = sysctl(QUEUED)
    try:
        sysctl(QUEUED, 16)  # read when the inotify instance is made
        async with cgoom.open_watcher(cgoom.Hierarchy.discover(), box.path) as w:
            for i in range(40):
                box.create_child(f"n{i}")
            box.child("a").remove()
            again = box.create_child("a")
            kid = again.create_child("x")
            events = await collect_events(w, lambda ev: kid.path in w.watched(), seconds=20)
            assert any(isinstance(e, cgoom.Resynchronized) for e in events)
            assert again.path in w.watched() and w.statistics().resyncs >= 1
            # The new cgroup's files are watched: its population change is reported.
            spawn(kid, "sleep 100")
            seen = await collect_events(w, lambda ev: any(
                isinstance(e, cgoom.CgroupStateChanged) and e.cgroup == kid.path
                for e in ev), seconds=10)
            assert events_of_type(seen, cgoom.CgroupStateChanged)
    finally:
        sysctl(QUEUED, saved)


async def test_watch_limit_at_run_time(box: cgoom.Cgroup) -> None:
    """The watch limit hit while running: a WatchFailed event for the new cgroup, events of
    the others still come, and the cgroup is watched once a removal frees watches."""
    box.create_child("old")
    saved = sysctl(WATCHES)
    h = cgoom.Hierarchy.discover()
    try:
        async with cgoom.open_watcher(h, box.path) as w:
            sysctl(WATCHES, 1)  # below what root holds now: every new watch fails
            new = box.create_child("new")
            failed = await collect_events(w, lambda ev: any(
                isinstance(e, cgoom.WatchFailed) for e in ev), seconds=10)
            assert [e.cgroup for e in events_of_type(failed, cgoom.WatchFailed)] == [new.path]
            assert new.path in w.untracked() and new.path not in w.watched()
            sysctl(WATCHES, saved)
            box.child("old").remove()
            back = await collect_events(w, lambda ev: any(
                isinstance(e, cgoom.CgroupCreated) and e.cgroup == new.path for e in ev),
                seconds=10)
            assert new.path in w.watched() and w.untracked() == {}
            assert f"{box.path}/old removed" in [str(e) for e in back]
    finally:
        sysctl(WATCHES, saved)


def test_kill_checks_are_not_fooled_by_zombies(box: cgoom.Cgroup) -> None:
    """A process that exits is no candidate and no recheck passes for it."""
    job = box.create_child("job")
    proc = subprocess.Popen(["/bin/sh", "-c", "read go; exit 0"], stdin=subprocess.PIPE)
    job.attach(proc.pid)
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    deadline = time.monotonic() + 10
    while proc.pid in job.cgroup_procs() and time.monotonic() < deadline:
        time.sleep(0.01)
    snaps = cgoom.Snapshotter(cgoom.Hierarchy.discover()).snapshot(box.path)
    assert snaps[job.path].processes == () and not snaps[job.path].populated
    proc.wait()
