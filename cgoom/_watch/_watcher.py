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
- Controllers disabled and enabled again: ``-memory`` in a parent's cgroup.subtree_control
  removes its children's memory.* files, ``+memory`` makes new ones (new kernfs nodes, new
  inodes, defaults and counters from 0). kernfs removes the old files without the VFS, so a
  watch on one is not reliably told (it pins the dead inode and hears nothing more), and
  kernfs makes the new files without IN_CREATE. What is told is the write itself: a write(2)
  to cgroup.subtree_control raises IN_MODIFY on that file's watch. So each cgroup's
  cgroup.subtree_control is watched, and on IN_MODIFY its children's files are watched
  again (a new inode gets a new watch descriptor, the old one is removed) and re-read.
- IN_Q_OVERFLOW: the kernel's queue (fs.inotify.max_queued_events) overflowed and
  notifications were lost; the only correct answer is to re-read everything, and to compare
  identity (the directory's inode, the cgroup id): a cgroup removed and re-created at the same
  path meanwhile has new files, and the old watches on it are dead.
- inotify watches are limited per user (fs.inotify.max_user_watches); ENOSPC from
  inotify_add_watch is that limit. At run time it is an event (``WatchFailed``), not an
  exception: the rest of the batch is still handled, and the cgroup is retried when watches
  are freed (a cgroup removed) or at a resync.
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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType

import attrs

from .._errors import CgoomError, CgroupGone, InvalidValue, NotSupported, ParseError
from .._kernel._cgroup import Cgroup
from .._kernel._clock import SYSTEM, Clock
from .._kernel._hierarchy import Hierarchy
from .._kernel._linux import (
    IN_CREATE,
    IN_DELETE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    MAX_USER_WATCHES,
    Inotify,
    InotifyEvent,
    kernel_release,
    read_int,
)
from .._kernel._paths import inside, parent_path
from .._kernel._types import CgroupEvents, MemoryEvents, SwapEvents
from ._events import (
    CgroupCreated,
    CgroupRemoved,
    CgroupStateChanged,
    ControllersChanged,
    Event,
    MemoryEventsChanged,
    PressureTrigger,
    Resynchronized,
    SustainedPressure,
    SustainedState,
    SwapEventsChanged,
    WatchFailed,
    counter_delta,
    counters,
)
from ._psi import PsiTriggers

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

#: Watched in every cgroup beside its files: a write to it may remove the children's
#: controller files and make new ones (``ControllersChanged``).
SUBTREE_CONTROL = "cgroup.subtree_control"

#: The longest the watcher keeps the event loop while starting or resynchronising: it
#: yields to other tasks after this much work (issue #8: 10,000 cgroups took ~1 s).
SLICE_SECONDS = 0.005


class _WatchLimit(CgoomError):
    """inotify_add_watch said ENOSPC: the watch limit."""


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
    #: Cgroups that could not be watched (see ``Watcher.untracked()``).
    untracked: int = 0
    #: Events dropped because the queue was full (a ``Resynchronized`` said so).
    dropped: int = 0


class _Closed:
    pass


_CLOSED = _Closed()


class Watcher:
    """Follows cgroup subtrees and delivers :data:`cgoom.Event` records.

    Use it as an async context manager (``async with cgoom.open_watcher(...) as w``), then
    either iterate (``async for event in w``) or register callbacks (``w.add_listener(f)``),
    or both. Events from the moment it starts are queued until read, up to ``max_queued``;
    past that (a consumer that stopped reading, or one that only uses listeners) the queued
    events are dropped and one :class:`Resynchronized` says so. Listeners see every event.

    ``roots``: cgroup paths to follow with all their descendants. ``include``: fnmatch
    patterns on the path below the mount (``"workload.slice/*"``) whose files are watched
    and whose creation and removal are reported (default: all); ``exclude``: patterns pruned
    with their subtrees. ``files``: which of :data:`DEFAULT_FILES` to watch.
    ``raise_watch_limit``: when the inotify watch limit is hit and cgoom runs as root, raise
    the host-wide sysctl ``fs.inotify.max_user_watches`` (off by default: a library should not
    change host settings; the error says which value is needed). ``queued=False``: listeners
    only (an engine that reacts in its listener queues nothing it would have to drain;
    ``async for`` then raises :class:`~cgoom.CgoomError`). ``clock``: the source of the events'
    ``time`` (:class:`cgoom.testing.ManualClock` in tests).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        roots: Sequence[str] = ("/",),
        *,
        include: Iterable[str] | None = None,
        exclude: Iterable[str] = (),
        files: Iterable[str] = DEFAULT_FILES,
        raise_watch_limit: bool = False,
        max_queued: int = 10_000,
        queued: bool = True,
        clock: Clock = SYSTEM,
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
        if isinstance(max_queued, bool) or not isinstance(max_queued, int) or max_queued < 1:
            raise InvalidValue(f"max_queued={max_queued!r}: a positive int", value=repr(max_queued))
        self.max_queued = max_queued
        self.queued = queued
        self.clock = clock
        self._dropped = 0
        self._ids: dict[str, int] = {}
        self._untracked: dict[str, str] = {}
        self._resync_task: asyncio.Task[None] | None = None
        self._resync_reason: str | None = None
        self._kernel = kernel_release()
        self._inotify: Inotify | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Event | _Closed] = asyncio.Queue()
        self._listeners: list[Listener] = []
        self._wds: dict[int, tuple[str, str]] = {}
        self._tracked: dict[str, list[int]] = {}
        self._last: dict[tuple[str, str], _Record] = {}
        self._psi = PsiTriggers(hierarchy, self._emit, clock, self._kernel)
        self._wakeups = self._notifications = self._events = self._resyncs = 0
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._inotify else "not started"
        return f"<Watcher {', '.join(self.roots)} ({state}, {len(self._tracked)} cgroups)>"

    # --- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> Watcher:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Watch the roots' subtrees, all at once (blocking the loop for as long as that
        takes: about 0.1 ms per cgroup). Must run in the event loop's thread; prefer
        :meth:`astart` (what ``async with`` does)."""
        self._begin()
        try:
            for root in self._roots_present():
                self._track_tree(root, announce=False)
        except BaseException:
            self.close()
            raise

    async def astart(self) -> None:
        """Watch the roots' subtrees, yielding to the event loop every
        :data:`SLICE_SECONDS` of work, so other tasks are never stalled by a large tree.
        Events from cgroups already watched are delivered meanwhile."""
        self._begin()
        try:
            for root in self._roots_present():
                await self._atrack_tree(root, announce=False)
        except BaseException:
            self.close()
            raise

    def _begin(self) -> None:
        if self._inotify is not None or self._closed:
            raise RuntimeError(f"{self!r} was already started")
        self._loop = asyncio.get_running_loop()
        self._inotify = Inotify()
        self._loop.add_reader(self._inotify.fd, self._on_inotify)

    def _roots_present(self) -> list[Cgroup]:
        roots = [self.hierarchy.cgroup(root) for root in self.roots]
        for cgroup in roots:
            if not cgroup.exists():
                raise CgroupGone(f"cannot watch {cgroup.dir}: no such cgroup", path=cgroup.dir)
        return roots

    def close(self) -> None:
        """Stop watching and release every fd. Pending events stay readable; iteration then
        ends. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._resync_task is not None:
            self._resync_task.cancel()
        if self._inotify is not None:
            if self._loop is not None and self._inotify.fd >= 0:
                self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
        self._psi.close()
        self._wds.clear()
        self._tracked.clear()
        self._ids.clear()
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
        if not self.queued:
            raise CgoomError("this watcher delivers to its listeners only (queued=False): "
                             "there is nothing to iterate")
        # Cancelling a waiting `async for` loses nothing: asyncio.Queue.get is cancel-safe.
        item = await self._queue.get()
        if isinstance(item, _Closed):
            self._queue.put_nowait(item)  # end every other iterator too
            raise StopAsyncIteration
        return item

    def _emit(self, event: Event) -> None:
        self._events += 1
        if self.queued:
            if self._queue.qsize() >= self.max_queued:
                dropped = 0
                while not self._queue.empty():
                    self._queue.get_nowait()
                    dropped += 1
                self._dropped += dropped
                self._queue.put_nowait(Resynchronized(
                    f"the consumer fell behind: {dropped} queued events were dropped "
                    f"(max_queued={self.max_queued}); re-read the state you need",
                    self.clock.monotonic()))
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

    def last(self, path: str, name: str) -> object | None:
        """The record of ``name`` (e.g. ``memory.events``) of ``path`` as the watcher last
        read it, or ``None``: what the loop has handled. Any thread may ask."""
        return self._last.get((path, name))

    def untracked(self) -> dict[str, str]:
        """The cgroups that could not be watched, with the reason (each was reported by a
        :class:`WatchFailed` event); retried when watches are freed and at each resync."""
        return dict(self._untracked)

    def statistics(self) -> WatcherStatistics:
        return WatcherStatistics(
            cgroups=len(self._tracked), watches=len(self._wds), triggers=len(self._psi),
            wakeups=self._wakeups + self._psi.wakeups, notifications=self._notifications,
            events=self._events,
            resyncs=self._resyncs, queued=self._queue.qsize(),
            untracked=len(self._untracked), dropped=self._dropped,
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
            needed = max(total * (2 + len(self.files)), len(self._wds)) + 1024
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
            raise _WatchLimit(
                f"cannot watch {path}: the inotify watch limit is reached "
                f"(fs.inotify.max_user_watches, {MAX_USER_WATCHES}, is {current}); these "
                f"cgroups need about {needed} watches: as root, "
                f"sysctl -w fs.inotify.max_user_watches={needed * 2}",
                path=MAX_USER_WATCHES, value=str(needed), errno=errno.ENOSPC,
            ) from exc

    def _track(self, cgroup: Cgroup) -> None:
        """Watch one cgroup: its directory, then its files, then read their baselines. A
        watch-limit error leaves nothing half-watched."""
        wds = [self._add_watch(cgroup.dir, _DIR_MASK)]
        self._wds[wds[0]] = (cgroup.path, "")
        self._tracked[cgroup.path] = wds
        self._ids[cgroup.path] = self.hierarchy.fs.stat(cgroup.dir).st_ino
        self._untracked.pop(cgroup.path, None)
        # cgroup.subtree_control of every cgroup (its children may be included when it is
        # not), the files of the included ones.
        names = (SUBTREE_CONTROL, *self.files) if self._included(cgroup.path) \
            else (SUBTREE_CONTROL,)
        for name in names:
            try:
                self._watch_file(cgroup, name)
            except _WatchLimit:
                self._untrack(cgroup.path)
                raise

    def _watch_file(self, cgroup: Cgroup, name: str) -> None:
        """Watch ``name`` of a tracked cgroup, then read its baseline. Watching a file
        already watched gives its descriptor again; a file made anew (another inode) gets
        a new one, and the old watch, on the dead file, is removed."""
        wds = self._tracked[cgroup.path]
        try:
            wd = self._add_watch(os.path.join(cgroup.dir, name), IN_MODIFY)
        except FileNotFoundError:
            wd = None  # not on this cgroup (the root), this kernel, or not now
        # Descriptors the kernel dropped (IN_IGNORED: the file was unlinked) are gone from
        # _wds: forget them here too.
        wds[:] = [w for w in wds if w in self._wds or w == wd]
        for old in [w for w in wds if self._wds.get(w) == (cgroup.path, name) and w != wd]:
            wds.remove(old)
            self._wds.pop(old, None)
            assert self._inotify is not None
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(old)
        if wd is None:
            self._last.pop((cgroup.path, name), None)
            return
        if wd not in wds:
            wds.append(wd)
        self._wds[wd] = (cgroup.path, name)
        if name == SUBTREE_CONTROL:
            return
        try:
            self._last[(cgroup.path, name)] = _READERS[name](cgroup)
        except NotSupported:
            pass
        except ParseError as exc:
            log.warning("cgoom watcher: %s", exc)

    def _tracking(self, top: Cgroup, *, announce: bool) -> Iterator[None]:
        """Watch ``top`` and its subtree, one cgroup per step. At start (``announce`` false)
        the watch limit is an error; later it is a :class:`WatchFailed` event for that
        cgroup, whose subtree is left for a retry, and the rest goes on."""
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
            except _WatchLimit as exc:
                if not announce:
                    raise
                self._untracked[cgroup.path] = exc.message
                self._emit(WatchFailed(cgroup.path, exc.message, self.clock.monotonic()))
                continue
            if announce and self._included(cgroup.path):
                self._emit(CgroupCreated(cgroup.path, self.clock.monotonic()))
            stack.extend(reversed(children))
            yield

    def _track_tree(self, top: Cgroup, *, announce: bool) -> None:
        for _ in self._tracking(top, announce=announce):
            pass

    async def _atrack_tree(self, top: Cgroup, *, announce: bool) -> None:
        deadline = time.perf_counter() + SLICE_SECONDS
        for _ in self._tracking(top, announce=announce):
            if time.perf_counter() > deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + SLICE_SECONDS

    def _retry_untracked(self) -> None:
        for path in sorted(self._untracked):
            if parent_path(path) in self._tracked and path in self._untracked:
                del self._untracked[path]
                self._track_tree(self.hierarchy.cgroup(path), announce=True)

    def _untrack(self, path: str) -> None:
        assert self._inotify is not None
        self._ids.pop(path, None)
        for wd in self._tracked.pop(path, []):
            self._wds.pop(wd, None)
            with contextlib.suppress(OSError):
                self._inotify.rm_watch(wd)
        for name in self.files:
            self._last.pop((path, name), None)

    def _untrack_tree(self, top: str, *, announce: bool) -> None:
        gone = sorted((p for p in self._tracked if inside(p, top)),
                      key=lambda p: -p.count("/"))
        for path in [p for p in self._untracked if inside(p, top)]:
            del self._untracked[path]
        now = self.clock.monotonic()
        for path in gone:
            self._untrack(path)
            self._psi.end(path, "the cgroup was removed")
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
        freed = False
        for event in batch:
            try:
                freed |= self._handle(event, reread)
            except Exception:  # one bad event must not drop the rest of the batch
                log.exception("cgoom watcher: failed to handle %r", event)
        if freed and self._untracked:
            self._retry_untracked()

    def _handle(self, event: InotifyEvent, reread: set[int]) -> bool:
        """Handle one inotify event; ``True`` if it freed watches."""
        if event.mask & IN_IGNORED:
            self._wds.pop(event.wd, None)
            return True
        entry = self._wds.get(event.wd)
        if entry is None:
            return False
        path, name = entry
        if not name:
            if not event.mask & IN_ISDIR:
                return False
            child = f"{path.rstrip('/')}/{event.name}"
            if event.mask & IN_CREATE:
                self._track_tree(self.hierarchy.cgroup(child), announce=True)
            elif event.mask & IN_DELETE:
                self._untrack_tree(child, announce=True)
                return True
        elif event.mask & IN_MODIFY and event.wd not in reread:
            # The first re-read already sees the state after every queued change.
            reread.add(event.wd)
            if name == SUBTREE_CONTROL:
                self._controllers_changed(path)
            else:
                self._refresh(path, name)
        return False

    def _controllers_changed(self, path: str) -> None:
        """cgroup.subtree_control of ``path`` was written: watch its children's files
        again (those made anew get new watches and baselines), then say so."""
        children = tuple(sorted(p for p in self._tracked
                                if p != path and parent_path(p) == path))
        for child in children:
            cgroup = self.hierarchy.cgroup(child)
            if not self._included(child):
                continue
            for name in self.files:
                try:
                    self._watch_file(cgroup, name)
                except _WatchLimit as exc:
                    self._untrack(child)
                    self._untracked[child] = exc.message
                    self._emit(WatchFailed(child, exc.message, self.clock.monotonic()))
                    break
                except CgroupGone:
                    break  # being removed: the parent's IN_DELETE will say so
        if self._included(path) or any(self._included(c) for c in children):
            self._emit(ControllersChanged(path, children, self.clock.monotonic()))

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
        now = self.clock.monotonic()
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
        """Re-read everything, in a task that yields to the loop; an overflow during it
        runs it once more after."""
        self._resyncs += 1
        self._emit(Resynchronized(reason, self.clock.monotonic()))
        if self._resync_task is not None and not self._resync_task.done():
            self._resync_reason = reason
            return
        assert self._loop is not None
        self._resync_task = self._loop.create_task(self._aresync())

    async def _aresync(self) -> None:
        while True:
            try:
                await self._resync_pass()
            except Exception:
                log.exception("cgoom watcher: resync failed")
            if self._resync_reason is None or self._closed:
                return
            self._resync_reason = None

    async def _resync_pass(self) -> None:
        fs = self.hierarchy.fs
        deadline = time.perf_counter() + SLICE_SECONDS

        async def pace() -> None:
            nonlocal deadline
            if time.perf_counter() > deadline:
                await asyncio.sleep(0)
                deadline = time.perf_counter() + SLICE_SECONDS

        # Removals and re-creations (another id at the same path: its old watches are dead),
        # then changes in the cgroups that remain, then creations.
        for path in sorted(self._tracked):
            if path not in self._tracked:
                continue
            cgroup = self.hierarchy.cgroup(path)
            try:
                same = fs.stat(cgroup.dir).st_ino == self._ids.get(path)
            except OSError:
                self._untrack_tree(path, announce=True)
                continue
            if not same:
                self._untrack_tree(path, announce=True)
                await self._atrack_tree(cgroup, announce=True)
            await pace()
        for path, name in list(self._last):
            if (path, name) in self._last:
                self._refresh(path, name)
            await pace()
        self._untracked.clear()  # the walk below watches them, or reports them again
        for root in self.roots:
            for each in self.hierarchy.cgroup(root).walk():
                if each.path not in self._tracked:
                    await self._atrack_tree(each, announce=True)
                await pace()

    # --- PSI triggers ------------------------------------------------------------------

    def watch_pressure(self, cgroup: str | None, trigger: PressureTrigger) -> None:
        """Arm a PSI trigger on ``cgroup``'s memory.pressure (``None``: the system's
        /proc/pressure/memory); each firing is a :class:`PressureTriggered` event."""
        self._pressure().arm(cgroup, trigger, None)

    def watch_sustained_pressure(self, cgroup: str | None, rule: SustainedPressure) -> None:
        """Arm ``rule`` ("some above 40% for 10 s") on ``cgroup`` (``None``: system-wide);
        each time it holds is a :class:`PressureSustained` event."""
        self._pressure().arm(cgroup, rule.trigger, SustainedState(rule))

    def _pressure(self) -> PsiTriggers:
        if self._inotify is None or self._loop is None or self._closed:
            raise RuntimeError(f"{self!r} is not running: arm triggers inside `async with`")
        return self._psi


def open_watcher(
    hierarchy: Hierarchy | None = None,
    *roots: str,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    files: Iterable[str] = DEFAULT_FILES,
    raise_watch_limit: bool = False,
    max_queued: int = 10_000,
    queued: bool = True,
    clock: Clock = SYSTEM,
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
        max_queued=max_queued,
        queued=queued,
        clock=clock,
    )
