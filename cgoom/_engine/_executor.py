"""The executor: carries out a rule's action on a victim and confirms it. Kill (a cgroup
whole, or one process), graceful (SIGTERM, a grace, SIGKILL), freeze, reclaim, raise and
lower a limit; confirmation by ``populated 0`` (told by the handler), pidfds and the process
connector, with the forks racing a whole kill killed too.

Owns the process connector and taskstats listeners, the kills being watched, the waits for
``populated 0``, the cgroups it froze and the limits it raised (both put back by
:meth:`Executor.restore`). Touches the victims (signals, cgroup.kill, cgroup.freeze,
memory.reclaim, memory.max/high and the overlimit xattr); a write that may reclaim goes
through the engine's writer thread, the kill itself is a direct write (a ``cgroup.kill``
write returns in about a millisecond: DESIGN.md principle 3).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import signal
import time
from collections.abc import Iterable, Sequence

import attrs

from .._decide._policy import Victim
from .._errors import CgoomError
from .._kernel._cgroup import OVERLIMIT_XATTR, if_supported
from .._kernel._clock import Clock, Timer
from .._kernel._hierarchy import Hierarchy
from .._kernel._linux import ProcessFeatures, process_features
from .._kernel._meminfo import read_meminfo
from .._kernel._netlink import ProcConnector, ProcessFork, ProcEvent, load, now_ns
from .._kernel._parse import format_size
from .._kernel._taskstats import ExitStats, MemoryStall, delay_accounting, family_id
from .._kernel._worker import Worker, WorkerPool
from ._actions import (
    ActionResult,
    Pidfds,
    ProcessControl,
    freeze_cgroup,
    kill_cgroup,
    kill_opened,
    open_victim,
    reclaim_cgroup,
    release_process,
    signal_in_subtree,
    terminate_cgroup,
    terminate_process,
)
from ._rules import Rule
from ._setup import SetUp
from ._undo import UndoLog

log = logging.getLogger("cgoom")

#: ``(result, action time, gone time)``: monotonic seconds, ``None`` where it did not happen.
Outcome = tuple[ActionResult, float | None, float | None]

#: From this kernel on, a fork cannot escape ``cgroup.kill`` (b69bb476dee9, 6.14): before
#: it, a child forked while the kill runs may survive it, and only the process connector's
#: fork event lets cgoom kill it (:meth:`Executor._kill_straggler`). The default
#: ``proc_events`` follows the connector only before it.
FORK_SAFE_KILL = (6, 14)

#: Threads that run ``process_mrelease`` for the processes killed (two: a second incident's
#: kill is not queued behind the first's release; lmkd reaps in a pool for the same reason).
REAPERS = 2


class KillWatch:
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


def kill_path(features: ProcessFeatures) -> str:
    """The set-up line saying how processes are killed on this kernel."""
    identity = ("identity checked by the pidfd's own cgroup id (PIDFD_GET_INFO)"
                if features.pidfd_get_info else
                "identity checked by /proc/PID/stat and /proc/PID/cgroup (the pidfd's own "
                "cgroup id, PIDFD_GET_INFO, needs Linux 6.13)")
    release = (f"their memory freed by process_mrelease in {REAPERS} reaper threads"
               if features.process_mrelease else
               "their memory freed by their exit alone (process_mrelease needs Linux 5.15)")
    return f"processes are killed through pidfds, {identity}; {release}"


class Executor:
    """Acts on victims in ``hierarchy``; ``processes``: how processes are signalled (``None``
    until a rule needs it); ``proc_events``: follow the process connector."""

    def __init__(self, hierarchy: Hierarchy, *, writer: Worker, clock: Clock,
                 processes: ProcessControl | None, proc_events: bool,
                 undo: UndoLog | None = None) -> None:
        self.hierarchy = hierarchy
        #: Where a freeze and a raised limit are noted before they are made (durably).
        self.undo = undo if undo is not None else UndoLog(hierarchy)
        self.writer = writer
        self.clock = clock
        self.processes = processes
        self._connector = ProcConnector(self._on_proc_event) if proc_events else None
        self._exit_stats: ExitStats | None = None
        self._watches: list[KillWatch] = []
        self._gone: dict[str, list[asyncio.Future[float]]] = {}
        #: Cgroups frozen by a ``freeze`` action, thawed when the handler stops.
        self.frozen: list[str] = []
        #: Domains whose memory.max a ``raise-limit`` action raised: what to put back.
        self.raised: dict[str, tuple[int, int | str, str | None]] = {}
        self._timers: dict[str, Timer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: Where ``process_mrelease`` runs, off the event loop; started with the listeners,
        #: before any incident (a thread started at OOM time costs 125-490 ms).
        self.reapers = WorkerPool("cgoom-reaper", REAPERS, start=False)
        self.closed = False

    # --- set-up ---------------------------------------------------------------------------

    async def open_listeners(self, setup: SetUp) -> None:
        """The process connector and taskstats, where a rule signals processes; what could
        not be opened is said in ``setup``. Starts the reaper threads where processes are
        killed, and says how."""
        if self.processes is not None:
            self.reapers.start()
        if isinstance(self.processes, Pidfds):
            setup.say(kill_path(process_features()))
        if self._connector is None or self.processes is None:
            self._connector = None
            return
        try:
            # pyroute2 is slow to import (8-10 s in the emulated VM): in the worker, now,
            # never at OOM time.
            await self.writer.run(load)
            self._connector.open(asyncio.get_running_loop())
        except (ImportError, OSError) as exc:
            setup.say(f"the process connector is not followed ({exc}): kills are confirmed "
                      "by populated 0 and pidfds alone; it needs root and CAP_NET_ADMIN")
            self._connector = None
            return
        # taskstats at exit, for the memory stall of the processes killed: only where the
        # kernel accounts delays (else they would all read 0).
        if delay_accounting(self.hierarchy.proc_root) is False:
            setup.say("memory stalls of killed processes are not recorded: delay accounting "
                      "is off (sysctl kernel.task_delayacct=1, or boot with delayacct)")
            return
        try:
            family = await self.writer.run(family_id)
            stats = ExitStats(self._on_stall)
            stats.open(asyncio.get_running_loop(), family)
        except Exception as exc:  # pyroute2's errors are its own: say, and go on without
            setup.say(f"memory stalls of killed processes are not recorded: taskstats: {exc}")
            return
        self._exit_stats = stats

    def _on_stall(self, is_process: bool, stall: MemoryStall) -> None:
        for watch in self._watches:
            watch.stall(is_process, stall)

    def _on_proc_event(self, event: ProcEvent) -> None:
        for watch in self._watches:
            child = watch.see(event)
            if child is not None:
                self._kill_straggler(watch, child)

    def _kill_straggler(self, watch: KillWatch, pid: int) -> None:
        """A process forked during a whole kill: SIGKILL it too if it is (checked with its
        pidfd open) inside the victim's subtree and not ``oom_score_adj`` -1000. Before 6.14
        such a fork can escape ``cgroup.kill`` (b69bb476dee9), and ``populated 0`` would
        never come."""
        assert self.processes is not None
        if watch.cgroup is None:
            return
        # The child of a spared (-1000) process is spared too, as the kernel would.
        handle, _spared = signal_in_subtree(self.hierarchy, self.processes, pid, watch.cgroup,
                                            self.processes.kill)
        if handle is not None:
            self.processes.close(handle)
            watch.raced.append(pid)

    def emptied(self, cgroup: str, when: float) -> None:
        """``cgroup`` reads ``populated 0`` (the handler's watcher saw it at ``when``)."""
        for future in self._gone.pop(cgroup, []):
            if not future.done():
                future.set_result(when)

    def _await_empty(self, cgroup: str) -> asyncio.Future[float]:
        gone: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._gone.setdefault(cgroup, []).append(gone)
        return gone

    def _unwait(self, cgroup: str, gone: asyncio.Future[float]) -> None:
        waiting = self._gone.get(cgroup, [])
        if gone in waiting:
            waiting.remove(gone)

    # --- the actions ----------------------------------------------------------------------

    async def act(self, rule: Rule, victim: Victim) -> Outcome:
        """Carry out the rule's action on ``victim``: (result, action time, gone time)."""
        if rule.action == "freeze":
            self.undo.before(victim.cgroup, "cgroup.freeze", "0")
            result = freeze_cgroup(self.hierarchy, victim)
            if result.ok:
                self.frozen.append(victim.cgroup)
            else:
                self.undo.forget(victim.cgroup, "cgroup.freeze")
            return result, self.clock.monotonic() if result.ok else None, None
        if rule.action == "reclaim":
            assert rule.reclaim is not None
            amount, swappiness = rule.reclaim, rule.reclaim_swappiness
            result = await self.writer.run(
                lambda: reclaim_cgroup(self.hierarchy, victim, amount, swappiness))
            return result, self.clock.monotonic() if result.ok else None, None
        if rule.action == "graceful":
            return await self._graceful(rule, victim)
        return await self.kill(rule, victim)

    async def _graceful(self, rule: Rule, victim: Victim) -> Outcome:
        """SIGTERM, up to ``rule.grace`` seconds for it to end, then SIGKILL."""
        assert self.processes is not None
        if victim.whole:
            gone = self._await_empty(victim.cgroup)
            result = terminate_cgroup(self.hierarchy, victim, self.processes)
            sent_at = self.clock.monotonic()
            if result.ok:
                with contextlib.suppress(TimeoutError):
                    ended = await self.clock.wait_for(asyncio.shield(gone), rule.grace)
                    return attrs.evolve(result, detail=result.detail + "; populated 0 within "
                                        "the grace period",
                                        confirmed_ms=(ended - sent_at) * 1000), sent_at, ended
            self._unwait(victim.cgroup, gone)
            if not result.ok and "not signalled" in result.detail:
                return result, None, None
        else:
            result, handle = terminate_process(self.hierarchy, victim, self.processes)
            if handle is None:
                return result, None, None
            sent_at = self.clock.monotonic()
            exited = await self._await_exits([handle], rule.grace)
            if exited is not None:
                return attrs.evolve(result, detail=result.detail + "; exited within the grace "
                                    "period", confirmed_ms=(exited - sent_at) * 1000), \
                    sent_at, exited
        killed, at, ended_at = await self.kill(rule, victim)
        return attrs.evolve(killed, detail=f"{result.detail}; still there after {rule.grace} "
                            f"s: {killed.detail}",
                            graced_ms=_since(sent_at, at) if result.ok else None), at, ended_at

    async def kill(self, rule: Rule, victim: Victim) -> Outcome:
        """Kill ``victim`` and wait for it to be gone: (result, kill time, gone time), with
        what the process connector saw of it in the detail."""
        held: list[KillWatch] = []
        result, at, gone = await self._kill_and_wait(rule, victim, now_ns(), held)
        watch = held[0] if held else None
        if watch is None:
            return result, at, gone
        try:
            if gone is not None and not watch.all_exited.done():
                # populated 0 can be told before the last exit event is sent (cgroup_exit
                # comes before proc_exit_connector in do_exit): a moment for it.
                with contextlib.suppress(TimeoutError):
                    await self.clock.wait_for(asyncio.shield(watch.all_exited), 0.05)
        finally:
            self._watches.remove(watch)
        return attrs.evolve(result, detail=result.detail + watch.summary(),
                            stalls=tuple(s for _, s in watch.stalls.values())), at, gone

    def _watch(self, result: ActionResult, since: int, whole: bool,
               held: list[KillWatch]) -> None:
        if self._connector is not None and result.ok and result.pids:
            watch = KillWatch(result.pids, since, result.cgroup if whole else None,
                              asyncio.get_running_loop())
            self._watches.append(watch)
            held.append(watch)

    async def _kill_and_wait(self, rule: Rule, victim: Victim, since: int,
                             held: list[KillWatch]) -> Outcome:
        if victim.whole:
            gone = self._await_empty(victim.cgroup)
            result, handles = kill_cgroup(self.hierarchy, victim, self.processes)
            kill_at = self.clock.monotonic()
            self._watch(result, since, True, held)
            if handles or not result.ok:
                self._unwait(victim.cgroup, gone)
            if not result.ok:
                return result, None, None
            if handles:  # -1000 processes were spared: populated 0 will not come
                exits = await self._await_exits(handles, rule.confirm_timeout,
                                                self._release(handles))
                if exits is None:
                    return attrs.evolve(result, detail=result.detail + f"; not all gone after "
                                        f"{rule.confirm_timeout} s"), kill_at, None
                return attrs.evolve(result, detail=result.detail + "; the killed exited",
                                    confirmed_ms=(exits - kill_at) * 1000), kill_at, exits
            try:
                empty_at = await self.clock.wait_for(gone, rule.confirm_timeout)
            except TimeoutError:
                return attrs.evolve(result, detail=result.detail + f"; not empty after "
                                    f"{rule.confirm_timeout} s"), kill_at, None
            return attrs.evolve(result, detail=result.detail + "; populated 0",
                                confirmed_ms=(empty_at - kill_at) * 1000), kill_at, empty_at
        assert self.processes is not None
        handle, refused, identity = open_victim(self.hierarchy, victim, self.processes)
        if handle is None:
            assert refused is not None
            return refused, None, None
        result, kept, releasing = await self._kill_in_reaper(victim, handle, identity)
        kill_at = self.clock.monotonic()
        self._watch(result, since, False, held)
        if kept is None:
            return result, (kill_at if result.ok else None), None
        handle = kept
        gone_at = await self._await_exits([handle], rule.confirm_timeout, [releasing])
        released_ms, released = await self._released(releasing, rule.confirm_timeout)
        result = attrs.evolve(result, detail=f"{result.detail}; {released}",
                              mrelease_ms=released_ms)
        if gone_at is None:
            return attrs.evolve(result, detail=result.detail + f"; not gone after "
                                f"{rule.confirm_timeout} s"), kill_at, None
        return attrs.evolve(result, detail=result.detail + "; exited (pidfd readable)",
                            confirmed_ms=(gone_at - kill_at) * 1000), kill_at, gone_at

    async def _kill_in_reaper(self, victim: Victim, handle: int, identity: str,
                              ) -> tuple[ActionResult, int | None,
                                         asyncio.Future[tuple[float | None, str]]]:
        """SIGKILL through ``handle`` (checked on the loop by ``open_victim``) and at once
        ``process_mrelease``, both in a reaper thread (module docstring of ``_actions``:
        from the loop, the victim's own exit wins the race and the memory comes back later).
        Returns once the signal is sent: the result, the handle (``None`` if the process had
        exited) and the release still running."""
        processes = self.processes
        assert processes is not None
        signalled: concurrent.futures.Future[tuple[ActionResult, int | None]] = \
            concurrent.futures.Future()

        def kill_and_release() -> tuple[float | None, str]:
            try:
                result, kept = kill_opened(victim, processes, handle, identity)
            except BaseException as exc:
                signalled.set_exception(exc)
                raise
            signalled.set_result((result, kept))
            if kept is None:
                return None, "not killed: nothing to release"
            return release_process(processes, kept)

        releasing = asyncio.wrap_future(self.reapers.submit(kill_and_release))
        sent = asyncio.wrap_future(signalled)
        try:
            # Shielded: the thread goes on whatever happens here (the signal may be sent).
            result, kept = await asyncio.shield(sent)
        except asyncio.CancelledError:  # the handler stops meanwhile: close it afterwards

            def close(_: object) -> None:
                if not sent.cancelled() and sent.exception() is None:
                    leftover = sent.result()[1]
                    if leftover is not None:
                        processes.close(leftover)

            releasing.add_done_callback(close)
            raise
        return result, kept, releasing

    def _release(self, handles: list[int],
                 ) -> list[asyncio.Future[tuple[float | None, str]]]:
        """``process_mrelease`` for each killed process, in the reaper threads; the loop
        goes on at once. The handles stay open until each release is done (see
        :meth:`_close`)."""
        processes = self.processes
        assert processes is not None
        return [asyncio.wrap_future(self.reapers.submit(
            functools.partial(release_process, processes, h))) for h in handles]

    async def _released(self, releasing: asyncio.Future[tuple[float | None, str]],
                        seconds: float) -> tuple[float | None, str]:
        """What a release did, for the record: waited for up to ``seconds`` (it is usually
        over by the time the exit is confirmed)."""
        if not await self.clock.wait([releasing], seconds):
            return None, f"process_mrelease still running after {seconds} s"
        try:
            return releasing.result()
        except Exception as exc:  # a ProcessControl's own failure: said, not raised
            return None, f"process_mrelease failed: {exc!r}"

    async def _await_exits(self, handles: list[int], seconds: float,
                           releasing: Sequence[asyncio.Future[tuple[float | None, str]]] = (),
                           ) -> float | None:
        """When every process behind ``handles`` has exited (the last one's time), or
        ``None`` after ``seconds``; the handles are closed either way, each once its
        ``releasing`` (if any) is done."""
        loop = asyncio.get_running_loop()
        assert self.processes is not None
        futures = [self._readable(loop, h) for h in handles]
        try:
            done = await self.clock.wait(futures, seconds)
            return max(f.result() for f in futures) if len(done) == len(futures) else None
        finally:
            for handle in handles:
                loop.remove_reader(handle)
            self._close(handles, releasing)

    def _close(self, handles: list[int],
               releasing: Sequence[asyncio.Future[tuple[float | None, str]]]) -> None:
        """Close ``handles`` now, or once the releases still running on them end: a handle
        closed under a queued release could be a new pidfd by then (fd numbers are reused)."""
        processes = self.processes
        assert processes is not None
        running = [f for f in releasing if not f.done()]
        for f in releasing:
            if f.done() and not f.cancelled():
                f.exception()  # seen: never "exception was never retrieved"

        def close(_: object = None) -> None:
            for handle in handles:
                processes.close(handle)

        if not running:
            close()
        else:
            asyncio.gather(*running, return_exceptions=True).add_done_callback(close)

    def _readable(self, loop: asyncio.AbstractEventLoop, handle: int) -> asyncio.Future[float]:
        """A future set (to the clock's time) when ``handle`` becomes readable."""
        future: asyncio.Future[float] = loop.create_future()

        def ready() -> None:
            loop.remove_reader(handle)
            if not future.done():
                future.set_result(self.clock.monotonic())

        loop.add_reader(handle, ready)
        return future

    # --- raising a limit ------------------------------------------------------------------

    async def raise_limit(self, rule: Rule) -> ActionResult:
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
            self.undo.before(domain.path, "memory.max", str(limit))
            if high != "max":
                self.undo.before(domain.path, "memory.high", str(high))
            self.undo.before(domain.path, OVERLIMIT_XATTR, mark)
            domain.set_memory_max(limit + by)
            if high != "max":
                domain.set_memory_high(high + by)
            try:
                domain.set_xattr(OVERLIMIT_XATTR, "1")
            except CgoomError as exc:
                return f"; not marked overlimit: {exc}"
            return f"; marked {OVERLIMIT_XATTR}"

        try:
            note = await self.writer.run(write)
        except CgoomError as exc:
            return ActionResult("raise-limit", rule.domain, None, False, f"not raised: {exc}")
        if rule.domain not in self.raised:
            self.raised[rule.domain] = (limit, high, mark)
        self._schedule_lower(rule)
        return ActionResult("raise-limit", rule.domain, None, True,
                            f"memory.max raised {format_size(limit)} -> "
                            f"{format_size(limit + by)}{note}; put back once usage fits",
                            syscall_ms=(time.perf_counter() - started) * 1000)

    def _schedule_lower(self, rule: Rule) -> None:
        """Look again after the rule's cooldown (a timer while a limit is raised; nothing
        runs otherwise)."""
        if rule.domain in self._timers or self.closed:
            return

        def again(_task: object) -> None:
            if rule.domain in self.raised:
                self._schedule_lower(rule)

        def due() -> None:
            self._timers.pop(rule.domain, None)
            task = asyncio.get_running_loop().create_task(self._lower(rule.domain))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(again)

        self._timers[rule.domain] = self.clock.call_later(max(rule.cooldown, 1.0), due)

    async def _lower(self, path: str, *, final: bool = False) -> None:
        """Put a raised limit back if the cgroup's usage fits under it again (never below
        usage: that would reclaim at once or call the kernel's OOM killer)."""
        limit, high, mark = self.raised[path]
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
            for file in ("memory.max", "memory.high", OVERLIMIT_XATTR):
                self.undo.forget(path, file)

        try:
            await self.writer.run(write)
        except CgoomError as exc:
            log.warning("cgoom handler: could not put back the limits of %s: %s", path, exc)
        del self.raised[path]

    # --- the end --------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Stop the timers and listeners (what was changed stays until :meth:`restore`)."""
        self.closed = True
        for timer in self._timers.values():
            timer.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._connector is not None:
            self._connector.close()
        if self._exit_stats is not None:
            self._exit_stats.close()
        self.reapers.close()  # each ends once the releases queued on it are done

    async def restore(self) -> None:
        """Thaw what it froze, put back the limits it raised (where usage fits)."""
        while self.frozen:
            path = self.frozen.pop()
            try:
                self.hierarchy.cgroup(path).thaw()
                self.undo.forget(path, "cgroup.freeze")
            except CgoomError as exc:
                log.warning("cgoom handler: could not thaw %s: %s", path, exc)
        for path in list(self.raised):
            await self._lower(path, final=True)


def _since(start: float, end: float | None) -> float | None:
    return None if end is None else (end - start) * 1000
