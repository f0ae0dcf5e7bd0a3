"""``IncidentRecord``: what the engine emits for every incident, frozen and JSON-ready.

Distinct from :class:`cgoom.Incident`, which is what a policy is *asked* about: the record
says what happened: the rule and the event that fired it, the candidates as the policy saw
them, the decision with its reasons and notes, each action and its outcome, the timings of
each step, and the domain's memory before and after.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

import attrs

from .._decide._candidates import CgroupSnapshot
from .._decide._policy import Decision
from .._kernel._kmsg import KernelOomKill
from .._kernel._parse import format_size
from ._actions import ActionResult
from ._firstchance import FirstChanceOutcome
from ._freed import FreedSample, describe, settled_at
from ._trigger import Trigger, as_trigger

#: Actions that kill a victim (or end it gracefully), counted as kills.
KILLING = ("kill", "terminate")


@attrs.frozen
class Timings:
    """Milliseconds, each from the kernel's notification as read (``notified``, monotonic
    seconds) unless said otherwise. ``None`` where the step did not happen."""

    notified: float
    snapshot_ms: float
    decision_ms: float
    #: Notification to the kill syscall (cgroup.kill written, or the signal sent).
    kill_ms: float | None = None
    #: Notification to the victim gone (populated 0, or its pidfd readable).
    confirmed_ms: float | None = None
    #: Notification to the incident's start: the engine's dispatch (the watcher's reading
    #: of the event, the rule's check, the incident's task first run); the snapshot follows.
    started_ms: float | None = None


@attrs.frozen
class IncidentRecord:
    """One incident, as the engine saw and handled it (``to_json()``: one JSON line)."""

    id: str
    rule: str
    domain: str
    #: Why the rule fired: a :class:`cgoom.Trigger` (``str()`` of it is the log line).
    trigger: Trigger = attrs.field(converter=as_trigger)
    #: Events of the rule that arrived while it was being handled, folded into it.
    folded: int
    dry_run: bool
    decision: Decision
    candidates: tuple[CgroupSnapshot, ...]
    actions: tuple[ActionResult, ...]
    timings: Timings
    memory_before: int | None
    memory_after: int | None
    #: Wall-clock time (seconds since the epoch) when the incident started.
    started_at: float
    #: The machine's MemAvailable (bytes) when the incident started and when it ended.
    available_before: int | None = None
    available_after: int | None = None
    #: What the kernel did in the domain meanwhile: its OOM kills as /dev/kmsg told them,
    #: and the domain's memory.events ``oom_kill`` delta (counted even without the log).
    kernel_kills: tuple[KernelOomKill, ...] = ()
    kernel_oom_kills: int = 0
    #: The workloads' first chance before cgoom acted (a rule's ``first_chance``): who was
    #: told, what each answered, what memory did meanwhile.
    first_chance: FirstChanceOutcome | None = None
    #: The rule's own policy: a decision by another one is the fallback's.
    policy: str | None = None
    #: The domain's memory.swap.current as the decision's snapshot read it (``None`` when
    #: the policy's fields did not include ``swap`` or ``freeable``, or without swap
    #: accounting) and at the end.
    swap_before: int | None = None
    swap_after: int | None = None
    #: What the killed victims were expected to give back: the sum of their ``freeable``
    #: (a process: its RSS) as the snapshot read it; ``None`` when one was not known or
    #: nothing was killed.
    expected_free: int | None = None
    #: The domain's memory (and swap; MemAvailable for a machine rule) sampled from just
    #: before the first action until it settled (:class:`cgoom.FreedSample`); empty when
    #: nothing was acted on.
    freed_timeline: tuple[FreedSample, ...] = ()

    def freed(self) -> str | None:
        """What came back beside what was expected, one line: ``expected to free 99.0M;
        97.5M RAM and 0B swap back in 73.9 ms`` (from the timeline: its first and last
        readings, and when it reached its last level, from just before the kill; without a
        timeline, the readings before and after and the victim gone). ``None`` when nothing
        was killed or the domain's memory was not read before and after."""
        if self.kills == 0:
            return None
        timeline = self.freed_timeline
        ram_before, ram_after = self.memory_before, self.memory_after
        swap_before, swap_after = self.swap_before, self.swap_after
        by = (f" in {self.timings.confirmed_ms:.1f} ms"
              if self.timings.confirmed_ms is not None else "")
        if timeline and timeline[0].ram is not None and timeline[-1].ram is not None:
            ram_before, ram_after = timeline[0].ram, timeline[-1].ram
            swap_before, swap_after = timeline[0].swap, timeline[-1].swap
            by = f" in {settled_at(timeline):.1f} ms"
        if ram_before is None or ram_after is None:
            return None
        parts = []
        if self.expected_free is not None:
            parts.append(f"expected to free {format_size(self.expected_free)}")
        back = f"{format_size(max(ram_before - ram_after, 0))} RAM"
        if swap_before is not None and swap_after is not None:
            back += f" and {format_size(max(swap_before - swap_after, 0))} swap"
        parts.append(f"{back} back{by}")
        return "; ".join(parts)

    @property
    def kills(self) -> int:
        """Victims killed or ended gracefully (actions that succeeded)."""
        return sum(a.ok and a.action.startswith(KILLING) for a in self.actions)

    @property
    def failed(self) -> bool:
        """The incident failed inside the engine (the record says why)."""
        return self.decision.policy == "none" and any(a.action == "error"
                                                      for a in self.actions)

    @property
    def fell_back(self) -> bool:
        """The rule's policy failed (raised, hung, lied) and the fallback decided."""
        return (self.policy is not None
                and self.decision.policy not in (self.policy, "none"))

    @property
    def victim(self) -> ActionResult | None:
        """The first action that acted on a victim (killed, terminated, froze, reclaimed
        from it), if any."""
        return next((a for a in self.actions if a.ok and a.action != "raise-limit"), None)

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True, separators=(",", ":"))

    def escalation(self) -> str | None:
        """The steps from the first notice to the victim gone, one line, in milliseconds
        from the notification: the workloads' first chance (with its reclaim target and
        what they answered), then SIGTERM, the grace, SIGKILL and the end. ``None`` when
        there was neither a first chance nor a graceful action."""
        victim, t, chance = self.victim, self.timings, self.first_chance
        graceful = victim is not None and (victim.action.startswith("terminate")
                                           or victim.graced_ms is not None)
        if chance is None and not graceful:
            return None
        steps = []
        if chance is not None:
            target = (max(chance.usage_before - chance.threshold, 0)
                      if chance.usage_before is not None and chance.threshold else None)
            answers = ", ".join(sorted({c.answer for c in chance.told}))
            steps.append(f"notice to {len(chance.told)} workload(s)"
                         + ("" if target is None else f" (free {format_size(target)})")
                         + f" at 0 ms -> {answers} by {chance.waited_ms:.0f} ms"
                         + (": memory came back" if chance.recovered else ""))
        if victim is not None and t.kill_ms is not None:
            if victim.graced_ms is not None:
                steps.append(f"SIGTERM at {t.kill_ms - victim.graced_ms:.1f} ms -> SIGKILL "
                             f"at {t.kill_ms:.1f} ms")
            elif victim.action.startswith("terminate"):
                steps.append(f"SIGTERM at {t.kill_ms:.1f} ms (ended within the grace)")
            else:
                steps.append(f"{victim.action} at {t.kill_ms:.1f} ms")
        if t.confirmed_ms is not None:
            steps.append(f"gone at {t.confirmed_ms:.1f} ms")
        return " -> ".join(steps)

    def explain(self) -> str:
        """The incident as a person reads it."""
        t = self.timings
        lines = [f"incident {self.id}: rule {self.rule!r} on {self.domain}: {self.trigger}"
                 + (f" (+{self.folded} folded)" if self.folded else "")
                 + (" [dry run]" if self.dry_run else "")]
        if self.first_chance is not None:  # it came first
            lines.append(f"  {self.first_chance.summary()}")
        lines.append(f"  policy {self.decision.policy}: {len(self.decision.victims)} "
                     f"victim(s) ranked of {len(self.candidates)} cgroup(s)")
        lines += [f"  note: {n}" for n in self.decision.notes]
        for rank, v in enumerate(self.decision.victims[:3], 1):
            what = "whole" if v.whole else f"pid {v.pid}"
            lines.append(f"  {rank}. {v.cgroup} ({what}): {v.reason}")
        for a in self.actions:
            checked = "" if a.identity is None else f" (identity by {a.identity})"
            lines.append(f"  action {a.action} {a.cgroup}"
                         f"{'' if a.pid is None else f' pid {a.pid}'}{checked}: {a.detail}")
        escalation = self.escalation()
        if escalation:
            lines.append(f"  escalation: {escalation}")
        steps = [f"snapshot {t.snapshot_ms:.1f} ms", f"decision {t.decision_ms:.1f} ms"]
        if t.started_ms is not None:
            steps.insert(0, f"started {t.started_ms:.1f} ms")
        if t.kill_ms is not None:
            steps.append(f"notification to kill {t.kill_ms:.1f} ms")
        if t.confirmed_ms is not None:
            steps.append(f"to gone {t.confirmed_ms:.1f} ms")
        lines.append("  timings: " + ", ".join(steps))
        if self.memory_before is not None:
            after = "?" if self.memory_after is None else format_size(self.memory_after)
            lines.append(f"  memory of {self.domain}: {format_size(self.memory_before)} -> "
                         f"{after}")
        freed = self.freed()
        if freed is not None:
            lines.append(f"  freed: {freed}")
        if self.freed_timeline:
            lines.append(f"  timeline: {describe(self.freed_timeline)}")
        if self.available_before is not None and self.available_after is not None:
            lines.append(f"  MemAvailable: {format_size(self.available_before)} -> "
                         f"{format_size(self.available_after)}")
        if self.kernel_oom_kills or self.kernel_kills:
            lines.append(f"  meanwhile the kernel's OOM killer: {self.kernel_oom_kills} "
                         f"oom_kill event(s) in {self.domain}")
            lines += [f"    {k}" for k in self.kernel_kills]
        return "\n".join(lines)


@attrs.define
class RecordBuilder:
    """An incident's record while the incident runs: who and why, and the clock's readings
    of each step (monotonic seconds, ``None`` until the step happens). One builder makes
    every :class:`IncidentRecord` the engine and the stall watchdog deliver."""

    id: str
    rule: str
    domain: str
    trigger: Trigger
    dry_run: bool
    #: The kernel's notification as read, and the incident's start (monotonic).
    notified: float
    started: float | None
    #: The wall clock at the start (seconds since the epoch).
    started_at: float
    policy: str | None = None
    snapshot_done: float | None = None
    decided: float | None = None
    kill_at: float | None = None
    gone_at: float | None = None

    def timings(self) -> Timings:
        def since(moment: float | None, start: float) -> float | None:
            return None if moment is None else (moment - start) * 1000

        return Timings(
            notified=self.notified,
            snapshot_ms=since(self.snapshot_done, self.notified) or 0.0,
            decision_ms=since(self.decided, self.snapshot_done or self.notified) or 0.0,
            kill_ms=since(self.kill_at, self.notified),
            confirmed_ms=since(self.gone_at, self.notified),
            started_ms=since(self.started, self.notified))

    def build(self, decision: Decision, *, candidates: Iterable[CgroupSnapshot] = (),
              actions: Iterable[ActionResult] = (), memory_before: int | None = None,
              memory_after: int | None = None, available_before: int | None = None,
              available_after: int | None = None,
              kernel_kills: Iterable[KernelOomKill] = (), kernel_oom_kills: int = 0,
              first_chance: FirstChanceOutcome | None = None, swap_before: int | None = None,
              swap_after: int | None = None, expected_free: int | None = None,
              freed_timeline: Iterable[FreedSample] = (),
              ) -> IncidentRecord:
        return IncidentRecord(
            id=self.id, rule=self.rule, domain=self.domain, trigger=self.trigger, folded=0,
            dry_run=self.dry_run, decision=decision, candidates=tuple(candidates),
            actions=tuple(actions), timings=self.timings(), memory_before=memory_before,
            memory_after=memory_after, started_at=self.started_at,
            available_before=available_before, available_after=available_after,
            kernel_kills=tuple(kernel_kills), kernel_oom_kills=kernel_oom_kills,
            first_chance=first_chance, policy=self.policy, swap_before=swap_before,
            swap_after=swap_after, expected_free=expected_free,
            freed_timeline=tuple(freed_timeline))

    def failed(self, exc: BaseException) -> IncidentRecord:
        """The record of an incident that failed inside the engine (the domain vanished
        mid-snapshot, or a bug): said, so no decision is silently lost."""
        reason = f"the incident failed: {type(exc).__name__}: {exc}"
        return self.build(Decision("none", (), (reason,)),
                          actions=(ActionResult("error", self.domain, None, False, reason),))
