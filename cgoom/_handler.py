"""``open_handler``: the engine. Orchestration only: rules (``_rules``) fire on the watcher's
events; each incident takes a snapshot in the snapshotter's thread, a guarded decision in the
policies' thread, acts (``_actions``) and waits for the confirmation; a frozen
:class:`~cgoom.IncidentRecord` comes out of it.

Everything that can be started before an incident is: the watcher, the snapshot and policy
threads. At incident time the loop does no blocking I/O except the kill itself (a
``cgroup.kill`` write returns in about a millisecond: DESIGN.md principle 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from types import TracebackType

import attrs

from ._actions import ActionResult, Pidfds, ProcessControl, kill_cgroup, kill_process
from ._candidates import Incident, parent_path
from ._cgroup import if_supported
from ._errors import CgoomError, InvalidValue
from ._events import (
    CgroupCreated,
    CgroupRemoved,
    CgroupStateChanged,
    Event,
    MemoryEventsChanged,
    Resynchronized,
)
from ._fs import OsFS
from ._hierarchy import Hierarchy
from ._incident import IncidentRecord, Timings
from ._kmsg import KernelOomKill, KmsgReader
from ._plugins import adecide, load_policy, start_policy_worker, validate_policy
from ._policy import Policy, Victim
from ._rules import Rule, RuleState
from ._snapshot import Snapshotter, UsageHistory, policy_fields
from ._watcher import Watcher

log = logging.getLogger("cgoom")

#: What a handler delivers: its own incidents, and the kernel's OOM kills (from /dev/kmsg).
Record = IncidentRecord | KernelOomKill
RecordListener = Callable[[Record], object]

#: Domains of at most this many cgroups are snapshotted on the loop's thread (about 0.1 ms a
#: cgroup); larger ones in the snapshotter's thread, so the loop never stalls on them.
INLINE_SNAPSHOT_CGROUPS = 64


@attrs.frozen
class HandlerStatistics:
    """A snapshot of a handler's work, for metrics."""

    incidents: int
    kills: int
    #: OOM kills by the kernel itself, seen in /dev/kmsg.
    kernel_kills: int
    dry_runs: int
    #: Decisions where the rule's policy failed and the fallback decided.
    fallbacks: int
    #: Incidents being handled now.
    in_flight: int
    #: Records waiting for ``async for``.
    queued: int


class Handler:
    """Runs ``rules`` on the event loop; one :class:`~cgoom.IncidentRecord` per incident,
    through ``async for record in handler`` or :meth:`add_listener`. Use
    ``async with cgoom.open_handler(...)``.

    ``own_cgroup``: cgoom's own cgroup, never chosen nor its ancestors (default: this
    process's, from /proc/self/cgroup). ``processes``: how processes are killed (default:
    real pidfds; :class:`cgoom.testing.FakeProcesses` on a fake tree). ``restore``: undo the
    rules' early-trigger set-up when the handler stops (``setup`` says what was done).
    ``kmsg``: the kernel log to follow for the kernel's own OOM kills, delivered in the same
    stream as :class:`~cgoom.KernelOomKill` (default /dev/kmsg on the real filesystem, none
    on a fake tree; ``None``: off).
    """

    def __init__(self, hierarchy: Hierarchy, rules: Iterable[Rule], *,
                 own_cgroup: str | None = None, processes: ProcessControl | None = None,
                 history: UsageHistory | None = None, max_queued: int = 1000,
                 restore: bool = True, kmsg: str | None = "") -> None:
        self.hierarchy = hierarchy
        self.rules = tuple(rules)
        if not self.rules:
            raise InvalidValue("a handler needs at least one rule", value="()")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise InvalidValue(f"rule names must be unique: {names}", value=repr(names))
        self.policies: dict[str, Policy] = {r.name: self._policy(r) for r in self.rules}
        if own_cgroup is None:
            try:
                own_cgroup = hierarchy.own_cgroup().path
            except CgoomError as exc:
                raise CgoomError(f"cannot tell cgoom's own cgroup ({exc}); pass own_cgroup= "
                                 "so it is never chosen") from exc
        self.own_cgroup = own_cgroup
        self._processes = processes
        self._states = {r.name: RuleState(r) for r in self.rules}
        self._snapshotter = Snapshotter(hierarchy, history=history)
        self._watcher: Watcher | None = None
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue(max_queued)
        self._listeners: list[RecordListener] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._gone: dict[str, list[asyncio.Future[float]]] = {}
        self._ids = itertools.count(1)
        self._paths: dict[str, set[str]] = {r.domain: set() for r in self.rules}
        #: The rule whose incident is in flight, per domain: one at a time per domain.
        self._busy: dict[str, str] = {}
        self.restore = restore
        if kmsg == "":
            kmsg = "/dev/kmsg" if type(hierarchy.fs) is OsFS else None
        self._kmsg = None if kmsg is None else KmsgReader(kmsg, self._on_kernel_kill)
        #: What the early-trigger set-up did, one sentence each (and what it could not do).
        self.setup: list[str] = []
        self._undo: list[tuple[str, str, str]] = []  # (cgroup, file, old value)
        self._counts = {"incidents": 0, "kills": 0, "kernel_kills": 0, "dry_runs": 0,
                        "fallbacks": 0}
        self._closed = False

    @staticmethod
    def _policy(rule: Rule) -> Policy:
        if isinstance(rule.policy, str):
            return load_policy(rule.policy, **dict(rule.policy_args))
        validate_policy(rule.policy, plugin=getattr(rule.policy, "name", "?"),
                        origin=f"rule {rule.name!r}")
        policy: Policy = rule.policy
        return policy

    def __repr__(self) -> str:
        return f"<Handler {', '.join(r.name for r in self.rules)}>"

    # --- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> Handler:
        if self._processes is None and not all(r.dry_run for r in self.rules):
            self._processes = Pidfds(self.hierarchy)
        self._snapshotter.start()
        start_policy_worker()
        domains = sorted({r.domain for r in self.rules})
        self._watcher = Watcher(self.hierarchy, domains,
                                files=["memory.events", "cgroup.events"])
        await self._watcher.astart()
        self._watcher.add_listener(self._on_event)
        self._refilter()
        if self._kmsg is not None:
            try:
                self._kmsg.open(asyncio.get_running_loop())
            except OSError as exc:
                self.setup.append(f"kernel OOM kills are not followed: cannot read "
                                  f"{self._kmsg.path} ({exc.strerror}; it needs CAP_SYSLOG "
                                  "where kernel.dmesg_restrict=1)")
                self._kmsg = None
        try:
            for rule in self.rules:
                await self._prepare(rule)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def _prepare(self, rule: Rule) -> None:
        """The rule's early-trigger set-up; each write is remembered to be undone."""
        worker = self._snapshotter.start()
        domain = self.hierarchy.cgroup(rule.domain)
        if rule.high_below_max is not None:
            limit = domain.memory_max()
            if limit == "max":
                self.setup.append(f"{rule.name}: {rule.domain} has no memory.max, so "
                                  "memory.high was not set (set memory.max first)")
            else:
                target = int(limit * (1 - rule.high_below_max)) // 4096 * 4096
                old = domain.memory_high()
                if old == "max" or old > target:
                    # The write reclaims down to the new value in the writer's context:
                    # in the worker thread, never on the loop.
                    await worker.run(lambda: domain.set_memory_high(target))
                    self._undo.append((domain.path, "memory.high", str(old)))
                    self.setup.append(f"{rule.name}: memory.high of {rule.domain} set to "
                                      f"{target} ({rule.high_below_max:.0%} below memory.max "
                                      f"{limit}; was {old})")
        if rule.oom_group_leaves:
            paths = self._paths.get(rule.domain, set())
            parents = {parent_path(p) for p in paths if p != "/"}
            leaves = sorted(paths - parents)
            for path in leaves:
                leaf = self.hierarchy.cgroup(path)
                try:
                    if not leaf.memory_oom_group():
                        leaf.set_memory_oom_group(True)
                        self._undo.append((path, "memory.oom.group", "0"))
                except CgoomError as exc:
                    self.setup.append(f"{rule.name}: memory.oom.group of {path}: {exc}")
            self.setup.append(f"{rule.name}: memory.oom.group=1 on {len(leaves)} leaf "
                              f"cgroup(s) of {rule.domain}")
        for line in self.setup:
            log.info("cgoom handler set-up: %s", line)

    async def _unprepare(self) -> None:
        worker = self._snapshotter.start()
        while self._undo:
            path, name, old = self._undo.pop()
            cgroup = self.hierarchy.cgroup(path)
            write = functools.partial(cgroup.write_file, name, old)
            try:
                await worker.run(write)
            except CgoomError as exc:  # gone meanwhile is fine; say anything else
                log.warning("cgoom handler: could not restore %s of %s to %s: %s", name, path,
                            old, exc)

    def _refilter(self) -> None:
        """Each domain's known cgroups, from the watcher: kept here so an incident does not
        scan every watched path (1.2 ms for 1,000 of them)."""
        assert self._watcher is not None
        watched = self._watcher.watched()
        self._paths = {d: {p for p in watched if _inside(p, d)} for d in self._paths}

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: wait for incidents in flight, then release the watcher and threads."""
        if self._closed:
            return
        self._closed = True
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._kmsg is not None:
            self._kmsg.close()
        if self.restore:
            await self._unprepare()
        if self._watcher is not None:
            self._watcher.close()
        self._snapshotter.close()
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    # --- delivery ----------------------------------------------------------------------

    def add_listener(self, listener: RecordListener) -> None:
        """Call ``listener(record)`` for every record, on the loop; one that raises is
        logged and kept."""
        self._listeners.append(listener)

    def __aiter__(self) -> Handler:
        return self

    async def __anext__(self) -> Record:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)
            raise StopAsyncIteration
        return item

    def statistics(self) -> HandlerStatistics:
        return HandlerStatistics(in_flight=len(self._tasks), queued=self._queue.qsize(),
                                 **self._counts)

    # --- events ------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, CgroupCreated | CgroupRemoved):
            for domain, paths in self._paths.items():
                if _inside(event.cgroup, domain):
                    (paths.add if isinstance(event, CgroupCreated) else paths.discard)(
                        event.cgroup)
            return
        if isinstance(event, Resynchronized):
            self._refilter()
            return
        if isinstance(event, CgroupStateChanged) and not event.state.populated:
            for future in self._gone.pop(event.cgroup, []):
                if not future.done():
                    future.set_result(event.time)
            return
        if not isinstance(event, MemoryEventsChanged) or event.local or self._closed:
            return
        for rule in self.rules:
            if rule.domain != event.cgroup:
                continue
            running = self._busy.get(rule.domain)
            if running is not None and running != rule.name:
                # One incident per domain: another rule's is in flight; fold into it.
                self._states[running].folded += sum(
                    n for key, n in event.delta.items() if key in rule.on)
                continue
            if self._states[rule.name].observe(event.delta, event.time):
                self._busy[rule.domain] = rule.name
                task = asyncio.get_running_loop().create_task(self._incident(rule, event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    # --- one incident ------------------------------------------------------------------

    async def _incident(self, rule: Rule, event: MemoryEventsChanged) -> None:
        state = self._states[rule.name]
        try:
            record = await self._handle(rule, event)
        except Exception:
            log.exception("cgoom handler: incident of rule %r failed", rule.name)
            state.finished(time.monotonic())
            self._busy.pop(rule.domain, None)
            return
        folded = state.finished(time.monotonic())
        self._busy.pop(rule.domain, None)
        record = attrs.evolve(record, folded=folded)
        self._counts["incidents"] += 1
        self._counts["dry_runs"] += record.dry_run
        self._counts["kills"] += record.victim is not None
        self._counts["fallbacks"] += record.decision.policy != self.policies[rule.name].name
        log.info("cgoom: %s", record.explain().splitlines()[0])
        self._deliver(record)

    def _on_kernel_kill(self, kill: KernelOomKill) -> None:
        self._counts["kernel_kills"] += 1
        log.warning("cgoom: %s", kill)
        self._deliver(kill)

    def _deliver(self, record: Record) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # the oldest goes; listeners saw it
        self._queue.put_nowait(record)
        for listener in list(self._listeners):
            try:
                listener(record)
            except Exception:
                log.exception("cgoom handler listener %r failed", listener)

    async def _handle(self, rule: Rule, event: MemoryEventsChanged) -> IncidentRecord:
        assert self._watcher is not None
        notified = event.time
        started_at = time.time()
        domain = self.hierarchy.cgroup(rule.domain)
        policy = self.policies[rule.name]
        paths = sorted(self._paths[rule.domain])
        if len(paths) <= INLINE_SNAPSHOT_CGROUPS:
            # A few file reads cost less than the hop to the snapshot thread and back
            # (tens of ms in a loaded VM: 105 ms measured for 4 cgroups).
            snaps = self._snapshotter.snapshot(rule.domain, fields=policy_fields(policy),
                                               paths=paths)
        else:
            snaps = await self._snapshotter.asnapshot(rule.domain,
                                                      fields=policy_fields(policy), paths=paths)
        snapshot_done = time.monotonic()
        # The domain's usage as the snapshot just read it (no second read of the file).
        before = snaps[rule.domain].usage if rule.domain in snaps else None
        incident = Incident.create(rule.domain, "memory.events " + ",".join(sorted(
            k for k in event.delta if k in rule.on)), own_cgroup=self.own_cgroup)
        decision = await adecide(policy, incident, snaps, budget=rule.budget)
        decided = time.monotonic()
        actions: list[ActionResult] = []
        kill_at = confirmed_at = None
        if not rule.dry_run:
            for victim in decision.victims:
                result, kill_at, confirmed_at = await self._act(rule, victim)
                actions.append(result)
                if result.ok:
                    break
        else:
            actions.append(ActionResult("dry-run", decision.first.cgroup if decision.first
                                        else rule.domain, decision.first.pid if decision.first
                                        else None, False, "dry run: nothing was killed"))
        after = if_supported(domain.memory_current)
        ms = 1000.0
        timings = Timings(
            notified=notified, snapshot_ms=(snapshot_done - notified) * ms,
            decision_ms=(decided - snapshot_done) * ms,
            kill_ms=None if kill_at is None else (kill_at - notified) * ms,
            confirmed_ms=None if confirmed_at is None else (confirmed_at - notified) * ms)
        return IncidentRecord(
            id=f"{int(started_at)}-{next(self._ids)}", rule=rule.name, domain=rule.domain,
            trigger=str(event), folded=0, dry_run=rule.dry_run, decision=decision,
            candidates=tuple(snaps.values()), actions=tuple(actions), timings=timings,
            memory_before=before, memory_after=after, started_at=started_at)

    async def _await_exits(self, handles: list[int], seconds: float) -> float | None:
        """When every process behind ``handles`` has exited (the last one's time), or
        ``None`` after ``seconds``; the handles are closed either way."""
        loop = asyncio.get_running_loop()
        assert self._processes is not None
        futures = [_readable(loop, h) for h in handles]
        try:
            done = await asyncio.wait_for(asyncio.gather(*futures), seconds)
            return max(done)
        except TimeoutError:
            return None
        finally:
            for handle in handles:
                loop.remove_reader(handle)
                self._processes.close(handle)

    async def _act(self, rule: Rule, victim: Victim,
                   ) -> tuple[ActionResult, float | None, float | None]:
        """Kill ``victim`` and wait for it to be gone: (result, kill time, gone time)."""
        loop = asyncio.get_running_loop()
        if victim.whole:
            gone: asyncio.Future[float] = loop.create_future()
            self._gone.setdefault(victim.cgroup, []).append(gone)
            result, handles = kill_cgroup(self.hierarchy, victim, self._processes)
            kill_at = time.monotonic()
            if handles or not result.ok:
                waiting = self._gone.get(victim.cgroup, [])
                if gone in waiting:
                    waiting.remove(gone)
            if not result.ok:
                return result, None, None
            if handles:  # -1000 processes were spared: populated 0 will not come
                exits = await self._await_exits(handles, rule.confirm_timeout)
                if exits is None:
                    return attrs.evolve(result, detail=result.detail + f"; not all gone after "
                                        f"{rule.confirm_timeout} s"), kill_at, None
                return attrs.evolve(result, detail=result.detail + "; the killed exited",
                                    confirmed_ms=(exits - kill_at) * 1000), kill_at, exits
            try:
                empty_at = await asyncio.wait_for(gone, rule.confirm_timeout)
            except TimeoutError:
                return attrs.evolve(result, detail=result.detail + f"; not empty after "
                                    f"{rule.confirm_timeout} s"), kill_at, None
            return attrs.evolve(result, detail=result.detail + "; populated 0",
                                confirmed_ms=(empty_at - kill_at) * 1000), kill_at, empty_at
        assert self._processes is not None
        result, handle = kill_process(self.hierarchy, victim, self._processes)
        kill_at = time.monotonic()
        if handle is None:
            return result, (kill_at if result.ok else None), None
        exited: asyncio.Future[float] = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(time.monotonic())

        try:
            loop.add_reader(handle, readable)
            try:
                gone_at: float | None = await asyncio.wait_for(exited, rule.confirm_timeout)
            except TimeoutError:
                gone_at = None
            finally:
                loop.remove_reader(handle)
        finally:
            self._processes.close(handle)
        if gone_at is None:
            return attrs.evolve(result, detail=result.detail + f"; not gone after "
                                f"{rule.confirm_timeout} s"), kill_at, None
        return attrs.evolve(result, detail=result.detail + "; exited (pidfd readable)",
                            confirmed_ms=(gone_at - kill_at) * 1000), kill_at, gone_at


def _inside(path: str, domain: str) -> bool:
    return domain == "/" or path == domain or path.startswith(domain + "/")


def _readable(loop: asyncio.AbstractEventLoop, handle: int) -> asyncio.Future[float]:
    """A future set (to the monotonic time) when ``handle`` becomes readable."""
    future: asyncio.Future[float] = loop.create_future()

    def ready() -> None:
        loop.remove_reader(handle)
        if not future.done():
            future.set_result(time.monotonic())

    loop.add_reader(handle, ready)
    return future


def open_handler(hierarchy: Hierarchy | None = None, *rules: Rule,
                 own_cgroup: str | None = None, processes: ProcessControl | None = None,
                 history: UsageHistory | None = None, restore: bool = True,
                 kmsg: str | None = "") -> Handler:
    """A :class:`Handler` for ``rules``, to use as
    ``async with cgoom.open_handler(h, cgoom.Rule("batch", "workload.slice")) as handler:``.
    """
    return Handler(hierarchy if hierarchy is not None else Hierarchy.discover(), rules,
                   own_cgroup=own_cgroup, processes=processes, history=history,
                   restore=restore, kmsg=kmsg)
