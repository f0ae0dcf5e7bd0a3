"""``Watcher``: kernel-notified events for cgroup subtrees, delivered on the event loop.

One inotify instance per watcher, read through ``loop.add_reader``; one private epoll per PSI
trigger fd (registered for EPOLLPRI, which asyncio's selector cannot ask for), whose own fd is
given to ``loop.add_reader``. No threads, no polling, no timers: an idle watcher makes no
wakeups at all.

Some facts this code depends on (notes/kernel-interface.md §3-§5, measured on Debian 6.1):

- A notification means "re-read now": the kernel rate-limits each file to one notification
  per 10-16 ms and coalesces the rest into a trailing one. So every IN_MODIFY re-reads the
  file and diffs its counters against the last reading; several IN_MODIFY for one file in one
  inotify read are one re-read.
- Watch first, read the baseline second: a change between the two is in the baseline and its
  notification then finds nothing new, which is harmless; the other order could miss it.
- A new cgroup: IN_CREATE|IN_ISDIR on the parent's watch. Its grandchildren may be created
  before our watch on it exists, so after adding the watch we list its children (and so on).
- A removed cgroup: IN_DELETE|IN_ISDIR on the parent's watch only. Its final counters may
  be unreadable by the time we look; the parent's hierarchical memory.events still has them.
- IN_Q_OVERFLOW: the kernel's queue (fs.inotify.max_queued_events) overflowed and
  notifications were lost; the only correct answer is to re-read everything.
- PSI trigger fds poll EPOLLPRI when the threshold is crossed and EPOLLERR|EPOLLPRI when their
  cgroup is removed. ``psi_trigger_poll`` *consumes* the event (cmpxchg of t->event): when
  asyncio's epoll asks whether our private epoll is ready, the kernel polls the PSI file
  through it and the event is gone before our callback's ``poll(0)`` looks (measured on
  Debian 6.1: a shared private epoll for all triggers never reported one). So each trigger
  has its own private epoll: the wakeup itself says which trigger fired. EPOLLERR, for a
  destroyed trigger, is a state, not consumed, and is still seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fnmatch
import logging
import os
import select
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

import attrs

from ._cgroup import Cgroup
from ._errors import CgoomError, CgroupGone, InvalidValue, NotSupported, ParseError
from ._events import (
    CgroupCreated,
    CgroupRemoved,
    CgroupStateChanged,
    Event,
    MemoryEventsChanged,
    PressureSustained,
    PressureTrigger,
    PressureTriggered,
    PressureTriggerEnded,
    Resynchronized,
    SustainedPressure,
    SustainedState,
    SwapEventsChanged,
    counter_delta,
    counters,
    trigger_problem,
)
from ._fs import translate_os_error
from ._hierarchy import Hierarchy
from ._linux import (
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    MAX_USER_WATCHES,
    Inotify,
    has_cap_sys_resource,
    kernel_release,
    read_int,
)
from ._types import CgroupEvents, MemoryEvents, SwapEvents

log = logging.getLogger("cgoom")

_Record = MemoryEvents | SwapEvents | CgroupEvents
Listener = Callable[[Event], object]

#: How each file a watcher can follow is read; its keys are the files it follows.
_READERS: dict[str, Callable[[Cgroup], _Record]] = {
    "memory.events": lambda c: c.memory_events(),
    "memory.events.local": lambda c: c.memory_events(local=True),
    "memory.swap.events": lambda c: c.memory_swap_events(),
    "cgroup.events": lambda c: c.cgroup_events(),
}

#: The files a watcher follows in each cgroup, where they exist.
DEFAULT_FILES = tuple(_READERS)

_DIR_MASK = IN_CREATE | IN_DELETE | IN_ONLYDIR


@attrs.frozen
class WatcherStatistics:
    """A snapshot of a watcher's work, for metrics and benchmarks."""

    #: Cgroups followed now.
    cgroups: int
    #: inotify watches held now (directories and files).
    watches: int
    #: PSI triggers armed now.
    triggers: int
    #: Times the event loop woke the watcher (inotify or PSI readable).
    wakeups: int
    #: inotify events read from the kernel.
    notifications: int
    #: Events delivered to the queue and listeners.
    events: int
    #: Full re-reads after IN_Q_OVERFLOW.
    resyncs: int
    #: Events waiting in the queue for ``async for``.
    queued: int


@attrs.define
class _Trigger:
    cgroup: str | None
    trigger: PressureTrigger
    state: SustainedState | None
    epoll: select.epoll


class _Closed:
    pass


_CLOSED = _Closed()


class Watcher:
    """Follows cgroup subtrees and delivers :data:`cgoom.Event` records.

    Use it as an async context manager (``async with cgoom.open_watcher(...) as w``), then
    either iterate (``async for event in w``) or register callbacks (``w.add_listener(f)``),
    or both. Events from the moment it starts are queued until read; none are dropped.

    ``roots``: cgroup paths to follow with all their descendants. ``include``: fnmatch
    patterns on the path below the mount (``"workload.slice/*"``) whose files are watched
    and whose creation and removal are reported (default: all); ``exclude``: patterns pruned
    with their subtrees. ``files``: which of :data:`DEFAULT_FILES` to watch.
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        roots: Sequence[str] = ("/",),
        *,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        files: Iterable[str] = DEFAULT_FILES,
        raise_watch_limit: bool = True,
    ) -> None:
        self.hierarchy = hierarchy
        self.roots = tuple(hierarchy.cgroup(r).path for r in roots)
        self.include = None if include is None else tuple(include)
        self.exclude = tuple(exclude)
        self.files = tuple(files)
        for name in self.files:
            if name not in DEFAULT_FILES:
                raise InvalidValue(
                    f"cgoom cannot watch {name!r}; it watches {', '.join(DEFAULT_FILES)}",
                    value=name)
        self.raise_watch_limit = raise_watch_limit
        self._kernel = kernel_release()
        self._inotify: Inotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Event | _Closed] = asyncio.Queue()
        self._listeners: list[Listener] = []
        self._wds: dict[int, tuple[str, str]] = {}
        self._tracked: dict[str, list[int]] = {}
        self._last: dict[tuple[str, str], _Record] = {}
        self._triggers: dict[int, _Trigger] = {}
        self._wakeups = self._notifications = self._events = self._resyncs = 0
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._inotify else "not started"
        return f"<Watcher {', '.join(self.roots)} ({state}, {len(self._tracked)} cgroups)>"

    # --- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> Watcher:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Watch the roots' subtrees. Must run in the event loop's thread."""
        if self._inotify is not None or self._closed:
            raise RuntimeError(f"{self!r} was already started")
        self._loop = asyncio.get_running_loop()
        self._inotify = Inotify()
        try:
            for root in self.roots:
                cgroup = self.hierarchy.cgroup(root)
                if not cgroup.exists():
                    raise CgroupGone(f"cannot watch {cgroup.dir}: no such cgroup", path=cgroup.dir)
                self._track_tree(cgroup, announce=False)
            self._loop.add_reader(self._inotify.fd, self._on_inotify)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop watching and release every fd. Pending events stay readable; iteration then
        ends. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._inotify is not None:
            if self._loop is not None and self._inotify.fd >= 0:
                self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
        for fd in list(self._triggers):
            self._drop_trigger(fd)
        self._wds.clear()
        self._tracked.clear()
        self._queue.put_nowait(_CLOSED)

    async def aclose(self) -> None:
        self.close()

    # --- delivery ----------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` for every event, on the event loop, as it happens. A
        listener that raises is logged and kept; it never stops the watcher."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def __aiter__(self) -> Watcher:
        return self

    async def __anext__(self) -> Event:
        # Cancelling a waiting `async for` loses nothing: asyncio.Queue.get is cancel-safe.
        item = await self._queue.get()
        if isinstance(item, _Closed):
            self._queue.put_nowait(item)  # end every other iterator too
            raise StopAsyncIteration
        return item

    def _emit(self, event: Event) -> None:
        self._events += 1
        self._queue.put_nowait(event)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("cgoom watcher listener %r failed on %s", listener, event)

    # --- what is watched ---------------------------------------------------------------

    def watched(self) -> list[str]:
        """The cgroups followed now, sorted."""
        return sorted(self._tracked)

    def statistics(self) -> WatcherStatistics:
        return WatcherStatistics(
            cgroups=len(self._tracked), watches=len(self._wds), triggers=len(self._triggers),
            wakeups=self._wakeups, notifications=self._notifications, events=self._events,
            resyncs=self._resyncs, queued=self._queue.qsize(),
        )

    def _relative(self, path: str) -> str:
        return path.lstrip("/")

    def _excluded(self, path: str) -> bool:
        rel = self._relative(path)
        return any(fnmatch.fnmatchcase(rel, p) for p in self.exclude)

    def _included(self, path: str) -> bool:
        if self.include is None:
            return True
        rel = self._relative(path)
        return any(fnmatch.fnmatchcase(rel, p) for p in self.include)

    def _add_watch(self, path: str, mask: int) -> int:
        assert self._inotify is not None
        try:
            return self._inotify.add_watch(path, mask)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            current = read_int(MAX_USER_WATCHES)
            # Count the subtrees only now: a second walk of every root is worth it only when
            # the limit is hit.
            total = sum(1 for root in self.roots for _ in self.hierarchy.cgroup(root).walk())
            needed = max(total * (1 + len(self.files)), len(self._wds)) + 1024
            if self.raise_watch_limit and os.geteuid() == 0 and current is not None:
                target = max(current * 2, needed * 2)
                try:
                    with open(MAX_USER_WATCHES, "w") as f:
                        f.write(f"{target}\n")
                except OSError:
                    pass
                else:
                    log.warning("cgoom raised fs.inotify.max_user_watches from %d to %d",
                                current, target)
                    return self._inotify.add_watch(path, mask)
            raise CgoomError(
                f"cannot watch {path}: the inotify watch limit is reached "
                f"(fs.inotify.max_user_watches, {MAX_USER_WATCHES}, is {current}); these "
                f"cgroups need about {needed} watches: as root, "
                f"sysctl -w fs.inotify.max_user_watches={needed * 2}",
                path=MAX_USER_WATCHES, value=str(needed), errno=errno.ENOSPC,
            ) from exc

    def _track(self, cgroup: Cgroup) -> None:
        """Watch one cgroup: its directory, then its files, then read their baselines."""
        wds = [self._add_watch(cgroup.dir, _DIR_MASK)]
        self._wds[wds[0]] = (cgroup.path, "")
        self._tracked[cgroup.path] = wds
        if not self._included(cgroup.path):
            return
        for name in self.files:
            try:
                wd = self._add_watch(os.path.join(cgroup.dir, name), IN_MODIFY)
            except FileNotFoundError:
                continue  # not on this cgroup (the root) or this kernel
            wds.append(wd)
            self._wds[wd] = (cgroup.path, name)
            try:
                self._last[(cgroup.path, name)] = _READERS[name](cgroup)
            except NotSupported:
                continue
            except ParseError as exc:
                log.warning("cgoom watcher: %s", exc)

    def _track_tree(self, top: Cgroup, *, announce: bool) -> None:
        stack = [top]
        while stack:
            cgroup = stack.pop()
            if cgroup.path in self._tracked or self._excluded(cgroup.path):
                continue
            try:
                self._track(cgroup)
                children = cgroup.children()
            except (CgroupGone, FileNotFoundError):
                self._untrack(cgroup.path)
                continue
            if announce and self._included(cgroup.path):
                self._emit(CgroupCreated(cgroup.path, time.monotonic()))
            stack.extend(reversed(children))

    def _untrack(self, path: str) -> None:
        assert self._inotify is not None
        for wd in self._tracked.pop(path, []):
            self._wds.pop(wd, None)
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(wd)
        for name in self.files:
            self._last.pop((path, name), None)

    def _untrack_tree(self, top: str, *, announce: bool) -> None:
        gone = sorted((p for p in self._tracked if p == top or p.startswith(top + "/")),
                      key=lambda p: -p.count("/"))
        now = time.monotonic()
        for path in gone:
            self._untrack(path)
            for fd, t in list(self._triggers.items()):
                if t.cgroup == path:
                    self._end_trigger(fd, "the cgroup was removed")
            if announce and self._included(path):
                self._emit(CgroupRemoved(path, now))

    # --- inotify -----------------------------------------------------------------------

    def _on_inotify(self) -> None:
        assert self._inotify is not None
        self._wakeups += 1
        batch = self._inotify.read()
        self._notifications += len(batch)
        if any(event.mask & IN_Q_OVERFLOW for event in batch):
            # Notifications were lost; the resync re-reads everything this batch would.
            self._resync("the kernel's inotify queue overflowed (IN_Q_OVERFLOW)")
            return
        reread: set[int] = set()
        for event in batch:
            if event.mask & IN_IGNORED:
                self._wds.pop(event.wd, None)
                continue
            entry = self._wds.get(event.wd)
            if entry is None:
                continue
            path, name = entry
            if not name:
                if not event.mask & IN_ISDIR:
                    continue
                child = f"{path.rstrip('/')}/{event.name}"
                if event.mask & IN_CREATE:
                    self._track_tree(self.hierarchy.cgroup(child), announce=True)
                elif event.mask & IN_DELETE:
                    self._untrack_tree(child, announce=True)
            elif event.mask & IN_MODIFY and event.wd not in reread:
                # The first re-read already sees the state after every queued change.
                reread.add(event.wd)
                self._refresh(path, name)

    def _refresh(self, path: str, name: str) -> None:
        cgroup = self.hierarchy.cgroup(path)
        try:
            new = _READERS[name](cgroup)
        except CgroupGone:
            return  # being removed: the parent's IN_DELETE will say so
        except (NotSupported, ParseError) as exc:
            log.warning("cgoom watcher: %s", exc)
            return
        old = self._last.get((path, name))
        self._last[(path, name)] = new
        now = time.monotonic()
        if isinstance(new, CgroupEvents):
            assert old is None or isinstance(old, CgroupEvents)
            if old is None or (old.populated, old.frozen) != (new.populated, new.frozen):
                self._emit(CgroupStateChanged(path, new, old if old is not None else new, now))
            return
        assert not isinstance(old, CgroupEvents)
        fresh = {k: v for k, v in counters(new).items() if v}
        delta = fresh if old is None else counter_delta(counters(old), counters(new))
        if delta is None:
            delta = fresh  # counters went down: a new cgroup under the same name
        if not delta:
            return
        if isinstance(new, MemoryEvents):
            self._emit(MemoryEventsChanged(path, name.endswith(".local"), delta, new, now))
        else:
            self._emit(SwapEventsChanged(path, delta, new, now))

    def _resync(self, reason: str) -> None:
        self._resyncs += 1
        self._emit(Resynchronized(reason, time.monotonic()))
        # Removals, then changes in the cgroups that remain, then creations.
        for path in sorted(self._tracked):
            if path in self._tracked and not self.hierarchy.cgroup(path).exists():
                self._untrack_tree(path, announce=True)
        for path, name in list(self._last):
            self._refresh(path, name)
        for root in self.roots:
            for each in self.hierarchy.cgroup(root).walk():
                if each.path not in self._tracked:
                    self._track_tree(each, announce=True)

    # --- PSI triggers ------------------------------------------------------------------

    def watch_pressure(self, cgroup: str | None, trigger: PressureTrigger) -> None:
        """Arm a PSI trigger on ``cgroup``'s memory.pressure (``None``: the system's
        /proc/pressure/memory); each firing is a :class:`PressureTriggered` event."""
        self._arm(cgroup, trigger, None)

    def watch_sustained_pressure(self, cgroup: str | None, rule: SustainedPressure) -> None:
        """Arm ``rule`` ("some above 40% for 10 s") on ``cgroup`` (``None``: system-wide);
        each time it holds is a :class:`PressureSustained` event."""
        self._arm(cgroup, rule.trigger, SustainedState(rule))

    def _arm(self, cgroup: str | None, trigger: PressureTrigger, state: SustainedState | None,
             ) -> None:
        if self._inotify is None or self._loop is None or self._closed:
            raise RuntimeError(f"{self!r} is not running: arm triggers inside `async with`")
        if cgroup is None:
            path = os.path.join(self.hierarchy.proc_root, "pressure", "memory")
            name = None
        else:
            handle = self.hierarchy.cgroup(cgroup)
            path, name = os.path.join(handle.dir, "memory.pressure"), handle.path
        privileged = has_cap_sys_resource()
        problem = trigger_problem(trigger, kernel=self._kernel, privileged=privileged)
        if problem:
            raise InvalidValue(f"cannot arm the PSI trigger {trigger.line().strip()!r} on "
                               f"{path}: {problem}", path=path, value=trigger.line().strip())
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise self._psi_error(exc, path, trigger, privileged) from exc
        try:
            os.write(fd, trigger.line().encode())
        except OSError as exc:
            os.close(fd)
            raise self._psi_error(exc, path, trigger, privileged) from exc
        epoll = select.epoll()
        try:
            epoll.register(fd, select.EPOLLPRI)
        except OSError as exc:
            epoll.close()
            os.close(fd)
            raise CgoomError(f"cannot poll {path} for PSI events: {exc.strerror}; it is not a "
                             "kernel pressure file", path=path, errno=exc.errno) from exc
        self._triggers[fd] = _Trigger(name, trigger, state, epoll)
        self._loop.add_reader(epoll.fileno(), self._on_pressure, fd)

    def _psi_error(self, exc: OSError, path: str, trigger: PressureTrigger,
                   privileged: bool) -> CgoomError:
        err = translate_os_error(exc, self.hierarchy.fs, path, mount=self.hierarchy.mount,
                                 what="write", value=trigger.line().strip())
        if exc.errno in (errno.EACCES, errno.EPERM) and not privileged:
            err.message += ("; PSI triggers on /proc/pressure need CAP_SYS_RESOURCE before "
                            "Linux 6.5 (cgroup pressure files need only write permission)")
        elif exc.errno == errno.EOPNOTSUPP:
            err.message += "; PSI is disabled on this kernel (boot with psi=1)"
        elif exc.errno == errno.EBUSY:
            err.message += "; a trigger is already armed on this file descriptor"
        return err

    def _drop_trigger(self, fd: int) -> _Trigger | None:
        entry = self._triggers.pop(fd, None)
        if entry is not None:
            if self._loop is not None:
                self._loop.remove_reader(entry.epoll.fileno())
            entry.epoll.close()
            os.close(fd)
        return entry

    def _end_trigger(self, fd: int, reason: str) -> None:
        entry = self._drop_trigger(fd)
        if entry is not None:
            self._emit(PressureTriggerEnded(entry.cgroup, entry.trigger, reason,
                                            time.monotonic()))

    def _on_pressure(self, fd: int) -> None:
        entry = self._triggers.get(fd)
        if entry is None:
            return
        self._wakeups += 1
        now = time.monotonic()
        # Usually empty, or EPOLLPRI: the readiness check on the way here consumed the event.
        # Only EPOLLERR (the trigger was destroyed with its cgroup) persists.
        mask = 0
        for _, bits in entry.epoll.poll(0):
            mask |= bits
        if mask & select.EPOLLERR:
            self._end_trigger(fd, "the cgroup was removed")
        elif entry.state is None:
            self._emit(PressureTriggered(entry.cgroup, entry.trigger, now))
        else:
            since = entry.state.fired(now)
            if since is not None:
                self._emit(PressureSustained(entry.cgroup, entry.state.rule, since, now))

def open_watcher(
    hierarchy: Hierarchy | None = None,
    *roots: str,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    files: Iterable[str] = DEFAULT_FILES,
    raise_watch_limit: bool = True,
) -> Watcher:
    """A :class:`Watcher` for ``roots`` (default: the whole hierarchy), to use as
    ``async with cgoom.open_watcher(h, "workload.slice") as watcher:``."""
    return Watcher(
        hierarchy if hierarchy is not None else Hierarchy.discover(),
        roots or ("/",),
        include=include,
        exclude=exclude,
        files=files,
        raise_watch_limit=raise_watch_limit,
    )
