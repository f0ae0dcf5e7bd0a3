"""What a watcher delivers: frozen event records, and the pure logic that derives them.

Every event carries ``cgroup`` (its path below the mount, ``"/lab/batch"``; ``None`` for the
system-wide PSI file) and ``time`` (``time.monotonic()`` when cgoom read the kernel).

Counters are diffed, never trusted per notification: the kernel coalesces bursts within its
10-16 ms per-file rate limit into one trailing notification, so one event may stand for many
kernel events: ``delta`` says how many.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import attrs

from .._kernel._types import CgroupEvents, MemoryEvents, SwapEvents, frozen_mapping


def counters(record: MemoryEvents | SwapEvents) -> dict[str, int]:
    """The counters of a record as a dict: fields the kernel has, then ``extra``."""
    result = {
        a.name: getattr(record, a.name)
        for a in attrs.fields(type(record))
        if a.name != "extra" and getattr(record, a.name) is not None
    }
    result.update(record.extra)
    return result


def counter_delta(old: Mapping[str, int], new: Mapping[str, int]) -> dict[str, int] | None:
    """How much each counter rose (only those that moved), or ``None`` when one went *down*:
    counters are monotonic for a cgroup's life, so that is a different cgroup under the same
    name (removed and re-created between two reads), and ``new`` must be taken whole."""
    delta: dict[str, int] = {}
    for key, value in new.items():
        before = old.get(key, 0)
        if value < before:
            return None
        if value > before:
            delta[key] = value - before
    return delta


def _format_delta(delta: Mapping[str, int]) -> str:
    return ", ".join(f"{k} +{v}" for k, v in delta.items())


@attrs.frozen
class MemoryEventsChanged:
    """``memory.events`` (or ``.local`` with ``local=True``) counters moved.

    ``delta`` holds only the counters that rose, by how much: ``{"high": 37, "oom_kill": 1}``.
    """

    cgroup: str
    local: bool
    delta: Mapping[str, int] = attrs.field(converter=frozen_mapping)
    totals: MemoryEvents
    time: float

    def __str__(self) -> str:
        name = "memory.events.local" if self.local else "memory.events"
        return f"{self.cgroup} {name}: {_format_delta(self.delta)}"


@attrs.frozen
class SwapEventsChanged:
    """``memory.swap.events`` counters moved (``high``, ``max``, ``fail``)."""

    cgroup: str
    delta: Mapping[str, int] = attrs.field(converter=frozen_mapping)
    totals: SwapEvents
    time: float

    def __str__(self) -> str:
        return f"{self.cgroup} memory.swap.events: {_format_delta(self.delta)}"


@attrs.frozen
class CgroupStateChanged:
    """``cgroup.events`` changed: ``populated`` or ``frozen`` flipped.

    Within one rate-limit window a state can flip and flip back; only the state read
    afterwards is seen (the kernel's notification is coalesced, not queued).
    """

    cgroup: str
    state: CgroupEvents
    previous: CgroupEvents
    time: float

    def __str__(self) -> str:
        return (f"{self.cgroup} cgroup.events: populated {int(self.state.populated)}"
                f"{'' if self.state.frozen is None else f', frozen {int(self.state.frozen)}'}")


@attrs.frozen
class CgroupCreated:
    """A cgroup appeared in a watched subtree (and is now watched)."""

    cgroup: str
    time: float

    def __str__(self) -> str:
        return f"{self.cgroup} created"


@attrs.frozen
class ControllersChanged:
    """Someone wrote ``cgroup.subtree_control`` of ``cgroup``: its children's controller
    files may have been removed and made anew. Disabling the memory controller there removes
    the children's memory.* files; enabling it again makes new ones at their defaults
    (memory.high and memory.max ``max``, memory.oom.group 0, counters from 0). The watcher
    has already watched the new files of the children (``children``) and read their
    baselines; whoever set those values must set them again."""

    cgroup: str
    children: tuple[str, ...]
    time: float

    def __str__(self) -> str:
        return f"{self.cgroup} cgroup.subtree_control written ({len(self.children)} children)"


@attrs.frozen
class CgroupRemoved:
    """A watched cgroup was removed; nothing more will come from it."""

    cgroup: str
    time: float

    def __str__(self) -> str:
        return f"{self.cgroup} removed"


@attrs.frozen
class Resynchronized:
    """Events were lost, so state must be re-read: the kernel's inotify queue overflowed
    (IN_Q_OVERFLOW; the watcher then re-reads the whole subtree and the events it finds
    follow this one), or the consumer of ``async for`` fell so far behind that the
    watcher's own queue was full (its queued events were dropped)."""

    reason: str
    time: float

    def __str__(self) -> str:
        return f"resynchronized: {self.reason}"


@attrs.frozen
class WatchFailed:
    """A cgroup in a watched subtree could not be watched (``reason`` says why, e.g. the
    inotify watch limit): its events are not reported until a retry succeeds (when watches
    are freed, or at a resync). Every other cgroup is still watched."""

    cgroup: str
    reason: str
    time: float

    def __str__(self) -> str:
        return f"{self.cgroup} not watched: {self.reason}"


PressureKind = Literal["some", "full"]


@attrs.frozen
class PressureTrigger:
    """A PSI trigger: notify when tasks stalled at least ``stall_us`` within any
    ``window_us`` (Documentation/accounting/psi.rst). ``some``: at least one task stalled;
    ``full``: all non-idle tasks stalled at once."""

    kind: PressureKind
    stall_us: int
    window_us: int

    @classmethod
    def percent(cls, kind: PressureKind, percent: float, window_s: float = 1.0) -> PressureTrigger:
        """``PressureTrigger.percent("some", 40, 1.0)``: 40% of a 1 s window stalled."""
        window_us = round(window_s * 1_000_000)
        return cls(kind, max(1, round(window_us * percent / 100)), window_us)

    def line(self) -> str:
        """What is written to the pressure file; the newline is required: /proc/pressure's
        psi_write() overwrites the last byte written with NUL."""
        return f"{self.kind} {self.stall_us} {self.window_us}\n"

    def __str__(self) -> str:
        return f"{self.kind} {self.stall_us}us/{self.window_us}us"


@attrs.frozen
class SustainedPressure:
    """A rule: "``kind`` stall above ``percent`` % for ``duration_s`` seconds".

    Built on a PSI trigger of ``percent`` % of ``window_s``: while the stall lasts the kernel
    fires about once per window; the rule holds when firings continue, with no gap longer
    than two windows, for ``duration_s``. It needs no timer: an idle watcher stays idle.
    """

    kind: PressureKind
    percent: float
    duration_s: float
    window_s: float = 1.0

    @property
    def trigger(self) -> PressureTrigger:
        return PressureTrigger.percent(self.kind, self.percent, self.window_s)

    def __str__(self) -> str:
        return f"{self.kind} > {self.percent:g}% for {self.duration_s:g}s"


@attrs.frozen
class PressureTriggered:
    """A PSI trigger fired: the stall threshold was crossed within the window."""

    cgroup: str | None
    trigger: PressureTrigger
    time: float

    def __str__(self) -> str:
        return f"{self.cgroup or 'system'} memory pressure: {self.trigger}"


@attrs.frozen
class PressureSustained:
    """A :class:`SustainedPressure` rule held: pressure above the threshold since ``since``."""

    cgroup: str | None
    rule: SustainedPressure
    since: float
    time: float

    def __str__(self) -> str:
        return f"{self.cgroup or 'system'} memory pressure sustained: {self.rule}"


@attrs.frozen
class PressureTriggerEnded:
    """A PSI trigger stopped for good: its cgroup was removed (EPOLLERR), or the watcher
    dropped it when it saw the removal."""

    cgroup: str | None
    trigger: PressureTrigger
    reason: str
    time: float

    def __str__(self) -> str:
        return f"{self.cgroup or 'system'} pressure trigger {self.trigger} ended: {self.reason}"


#: Whatever a watcher yields: one of the event records above.
Event = (
    MemoryEventsChanged
    | SwapEventsChanged
    | CgroupStateChanged
    | CgroupCreated
    | CgroupRemoved
    | ControllersChanged
    | Resynchronized
    | WatchFailed
    | PressureTriggered
    | PressureSustained
    | PressureTriggerEnded
)


@attrs.define
class SustainedState:
    """The pure state of one :class:`SustainedPressure` rule, fed the trigger's firings."""

    rule: SustainedPressure
    started: float | None = None
    last: float | None = None

    def fired(self, now: float) -> float | None:
        """Record a firing at ``now``. When the rule holds, return when the pressure began
        (counting then restarts, so lasting pressure yields one event per ``duration_s``)."""
        if self.last is None or now - self.last > 2 * self.rule.window_s:
            self.started = now
        self.last = now
        started = self.started if self.started is not None else now
        if now - started >= self.rule.duration_s:
            self.started = now
            return started
        return None


# Some facts about PSI trigger limits (kernel/sched/psi.c psi_trigger_create; psi.rst):
# - threshold 1..window; window at most 10 s (WINDOW_MAX_US).
# - Linux <= 6.4: window at least 500 ms (WINDOW_MIN_US); 6.5 removed the minimum (519fabc7aaba).
# - Linux >= 6.5 without CAP_SYS_RESOURCE (the *opener's*): window a multiple of 2 s
#   (d82caa273565); such triggers are only evaluated by the 2 s averaging worker.
# - One trigger per open file; a second write to the same fd is EBUSY.
WINDOW_MAX_US = 10_000_000
WINDOW_MIN_US_BEFORE_6_5 = 500_000
UNPRIVILEGED_WINDOW_MULTIPLE_US = 2_000_000


def trigger_problem(
    trigger: PressureTrigger, *, kernel: tuple[int, int], privileged: bool
) -> str | None:
    """Why the kernel would refuse ``trigger`` (``None`` if it would not)."""
    if trigger.kind not in ("some", "full"):
        return f"kind must be 'some' or 'full', not {trigger.kind!r}"
    if not 0 < trigger.window_us <= WINDOW_MAX_US:
        return f"the window must be more than 0 and at most 10 s, not {trigger.window_us} us"
    if kernel < (6, 5) and trigger.window_us < WINDOW_MIN_US_BEFORE_6_5:
        return (f"the window must be at least 500 ms before Linux 6.5 (this is "
                f"{kernel[0]}.{kernel[1]}), not {trigger.window_us} us")
    if (kernel >= (6, 5) and not privileged
            and trigger.window_us % UNPRIVILEGED_WINDOW_MULTIPLE_US):
        return ("without CAP_SYS_RESOURCE, Linux 6.5+ accepts only windows that are multiples "
                f"of 2 s, not {trigger.window_us} us")
    if not 0 < trigger.stall_us <= trigger.window_us:
        return (f"the stall threshold must be from 1 us to the window ({trigger.window_us} us),"
                f" not {trigger.stall_us} us")
    return None
