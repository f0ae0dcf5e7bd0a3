"""Arming: the memory.high tripwires of machine rules (``available_below``) and usage rules
(``usage_above``), their re-arming, and the opt-in polling of MemAvailable (``poll_below``).

Owns the tripwires (``_tripwire``), the re-arm timers and the polls. Touches memory.high of
the cgroups it arms (through the engine's writer thread, except the raises made on a trip,
which never reclaim: direct writes, 0.6-0.8 ms measured) and reads /proc/meminfo and the
domain's memory.current. It fires a rule only through ``fire`` (the handler's), and asks the
handler only whether a domain is busy and when a rule's rest ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Coroutine, Iterable
from typing import Any

from .._errors import CgoomError
from .._kernel._cgroup import if_supported
from .._kernel._clock import Clock, Timer
from .._kernel._hierarchy import Hierarchy
from .._kernel._meminfo import MemInfo, read_meminfo
from .._kernel._parse import format_size
from .._kernel._paths import parent_path
from .._kernel._worker import Worker
from .._watch._events import MemoryEventsChanged
from . import _trigger
from ._rules import Rule
from ._setup import SetUp
from ._trigger import Trigger
from ._tripwire import DomainTripwire, Noted, Tripwires

log = logging.getLogger("cgoom")

#: An adaptive poll (``Rule.poll_below``) sleeps the time memory would take to fall to the
#: reserve at this rate, between 0.1 s and 1 s: earlyoom's figures (6,000 MiB/s, its
#: ``mem_fill_rate``).
FILL_RATE = 6000 << 20
POLL_MIN, POLL_MAX = 0.1, 1.0

#: ``fire(rule, trigger, notified)``: start an incident (``True``) or fold into one.
Fire = Callable[[Rule, Trigger, float], bool]


class Arming:
    """The tripwires of ``rules`` on ``hierarchy``. ``fire``: the handler's way to start
    (or fold into) an incident; ``busy(domain)``: whether an incident is in flight there;
    ``rest_until(rule)``: when the rule's cooldown ends (monotonic); ``paths(domain)``: the
    domain's cgroups known now."""

    def __init__(self, hierarchy: Hierarchy, rules: Iterable[Rule], *, writer: Worker,
                 clock: Clock, fire: Fire, busy: Callable[[str], bool],
                 rest_until: Callable[[Rule], float],
                 paths: Callable[[str], Collection[str]],
                 noted: Noted = lambda cgroup, file, old: None) -> None:
        self.hierarchy = hierarchy
        self.writer = writer
        self.clock = clock
        self._fire, self._busy, self._rest_until, self._paths = fire, busy, rest_until, paths
        self.machine = {r.name: Tripwires(hierarchy, r.domain, r.available_below, noted)
                        for r in rules if r.available_below is not None}
        self.usage = {r.name: DomainTripwire(hierarchy, r.domain, r.usage_above, noted)
                      for r in rules if r.usage_above is not None}
        #: memory.high tripwires that fired (each re-checks), and MemAvailable polls.
        self.trips = 0
        self.polls = 0
        self._arming: set[str] = set()
        self._arm_again: set[str] = set()
        self._timers: dict[str, Timer] = {}
        self._polling: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def __bool__(self) -> bool:
        return bool(self.machine or self.usage)

    def reserve(self, rule: Rule, info: MemInfo) -> int:
        """The machine rule's reserve in bytes, for ``info``."""
        return self.machine[rule.name].reserve_bytes(info)

    def level(self, rule: Rule) -> int | None:
        """The usage rule's level in bytes, once armed."""
        return self.usage[rule.name].level

    # --- arming -------------------------------------------------------------------------

    async def arm(self, rule: Rule, setup: SetUp | None = None) -> None:
        """(Re-)arm the rule's tripwires, in the writer thread; fire the rule if memory is
        already short. With ``setup``, the first arming: said there. A dry run arms nothing
        (a tripwire is a write to memory.high): :meth:`_watch_only`."""
        if rule.dry_run:
            if setup is not None:
                self._watch_only(rule, setup)
            return
        if rule.usage_above is not None:
            await self._arm_usage(rule, setup)
        if rule.machine:
            await self._arm_machine(rule, setup)

    async def _arm_usage(self, rule: Rule, setup: SetUp | None) -> None:
        wire = self.usage[rule.name]
        used, problem = await self.writer.run(wire.arm)
        if problem is not None:
            if setup is not None:
                setup.say(f"{rule.name}: no usage tripwire: {problem}")
            else:
                log.warning("cgoom handler: %s: %s", rule.name, problem)
            return
        if setup is not None:
            setup.say(f"{rule.name}: usage tripwire on {rule.domain} at "
                      f"{format_size(wire.level or 0)} ({rule.usage_above:.0%} of memory.max; "
                      "memory.high as found is put back on its first event)")
        self._usage_check(rule, used, "when arming", self.clock.monotonic(), rearm=False)

    def _watch_only(self, rule: Rule, setup: SetUp) -> None:
        """A dry run's machine rule polls MemAvailable instead (earlyoom's adaptive
        interval, 0.1-1 s); its usage rule cannot see its level without a tripwire."""
        if rule.usage_above is not None:
            setup.say(f"{rule.name}: dry run: no usage tripwire on {rule.domain} (it writes "
                      "memory.high): the rule cannot see usage cross its level in a dry run")
        if rule.machine:
            setup.say(f"{rule.name}: dry run: no memory.high tripwires (they write "
                      f"memory.high); MemAvailable is polled every {POLL_MIN:g}-{POLL_MAX:g} "
                      f"s instead, below {rule.available_below:.0%} of MemTotal")
            task = asyncio.get_running_loop().create_task(self._poll(rule, always=True))
            self._polling[rule.name] = task
            task.add_done_callback(lambda _t: self._polling.pop(rule.name, None))

    def _children(self, rule: Rule) -> list[str]:
        return sorted(p for p in self._paths(rule.domain)
                      if p != rule.domain and parent_path(p) == rule.domain)

    async def _arm_machine(self, rule: Rule, setup: SetUp | None) -> None:
        wires = self.machine[rule.name]
        children = self._children(rule)
        info, problems = await self.writer.run(lambda: wires.arm(children))
        for problem in problems:
            log.warning("cgoom handler: %s: %s", rule.name, problem)
        if setup is not None:
            setup.say(
                f"{rule.name}: memory.high tripwires on {len(wires.armed)} of "
                f"{len(children)} child(ren) of {rule.domain}, sharing the headroom above "
                f"{rule.available_below:.0%} of MemTotal "
                f"({format_size(max(info.available - wires.reserve_bytes(info), 0))} now)"
                + "".join(f"; {p}" for p in problems))
        self._machine_check(rule, info, "when arming", self.clock.monotonic(), rearm=False)

    def schedule(self, rule: Rule, delay: float = 0.0) -> None:
        """Re-arm soon (coalesced): now, or after ``delay``. A trip while a re-arm runs asks
        for another after it (that one may have read usage before the trip)."""
        if self.closed or rule.dry_run:
            return
        if rule.name in self._arming:
            self._arm_again.add(rule.name)
            return
        if delay > 0:
            if rule.name not in self._timers:
                self._timers[rule.name] = self.clock.call_later(delay, self._rearm_now, rule)
            return
        self._rearm_now(rule)

    def _rearm_now(self, rule: Rule) -> None:
        self._timers.pop(rule.name, None)
        if self.closed:
            return
        if rule.name in self._arming:
            self._arm_again.add(rule.name)
            return
        self._arming.add(rule.name)

        async def rearm() -> None:
            try:
                await self.arm(rule)
            except Exception:
                log.exception("cgoom handler: re-arming the tripwires of %r failed", rule.name)
            finally:
                self._arming.discard(rule.name)
                if rule.name in self._arm_again:
                    self._arm_again.discard(rule.name)
                    self._rearm_now(rule)

        self._spawn(rearm())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def appeared(self, rules: Iterable[Rule], path: str) -> None:
        """A cgroup appeared: a new top-level workload of a machine rule needs its
        tripwire."""
        for rule in rules:
            if rule.machine and parent_path(path) == rule.domain:
                self.schedule(rule)

    def after_incident(self, rules: Iterable[Rule], ended: Rule) -> None:
        """An incident of ``ended`` ended: re-arm its domain's tripwires, whichever rule's
        they are (the rule's own after its cooldown)."""
        for rule in rules:
            if (rule.machine or rule.usage_above is not None) and rule.domain == ended.domain:
                self.schedule(rule, rule.cooldown if rule.name == ended.name else 0.0)

    # --- trips --------------------------------------------------------------------------

    def on_high(self, rules: Iterable[Rule], event: MemoryEventsChanged) -> None:
        """A ``high`` event: a machine rule's child, or a usage rule's domain."""
        for rule in rules:
            if rule.dry_run:
                continue  # nothing armed: a child's own memory.high, not a tripwire
            if rule.machine and parent_path(event.cgroup) == rule.domain:
                self._tripped(rule, event)
            if rule.usage_above is not None and event.cgroup == rule.domain:
                self._usage_tripped(rule, event)

    def _usage_tripped(self, rule: Rule, event: MemoryEventsChanged) -> None:
        """Release the tripwire at once, then compare the usage with the level (the event
        may be a descendant's own memory.high)."""
        if self.usage[rule.name].release():
            self.trips += 1
        try:
            used = if_supported(self.hierarchy.cgroup(rule.domain).memory_current)
        except CgoomError as exc:
            log.warning("cgoom handler: %s: %s", rule.name, exc)
            return
        self._usage_check(rule, used, f"tripwire on {rule.domain}", event.time, rearm=True)

    def _usage_check(self, rule: Rule, used: int | None, source: str, notified: float, *,
                     rearm: bool) -> None:
        level = self.usage[rule.name].level
        trigger = None
        if used is not None and level is not None and used >= level:
            trigger = _trigger.usage(rule.domain, used, level, rule.usage_above, source)
        self._fire_or_rearm(rule, trigger, notified, rearm=rearm)

    def _fire_or_rearm(self, rule: Rule, trigger: Trigger | None, notified: float, *,
                       rearm: bool) -> None:
        """After a check: fire the rule when ``trigger`` says why, else re-arm (``rearm``).
        Resting after an incident, it looks again when the rest ends; an incident in flight
        on the domain re-arms when it ends."""
        if trigger is not None:
            if not self._fire(rule, trigger, notified) and not self._busy(rule.domain):
                rest = self._rest_until(rule) - self.clock.monotonic()
                self.schedule(rule, max(rest, 0.01))
        elif rearm and not self._busy(rule.domain):
            self.schedule(rule)

    def _tripped(self, rule: Rule, event: MemoryEventsChanged) -> None:
        """A child of a machine rule's domain: re-check MemAvailable, then move that
        tripwire up (memory plentiful) or release it (short) at once."""
        wires = self.machine[rule.name]
        if event.cgroup in wires.armed:
            self.trips += 1
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
        reserve = self.reserve(rule, info)
        trigger = (_trigger.available(info, reserve, rule.available_below, source)
                   if info.available < reserve else None)
        self._fire_or_rearm(rule, trigger, notified, rearm=rearm)
        if (rule.poll_below is not None and info.available < rule.poll_below * info.total
                and rule.name not in self._polling and not self.closed):
            task = asyncio.get_running_loop().create_task(self._poll(rule))
            self._polling[rule.name] = task
            task.add_done_callback(lambda _t: self._polling.pop(rule.name, None))

    async def _poll(self, rule: Rule, *, always: bool = False) -> None:
        """Poll MemAvailable while it is below ``poll_below`` (polling, by the rule's
        choice; earlyoom's adaptive interval), firing the rule below the reserve;
        ``always``: for as long as the handler runs (a dry run's machine rule)."""
        assert always or rule.poll_below is not None
        while not self.closed:
            try:
                info = read_meminfo(self.hierarchy)
            except (OSError, CgoomError) as exc:
                log.error("cgoom handler: %s: polling stopped: %s", rule.name, exc)
                return
            self.polls += 1
            if not always and info.available >= (rule.poll_below or 0) * info.total:
                return
            reserve = self.reserve(rule, info)
            if info.available < reserve:
                self._fire(rule, _trigger.available(info, reserve, rule.available_below,
                                                    "poll"), self.clock.monotonic())
            await self.clock.sleep(min(POLL_MAX, max(POLL_MIN,
                                                     (info.available - reserve) / FILL_RATE)))

    # --- the end ------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop timers, polls and re-arms (the tripwires stay until :meth:`restore`)."""
        self.closed = True
        for timer in self._timers.values():
            timer.cancel()
        for poll in self._polling.values():
            poll.cancel()
        pending = [*self._tasks, *self._polling.values()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def restore(self) -> None:
        """Put back every memory.high a tripwire changed."""
        restores = [w.restore for w in self.machine.values()]
        restores += [w.restore for w in self.usage.values()]
        for restore in restores:
            for problem in await self.writer.run(restore):
                log.warning("cgoom handler: %s", problem)
