"""The I/O edge of the engine: killing a cgroup, killing one process. Each action checks the
victim's identity right before it acts and reports what it did and how long it took.

Some facts this code depends on (notes/kernel-interface.md §5-§6):

- ``cgroup.kill`` returns once SIGKILL is *sent* to every process of the subtree (measured:
  2.4 ms for three fork-looping processes); they are gone when ``cgroup.events`` says
  ``populated 0``. It is written here directly, on the caller's thread: a worker thread
  started on demand cost 125-490 ms under memory pressure (DESIGN.md, principle 3).
  ``cgroup.kill`` also kills ``oom_score_adj`` -1000 processes, which the kernel's own
  ``memory.oom.group`` kill spares (``oom_kill_memcg_member``). So when the victim holds
  one, cgoom does as the kernel does instead: it freezes the cgroup (no fork can race the
  kill; frozen tasks still die of SIGKILL), SIGKILLs every other process through a pidfd
  (identity checked), re-reads until no new process appears (3 passes at most), and thaws.
- Identity for a cgroup is its id (the directory's inode); ids are never reused and a cgroup
  must be empty to be removed, so "stat, compare, write" can only miss a cgroup removed and
  re-created with new processes in the microseconds between the two calls.
- Identity for a process: ``pidfd_open`` pins *a* process; if the pid was reused before we
  opened it, the pidfd names the new one. So the start time (field 22 of /proc/PID/stat) and
  the cgroup are re-checked *after* opening: if they match, the pidfd is the process decided
  on, and a signal through it can reach no other (``pidfd_send_signal``). From 6.13 the
  cgroup comes from the pidfd itself (``PIDFD_GET_INFO``'s cgroup id, compared with the
  victim cgroup's inode), not from /proc/PID/cgroup; the start time is still read from
  /proc/PID/stat (the ioctl has none). If it matches, the process holding the pid at that
  read is the one decided on, and it is the pidfd's: had it died before ``pidfd_open``, the
  pidfd would name a newer process, whose start time differs. Every /proc file of the victim
  is read and closed before the signal: an open one would hold its memory.
- ``process_mrelease`` (5.15) then frees the dying process's anonymous memory at once,
  instead of after its exit or the OOM reaper's 2 s delay. It can take long (792 ms for a
  swap-heavy exit, measured upstream; Android's lmkd reaps in a thread pool for that reason),
  so the event loop never calls it: the engine checks the identity on the loop
  (:func:`open_victim`), then one of its reaper threads, started before any incident, sends
  the SIGKILL and at once calls ``process_mrelease`` (:func:`kill_opened`,
  :func:`release_process`), as lmkd's reaper does, so that the release starts microseconds
  after the signal, before the victim's own exit has begun. Measured with a 1 GiB process
  (benchmarks/kill.py, 2 shared cores): the loop's longest block is ~4 ms with the release
  in a thread, 60-100 ms when the loop called it and it did the freeing. When the memory
  came back varied more with the host's load than with the variant (70-150 ms each way;
  on a quiet host 67 ms with both in the thread, 107 ms with the signal from the loop, the
  victim's exit having won the race). A pidfd becomes readable when the process exits:
  that is the confirmation.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

import attrs

from .._decide._policy import Victim
from .._decide._snapshot import identity_problem
from .._errors import CgoomError
from .._kernel._cgroup import Cgroup, if_supported
from .._kernel._fs import OsFS
from .._kernel._hierarchy import Hierarchy
from .._kernel._linux import kernel_release, pidfd_cgroup_id, process_mrelease
from .._kernel._paths import inside
from .._kernel._proc import oom_score_adj, process_now
from .._kernel._taskstats import MemoryStall

#: memory.reclaim's ``swappiness=`` key ("mm: add swapiness= arg to memory.reclaim", Linux 6.10);
#: EINVAL before.
SWAPPINESS_KEY = (6, 10)


@attrs.frozen
class ActionResult:
    """What one action did: ``action`` is ``"kill-cgroup"``, ``"kill-process"`` or
    ``"dry-run"``; ``ok`` whether the kill was sent; ``detail`` says what happened or why
    not. Times are milliseconds; ``None`` where that step did not happen."""

    action: str
    cgroup: str
    pid: int | None
    ok: bool
    detail: str
    #: The kill itself: the cgroup.kill write, or pidfd_send_signal.
    syscall_ms: float | None = None
    #: process_mrelease, for a process.
    mrelease_ms: float | None = None
    #: From the kill to the confirmation (populated 0, or the pidfd readable).
    confirmed_ms: float | None = None
    #: The processes signalled (for ``cgroup.kill``: those in the subtree just before).
    pids: tuple[int, ...] = ()
    #: How long the killed processes had stalled on memory (taskstats, at their exit).
    stalls: tuple[MemoryStall, ...] = ()
    #: A graceful action that came to SIGKILL: how long before it the SIGTERM went (the
    #: grace the victim had).
    graced_ms: float | None = None
    #: How a process's identity was checked, with its pidfd open: ``"PIDFD_GET_INFO"``
    #: (the pidfd's cgroup id, 6.13+) or ``"/proc"`` (/proc/PID/cgroup); ``None`` for a
    #: cgroup-wide action.
    identity: str | None = None
    #: Not acted on because the victim slipped away since the decision: its process exited,
    #: moved out or its pid was reused, its cgroup was removed or re-created, or emptied.
    #: The engine then never takes the decision's next victim (that would punish whoever
    #: ranked next for what the victim did): it looks whether memory came back, and decides
    #: afresh if not.
    stale: bool = False


class ProcessControl(Protocol):
    """How the engine reaches processes: real pidfds (:class:`Pidfds`), or a fake for tests
    (:class:`cgoom.testing.FakeProcesses`). Handles are ints (pidfds)."""

    def open(self, pid: int) -> int:
        """A handle pinning process ``pid``; :class:`ProcessLookupError` if it is gone."""
        ...

    def kill(self, handle: int) -> None:
        """SIGKILL through the handle; :class:`ProcessLookupError` if it already exited."""
        ...

    def terminate(self, handle: int) -> None:
        """SIGTERM through the handle (a graceful stop); :class:`ProcessLookupError` if it
        already exited."""
        ...

    def release(self, handle: int) -> None:
        """Free the dying process's memory now (process_mrelease); OSError if it cannot.
        Called in a reaper thread (it may take long), never on the event loop."""
        ...

    def cgroup_id(self, handle: int) -> int | None:
        """The id (inode) of the cgroup the process behind ``handle`` is in, asked of the
        handle itself, or ``None`` where that cannot be asked (the kernel has no
        ``PIDFD_GET_INFO``: before 6.13; the /proc check is used then).
        :class:`ProcessLookupError` if the process has been reaped."""
        ...

    def close(self, handle: int) -> None:
        ...


class Pidfds:
    """:class:`ProcessControl` with real pidfds. Refuses to work for a hierarchy whose files
    are not the real ones (a fake tree's pids are not this host's processes)."""

    def __init__(self, hierarchy: Hierarchy) -> None:
        if type(hierarchy.fs) is not OsFS:
            raise CgoomError(
                f"refusing real pidfds for {hierarchy!r}: its filesystem is "
                f"{type(hierarchy.fs).__name__}, so its pids are not this host's processes; "
                "pass processes=cgoom.testing.FakeProcesses(tree) in tests")

    def open(self, pid: int) -> int:
        return os.pidfd_open(pid)

    def kill(self, handle: int) -> None:
        signal.pidfd_send_signal(handle, signal.SIGKILL)

    def terminate(self, handle: int) -> None:
        signal.pidfd_send_signal(handle, signal.SIGTERM)

    def release(self, handle: int) -> None:
        process_mrelease(handle)

    def cgroup_id(self, handle: int) -> int | None:
        return pidfd_cgroup_id(handle)

    def close(self, handle: int) -> None:
        os.close(handle)


def _subtree_pids(hierarchy: Hierarchy, path: str) -> list[tuple[int, str]]:
    """(pid, cgroup path) of every process in ``path``'s subtree now."""
    found = []
    for cgroup in hierarchy.cgroup(path).walk():
        try:
            found += [(pid, cgroup.path) for pid in cgroup.cgroup_procs()]
        except CgoomError:
            continue
    return found


def _populated(cgroup: Cgroup) -> bool:
    try:
        return cgroup.cgroup_events().populated
    except CgoomError:
        return False  # gone: nothing in it


def _has_cgroup_kill(hierarchy: Hierarchy, cgroup: Cgroup) -> bool:
    """Whether this kernel has ``cgroup.kill`` (5.14): from the features probed once on a
    child of the root (the root has none), else from the victim's own files."""
    try:
        features = hierarchy.features()
        if features.probed != "/":
            return "cgroup.kill" in features.interface_files
    except CgoomError:
        pass
    try:
        return "cgroup.kill" in cgroup.interface_files()
    except CgoomError:
        return True  # gone: the kill will say so


def kill_cgroup(hierarchy: Hierarchy, victim: Victim,
                processes: ProcessControl | None = None) -> tuple[ActionResult, list[int]]:
    """Kill the victim's cgroup whole, if it is still the one decided on: ``cgroup.kill``,
    or, when it holds ``oom_score_adj`` -1000 processes, a frozen pidfd kill of the others
    (module docstring). Returns the result and, for the latter, the handles of the killed
    processes to confirm their exit with (the caller closes them)."""
    cgroup = hierarchy.cgroup(victim.cgroup)
    problem = identity_problem(hierarchy, victim)
    if problem is not None:
        return ActionResult("kill-cgroup", victim.cgroup, None, False,
                            f"not killed: {problem}", stale=True), []
    members = [pid for pid, _ in _subtree_pids(hierarchy, victim.cgroup)]
    if not members and not _populated(cgroup):
        # Its processes left (moved out, or exited) since the decision. Asked of the
        # kernel's own flag: the listing reads one cgroup after another, and a process
        # moving between them meanwhile is in none of the lists.
        return ActionResult("kill-cgroup", victim.cgroup, None, False,
                            f"not killed: {victim.cgroup} has no process any more",
                            stale=True), []
    spared = [pid for pid in members if oom_score_adj(hierarchy, pid) == -1000]
    if not _has_cgroup_kill(hierarchy, cgroup) and processes is not None:
        # Before 5.14 there is no cgroup.kill: freeze, kill each process by pidfd, thaw.
        result, handles = _kill_sparing(hierarchy, victim, processes, set(spared))
        return attrs.evolve(result, detail=result.detail + " (no cgroup.kill on this "
                            "kernel: before 5.14)"), handles
    if spared:
        if processes is None:
            return ActionResult("kill-cgroup", victim.cgroup, None, False,
                                f"not killed: it holds processes with oom_score_adj -1000 "
                                f"({', '.join(map(str, spared))}) that cgroup.kill would kill, "
                                "and no process control to spare them"), []
        return _kill_sparing(hierarchy, victim, processes, set(spared))
    started = time.perf_counter()
    try:
        cgroup.kill()
    except CgoomError as exc:
        return ActionResult("kill-cgroup", victim.cgroup, None, False,
                            f"not killed: {exc}"), []
    took = (time.perf_counter() - started) * 1000
    return ActionResult("kill-cgroup", victim.cgroup, None, True,
                        "SIGKILL sent to every process of the subtree (cgroup.kill)",
                        syscall_ms=took, pids=tuple(members)), []


def _kill_sparing(hierarchy: Hierarchy, victim: Victim, processes: ProcessControl,
                  spared: set[int]) -> tuple[ActionResult, list[int]]:
    cgroup = hierarchy.cgroup(victim.cgroup)
    started = time.perf_counter()
    handles: list[int] = []
    killed: set[int] = set()
    try:
        cgroup.freeze()
    except CgoomError as exc:
        return ActionResult("kill-cgroup", victim.cgroup, None, False,
                            f"not killed: cannot freeze it to spare its oom_score_adj -1000 "
                            f"processes: {exc}"), []
    try:
        for _ in range(3):
            fresh = [pid for pid, _ in _subtree_pids(hierarchy, victim.cgroup)
                     if pid not in killed and pid not in spared]
            if not fresh:
                break
            for pid in fresh:
                handle, is_spared = signal_in_subtree(hierarchy, processes, pid,
                                                      victim.cgroup, processes.kill)
                if is_spared:
                    spared.add(pid)
                elif handle is not None:
                    killed.add(pid)
                    handles.append(handle)
    finally:
        with contextlib.suppress(CgoomError):  # gone meanwhile: nothing left to thaw
            cgroup.thaw()
    took = (time.perf_counter() - started) * 1000
    return ActionResult(
        "kill-cgroup", victim.cgroup, None, bool(killed),
        f"SIGKILL sent through pidfds to {len(killed)} process(es) of the subtree, frozen "
        f"meanwhile; {len(spared)} with oom_score_adj -1000 spared "
        f"({', '.join(map(str, sorted(spared)))}), as the kernel's memory.oom.group kill does",
        syscall_ms=took, pids=tuple(sorted(killed))), handles


def kill_process(hierarchy: Hierarchy, victim: Victim, processes: ProcessControl,
                 ) -> tuple[ActionResult, int | None]:
    """SIGKILL the victim's process through a pidfd, after checking (with the pidfd open)
    that it is still the process decided on and still in the victim's cgroup. Returns the
    result and the handle to free its memory with (:func:`release_process`) and to confirm
    the exit with (the caller closes it), or ``None``. The engine splits it in two:
    :func:`open_victim` on the loop, :func:`kill_opened` and :func:`release_process` in a
    reaper thread."""
    handle, refused, identity = open_victim(hierarchy, victim, processes)
    if handle is None:
        assert refused is not None
        return refused, None
    return kill_opened(victim, processes, handle, identity)


def kill_opened(victim: Victim, processes: ProcessControl, handle: int, identity: str,
                ) -> tuple[ActionResult, int | None]:
    """SIGKILL through ``handle``, opened and checked by :func:`open_victim`. Returns the
    result and the handle (``None``, and the handle closed, if the process had exited)."""
    pid = victim.pid
    started = time.perf_counter()
    try:
        processes.kill(handle)
    except ProcessLookupError:
        processes.close(handle)
        return ActionResult("kill-process", victim.cgroup, pid, False,
                            f"not killed: process {pid} exited meanwhile", stale=True,
                            identity=identity), None
    took = (time.perf_counter() - started) * 1000
    return ActionResult("kill-process", victim.cgroup, pid, True,
                        "SIGKILL sent through a pidfd",
                        syscall_ms=took, pids=(pid,) if pid is not None else (),
                        identity=identity), handle


def release_process(processes: ProcessControl, handle: int) -> tuple[float | None, str]:
    """``process_mrelease`` on a killed process's handle: (milliseconds it took, or ``None``
    if it did nothing; what happened, for the record). Blocking, for as long as the kernel
    takes to free the memory: run it in a reaper thread, not on the event loop."""
    started = time.perf_counter()
    try:
        processes.release(handle)
    except OSError as exc:
        reasons = {errno.ESRCH: "its memory was already gone",
                   errno.ENOSYS: "this kernel has no process_mrelease (before 5.15)",
                   errno.EINVAL: "it was not dying yet"}
        return None, f"process_mrelease: {reasons.get(exc.errno or 0, exc.strerror)}"
    took = (time.perf_counter() - started) * 1000
    return took, ("its memory freed at once (process_mrelease, in "
                  f"{threading.current_thread().name})")


def open_victim(hierarchy: Hierarchy, victim: Victim, processes: ProcessControl,
                action: str = "kill-process", verb: str = "killed",
                ) -> tuple[int | None, ActionResult | None, str]:
    """A handle on the victim's process, opened and then checked to be the one decided on;
    or ``None`` and the result saying why it was not ``verb``. Also says how the identity
    was checked (``ActionResult.identity``)."""
    pid = victim.pid
    assert pid is not None
    try:
        handle = processes.open(pid)
    except ProcessLookupError:
        return None, ActionResult(action, victim.cgroup, pid, False,
                                  f"not {verb}: process {pid} is gone", stale=True), "none"
    except OSError as exc:
        return None, ActionResult(action, victim.cgroup, pid, False,
                                  f"not {verb}: pidfd_open({pid}): {exc.strerror}"), "none"
    # With the pidfd open: race-free (module docstring).
    asked = getattr(processes, "cgroup_id", None)  # a ProcessControl older than 0.2 has none
    try:
        in_cgroup = None if asked is None else asked(handle)
    except ProcessLookupError:
        processes.close(handle)
        return None, ActionResult(action, victim.cgroup, pid, False,
                                  f"not {verb}: process {pid} is gone", stale=True,
                                  identity="PIDFD_GET_INFO"), "PIDFD_GET_INFO"
    identity = "/proc" if in_cgroup is None else "PIDFD_GET_INFO"
    problem = identity_problem(hierarchy, victim, pidfd_cgroup=in_cgroup)
    stale = problem is not None
    if problem is None and victim.start_time is None:
        problem = f"no start time was recorded for pid {pid}: its identity cannot be checked"
    if problem is not None:
        processes.close(handle)
        return None, ActionResult(action, victim.cgroup, pid, False,
                                  f"not {verb}: {problem}", stale=stale,
                                  identity=identity), identity
    return handle, None, identity


def signal_in_subtree(hierarchy: Hierarchy, processes: ProcessControl, pid: int, top: str,
                      send: Callable[[int], None]) -> tuple[int | None, bool]:
    """``send`` (a kill or a SIGTERM) to process ``pid`` through a pidfd, if, with the pidfd
    open, it is still inside ``top``'s subtree and not ``oom_score_adj`` -1000 (spared, as
    the kernel's memory.oom.group kill spares it). Returns the handle when it was signalled
    (the caller closes it), and whether it was spared; one that exited or moved out
    meanwhile is neither: not ours to signal."""
    try:
        handle = processes.open(pid)
    except OSError:
        return None, False  # gone already
    signalled = spared = False
    try:
        now = process_now(hierarchy, pid)
        if now is not None and inside(now[2], top):
            if oom_score_adj(hierarchy, pid) == -1000:
                spared = True
            else:
                with contextlib.suppress(ProcessLookupError):
                    send(handle)
                    signalled = True
    finally:
        if not signalled:
            processes.close(handle)
    return (handle if signalled else None), spared



def terminate_process(hierarchy: Hierarchy, victim: Victim, processes: ProcessControl,
                      ) -> tuple[ActionResult, int | None]:
    """SIGTERM the victim's process through a pidfd (identity checked as for a kill).
    Returns the result and the handle to watch its exit with (the caller closes it)."""
    handle, refused, identity = open_victim(hierarchy, victim, processes,
                                            "terminate-process", "signalled")
    if handle is None:
        assert refused is not None
        return refused, None
    started = time.perf_counter()
    try:
        processes.terminate(handle)
    except ProcessLookupError:
        processes.close(handle)
        return ActionResult("terminate-process", victim.cgroup, victim.pid, False,
                            f"not signalled: process {victim.pid} exited meanwhile",
                            stale=True, identity=identity), None
    return ActionResult("terminate-process", victim.cgroup, victim.pid, True,
                        "SIGTERM sent through a pidfd",
                        syscall_ms=(time.perf_counter() - started) * 1000,
                        identity=identity), handle


def terminate_cgroup(hierarchy: Hierarchy, victim: Victim, processes: ProcessControl,
                     ) -> ActionResult:
    """SIGTERM every process of the victim's subtree through pidfds (each checked, with its
    pidfd open, to be still in the subtree), sparing ``oom_score_adj`` -1000 as a kill
    would. The caller waits for ``populated 0`` and kills whole after the grace period."""
    problem = identity_problem(hierarchy, victim)
    if problem is not None:
        return ActionResult("terminate-cgroup", victim.cgroup, None, False,
                            f"not signalled: {problem}", stale=True)
    started = time.perf_counter()
    sent = 0
    for pid, _ in _subtree_pids(hierarchy, victim.cgroup):
        handle, _spared = signal_in_subtree(hierarchy, processes, pid, victim.cgroup,
                                            processes.terminate)
        if handle is not None:
            processes.close(handle)
            sent += 1
    return ActionResult("terminate-cgroup", victim.cgroup, None, sent > 0,
                        f"SIGTERM sent through pidfds to {sent} process(es) of the subtree",
                        syscall_ms=(time.perf_counter() - started) * 1000)


def _cgroup_action_problem(hierarchy: Hierarchy, victim: Victim) -> str | None:
    """Why a cgroup-wide action (freeze, reclaim) must not be taken for ``victim``: its
    cgroup is not the one decided on, or the victim is one process (of an internal unit)
    whose cgroup also has child cgroups, which the action would reach too."""
    problem = identity_problem(hierarchy, attrs.evolve(victim, pid=None, whole=True))
    if problem is None and not victim.whole:
        try:
            children = hierarchy.cgroup(victim.cgroup).children()
        except CgoomError as exc:
            return str(exc)
        if children:
            return (f"the victim is process {victim.pid} of {victim.cgroup}, which also has "
                    f"child cgroups ({', '.join(c.path for c in children[:3])}"
                    f"{', ...' if len(children) > 3 else ''}): the action would reach them")
    return problem


def freeze_cgroup(hierarchy: Hierarchy, victim: Victim) -> ActionResult:
    """Freeze the victim's cgroup (for a process victim, the leaf cgroup it is in), if it is
    still the one decided on. Its memory stays; it stops growing."""
    problem = _cgroup_action_problem(hierarchy, victim)
    if problem is not None:
        return ActionResult("freeze", victim.cgroup, None, False, f"not frozen: {problem}")
    started = time.perf_counter()
    try:
        hierarchy.cgroup(victim.cgroup).freeze()
    except CgoomError as exc:
        return ActionResult("freeze", victim.cgroup, None, False, f"not frozen: {exc}")
    return ActionResult("freeze", victim.cgroup, None, True,
                        "cgroup.freeze 1 written (thawed when the handler stops)",
                        syscall_ms=(time.perf_counter() - started) * 1000)


def reclaim_cgroup(hierarchy: Hierarchy, victim: Victim, amount: int,
                   swappiness: int | None = None) -> ActionResult:
    """Ask the kernel to reclaim ``amount`` bytes from the victim's cgroup (memory.reclaim,
    5.19+; with ``swappiness=``, 6.10+). Blocking: call it in a worker thread."""
    problem = _cgroup_action_problem(hierarchy, victim)
    if problem is not None:
        return ActionResult("reclaim", victim.cgroup, None, False, f"not reclaimed: {problem}")
    cgroup = hierarchy.cgroup(victim.cgroup)
    before = if_supported(cgroup.memory_current)
    started = time.perf_counter()
    try:
        complete = cgroup.reclaim(amount, swappiness=swappiness)
    except CgoomError as exc:
        why = "" if swappiness is None or kernel_release() >= SWAPPINESS_KEY else (
            f" (memory.reclaim takes swappiness= from Linux 6.10; this is "
            f"{'.'.join(map(str, kernel_release()))}: drop reclaim_swappiness)")
        return ActionResult("reclaim", victim.cgroup, None, False,
                            f"not reclaimed: {exc}{why}")
    took = (time.perf_counter() - started) * 1000
    after = if_supported(cgroup.memory_current)
    freed = "" if before is None or after is None else f"; usage {before} -> {after}"
    asked = f"{amount}" + ("" if swappiness is None else f" swappiness={swappiness}")
    return ActionResult("reclaim", victim.cgroup, None, True,
                        f"memory.reclaim {asked}: "
                        f"{'all reclaimed' if complete else 'the kernel reclaimed less (EAGAIN)'}"
                        + freed, syscall_ms=took)
