"""``Cgroup``: a typed handle on one cgroup directory.

Naming rule: the method that reads interface file ``a.b.c`` is ``a_b_c()``; the one that
writes it is ``set_a_b_c()``; actions are verbs (``kill``, ``freeze``, ``reclaim``,
``attach``, ``create_child``, ``remove``). Writes that can block in the kernel have an
``a``-prefixed coroutine twin (``akill``, ``areclaim``, ``aset_memory_high``,
``aset_memory_max``) that runs the write in the event loop's default thread executor.

Some facts about the blocking writes (mm/memcontrol.c, 6.1; notes/kernel-interface.md §7):

- ``memory.high``: the write reclaims down to the new limit in the *writer's* context, up to
  16 rounds, before returning.
- ``memory.max``: same, and when reclaim fails it runs the OOM killer, again in the writer's
  context, until usage fits. A write can take a long time and can kill.
- ``memory.reclaim``: reclaims the requested amount in the writer's context; EAGAIN when it
  could not reclaim all of it.
- ``cgroup.kill``: walks the subtree under cgroup_mutex sending SIGKILL; returns once the
  signals are *sent*, not when the processes are dead: wait for ``cgroup.events populated 0``.
  On kernels without b69bb476dee9 ("cgroup: fix race between fork and cgroup.kill", 6.14,
  backported to stable) a child forked during the walk can escape: check ``populated``.

A handle holds no open files and no state: every call reads the kernel afresh, and a cgroup
removed between two calls gives :class:`~cgoom.CgroupGone` on the next.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

import attrs

from .._errors import CgroupGone, InvalidValue, NotSupported
from . import _parse
from ._fs import CgroupFS, OsFS, translate_os_error
from ._parse import check_priority
from ._paths import normalize_path
from ._types import (
    CgroupEvents,
    CgroupType,
    Limit,
    MemoryEvents,
    MemoryStat,
    Pressure,
    SwapEvents,
)

_T = TypeVar("_T")

#: Extended attributes cgoom reads from cgroup directories (docs/policies.md).
PRIORITY_XATTR = "user.cgoom.priority"
PREFERENCE_XATTR = "user.cgoom.preference"
KILLABLE_XATTR = "user.cgoom.killable"
OVERLIMIT_XATTR = "user.cgoom.overlimit"


def if_supported(read: Callable[[], _T]) -> _T | None:
    """``read()``, or ``None`` where that file does not exist on this cgroup or kernel
    (:class:`~cgoom.NotSupported`): a field the kernel lacks is absent, not zero."""
    try:
        return read()
    except NotSupported:
        return None


async def _in_thread(func: Callable[[], _T]) -> _T:
    # asyncio is imported here, not at module level: it costs ~50 ms, and `import cgoom`
    # must stay under 60 ms for supervisors that never use the async API.
    import asyncio

    return await asyncio.to_thread(func)


def normpath(path: str) -> str:
    """``os.path.normpath`` typed for attrs converters."""
    return os.path.normpath(path)


def _check_child_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\n" in name or "\0" in name:
        raise InvalidValue(
            f"{name!r} is not a cgroup name: it must be non-empty, not '.' or '..', and "
            "contain no '/', newline or NUL",
            value=name,
        )


@attrs.frozen(repr=False)
class Cgroup:
    """One cgroup: ``mount`` is the cgroup2 mount point, ``path`` the cgroup below it
    (``"/"`` for the root, ``"/lab/batch"`` below). Usually obtained from
    :meth:`cgoom.Hierarchy.cgroup`.

    Handles compare equal when they name the same cgroup of the same mount.
    """

    mount: str = attrs.field(converter=normpath)
    path: str = attrs.field(default="/", converter=normalize_path)
    fs: CgroupFS = attrs.field(factory=OsFS, eq=False)

    def __repr__(self) -> str:
        return f"<Cgroup {self.path} at {self.mount}>"

    # --- identity and navigation -------------------------------------------------------

    @property
    def dir(self) -> str:
        """The cgroup's directory on the host."""
        return self.mount if self.path == "/" else self.mount + self.path

    @property
    def name(self) -> str:
        """The last path component (``""`` for the root)."""
        return self.path.rsplit("/", 1)[1]

    @property
    def is_root(self) -> bool:
        return self.path == "/"

    @property
    def parent(self) -> Cgroup | None:
        """The parent cgroup, or ``None`` for the root."""
        if self.is_root:
            return None
        return attrs.evolve(self, path=self.path.rsplit("/", 1)[0] or "/")

    def child(self, name: str) -> Cgroup:
        """A handle on the child ``name`` (which may not exist yet)."""
        _check_child_name(name)
        return attrs.evolve(self, path=f"{self.path.rstrip('/')}/{name}")

    def exists(self) -> bool:
        """Whether the directory exists now (it may vanish the next moment)."""
        return self.fs.exists(self.dir)

    def children(self) -> list[Cgroup]:
        """The child cgroups present now, sorted by name."""
        entries = self._io("list", self.dir, lambda: self.fs.listdir(self.dir))
        return [self.child(name) for name, is_dir in sorted(entries) if is_dir]

    def interface_files(self) -> frozenset[str]:
        """The names of the interface files this cgroup has (what this kernel provides)."""
        entries = self._io("list", self.dir, lambda: self.fs.listdir(self.dir))
        return frozenset(name for name, is_dir in entries if not is_dir)

    # --- the I/O boundary ------------------------------------------------------------

    def _file(self, name: str) -> str:
        return f"{self.dir}/{name}"

    def _io(
        self,
        what: str,
        path: str,
        op: Callable[[], _T],
        value: str | None = None,
    ) -> _T:
        try:
            return op()
        except OSError as exc:
            raise translate_os_error(
                exc, self.fs, path, mount=self.mount, what=what, value=value, cgroup_dir=self.dir
            ) from exc

    def read_file(self, name: str) -> str:
        """The raw text of interface file ``name`` (for files cgoom has no method for)."""
        path = self._file(name)
        return self._io("read", path, lambda: self.fs.read(path))

    def write_file(self, name: str, value: str) -> None:
        """Write ``value`` to interface file ``name`` in one write(2)."""
        path = self._file(name)
        self._io("write", path, lambda: self.fs.write(path, value), value)

    def _parsed(self, name: str, parser: Callable[[str, str], _T]) -> _T:
        return parser(self.read_file(name), self._file(name))

    # --- memory: usage -----------------------------------------------------------------

    def memory_current(self) -> int:
        """Bytes in use by this cgroup and its descendants."""
        return self._parsed("memory.current", _parse.parse_int)

    def memory_peak(self) -> int:
        """The highest ``memory.current`` since creation (Linux 5.19+)."""
        return self._parsed("memory.peak", _parse.parse_int)

    def memory_swap_current(self) -> int:
        return self._parsed("memory.swap.current", _parse.parse_int)

    def memory_zswap_current(self) -> int:
        return self._parsed("memory.zswap.current", _parse.parse_int)

    def memory_stat(self) -> MemoryStat:
        return self._parsed("memory.stat", _parse.parse_memory_stat)

    def memory_events(self, *, local: bool = False) -> MemoryEvents:
        """``memory.events`` (hierarchical), or ``memory.events.local`` with ``local=True``."""
        name = "memory.events.local" if local else "memory.events"
        return self._parsed(name, _parse.parse_memory_events)

    def memory_swap_events(self) -> SwapEvents:
        return self._parsed("memory.swap.events", _parse.parse_swap_events)

    def memory_pressure(self) -> Pressure:
        return self._parsed("memory.pressure", _parse.parse_pressure)

    # --- memory: limits and protection -------------------------------------------------

    def memory_min(self) -> Limit:
        return self._parsed("memory.min", _parse.parse_limit)

    def memory_low(self) -> Limit:
        return self._parsed("memory.low", _parse.parse_limit)

    def memory_high(self) -> Limit:
        return self._parsed("memory.high", _parse.parse_limit)

    def memory_max(self) -> Limit:
        return self._parsed("memory.max", _parse.parse_limit)

    def memory_swap_high(self) -> Limit:
        return self._parsed("memory.swap.high", _parse.parse_limit)

    def memory_swap_max(self) -> Limit:
        return self._parsed("memory.swap.max", _parse.parse_limit)

    def memory_zswap_max(self) -> Limit:
        return self._parsed("memory.zswap.max", _parse.parse_limit)

    def memory_oom_group(self) -> bool:
        """Whether the kernel's OOM killer takes this cgroup's processes as one unit."""
        return self._parsed("memory.oom.group", _parse.parse_bool)

    def _set_limit(self, name: str, value: int | str) -> None:
        self.write_file(name, _parse.format_limit(value, self._file(name)))

    def set_memory_min(self, value: int | str) -> None:
        """``value``: bytes (``int``), a size string (``"512M"``) or ``"max"``."""
        self._set_limit("memory.min", value)

    def set_memory_low(self, value: int | str) -> None:
        self._set_limit("memory.low", value)

    def set_memory_high(self, value: int | str) -> None:
        """Blocks while the kernel reclaims down to the new limit; see :meth:`aset_memory_high`."""
        self._set_limit("memory.high", value)

    def set_memory_max(self, value: int | str) -> None:
        """Blocks while the kernel reclaims, and may OOM-kill; see :meth:`aset_memory_max`."""
        self._set_limit("memory.max", value)

    def set_memory_swap_high(self, value: int | str) -> None:
        self._set_limit("memory.swap.high", value)

    def set_memory_swap_max(self, value: int | str) -> None:
        self._set_limit("memory.swap.max", value)

    def set_memory_zswap_max(self, value: int | str) -> None:
        self._set_limit("memory.zswap.max", value)

    def set_memory_oom_group(self, enabled: bool) -> None:
        self.write_file("memory.oom.group", "1" if enabled else "0")

    async def aset_memory_high(self, value: int | str) -> None:
        """:meth:`set_memory_high` in a worker thread, so the event loop never blocks on it."""
        await _in_thread(lambda: self.set_memory_high(value))

    async def aset_memory_max(self, value: int | str) -> None:
        """:meth:`set_memory_max` in a worker thread, so the event loop never blocks on it."""
        await _in_thread(lambda: self.set_memory_max(value))

    # --- memory: actions -----------------------------------------------------------------

    def reclaim(self, amount: int | str, *, swappiness: int | None = None) -> bool:
        """Ask the kernel to reclaim ``amount`` bytes from this cgroup (``memory.reclaim``,
        Linux 5.19+; ``swappiness`` needs 6.10+). Blocks while it reclaims.

        Returns ``True`` when all of it was reclaimed, ``False`` when the kernel reclaimed
        less (EAGAIN: nothing more was reclaimable).
        """
        path = self._file("memory.reclaim")
        text = str(_parse.parse_size(amount, path))
        if swappiness is not None:
            if isinstance(swappiness, bool) or not 0 <= swappiness <= 200:
                raise InvalidValue(
                    f"{path}: swappiness must be an integer from 0 to 200, got {swappiness!r}",
                    path=path,
                    value=repr(swappiness),
                )
            text += f" swappiness={swappiness}"
        try:
            self.fs.write(path, text)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return False
            raise translate_os_error(
                exc, self.fs, path, mount=self.mount, what="write", value=text, cgroup_dir=self.dir
            ) from exc
        return True

    async def areclaim(self, amount: int | str, *, swappiness: int | None = None) -> bool:
        """:meth:`reclaim` in a worker thread."""
        return await _in_thread(lambda: self.reclaim(amount, swappiness=swappiness))

    # --- core: state ---------------------------------------------------------------------

    def cgroup_events(self) -> CgroupEvents:
        """``cgroup.events``: ``populated`` and ``frozen``."""
        return self._parsed("cgroup.events", _parse.parse_cgroup_events)

    def cgroup_procs(self) -> tuple[int, ...]:
        """The processes directly in this cgroup (not its descendants)."""
        return self._parsed("cgroup.procs", _parse.parse_pids)

    def cgroup_controllers(self) -> frozenset[str]:
        """The controllers available to this cgroup (enabled by its parent)."""
        return self._parsed("cgroup.controllers", _parse.parse_controllers)

    def cgroup_subtree_control(self) -> frozenset[str]:
        """The controllers this cgroup enables for its children."""
        return self._parsed("cgroup.subtree_control", _parse.parse_controllers)

    def cgroup_type(self) -> CgroupType:
        return self._parsed("cgroup.type", _parse.parse_cgroup_type)

    def cgroup_freeze(self) -> bool:
        """Whether a freeze is *requested*; ``cgroup_events().frozen`` says when it is done."""
        return self._parsed("cgroup.freeze", _parse.parse_bool)

    # --- extended attributes -------------------------------------------------------------

    def get_xattr(self, name: str) -> str | None:
        """The cgroup directory's extended attribute ``name`` as text, ``None`` if unset."""
        value = self._io("read", f"{self.dir} xattr {name}",
                         lambda: self.fs.getxattr(self.dir, name))
        return None if value is None else value.decode("utf-8", "replace")

    def set_xattr(self, name: str, value: str | None) -> None:
        """Set (or with ``None`` remove) the directory's extended attribute ``name``.
        ``user.*`` needs Linux 5.7+ on cgroupfs; ``trusted.*`` needs CAP_SYS_ADMIN."""
        encoded = None if value is None else value.encode()
        self._io("write", f"{self.dir} xattr {name}",
                 lambda: self.fs.setxattr(self.dir, name, encoded), value)

    def priority(self) -> int | None:
        """``user.cgoom.priority``: this cgroup's importance (higher is more important), or
        ``None`` when unset. A value that is not an integer from ``-2**31`` to ``2**31 - 1``
        in ASCII digits is :class:`~cgoom.ParseError`. (Whether a snapshot trusts it
        depends on who owns the directory: docs/policies.md.)"""
        text = self.get_xattr(PRIORITY_XATTR)
        if text is None:
            return None
        return _parse.parse_priority(text, f"{self.dir}: xattr {PRIORITY_XATTR}")

    def set_priority(self, priority: int | None) -> None:
        """Set ``user.cgoom.priority`` (``None`` removes it); higher is more important. An
        ``int`` from ``-2**31`` to ``2**31 - 1``; :class:`~cgoom.InvalidValue` otherwise."""
        if priority is not None:
            check_priority(priority, f"{self.dir}: {PRIORITY_XATTR}")
        self.set_xattr(PRIORITY_XATTR, None if priority is None else str(priority))

    def set_preference(self, preference: str | None) -> None:
        """Set ``user.cgoom.preference``: ``"prefer"`` (kill first among equals), ``"avoid"``
        (kill last among equals) or ``"omit"`` (never kill); ``None`` removes it."""
        if preference not in (None, "prefer", "avoid", "omit"):
            raise InvalidValue(f"a preference is 'prefer', 'avoid' or 'omit', not {preference!r}",
                               path=self.dir, value=repr(preference))
        self.set_xattr(PREFERENCE_XATTR, preference)

    def set_killable(self, killable: bool) -> None:
        """Declare (``user.cgoom.killable``) that this workload saved its state and may be
        killed before anything else, as on Maemo's "background-killable" applications."""
        self.set_xattr(KILLABLE_XATTR, "1" if killable else None)

    # --- core: actions -------------------------------------------------------------------

    def freeze(self) -> None:
        """Freeze the subtree (asynchronous in the kernel: wait for ``frozen`` in
        ``cgroup.events``). Frozen processes can still be killed."""
        self.write_file("cgroup.freeze", "1")

    def thaw(self) -> None:
        self.write_file("cgroup.freeze", "0")

    def kill(self) -> None:
        """SIGKILL every process in the subtree (``cgroup.kill``, Linux 5.14+).

        Returns when the signals are sent; the processes are gone when ``cgroup.events``
        says ``populated 0``. Kills processes with ``oom_score_adj`` -1000 too.
        """
        if self.is_root:
            raise InvalidValue(
                f"refusing to kill the root cgroup of {self.mount}: the kernel has no "
                "cgroup.kill there, and it would be every process on the host",
                path=self._file("cgroup.kill"),
                value="1",
            )
        self.write_file("cgroup.kill", "1")

    async def akill(self) -> None:
        """:meth:`kill` in a worker thread (the kernel walks the subtree under a mutex)."""
        await _in_thread(self.kill)

    def attach(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into this cgroup."""
        if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
            raise InvalidValue(f"{pid!r} is not a process id", value=repr(pid))
        path = self._file("cgroup.procs")
        self._io(f"move pid {pid} into", path, lambda: self.fs.write(path, str(pid)), str(pid))

    def enable_controllers(self, *names: str) -> None:
        """Enable controllers for this cgroup's children (``+memory`` in
        ``cgroup.subtree_control``). A cgroup with processes of its own cannot do this
        (the no-internal-process rule); :class:`~cgoom.CgroupBusy` explains."""
        path = self._file("cgroup.subtree_control")
        self.write_file(
            "cgroup.subtree_control", _parse.format_controllers(frozenset(names), frozenset(), path)
        )

    def disable_controllers(self, *names: str) -> None:
        path = self._file("cgroup.subtree_control")
        self.write_file(
            "cgroup.subtree_control", _parse.format_controllers(frozenset(), frozenset(names), path)
        )

    def create_child(self, name: str, *, exist_ok: bool = False) -> Cgroup:
        """Create the child cgroup ``name`` and return its handle."""
        child = self.child(name)
        try:
            self.fs.mkdir(child.dir)
        except OSError as exc:
            if exc.errno == errno.EEXIST and exist_ok:
                return child
            raise translate_os_error(
                exc, self.fs, child.dir, mount=self.mount, what="create", cgroup_dir=self.dir
            ) from exc
        return child

    def remove(self, *, missing_ok: bool = False) -> None:
        """Remove this cgroup. It must have no processes and no children
        (:class:`~cgoom.CgroupBusy` otherwise). See :func:`cgoom.remove_tree`."""
        if self.is_root:
            raise InvalidValue(f"refusing to remove the root cgroup {self.mount}", path=self.dir)
        try:
            self.fs.rmdir(self.dir)
        except OSError as exc:
            if exc.errno == errno.ENOENT and missing_ok:
                return
            raise translate_os_error(
                exc, self.fs, self.dir, mount=self.mount, what="remove", cgroup_dir=self.dir
            ) from exc

    def walk(self) -> Iterator[Cgroup]:
        """This cgroup and every descendant, parents before children. A cgroup removed
        during the walk is skipped with its subtree; if this one is gone, nothing is yielded.
        """
        stack = [self]
        while stack:
            cgroup = stack.pop()
            try:
                children = cgroup.children()
            except CgroupGone:
                continue
            yield cgroup
            stack.extend(reversed(children))


def remove_tree(cgroup: Cgroup, *, missing_ok: bool = True) -> None:
    """Remove ``cgroup`` and its descendants, children first. Every cgroup in it must be
    unpopulated (kill it and wait for ``populated 0`` first). A descendant that vanishes
    meanwhile is fine; ``cgroup`` itself missing raises :class:`~cgoom.CgroupGone` unless
    ``missing_ok``."""
    cgroups = list(cgroup.walk())
    if not cgroups and not missing_ok:
        raise CgroupGone(f"cannot remove {cgroup.dir}: it does not exist", path=cgroup.dir)
    for each in reversed(cgroups):
        each.remove(missing_ok=True)
