"""memory.high tripwires: the whole machine's early, event-driven low-memory signal.

A machine rule (``Rule(available_below=0.1)``) must act when ``MemAvailable`` falls below a
reserve, before the kernel's OOM killer, without polling. Measured on the real kernel
(notes/kernel-interface.md, "Whole machine, no limits anywhere"; 1 GiB, db/web steady, a hog
growing 40 MiB/s, times from the moment MemAvailable fell below 10 %):

- system PSI triggers of any threshold fire only when kswapd starts: +2.4 to +2.6 s (the
  pollers earlyoom and nohang act at about +0.3 s); cgroup PSI fires only with the OOM kill.
- a ``memory.high`` set on the workload's top-level cgroup at "usage + (MemAvailable −
  reserve)" raises a ``high`` event within a few ms of that moment (−130 to +25 ms).
- released at once (memory.high back to what it was: 0.6-0.8 ms), it cost the innocent
  siblings nothing measurable; left in place it throttled them too (stalls of 100-190 ms).

So each child of the rule's domain (for ``/``, each top-level cgroup) carries a tripwire at
its usage plus an equal share of the headroom (MemAvailable − reserve): until one trips, the
children together have grown by less than the headroom, so MemAvailable is still above the
reserve (up to the caveats below). On a trip the handler re-reads MemAvailable: below the
reserve, it releases that tripwire at once and fires the rule; above, it moves that tripwire
up at once (``step``: usage plus its share of the new headroom, a raise, written on the
loop), so the grower is never unwatched, and the worker re-arms every tripwire with the new
headroom. (Released instead, the grower ran unwatched for the worker's hop: the kill came
155 ms after MemAvailable fell below 10% in the VM, twice.)

Caveats (docs/handler.md): a tripwire sees only memory charged to its cgroup (not the
domain's own processes, not uncharged kernel memory), and memory growing outside the domain
makes the headroom stale until the next event: system PSI stays the late backstop. memory.
current counts page cache that MemAvailable counts as free, so a cache-heavy workload trips
early; each trip re-checks and re-arms, so that costs a re-arm, not a kill. A tripwire is
never armed below the cgroup's usage (that would force reclaim at once), never above a
memory.high already set (the existing limit is its own tripwire), and every value is put back
when the handler stops. It can conflict with systemd's ``MemoryHigh=`` on the same cgroups.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Mapping

from .._errors import CgoomError
from .._kernel._cgroup import if_supported
from .._kernel._hierarchy import Hierarchy
from .._kernel._meminfo import MemInfo, read_meminfo
from .._kernel._types import Limit

PAGE = 4096
#: A tripwire is never armed closer than this above usage: arming at usage itself would
#: trip on the next page charged and flood the handler with events. It bounds how late the
#: last trip can be: 2 MiB is 50 ms of a hog growing 40 MiB/s.
MIN_STEP = 2 << 20


def levels(usages: Mapping[str, int], headroom: int) -> dict[str, int]:
    """Each cgroup's tripwire: its usage plus an equal share of ``headroom`` (at least
    ``MIN_STEP``), rounded up to a page. Pure."""
    share = max(headroom // max(len(usages), 1), MIN_STEP)
    return {path: -(-(usage + share) // PAGE) * PAGE for path, usage in usages.items()}


#: ``noted(cgroup, file, old)``: about to change ``file`` of ``cgroup`` from ``old``.
Noted = Callable[[str, str, str], None]


class Tripwires:
    """The tripwires of one machine rule on ``domain``'s children. ``arm`` runs in a worker
    thread (lowering memory.high may reclaim in the writer's context); ``release`` on the
    loop (raising it never reclaims). A lock keeps the two consistent."""

    def __init__(self, hierarchy: Hierarchy, domain: str, reserve: float,
                 noted: Noted = lambda cgroup, file, old: None) -> None:
        self.hierarchy = hierarchy
        self.domain = domain
        self.reserve = reserve
        #: Told each original before its first change (the durable undo log).
        self.noted = noted
        #: memory.high as found, per cgroup ever armed: written back by ``restore``.
        self.original: dict[str, Limit] = {}
        #: The level each armed tripwire is at now.
        self.armed: dict[str, int] = {}
        #: How many times each tripwire was stepped up on the loop: an arm whose reads are
        #: older than a step leaves that tripwire alone (its level would be stale, and
        #: could sit above the crossing: measured, a kill 155 ms late).
        self._steps: dict[str, int] = {}
        self._lock = threading.Lock()

    def reserve_bytes(self, info: MemInfo) -> int:
        return int(info.total * self.reserve)

    def arm(self, children: Iterable[str]) -> tuple[MemInfo, list[str]]:
        """Arm (or re-arm) a tripwire on each of ``children`` for the headroom now. Returns
        the memory read and one sentence per cgroup that could not be armed."""
        with self._lock:
            steps = dict(self._steps)
        info = read_meminfo(self.hierarchy)
        headroom = info.available - self.reserve_bytes(info)
        problems: list[str] = []
        usages: dict[str, int] = {}
        for path in children:
            try:
                usage = if_supported(self.hierarchy.cgroup(path).memory_current)
            except CgoomError:  # removed meanwhile: nothing to arm
                continue
            if usage is not None:
                usages[path] = usage
        with self._lock:
            for path, level in levels(usages, headroom).items():
                if self._steps.get(path) != steps.get(path) and path in self.armed:
                    continue  # stepped up since this arm read: newer than our figures
                cgroup = self.hierarchy.cgroup(path)
                try:
                    if path not in self.original:
                        self.original[path] = cgroup.memory_high()
                    original = self.original[path]
                    if original != "max" and original <= level:
                        self.armed.pop(path, None)  # its own memory.high trips first
                        continue
                    if self.armed.get(path) != level:
                        self.noted(path, "memory.high", str(original))
                        cgroup.set_memory_high(level)
                    self.armed[path] = level
                except CgoomError as exc:
                    self.armed.pop(path, None)
                    problems.append(f"tripwire on {path}: {exc}")
        return info, problems

    def step(self, path: str, info: MemInfo) -> bool:
        """The tripwire on ``path`` fired with memory still plentiful: move it up at once to
        the cgroup's usage plus its share of the headroom now (on the loop: a raise never
        reclaims), so the grower is never left without one while the worker re-arms the
        rest. ``False`` (nothing written) where that would not be a raise well above usage;
        the caller then releases it."""
        with self._lock:
            old = self.armed.get(path)
            if old is None:
                return False
            cgroup = self.hierarchy.cgroup(path)
            try:
                usage = cgroup.memory_current()
            except CgoomError:
                return False
            headroom = info.available - self.reserve_bytes(info)
            level = levels({path: usage}, headroom // max(len(self.armed), 1))[path]
            original = self.original[path]
            if level <= old or (original != "max" and original <= level):
                return False
            try:
                cgroup.set_memory_high(level)
            except CgoomError:
                return False
            self.armed[path] = level
            self._steps[path] = self._steps.get(path, 0) + 1
            return True

    def release(self, path: str) -> bool:
        """Put ``path``'s memory.high back as it was (the tripwire fired): ``True`` if it was
        armed."""
        with self._lock:
            if self.armed.pop(path, None) is None:
                return False
            with contextlib.suppress(CgoomError):  # gone: nothing to release
                self.hierarchy.cgroup(path).set_memory_high(self.original[path])
            return True

    def restore(self) -> list[str]:
        """Put back every memory.high ever changed; one sentence per failure (a cgroup gone
        meanwhile is not one)."""
        problems = []
        with self._lock:
            for path, original in self.original.items():
                if path not in self.armed:
                    continue
                try:
                    self.hierarchy.cgroup(path).set_memory_high(original)
                except CgoomError as exc:
                    if self.hierarchy.cgroup(path).exists():
                        problems.append(f"could not restore memory.high of {path} to "
                                        f"{original}: {exc}")
            self.armed.clear()
        return problems


class DomainTripwire:
    """``Rule(usage_above=0.9)``: memory.high at that fraction of the domain's memory.max,
    released (put back) on its first event, so the kernel says when usage crosses the level
    and throttles nothing for long. ``arm`` in a worker thread, ``release`` on the loop."""

    def __init__(self, hierarchy: Hierarchy, domain: str, fraction: float,
                 noted: Noted = lambda cgroup, file, old: None) -> None:
        self.hierarchy = hierarchy
        self.domain = domain
        self.fraction = fraction
        self.noted = noted
        self.original: Limit | None = None
        self.level: int | None = None
        self.armed = False
        self._lock = threading.Lock()

    def arm(self) -> tuple[int | None, str | None]:
        """Arm at ``fraction`` of memory.max; (usage now, or None; why not armed, or None).
        Never below usage: the caller fires at once when usage is at the level already."""
        cgroup = self.hierarchy.cgroup(self.domain)
        with self._lock:
            try:
                limit = cgroup.memory_max()
                if limit == "max":
                    return None, f"{self.domain} has no memory.max to take a fraction of"
                if self.original is None:
                    self.original = cgroup.memory_high()
                self.level = int(limit * self.fraction) // PAGE * PAGE
                usage = cgroup.memory_current()
                if usage >= self.level:
                    return usage, None
                if self.original != "max" and self.original <= self.level:
                    return usage, None  # its own memory.high trips first
                self.noted(self.domain, "memory.high", str(self.original))
                cgroup.set_memory_high(self.level)
                self.armed = True
                return usage, None
            except CgoomError as exc:
                return None, f"tripwire on {self.domain}: {exc}"

    def release(self) -> bool:
        with self._lock:
            if not self.armed or self.original is None:
                return False
            self.armed = False
            with contextlib.suppress(CgoomError):
                self.hierarchy.cgroup(self.domain).set_memory_high(self.original)
            return True

    def restore(self) -> list[str]:
        with self._lock:
            if not self.armed or self.original is None:
                return []
            self.armed = False
            try:
                self.hierarchy.cgroup(self.domain).set_memory_high(self.original)
            except CgoomError as exc:
                if self.hierarchy.cgroup(self.domain).exists():
                    return [f"could not restore memory.high of {self.domain} to "
                            f"{self.original}: {exc}"]
            return []
