"""The stall watchdog: when the event loop itself stops running (cgoom's process starved of
CPU, or paging in its own code under the very memory pressure it should act on), a thread
armed before any incident acts on the last ranking, as Android's lmkd does with its
watchdog. ``[handler] stall_timeout`` in ``cgoom run``; off by default.

How it decides that it must act, and on whom (it must never make a wrong kill worse than
the stall):

- *The loop is stalled*: the thread posts a probe to the loop (``call_soon_threadsafe``)
  every ``timeout / 2`` seconds; a probe not run within ``timeout`` means the loop has not
  run for that long. The probe costs one wake-up of each side per ``timeout / 2``.
- *Memory is short now*, by the rule's own trigger, read by the thread from the kernel
  files: the domain's memory.events counters of the rule's ``on`` rose past what the loop
  last handled (the watcher's last record of them) by at least ``threshold``; or
  MemAvailable is below the machine rule's reserve; or usage is at the usage rule's level.
  PSI-only rules are not judged (their trigger state lives in the kernel's fd).
- *The rule is free*: no incident of it is in flight (its decision exists; acting beside it
  could push that incident to its next victim), claimed under the rule state's lock, so the
  loop, if it wakes meanwhile, folds its events into this action instead of starting another.
  The rule then rests for its cooldown, as after any incident.
- *The victim is decided afresh*, by the thread: the domain walked and read now, the rule's
  policy under its guard and budget. A ranking taken before the stall can be wrong by then
  (measured in the VM: at start batch was empty, so the ranking named web; by the stall
  batch had grown to memory.high): it is used only when no fresh decision can be made (the
  domain cannot be read), and the record says so. The last ranking (:meth:`Handler.rank`,
  refreshed at start, after every incident and reload, and every ``refresh`` seconds) is
  that fallback. Either way ``kill_cgroup``/``kill_process`` re-check the victim's identity
  (cgroup inode, process start time) right before acting, and a victim that fails the check
  is passed over for the next, as the engine does. Only rules whose action is ``kill`` and
  that are not dry runs are acted on.

One action per stall: the thread acts at most once until the loop runs again. It writes a
record (``IncidentRecord``, trigger ``stall watchdog: ...``) through ``on_record`` from its
own thread (the loop is stalled); the record log and metrics take it from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from .._decide._candidates import CgroupSnapshot
from .._decide._policy import Decision
from .._errors import CgoomError
from . import _trigger
from ._actions import (
    ActionResult,
    Pidfds,
    ProcessControl,
    kill_cgroup,
    kill_process,
    release_process,
)
from ._incident import IncidentRecord, RecordBuilder

if TYPE_CHECKING:
    from ._handler import Handler

log = logging.getLogger("cgoom")

#: How often the ranking is refreshed while nothing happens: the one timer of this optional
#: feature (a snapshot and a decision of each rule's domain: milliseconds).
REFRESH = 30.0


class StallWatchdog:
    """Watches ``handler``'s event loop from a thread; see the module docstring. ``start``
    on the loop after the handler started; ``close`` before it stops."""

    def __init__(self, handler: Handler, timeout: float,
                 on_record: Callable[[IncidentRecord], object], *,
                 refresh: float = REFRESH) -> None:
        self.handler = handler
        self.timeout = timeout
        self.refresh = refresh
        self._on_record = on_record
        #: The last ranking of each rule it may act for: (decision, monotonic time taken).
        self.rankings: dict[str, tuple[Decision, float]] = {}
        self.actions = 0
        self._posted = self._answered = 0.0
        self._acted = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def eligible(self) -> list[str]:
        """The rules it may act for: killing ones that act (not dry runs)."""
        return [r.name for r in self.handler.rules if r.action == "kill" and not r.dry_run]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.rerank()
        self._refresher = self._loop.create_task(self._refresh())
        self._thread = threading.Thread(target=self._run, name="cgoom-stall-watchdog",
                                        daemon=True)
        self._thread.start()

    async def close(self) -> None:
        self._stop.set()
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def stale(self) -> None:
        """Something changed (an incident, a reload): rank again soon. Any thread."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed
                self._loop.call_soon_threadsafe(self._wake.set)

    async def rerank(self) -> None:
        names = self.eligible()
        for name in list(self.rankings):
            if name not in names:
                del self.rankings[name]
        for name in names:
            try:
                decision = await self.handler.rank(name)
            except (CgoomError, OSError) as exc:  # the domain vanished: keep the last
                log.warning("cgoom stall watchdog: cannot rank for %r: %s", name, exc)
                continue
            self.rankings[name] = (decision, time.monotonic())

    async def _refresh(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.refresh)
            self._wake.clear()
            await self.rerank()

    # --- the thread --------------------------------------------------------------------

    def _answer(self, posted: float) -> None:
        self._answered = posted

    def _run(self) -> None:
        assert self._loop is not None
        stall_said = False
        while not self._stop.wait(self.timeout / 2):
            now = time.monotonic()
            if self._answered >= self._posted:
                self._acted = stall_said = False
                self._posted = now
                try:
                    self._loop.call_soon_threadsafe(self._answer, now)
                except RuntimeError:  # the loop closed
                    return
            elif now - self._posted > self.timeout and not self._acted:
                # Stalled: look again every timeout / 2 until it acts once (memory may
                # become short during the stall, not only at its start).
                try:
                    self._acted = self.act(now - self._posted, quiet=stall_said) is not None
                except Exception:  # never let the watchdog die silently
                    log.exception("cgoom stall watchdog: acting failed")
                    self._acted = True
                stall_said = True

    def act(self, stalled: float, *, quiet: bool = False) -> IncidentRecord | str | None:
        """The loop has not run for ``stalled`` seconds: act for the first rule whose trigger
        holds now. Returns the record; a sentence when the rule was left to its incident in
        flight; ``None`` when no rule's trigger holds (said in the log unless ``quiet``)."""
        for name in self.eligible():
            reason = self.handler.stall_check(name)
            if reason is None:
                continue
            if not self.handler.claim(name):
                said = (f"the loop stalled {stalled:.1f} s and {reason}; rule {name!r} has an "
                        "incident in flight: left to it")
                log.error("cgoom stall watchdog: %s", said)
                return said
            try:
                record = self._kill(name, self.rankings.get(name), stalled, reason)
            finally:
                self.handler.release(name)
            self.actions += 1
            log.error("cgoom stall watchdog: %s", record.explain().replace("\n", "; "))
            try:
                self._on_record(record)
            except Exception:
                log.exception("cgoom stall watchdog: delivering the record failed")
            return record
        if not quiet:
            log.warning("cgoom stall watchdog: the event loop has not run for %.1f s; no "
                        "rule's trigger holds now; looking again every %g s while it lasts",
                        stalled, self.timeout / 2)
        return None

    def _decide_now(self, name: str, trigger: str,
                    ) -> tuple[Decision, tuple[CgroupSnapshot, ...]] | None:
        """A fresh decision from this thread (:meth:`Handler.decide_now`), or ``None``."""
        try:
            return self.handler.decide_now(name, trigger)
        except (CgoomError, OSError) as exc:
            log.error("cgoom stall watchdog: %s: no fresh decision (%s): the last ranking "
                      "is used", name, exc)
            return None

    def _kill(self, name: str, ranking: tuple[Decision, float] | None, stalled: float,
              reason: str) -> IncidentRecord:
        handler = self.handler
        rule = handler.rule(name)
        clock = handler.clock
        wall = clock.wall()
        draft = RecordBuilder(id=f"{int(wall)}-stall-{self.actions + 1}", rule=name,
                              domain=rule.domain,
                              trigger=_trigger.stall(stalled, reason, rule.domain),
                              dry_run=False, notified=clock.monotonic(), started=None,
                              started_at=wall, policy=handler.policies[name].name)
        fresh = self._decide_now(name, str(draft.trigger))
        draft.decided = clock.monotonic()
        if fresh is not None:
            decision, candidates = fresh
            note = "decided afresh by the stall watchdog thread (the event loop had stalled)"
        elif ranking is None:
            decision, candidates = Decision("none", (), ()), ()
            note = "no fresh decision could be made and there was no ranking: nothing done"
        else:
            decision, candidates = ranking[0], ()
            note = (f"the last ranking, {draft.notified - ranking[1]:.1f} s old, acted on by "
                    "the stall watchdog thread (no fresh decision could be made)")
        domain = handler.hierarchy.cgroup(rule.domain)
        before = if_readable(domain.memory_current)
        actions: list[ActionResult] = []
        processes = handler.processes
        for victim in decision.victims:
            if victim.whole or victim.pid is None:
                result, handles = kill_cgroup(handler.hierarchy, victim, processes)
            else:
                result, handle = kill_process(handler.hierarchy, victim, processes)
                handles = [] if handle is None else [handle]
                if handle is not None:  # in this thread: it is not the event loop
                    ms, released = release_process(processes, handle)
                    result = attrs.evolve(result, detail=f"{result.detail}; {released}",
                                          mrelease_ms=ms)
            actions.append(result)
            if not result.ok:
                for h in handles:
                    processes.close(h)
                continue
            draft.kill_at = clock.monotonic()
            if self._wait_gone(handler, victim.cgroup, handles, processes,
                               whole=victim.whole, seconds=rule.confirm_timeout):
                draft.gone_at = clock.monotonic()
            for h in handles:
                processes.close(h)
            break
        return draft.build(Decision(decision.policy, decision.victims, (*decision.notes, note)),
                           candidates=candidates, actions=actions, memory_before=before,
                           memory_after=if_readable(domain.memory_current))

    @staticmethod
    def _wait_gone(handler: Handler, cgroup: str, handles: list[int],
                   processes: ProcessControl, *, whole: bool, seconds: float) -> bool:
        """In the thread, the loop being stalled: whether the pidfds became readable, or
        the cgroup unpopulated (polled every 10 ms for this one action), within ``seconds``
        of real time (the watchdog's own: it runs because the loop does not)."""
        deadline = time.monotonic() + seconds
        if handles and isinstance(processes, Pidfds):  # real pidfds: readable when gone
            poller = select.poll()
            for h in handles:
                poller.register(h, select.POLLIN)
            left = set(handles)
            while left and time.monotonic() < deadline:
                for fd, _ in poller.poll(10):
                    left.discard(fd)
                    poller.unregister(fd)
            return not left
        if not whole:
            return False
        target = handler.hierarchy.cgroup(cgroup)
        while time.monotonic() < deadline:
            try:
                if not target.cgroup_events().populated:
                    return True
            except CgoomError:
                return True  # removed: gone
            time.sleep(0.01)
        return False


def if_readable(read: Callable[[], int]) -> int | None:
    try:
        return read()
    except CgoomError:
        return None
