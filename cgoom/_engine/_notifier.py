"""The notifier: the workloads hear first. Registrations and their rate limits
(``_firstchance.Registry``), the levels of each domain and their recovery, declarations of
background-killable work, the fan-out of notices, and the first-chance wait.

Owns all of that state. Reads the domain's memory.current/high/max (to tell the workloads
what to free and to see it recover); writes nothing to the host. Asks the handler only
whether an incident is in flight on a domain (``busy``) and which ``high_below_max`` applies
to it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Callable, Collection, Iterable

import attrs

from .._decide._candidates import CgroupSnapshot
from .._errors import CgoomError, CgroupGone
from .._kernel._cgroup import if_supported
from .._kernel._clock import Clock, Timer
from .._kernel._hierarchy import Hierarchy
from .._kernel._parse import BYTES_MAX, format_size
from .._kernel._paths import normalize_path
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
    threshold_of,
)
from ._rules import Rule

log = logging.getLogger("cgoom")

#: Notices written in one go before the loop runs again (about 3 ms of socket writes).
FAN_OUT_CHUNK = 256
#: While a domain's level is raised, its usage is read this often (seconds) to see it
#: recover: a fall in usage raises no kernel event. Only while raised.
SETTLE_EVERY = 1.0
#: During a first chance, usage is read this often (seconds): a drop raises no event.
FIRST_CHANCE_EVERY = 0.05

Numbers = tuple[int | None, int | None, int]
#: A declaration of background-killable work: the cgroup's path, inode and owner's uid.
Declared = tuple[str, int, int]


class Notifier:
    """The notices of a handler on ``hierarchy``; see the module docstring."""

    def __init__(self, hierarchy: Hierarchy, *, clock: Clock, interval: float,
                 busy: Callable[[str], bool],
                 high_below_max: Callable[[str], float | None]) -> None:
        self.hierarchy = hierarchy
        self.clock = clock
        self._busy, self._high_below_max = busy, high_below_max
        self.registry = Registry(interval)
        #: Each domain's level (raised at once, cleared with hysteresis), and the timers
        #: that look for its recovery while it is raised.
        self._levels: dict[str, Levels] = {}
        self._settling: dict[str, Timer] = {}
        #: Cgroups declared background-killable by their workloads, as (path, inode, owner
        #: uid when declared), with a count per declaration (a client that goes takes its
        #: declarations with it).
        self._killable: collections.Counter[Declared] = collections.Counter()
        #: Level notices in flight (their handlers are cut off after ``interval``).
        self._telling: set[asyncio.Future[Answer | None]] = set()
        #: First-chance handlers cut off at their deadline, left to finish on their own.
        self._abandoned: set[asyncio.Future[Answer | None]] = set()
        self.closed = False

    # --- registrations and declarations ---------------------------------------------------

    def register(self, cgroup: str, handler: FirstChanceHandler, *,
                 deadline: float | None = None,
                 levels: Iterable[str] = ("low", "critical", "oom"),
                 tell: Callable[[Notice], None] | None = None) -> Callable[[], None]:
        """See :meth:`cgoom.Handler.register`."""
        return self.registry.register(cgroup, handler, deadline, levels, tell)

    def declare_killable(self, cgroup: str) -> Callable[[], None]:
        """See :meth:`cgoom.Handler.declare_killable`."""
        path = normalize_path(cgroup)
        # Bound to this cgroup, not to its name: one removed and made again under the same
        # path is another workload, which declared nothing. And to its owner: one handed to
        # another user (chown, a new delegation) is that user's, who declared nothing.
        directory = self.hierarchy.cgroup(path).dir
        try:
            st = self.hierarchy.fs.stat(directory)
        except OSError as exc:
            raise CgroupGone(f"cannot declare {path} background-killable: {exc.strerror}",
                             path=directory) from exc
        key = (path, st.st_ino, st.st_uid)
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

    def declared(self) -> frozenset[Declared]:
        """The declarations now, as a copy: a walk that lets the loop run between slices
        must not see two versions of them."""
        return frozenset(self._killable)

    def mark(self, snaps: dict[str, CgroupSnapshot]) -> dict[str, CgroupSnapshot]:
        """``snaps`` with the declared cgroups marked background-killable."""
        if not self._killable:
            return snaps
        return {path: with_declared(s, self._killable) for path, s in snaps.items()}

    # --- levels ---------------------------------------------------------------------------

    def level(self, domain: str) -> str | None:
        """The level ``domain``'s workloads were last told, until memory comes back."""
        state = self._levels.get(normalize_path(domain))
        return None if state is None else state.level

    def numbers(self, domain: str, high_below_max: float | None) -> Numbers:
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

    def announce(self, domain: str, level: str) -> None:
        """``domain`` reached ``level``: tell the registrations below it that asked for it
        (each within its rate limit), unless the level was already raised; then look for
        its recovery every second while it stays raised."""
        regs = self.registry.inside(domain)
        if not regs:
            return
        state = self._levels.setdefault(domain, Levels())
        if not state.raise_to(level):
            return
        usage, threshold, target = self.numbers(domain, self._high_below_max(domain))
        now = self.clock.monotonic()
        self._fan_out((reg, Notice(domain, reg.cgroup, level,  # type: ignore[arg-type]
                                   usage, threshold, target, None))
                      for reg in regs if self.registry.due(reg, level, now))
        self._settle_later(domain)

    def _settle_later(self, domain: str) -> None:
        if domain in self._settling or self.closed:
            return

        def check() -> None:
            self._settling.pop(domain, None)
            state = self._levels.get(domain)
            if state is None or state.level is None or self.closed:
                return
            if self._busy(domain):  # an incident is on it; look again later
                self._settle_later(domain)
                return
            usage, threshold, _ = self.numbers(domain, self._high_below_max(domain))
            if state.settle(usage, threshold):
                log.info("cgoom handler: %s: memory came back (usage %s, below %s): level "
                         "cleared", domain, format_size(usage or 0),
                         format_size(threshold or 0))
            else:
                self._settle_later(domain)

        self._settling[domain] = self.clock.call_later(SETTLE_EVERY, check)

    # --- telling --------------------------------------------------------------------------

    def _fan_out(self, told: Iterable[tuple[Registration, Notice]]) -> None:
        """Tell each of ``told``, :data:`FAN_OUT_CHUNK` at a time: between chunks the loop
        runs, so an OOM event that arrives during a fan-out to many registrations waits for
        one chunk, not for all (one user may hold 256 connections of 64 registrations each:
        16,384 notices, ~200 ms written in one go)."""
        items = iter(told)

        def chunk() -> None:
            for n, (reg, notice) in enumerate(items, 1):
                if self.closed:
                    return
                self._tell(reg, notice)
                if n == FAN_OUT_CHUNK:
                    asyncio.get_running_loop().call_soon(chunk)
                    return

        chunk()

    def _tell(self, reg: Registration, notice: Notice) -> None:
        """A notice that takes no answer: through ``reg.tell`` at once, or the handler
        run on its own, cut off after the registry's interval."""
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
        timer = self.clock.call_later(self.registry.interval, task.cancel)

        def done(task: asyncio.Future[Answer | None]) -> None:
            self._telling.discard(task)
            timer.cancel()
            if not task.cancelled() and task.exception() is not None:
                log.warning("cgoom handler: the notice handler for %s raised %r", reg.cgroup,
                            task.exception())

        task.add_done_callback(done)

    def _inform(self, rule: Rule, everyone: list[Registration], chance: Collection[int],
                numbers: Numbers) -> None:
        """The ``oom`` notice (no answer) for the domain's registrations without a first
        chance (``chance``: the ids of those with one), each within its rate limit."""
        usage, threshold, target = numbers
        now = self.clock.monotonic()
        self._fan_out((reg, Notice(rule.domain, reg.cgroup, "oom", usage, threshold, target,
                                   None))
                      for reg in everyone
                      if id(reg) not in chance and self.registry.due(reg, "oom", now))

    # --- an incident ----------------------------------------------------------------------

    async def before_acting(self, rule: Rule,
                            ) -> tuple[FirstChanceOutcome | None, Callable[[], None] | None]:
        """An incident of ``rule`` starts: raise its domain's level; the registrations with
        a deadline have their first chance now (the others hear ``oom`` meanwhile). Returns
        the first chance's outcome (``None`` if nobody had one) and, when the others are
        still to be told, the call that tells them: the engine makes it at the action's
        first wait (1,000 socket clients told before the snapshot added ~10 ms to
        notification -> kill on the fake tree)."""
        everyone = self.registry.inside(rule.domain)
        if not everyone:
            return None, None
        # A dry run tells everyone what would happen (the ``oom`` level), and waits for
        # nobody: a first chance is part of acting.
        regs = [r for r in everyone if r.deadline is not None] \
            if rule.first_chance and not rule.dry_run else []
        self._levels.setdefault(rule.domain, Levels()).raise_to("oom")
        self._settle_later(rule.domain)
        inform = functools.partial(self._inform, rule, everyone, {id(r) for r in regs},
                                   self.numbers(rule.domain, rule.high_below_max))
        if not regs:
            return None, inform
        asyncio.get_running_loop().call_soon(inform)  # they may hear it while we wait
        return await self._first_chance(rule, regs), None

    async def _first_chance(self, rule: Rule, regs: list[Registration]) -> FirstChanceOutcome:
        """Tell ``regs``, then wait until the domain's usage is below the threshold (read
        every :data:`FIRST_CHANCE_EVERY`), every handler has answered (then a moment for the
        kernel to count what they freed), or the last deadline passed."""
        clock = self.clock
        domain = self.hierarchy.cgroup(rule.domain)

        def usage_now() -> int | None:
            try:
                return if_supported(domain.memory_current)
            except CgoomError:
                return None

        before, threshold, target = self.numbers(rule.domain, rule.high_below_max)
        assert rule.first_chance is not None
        started = clock.monotonic()
        told: dict[int, FirstChance] = {}
        deadlines = {r.key: min(r.deadline or rule.first_chance, rule.first_chance)
                     for r in regs}

        async def ask(reg: Registration, seconds: float) -> None:
            notice = Notice(rule.domain, reg.cgroup, "oom", before, threshold, target, seconds)
            told[reg.key] = await self._ask(reg, notice, seconds)

        asks = [asyncio.get_running_loop().create_task(ask(r, deadlines[r.key])) for r in regs]
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
                await clock.sleep(0.1)
                continue
            if clock.monotonic() >= end:
                break
            await clock.sleep(min(FIRST_CHANCE_EVERY, max(end - clock.monotonic(), 0.0)))
        for a in asks:  # each ends at its own deadline; these only wrap the handlers
            a.cancel()
        await asyncio.gather(*asks, return_exceptions=True)
        results = tuple(told.get(r.key, FirstChance(r.cgroup, deadlines[r.key], "no answer",
                                                    None, None)) for r in regs)
        return FirstChanceOutcome(results, threshold, before, usage_now(), recovered,
                                  (clock.monotonic() - started) * 1000)

    async def _ask(self, reg: Registration, notice: Notice, seconds: float) -> FirstChance:
        """One registration's first chance: its handler's answer within ``seconds``."""
        asked = self.clock.monotonic()
        try:
            task = asyncio.ensure_future(reg.handler(notice))
        except Exception as exc:  # not a coroutine function, or raised at once
            return FirstChance(reg.cgroup, seconds, said("error", exc), None, 0.0)
        # Not wait_for: it waits for a cancelled handler to finish, and one that swallows
        # CancelledError would hold the action back.
        done = await self.clock.wait([task], seconds)
        ms = (self.clock.monotonic() - asked) * 1000
        if not done:
            task.cancel()
            self._abandoned.add(task)
            task.add_done_callback(self._forget)
            return FirstChance(reg.cgroup, seconds, "no answer", None, ms)
        if task.cancelled() or task.exception() is not None:
            failure = task.exception() if not task.cancelled() else asyncio.CancelledError()
            text = str(failure) if isinstance(failure, Gone) else said("error", failure)
            return FirstChance(reg.cgroup, seconds, text, None, ms)
        answer = task.result()
        answer = Answer() if answer is None else answer
        if not isinstance(answer, Answer) or answer.status not in ("done", "cannot"):
            return FirstChance(reg.cgroup, seconds, f"garbage: {answer!r}"[:200], None, ms)
        freed = answer.freed if isinstance(answer.freed, int) and not isinstance(
            answer.freed, bool) and 0 <= answer.freed <= BYTES_MAX else None
        return FirstChance(reg.cgroup, seconds, answer.status, freed, ms)

    def _forget(self, task: asyncio.Future[Answer | None]) -> None:
        """An abandoned handler ended: whatever it raised is no one's concern now."""
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()

    def close(self) -> None:
        self.closed = True
        for timer in self._settling.values():
            timer.cancel()
        for telling in list(self._telling):
            telling.cancel()


def with_declared(s: CgroupSnapshot, declared: Collection[Declared]) -> CgroupSnapshot:
    """``s`` marked background-killable if its cgroup was declared so: the same cgroup
    (path and inode) with the same owner as when declared, read now in the snapshot."""
    if not s.killable and (s.path, s.inode, s.owner) in declared:
        return attrs.evolve(s, killable=True)
    return s


def said(what: str, exc: BaseException | None) -> str:
    return f"{what}: {type(exc).__name__}: {exc}"[:200]
