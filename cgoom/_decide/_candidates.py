"""The policy's input: candidate records and the tree helpers. Pure: no I/O, no clock.

Policies import this module, never the snapshotter that fills it (``_snapshot``), so a policy
can be written, tested and replayed with plain data.

Identity. A path names a cgroup only until it is removed and re-created; a pid names a
process only until it exits and the number is reused. So every record carries identity:
``CgroupSnapshot.inode`` is the cgroup's id (the inode number of its cgroupfs directory, the
kernel's ``cgroup_id()`` on 64-bit), ``ProcessSnapshot.start_time`` is field 22 of
``/proc/PID/stat`` (clock ticks after boot). Whoever acts on a decision re-checks both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import attrs

from .._kernel._parse import PRIORITY_MAX as PRIORITY_MAX
from .._kernel._parse import PRIORITY_MIN as PRIORITY_MIN
from .._kernel._paths import ancestors_and_self, normalize_path, parent_path
from .._kernel._types import Limit, MemoryEvents, Pressure

#: A cgroup's preference (``user.oomd_prefer``/``avoid``/``omit`` and cgoom's own): chosen
#: first, chosen last, or never chosen.
Preference = Literal["prefer", "avoid", "omit"]

@attrs.frozen
class ProcessSnapshot:
    """One process of a cgroup: what picks a single victim inside it."""

    pid: int
    #: ``comm`` as the process set it, decoded with replacement: any bytes are allowed there.
    name: str
    #: /proc/<pid>/oom_score_adj: -1000 (never) to 1000 (first); higher is more killable.
    #: ``None`` when it could not be read: such a process is never chosen.
    oom_score_adj: int | None
    #: Resident set size in bytes.
    rss: int
    #: Field 22 of /proc/<pid>/stat (clock ticks after boot): with ``pid``, the identity of
    #: the process. ``None`` where unknown (then no kill through this record is safe).
    start_time: int | None = None
    #: From /proc/<pid>/smaps_rollup, read only for a policy whose ``fields`` ask for
    #: ``"pss"`` (it costs): the proportional and unique set sizes, and what killing it
    #: would give back (its private anonymous memory and share of swap; docs/policies.md).
    #: ``None`` where not read.
    pss: int | None = attrs.field(default=None, kw_only=True)
    uss: int | None = attrs.field(default=None, kw_only=True)
    freeable: int | None = attrs.field(default=None, kw_only=True)

    @property
    def frees(self) -> int:
        """What its kill is taken to give back: ``freeable`` where read, else its RSS."""
        return self.rss if self.freeable is None else self.freeable


def _processes(value: Iterable[ProcessSnapshot]) -> tuple[ProcessSnapshot, ...]:
    return tuple(value)


def int_tuple(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


def str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class CgroupSnapshot:
    """One candidate cgroup as read in one pass. ``path`` is below the mount (``"/a/b"``);
    every other field is keyword-only. A field that was not read (the policy did not ask
    for it) or that this kernel lacks is ``None``, never ``0``."""

    path: str = attrs.field(converter=normalize_path)
    #: The cgroup's id: its directory's inode number. ``None`` for hand-made records.
    inode: int | None = attrs.field(default=None, kw_only=True)
    #: The uid owning the directory (who may write its ``user.*`` xattrs; docs/policies.md).
    owner: int | None = attrs.field(default=None, kw_only=True)
    usage: int | None = attrs.field(default=None, kw_only=True)
    peak: int | None = attrs.field(default=None, kw_only=True)
    swap: int | None = attrs.field(default=None, kw_only=True)
    anon: int | None = attrs.field(default=None, kw_only=True)
    file: int | None = attrs.field(default=None, kw_only=True)
    kernel: int | None = attrs.field(default=None, kw_only=True)
    #: What killing it gives back at once: anonymous memory, swap (zswap's too) and the
    #: kernel memory its processes hold, not page cache (``MemoryStat.freeable``).
    freeable: int | None = attrs.field(default=None, kw_only=True)
    #: Bytes per second over the recent window (``None`` until two readings exist).
    growth: float | None = attrs.field(default=None, kw_only=True)
    pressure: Pressure | None = attrs.field(default=None, kw_only=True)
    events: MemoryEvents | None = attrs.field(default=None, kw_only=True)
    #: A process lives here or below (``cgroup.procs`` of the subtree, and the kernel's own
    #: ``populated`` in cgroup.events for a cgroup with no process of its own).
    populated: bool | None = attrs.field(default=None, kw_only=True)
    #: The processes directly in this cgroup (not its descendants).
    pids: tuple[int, ...] = attrs.field(default=(), kw_only=True, converter=int_tuple)
    #: Seconds since the cgroup directory was created, where the filesystem says.
    age: float | None = attrs.field(default=None, kw_only=True)
    memory_min: Limit | None = attrs.field(default=None, kw_only=True)
    memory_low: Limit | None = attrs.field(default=None, kw_only=True)
    memory_high: Limit | None = attrs.field(default=None, kw_only=True)
    memory_max: Limit | None = attrs.field(default=None, kw_only=True)
    oom_group: bool | None = attrs.field(default=None, kw_only=True)
    priority: int = attrs.field(default=0, kw_only=True)
    preference: Preference | None = attrs.field(default=None, kw_only=True)
    killable: bool = attrs.field(default=False, kw_only=True)
    overlimit: bool = attrs.field(default=False, kw_only=True)
    #: A threaded cgroup (``cgroup.procs`` is EOPNOTSUPP there): its threads belong to
    #: processes of the threaded domain above it; it is never a unit of its own.
    threaded: bool = attrs.field(default=False, kw_only=True)
    #: This record stands for the processes living directly in a cgroup that also has child
    #: cgroups (see :func:`cgoom.units`): it may give up single processes, never die whole.
    internal: bool = attrs.field(default=False, kw_only=True)
    #: This record stands for its whole subtree: the kernel says processes live in it and it
    #: holds memory, but none was seen in its cgroups (they moved between them while they
    #: were read: a tenant flipping its hog between its own cgroups). It dies whole, its
    #: processes wherever they now sit inside it (see :func:`cgoom.units`).
    subtree: bool = attrs.field(default=False, kw_only=True)
    #: The cgroups below it that were not read: a delegated cgroup with more of them than a
    #: decision reads below one (``Snapshotter(max_tenant_cgroups=)``, 256) stands for its
    #: whole subtree (``subtree`` is then true), ranked by its own totals.
    unread: int = attrs.field(default=0, kw_only=True)
    #: Filled for the units a single process may be picked from.
    processes: tuple[ProcessSnapshot, ...] = attrs.field(default=(), kw_only=True,
                                                         converter=_processes)
    #: What could not be read as documented, or was ignored (and why).
    problems: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=str_tuple)

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


def _paths(value: object) -> frozenset[str]:
    return frozenset(normalize_path(p) for p in value)  # type: ignore[attr-defined]


@attrs.frozen
class Incident:
    """What a policy is asked about: ``cgroup`` ran out of memory (the subtree victims come
    from), because of ``trigger`` (``"oom"``, ``"high"``, ``"pressure"``, ``"manual"``...).
    Paths are normalised here (``"t"``, ``"/t/"`` and ``"//t"`` are ``"/t"``).

    ``protected``: cgroups never chosen; :meth:`create` fills it with cgoom's own cgroup and
    its ancestors.
    """

    cgroup: str = attrs.field(converter=normalize_path)
    trigger: str = "oom"
    protected: frozenset[str] = attrs.field(default=frozenset(), converter=_paths)

    @classmethod
    def create(cls, cgroup: str, trigger: str = "oom", *, own_cgroup: str | None = None,
               ) -> Incident:
        protected = (frozenset() if own_cgroup is None
                     else ancestors_and_self(normalize_path(own_cgroup)))
        return cls(cgroup, trigger, protected)


def tree_children(candidates: Mapping[str, CgroupSnapshot]) -> dict[str, list[str]]:
    """``path -> child paths`` (sorted) for the candidates whose parent is also a candidate."""
    children: dict[str, list[str]] = {p: [] for p in candidates}
    for path in candidates:
        parent = parent_path(path)
        if path != "/" and parent in children:
            children[parent].append(path)
    for kids in children.values():
        kids.sort()
    return children
