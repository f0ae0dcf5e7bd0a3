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
import collections
import contextlib
import fnmatch
import functools
import itertools
import logging
import signal
import time
from collections.abc import Callable, Collection, Iterable
from types import TracebackType

import attrs

from .._decide._candidates import CgroupSnapshot, Incident
from .._decide._plugins import adecide, load_policy, start_policy_worker, validate_policy
from .._decide._policy import Decision, Policy, PriorityPolicy, Victim
from .._decide._snapshot import (
    Snapshotter,
    UsageHistory,
    check_patterns,
    policy_fields,
)
from .._errors import CgoomError, CgroupGone, InvalidValue, PermissionDenied
from .._kernel._cgroup import OVERLIMIT_XATTR, if_supported
from .._kernel._fs import OsFS
from .._kernel._hierarchy import Hierarchy
from .._kernel._kmsg import KernelOomKill, KmsgReader
from .._kernel._meminfo import MemInfo, read_meminfo
from .._kernel._netlink import ProcConnector, ProcessFork, ProcEvent, load, now_ns
from .._kernel._parse import format_size
from .._kernel._paths import inside, normalize_path, parent_path
from .._kernel._proc import oom_score_adj, process_now
from .._kernel._taskstats import ExitStats, MemoryStall, delay_accounting, family_id
from .._kernel._types import MemoryEvents
from .._watch._events import (
    CgroupCreated,
    CgroupRemoved,
    CgroupStateChanged,
    Event,
    MemoryEventsChanged,
    PressureSustained,
    PressureTriggered,
    PressureTriggerEnded,
    Resynchronized,
    SustainedPressure,
    counters,
)
from .._watch._watcher import Watcher
from ._actions import (
    ActionResult,
    Pidfds,
    ProcessControl,
    freeze_cgroup,
    kill_cgroup,
    kill_process,
    reclaim_cgroup,
    terminate_cgroup,
    terminate_process,
)
from ._firstchance import (
    Answer,
    FirstChance,
    FirstChanceHandler,
    FirstChanceOutcome,
    Gone,
    Levels,
    Notice,
    Registration,
    Registry,
    level_of,
    threshold_of,
)
from ._incident import IncidentRecord, Timings
from ._rules import Rule, RuleState, setup_changes
from ._tripwire import DomainTripwire, Tripwires

log = logging.getLogger("cgoom")

#: What a handler delivers: its own incidents, and the kernel's OOM kills (from /dev/kmsg).
Record = IncidentRecord | KernelOomKill
RecordListener = Callable[[Record], object]

#: Domains of at most this many cgroups are snapshotted on the loop's thread (about 0.1 ms a
#: cgroup); larger ones in the snapshotter's thread, so the loop never stalls on them.
INLINE_SNAPSHOT_CGROUPS = 64
#: Notices written in one go before the loop runs again (about 3 ms of socket writes).
FAN_OUT_CHUNK = 256
#: While a domain's level is raised, its usage is read this often (seconds) to see it
#: recover: a fall in usage raises no kernel event. Only while raised.
SETTLE_EVERY = 1.0


#: An adaptive poll (``Rule.poll_below``) sleeps the time memory would take to fall to the
#: reserve at this rate, between 0.1 s and 1 s: earlyoom's figures (6,000 MiB/s, its
#: ``mem_fill_rate``).
FILL_RATE = 6000 << 20
POLL_MIN, POLL_MAX = 0.1, 1.0


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
    #: memory.high tripwires of machine rules that fired (each re-checks MemAvailable).
    tripwire_trips: int
    #: MemAvailable reads by adaptive polling (``Rule.poll_below``) while memory was low.
    polls: int
    #: Incidents that failed inside the engine (each still yields a record saying so).
    errors: int
    #: Incidents being handled now.
    in_flight: int
    #: Records waiting for ``async for``.
    queued: int
    #: Cgroups the handler's watcher follows now.
    watched: int = 0


class _KillWatch:
    """One kill, as the process connector tells it: the exits of the processes signalled
    (with their signal) and the forks among them since (a fork racing a whole kill)."""

    def __init__(self, pids: Iterable[int], since_ns: int, cgroup: str | None,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.pids = set(pids)
        self.since_ns = since_ns
        #: The cgroup killed whole, or ``None`` for one process.
        self.cgroup = cgroup
        self.exits: dict[int, int] = {}
        self.forks: list[int] = []
        self.raced: list[int] = []
        #: taskstats at exit, per process (a process's totals win over its leader thread's).
        self.stalls: dict[int, tuple[bool, MemoryStall]] = {}
        self.all_exited: asyncio.Future[None] = loop.create_future()

    def see(self, event: ProcEvent) -> int | None:
        """Take ``event`` in; a child to kill when it is a fork racing a whole kill."""
        if event.timestamp_ns < self.since_ns:
            return None  # from before the kill: another process that had this pid
        if isinstance(event, ProcessFork):
            if event.parent in self.pids:
                self.pids.add(event.child)
                self.forks.append(event.child)
                return event.child if self.cgroup is not None else None
            return None
        if event.pid in self.pids and event.pid not in self.exits:
            self.exits[event.pid] = event.status
            if len(self.exits) == len(self.pids) and not self.all_exited.done():
                self.all_exited.set_result(None)
        return None

    def stall(self, is_process: bool, stall: MemoryStall) -> None:
        if stall.pid in self.pids and (is_process or stall.pid not in self.stalls):
            self.stalls[stall.pid] = (is_process, stall)

    def summary(self) -> str:
        if not self.pids:
            return ""
        signals: dict[str, int] = {}
        for status in self.exits.values():
            sig = status & 0x7F
            name = f"by {signal_name(sig)}" if sig else f"with exit code {status >> 8}"
            signals[name] = signals.get(name, 0) + 1
        how = ", ".join(f"{n} {name}" for name, n in sorted(signals.items()))
        text = (f"; the process connector saw {len(self.exits)} of {len(self.pids)} "
                f"exit(s)" + (f" ({how})" if how else ""))
        if self.forks:
            text += (f"; {len(self.forks)} fork(s) during the kill"
                     + (f", racing it: killed {', '.join(map(str, self.raced))}"
                        if self.raced else ""))
        if self.stalls:
            worst = sorted((s for _, s in self.stalls.values()),
                           key=lambda s: -(s.reclaim_ms + (s.thrashing_ms or 0)))
            text += ("; memory stall before death (taskstats): "
                     + "; ".join(map(str, worst[:3]))
                     + (f"; {len(worst) - 3} more" if len(worst) > 3 else ""))
        return text


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _Window:
    """What the kernel did in one domain while an incident ran there."""

    def __init__(self) -> None:
        self.kills: list[KernelOomKill] = []
        self.oom_kill = 0


class Handler:
    """Runs ``rules`` on the event loop; one :class:`~cgoom.IncidentRecord` per incident,
    through ``async for record in handler`` or :meth:`add_listener`. Use
    ``async with cgoom.open_handler(...)``.

    ``own_cgroup``: cgoom's own cgroup, never chosen nor its ancestors (default: this
    process's, from /proc/self/cgroup). ``processes``: how processes are killed (default:
    real pidfds; :class:`cgoom.testing.FakeProcesses` on a fake tree). ``restore``: undo the
    rules' set-up (early triggers, tripwires, frozen cgroups, raised limits) when the
    handler stops (``setup`` says what was done). ``kmsg``: the kernel log to follow for the
    kernel's own OOM kills, delivered in the same stream as :class:`~cgoom.KernelOomKill`
    (default /dev/kmsg on the real filesystem, none on a fake tree; ``None``: off).
    ``proc_events``: follow the process connector (pyroute2) to see each killed process
    exit with its signal and to kill a fork racing a whole kill (default: on the real
    filesystem; it needs root; ``handler.setup`` says when it could not be used).
    ``priorities``: ``(pattern, priority)`` pairs for cgroups without a priority xattr
    (:class:`cgoom.Snapshotter`). ``notice_interval``: a registration hears the same level
    at most once in this many seconds (:meth:`register`).
    """

    def __init__(self, hierarchy: Hierarchy, rules: Iterable[Rule], *,
                 own_cgroup: str | None = None, processes: ProcessControl | None = None,
                 history: UsageHistory | None = None, max_queued: int = 1000,
                 restore: bool = True, kmsg: str | None = "",
                 proc_events: bool | None = None,
                 priorities: Iterable[tuple[str, int]] = (),
                 notice_interval: float = 10.0) -> None:
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
        self._snapshotter = Snapshotter(hierarchy, priorities=tuple(priorities), history=history)
        self._watcher: Watcher | None = None
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue(max_queued)
        self._listeners: list[RecordListener] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._gone: dict[str, list[asyncio.Future[float]]] = {}
        self._ids = itertools.count(1)
        self._paths: dict[str, set[str]] = {r.domain: set() for r in self.rules}
        #: The rule whose incident is in flight, per domain: one at a time per domain.
        self._busy: dict[str, str] = {}
        self._windows: dict[str, _Window] = {}
        #: Machine rules' tripwires, by rule name, and whose re-arm is pending.
        self._tripwires = {r.name: Tripwires(hierarchy, r.domain, r.available_below)
                           for r in self.rules if r.available_below is not None}
        self._usage_wires = {r.name: DomainTripwire(hierarchy, r.domain, r.usage_above)
                             for r in self.rules if r.usage_above is not None}
        self._arming: set[str] = set()
        self._arm_again: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._polling: dict[str, asyncio.Task[None]] = {}
        #: Cgroups frozen by a ``freeze`` action, thawed when the handler stops.
        self._frozen: list[str] = []
        #: Domains whose memory.max a ``raise-limit`` action raised: what to put back.
        self._raised: dict[str, tuple[int, int | str, str | None]] = {}
        self.restore = restore
        if kmsg == "":
            kmsg = "/dev/kmsg" if type(hierarchy.fs) is OsFS else None
        self._kmsg = None if kmsg is None else KmsgReader(kmsg, self._on_kernel_kill)
        if proc_events is None:
            proc_events = type(hierarchy.fs) is OsFS
        self._connector = ProcConnector(self._on_proc_event) if proc_events else None
        self._exit_stats: ExitStats | None = None
        self._kill_watches: list[_KillWatch] = []
        #: What the set-up did, one sentence each (and what it could not do).
        self.setup: list[str] = []
        self._undo: list[tuple[str, str, str]] = []  # (cgroup, file, old value)
        self._counts = {"incidents": 0, "kills": 0, "kernel_kills": 0, "dry_runs": 0,
                        "fallbacks": 0, "tripwire_trips": 0, "polls": 0, "errors": 0}
        self._closed = False
        self._first = Registry(notice_interval)
        #: Each domain's level (raised at once, cleared with hysteresis), and the timers
        #: that look for its recovery while it is raised.
        self._levels: dict[str, Levels] = {}
        self._settling: dict[str, asyncio.TimerHandle] = {}
        #: Cgroups declared background-killable by their workloads, with a count per
        #: declaration (a client that goes takes its declarations with it).
        self._killable: collections.Counter[tuple[str, int]] = collections.Counter()
        #: Level notices in flight (their handlers are cut off after ``notice_interval``).
        self._telling: set[asyncio.Future[Answer | None]] = set()
        #: First-chance handlers cut off at their deadline, left to finish on their own.
        self._abandoned: set[asyncio.Future[Answer | None]] = set()

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

    # --- reconfiguration -----------------------------------------------------------------

    def reconfigure(self, rules: Iterable[Rule], *,
                    priorities: Iterable[tuple[str, int]] | None = None) -> list[str]:
        """Apply new versions of the rules (and new ``priorities``, when given) to the
        running handler, keeping its state: cooldowns, debounce counts, the growth history
        and any incident in flight (which finishes under the version it started with; the
        next incident uses the new one). Returns what changed, one sentence each.

        All or nothing: the same rule names must come back, each with the same set-up
        (:data:`cgoom._engine._rules.SETUP_FIELDS`: domain, triggers other than ``on``, tripwires,
        early triggers); otherwise :class:`~cgoom.InvalidValue` says which rule and field
        need a restart, and nothing is applied. Policies are loaded and validated before
        anything changes."""
        new = tuple(rules)
        old = {r.name: r for r in self.rules}
        names = [r.name for r in new]
        if len(set(names)) != len(names):
            raise InvalidValue(f"rule names must be unique: {names}", value=repr(names))
        problems = []
        if set(names) != set(old):
            added, removed = sorted(set(names) - set(old)), sorted(set(old) - set(names))
            problems += ([f"rule(s) added: {', '.join(added)}"] if added else []) + (
                [f"rule(s) removed: {', '.join(removed)}"] if removed else [])
        problems += [f"rule {r.name!r}: {change}" for r in new if r.name in old
                     for change in setup_changes(old[r.name], r)]
        if problems:
            raise InvalidValue("these changes need cgoom started again (the set-up they "
                               "change is made once, at start): " + "; ".join(problems),
                               value=repr(names))
        checked = None if priorities is None else check_patterns(tuple(priorities))
        policies = {r.name: (self.policies[r.name] if r.policy == old[r.name].policy
                             and r.policy_args == old[r.name].policy_args
                             else self._policy(r)) for r in new}
        if (self._processes is None and self._watcher is not None
                and not all(r.dry_run or r.action in ("notify", "freeze", "reclaim")
                            for r in new)):
            self._processes = Pidfds(self.hierarchy)
        changed = []
        for rule in new:
            before = old[rule.name]
            if rule != before:
                fields = [a.name for a in attrs.fields(Rule)
                          if getattr(rule, a.name) != getattr(before, a.name)]
                changed.append(f"rule {rule.name!r}: {', '.join(fields)} changed")
            self._states[rule.name].rule = rule
        if checked is not None and checked != self._snapshotter.priorities:
            changed.append(f"priorities: {len(checked)} pattern(s), were "
                           f"{len(self._snapshotter.priorities)}")
            self._snapshotter.priorities = checked
        self.rules = new
        self.policies = policies
        return changed

    # --- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> Handler:
        if self._processes is None and not all(r.dry_run or r.action in ("notify", "freeze",
                                                                       "reclaim")
                                               for r in self.rules):
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
        if self._connector is not None and self._processes is not None:
            try:
                # pyroute2 is slow to import (8-10 s in the emulated VM): in the worker,
                # now, never at OOM time.
                await self._snapshotter.start().run(load)
                self._connector.open(asyncio.get_running_loop())
            except (ImportError, OSError) as exc:
                self.setup.append(f"the process connector is not followed ({exc}): kills "
                                  "are confirmed by populated 0 and pidfds alone; it needs "
                                  "root and CAP_NET_ADMIN")
                self._connector = None
            else:
                await self._open_exit_stats()
        else:
            self._connector = None
        try:
            # Early triggers (memory.high below memory.max) before tripwires: a tripwire
            # keeps the memory.high it finds as its own level and puts it back on release,
            # so it must find the early trigger's, not the other way round.
            for rule in sorted(self.rules, key=lambda r: r.machine or r.usage_above is not None):
                await self._prepare(rule)
        except BaseException:
            await self.aclose()
            raise
        for line in self.setup:
            log.info("cgoom handler set-up: %s", line)
        return self

    async def _open_exit_stats(self) -> None:
        """taskstats at exit, for the memory stall of the processes killed: only where the
        kernel accounts delays (else they would all read 0)."""
        accounting = delay_accounting(self.hierarchy.proc_root)
        if accounting is False:
            self.setup.append("memory stalls of killed processes are not recorded: delay "
                              "accounting is off (sysctl kernel.task_delayacct=1, or boot "
                              "with delayacct)")
            return
        try:
            family = await self._snapshotter.start().run(family_id)
            stats = ExitStats(self._on_stall)
            stats.open(asyncio.get_running_loop(), family)
        except Exception as exc:  # pyroute2's errors are its own: say, and go on without
            self.setup.append(f"memory stalls of killed processes are not recorded: "
                              f"taskstats: {exc}")
            return
        self._exit_stats = stats

    def _on_stall(self, is_process: bool, stall: MemoryStall) -> None:
        for watch in self._kill_watches:
            watch.stall(is_process, stall)

    async def _prepare(self, rule: Rule) -> None:
        """The rule's set-up; each write is remembered to be undone."""
        assert self._watcher is not None
        worker = self._snapshotter.start()
        domain = self.hierarchy.cgroup(rule.domain)
        if rule.pressure is not None:
            where = rule.domain if rule.pressure_scope == "domain" else None
            if isinstance(rule.pressure, SustainedPressure):
                self._watcher.watch_sustained_pressure(where, rule.pressure)
            else:
                self._watcher.watch_pressure(where, rule.pressure)
            self.setup.append(f"{rule.name}: PSI {rule.pressure} on "
                              f"{where or '/proc/pressure/memory'}")
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
                    try:
                        await worker.run(lambda: domain.set_memory_high(target))
                    except PermissionDenied as exc:
                        # Unprivileged, the delegated root's own files stay root's: the
                        # rule still fires on memory.events, without cgoom's margin.
                        self.setup.append(
                            f"{rule.name}: memory.high of {rule.domain} was not set "
                            f"({exc}); the rule fires on the domain's own memory.high or "
                            "memory.max: set MemoryHigh= on its unit, or give cgoom the "
                            "file")
                    else:
                        self._undo.append((domain.path, "memory.high", str(old)))
                        self.setup.append(
                            f"{rule.name}: memory.high of {rule.domain} set to "
                            f"{format_size(target)} ({rule.high_below_max:.0%} below "
                            f"memory.max {format_size(limit)}; was "
                            f"{old if old == 'max' else format_size(old)})")
        if rule.oom_group_leaves:
            paths = self._paths.get(rule.domain, set())
            parents = {parent_path(p) for p in paths if p != "/"}
            leaves = sorted(paths - parents)
            for path in leaves:
                problem = self._set_oom_group(path)
                if problem is not None:
                    self.setup.append(f"{rule.name}: {problem}")
            self.setup.append(f"{rule.name}: memory.oom.group=1 on {len(leaves)} leaf "
                              f"cgroup(s) of {rule.domain}")
        if rule.oom_group:
            matching = [p for p in sorted(self._paths.get(rule.domain, ()))
                        if _matches(p, rule.oom_group)]
            for path in matching:
                problem = self._set_oom_group(path)
                if problem is not None:
                    self.setup.append(f"{rule.name}: {problem}")
            self.setup.append(f"{rule.name}: memory.oom.group=1 on {len(matching)} cgroup(s) "
                              f"matching {', '.join(rule.oom_group)}, and on those that "
                              "appear")
        if rule.machine or rule.usage_above is not None:
            await self._arm(rule, announce=True)

    def _set_oom_group(self, path: str) -> str | None:
        """memory.oom.group=1 on ``path`` (a direct write: it does no reclaim), undone on
        stop; a cgroup gone meanwhile is fine. Returns what went wrong, or ``None``."""
        cgroup = self.hierarchy.cgroup(path)
        try:
            if not cgroup.memory_oom_group():
                cgroup.set_memory_oom_group(True)
                self._undo.append((path, "memory.oom.group", "0"))
        except CgroupGone:
            pass
        except CgoomError as exc:
            return f"memory.oom.group of {path}: {exc}"
        return None

    async def _unprepare(self) -> None:
        worker = self._snapshotter.start()
        for wires in self._tripwires.values():
            for problem in await worker.run(wires.restore):
                log.warning("cgoom handler: %s", problem)
        for wire in self._usage_wires.values():
            for problem in await worker.run(wire.restore):
                log.warning("cgoom handler: %s", problem)
        while self._frozen:
            path = self._frozen.pop()
            try:
                self.hierarchy.cgroup(path).thaw()
            except CgoomError as exc:
                log.warning("cgoom handler: could not thaw %s: %s", path, exc)
        for path in list(self._raised):
            await self._lower(path, final=True)
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
        self._paths = {d: {p for p in watched if inside(p, d)} for d in self._paths}

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop: wait for incidents in flight, then undo the set-up (``restore``) and
        release the watcher and threads."""
        if self._closed:
            return
        self._closed = True
        for timer in [*self._timers.values(), *self._settling.values()]:
            timer.cancel()
        for telling in list(self._telling):
            telling.cancel()
        for poll in self._polling.values():
            poll.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._polling:
            await asyncio.gather(*self._polling.values(), return_exceptions=True)
        if self._kmsg is not None:
            self._kmsg.close()
        if self._connector is not None:
            self._connector.close()
        if self._exit_stats is not None:
            self._exit_stats.close()
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
        watched = 0 if self._watcher is None else self._watcher.statistics().cgroups
        return HandlerStatistics(in_flight=len(self._tasks), queued=self._queue.qsize(),
                                 watched=watched, **self._counts)

    # --- events ------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, CgroupCreated | CgroupRemoved):
            for domain, paths in self._paths.items():
                if inside(event.cgroup, domain):
                    (paths.add if isinstance(event, CgroupCreated) else paths.discard)(
                        event.cgroup)
            if isinstance(event, CgroupCreated) and not self._closed:
                for rule in self.rules:  # a new top-level workload needs its tripwire
                    if rule.machine and parent_path(event.cgroup) == rule.domain:
                        self._schedule_arm(rule)
                    if (rule.oom_group and inside(event.cgroup, rule.domain)
                            and _matches(event.cgroup, rule.oom_group)):
                        problem = self._set_oom_group(event.cgroup)  # a new pod: whole
                        if problem is not None:
                            log.warning("cgoom handler: %s: %s", rule.name, problem)
            return
        if isinstance(event, Resynchronized):
            self._refilter()
            return
        if isinstance(event, CgroupStateChanged) and not event.state.populated:
            for future in self._gone.pop(event.cgroup, []):
                if not future.done():
                    future.set_result(event.time)
            return
        if self._closed:
            return
        if isinstance(event, PressureTriggered | PressureSustained):
            for rule in self.rules:
                if self._pressure_of(rule, event) and not self._signal(
                        rule, str(event), event.time) and rule.domain not in self._busy:
                    self._announce(rule.domain, "low")  # pressure, not yet an incident
            return
        if isinstance(event, PressureTriggerEnded):
            for rule in self.rules:
                if rule.pressure is not None and rule.pressure_scope == "domain" \
                        and rule.domain == event.cgroup:
                    log.warning("cgoom handler: rule %r no longer has its PSI trigger: %s",
                                rule.name, event.reason)
            return
        if not isinstance(event, MemoryEventsChanged) or event.local:
            return
        window = self._windows.get(event.cgroup)
        if window is not None:
            window.oom_kill += event.delta.get("oom_kill", 0)
        if event.delta.get("high") and (self._tripwires or self._usage_wires):
            for rule in self.rules:
                if rule.machine and parent_path(event.cgroup) == rule.domain:
                    self._tripped(rule, event)
                if rule.usage_above is not None and event.cgroup == rule.domain:
                    self._usage_tripped(rule, event)
        for rule in self.rules:
            if rule.domain != event.cgroup or not rule.on:
                continue
            running = self._busy.get(rule.domain)
            if running is not None and running != rule.name:
                # One incident per domain: another rule's is in flight; fold into it.
                self._states[running].folded += sum(
                    n for key, n in event.delta.items() if key in rule.on)
                continue
            if self._states[rule.name].observe(event.delta, event.time):
                self._start(rule, str(event), event.time)
        level = level_of(event.delta)
        if level is not None and event.cgroup not in self._busy and event.cgroup in self._paths:
            self._announce(event.cgroup, level)

    @staticmethod
    def _pressure_of(rule: Rule, event: PressureTriggered | PressureSustained) -> bool:
        if rule.pressure is None:
            return False
        where = rule.domain if rule.pressure_scope == "domain" else None
        if event.cgroup != where:
            return False
        if isinstance(event, PressureSustained):
            return event.rule == rule.pressure
        return event.trigger == rule.pressure

    def _signal(self, rule: Rule, trigger: str, notified: float) -> bool:
        """A trigger that needs no counting fired for ``rule``: start an incident, or fold
        into the domain's incident in flight. ``True`` if one was started."""
        running = self._busy.get(rule.domain)
        if running is not None and running != rule.name:
            self._states[running].folded += 1
            return False
        if self._states[rule.name].signal(notified):
            self._start(rule, trigger, notified)
            return True
        return False

    def _start(self, rule: Rule, trigger: str, notified: float) -> None:
        # The current version of the rule (timers and polls may hold an older one when the
        # handler was reconfigured; only its set-up fields, unchanged, are read from those).
        rule = self._states[rule.name].rule
        self._busy[rule.domain] = rule.name
        self._windows[rule.domain] = _Window()
        task = asyncio.get_running_loop().create_task(self._incident(rule, trigger, notified))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the whole machine: tripwires and adaptive polling -----------------------------

    def _children(self, rule: Rule) -> list[str]:
        return sorted(p for p in self._paths.get(rule.domain, ())
                      if p != rule.domain and parent_path(p) == rule.domain)

    async def _arm(self, rule: Rule, *, announce: bool = False) -> None:
        """(Re-)arm the rule's tripwires, in the worker thread; fire the rule if memory is
        already short."""
        if rule.usage_above is not None:
            await self._arm_usage(rule, announce=announce)
        if rule.machine:
            await self._arm_machine(rule, announce=announce)

    async def _arm_usage(self, rule: Rule, *, announce: bool) -> None:
        wire = self._usage_wires[rule.name]
        usage, problem = await self._snapshotter.start().run(wire.arm)
        if problem is not None:
            if announce:
                self.setup.append(f"{rule.name}: no usage tripwire: {problem}")
            else:
                log.warning("cgoom handler: %s: %s", rule.name, problem)
            return
        if announce:
            self.setup.append(f"{rule.name}: usage tripwire on {rule.domain} at "
                              f"{format_size(wire.level or 0)} ({rule.usage_above:.0%} of "
                              "memory.max; memory.high as found is put back on its first "
                              "event)")
        self._usage_check(rule, usage, "when arming", time.monotonic(), rearm=False)

    def _usage_tripped(self, rule: Rule, event: MemoryEventsChanged) -> None:
        """A ``high`` event on a domain with a usage tripwire: release it at once, then
        compare the usage with the level (the event may be a descendant's own memory.high)."""
        wire = self._usage_wires[rule.name]
        if wire.release():
            self._counts["tripwire_trips"] += 1
        try:
            usage = if_supported(self.hierarchy.cgroup(rule.domain).memory_current)
        except CgoomError as exc:
            log.warning("cgoom handler: %s: %s", rule.name, exc)
            return
        self._usage_check(rule, usage, f"tripwire on {rule.domain}", event.time, rearm=True)

    def _usage_check(self, rule: Rule, usage: int | None, source: str, notified: float, *,
                     rearm: bool) -> None:
        wire = self._usage_wires[rule.name]
        trigger = None
        if usage is not None and wire.level is not None and usage >= wire.level:
            trigger = (f"usage {format_size(usage)} >= {rule.usage_above:.0%} of memory.max "
                       f"({format_size(wire.level)}, {source})")
        self._fire_or_rearm(rule, trigger, notified, rearm=rearm)

    def _fire_or_rearm(self, rule: Rule, trigger: str | None, notified: float, *,
                       rearm: bool) -> None:
        """After a tripwire's check: fire the rule when ``trigger`` says why, else re-arm
        (``rearm``). Resting after an incident, it looks again when the rest ends; an
        incident in flight on the domain re-arms when it ends."""
        if trigger is not None:
            if not self._signal(rule, trigger, notified) and rule.domain not in self._busy:
                rest = self._states[rule.name].rest_until - time.monotonic()
                self._schedule_arm(rule, max(rest, 0.01))
        elif rearm and rule.domain not in self._busy:
            self._schedule_arm(rule)

    async def _arm_machine(self, rule: Rule, *, announce: bool = False) -> None:
        """(Re-)arm a machine rule's tripwires for the headroom now."""
        wires = self._tripwires[rule.name]
        children = self._children(rule)
        info, problems = await self._snapshotter.start().run(lambda: wires.arm(children))
        for problem in problems:
            log.warning("cgoom handler: %s: %s", rule.name, problem)
        if announce:
            self.setup.append(
                f"{rule.name}: memory.high tripwires on {len(wires.armed)} of "
                f"{len(children)} child(ren) of {rule.domain}, sharing the headroom above "
                f"{rule.available_below:.0%} of MemTotal "
                f"({format_size(max(info.available - wires.reserve_bytes(info), 0))} now)"
                + "".join(f"; {p}" for p in problems))
        self._machine_check(rule, info, "when arming", time.monotonic(), rearm=False)

    def _schedule_arm(self, rule: Rule, delay: float = 0.0) -> None:
        """Re-arm soon (coalesced): now, or when the rule's rest ends. A trip while a re-arm
        runs asks for another after it (that one may have read usage before the trip)."""
        if self._closed:
            return
        if rule.name in self._arming:
            self._arm_again.add(rule.name)
            return
        loop = asyncio.get_running_loop()
        if delay > 0:
            if rule.name not in self._timers:
                self._timers[rule.name] = loop.call_later(delay, self._rearm_now, rule)
            return
        self._rearm_now(rule)

    def _rearm_now(self, rule: Rule) -> None:
        self._timers.pop(rule.name, None)
        if self._closed:
            return
        if rule.name in self._arming:
            self._arm_again.add(rule.name)
            return
        self._arming.add(rule.name)

        async def rearm() -> None:
            try:
                await self._arm(rule)
            except Exception:
                log.exception("cgoom handler: re-arming the tripwires of %r failed", rule.name)
            finally:
                self._arming.discard(rule.name)
                if rule.name in self._arm_again:
                    self._arm_again.discard(rule.name)
                    self._rearm_now(rule)

        task = asyncio.get_running_loop().create_task(rearm())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _tripped(self, rule: Rule, event: MemoryEventsChanged) -> None:
        """A ``high`` event on a child of a machine rule's domain: re-check MemAvailable,
        then move that tripwire up (memory plentiful) or release it (short) at once; both
        raise memory.high, which never reclaims: direct writes, 0.6-0.8 ms measured."""
        wires = self._tripwires[rule.name]
        if event.cgroup in wires.armed:
            self._counts["tripwire_trips"] += 1
            log.debug("cgoom handler: %s: tripwire on %s fired", rule.name, event.cgroup)
        try:
            info = read_meminfo(self.hierarchy)
        except (OSError, CgoomError) as exc:
            wires.release(event.cgroup)
            log.error("cgoom handler: %s: cannot read the machine's memory: %s", rule.name, exc)
            return
        if info.available < wires.reserve_bytes(info) or not wires.step(event.cgroup, info):
            wires.release(event.cgroup)
        self._machine_check(rule, info, f"tripwire on {event.cgroup}", event.time, rearm=True)

    def _machine_check(self, rule: Rule, info: MemInfo, source: str, notified: float, *,
                       rearm: bool) -> None:
        trigger = None
        if info.available < self._tripwires[rule.name].reserve_bytes(info):
            trigger = (f"MemAvailable {format_size(info.available)} < "
                       f"{rule.available_below:.0%} of MemTotal {format_size(info.total)} "
                       f"({source})")
        self._fire_or_rearm(rule, trigger, notified, rearm=rearm)
        if (rule.poll_below is not None and info.available < rule.poll_below * info.total
                and rule.name not in self._polling and not self._closed):
            task = asyncio.get_running_loop().create_task(self._poll(rule))
            self._polling[rule.name] = task
            task.add_done_callback(lambda _t: self._polling.pop(rule.name, None))

    async def _poll(self, rule: Rule) -> None:
        """Poll MemAvailable while it is below ``poll_below`` (polling, by the rule's
        choice; earlyoom's adaptive interval), firing the rule below the reserve."""
        assert rule.poll_below is not None
        wires = self._tripwires[rule.name]
        while not self._closed:
            try:
                info = read_meminfo(self.hierarchy)
            except (OSError, CgoomError) as exc:
                log.error("cgoom handler: %s: polling stopped: %s", rule.name, exc)
                return
            self._counts["polls"] += 1
            if info.available >= rule.poll_below * info.total:
                return
            reserve = wires.reserve_bytes(info)
            if info.available < reserve:
                self._signal(rule, f"MemAvailable {format_size(info.available)} < "
                             f"{rule.available_below:.0%} of MemTotal "
                             f"{format_size(info.total)} (poll)", time.monotonic())
            await asyncio.sleep(min(POLL_MAX, max(POLL_MIN,
                                                  (info.available - reserve) / FILL_RATE)))

    # --- one incident ------------------------------------------------------------------

    async def _incident(self, rule: Rule, trigger: str, notified: float) -> None:
        state = self._states[rule.name]
        try:
            record: IncidentRecord | None = await self._handle(rule, trigger, notified)
        except Exception as exc:
            # Said, not swallowed: a record that the incident failed (the domain vanished
            # mid-snapshot, or a bug), so no decision is silently lost.
            log.exception("cgoom handler: incident of rule %r failed", rule.name)
            self._counts["errors"] += 1
            reason = f"the incident failed: {type(exc).__name__}: {exc}"
            record = IncidentRecord(
                id=f"{int(time.time())}-{next(self._ids)}", rule=rule.name,
                domain=rule.domain, trigger=trigger, folded=0, dry_run=rule.dry_run,
                decision=Decision("none", (), (reason,)), candidates=(),
                actions=(ActionResult("error", rule.domain, None, False, reason),),
                timings=Timings(notified=notified, snapshot_ms=0.0, decision_ms=0.0),
                memory_before=None, memory_after=None, started_at=time.time())
        folded = state.finished(time.monotonic())
        self._busy.pop(rule.domain, None)
        self._windows.pop(rule.domain, None)
        for other in self.rules:  # the domain's tripwires, whichever rule's incident it was
            if (other.machine or other.usage_above is not None) and other.domain == rule.domain:
                self._schedule_arm(other, other.cooldown if other.name == rule.name else 0.0)
        assert record is not None
        record = attrs.evolve(record, folded=folded)
        self._counts["incidents"] += 1
        self._counts["dry_runs"] += record.dry_run
        self._counts["kills"] += sum(a.ok and a.action.startswith(("kill", "terminate"))
                                     for a in record.actions)
        self._counts["fallbacks"] += record.decision.policy not in (
            self.policies[rule.name].name, "none")
        log.info("cgoom: %s", record.explain().splitlines()[0])
        self._deliver(record)

    def _on_proc_event(self, event: ProcEvent) -> None:
        for watch in self._kill_watches:
            child = watch.see(event)
            if child is not None:
                self._kill_straggler(watch, child)

    def _kill_straggler(self, watch: _KillWatch, pid: int) -> None:
        """A process forked during a whole kill: SIGKILL it too if it is (checked with its
        pidfd open) inside the victim's subtree and not ``oom_score_adj`` -1000. Before 6.14
        such a fork can escape ``cgroup.kill`` (b69bb476dee9), and ``populated 0`` would
        never come."""
        assert self._processes is not None
        try:
            handle = self._processes.open(pid)
        except OSError:
            return  # gone already
        try:
            now = process_now(self.hierarchy, pid)
            cgroup = watch.cgroup
            if cgroup is None or now is None or not inside(now[2], cgroup):
                return
            if oom_score_adj(self.hierarchy, pid) == -1000:
                return  # the child of a spared process: spared too, as the kernel would
            with contextlib.suppress(ProcessLookupError):
                self._processes.kill(handle)
                watch.raced.append(pid)
        finally:
            self._processes.close(handle)

    def _on_kernel_kill(self, kill: KernelOomKill) -> None:
        self._counts["kernel_kills"] += 1
        log.warning("cgoom: %s", kill)
        for domain, window in self._windows.items():
            if kill.task_memcg is None or inside(kill.task_memcg, domain):
                window.kills.append(kill)
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

    def _available(self) -> int | None:
        try:
            return read_meminfo(self.hierarchy).available
        except (OSError, CgoomError):
            return None

    # --- the workloads' first chance ----------------------------------------------------

    def register(self, cgroup: str, handler: FirstChanceHandler, *,
                 deadline: float | None = None,
                 levels: Iterable[str] = ("low", "critical", "oom"),
                 tell: Callable[[Notice], None] | None = None) -> Callable[[], None]:
        """Tell ``cgroup``'s workload about its domain's memory: ``await
        handler(notice)`` is called with a :class:`cgoom.Notice` (a level and a reclaim
        target in bytes) when the domain holding ``cgroup`` reaches one of ``levels``
        (``low``, ``critical``: each at most once per ``notice_interval``; the answer is
        not awaited past it). With a ``deadline``, the workload also has the first chance:
        when a rule with ``first_chance`` fires, it is told (level ``oom``) and has
        ``deadline`` seconds (at most the rule's ``first_chance``) to free memory before
        cgoom acts. Returns the function that unregisters it. Handlers run on the loop: one
        that blocks it blocks cgoom (keep them short, or await); one that hangs, raises or
        answers garbage is cut off at its deadline and recorded. ``tell``: a plain function
        that delivers the notices taking no answer at once, without a task (a server
        fanning out to many clients: :func:`cgoom.open_notice_server`)."""
        return self._first.register(cgroup, handler, deadline, levels, tell)

    def declare_killable(self, cgroup: str) -> Callable[[], None]:
        """Declare ``cgroup`` background-killable (its workload saved its state: Maemo's
        model) until the returned function is called: policies see it as they see the
        ``user.cgoom.killable`` xattr (killable-first picks it first; priority prefers it
        among equals). Nothing is written to the cgroup."""
        path = normalize_path(cgroup)
        # Bound to this cgroup, not to its name: one removed and made again under the same
        # path is another workload, which declared nothing.
        directory = self.hierarchy.cgroup(path).dir
        try:
            inode = self.hierarchy.fs.stat(directory).st_ino
        except OSError as exc:
            raise CgroupGone(f"cannot declare {path} background-killable: {exc.strerror}",
                             path=directory) from exc
        key = (path, inode)
        self._killable[key] += 1
        done = False

        def clear() -> None:
            nonlocal done
            if not done:
                done = True
                self._killable[key] -= 1
                if self._killable[key] <= 0:
                    del self._killable[key]

        return clear

    def _declared(self, snaps: dict[str, CgroupSnapshot]) -> dict[str, CgroupSnapshot]:
        if not self._killable:
            return snaps
        return {path: _with_declared(s, self._killable) for path, s in snaps.items()}

    def _domain_numbers(self, domain: str, high_below_max: float | None,
                        ) -> tuple[int | None, int | None, int]:
        """The domain's usage, its threshold and the reclaim target, read now."""
        cgroup = self.hierarchy.cgroup(domain)
        try:
            usage = if_supported(cgroup.memory_current)
            high, limit = if_supported(cgroup.memory_high), if_supported(cgroup.memory_max)
        except CgoomError:
            return None, None, 0
        threshold = threshold_of(high, limit, high_below_max)
        target = max(usage - threshold, 0) if usage is not None and threshold else 0
        return usage, threshold, target

    def _high_below_max(self, domain: str) -> float | None:
        return next((r.high_below_max for r in self.rules
                     if r.domain == domain and r.high_below_max is not None), None)

    def _announce(self, domain: str, level: str) -> None:
        """``domain`` reached ``level``: tell the registrations below it that asked for it
        (each within its rate limit), unless the level was already raised; then look for
        its recovery every second while it stays raised."""
        regs = self._first.inside(domain)
        if not regs:
            return
        state = self._levels.setdefault(domain, Levels())
        if not state.raise_to(level):
            return
        usage, threshold, target = self._domain_numbers(domain, self._high_below_max(domain))
        now = time.monotonic()
        self._fan_out((reg, Notice(domain, reg.cgroup, level,  # type: ignore[arg-type]
                                   usage, threshold, target, None))
                      for reg in regs if self._first.due(reg, level, now))
        self._settle_later(domain)

    def _inform(self, rule: Rule, everyone: list[Registration], regs: list[Registration],
                numbers: tuple[int | None, int | None, int]) -> None:
        """The ``oom`` notice (no answer) for the domain's registrations without a first
        chance, each within its rate limit."""
        usage, threshold, target = numbers
        now = time.monotonic()
        chance = set(map(id, regs))
        self._fan_out((reg, Notice(rule.domain, reg.cgroup, "oom", usage, threshold, target,
                                   None))
                      for reg in everyone
                      if id(reg) not in chance and self._first.due(reg, "oom", now))

    def _fan_out(self, told: Iterable[tuple[Registration, Notice]]) -> None:
        """Tell each of ``told``, :data:`FAN_OUT_CHUNK` at a time: between chunks the loop
        runs, so an OOM event that arrives during a fan-out to many registrations waits for
        one chunk, not for all (one user may hold 256 connections of 64 registrations each:
        16,384 notices, ~200 ms written in one go)."""
        items = iter(told)

        def chunk() -> None:
            for n, (reg, notice) in enumerate(items, 1):
                if self._closed:
                    return
                self._tell(reg, notice)
                if n == FAN_OUT_CHUNK:
                    asyncio.get_running_loop().call_soon(chunk)
                    return

        chunk()

    def _tell(self, reg: Registration, notice: Notice) -> None:
        """A notice that takes no answer: through ``reg.tell`` at once, or the handler
        run on its own, cut off after ``notice_interval``."""
        if reg.tell is not None:
            try:
                reg.tell(notice)
            except Exception:
                log.warning("cgoom handler: telling %s failed", reg.cgroup, exc_info=True)
            return
        try:
            task = asyncio.ensure_future(reg.handler(notice))
        except Exception:
            log.warning("cgoom handler: the notice handler for %s failed", reg.cgroup,
                        exc_info=True)
            return
        self._telling.add(task)
        timer = asyncio.get_running_loop().call_later(self._first.interval, task.cancel)

        def done(task: asyncio.Future[Answer | None]) -> None:
            self._telling.discard(task)
            timer.cancel()
            if not task.cancelled() and task.exception() is not None:
                log.warning("cgoom handler: the notice handler for %s raised %r", reg.cgroup,
                            task.exception())

        task.add_done_callback(done)

    def _settle_later(self, domain: str) -> None:
        if domain in self._settling or self._closed:
            return

        def check() -> None:
            self._settling.pop(domain, None)
            state = self._levels.get(domain)
            if state is None or state.level is None or self._closed:
                return
            if domain in self._busy:  # an incident is on it; look again later
                self._settle_later(domain)
                return
            usage, threshold, _ = self._domain_numbers(domain, self._high_below_max(domain))
            if state.settle(usage, threshold):
                log.info("cgoom handler: %s: memory came back (usage %s, below %s): level "
                         "cleared", domain, format_size(usage or 0),
                         format_size(threshold or 0))
            else:
                self._settle_later(domain)

        self._settling[domain] = asyncio.get_running_loop().call_later(SETTLE_EVERY, check)

    def _forget(self, task: asyncio.Future[Answer | None]) -> None:
        """An abandoned handler ended: whatever it raised is no one's concern now."""
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()

    async def _first_chance(self, rule: Rule, regs: list[Registration]) -> FirstChanceOutcome:
        """Tell ``regs``, then wait until the domain's usage is below the threshold (polled
        every 50 ms: a drop in usage raises no event), every handler has answered (then a
        moment for the kernel to count what they freed), or the last deadline passed."""
        loop = asyncio.get_running_loop()
        domain = self.hierarchy.cgroup(rule.domain)

        def usage_now() -> int | None:
            try:
                return if_supported(domain.memory_current)
            except CgoomError:
                return None

        try:
            high, limit = if_supported(domain.memory_high), if_supported(domain.memory_max)
        except CgoomError:
            high = limit = None
        threshold = threshold_of(high, limit, rule.high_below_max)
        before = usage_now()
        target = max(before - threshold, 0) if before is not None and threshold else 0
        assert rule.first_chance is not None
        started = loop.time()
        told: dict[int, FirstChance] = {}

        async def ask(reg: Registration, seconds: float) -> None:
            notice = Notice(rule.domain, reg.cgroup, "oom", before, threshold, target, seconds)
            asked = loop.time()
            try:
                task = asyncio.ensure_future(reg.handler(notice))
            except Exception as exc:  # not a coroutine function, or raised at once
                told[reg.key] = FirstChance(reg.cgroup, seconds, _said("error", exc), None, 0.0)
                return
            # Not wait_for: it waits for a cancelled handler to finish, and one that
            # swallows CancelledError would hold the action back.
            done, _ = await asyncio.wait({task}, timeout=seconds)
            ms = (loop.time() - asked) * 1000
            if not done:
                task.cancel()
                self._abandoned.add(task)
                task.add_done_callback(self._forget)
                told[reg.key] = FirstChance(reg.cgroup, seconds, "no answer", None, ms)
                return
            if task.cancelled() or task.exception() is not None:
                failure = (task.exception() if not task.cancelled()
                           else asyncio.CancelledError())
                said = str(failure) if isinstance(failure, Gone) else _said("error", failure)
                told[reg.key] = FirstChance(reg.cgroup, seconds, said, None, ms)
                return
            answer = task.result()
            answer = Answer() if answer is None else answer
            if not isinstance(answer, Answer) or answer.status not in ("done", "cannot"):
                told[reg.key] = FirstChance(reg.cgroup, seconds,
                                            f"garbage: {answer!r}"[:200], None, ms)
                return
            freed = answer.freed if isinstance(answer.freed, int) and not isinstance(
                answer.freed, bool) and answer.freed >= 0 else None
            told[reg.key] = FirstChance(reg.cgroup, seconds, answer.status, freed, ms)

        deadlines = {r.key: min(r.deadline or rule.first_chance, rule.first_chance)
                     for r in regs}
        asks = [loop.create_task(ask(r, deadlines[r.key])) for r in regs]
        end = started + max(deadlines.values())
        recovered, settled = False, False
        while True:
            usage = usage_now()
            if threshold is not None and usage is not None and usage <= threshold:
                recovered = True
                break
            if all(a.done() for a in asks):
                if settled:
                    break
                settled = True
                await asyncio.sleep(0.1)
                continue
            if loop.time() >= end:
                break
            await asyncio.sleep(min(0.05, max(end - loop.time(), 0.0)))
        for a in asks:  # each ends at its own deadline; these only wrap the handlers
            a.cancel()
        await asyncio.gather(*asks, return_exceptions=True)
        results = tuple(told.get(r.key, FirstChance(r.cgroup, deadlines[r.key], "no answer",
                                                    None, None)) for r in regs)
        return FirstChanceOutcome(results, threshold, before, usage_now(), recovered,
                                  (loop.time() - started) * 1000)

    async def _handle(self, rule: Rule, trigger: str, notified: float) -> IncidentRecord:
        assert self._watcher is not None
        started = time.monotonic()
        started_at = time.time()
        available_before = self._available()
        domain = self.hierarchy.cgroup(rule.domain)
        policy = self.policies[rule.name]
        chance = None
        everyone = [] if rule.dry_run else self._first.inside(rule.domain)
        regs = [r for r in everyone if r.deadline is not None] if rule.first_chance else []
        inform: Callable[[], None] | None = None
        if everyone:
            self._levels.setdefault(rule.domain, Levels()).raise_to("oom")
            self._settle_later(rule.domain)
            # Those without a first chance hear that cgoom acts (no answer), once the kill
            # syscall is made (below): 1,000 socket clients told here, before the snapshot,
            # added ~10 ms to notification -> kill on the fake tree.
            inform = functools.partial(self._inform, rule, everyone, regs,
                                       self._domain_numbers(rule.domain, rule.high_below_max))
        if inform is not None and regs:  # the first chance waits: they may hear it meanwhile
            asyncio.get_running_loop().call_soon(inform)
            inform = None
        if regs:
            chance = await self._first_chance(rule, regs)
            if chance.recovered:
                ms = 1000.0
                return IncidentRecord(
                    id=f"{int(started_at)}-{next(self._ids)}", rule=rule.name,
                    domain=rule.domain, trigger=trigger, folded=0, dry_run=False,
                    decision=Decision("none", (), ("the workloads' first chance was enough: "
                                                   "nothing was killed",)),
                    candidates=(), actions=(),
                    timings=Timings(notified=notified, started_ms=(started - notified) * ms,
                                    snapshot_ms=(time.monotonic() - notified) * ms,
                                    decision_ms=0.0),
                    memory_before=chance.usage_before, memory_after=chance.usage_after,
                    started_at=started_at, available_before=available_before,
                    available_after=self._available(), first_chance=chance)
        paths = sorted(self._paths[rule.domain])
        incident = Incident.create(rule.domain, trigger, own_cgroup=self.own_cgroup)
        descended = False
        if len(paths) <= INLINE_SNAPSHOT_CGROUPS:
            # A few file reads cost less than the hop to the snapshot thread and back
            # (tens of ms in a loaded VM: 105 ms measured for 4 cgroups).
            snaps = self._declared(self._snapshotter.snapshot(
                rule.domain, fields=policy_fields(policy), paths=paths))
            snapshot_done = time.monotonic()
            decision = await adecide(policy, incident, snaps, budget=rule.budget)
        elif isinstance(policy, PriorityPolicy):
            snaps, decision, snapshot_done, descended = await self._descend(
                rule, policy, paths, incident)
        else:
            snaps, decision, snapshot_done = await self._read_all(rule, policy, paths, incident)
        decided = time.monotonic()
        # The domain's usage as the snapshot just read it (no second read of the file).
        before = snaps[rule.domain].usage if rule.domain in snaps else None
        if inform is not None:
            # At the action's first wait: right after the kill syscall, or after the record
            # for a dry run or a notify-only rule.
            asyncio.get_running_loop().call_soon(inform)
        actions: list[ActionResult] = []
        kill_at = confirmed_at = None
        first = decision.first
        if rule.dry_run or rule.action == "notify":
            actions.append(ActionResult(
                "dry-run" if rule.dry_run else "notify",
                first.cgroup if first else rule.domain, first.pid if first else None, False,
                "dry run: nothing was killed" if rule.dry_run
                else "notify only (the rule's action): nothing was done"))
        else:
            act = True
            if rule.action == "raise-limit":
                raised = await self._raise(rule)
                actions.append(raised)
                act = not raised.ok  # no room: kill instead
            acted = 0
            queue = list(decision.victims) if act else []
            tried: set[tuple[str, int | None]] = set()
            while queue:
                victim = queue.pop(0)
                if acted >= rule.max_victims:
                    break
                tried.add((victim.cgroup, victim.pid))
                result, at, gone = await self._act(rule, victim)
                actions.append(result)
                if result.ok:
                    acted += 1
                    kill_at = at if kill_at is None else kill_at
                    confirmed_at = gone
                    if rule.action in ("freeze", "reclaim") or not self._short(rule, before):
                        break
                if not queue and descended and acted < rule.max_victims:
                    # The descent vouches for its first victim only: the rest of the list
                    # comes from a snapshot of the whole domain.
                    descended = False
                    snaps, decision, _ = await self._read_all(rule, policy, paths, incident)
                    queue = [v for v in decision.victims if (v.cgroup, v.pid) not in tried]
        after = if_supported(domain.memory_current)
        window = self._windows.get(rule.domain, _Window())
        ms = 1000.0
        timings = Timings(
            notified=notified, started_ms=(started - notified) * ms,
            snapshot_ms=(snapshot_done - notified) * ms,
            decision_ms=(decided - snapshot_done) * ms,
            kill_ms=None if kill_at is None else (kill_at - notified) * ms,
            confirmed_ms=None if confirmed_at is None else (confirmed_at - notified) * ms)
        return IncidentRecord(
            id=f"{int(started_at)}-{next(self._ids)}", rule=rule.name, domain=rule.domain,
            trigger=trigger, folded=0, dry_run=rule.dry_run, decision=decision,
            candidates=tuple(snaps.values()), actions=tuple(actions), timings=timings,
            memory_before=before, memory_after=after, started_at=started_at,
            available_before=available_before, available_after=self._available(),
            kernel_kills=tuple(window.kills), kernel_oom_kills=window.oom_kill,
            first_chance=chance)

    async def _read_all(self, rule: Rule, policy: Policy, paths: list[str], incident: Incident,
                        ) -> tuple[dict[str, CgroupSnapshot], Decision, float]:
        """A snapshot of the whole domain in the snapshotter's thread, the decision, and
        when the snapshot was done."""
        snaps = self._declared(await self._snapshotter.asnapshot(
            rule.domain, fields=policy_fields(policy), paths=paths))
        done = time.monotonic()
        return snaps, await adecide(policy, incident, snaps, budget=rule.budget), done

    async def _descend(self, rule: Rule, policy: PriorityPolicy, paths: list[str],
                       incident: Incident,
                       ) -> tuple[dict[str, CgroupSnapshot], Decision, float, bool]:
        """The priority policy's decision on a snapshot read level by level
        (:meth:`Snapshotter.descend`): only the children of the cgroups it goes into. Its
        first victim is kept if it is the unit the descent stopped at (then it is the full
        ranking's first: every sibling on the way was read and compared as the policy
        compares them); otherwise, or when nothing was found, the whole domain is read.
        Returns the snapshot, the decision, when the snapshot was done and whether it all
        came from the descent."""
        # A copy: the walk lets the loop run between slices, and a declaration arriving
        # meanwhile must not make two levels of one descent disagree.
        declared = frozenset(self._killable)
        snaps, stop = await self._snapshotter.adescend(
            rule.domain, policy.descend, paths=paths, fields=policy_fields(policy),
            adjust=functools.partial(_with_declared, declared=declared) if declared else None)
        done = time.monotonic()
        if stop is not None:
            decision = await adecide(policy, incident, snaps, budget=rule.budget)
            first = decision.first
            if first is not None and first.cgroup == stop and decision.policy == policy.name:
                return snaps, attrs.evolve(decision, victims=(first,), notes=(
                    *decision.notes, f"read level by level: {len(snaps)} of {len(paths)} "
                    "cgroups; a next victim, if needed, from a snapshot of the whole "
                    "domain")), done, True
        why = ("found nothing" if stop is None else
               f"stopped at {stop}, not where the full ranking starts")
        snaps, decision, done = await self._read_all(rule, policy, paths, incident)
        return snaps, attrs.evolve(decision, notes=(
            *decision.notes, f"the descent {why}: the whole domain was read")), done, False

    async def rank(self, name: str) -> Decision:
        """What rule ``name``'s policy would decide now, acting on nothing: a snapshot of
        its domain in the snapshotter's thread and a guarded decision (the stall
        watchdog's ranking; also an operator's "whom now?")."""
        rule = self._states[name].rule
        policy = self.policies[name]
        snaps = await self._snapshotter.asnapshot(
            rule.domain, fields=policy_fields(policy), paths=sorted(self._paths[rule.domain]))
        snaps = self._declared(snaps)
        incident = Incident.create(rule.domain, "a ranking: nothing is acted on",
                                   own_cgroup=self.own_cgroup)
        return await adecide(policy, incident, snaps, budget=rule.budget)

    def stall_check(self, name: str) -> str | None:
        """From any thread, the loop being stalled: why rule ``name``'s trigger holds now,
        read from the kernel's files, or ``None`` (see cgoom._engine._stall). memory.events: the
        counters of ``on`` rose past what the loop last handled by ``threshold``; machine:
        MemAvailable below the reserve; usage: usage at the level. PSI is not judged."""
        rule = self._states[name].rule
        cgroup = self.hierarchy.cgroup(rule.domain)
        try:
            if rule.on and self._watcher is not None:
                last = self._watcher.last(rule.domain, "memory.events")
                now = cgroup.memory_events()
                if isinstance(last, MemoryEvents):
                    old, new = counters(last), counters(now)
                    rise = {k: new.get(k, 0) - old.get(k, 0) for k in sorted(rule.on)}
                    if sum(max(v, 0) for v in rise.values()) >= rule.threshold:
                        return (f"{rule.domain} memory.events rose unhandled: "
                                + ", ".join(f"{k} +{v}" for k, v in rise.items() if v > 0))
            if rule.machine:
                info = read_meminfo(self.hierarchy)
                reserve = self._tripwires[name].reserve_bytes(info)
                if info.available < reserve:
                    return (f"MemAvailable {format_size(info.available)} < "
                            f"{rule.available_below:.0%} of MemTotal {format_size(info.total)}")
            if rule.usage_above is not None:
                level = self._usage_wires[name].level
                usage = cgroup.memory_current()
                if level is not None and usage >= level:
                    return (f"usage {format_size(usage)} >= {rule.usage_above:.0%} of "
                            f"memory.max ({format_size(level)})")
        except (CgoomError, OSError) as exc:
            log.warning("cgoom stall watchdog: %s: %s", name, exc)
        return None

    def _short(self, rule: Rule, before: int | None) -> bool:
        """After a victim is gone: is memory still short, so the next victim is needed? A
        machine rule looks at MemAvailable; a rule with ``min_freed`` at what was freed."""
        if rule.machine:
            wires = self._tripwires[rule.name]
            try:
                info = read_meminfo(self.hierarchy)
            except (OSError, CgoomError):
                return False
            return info.available < wires.reserve_bytes(info)
        if rule.min_freed is None or before is None:
            return False
        now = if_supported(self.hierarchy.cgroup(rule.domain).memory_current)
        return now is not None and before - now < rule.min_freed

    # --- actions -----------------------------------------------------------------------

    async def _act(self, rule: Rule, victim: Victim,
                   ) -> tuple[ActionResult, float | None, float | None]:
        """Carry out the rule's action on ``victim``: (result, action time, gone time)."""
        if rule.action == "freeze":
            result = freeze_cgroup(self.hierarchy, victim)
            if result.ok:
                self._frozen.append(victim.cgroup)
            return result, time.monotonic() if result.ok else None, None
        if rule.action == "reclaim":
            assert rule.reclaim is not None
            amount = rule.reclaim
            result = await self._snapshotter.start().run(
                lambda: reclaim_cgroup(self.hierarchy, victim, amount))
            return result, time.monotonic() if result.ok else None, None
        if rule.action == "graceful":
            return await self._graceful(rule, victim)
        return await self._kill(rule, victim)

    async def _graceful(self, rule: Rule, victim: Victim,
                        ) -> tuple[ActionResult, float | None, float | None]:
        """SIGTERM, up to ``rule.grace`` seconds for it to end, then SIGKILL."""
        assert self._processes is not None
        loop = asyncio.get_running_loop()
        if victim.whole:
            gone: asyncio.Future[float] = loop.create_future()
            self._gone.setdefault(victim.cgroup, []).append(gone)
            result = terminate_cgroup(self.hierarchy, victim, self._processes)
            sent_at = time.monotonic()
            if result.ok:
                with contextlib.suppress(TimeoutError):
                    ended = await asyncio.wait_for(asyncio.shield(gone), rule.grace)
                    return attrs.evolve(result, detail=result.detail + "; populated 0 within "
                                        "the grace period",
                                        confirmed_ms=(ended - sent_at) * 1000), sent_at, ended
            waiting = self._gone.get(victim.cgroup, [])
            if gone in waiting:
                waiting.remove(gone)
            if not result.ok and "not signalled" in result.detail:
                return result, None, None
            killed, at, ended_at = await self._kill(rule, victim)
            return attrs.evolve(killed, detail=f"{result.detail}; still there after "
                                f"{rule.grace} s: {killed.detail}",
                                graced_ms=_since(sent_at, at) if result.ok else None,
                                ), at, ended_at
        result, handle = terminate_process(self.hierarchy, victim, self._processes)
        if handle is None:
            return result, None, None
        sent_at = time.monotonic()
        exited = await self._await_exits([handle], rule.grace)
        if exited is not None:
            return attrs.evolve(result, detail=result.detail + "; exited within the grace "
                                "period", confirmed_ms=(exited - sent_at) * 1000), sent_at, exited
        killed, at, ended_at = await self._kill(rule, victim)
        return attrs.evolve(killed, detail=f"{result.detail}; still there after {rule.grace} "
                            f"s: {killed.detail}", graced_ms=_since(sent_at, at)), at, ended_at

    async def _raise(self, rule: Rule) -> ActionResult:
        """Google's "overlimit": when the machine has room, raise the domain's memory.max
        (and memory.high, if set) by ``rule.raise_by`` and mark it ``user.cgoom.overlimit``
        so it ranks lower where it competes; put both back once it fits again."""
        assert rule.raise_by is not None
        by = rule.raise_by
        domain = self.hierarchy.cgroup(rule.domain)
        try:
            info = read_meminfo(self.hierarchy)
            limit, high = domain.memory_max(), domain.memory_high()
        except (OSError, CgoomError) as exc:
            return ActionResult("raise-limit", rule.domain, None, False, f"not raised: {exc}")
        reserve = int(info.total * (rule.available_below or 0.1))
        if limit == "max":
            return ActionResult("raise-limit", rule.domain, None, False,
                                "not raised: it has no memory.max")
        if info.available - by < reserve:
            return ActionResult("raise-limit", rule.domain, None, False,
                                f"not raised: the machine has no room (MemAvailable "
                                f"{format_size(info.available)}, reserve {format_size(reserve)})")
        mark = None
        with contextlib.suppress(CgoomError):
            mark = domain.get_xattr(OVERLIMIT_XATTR)
        started = time.perf_counter()

        def write() -> str:
            domain.set_memory_max(limit + by)
            if high != "max":
                domain.set_memory_high(high + by)
            try:
                domain.set_xattr(OVERLIMIT_XATTR, "1")
            except CgoomError as exc:
                return f"; not marked overlimit: {exc}"
            return f"; marked {OVERLIMIT_XATTR}"

        try:
            note = await self._snapshotter.start().run(write)
        except CgoomError as exc:
            return ActionResult("raise-limit", rule.domain, None, False, f"not raised: {exc}")
        if rule.domain not in self._raised:
            self._raised[rule.domain] = (limit, high, mark)
        self._schedule_lower(rule)
        return ActionResult("raise-limit", rule.domain, None, True,
                            f"memory.max raised {format_size(limit)} -> "
                            f"{format_size(limit + by)}{note}; put back once usage fits",
                            syscall_ms=(time.perf_counter() - started) * 1000)

    def _schedule_lower(self, rule: Rule) -> None:
        """Look again after the rule's cooldown (a timer while a limit is raised; nothing
        runs otherwise)."""
        key = "lower:" + rule.domain
        if key in self._timers or self._closed:
            return

        def again(_task: object) -> None:
            if rule.domain in self._raised:
                self._schedule_lower(rule)

        def due() -> None:
            self._timers.pop(key, None)
            task = asyncio.get_running_loop().create_task(self._lower(rule.domain))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(again)

        self._timers[key] = asyncio.get_running_loop().call_later(max(rule.cooldown, 1.0), due)

    async def _lower(self, path: str, *, final: bool = False) -> None:
        """Put a raised limit back if the cgroup's usage fits under it again (never below
        usage: that would reclaim at once or call the kernel's OOM killer)."""
        limit, high, mark = self._raised[path]
        cgroup = self.hierarchy.cgroup(path)
        usage = if_supported(cgroup.memory_current)
        ceiling = limit if isinstance(high, str) else high
        if usage is not None and usage >= ceiling:
            if final:
                log.warning("cgoom handler: memory.max of %s stays raised: usage %s is above "
                            "the original %s", path, usage, ceiling)
            return

        def write() -> None:
            cgroup.set_memory_max(limit)
            cgroup.set_memory_high(high)
            cgroup.set_xattr(OVERLIMIT_XATTR, mark)

        try:
            await self._snapshotter.start().run(write)
        except CgoomError as exc:
            log.warning("cgoom handler: could not put back the limits of %s: %s", path, exc)
        del self._raised[path]

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

    async def _kill(self, rule: Rule, victim: Victim,
                    ) -> tuple[ActionResult, float | None, float | None]:
        """Kill ``victim`` and wait for it to be gone: (result, kill time, gone time), with
        what the process connector saw of it in the detail."""
        held: list[_KillWatch] = []
        result, at, gone = await self._kill_and_wait(rule, victim, now_ns(), held)
        watch = held[0] if held else None
        if watch is None:
            return result, at, gone
        try:
            if gone is not None and not watch.all_exited.done():
                # populated 0 can be told before the last exit event is sent (cgroup_exit
                # comes before proc_exit_connector in do_exit): a moment for it.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(watch.all_exited), 0.05)
        finally:
            self._kill_watches.remove(watch)
        return attrs.evolve(result, detail=result.detail + watch.summary(),
                            stalls=tuple(s for _, s in watch.stalls.values())), at, gone

    def _watch(self, result: ActionResult, since: int, whole: bool,
               held: list[_KillWatch]) -> None:
        if self._connector is not None and result.ok and result.pids:
            watch = _KillWatch(result.pids, since, result.cgroup if whole else None,
                               asyncio.get_running_loop())
            self._kill_watches.append(watch)
            held.append(watch)

    async def _kill_and_wait(self, rule: Rule, victim: Victim, since: int,
                             held: list[_KillWatch],
                             ) -> tuple[ActionResult, float | None, float | None]:
        loop = asyncio.get_running_loop()
        if victim.whole:
            gone: asyncio.Future[float] = loop.create_future()
            self._gone.setdefault(victim.cgroup, []).append(gone)
            result, handles = kill_cgroup(self.hierarchy, victim, self._processes)
            kill_at = time.monotonic()
            self._watch(result, since, True, held)
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
        self._watch(result, since, False, held)
        if handle is None:
            return result, (kill_at if result.ok else None), None
        gone_at = await self._await_exits([handle], rule.confirm_timeout)
        if gone_at is None:
            return attrs.evolve(result, detail=result.detail + f"; not gone after "
                                f"{rule.confirm_timeout} s"), kill_at, None
        return attrs.evolve(result, detail=result.detail + "; exited (pidfd readable)",
                            confirmed_ms=(gone_at - kill_at) * 1000), kill_at, gone_at


def _with_declared(s: CgroupSnapshot, declared: Collection[tuple[str, int | None]],
                   ) -> CgroupSnapshot:
    """``s`` marked background-killable if its cgroup (path and inode) was declared so."""
    if not s.killable and (s.path, s.inode) in declared:
        return attrs.evolve(s, killable=True)
    return s


def _since(start: float, end: float | None) -> float | None:
    return None if end is None else (end - start) * 1000


def _said(what: str, exc: BaseException | None) -> str:
    return f"{what}: {type(exc).__name__}: {exc}"[:200]


def _matches(path: str, patterns: Iterable[str]) -> bool:
    rel = path.lstrip("/")
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)


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
                 kmsg: str | None = "", proc_events: bool | None = None,
                 priorities: Iterable[tuple[str, int]] = (),
                 notice_interval: float = 10.0) -> Handler:
    """A :class:`Handler` for ``rules``, to use as
    ``async with cgoom.open_handler(h, cgoom.Rule("batch", "workload.slice")) as handler:``.
    """
    return Handler(hierarchy if hierarchy is not None else Hierarchy.discover(), rules,
                   own_cgroup=own_cgroup, processes=processes, history=history,
                   restore=restore, kmsg=kmsg, proc_events=proc_events,
                   priorities=priorities, notice_interval=notice_interval)
