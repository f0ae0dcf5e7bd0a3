"""Snapshots: everything a policy may weigh about each candidate cgroup, read in one pass.

A policy never touches the kernel; :class:`Snapshotter` reads the incident's subtree once
and hands the policy frozen :class:`CgroupSnapshot` records. A field this kernel (or this
cgroup) does not have is ``None``, never ``0``, so a policy can tell "absent" from "zero".

Where the per-cgroup settings come from (docs/policies.md):

- ``priority``: the xattr ``user.cgoom.priority`` (an integer; higher is more important),
  else the first configured pattern that matches, else 0.
- ``preference``: ``user.cgoom.preference`` (``prefer``/``avoid``/``omit``), else the
  conventions users already set for the peers: ``user.oomd_omit`` (systemd's
  ManagedOOMPreference=omit), ``trusted.oomd_prefer``/``user.oomd_prefer``,
  ``trusted.oomd_avoid``/``user.oomd_avoid``. For the peers' names only presence matters
  (oomd's Fs::readKillPreferenceAt); omit beats prefer beats avoid.
- ``killable``: ``user.cgoom.killable`` (the workload saved its state and may die first).
- ``overlimit``: ``user.cgoom.overlimit`` (its limit was raised temporarily; it ranks below
  its peers of the same priority, as in Google's handler).

A setting that cannot be read as documented is ignored and recorded in ``problems``: a
broken xattr must never crash a decision at OOM time.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import attrs

from ._cgroup import (
    KILLABLE_XATTR,
    OVERLIMIT_XATTR,
    PREFERENCE_XATTR,
    PRIORITY_XATTR,
    Cgroup,
    if_supported,
)
from ._errors import CgoomError, CgroupGone, NotSupported
from ._hierarchy import Hierarchy
from ._types import Limit, MemoryEvents, Pressure

Preference = Literal["prefer", "avoid", "omit"]
_PEER_PREFERENCES: tuple[tuple[str, Preference], ...] = (
    ("user.oomd_omit", "omit"),
    ("trusted.oomd_prefer", "prefer"),
    ("user.oomd_prefer", "prefer"),
    ("trusted.oomd_avoid", "avoid"),
    ("user.oomd_avoid", "avoid"),
)


@attrs.frozen
class ProcessSnapshot:
    """One process of a cgroup: what picks a single victim inside it."""

    pid: int
    name: str
    #: /proc/<pid>/oom_score_adj: -1000 (never) to 1000 (first); higher is more killable.
    oom_score_adj: int
    #: Resident set size in bytes.
    rss: int


@attrs.frozen
class CgroupSnapshot:
    """One candidate cgroup as read in one pass. ``path`` is below the mount ("/a/b")."""

    path: str
    usage: int | None = None
    peak: int | None = None
    swap: int | None = None
    anon: int | None = None
    file: int | None = None
    kernel: int | None = None
    #: Bytes per second over the recent window (``None`` until two readings exist).
    growth: float | None = None
    pressure: Pressure | None = None
    events: MemoryEvents | None = None
    populated: bool | None = None
    pids: tuple[int, ...] = ()
    #: Seconds since the cgroup directory was created, where the filesystem says.
    age: float | None = None
    memory_min: Limit | None = None
    memory_low: Limit | None = None
    memory_high: Limit | None = None
    memory_max: Limit | None = None
    oom_group: bool | None = None
    priority: int = 0
    preference: Preference | None = None
    killable: bool = False
    overlimit: bool = False
    #: Filled for cgroups a single process may be picked from (leaves without oom.group).
    processes: tuple[ProcessSnapshot, ...] = ()
    #: Settings that could not be read as documented, and were ignored.
    problems: tuple[str, ...] = ()

    @property
    def protection(self) -> int:
        """The larger of memory.min and memory.low in bytes (0 when unset or unknown;
        ``max`` counts as all of the usage)."""
        best = 0
        for value in (self.memory_min, self.memory_low):
            if value == "max":
                return self.usage or 0
            if isinstance(value, int):
                best = max(best, value)
        return best

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[1]


def read_processes(pids: Iterable[int], proc_root: str = "/proc") -> tuple[ProcessSnapshot, ...]:
    """Process records for ``pids``; a process that exits meanwhile is left out."""
    result = []
    for pid in pids:
        base = os.path.join(proc_root, str(pid))
        try:
            with open(os.path.join(base, "oom_score_adj")) as f:
                adj = int(f.read().strip())
            with open(os.path.join(base, "statm")) as f:
                rss_pages = int(f.read().split()[1])
            with open(os.path.join(base, "comm")) as f:
                name = f.read().strip()
        except (OSError, ValueError, IndexError):
            continue  # gone, or a zombie: nothing to free
        result.append(ProcessSnapshot(pid, name, adj, rss_pages * os.sysconf("SC_PAGE_SIZE")))
    return tuple(result)


class Snapshotter:
    """Reads candidate snapshots for decisions.

    ``priorities``: ``(pattern, priority)`` pairs, fnmatch on the path below the mount
    (``"workload.slice/web*"``), used where ``user.cgoom.priority`` is unset; first match
    wins. ``growth_window``: seconds of usage history kept per cgroup for ``growth``.

    The usage history is the only state kept between decisions: a bounded
    ``cachetools.TTLCache`` (old entries expire, the number of cgroups is capped), so
    cgroups that vanished are forgotten. Nothing else is cached across decisions.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        *,
        priorities: Sequence[tuple[str, int]] = (),
        growth_window: float = 30.0,
        max_cgroups: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.hierarchy = hierarchy
        self.priorities = tuple(priorities)
        self.growth_window = growth_window
        self._clock = clock
        import cachetools  # here, not at module level: `import cgoom` stays lean

        self._history: cachetools.TTLCache[str, tuple[float, int]] = cachetools.TTLCache(
            maxsize=max_cgroups, ttl=growth_window, timer=clock)

    def _pattern_priority(self, path: str) -> int:
        rel = path.lstrip("/")
        for pattern, priority in self.priorities:
            if fnmatch.fnmatchcase(rel, pattern):
                return priority
        return 0

    def _settings(self, cgroup: Cgroup, problems: list[str]) -> dict[str, object]:
        def xattr(name: str) -> str | None:
            try:
                return cgroup.get_xattr(name)
            except CgroupGone:
                raise
            except CgoomError as exc:
                if not isinstance(exc, NotSupported) and "trusted." not in name:
                    problems.append(str(exc))
                return None

        priority = self._pattern_priority(cgroup.path)
        text = xattr(PRIORITY_XATTR)
        if text is not None:
            try:
                priority = int(text.strip())
            except ValueError:
                problems.append(f"{PRIORITY_XATTR}={text!r} is not an integer; ignored")
        preference: Preference | None = None
        text = xattr(PREFERENCE_XATTR)
        if text is not None:
            if text.strip() in ("prefer", "avoid", "omit"):
                preference = text.strip()  # type: ignore[assignment]
            else:
                problems.append(f"{PREFERENCE_XATTR}={text!r} is not prefer, avoid or omit; "
                                "ignored")
        if preference is None:
            for name, meaning in _PEER_PREFERENCES:
                if xattr(name) is not None:
                    preference = meaning
                    break
        return {
            "priority": priority,
            "preference": preference,
            "killable": (xattr(KILLABLE_XATTR) or "").strip() == "1",
            "overlimit": (xattr(OVERLIMIT_XATTR) or "").strip() == "1",
        }

    def read(self, cgroup: Cgroup, *, processes: bool = False) -> CgroupSnapshot:
        """One cgroup's snapshot. Raises :class:`~cgoom.CgroupGone` if it vanished."""
        problems: list[str] = []
        settings = self._settings(cgroup, problems)
        usage = if_supported(cgroup.memory_current)
        stat = if_supported(cgroup.memory_stat)
        cg_events = if_supported(cgroup.cgroup_events)
        pids = cgroup.cgroup_procs()
        now = self._clock()
        growth = None
        if usage is not None:
            first = self._history.get(cgroup.path)
            if first is None:
                self._history[cgroup.path] = (now, usage)
            elif now - first[0] > 0:
                growth = (usage - first[1]) / (now - first[0])
        try:
            age: float | None = time.time() - os.stat(cgroup.dir).st_ctime
        except OSError:
            age = None
        return CgroupSnapshot(
            path=cgroup.path,
            usage=usage,
            peak=if_supported(cgroup.memory_peak),
            swap=if_supported(cgroup.memory_swap_current),
            anon=None if stat is None else stat.get("anon"),
            file=None if stat is None else stat.get("file"),
            kernel=None if stat is None else stat.get("kernel"),
            growth=growth,
            pressure=if_supported(cgroup.memory_pressure),
            events=if_supported(cgroup.memory_events),
            populated=None if cg_events is None else cg_events.populated,
            pids=pids,
            age=age,
            memory_min=if_supported(cgroup.memory_min),
            memory_low=if_supported(cgroup.memory_low),
            memory_high=if_supported(cgroup.memory_high),
            memory_max=if_supported(cgroup.memory_max),
            oom_group=if_supported(cgroup.memory_oom_group),
            processes=read_processes(pids, self.hierarchy.proc_root) if processes else (),
            problems=tuple(problems),
            **settings,  # type: ignore[arg-type]
        )

    def snapshot(self, root: str) -> dict[str, CgroupSnapshot]:
        """Snapshots of ``root`` and every descendant, read once, parents first. Cgroups
        that vanish during the pass are left out. Leaves that are not ``memory.oom.group``
        units also get their processes, for single-process victims."""
        result: dict[str, CgroupSnapshot] = {}
        for cgroup in self.hierarchy.cgroup(root).walk():
            try:
                result[cgroup.path] = self.read(cgroup)
            except CgroupGone:
                continue
        # Processes from the pids already read, for leaves (no child in this pass) that are
        # not oom.group units: no file of the pass is read twice.
        children = tree_children(result)
        for path, snap in result.items():
            if not children[path] and snap.oom_group is not True and snap.pids:
                result[path] = attrs.evolve(
                    snap, processes=read_processes(snap.pids, self.hierarchy.proc_root))
        return result


def tree_children(candidates: Mapping[str, CgroupSnapshot]) -> dict[str, list[str]]:
    """``path -> child paths`` (sorted) for the candidates whose parent is also a candidate."""
    children: dict[str, list[str]] = {p: [] for p in candidates}
    for path in candidates:
        parent = path.rsplit("/", 1)[0] or "/"
        if path != "/" and parent in children:
            children[parent].append(path)
    for kids in children.values():
        kids.sort()
    return children
