"""``protect_self``: keep cgoom alive and responsive when memory is short. Each protection is
optional and says what it did or why it could not.

Some facts this code depends on (notes/kernel-interface.md; mm/oom_kill.c, mm/mlock.c,
Documentation/admin-guide/cgroup-v2.rst):

- ``oom_score_adj`` -1000 makes a process exempt from the kernel's OOM killer (and from
  cgoom's own kills, which spare -1000 too). Lowering it needs CAP_SYS_RESOURCE.
- ``memory.min`` on cgoom's own cgroup keeps that much of its memory from reclaim; the
  protection is only as large as its ancestors grant (each parent's memory.min bounds its
  children's effective protection), unless the hierarchy is mounted with
  ``memory_recursiveprot``, where a parent's protection is shared out to its children.
  The root cgroup has no memory.min.
- ``mlockall(MCL_CURRENT | MCL_FUTURE)`` with Python threads was measured to pin ~180 MiB in
  one run: every thread's default 8 MiB stack is faulted in and locked. So the thread stack
  size is set small first (``threading.stack_size``, for threads started afterwards) and
  ``MCL_ONFAULT`` (4.4) locks pages only as they are touched: what cgoom uses stays resident,
  nothing is faulted in for nothing. Locks are not inherited across fork(2); never call this
  in a forked child, whose copied address space it would lock.
"""

from __future__ import annotations

import os
import threading

import attrs

from .._errors import CgoomError
from .._kernel._hierarchy import Hierarchy
from .._kernel._linux import MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT, mlockall
from .._kernel._parse import format_size, parse_size


@attrs.frozen
class Protection:
    """What :func:`protect_self` did: each field ``None`` where it did nothing; ``notes``
    says what was done and what could not be, one sentence each."""

    oom_score_adj: int | None
    memory_min: int | None
    #: Resident locked memory of this process after mlockall, bytes (``locked_bytes``).
    locked: int | None
    notes: tuple[str, ...]


def locked_bytes(hierarchy: Hierarchy) -> int | None:
    """Resident memory of this process that is locked: ``Locked`` of
    /proc/self/smaps_rollup (4.14). Not ``VmLck`` of /proc/self/status, which counts whole
    locked mappings, faulted in or not: with MCL_ONFAULT every reserved malloc arena (64
    MiB each) and thread stack counts there in full (measured: 148 MiB of VmLck for a few
    MiB resident)."""
    try:
        text = hierarchy.fs.read(os.path.join(hierarchy.proc_root, "self", "smaps_rollup"))
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Locked:"):
            return int(line.split()[1]) * 1024
    return None


def protect_self(hierarchy: Hierarchy | None = None, *, oom_score_adj: bool = True,
                 memory_min: int | str | None = None, mlock: bool = False,
                 thread_stack: int = 256 << 10) -> Protection:
    """Protect this process: ``oom_score_adj`` -1000 (default), ``memory_min`` on its own
    cgroup, and ``mlock`` (its memory locked as it is used, with ``thread_stack``-sized
    stacks for threads started afterwards). Call it before starting a handler. Nothing
    raises for a protection that could not be had: ``notes`` says why."""
    h = hierarchy if hierarchy is not None else Hierarchy.discover()
    notes: list[str] = []
    adj = None
    if oom_score_adj:
        path = os.path.join(h.proc_root, "self", "oom_score_adj")
        try:
            h.fs.write(path, "-1000")
            adj = -1000
            notes.append("oom_score_adj -1000: the kernel's OOM killer passes this process by")
        except OSError as exc:
            notes.append(f"oom_score_adj not set: {path}: {exc.strerror} (lowering it needs "
                         "CAP_SYS_RESOURCE)")
    minimum = None
    if memory_min is not None:
        wanted = parse_size(memory_min, "memory_min")
        try:
            own = h.own_cgroup()
            if own.is_root:
                raise CgoomError("this process is in the root cgroup, which has no "
                                 "memory.min; run it in a cgroup of its own")
            own.set_memory_min(wanted)
            minimum = wanted
            notes.append(f"memory.min of {own.path} set to {format_size(wanted)}")
            parent = own.parent
            if (parent is not None and not parent.is_root and parent.memory_min() == 0
                    and "memory_recursiveprot" not in h.options):
                notes.append(f"but {parent.path} has memory.min 0 and the hierarchy is not "
                             "mounted with memory_recursiveprot: the protection is not "
                             "effective until the ancestors grant it")
        except CgoomError as exc:
            notes.append(f"memory.min not set: {exc}")
    locked = None
    if mlock:
        others = threading.active_count() - 1
        threading.stack_size(thread_stack)
        try:
            mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)
        except OSError as exc:
            notes.append(f"memory not locked: {exc.strerror} (it needs CAP_IPC_LOCK or a "
                         "large enough RLIMIT_MEMLOCK)")
        else:
            locked = locked_bytes(h)
            notes.append(f"memory locked as it is used (mlockall, MCL_ONFAULT): "
                         f"{format_size(locked or 0)} now; new threads get "
                         f"{format_size(thread_stack)} stacks"
                         + (f"; {others} thread(s) already running keep their stacks"
                            if others else ""))
    return Protection(oom_score_adj=adj, memory_min=minimum, locked=locked, notes=tuple(notes))
