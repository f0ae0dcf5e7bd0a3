"""Whether memory is short now, by a rule's own trigger, read from the kernel's files: the
one place that asks it, for the three moments that do.

- after a victim is gone: is the next one needed (:meth:`Shortage.after_kill`)?
- after a victim slipped away: did memory come back, or must the domain be decided afresh
  (:meth:`Shortage.came_back`)?
- the loop stalled: does the trigger hold, so the stall watchdog acts
  (:meth:`Shortage.holds`, from the watchdog's thread)?

A machine rule looks at MemAvailable against its reserve, a usage rule at the domain's usage
against its level, any other at the domain's usage against the threshold its workloads are
asked to free down to (memory.high, or memory.max less ``high_below_max``). Reads only;
owns nothing. A file that cannot be read answers "cannot tell", which each moment turns into
its own safe side (said in its docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from .._errors import CgoomError
from .._kernel._cgroup import if_supported
from .._kernel._hierarchy import Hierarchy
from .._kernel._meminfo import read_meminfo
from .._kernel._parse import format_size
from .._kernel._types import MemoryEvents
from .._watch._events import counters
from ._arming import Arming
from ._notifier import Notifier
from ._rules import Rule

log = logging.getLogger("cgoom")


class Shortage:
    """The memory checks of a handler's rules on ``hierarchy``; the reserves and levels are
    ``arming``'s, the thresholds ``notifier``'s."""

    def __init__(self, hierarchy: Hierarchy, arming: Arming, notifier: Notifier) -> None:
        self.hierarchy = hierarchy
        self._arming = arming
        self._notifier = notifier

    def _machine(self, rule: Rule) -> tuple[str | None, str]:
        """For machine rule ``rule``: why MemAvailable is short (below its reserve) or
        ``None``, and how it stands; raises what reading raises."""
        info = read_meminfo(self.hierarchy)
        reserve = self._arming.reserve(rule, info)
        if info.available < reserve:
            return (f"MemAvailable {format_size(info.available)} < "
                    f"{rule.available_below:.0%} of MemTotal {format_size(info.total)}"), ""
        return None, (f"MemAvailable {format_size(info.available)}, above the reserve "
                      f"{format_size(reserve)}")

    def _usage(self, rule: Rule) -> tuple[str | None, str]:
        """For usage rule ``rule``: why its usage is at the level or ``None``, and how it
        stands; raises what reading raises."""
        level = self._arming.level(rule)
        usage = self.hierarchy.cgroup(rule.domain).memory_current()
        if level is None:
            return None, ""
        if usage >= level:
            return (f"usage {format_size(usage)} >= {rule.usage_above:.0%} of memory.max "
                    f"({format_size(level)})"), ""
        return None, f"usage {format_size(usage)}, under {format_size(level)}"

    def after_kill(self, rule: Rule, before: int | None) -> bool:
        """After a victim is gone: is memory still short, so the next victim is needed? A
        machine rule looks at MemAvailable; a rule with ``min_freed`` at what was freed since
        ``before``. Cannot tell: no (a second kill is never a guess)."""
        if rule.machine:
            try:
                return self._machine(rule)[0] is not None
            except (OSError, CgoomError):
                return False
        if rule.min_freed is None or before is None:
            return False
        now = if_supported(self.hierarchy.cgroup(rule.domain).memory_current)
        return now is not None and before - now < rule.min_freed

    def came_back(self, rule: Rule) -> str | None:
        """After a victim slipped away: why the rule's trigger no longer holds (memory came
        back), or ``None`` while it holds. Cannot tell (PSI, unreadable files): ``None``, so
        the domain is decided afresh rather than left short."""
        try:
            if rule.machine or rule.usage_above is not None:
                short, stands = self._machine(rule) if rule.machine else self._usage(rule)
                return None if short is not None or not stands else stands
        except (OSError, CgoomError):
            return None
        usage, threshold, _ = self._notifier.numbers(rule.domain, rule.high_below_max)
        if usage is not None and threshold and usage < threshold:
            return f"usage {format_size(usage)}, under {format_size(threshold)}"
        return None

    def holds(self, rule: Rule, last: object | None) -> str | None:
        """From any thread, the loop being stalled: why the rule's trigger holds now, or
        ``None``. memory.events: the counters of ``on`` rose past ``last`` (what the loop last
        handled) by ``threshold``; machine: MemAvailable below the reserve; usage: usage at
        the level. PSI is not judged. Cannot tell: ``None`` (the watchdog does not act on a
        guess), and said."""
        try:
            if rule.on and isinstance(last, MemoryEvents):
                now = self.hierarchy.cgroup(rule.domain).memory_events()
                rise = _rise(counters(last), counters(now), rule.on)
                if sum(max(v, 0) for v in rise.values()) >= rule.threshold:
                    return (f"{rule.domain} memory.events rose unhandled: "
                            + ", ".join(f"{k} +{v}" for k, v in rise.items() if v > 0))
            if rule.machine:
                short, _ = self._machine(rule)
                if short is not None:
                    return short
            if rule.usage_above is not None:
                short, _ = self._usage(rule)
                if short is not None:
                    return short
        except (CgoomError, OSError) as exc:
            log.warning("cgoom stall watchdog: %s: %s", rule.name, exc)
        return None


def _rise(old: Mapping[str, int], new: Mapping[str, int], keys: frozenset[str],
          ) -> dict[str, int]:
    return {k: new.get(k, 0) - old.get(k, 0) for k in sorted(keys)}
