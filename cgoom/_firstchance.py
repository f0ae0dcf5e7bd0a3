"""First chance for the workloads (issue #11, first slice): a workload registers a handler
for its cgroup with a deadline; when a rule with ``first_chance`` fires on a domain that
holds registered cgroups, the engine tells them first (a :class:`Notice` with a reclaim
target in bytes), waits up to their deadline while watching the domain's usage, and acts
only if memory has not come back below the threshold. Google's cgroup OOM handler gave each
workload's own handler this chance; mem_notify and maemo told applications to free memory
"in manageable places in code".

Pure parts here (the records, the registry, the threshold); the waiting is the engine's
(``Handler._first_chance``). A handler that does not answer, answers late, raises or
answers garbage never delays the action past its deadline: each is cancelled at its
deadline and what it did is recorded.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Literal

import attrs

from ._candidates import normalize_path
from ._errors import InvalidValue
from ._parse import format_size


@attrs.frozen
class Notice:
    """What a first-chance handler is told: memory in ``domain`` is about to run out and
    cgoom will act unless its usage falls below ``threshold``; ``reclaim_target`` is how many
    bytes that takes (0 when the threshold is unknown). ``deadline``: the seconds the handler
    has, from now."""

    domain: str
    cgroup: str
    level: Literal["oom"]
    usage: int | None
    threshold: int | None
    reclaim_target: int
    deadline: float


@attrs.frozen
class Answer:
    """A handler's answer: ``done`` (it freed what it could; ``freed`` bytes if it knows) or
    ``cannot`` (nothing to free: act now)."""

    status: Literal["done", "cannot"] = "done"
    freed: int | None = None


FirstChanceHandler = Callable[[Notice], Awaitable["Answer | None"]]


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
    deadline: float
    key: int


class Registry:
    """The registered first-chance handlers, by cgroup."""

    def __init__(self) -> None:
        self._items: dict[int, Registration] = {}
        self._keys = itertools.count(1)

    def register(self, cgroup: str, handler: FirstChanceHandler, deadline: float,
                 ) -> Callable[[], None]:
        if not callable(handler):
            raise InvalidValue(f"first-chance handler for {cgroup}: {handler!r} is not "
                               "callable (an async function taking a Notice)",
                               value=repr(handler))
        if not (isinstance(deadline, int | float) and not isinstance(deadline, bool)
                and deadline > 0):
            raise InvalidValue(f"first-chance deadline for {cgroup}: {deadline!r}, a number "
                               "of seconds above 0", value=repr(deadline))
        key = next(self._keys)
        self._items[key] = Registration(normalize_path(cgroup), handler, float(deadline), key)

        def unregister() -> None:
            self._items.pop(key, None)

        return unregister

    def inside(self, domain: str) -> list[Registration]:
        """The registrations for ``domain`` and its descendants, oldest first."""
        prefix = domain.rstrip("/") + "/"
        return [r for r in self._items.values()
                if r.cgroup == domain or domain == "/" or r.cgroup.startswith(prefix)]


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
