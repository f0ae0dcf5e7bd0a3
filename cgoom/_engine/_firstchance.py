"""First chance for the workloads: a workload registers a handler for its cgroup with a
deadline; when a rule with ``first_chance`` fires on a domain that holds registered cgroups,
the engine tells them first (a :class:`Notice` with a reclaim target in bytes), waits up to
their deadline while watching the domain's usage, and acts only if memory has not come back
below the threshold. Before that, registrations hear the domain's levels (``low``,
``critical``: :class:`Levels`), each at most once per ``interval`` per registration.
Google's cgroup OOM handler gave each workload's own handler this chance; mem_notify and
maemo told applications to free memory "in manageable places in code".

Pure parts here (the records, the registry, the threshold); the waiting is the engine's
(``Handler._first_chance``). A handler that does not answer, answers late, raises or
answers garbage never delays the action past its deadline: each is cancelled at its
deadline and what it did is recorded.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Literal

import attrs

from .._errors import InvalidValue
from .._kernel._parse import format_size
from .._kernel._paths import normalize_path

#: The levels a registration may hear, least urgent first.
LEVELS_ALL = frozenset({"low", "critical", "oom"})
_RANK = {"low": 1, "critical": 2, "oom": 3}
#: Each level and those more urgent than it.
_AS_URGENT = {level: tuple(x for x in _RANK if _RANK[x] >= rank)
              for level, rank in _RANK.items()}


@attrs.frozen
class Notice:
    """What a registered handler is told: memory in ``domain`` is at ``level`` (``low``:
    free what you can spare; ``critical``: free everything you can; ``oom``: cgoom is
    about to act) and counts as recovered below ``threshold``; ``reclaim_target`` is how
    many bytes that takes (0 when the threshold is unknown). ``deadline``: the seconds the
    handler has, from now, before cgoom acts (a first chance); ``None`` for a notice that
    takes no answer (a level, or ``oom`` to a registration without a first chance)."""

    domain: str
    cgroup: str
    level: Literal["low", "critical", "oom"]
    usage: int | None
    threshold: int | None
    reclaim_target: int
    deadline: float | None


@attrs.frozen
class Answer:
    """A handler's answer: ``done`` (it freed what it could; ``freed`` bytes if it knows) or
    ``cannot`` (nothing to free: act now)."""

    status: Literal["done", "cannot"] = "done"
    freed: int | None = None


FirstChanceHandler = Callable[[Notice], Awaitable["Answer | None"]]


class Gone(Exception):
    """A handler's far end went before it answered (a client that disconnected or stopped
    reading): recorded as its answer, the message (``disconnected``)."""


@attrs.frozen
class FirstChance:
    """One handler's part in an incident, for the record: ``answer`` is ``done``,
    ``cannot``, ``no answer`` (its deadline passed), ``error: ...`` or ``garbage: ...``."""

    cgroup: str
    deadline: float
    answer: str
    freed: int | None = None
    #: From the notice to its answer (or to its deadline).
    answered_ms: float | None = None


@attrs.frozen
class FirstChanceOutcome:
    """What the first chance came to: who was told and answered what, the domain's usage
    before and after, and whether memory came back below the threshold (then nothing more
    is done)."""

    told: tuple[FirstChance, ...]
    threshold: int | None
    usage_before: int | None
    usage_after: int | None
    recovered: bool
    waited_ms: float

    def summary(self) -> str:
        before = "?" if self.usage_before is None else format_size(self.usage_before)
        after = "?" if self.usage_after is None else format_size(self.usage_after)
        limit = "?" if self.threshold is None else format_size(self.threshold)
        told = "; ".join(
            f"{t.cgroup}: {t.answer}" + (f", freed {format_size(t.freed)}" if t.freed else "")
            + ("" if t.answered_ms is None else f" after {t.answered_ms:.0f} ms")
            for t in self.told)
        verdict = ("memory came back below it: nothing more was done" if self.recovered
                   else "memory did not come back below it")
        return (f"first chance ({told}); usage {before} -> {after} against {limit} in "
                f"{self.waited_ms:.0f} ms: {verdict}")


@attrs.frozen
class Registration:
    cgroup: str
    handler: FirstChanceHandler
    #: Seconds of first chance; ``None``: notices only.
    deadline: float | None
    key: int
    levels: frozenset[str] = LEVELS_ALL
    #: Delivers a notice that takes no answer at once, on the loop, without a task (a
    #: server's fan-out to many clients); ``None``: ``handler`` is run as a task.
    tell: Callable[[Notice], None] | None = None


class Registry:
    """The registered handlers, by cgroup, and when each last heard each level (the rate
    limit: a level goes to a registration at most once per ``interval`` seconds, unless it
    is more urgent than the last one it heard)."""

    def __init__(self, interval: float = 10.0) -> None:
        self._items: dict[int, Registration] = {}
        self._keys = itertools.count(1)
        self._heard: dict[tuple[int, str], float] = {}
        self.interval = interval

    def register(self, cgroup: str, handler: FirstChanceHandler, deadline: float | None,
                 levels: Iterable[str] = LEVELS_ALL,
                 tell: Callable[[Notice], None] | None = None) -> Callable[[], None]:
        if not callable(handler):
            raise InvalidValue(f"first-chance handler for {cgroup}: {handler!r} is not "
                               "callable (an async function taking a Notice)",
                               value=repr(handler))
        if deadline is not None and not (isinstance(deadline, int | float)
                                         and not isinstance(deadline, bool) and deadline > 0):
            raise InvalidValue(f"first-chance deadline for {cgroup}: {deadline!r}, a number "
                               "of seconds above 0 (or None: notices only)",
                               value=repr(deadline))
        wanted = frozenset([levels] if isinstance(levels, str) else levels)
        if not wanted or not wanted <= LEVELS_ALL:
            raise InvalidValue(f"levels for {cgroup}: {sorted(wanted)!r}, some of "
                               "low, critical, oom", value=repr(levels))
        key = next(self._keys)
        self._items[key] = Registration(normalize_path(cgroup), handler,
                                        None if deadline is None else float(deadline), key,
                                        wanted, tell)

        def unregister() -> None:
            self._items.pop(key, None)
            for level in LEVELS_ALL:
                self._heard.pop((key, level), None)

        return unregister

    def __len__(self) -> int:
        return len(self._items)

    def inside(self, domain: str) -> list[Registration]:
        """The registrations for ``domain`` and its descendants, oldest first."""
        prefix = domain.rstrip("/") + "/"
        return [r for r in self._items.values()
                if r.cgroup == domain or domain == "/" or r.cgroup.startswith(prefix)]

    def due(self, reg: Registration, level: str, now: float) -> bool:
        """Whether ``reg`` is to hear ``level`` now (and note that it does): it asked for
        it, and it has not heard it, or anything more urgent, in the last ``interval``."""
        if level not in reg.levels:
            return False
        heard = self._heard
        for other in _AS_URGENT[level]:  # a loop, not any(): this runs per registration
            if now - heard.get((reg.key, other), -math.inf) < self.interval:
                return False
        heard[(reg.key, level)] = now
        return True


class Levels:
    """One domain's level, with hysteresis: it rises at once (``raise_to``), and clears
    only once usage has come back below the threshold (``settle``), which already lies
    :data:`RECOVERY_MARGIN` below where memory.high throttles. Pure."""

    def __init__(self) -> None:
        self.level: str | None = None

    def raise_to(self, level: str) -> bool:
        """``True`` when ``level`` is above the present one (a notice is due)."""
        if self.level is not None and _RANK[self.level] >= _RANK[level]:
            return False
        self.level = level
        return True

    def settle(self, usage: int | None, threshold: int | None) -> bool:
        """``True`` when the level clears now: usage is known and below ``threshold``."""
        if self.level is None or usage is None or threshold is None or usage > threshold:
            return False
        self.level = None
        return True


def level_of(delta: Mapping[str, int]) -> str | None:
    """The level a domain's hierarchical memory.events change shows: ``critical`` when a
    charge hit memory.max (``max``) or the kernel's OOM killer ran (``oom``, ``oom_kill``),
    ``low`` when memory.high throttled (``high``), else none."""
    if delta.get("max", 0) > 0 or delta.get("oom", 0) > 0 or delta.get("oom_kill", 0) > 0:
        return "critical"
    if delta.get("high", 0) > 0:
        return "low"
    return None


#: Hysteresis: a domain throttled at memory.high hovers right at it, a page below one
#: moment and above the next; it counts as recovered only this far below the threshold.
RECOVERY_MARGIN = 0.05


def threshold_of(high: int | str | None, limit: int | str | None,
                 high_below_max: float | None) -> int | None:
    """The usage memory must fall below for the domain to count as recovered: 5%
    (``RECOVERY_MARGIN``) below its memory.high when set, else below ``high_below_max``
    (or 10%) under memory.max; ``None`` when neither is set (then only the deadline ends
    the first chance)."""
    if isinstance(high, int):
        return int(high * (1 - RECOVERY_MARGIN))
    if isinstance(limit, int):
        below = high_below_max if high_below_max is not None else 0.1
        return int(limit * (1 - below) * (1 - RECOVERY_MARGIN))
    return None
