"""Rules: when an OOM domain's events call for a decision. Pure: no I/O; the clock is given.

A rule watches one *domain* (a cgroup subtree: victims come from it) and fires on its
hierarchical ``memory.events`` counters: ``high`` (the earliest warning: memory.high is
throttling the workload), ``max`` (a charge hit memory.max), ``oom`` (the kernel's OOM killer
was invoked), ``oom_kill``. ``threshold`` events within ``window`` seconds fire it (the
kernel coalesces notifications, so counts come as deltas: one notification may carry many).
After an incident the rule rests for ``cooldown`` seconds, and one incident at a time runs
per domain: events meanwhile are folded into it.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ._candidates import normalize_path
from ._errors import InvalidValue

#: The memory.events counters a rule may fire on.
TRIGGERS = frozenset({"high", "max", "oom", "oom_kill"})


def _triggers(value: str | Iterable[str]) -> frozenset[str]:
    names: frozenset[str] = frozenset([value] if isinstance(value, str) else value)
    unknown = names - TRIGGERS
    if not names or unknown:
        raise InvalidValue(f"rule trigger {sorted(unknown) or value!r}: memory.events counters "
                           f"to fire on are {', '.join(sorted(TRIGGERS))}", value=repr(value))
    return names


def _positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidValue(f"rule {getattr(instance, 'name', '?')!r}: {attribute.name}="
                           f"{value!r}, a positive number", value=repr(value))


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidValue(f"rule {getattr(instance, 'name', '?')!r}: {attribute.name}="
                           f"{value!r}, a number of seconds >= 0", value=repr(value))


def _fraction(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not 0 < value < 1):
        raise InvalidValue(f"rule {getattr(instance, 'name', '?')!r}: {attribute.name}="
                           f"{value!r}, a fraction of memory.max between 0 and 1 (0.1: "
                           "memory.high at 90% of memory.max)", value=repr(value))


def _args(value: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(dict(value).items()))


@attrs.frozen
class Rule:
    """When ``domain`` shows ``threshold`` of the ``on`` events within ``window`` seconds,
    decide with ``policy`` (a name from ``cgoom.available_policies()`` with
    ``policy_args``, or a policy object) and act on the first victim that can be acted on;
    ``dry_run``: decide and record, never act. ``confirm_timeout``: how long to wait for a
    victim to be gone before the record says it was not confirmed.

    The early-trigger set-up, done when the handler starts and undone when it stops:
    ``high_below_max`` (a fraction, e.g. 0.1) sets the domain's memory.high that far below
    its memory.max, so the kernel throttles the workload and counts ``high`` before it
    reaches memory.max and the kernel's OOM killer; ``oom_group_leaves`` sets
    memory.oom.group=1 on the domain's leaves, so that a late kernel OOM kill takes a whole
    workload, as cgoom would."""

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    domain: str = attrs.field(converter=normalize_path)
    on: frozenset[str] = attrs.field(default=frozenset({"high", "max", "oom"}),
                                     converter=_triggers)
    threshold: int = attrs.field(default=1, validator=_positive)
    window: float = attrs.field(default=1.0, validator=_positive)
    policy: Any = "priority"
    policy_args: tuple[tuple[str, Any], ...] = attrs.field(factory=tuple, converter=_args)
    cooldown: float = attrs.field(default=5.0, validator=_non_negative)
    dry_run: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    confirm_timeout: float = attrs.field(default=5.0, validator=_positive)
    budget: float = attrs.field(default=0.1, validator=_positive)
    high_below_max: float | None = attrs.field(default=None, validator=_fraction)
    oom_group_leaves: bool = attrs.field(default=False,
                                         validator=attrs.validators.instance_of(bool))


class RuleState:
    """A rule's memory between events: recent counts, the cooldown, the incident in
    flight. ``observe`` is called with each delta of the domain's memory.events."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self.busy = False
        self.rest_until = float("-inf")
        self.folded = 0

    def observe(self, delta: Mapping[str, int], now: float) -> bool:
        """Count the rule's events in ``delta``; ``True`` when an incident should start now
        (threshold reached, not resting, none in flight). Events while one is in flight are
        folded into it (``folded``)."""
        count = sum(n for key, n in delta.items() if key in self.rule.on)
        if count <= 0:
            return False
        if self.busy:
            self.folded += count
            return False
        self._recent.append((now, count))
        while self._recent and self._recent[0][0] < now - self.rule.window:
            self._recent.popleft()
        if now < self.rest_until:
            return False
        if sum(n for _, n in self._recent) < self.rule.threshold:
            return False
        self._recent.clear()
        self.busy, self.folded = True, 0
        return True

    def finished(self, now: float) -> int:
        """The incident ended: rest for the cooldown. Returns how many events were folded."""
        self.busy = False
        self.rest_until = now + self.rule.cooldown
        folded, self.folded = self.folded, 0
        return folded
