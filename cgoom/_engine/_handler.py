"""``open_handler``: the engine. Orchestration only: the handler's life cycle, delivery of
its records, dispatch of the watcher's events to the rules, and one incident from trigger to
record. The work is its parts':

- ``_setup``: the rules' set-up (early triggers, memory.oom.group) and its undo log;
- ``_arming``: the machine and usage tripwires, re-arming, the opt-in polling;
- ``_notifier``: registrations, levels, declarations, notices, the first chance;
- ``_deciding``: the snapshot and the guarded decision;
- ``_executor``: the actions, their confirmation, the process connector.

Everything that can be started before an incident is: the watcher, the snapshot, policy and
writer threads. At incident time the loop does no blocking I/O except the kill itself (a
``cgroup.kill`` write returns in about a millisecond: DESIGN.md principle 3); the engine's
writes that may reclaim (memory.high, memory.reclaim, raised limits) go through its own writer
thread, so a reclaim never delays a snapshot queued behind it. Every time is read from one
:class:`~cgoom._kernel._clock.Clock`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType

import attrs

from .._decide._candidates import CgroupSnapshot, Incident
from .._decide._plugins import load_policy, start_policy_worker, validate_policy
from .._decide._policy import Decision, Policy
from .._decide._snapshot import TENANT_CGROUPS, Snapshotter, UsageHistory, check_patterns
from .._errors import CgoomError, InvalidValue
from .._kernel._cgroup import if_supported
from .._kernel._clock import SYSTEM, Clock
from .._kernel._fs import OsFS
from .._kernel._hierarchy import Hierarchy
from .._kernel._kmsg import KernelOomKill, KmsgReader
from .._kernel._linux import kernel_release
from .._kernel._meminfo import read_meminfo
from .._kernel._paths import inside, parent_path
from .._kernel._worker import Worker
from .._watch._events import (
    CgroupCreated,
    CgroupRemoved,
    CgroupStateChanged,
    ControllersChanged,
    Event,
    MemoryEventsChanged,
    PressureSustained,
    PressureTriggered,
    PressureTriggerEnded,
    Resynchronized,
    SustainedPressure,
)
from .._watch._watcher import Watcher
from . import _trigger
from ._actions import ActionResult, Pidfds, ProcessControl
from ._arming import Arming
from ._deciding import Decided, Deciding
from ._executor import FORK_SAFE_KILL, Executor
from ._firstchance import FirstChanceHandler, Notice, level_of
from ._freed import FreedSampler
from ._incident import KILLING, IncidentRecord, RecordBuilder
from ._notifier import Notifier
from ._rules import Rule, RuleState, restart_needed, unique_names
from ._setup import SetUp, matches
from ._shadow import Shadow, ShadowVerdict
from ._shortage import Shortage
from ._trigger import Trigger
from ._undo import UndoLog

log = logging.getLogger("cgoom")

#: How many times one incident decides afresh after its victim slipped away: a tenant that
#: keeps moving its hog between its own cgroups cannot hold the engine in a loop.
FRESH_DECISIONS = 3

#: What a handler delivers: its own incidents, and the kernel's OOM kills (from /dev/kmsg).
Record = IncidentRecord | KernelOomKill | ShadowVerdict
RecordListener = Callable[[Record], object]


@attrs.frozen
class HandlerStatistics:
    """A snapshot of a handler's work, for metrics."""

    incidents: int
    kills: int
    #: OOM kills by the kernel itself, seen in /dev/kmsg.
    kernel_kills: int
    dry_runs: int
    #: Dry runs' decisions that a kernel OOM kill in their domain then answered
    #: (:class:`~cgoom.ShadowVerdict`), and those of them where the kernel killed the same.
    shadow_verdicts: int
    shadow_agreed: int
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


class _Window:
    """What the kernel did in one domain while an incident ran there."""

    def __init__(self) -> None:
        self.kills: list[KernelOomKill] = []
        self.oom_kill = 0


def _acts_on_processes(rules: Iterable[Rule]) -> bool:
    return not all(r.dry_run or r.action in ("notify", "freeze", "reclaim") for r in rules)


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
    filesystem of a kernel before 6.14, where such a fork can escape ``cgroup.kill``; it
    needs root; ``handler.setup`` says when it is not used, and why).
    ``priorities``: ``(pattern, priority)`` pairs for cgroups without a priority xattr
    (:class:`cgoom.Snapshotter`). ``notice_interval``: a registration hears the same level
    at most once in this many seconds (:meth:`register`). ``clock``: every time the engine
    reads (:class:`cgoom.testing.ManualClock` drives it in tests). ``policies``: rule name
    -> the policy already loaded for it (``cgoom.load_config`` loads each once), else the
    handler loads the rule's. ``max_tenant_cgroups``: the most cgroups a decision reads
    below a delegated cgroup; one with more stands for its whole subtree
    (:class:`cgoom.Snapshotter`, docs/policies.md). ``state``: the durable undo log's file
    (``None``: in memory only): every change is noted there before it is made, and a
    handler that starts puts back what a previous one left (killed before it could);
    ``cgoom restore`` does the same without starting one (docs/configuration.md).
    """

    def __init__(self, hierarchy: Hierarchy, rules: Iterable[Rule], *,
                 own_cgroup: str | None = None, processes: ProcessControl | None = None,
                 history: UsageHistory | None = None, max_queued: int = 1000,
                 restore: bool = True, kmsg: str | None = "",
                 proc_events: bool | None = None,
                 priorities: Iterable[tuple[str, int]] = (),
                 notice_interval: float = 10.0, clock: Clock = SYSTEM,
                 policies: Mapping[str, Policy] | None = None,
                 max_tenant_cgroups: int = TENANT_CGROUPS, state: str | None = None) -> None:
        self.hierarchy = hierarchy
        self.rules = tuple(rules)
        if not self.rules:
            raise InvalidValue("a handler needs at least one rule", value="()")
        unique_names(self.rules)
        given = policies or {}
        self.policies: dict[str, Policy] = {r.name: given.get(r.name) or self._policy(r)
                                            for r in self.rules}
        if own_cgroup is None:
            try:
                own_cgroup = hierarchy.own_cgroup().path
            except CgoomError as exc:
                raise CgoomError(f"cannot tell cgoom's own cgroup ({exc}); pass own_cgroup= "
                                 "so it is never chosen") from exc
        self.own_cgroup = own_cgroup
        self.restore = restore
        self.clock = clock
        self._states = {r.name: RuleState(r) for r in self.rules}
        self._snapshotter = Snapshotter(hierarchy, priorities=tuple(priorities), history=history,
                                        max_tenant_cgroups=max_tenant_cgroups)
        #: The engine's own thread for writes that may block in the kernel (reclaim).
        self._writer = Worker("cgoom-writer", start=False)
        self._watcher: Watcher | None = None
        self._queue: asyncio.Queue[Record | None] = asyncio.Queue(max_queued)
        self._listeners: list[RecordListener] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._paths: dict[str, set[str]] = {r.domain: set() for r in self.rules}
        #: The rule whose incident is in flight, per domain: one at a time per domain.
        self._busy: dict[str, str] = {}
        self._windows: dict[str, _Window] = {}
        if kmsg == "":
            kmsg = "/dev/kmsg" if type(hierarchy.fs) is OsFS else None
        self._kmsg = None if kmsg is None else KmsgReader(kmsg, self._on_kernel_kill)
        self._proc_events_why: str | None = None
        if proc_events is None:
            proc_events = type(hierarchy.fs) is OsFS and kernel_release() < FORK_SAFE_KILL
            if type(hierarchy.fs) is OsFS and not proc_events:
                self._proc_events_why = (
                    "the process connector is not followed (proc_events = true to follow "
                    "it): from Linux 6.14 no fork escapes cgroup.kill (b69bb476dee9), and "
                    "kills are confirmed by populated 0 and pidfds; it would add the exit "
                    "signals to the records and pyroute2 (~7-18 MiB) to this process")
        self._shadow = Shadow()
        self._counts = {"incidents": 0, "kills": 0, "kernel_kills": 0, "dry_runs": 0,
                        "shadow_verdicts": 0, "shadow_agreed": 0,
                        "fallbacks": 0, "errors": 0}
        self._closed = False
        busy = self._busy.__contains__
        #: Every change to put back, noted before it is made (durably with ``state``).
        self._undo = UndoLog(hierarchy, state)
        self._setup = SetUp(hierarchy, self._writer, self._undo)
        self._arming = Arming(hierarchy, self.rules, writer=self._writer, clock=clock,
                              fire=self._signal, busy=busy,
                              rest_until=lambda r: self._states[r.name].rest_until,
                              paths=lambda d: self._paths.get(d, ()),
                              noted=self._undo.before)
        self._notifier = Notifier(hierarchy, clock=clock, interval=notice_interval, busy=busy,
                                  high_below_max=self._high_below_max)
        self._executor = Executor(hierarchy, writer=self._writer, clock=clock,
                                  processes=processes, proc_events=proc_events,
                                  undo=self._undo)
        self._deciding = Deciding(self._snapshotter, clock, mark=self._notifier.mark,
                                  declared=self._notifier.declared, own_cgroup=own_cgroup)
        self._shortage = Shortage(hierarchy, self._arming, self._notifier)

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

    @property
    def setup(self) -> list[str]:
        """What the set-up did, one sentence each (and what it could not do)."""
        return self._setup.lines

    def rule(self, name: str) -> Rule:
        """The current version of rule ``name``."""
        return self._states[name].rule

    # --- reconfiguration -----------------------------------------------------------------

    def reconfigure(self, rules: Iterable[Rule], *,
                    priorities: Iterable[tuple[str, int]] | None = None,
                    policies: Mapping[str, Policy] | None = None) -> list[str]:
        """Apply new versions of the rules (and new ``priorities``, when given) to the
        running handler, keeping its state: cooldowns, debounce counts, the growth history
        and any incident in flight (which finishes under the version it started with; the
        next incident uses the new one). Returns what changed, one sentence each.

        All or nothing: the same rule names must come back, each with the same set-up
        (:data:`cgoom._engine._rules.SETUP_FIELDS`: domain, triggers other than ``on``,
        tripwires, early triggers); otherwise :class:`~cgoom.InvalidValue` says which rule
        and field need a restart, and nothing is applied. Policies are loaded and validated
        before anything changes (``policies``: those already loaded, by rule name, as
        :class:`Handler` takes them)."""
        new = tuple(rules)
        old = {r.name: r for r in self.rules}
        names = unique_names(new)
        problems = restart_needed(self.rules, new)
        if problems:
            raise InvalidValue("these changes need cgoom started again (the set-up they "
                               "change is made once, at start): " + "; ".join(problems),
                               value=repr(names))
        checked = None if priorities is None else check_patterns(tuple(priorities))
        given = policies or {}
        loaded = {r.name: (self.policies[r.name] if r.policy == old[r.name].policy
                           and r.policy_args == old[r.name].policy_args
                           else given.get(r.name) or self._policy(r)) for r in new}
        if (self._executor.processes is None and self._watcher is not None
                and _acts_on_processes(new)):
            self._executor.processes = Pidfds(self.hierarchy)
            self._executor.reapers.start()
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
        self.policies = loaded
        return changed

    # --- life cycle --------------------------------------------------------------------

    async def __aenter__(self) -> Handler:
        if self._executor.processes is None and _acts_on_processes(self.rules):
            self._executor.processes = Pidfds(self.hierarchy)
        self._writer.start()
        try:
            # What a cgoom killed before it could put it back: back first, then the set-up.
            for line in await self._writer.run(self._undo.open):
                self._setup.say(line)
        except BaseException:
            self._writer.close()
            raise
        self._snapshotter.start()
        start_policy_worker()
        domains = sorted({r.domain for r in self.rules})
        self._watcher = Watcher(self.hierarchy, domains, files=["memory.events",
                                                                "cgroup.events"],
                                queued=False, clock=self.clock)
        await self._watcher.astart()
        self._watcher.add_listener(self._on_event)
        self._refilter()
        if self._kmsg is not None:
            try:
                self._kmsg.open(asyncio.get_running_loop())
            except OSError as exc:
                self._setup.say(f"kernel OOM kills are not followed: cannot read "
                                f"{self._kmsg.path} ({exc.strerror}; it needs CAP_SYSLOG "
                                "where kernel.dmesg_restrict=1)")
                self._kmsg = None
        if self._proc_events_why is not None:
            self._setup.say(self._proc_events_why)
        await self._executor.open_listeners(self._setup)
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

    async def _prepare(self, rule: Rule) -> None:
        """The rule's set-up: its PSI trigger, early trigger, memory.oom.group, tripwires."""
        assert self._watcher is not None
        if rule.pressure is not None:
            where = rule.domain if rule.pressure_scope == "domain" else None
            if isinstance(rule.pressure, SustainedPressure):
                self._watcher.watch_sustained_pressure(where, rule.pressure)
            else:
                self._watcher.watch_pressure(where, rule.pressure)
            self._setup.say(f"{rule.name}: PSI {rule.pressure} on "
                            f"{where or '/proc/pressure/memory'}")
        if rule.high_below_max is not None:
            await self._setup.early_trigger(rule)
        self._setup.oom_groups(rule, self._paths.get(rule.domain, ()))
        if rule.machine or rule.usage_above is not None:
            await self._arming.arm(rule, self._setup)

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
        self._notifier.close()
        await self._arming.aclose()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._kmsg is not None:
            self._kmsg.close()
        await self._executor.aclose()
        if self.restore:
            await self._arming.restore()
            await self._executor.restore()
            await self._setup.undo()
        else:
            self._undo.clear()  # kept, as asked: nothing is left to put back
        self._undo.close()
        if self._watcher is not None:
            self._watcher.close()
        self._snapshotter.close()
        self._writer.close()
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
                                 watched=watched, tripwire_trips=self._arming.trips,
                                 polls=self._arming.polls, **self._counts)

    def _deliver(self, record: Record) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # the oldest goes; listeners saw it
        self._queue.put_nowait(record)
        for listener in list(self._listeners):
            try:
                listener(record)
            except Exception:
                log.exception("cgoom handler listener %r failed", listener)

    def _on_kernel_kill(self, kill: KernelOomKill) -> None:
        self._counts["kernel_kills"] += 1
        log.warning("cgoom: %s", kill)
        for domain, window in self._windows.items():
            # The log names the cgroup only as a hint (a tenant can name its cgroup like
            # the log's separators); without a name, only a domain whose own memory.events
            # counted an oom_kill meanwhile takes it.
            if (inside(kill.task_memcg, domain) if kill.task_memcg is not None
                    else window.oom_kill > 0):
                window.kills.append(kill)
        self._deliver(kill)
        verdict = self._shadow.kernel_kill(kill)
        if verdict is not None:
            self._counts["shadow_verdicts"] += 1
            self._counts["shadow_agreed"] += verdict.agreed
            log.warning("cgoom: %s", verdict)
            self._deliver(verdict)

    # --- the workloads -------------------------------------------------------------------

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
        return self._notifier.register(cgroup, handler, deadline=deadline, levels=levels,
                                       tell=tell)

    def declare_killable(self, cgroup: str) -> Callable[[], None]:
        """Declare ``cgroup`` background-killable (its workload saved its state: Maemo's
        model) until the returned function is called: policies see it as they see the
        ``user.cgoom.killable`` xattr (killable-first picks it first; priority prefers it
        among equals). Nothing is written to the cgroup."""
        return self._notifier.declare_killable(cgroup)

    def level(self, domain: str) -> str | None:
        """The level (``low``, ``critical``, ``oom``) ``domain``'s workloads were last told,
        or ``None`` once memory came back (or before any notice)."""
        return self._notifier.level(domain)

    def _high_below_max(self, domain: str) -> float | None:
        return next((r.high_below_max for r in self.rules
                     if r.domain == domain and r.high_below_max is not None), None)

    # --- events ------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, CgroupCreated | CgroupRemoved):
            self._tree_changed(event)
        elif isinstance(event, ControllersChanged):
            if not self._closed:
                self._controllers_changed(event)
        elif isinstance(event, Resynchronized):
            self._refilter()
        elif isinstance(event, CgroupStateChanged):
            if not event.state.populated:
                self._executor.emptied(event.cgroup, event.time)
        elif self._closed:
            return
        elif isinstance(event, PressureTriggered | PressureSustained):
            for rule in self.rules:
                if _pressure_of(rule, event) and not self._signal(
                        rule, _trigger.of_event(event), event.time) \
                        and rule.domain not in self._busy:
                    self._notifier.announce(rule.domain, "low")  # pressure, no incident yet
        elif isinstance(event, PressureTriggerEnded):
            for rule in self.rules:
                if rule.pressure is not None and rule.pressure_scope == "domain" \
                        and rule.domain == event.cgroup:
                    log.warning("cgoom handler: rule %r no longer has its PSI trigger: %s",
                                rule.name, event.reason)
        elif isinstance(event, MemoryEventsChanged) and not event.local:
            self._memory_events(event)

    def _tree_changed(self, event: CgroupCreated | CgroupRemoved) -> None:
        created = isinstance(event, CgroupCreated)
        for domain, paths in self._paths.items():
            if inside(event.cgroup, domain):
                (paths.add if created else paths.discard)(event.cgroup)
        if created and not self._closed:
            self._arming.appeared(self.rules, event.cgroup)
            self._setup.appeared(self.rules, event.cgroup)

    def _controllers_changed(self, event: ControllersChanged) -> None:
        """cgroup.subtree_control of ``event.cgroup`` was written: its children's memory
        files may be new, at their defaults (a controller disabled and enabled again), and
        what the rules set there gone. Put it back, in a task (memory.high is written in the
        writer thread)."""
        for rule in self.rules:
            touched = [c for c in event.children if inside(c, rule.domain)]
            if rule.dry_run or not touched:
                continue
            task = asyncio.get_running_loop().create_task(
                self._set_up_again(rule, touched, event.cgroup))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _set_up_again(self, rule: Rule, children: list[str], parent: str) -> None:
        done = []
        try:
            if rule.high_below_max is not None and rule.domain in children:
                before = len(self._setup.lines)
                await self._setup.early_trigger(rule)
                done += self._setup.lines[before:]
            known = self._paths.get(rule.domain, set())
            parents = {parent_path(p) for p in known if p != "/"}
            again = [c for c in children
                     if (rule.oom_group_leaves and c not in parents)
                     or (rule.oom_group and matches(c, rule.oom_group))]
            for path in again:
                problem = self._setup.oom_group(path)
                done.append(problem or f"memory.oom.group=1 on {path}")
            if rule.machine or rule.usage_above is not None:
                self._arming.schedule(rule)
                done.append("tripwires armed again")
        except Exception:
            log.exception("cgoom handler: rule %r: setting up again after %s's "
                          "cgroup.subtree_control was written failed", rule.name, parent)
            return
        if done:
            log.warning("cgoom handler: rule %r: %s cgroup.subtree_control was written (its "
                        "children's memory files may be new, at their defaults): %s",
                        rule.name, parent, "; ".join(done))

    def _memory_events(self, event: MemoryEventsChanged) -> None:
        window = self._windows.get(event.cgroup)
        if window is not None:
            window.oom_kill += event.delta.get("oom_kill", 0)
        if event.delta.get("high") and self._arming:
            self._arming.on_high(self.rules, event)
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
                self._start(rule, _trigger.of_event(event), event.time)
        level = level_of(event.delta)
        if level is not None and event.cgroup not in self._busy and event.cgroup in self._paths:
            self._notifier.announce(event.cgroup, level)

    def _signal(self, rule: Rule, trigger: Trigger, notified: float) -> bool:
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

    def _start(self, rule: Rule, trigger: Trigger, notified: float) -> None:
        # The current version of the rule (timers and polls may hold an older one when the
        # handler was reconfigured; only its set-up fields, unchanged, are read from those).
        rule = self._states[rule.name].rule
        self._busy[rule.domain] = rule.name
        self._windows[rule.domain] = _Window()
        task = asyncio.get_running_loop().create_task(self._incident(rule, trigger, notified))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- one incident ------------------------------------------------------------------

    def _builder(self, rule: Rule, trigger: Trigger, notified: float,
                 started: float | None) -> RecordBuilder:
        wall = self.clock.wall()
        return RecordBuilder(id=f"{int(wall)}-{next(self._ids)}", rule=rule.name,
                             domain=rule.domain, trigger=trigger, dry_run=rule.dry_run,
                             notified=notified, started=started, started_at=wall,
                             policy=self.policies[rule.name].name)

    async def _incident(self, rule: Rule, trigger: Trigger, notified: float) -> None:
        state = self._states[rule.name]
        draft = self._builder(rule, trigger, notified, self.clock.monotonic())
        try:
            record = await self._handle(rule, draft)
        except Exception as exc:
            # Said, not swallowed: a record that the incident failed (the domain vanished
            # mid-snapshot, or a bug), so no decision is silently lost.
            log.exception("cgoom handler: incident of rule %r failed", rule.name)
            record = draft.failed(exc)
        folded = state.finished(self.clock.monotonic())
        self._busy.pop(rule.domain, None)
        self._windows.pop(rule.domain, None)
        self._arming.after_incident(self.rules, rule)
        record = attrs.evolve(record, folded=folded)
        self._counts["incidents"] += 1
        self._counts["dry_runs"] += record.dry_run
        self._counts["kills"] += record.kills
        self._counts["fallbacks"] += record.fell_back
        self._counts["errors"] += record.failed
        self._deliver(record)  # first: nothing in a record may keep it from its readers
        if record.dry_run:
            t = record.timings
            self._shadow.decided(record, t.notified + (t.snapshot_ms + t.decision_ms) / 1000)
        try:
            line = record.explain().splitlines()[0]
        except Exception as exc:
            line = f"incident {record.id}: rule {record.rule!r} (explain failed: {exc!r})"
        log.info("cgoom: %s", line)

    def _available(self) -> int | None:
        try:
            return read_meminfo(self.hierarchy).available
        except (OSError, CgoomError):
            return None

    async def _handle(self, rule: Rule, draft: RecordBuilder) -> IncidentRecord:
        available_before = self._available()
        chance, inform = await self._notifier.before_acting(rule)
        if chance is not None and chance.recovered:
            draft.snapshot_done = self.clock.monotonic()
            return draft.build(
                Decision("none", (), ("the workloads' first chance was enough: nothing was "
                                      "killed",)),
                memory_before=chance.usage_before, memory_after=chance.usage_after,
                available_before=available_before, available_after=self._available(),
                first_chance=chance)
        policy = self.policies[rule.name]
        paths = sorted(self._paths[rule.domain])
        incident = self._deciding.incident(rule, str(draft.trigger))
        decided = await self._deciding.decide(rule, policy, paths, incident)
        draft.snapshot_done, draft.decided = decided.snapshot_done, self.clock.monotonic()
        # The domain's usage as the snapshot just read it (no second read of the file).
        snap = decided.snaps.get(rule.domain)
        before = snap.usage if snap is not None else None
        # Its swap too, where the policy's fields had it read (freeable reads it): no read of
        # the kernel's files between the decision and the kill.
        swap_before = snap.swap if snap is not None else None
        domain = self.hierarchy.cgroup(rule.domain)
        if inform is not None:
            # At the action's first wait: right after the kill syscall, or after the record
            # for a dry run or a notify-only rule.
            asyncio.get_running_loop().call_soon(inform)
        sampler = FreedSampler(lambda: self._read(domain.memory_current),
                               lambda: self._read(domain.memory_swap_current),
                               self._available if rule.machine else None)
        try:
            decided, actions = await self._act(rule, policy, paths, incident, decided,
                                               before, draft, sampler)
            timeline = await sampler.stop()
        finally:
            sampler.cancel()
        window = self._windows.get(rule.domain, _Window())
        return draft.build(
            decided.decision, candidates=decided.snaps.values(), actions=actions,
            memory_before=before,
            memory_after=if_supported(domain.memory_current),
            available_before=available_before, available_after=self._available(),
            kernel_kills=window.kills, kernel_oom_kills=window.oom_kill, first_chance=chance,
            swap_before=swap_before, swap_after=self._read(domain.memory_swap_current),
            expected_free=expected_free(actions, decided.snaps), freed_timeline=timeline)

    @staticmethod
    def _read(read: Callable[[], int]) -> int | None:
        """A value for the record: ``None`` where the kernel lacks the file or the cgroup
        is gone (a record is written whatever happened to the domain)."""
        try:
            return read()
        except CgoomError:
            return None

    async def _act(self, rule: Rule, policy: Policy, paths: list[str], incident: Incident,
                   decided: Decided, before: int | None, draft: RecordBuilder,
                   sampler: FreedSampler) -> tuple[Decided, list[ActionResult]]:
        """The rule's action on the decision's victims in order, while memory is still
        short and up to ``max_victims``; the decision acted on and the actions.

        A victim that cannot be acted on for a reason of its own (the kernel refused, or
        -1000 processes with nothing to spare them) gives way to the next. One that slipped
        away since the decision (``ActionResult.stale``: exited, moved, re-created, emptied)
        never does: the next on the list ranked behind the victim for what it was then,
        and a tenant can make its victim slip away on purpose (moving its hog between its
        own cgroups) to have a neighbour killed. So memory is looked at again: came back,
        nothing more is done; still short, the domain is read and decided afresh (at most
        :data:`FRESH_DECISIONS` times an incident). A descent's decision, which vouches for
        its first victim only, is likewise replaced by a full one before a next victim."""
        first = decided.decision.first
        if rule.dry_run or rule.action == "notify":
            would = "nothing" if first is None else (
                f"{rule.action} {first.cgroup} whole" if first.whole
                else f"{rule.action} pid {first.pid} in {first.cgroup}")
            return decided, [ActionResult(
                "dry-run" if rule.dry_run else "notify",
                first.cgroup if first else rule.domain, first.pid if first else None, False,
                f"dry run: would have done {would}; nothing was done" if rule.dry_run
                else "notify only (the rule's action): nothing was done")]
        actions = []
        if rule.action == "raise-limit":
            raised = await self._executor.raise_limit(rule)
            actions.append(raised)
            if raised.ok:
                return decided, actions
            # no room: kill instead
        acted = fresh = 0
        notes: list[str] = []
        queue = list(decided.decision.victims)
        tried: set[tuple[str, int | None]] = set()
        while queue and acted < rule.max_victims:
            victim = queue.pop(0)
            tried.add((victim.cgroup, victim.pid))
            sampler.start()  # the freed timeline: its first reading just before the action
            result, at, gone = await self._executor.act(rule, victim)
            actions.append(result)
            if result.ok:
                acted += 1
                draft.kill_at = at if draft.kill_at is None else draft.kill_at
                draft.gone_at = gone
                if rule.action in ("freeze", "reclaim") \
                        or not self._shortage.after_kill(rule, before):
                    break
            elif result.stale:
                back = self._shortage.came_back(rule)
                if back is not None:
                    notes.append(f"{victim.cgroup} slipped away ({result.detail}) and memory "
                                 f"came back ({back}): nothing more was done")
                    break
                if fresh == FRESH_DECISIONS:
                    notes.append(f"{victim.cgroup} slipped away ({result.detail}) after "
                                 f"{fresh} fresh decision(s): left to the next incident")
                    break
                fresh += 1
                notes.append(f"{victim.cgroup} slipped away ({result.detail}); memory still "
                             "short: the domain was read and decided afresh, not the next "
                             "victim taken")
                decided = await self._deciding.read_all(rule, policy,
                                                        sorted(self._paths[rule.domain]),
                                                        incident)
                queue = list(decided.decision.victims)
                continue
            if not queue and decided.descended and acted < rule.max_victims:
                # The descent vouches for its first victim only: the rest of the list
                # comes from a snapshot of the whole domain.
                decided = await self._deciding.read_all(rule, policy, paths, incident)
                queue = [v for v in decided.decision.victims
                         if (v.cgroup, v.pid) not in tried]
        if notes:
            decided = attrs.evolve(decided, decision=attrs.evolve(
                decided.decision, notes=(*decided.decision.notes, *notes)))
        return decided, actions

    # --- what a rule would do now --------------------------------------------------------

    async def rank(self, name: str) -> Decision:
        """What rule ``name``'s policy would decide now, acting on nothing: a snapshot of
        its domain in the snapshotter's thread and a guarded decision (the stall
        watchdog's ranking; also an operator's "whom now?")."""
        rule = self._states[name].rule
        incident = self._deciding.incident(rule, "a ranking: nothing is acted on")
        decided = await self._deciding.read_all(rule, self.policies[name],
                                                sorted(self._paths[rule.domain]), incident)
        return decided.decision

    def decide_now(self, name: str, trigger: str,
                   ) -> tuple[Decision, tuple[CgroupSnapshot, ...]]:
        """From any thread (the stall watchdog's): rule ``name``'s decision on its domain
        walked and read now. Raises ``CgoomError``/``OSError`` when it cannot be read."""
        return self._deciding.decide_now(self._states[name].rule, self.policies[name],
                                         trigger)

    def claim(self, name: str) -> bool:
        """From any thread: take rule ``name`` as if an incident began, unless one is in
        flight (``False``); :meth:`release` ends it (the rule then rests its cooldown)."""
        return self._states[name].claim()

    def release(self, name: str) -> None:
        self._states[name].finished(self.clock.monotonic())

    @property
    def processes(self) -> ProcessControl:
        """How this handler signals processes (real pidfds unless given others)."""
        return self._executor.processes or Pidfds(self.hierarchy)

    def stall_check(self, name: str) -> str | None:
        """From any thread, the loop being stalled: why rule ``name``'s trigger holds now,
        read from the kernel's files, or ``None`` (:meth:`Shortage.holds`)."""
        rule = self._states[name].rule
        last = (self._watcher.last(rule.domain, "memory.events")
                if self._watcher is not None else None)
        return self._shortage.holds(rule, last)


def _pressure_of(rule: Rule, event: PressureTriggered | PressureSustained) -> bool:
    if rule.pressure is None:
        return False
    where = rule.domain if rule.pressure_scope == "domain" else None
    if event.cgroup != where:
        return False
    if isinstance(event, PressureSustained):
        return event.rule == rule.pressure
    return event.trigger == rule.pressure


def open_handler(hierarchy: Hierarchy | None = None, *rules: Rule,
                 own_cgroup: str | None = None, processes: ProcessControl | None = None,
                 history: UsageHistory | None = None, restore: bool = True,
                 kmsg: str | None = "", proc_events: bool | None = None,
                 priorities: Iterable[tuple[str, int]] = (),
                 notice_interval: float = 10.0, clock: Clock = SYSTEM,
                 max_tenant_cgroups: int = TENANT_CGROUPS,
                 state: str | None = None) -> Handler:
    """A :class:`Handler` for ``rules``, to use as
    ``async with cgoom.open_handler(h, cgoom.Rule("batch", "workload.slice")) as handler:``.
    """
    return Handler(hierarchy if hierarchy is not None else Hierarchy.discover(), rules,
                   own_cgroup=own_cgroup, processes=processes, history=history,
                   restore=restore, kmsg=kmsg, proc_events=proc_events,
                   priorities=priorities, notice_interval=notice_interval, clock=clock,
                   max_tenant_cgroups=max_tenant_cgroups, state=state)


def expected_free(actions: Iterable[ActionResult],
                  snaps: Mapping[str, CgroupSnapshot]) -> int | None:
    """What the kills among ``actions`` were expected to give back, as the snapshot read
    their victims: a whole cgroup's ``freeable``, a process's ``freeable`` where its
    smaps_rollup was read (``"pss"``), else its RSS. ``None`` when nothing was
    killed or one of them is not known."""
    total, killed = 0, False
    for a in actions:
        if not (a.ok and a.action.startswith(KILLING)):
            continue
        killed = True
        snap = snaps.get(a.cgroup)
        if snap is None:
            return None
        if a.pid is None:
            if snap.freeable is None:
                return None
            total += snap.freeable
        else:
            frees = next((p.frees for p in snap.processes if p.pid == a.pid), None)
            if frees is None:
                return None
            total += frees
    return total if killed else None
