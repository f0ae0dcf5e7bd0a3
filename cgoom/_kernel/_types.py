"""Value records for what the kernel's cgroup files contain.

All are ``@attrs.frozen`` (immutable, slotted, compared by value) so they can be stored,
diffed, logged and replayed. They hold data only; :mod:`cgoom._kernel._parse` builds them from text.

Some facts about the formats (Documentation/admin-guide/cgroup-v2.rst, mm/memcontrol.c):

- A counter the running kernel does not have is ``None`` here, never ``0``: ``oom_group_kill``
  appeared in Linux 5.17, ``sock_throttled`` in 6.19, ``memory.swap.events high`` in 5.8,
  ``cgroup.events frozen`` in 5.2. A policy must be able to tell "no such counter" from "zero".
- Keys the kernel adds later are appended anywhere in a flat-keyed file; they are kept in
  ``extra`` (and ``MemoryStat`` keeps every key), so nothing the kernel says is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Final, Literal, NoReturn

import attrs

#: The kernel's word for "no limit" in memory.high/max, memory.swap.*, memory.zswap.max.
MAX: Final = "max"

#: A limit as read back: a byte count or :data:`MAX`.
Limit = int | Literal["max"]


class FrozenDict(dict[str, int]):
    """A read-only, hashable ``dict``: the mappings inside frozen records (counters, deltas,
    memory.stat). It stays a ``dict`` so ``json.dumps`` and ``attrs.asdict`` take it as one;
    every method that would change it raises ``TypeError``."""

    __slots__ = ()

    def _readonly(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError(f"{type(self).__name__} is read-only: records are frozen")

    __setitem__ = __delitem__ = __ior__ = _readonly
    clear = pop = popitem = setdefault = update = _readonly

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))

    def __repr__(self) -> str:
        return f"FrozenDict({dict.__repr__(self)})"

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[str, int]]]:
        return (FrozenDict, (dict(self),))


_EMPTY = FrozenDict()


def frozen_mapping(value: Mapping[str, int]) -> Mapping[str, int]:
    # A private, read-only copy so a record never aliases a caller's mutable dict. The empty
    # one is shared: a watcher keeps four records per cgroup, nearly all with no `extra`, and
    # every dict is one more object for Python's cyclic GC to walk (a full collection with
    # 10,000 watched cgroups paused the loop for 54-83 ms).
    if type(value) is FrozenDict:
        return value
    return FrozenDict(value) if value else _EMPTY


@attrs.frozen
class MemoryEvents:
    """``memory.events`` or ``memory.events.local``: how often each event has happened.

    Counters are monotonic for the life of the cgroup; diff two readings to see what happened
    in between (the kernel coalesces notifications, never counts).
    """

    low: int
    high: int
    max: int
    oom: int
    oom_kill: int
    #: Linux 5.17+; ``None`` on older kernels.
    oom_group_kill: int | None = None
    #: Linux 6.19+; ``None`` on older kernels.
    sock_throttled: int | None = None
    #: Keys this version of cgoom does not know, as the kernel wrote them.
    extra: Mapping[str, int] = attrs.field(factory=dict, converter=frozen_mapping)


@attrs.frozen
class SwapEvents:
    """``memory.swap.events``."""

    max: int
    fail: int
    #: Linux 5.8+; ``None`` on older kernels.
    high: int | None = None
    extra: Mapping[str, int] = attrs.field(factory=dict, converter=frozen_mapping)


@attrs.frozen
class CgroupEvents:
    """``cgroup.events``."""

    #: A process lives in this cgroup or a descendant (zombies do not count).
    populated: bool
    #: Linux 5.2+: the freeze requested through ``cgroup.freeze`` has completed.
    frozen: bool | None = None
    extra: Mapping[str, int] = attrs.field(factory=dict, converter=frozen_mapping)


@attrs.frozen
class PressureLine:
    """One line of a PSI file: share of wall time stalled (percent) over 10/60/300 s windows,
    and the total stall time in microseconds since boot or cgroup creation."""

    avg10: float
    avg60: float
    avg300: float
    total_us: int


@attrs.frozen
class Pressure:
    """``memory.pressure`` (or any ``*.pressure``/``/proc/pressure/*`` file)."""

    some: PressureLine
    #: ``None`` where the kernel prints no ``full`` line (``cpu`` before Linux 5.13).
    full: PressureLine | None = None


@attrs.frozen
class MemoryStat(Mapping[str, int]):
    """``memory.stat``: every key the kernel printed, in bytes or counts.

    It is a read-only mapping (``stat["anon"]``, ``stat.get("zswap")``); the attributes below
    are the keys a handler uses most, ``None`` where this kernel does not print them.
    """

    #: Every key and value as the kernel printed them (also reachable as the mapping itself).
    data: Mapping[str, int] = attrs.field(converter=frozen_mapping)

    def __getitem__(self, key: str) -> int:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def anon(self) -> int | None:
        """Anonymous memory (heap, stacks, private mappings)."""
        return self.data.get("anon")

    @property
    def file(self) -> int | None:
        """Page cache."""
        return self.data.get("file")

    @property
    def kernel(self) -> int | None:
        """All kernel memory (Linux 5.18+ prints ``kernel``)."""
        return self.data.get("kernel")

    @property
    def shmem(self) -> int | None:
        """Shared memory and tmpfs, counted in ``file`` too."""
        return self.data.get("shmem")

    def freeable(self, swap: int | None) -> int:
        """What killing every process of the cgroup gives back at once: the keys of
        :data:`FREEABLE_KEYS` (those this kernel prints) plus ``swap``, the cgroup's
        ``memory.swap.current`` (``None``: no swap accounting, nothing to add). Page cache
        (``file``, ``shmem`` included) is left out: the kernel could reclaim the clean part
        without a kill, and tmpfs and shared memory outlive the processes. So is ``percpu``
        and reclaimable slab: they belong to the cgroup, not its processes."""
        return sum(self.data.get(key, 0) for key in FREEABLE_KEYS) + (swap or 0)


# Some facts about what a kill frees (Documentation/admin-guide/cgroup-v2.rst, memory.stat):
# - ``anon`` is private anonymous memory only: MAP_SHARED|MAP_ANONYMOUS and tmpfs pages are
#   ``shmem``, counted under ``file``, and stay while a file or another mapper holds them.
# - ``memory.swap.current`` counts every swap slot charged to the cgroup, those zswap holds
#   included; the compressed copies themselves are in RAM, as ``zswap`` (5.19+), charged to
#   memory.current. A kill frees both: the slots and the compressed copies.
# - ``kernel_stack``, ``pagetables`` and ``sec_pagetables`` (6.0+, KVM's secondary page
#   tables) die with the processes; ``sock`` is socket buffers, freed as the sockets close;
#   ``slab_unreclaimable`` is mostly per-process objects (task, files, signal structures).
# - ``percpu`` is the cgroup's own per-cpu data, freed only when the cgroup is removed;
#   ``slab_reclaimable`` (dentries, inodes) the kernel reclaims without a kill.
# - Every key is in Linux 6.1's memory.stat; a kernel that lacks one adds nothing for it.
#: The ``memory.stat`` keys whose memory a kill gives back (:meth:`MemoryStat.freeable`).
FREEABLE_KEYS: tuple[str, ...] = ("anon", "zswap", "kernel_stack", "pagetables",
                                  "sec_pagetables", "sock", "slab_unreclaimable")


#: What ``cgroup.type`` says: a domain (the default), the root of a threaded subtree, a
#: domain made invalid by a threaded child, or a threaded cgroup.
CgroupType = Literal["domain", "domain threaded", "domain invalid", "threaded"]
