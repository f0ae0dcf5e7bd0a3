"""Rules: when an OOM domain's events call for a decision. Pure: no I/O; the clock is given.

A rule watches one *domain* (a cgroup subtree: victims come from it) and fires on any of
its triggers:

- the domain's hierarchical ``memory.events`` counters: ``high`` (the earliest warning:
  memory.high is throttling the workload), ``max`` (a charge hit memory.max), ``oom`` (the
  kernel's OOM killer was invoked), ``oom_kill``. ``threshold`` events within ``window``
  seconds fire it (the kernel coalesces notifications, so counts come as deltas: one
  notification may carry many); with ``sustained``, only once they have kept coming (no
  gap longer than ``window``) for that many seconds: "above high for 5 s";
- usage over a fraction of memory.max (``usage_above``), seen through a memory.high
  tripwire on the domain itself;
- a PSI trigger or sustained pressure, on the domain or system-wide (``pressure``);
- the whole machine running short: ``MemAvailable`` below ``available_below`` of MemTotal,
  seen through memory.high tripwires on the domain's children (``_tripwire``), optionally
  with adaptive polling while memory is low (``poll_below``).

After an incident the rule rests for ``cooldown`` seconds, and one incident at a time runs
per domain: events meanwhile are folded into it.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, cast

import attrs

from .._errors import InvalidValue
from .._kernel._parse import parse_size
from .._kernel._paths import normalize_path
from .._watch._events import PressureTrigger, SustainedPressure

#: The memory.events counters a rule may fire on.
TRIGGERS = frozenset({"high", "max", "oom", "oom_kill"})
#: What a rule does to its victim (docs/handler.md, "Actions").
ACTIONS = frozenset({"kill", "graceful", "freeze", "reclaim", "raise-limit", "notify"})
#: ``on`` when a rule has no other trigger.
DEFAULT_ON = frozenset({"high", "max", "oom"})


def _triggers(value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    names: frozenset[str] = frozenset([value] if isinstance(value, str) else value)
    unknown = names - TRIGGERS
    if unknown:
        raise InvalidValue(f"rule trigger {sorted(unknown) or value!r}: memory.events counters "
                           f"to fire on are {', '.join(sorted(TRIGGERS))}", value=repr(value),
                           key="on")
    return names


def _positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidValue(f"rule {getattr(instance, 'name', '?')!r}: {attribute.name}="
                           f"{value!r}, a positive number", value=repr(value),
                           key=attribute.name)


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidValue(f"rule {getattr(instance, 'name', '?')!r}: {attribute.name}="
                           f"{value!r}, a number of seconds >= 0", value=repr(value),
                           key=attribute.name)


#: What each fraction field is a fraction of, and an example, for the error message.
_FRACTIONS = {
    "high_below_max": ("memory.max", "0.1: memory.high at 90% of memory.max"),
    "usage_above": ("memory.max", "0.9: at 90% of memory.max"),
    "available_below": ("MemTotal", "0.1: act when MemAvailable falls below 10% of the "
                                    "machine's memory"),
    "poll_below": ("MemTotal", "0.1: act when MemAvailable falls below 10% of the "
                               "machine's memory"),
}


def _fraction(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                              or not 0 < value < 1):
        of, example = _FRACTIONS[attribute.name]
        raise InvalidValue(f"rule {getattr(instance, 'name', '?')!r}: {attribute.name}="
                           f"{value!r}, a fraction of {of} between 0 and 1 ({example})",
                           value=repr(value), key=attribute.name)


def _one_of(choices: Iterable[str]) -> Callable[[object, attrs.Attribute[Any], object], None]:
    allowed = tuple(sorted(choices))

    def check(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in allowed:
            raise InvalidValue(f"rule {getattr(instance, 'name', '?')!r}: {attribute.name}="
                               f"{value!r}, one of {', '.join(allowed)}", value=repr(value),
                               key=attribute.name)
    return check


def _size(value: int | str | None, key: str) -> int | None:
    """Bytes for size field ``key``; its errors name the key."""
    if value is None:
        return None
    try:
        return parse_size(value, key)
    except InvalidValue as exc:
        raise InvalidValue(exc.message, value=exc.value, key=key) from exc


def _swappiness(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)
                         and 0 <= value <= 200):
        return
    raise InvalidValue(f"rule {getattr(instance, 'name', '?')!r}: {attribute.name}={value!r}, "
                       "an integer from 0 (page cache only) to 200, as vm.swappiness",
                       value=repr(value), key=attribute.name)


def _reclaim(value: int | str | None) -> int | None:
    return _size(value, "reclaim")


def _raise_by(value: int | str | None) -> int | None:
    return _size(value, "raise_by")


def _min_freed(value: int | str | None) -> int | None:
    return _size(value, "min_freed")


def _args(value: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(dict(value).items()))


def _patterns(value: str | Iterable[str]) -> tuple[str, ...]:
    patterns = (value,) if isinstance(value, str) else tuple(value)
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern.strip("/"):
            raise InvalidValue(f"oom_group pattern {pattern!r}: a glob of cgroup paths below "
                               "the mount, e.g. 'kubepods.slice/*/*-pod*.slice'",
                               value=repr(pattern), key="oom_group")
    return tuple(p.strip("/") for p in patterns)


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

    #: The rule's name (required, unique): in records, logs and metrics.
    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    #: The cgroup whose subtree the rule watches and chooses victims in (required; "/" for
    #: the whole machine).
    domain: str = attrs.field(converter=normalize_path)
    #: memory.events counters of the domain; default high, max and oom, or none when the
    #: rule has another trigger (``pressure``, ``available_below``, ``usage_above``).
    on: frozenset[str] = attrs.field(default=None, converter=_triggers)
    #: How many of the ``on`` events within ``window`` make an incident.
    threshold: int = attrs.field(default=1, validator=_positive)
    #: Seconds over which ``threshold`` events are counted.
    window: float = attrs.field(default=1.0, validator=_positive)
    #: The victim selection: a policy name (``cgoom policies``) or a policy object.
    policy: Any = "priority"
    #: The policy's options (a table in the file).
    policy_args: tuple[tuple[str, Any], ...] = attrs.field(factory=tuple, converter=_args)
    #: Seconds after an incident during which the rule's events are folded, not acted on.
    cooldown: float = attrs.field(default=5.0, validator=_non_negative)
    #: Decide and record, never act, and write nothing on the host (shadow mode).
    dry_run: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    #: Seconds to wait for a victim to be gone before the record says it was not confirmed.
    confirm_timeout: float = attrs.field(default=5.0, validator=_positive)
    #: Seconds the policy may take to decide before the fallback decides.
    budget: float = attrs.field(default=0.1, validator=_positive)
    #: The early trigger: memory.high this fraction below the domain's memory.max (set at
    #: start, put back at stop), so ``high`` events come before the kernel's OOM killer.
    high_below_max: float | None = attrs.field(default=None, validator=_fraction)
    #: memory.oom.group=1 on the domain's leaves at start: a late kernel OOM kill takes a
    #: whole workload, as cgoom would.
    oom_group_leaves: bool = attrs.field(default=False,
                                         validator=attrs.validators.instance_of(bool))
    #: A PSI trigger or sustained-pressure rule, on the domain's memory.pressure or
    #: (``pressure_scope="system"``) on /proc/pressure/memory.
    pressure: PressureTrigger | SustainedPressure | None = attrs.field(
        default=None, validator=attrs.validators.optional(
            attrs.validators.instance_of((PressureTrigger, SustainedPressure))))
    #: Where ``pressure`` is measured: the domain's memory.pressure, or the whole machine's
    #: /proc/pressure/memory (``"system"``).
    pressure_scope: Literal["domain", "system"] = attrs.field(
        default="domain", validator=_one_of(("domain", "system")))
    #: The whole-machine trigger: MemAvailable below this fraction of MemTotal, seen through
    #: memory.high tripwires on the domain's children (docs/handler.md).
    available_below: float | None = attrs.field(default=None, validator=_fraction)
    #: Fire when the domain's usage reaches this fraction of its memory.max, seen through a
    #: memory.high tripwire on the domain, released on its first event (docs/handler.md).
    usage_above: float | None = attrs.field(default=None, validator=_fraction)
    #: The ``on`` events must have kept coming (no gap longer than ``window``) for this many
    #: seconds before the rule fires: "above memory.high for 5 s".
    sustained: float = attrs.field(default=0.0, validator=_non_negative)
    #: Poll MemAvailable, adaptively, while it is below this fraction of MemTotal (off by
    #: default: polling, as earlyoom does, only where memory is already low).
    poll_below: float | None = attrs.field(default=None, validator=_fraction)
    #: What to do to the victim: one of ``ACTIONS``.
    action: str = attrs.field(default="kill", validator=_one_of(ACTIONS))
    #: ``graceful``: seconds between SIGTERM and SIGKILL.
    grace: float = attrs.field(default=5.0, validator=_positive)
    #: ``reclaim``: how much to reclaim from the victim (bytes, or "64M").
    reclaim: int | None = attrs.field(default=None, converter=_reclaim)
    #: ``reclaim``: the balance of anonymous against file pages for that reclaim, 0-200 as
    #: vm.swappiness (0: page cache only, never swap); ``None``: the kernel's own. Written
    #: as ``memory.reclaim``'s ``swappiness=`` key, Linux 6.10+.
    reclaim_swappiness: int | None = attrs.field(default=None, validator=_swappiness)
    #: ``raise-limit``: how much to raise the domain's memory.max by (bytes, or "64M").
    raise_by: int | None = attrs.field(default=None, converter=_raise_by)
    #: Take the next victim of the same decision when a kill freed less than this (bytes of
    #: the domain's memory.current; a machine rule goes on while MemAvailable stays low).
    min_freed: int | None = attrs.field(default=None, converter=_min_freed)
    #: At most this many victims acted on in one incident (a victim that cannot be acted
    #: on, being gone, does not count). 1 by default: a second kill in one incident is the
    #: operator's choice (with ``min_freed``, or a machine rule), never a guess.
    max_victims: int = attrs.field(default=1, validator=[attrs.validators.instance_of(int),
                                                         _positive])
    #: Glob patterns of cgroup paths below the mount (as ``[priorities]``): the domain's
    #: cgroups that match get memory.oom.group=1 at start and as they appear, so each is a
    #: unit that dies whole, by cgoom or the kernel: Kubernetes pods, whose containers the
    #: kubelet leaves separate (docs/kubernetes.md).
    oom_group: tuple[str, ...] = attrs.field(factory=tuple, converter=_patterns)
    #: The workloads' first chance: before acting, tell the handlers registered for cgroups
    #: of the domain (``Handler.register``) and wait up to this many seconds (or their own
    #: shorter deadline) for its usage to fall back below the threshold; act only if it
    #: does not (``None``: off). Not in a dry run.
    first_chance: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive))

    def __attrs_post_init__(self) -> None:
        other = (self.pressure is not None or self.available_below is not None
                 or self.usage_above is not None)
        given = cast("frozenset[str] | None", self.on)  # None until resolved here
        if given is None:
            object.__setattr__(self, "on", frozenset() if other else DEFAULT_ON)
        elif not self.on and not other:
            raise InvalidValue(f"rule {self.name!r} has no trigger: give on= (memory.events "
                               f"counters: {', '.join(sorted(TRIGGERS))}), pressure=, "
                               "available_below= or usage_above=", value="on=()", key="on")
        if self.poll_below is not None and (self.available_below is None
                                            or self.poll_below <= self.available_below):
            raise InvalidValue(f"rule {self.name!r}: poll_below={self.poll_below!r} polls "
                               "while MemAvailable is low, above available_below: give "
                               "available_below= smaller than it", value=repr(self.poll_below),
                               key="poll_below")
        if self.action == "reclaim" and not self.reclaim:
            raise InvalidValue(f"rule {self.name!r}: action 'reclaim' needs reclaim= (how "
                               "much, e.g. '64M')", value=repr(self.reclaim), key="reclaim")
        if self.action == "raise-limit" and not self.raise_by:
            raise InvalidValue(f"rule {self.name!r}: action 'raise-limit' needs raise_by= "
                               "(how much, e.g. '64M')", value=repr(self.raise_by),
                               key="raise_by")

    @property
    def machine(self) -> bool:
        """Whether the rule watches the whole machine (``available_below``)."""
        return self.available_below is not None


#: The fields a rule's set-up depends on: the watches, PSI triggers, tripwires and the
#: memory.high and memory.oom.group it writes. :meth:`Handler.reconfigure` swaps every other
#: field in a running handler; a change to one of these needs the handler started again.
SETUP_FIELDS = ("domain", "pressure", "pressure_scope", "available_below", "poll_below",
                "usage_above", "high_below_max", "oom_group_leaves", "oom_group", "dry_run")


def setup_changes(old: Rule, new: Rule) -> list[str]:
    """The set-up fields that differ between two versions of a rule, as ``field: a -> b``."""
    return [f"{name}: {getattr(old, name)!r} -> {getattr(new, name)!r}"
            for name in SETUP_FIELDS if getattr(old, name) != getattr(new, name)]


def unique_names(rules: Iterable[Rule]) -> list[str]:
    """The rules' names; :class:`~cgoom.InvalidValue` if one is given twice."""
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise InvalidValue(f"rule names must be unique: {names}", value=repr(names))
    return names


def restart_needed(old: Iterable[Rule], new: Iterable[Rule]) -> list[str]:
    """What in going from rules ``old`` to ``new`` a running handler cannot apply (rules
    added or removed, a set-up field changed), one sentence each: the one place that
    decides it (:meth:`Handler.reconfigure`, and so ``cgoom run``'s reload)."""
    before = {r.name: r for r in old}
    after = {r.name: r for r in new}
    problems = []
    added, removed = sorted(set(after) - set(before)), sorted(set(before) - set(after))
    if added:
        problems.append(f"rule(s) added: {', '.join(added)}")
    if removed:
        problems.append(f"rule(s) removed: {', '.join(removed)}")
    problems += [f"rule {name!r}: {change}" for name, rule in after.items() if name in before
                 for change in setup_changes(before[name], rule)]
    return problems


class RuleState:
    """A rule's memory between events: recent counts, the cooldown, the incident in
    flight. ``observe`` is called with each delta of the domain's memory.events."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        #: When the current run of events began, and the last one of it (``sustained``).
        self._run_start = self._run_last = float("-inf")
        self.busy = False
        self.rest_until = float("-inf")
        self.folded = 0
        #: Guards ``busy`` against the stall watchdog's thread (``claim``).
        self._lock = threading.Lock()

    def claim(self) -> bool:
        """From another thread (the stall watchdog): take the rule as if an incident began,
        unless one is in flight; ``finished`` ends it."""
        with self._lock:
            if self.busy:
                return False
            self.busy, self.folded = True, 0
            return True

    def observe(self, delta: Mapping[str, int], now: float) -> bool:
        """Count the rule's events in ``delta``; ``True`` when an incident should start now
        (threshold reached, not resting, none in flight). Events while one is in flight are
        folded into it (``folded``)."""
        count = sum(n for key, n in delta.items() if key in self.rule.on)
        if count <= 0:
            return False
        if now - self._run_last > self.rule.window:
            self._run_start = now  # a gap: a new run of events begins
        self._run_last = now
        with self._lock:
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
            if now - self._run_start < self.rule.sustained:
                return False
            self._recent.clear()
            self.busy, self.folded = True, 0
            return True

    def signal(self, now: float) -> bool:
        """A trigger that needs no counting (PSI, the machine's memory) fired: ``True`` when
        an incident should start now; folded into the one in flight otherwise."""
        with self._lock:
            if self.busy:
                self.folded += 1
                return False
            if now < self.rest_until:
                return False
            self._recent.clear()
            self.busy, self.folded = True, 0
            return True

    def finished(self, now: float) -> int:
        """The incident ended: rest for the cooldown. Returns how many events were folded."""
        with self._lock:
            self.busy = False
            self.rest_until = now + self.rule.cooldown
            self._run_start = self._run_last = float("-inf")
            folded, self.folded = self.folded, 0
            return folded
