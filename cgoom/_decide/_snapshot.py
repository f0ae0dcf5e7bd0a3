"""``Snapshotter``: reads the candidate records (``_candidates``) a policy decides on.

One pass over a subtree (or, for the priority policy's large domains, level by level as it
descends: :meth:`Snapshotter.descend`), reading only what the policy declares it needs
(``fields``), never a file twice; everything through the hierarchy's
:class:`~cgoom.CgroupFS`, so the fake tree covers /proc and ``stat`` too. A policy never
touches the kernel.

What a snapshot always holds, whatever the fields: the structure, each cgroup's identity and
owner (one ``stat``), its settings (one ``listxattr``, then only the xattrs that are set),
``cgroup.procs`` and ``memory.oom.group`` (what may be chosen, and how), ``populated``
(derived from the subtree's ``cgroup.procs``) and ``age``.

Reading never fails as a whole: a cgroup that vanishes mid-pass is left out, and a file that
cannot be read as documented leaves its field ``None`` with a line in ``problems``. A
threaded cgroup (``cgroup.procs`` is EOPNOTSUPP there, cgroup-v2.rst "Threads") is marked
``threaded``. A process that exits mid-pass is left out; one whose files cannot be read
while it still exists stays, with what could be read (``oom_score_adj=None`` is never
chosen).

The trust model (docs/policies.md, "Who may set what"): any ``user.*`` xattr is writable by
the cgroup directory's owner, and delegation (systemd's ``Delegate=yes``, rootless
containers) gives a tenant its directory. So a setting counts only where its writer is
trusted for what it does:

- *trusted*: the directory is owned by root, or by the owner of the snapshot's root (the
  domain: an unprivileged cgoom in its own delegated subtree trusts itself);
- ``priority`` from an untrusted owner counts only among siblings of the same owner (the
  tenant ordering its own children: the priority descent compares siblings only), or when
  it lowers the cgroup (volunteering to die sooner);
- ``avoid`` and ``omit`` need a trusted writer: they shield a cgroup from every policy;
- ``prefer``, ``killable`` and ``overlimit`` only make a cgroup die sooner: anyone's count;
- ``trusted.*`` xattrs (CAP_SYS_ADMIN only) and configured patterns are always trusted.

Whatever is ignored is recorded in ``problems`` with the reason.

What a decision reads is bounded by what the decision needs, not by what a tenant creates: a
delegated subtree (its top cgroup owned by neither root nor the domain's owner) with more than
``max_tenant_cgroups`` cgroups below it (:data:`TENANT_CGROUPS`, 256) is read by its own
totals only and stands for its whole subtree (``subtree=True``, ``unread``: how many cgroups
were not read): ranked beside its siblings as one unit, and killed whole if chosen. A tenant
that added 2,000 children to its own cgroup made every decision of its domain read them all
(benchmarks/tenant.py: 0.8 -> 81 ms for its own, 105-121 ms for its neighbours' under
``largest``). The operator's own cgroups (root's) are always read, however many.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar

import attrs

from .._errors import CgoomError, CgroupGone, InvalidValue, NotSupported
from .._kernel import _parse
from .._kernel._cgroup import (
    KILLABLE_XATTR,
    OVERLIMIT_XATTR,
    PREFERENCE_XATTR,
    PRIORITY_XATTR,
    Cgroup,
)
from .._kernel._hierarchy import Hierarchy
from .._kernel._parse import check_priority
from .._kernel._paths import inside, normalize_path, parent_path
from .._kernel._proc import oom_score_adj, process_now, process_stat, readable
from ._candidates import (
    CgroupSnapshot,
    Preference,
    ProcessSnapshot,
    tree_children,
)

if TYPE_CHECKING:
    from .._kernel._worker import Worker
    from ._policy import Victim

_PEER_PREFERENCES: tuple[tuple[str, Preference], ...] = (
    ("user.oomd_omit", "omit"),
    ("trusted.oomd_prefer", "prefer"),
    ("user.oomd_prefer", "prefer"),
    ("trusted.oomd_avoid", "avoid"),
    ("user.oomd_avoid", "avoid"),
)
_SETTINGS_XATTRS = frozenset({PRIORITY_XATTR, PREFERENCE_XATTR, KILLABLE_XATTR,
                              OVERLIMIT_XATTR, *(n for n, _ in _PEER_PREFERENCES)})

#: The snapshot fields a policy may ask for (its ``fields`` attribute); the rest (structure,
#: identity, owner, settings, pids, oom_group, populated, age) are always read.
FIELDS: Final = frozenset({
    "usage", "peak", "swap", "anon", "file", "kernel", "freeable", "growth", "pressure",
    "events", "memory_min", "memory_low", "memory_high", "memory_max", "processes",
})
#: Fields read only for a policy that names them: ``"pss"``, each process's
#: /proc/<pid>/smaps_rollup (its ``pss``, ``uss`` and ``freeable``), for the units whose
#: processes are read (those not killed whole). It walks each process's page tables.
OPT_IN_FIELDS: Final = frozenset({"pss"})
KNOWN_FIELDS: Final = FIELDS | OPT_IN_FIELDS

#: The most cgroups a decision reads below one delegated cgroup (``max_tenant_cgroups``).
TENANT_CGROUPS = 256

_SIMPLE: dict[str, Callable[[Cgroup], Any]] = {
    "usage": Cgroup.memory_current,
    "peak": Cgroup.memory_peak,
    "swap": Cgroup.memory_swap_current,
    "pressure": Cgroup.memory_pressure,
    "events": Cgroup.memory_events,
    "memory_min": Cgroup.memory_min,
    "memory_low": Cgroup.memory_low,
    "memory_high": Cgroup.memory_high,
    "memory_max": Cgroup.memory_max,
}


#: ``step(node, kids, is_leaf)`` of :meth:`Snapshotter.descend`: ``(path, go deeper?)`` or
#: ``None`` (``PriorityPolicy.descend``).
Step = Callable[[CgroupSnapshot, Sequence[CgroupSnapshot], Callable[[str], bool]],
                tuple[str, bool] | None]


def policy_fields(policy: object) -> frozenset[str]:
    """The fields ``policy`` declares (its ``fields`` attribute), or all of :data:`FIELDS`
    (the :data:`OPT_IN_FIELDS` only when named)."""
    declared = getattr(policy, "fields", None)
    if declared is None:
        return FIELDS
    return frozenset(declared) & KNOWN_FIELDS


class UsageHistory:
    """The usage readings behind ``growth``: per cgroup (path *and* id, so a re-created
    cgroup starts afresh), the oldest reading within ``window`` seconds. Bounded
    (``max_cgroups``, a ``cachetools.TTLCache``); thread-safe. Keep one for the life of a
    handler and give it to each :class:`Snapshotter`, so ``growth`` works from the first
    incident."""

    def __init__(self, window: float = 30.0, *, max_cgroups: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import cachetools  # here, not at module level: `import cgoom` stays lean

        if not window > 0:
            raise InvalidValue(f"growth window {window!r}: must be a positive number of "
                               "seconds", value=repr(window))
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        self._cache: cachetools.TTLCache[tuple[str, int | None], tuple[float, int]] = (
            cachetools.TTLCache(maxsize=max_cgroups, ttl=window, timer=clock))

    def growth(self, path: str, inode: int | None, usage: int) -> float | None:
        """Record ``usage`` now; bytes per second since the oldest reading in the window."""
        now = self.clock()
        with self._lock:
            first = self._cache.get((path, inode))
            if first is None:
                self._cache[(path, inode)] = (now, usage)
                return None
        return (usage - first[1]) / (now - first[0]) if now > first[0] else None


def check_patterns(priorities: Sequence[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    checked = []
    for i, item in enumerate(priorities):
        if not (isinstance(item, tuple | list) and len(item) == 2
                and isinstance(item[0], str)):
            raise InvalidValue(f"priorities[{i}] = {item!r}: write (pattern, priority), e.g. "
                               "('workload.slice/web*', 100)", value=repr(item))
        pattern, priority = item
        check_priority(priority, f"priorities[{i}] ({pattern!r})")
        checked.append((pattern.strip("/"), priority))
    return tuple(checked)


@attrs.frozen
class _Structure:
    """Cgroups below a root (sorted, the root included), each one's children, and how many
    lie below each."""

    below: tuple[str, ...]
    children: dict[str, list[str]]
    counts: dict[str, int]


@attrs.define
class _Pass:
    """One snapshot's context: the domain's owner and the owners seen so far."""

    root: str
    fields: frozenset[str]
    domain_owner: int | None
    owners: dict[str, int | None] = attrs.Factory(dict)


class Snapshotter:
    """Reads candidate snapshots for decisions.

    ``priorities``: ``(pattern, priority)`` pairs, fnmatch on the path below the mount
    (``"workload.slice/web*"``), used where no trusted ``user.cgoom.priority`` is set; first
    match wins. ``history``: a :class:`UsageHistory` to keep across snapshotters (default:
    a new one of ``growth_window`` seconds). ``clock`` (monotonic, for growth) and
    ``wall_clock`` (for ``age``) are injectable. ``max_tenant_cgroups``: the most cgroups
    read below a delegated cgroup (the module docstring).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        *,
        priorities: Sequence[tuple[str, int]] = (),
        growth_window: float = 30.0,
        max_cgroups: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        history: UsageHistory | None = None,
        max_tenant_cgroups: int = TENANT_CGROUPS,
    ) -> None:
        self.hierarchy = hierarchy
        if isinstance(max_tenant_cgroups, bool) or not isinstance(max_tenant_cgroups, int) \
                or max_tenant_cgroups < 1:
            raise InvalidValue(f"max_tenant_cgroups {max_tenant_cgroups!r}: a number of "
                               "cgroups, 1 or more", value=repr(max_tenant_cgroups))
        self.max_tenant_cgroups = max_tenant_cgroups
        self._known: tuple[tuple[str, tuple[str, ...]], _Structure] | None = None
        self.priorities = check_patterns(priorities)
        self.history = history if history is not None else UsageHistory(
            growth_window, max_cgroups=max_cgroups, clock=clock)
        self._wall_clock = wall_clock
        self._worker: Worker | None = None
        self._page_size = os.sysconf("SC_PAGE_SIZE")

    @property
    def growth_window(self) -> float:
        return self.history.window

    # --- settings ----------------------------------------------------------------------

    def _pattern_priority(self, path: str) -> int:
        rel = path.lstrip("/")
        for pattern, priority in self.priorities:
            if fnmatch.fnmatchcase(rel, pattern):
                return priority
        return 0

    def _settings(self, cgroup: Cgroup, owner: int | None, parent_owner: int | None,
                  domain_owner: int | None, problems: list[str]) -> dict[str, Any]:
        fs, where = self.hierarchy.fs, cgroup.dir
        try:
            names = set(fs.listxattr(where)) & _SETTINGS_XATTRS
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENODEV):
                raise CgroupGone(f"{where} vanished", path=where) from exc
            names = set()  # no xattrs on this filesystem (Linux < 5.7 for user.*)

        def xattr(name: str) -> str | None:
            if name not in names:
                return None
            try:
                return cgroup.get_xattr(name)
            except CgroupGone:
                raise
            except CgoomError as exc:
                problems.append(str(exc))
                return None

        trusted = owner is not None and owner in (0, domain_owner)
        who = (f"uid {owner}" if owner is not None else "an unknown owner")
        default = self._pattern_priority(cgroup.path)
        priority = default
        text = xattr(PRIORITY_XATTR)
        if text is not None:
            try:
                value = _parse.parse_priority(text, f"{PRIORITY_XATTR}")
            except CgoomError:
                problems.append(f"{PRIORITY_XATTR}={_shown(text)} is not an integer from "
                                f"{-(2**31)} to {2**31 - 1}; ignored")
            else:
                if trusted or owner == parent_owner or value <= default:
                    priority = value
                else:
                    problems.append(
                        f"{PRIORITY_XATTR}={value} ignored: set by {who}, who owns "
                        f"{cgroup.path} but not its parent (uid {parent_owner}) nor the domain"
                        f" (uid {domain_owner}); a delegated cgroup may order its own "
                        "children or lower itself, never raise itself among its siblings")
        preference: Preference | None = None
        source = PREFERENCE_XATTR
        text = xattr(PREFERENCE_XATTR)
        if text is not None:
            if text.strip() in ("prefer", "avoid", "omit"):
                preference = text.strip()  # type: ignore[assignment]
            else:
                problems.append(f"{PREFERENCE_XATTR}={_shown(text)} is not prefer, avoid or "
                                "omit; ignored")
        if preference is None:
            for name, meaning in _PEER_PREFERENCES:
                if xattr(name) is not None:
                    preference, source = meaning, name
                    break
        if preference in ("avoid", "omit") and not (trusted or source.startswith("trusted.")):
            problems.append(
                f"{source} ({preference}) ignored: set by {who}, who is neither root nor the "
                f"domain's owner (uid {domain_owner}); only a trusted writer may shield a "
                "cgroup")
            preference = None
        return {
            "priority": priority,
            "preference": preference,
            "killable": (xattr(KILLABLE_XATTR) or "").strip() == "1",
            "overlimit": (xattr(OVERLIMIT_XATTR) or "").strip() == "1",
        }

    # --- one cgroup --------------------------------------------------------------------

    def _read(self, cgroup: Cgroup, ctx: _Pass) -> CgroupSnapshot | None:
        """One cgroup's record, ``None`` if it vanished. Never raises for a bad file."""
        problems: list[str] = []
        fs = self.hierarchy.fs
        try:
            st = fs.stat(cgroup.dir)
        except OSError:
            return None  # gone (or never was: the caller's structure was stale)
        owner = st.st_uid
        ctx.owners[cgroup.path] = owner
        parent = parent_path(cgroup.path)
        if parent in ctx.owners:
            parent_owner = ctx.owners[parent]
        else:
            try:
                parent_owner = fs.stat(self.hierarchy.cgroup(parent).dir).st_uid
            except OSError:
                parent_owner = None
        if ctx.domain_owner is None and cgroup.path == ctx.root:
            ctx.domain_owner = owner

        def get(read: Callable[[Cgroup], Any]) -> Any:
            try:
                return read(cgroup)
            except CgroupGone:
                raise
            except NotSupported:
                return None
            except CgoomError as exc:
                problems.append(str(exc))
                return None

        try:
            settings = self._settings(cgroup, owner, parent_owner, ctx.domain_owner, problems)
            threaded = False
            try:
                pids: tuple[int, ...] | None = cgroup.cgroup_procs()
            except NotSupported:
                threaded, pids = True, None
                problems.append(f"{cgroup.path} is a threaded cgroup (cgroup.procs: "
                                "EOPNOTSUPP); its processes belong to its threaded domain")
            except CgroupGone:
                raise
            except CgoomError as exc:
                problems.append(str(exc))
                pids = None
            values = {name: get(_SIMPLE[name]) for name in ctx.fields if name in _SIMPLE}
            if "usage" not in values and "growth" in ctx.fields:
                values["usage"] = get(_SIMPLE["usage"])
            if ctx.fields & {"anon", "file", "kernel", "freeable"}:
                stat = get(Cgroup.memory_stat)
                for key in ("anon", "file", "kernel"):
                    if key in ctx.fields:
                        values[key] = None if stat is None else stat.get(key)
                if "freeable" in ctx.fields and stat is not None:
                    if "swap" not in values:
                        values["swap"] = get(_SIMPLE["swap"])  # read for it: kept
                    values["freeable"] = stat.freeable(values["swap"])
            oom_group = get(Cgroup.memory_oom_group)
            populated = None
            if not pids:
                # Threaded, unreadable, or no process of its own: ask cgroup.events, the
                # kernel's own flag for the whole subtree, read at once. The children's
                # cgroup.procs are read one after another: a process moving between them
                # meanwhile is in none of them, never out of this.
                events = get(Cgroup.cgroup_events)
                populated = None if events is None else events.populated
        except CgroupGone:
            return None
        processes: tuple[ProcessSnapshot, ...] = ()
        if "processes" in ctx.fields and pids and oom_group is not True:
            processes = self.processes(pids, smaps="pss" in ctx.fields)
        growth = None
        if "growth" in ctx.fields and values.get("usage") is not None:
            growth = self.history.growth(cgroup.path, st.st_ino, values["usage"])
        age = max(0.0, self._wall_clock() - st.st_ctime)
        return CgroupSnapshot(
            cgroup.path, inode=st.st_ino, owner=owner, growth=growth, age=age,
            pids=pids or (), populated=True if pids else populated,
            oom_group=oom_group, threaded=threaded, problems=tuple(problems),
            processes=processes, **values, **settings)

    def read(self, cgroup: Cgroup, *, processes: bool = False,
             fields: Iterable[str] = FIELDS) -> CgroupSnapshot:
        """One cgroup's snapshot, its settings trusted as in a snapshot of its parent (a
        delegated cgroup does not vouch for itself); ``processes``: read its processes too.
        Raises :class:`~cgoom.CgroupGone` if it vanished."""
        wanted = frozenset(fields) & KNOWN_FIELDS
        parent = cgroup.parent
        domain = None
        if parent is not None:
            try:
                domain = self.hierarchy.fs.stat(parent.dir).st_uid
            except OSError:
                domain = -1  # unknown: trust only root
        ctx = _Pass(parent.path if parent is not None else cgroup.path, wanted, domain)
        snap = self._read(cgroup, ctx)
        if snap is None:
            raise CgroupGone(f"cannot read {cgroup.dir}: the cgroup no longer exists",
                             path=cgroup.dir)
        if processes:
            snap = attrs.evolve(snap, processes=self.processes(snap.pids))
        return snap

    def _structure(self, root: str, paths: Iterable[str]) -> _Structure:
        """The structure of ``paths`` below ``root``, kept from the last call with the same
        (a watcher's list changes only when cgroups come and go; a tenant's 2,000 cgroups
        cost ~3 us each to sort out, at every decision)."""
        key = (root, tuple(paths))
        known = self._known
        if known is not None and known[0] == key:
            return known[1]
        below = sorted({p for p in map(normalize_path, key[1]) if inside(p, root)} | {root})
        children: dict[str, list[str]] = {}
        for path in below:
            if path != root:
                children.setdefault(parent_path(path), []).append(path)
        found = _Structure(tuple(below), children, descendant_counts(below))
        self._known = (key, found)
        return found

    def _tenant_unit(self, snap: CgroupSnapshot, below: int, ctx: _Pass) -> CgroupSnapshot:
        """``snap`` as the unit of its whole subtree if it is a delegated cgroup with more
        than ``max_tenant_cgroups`` cgroups ``below`` it (the module docstring): its
        cgroups are then not read (the walks skip the children of a ``subtree`` record)."""
        if below <= self.max_tenant_cgroups or snap.path == ctx.root \
                or snap.owner in (0, ctx.domain_owner):
            return snap
        return attrs.evolve(snap, subtree=True, unread=below, problems=(
            *snap.problems,
            f"{snap.path}: uid {snap.owner} made {below} cgroups below it, more than a "
            f"decision reads below a delegated cgroup ({self.max_tenant_cgroups}): ranked by "
            "its own totals, killed whole if chosen; bound it with cgroup.max.descendants"))

    # --- processes ---------------------------------------------------------------------

    def processes(self, pids: Iterable[int], *,
                  smaps: bool = False) -> tuple[ProcessSnapshot, ...]:
        """Records for ``pids``. A process that has exited (its /proc directory is gone) is
        left out, and so are kernel threads; any other read failure keeps the process with
        what could be read: a process cannot hide by making its files unreadable.
        ``smaps``: read each one's smaps_rollup too (``pss``, ``uss``, ``freeable``)."""
        fs, proc = self.hierarchy.fs, self.hierarchy.proc_root
        result = []
        for pid in pids:
            base = f"{proc}/{pid}"
            try:
                stat_text = fs.read(f"{base}/stat")
            except OSError:
                if not fs.exists(base):
                    continue  # exited
                result.append(ProcessSnapshot(pid, "?", None, 0))
                continue
            try:
                comm, state, flags, start, rss_pages = _parse.parse_proc_stat(
                    readable(stat_text), f"{base}/stat")
            except CgoomError:
                result.append(ProcessSnapshot(pid, "?", None, 0))
                continue
            if flags & _parse.PF_KTHREAD or state in ("Z", "X"):
                continue  # a kernel thread or already dead: nothing to kill or free
            adj = oom_score_adj(self.hierarchy, pid)
            sizes = self._rollup(f"{base}/smaps_rollup") if smaps else None
            pss, uss, freeable = sizes if sizes is not None else (None, None, None)
            result.append(ProcessSnapshot(pid, comm, adj, rss_pages * self._page_size, start,
                                          pss=pss, uss=uss, freeable=freeable))
        return tuple(result)

    def _rollup(self, path: str) -> tuple[int, int, int] | None:
        """``(pss, uss, freeable)`` from a process's smaps_rollup; ``None`` when it cannot
        be read (exited meanwhile, a kernel before 4.14, or not such a file): the process
        is then ranked by its RSS, as without ``pss``."""
        try:
            return _parse.rollup_sizes(_parse.parse_smaps_rollup(
                readable(self.hierarchy.fs.read(path)), path))
        except (OSError, CgoomError):
            return None

    # --- a subtree ---------------------------------------------------------------------

    def snapshot(self, root: str, *, fields: Iterable[str] = FIELDS,
                 paths: Iterable[str] | None = None) -> dict[str, CgroupSnapshot]:
        """Snapshots of ``root`` and every descendant, parents first, read once.

        ``fields``: what the policy needs (:func:`policy_fields`); the rest stays ``None``.
        ``paths``: the cgroups known to exist (e.g. ``watcher.watched()``), to skip listing
        every directory; those outside ``root`` are ignored. Cgroups that vanish during the
        pass are left out. With ``processes`` in ``fields``, the cgroups a single process
        may be taken from (leaves and cgroups with processes of their own, unless
        ``memory.oom.group``) also get their processes.
        """
        root = normalize_path(root)
        ctx = _Pass(root, frozenset(fields) & KNOWN_FIELDS, None)
        result: dict[str, CgroupSnapshot] = {}
        if paths is None:  # the structure first (a listing), then the reads
            walked = tuple(c.path for c in self.hierarchy.cgroup(root).walk())
            below, counts = walked, descendant_counts(walked)
        else:
            known = self._structure(root, paths)
            below, counts = known.below, known.counts
        for path in below:
            parent = parent_path(path)
            if path != root and (parent not in result or result[parent].unread):
                continue  # its parent vanished, was never there, or stands for its subtree
            snap = self._read(self.hierarchy.cgroup(path), ctx)
            if snap is not None:
                result[path] = self._tenant_unit(snap, counts.get(path, 0), ctx)
        derive_populated(result)
        # A process may be taken from any cgroup with processes of its own that does not die
        # whole: leaves (read in the pass when the policy asks), and cgroups that also have
        # children (always: their processes can only die one by one, cgoom.units).
        if "processes" not in ctx.fields:
            children = tree_children(result)
            for path, snap in result.items():
                if snap.oom_group is not True and snap.pids and any(
                        not result[k].threaded for k in children[path]):
                    result[path] = attrs.evolve(snap, processes=self.processes(snap.pids))
        return result

    def descend(self, root: str, step: Step, *, paths: Iterable[str],
                fields: Iterable[str] = FIELDS,
                adjust: Callable[[CgroupSnapshot], CgroupSnapshot] | None = None,
                ) -> tuple[dict[str, CgroupSnapshot], str | None]:
        """A snapshot read level by level, as Google's handler descends: ``root``, then all
        the children of each cgroup ``step`` goes into, and no other cgroup. ``paths``: the
        structure (a watcher's: which cgroups exist, so a leaf is known without listing
        it). ``step(node, kids, is_leaf)`` (``PriorityPolicy.descend``) names the child to
        go into or the unit to stop at. ``adjust``: applied to each record as it is read,
        before ``step`` sees it (the handler's background-killable declarations).

        Returns the records read (parents first; the children of a cgroup not gone into are
        *not* read, so such a cgroup looks like a leaf: only the unit stopped at is vouched
        for) and the unit stopped at, or ``None``. For 1,000 candidates in 10 groups of 100
        it reads 111 cgroups, not 1,011."""
        return drive(self._descent(root, step, paths=paths, fields=fields, adjust=adjust))

    def _descent(self, root: str, step: Step, *, paths: Iterable[str],
                 fields: Iterable[str], adjust: Callable[[CgroupSnapshot], CgroupSnapshot] | None,
                 ) -> Generator[None, None, tuple[dict[str, CgroupSnapshot], str | None]]:
        root = normalize_path(root)
        ctx = _Pass(root, frozenset(fields) & KNOWN_FIELDS, None)
        known = self._structure(root, paths)
        children, counts = known.children, known.counts

        def read(path: str) -> CgroupSnapshot | None:
            snap = self._read(self.hierarchy.cgroup(path), ctx)
            if snap is not None:
                snap = self._tenant_unit(snap, counts.get(path, 0), ctx)
            if snap is not None and adjust is not None:
                snap = adjust(snap)
            return snap

        def expanded(node: CgroupSnapshot) -> CgroupSnapshot:
            # As snapshot() does: the processes of a cgroup with children of its own.
            if "processes" not in ctx.fields and node.pids:
                return attrs.evolve(node, processes=self.processes(node.pids))
            return node

        result, stop = yield from walk_descent(root, children, read, step, expanded)
        derive_populated(result)
        return result, stop

    async def adescend(self, root: str, step: Step, *, paths: Iterable[str],
                       fields: Iterable[str] = FIELDS,
                       adjust: Callable[[CgroupSnapshot], CgroupSnapshot] | None = None,
                       ) -> tuple[dict[str, CgroupSnapshot], str | None]:
        """:meth:`descend` on the event loop, letting it run after every
        :data:`DESCENT_SLICE` cgroups read: no hop to a thread and back (in the emulated VM,
        under an OOM's event flood, the thread waited for the GIL: 53-106 ms for 34
        cgroups), and never a long stall of the loop."""
        import asyncio

        walk = self._descent(root, step, paths=paths, fields=fields, adjust=adjust)
        while True:
            try:
                next(walk)
            except StopIteration as done:
                found: tuple[dict[str, CgroupSnapshot], str | None] = done.value
                return found
            await asyncio.sleep(0)

    async def asnapshot(self, root: str, *, fields: Iterable[str] = FIELDS,
                        paths: Iterable[str] | None = None) -> dict[str, CgroupSnapshot]:
        """:meth:`snapshot` in the snapshotter's own worker thread (started by
        :meth:`start`, or on first use), so the event loop never waits for the kernel."""
        worker = self.start()
        path_list = None if paths is None else list(paths)
        return await worker.run(lambda: self.snapshot(root, fields=fields, paths=path_list))

    def start(self) -> Worker:
        """Start the worker thread for :meth:`asnapshot` now, before any incident."""
        if self._worker is None or not self._worker.alive:
            from .._kernel._worker import Worker

            self._worker = Worker("cgoom-snapshot")
        return self._worker

    def close(self) -> None:
        """Stop the worker thread, if any."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    # --- identity ----------------------------------------------------------------------

    def recheck(self, victim: Victim) -> str | None:
        """:func:`identity_problem` for this snapshotter's hierarchy."""
        return identity_problem(self.hierarchy, victim)


def descendant_counts(paths: Iterable[str]) -> dict[str, int]:
    """How many of ``paths`` lie below each of them (each counted through its parent: a
    path whose parent is not among them adds to no ancestor)."""
    counts = dict.fromkeys(paths, 0)
    # Reversed order puts every path after those below it (a prefix sorts first).
    for path in sorted(counts, reverse=True):
        parent = parent_path(path)
        if parent != path and parent in counts:
            counts[parent] += counts[path] + 1
    return counts


def derive_populated(result: dict[str, CgroupSnapshot]) -> None:
    """``populated`` = processes here or below, in place (cgroup_update_populated() counts
    the same: tasks of the cgroup's css_sets and populated children; zombies are not listed
    in cgroup.procs, nor counted). ``result`` holds parents before their children."""
    below: dict[str, bool] = {}
    for path in reversed(list(result)):
        snap = result[path]
        populated = snap.populated is True or below.get(path, False)
        if populated != snap.populated and not (snap.populated is None and not populated):
            result[path] = attrs.evolve(snap, populated=populated)
        if populated and path != "/":
            below[parent_path(path)] = True


#: Cgroups :meth:`Snapshotter.adescend` reads before it lets the loop run (about 2.5 ms on
#: the host; the inline snapshot's bound).
DESCENT_SLICE = 64

_T = TypeVar("_T")


def drive(walk: Generator[None, None, _T]) -> _T:
    """Run a walk that pauses (``yield``) to the end, without pausing."""
    while True:
        try:
            next(walk)
        except StopIteration as done:
            result: _T = done.value
            return result


def descend_tree(root: str, children: Mapping[str, Sequence[str]],
                 read: Callable[[str], CgroupSnapshot | None], step: Step,
                 expanded: Callable[[CgroupSnapshot], CgroupSnapshot] = lambda s: s,
                 ) -> tuple[dict[str, CgroupSnapshot], str | None]:
    """The walk of :meth:`Snapshotter.descend`, with the reads given (pure, for tests):
    ``children`` is the structure, ``read(path)`` a record or ``None`` (gone);
    ``expanded(node)`` completes a record whose children are being compared."""
    return drive(walk_descent(root, children, read, step, expanded))


def walk_descent(root: str, children: Mapping[str, Sequence[str]],
                 read: Callable[[str], CgroupSnapshot | None], step: Step,
                 expanded: Callable[[CgroupSnapshot], CgroupSnapshot] = lambda s: s,
                 ) -> Generator[None, None, tuple[dict[str, CgroupSnapshot], str | None]]:
    """:func:`descend_tree` as a generator that pauses after every
    :data:`DESCENT_SLICE` reads (its value, at the end: the records and the stop)."""
    result: dict[str, CgroupSnapshot] = {}
    reads = paused = 0

    def counted(path: str) -> CgroupSnapshot | None:
        nonlocal reads
        reads += 1
        return read(path)

    def due() -> bool:  # a slice read since the last pause
        nonlocal paused
        if reads - paused < DESCENT_SLICE:
            return False
        paused = reads
        return True

    node = counted(root)
    stop: str | None = None
    while node is not None:
        result[node.path] = node
        if node.oom_group is True or node.subtree or not children.get(node.path):
            stop = node.path  # a unit: the end of the descent
            break
        kids = []
        for path in children[node.path]:
            kid = counted(path)
            if kid is not None:
                kids.append(kid)
            if due():
                yield
        result.update((k.path, k) for k in kids)
        for i, kid in enumerate(kids):
            if kid.oom_group is True and children.get(kid.path) and not kid.subtree:
                # A unit with children: whether it holds processes is known only from its
                # whole subtree (populated is derived from cgroup.procs). Found by the
                # property test: taken as empty, it was passed over for a higher priority.
                below = {kid.path: kid}
                stack = list(reversed(children[kid.path]))
                while stack:
                    path = stack.pop()
                    if parent_path(path) in below and (snap := counted(path)) is not None:
                        below[path] = snap
                        stack.extend(reversed(children.get(path, ())))
                    if due():
                        yield
                derive_populated(below)
                result.update(below)
                kids[i] = below[kid.path]
        node = result[node.path] = expanded(node)
        chosen = step(node, kids,
                      lambda path: not children.get(path) or result[path].subtree)
        if chosen is None:
            break
        path, deeper = chosen
        if not deeper:
            stop = path
            break
        node = result[path]
    return result, stop


def identity_problem(hierarchy: Hierarchy, victim: Victim, *,
                     pidfd_cgroup: int | None = None) -> str | None:
    """Why acting on ``victim`` now would hit something else than was decided on, or
    ``None``: the cgroup is gone or was re-created (another id), the process is gone, its
    pid was reused (another start time), it left the cgroup, or it is already dead. Whoever
    acts calls this right before acting (with a pidfd already open, for a process).

    ``pidfd_cgroup``: the cgroup id the open pidfd gave (``PIDFD_GET_INFO``, 6.13+); then
    the process's cgroup is that, and /proc/PID/cgroup is not read."""
    try:
        inode = hierarchy.fs.stat(hierarchy.cgroup(victim.cgroup).dir).st_ino
    except OSError:
        return f"{victim.cgroup} no longer exists"
    if victim.cgroup_id is not None and inode != victim.cgroup_id:
        return f"{victim.cgroup} was removed and re-created (id {victim.cgroup_id} is now {inode})"
    if victim.pid is None:
        return None
    if pidfd_cgroup is not None:
        stat = process_stat(hierarchy, victim.pid)
        now = None if stat is None else (*stat, "")
    else:
        now = process_now(hierarchy, victim.pid)
    if now is None:
        return f"process {victim.pid} is gone"
    start, state, where = now
    if victim.start_time is not None and start != victim.start_time:
        return f"pid {victim.pid} was reused (start time {victim.start_time} is now {start})"
    if pidfd_cgroup is not None and pidfd_cgroup != inode:
        return (f"process {victim.pid} left {victim.cgroup} (its pidfd is in cgroup id "
                f"{pidfd_cgroup}, {victim.cgroup} is {inode})")
    if pidfd_cgroup is None and where != victim.cgroup:
        return f"process {victim.pid} left {victim.cgroup}"
    if state in ("Z", "X"):
        return f"process {victim.pid} is already dead"
    return None


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "...")
