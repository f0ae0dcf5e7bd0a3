"""``Trigger``: why a rule fired, as a record (kind, cgroup, counters or reading) with a text
form for people. Pure: no I/O, no clock.

Metrics label incidents by ``kind``, the journal carries it as a field, ``explain()`` prints
``text``: nobody parses the text back. Records written before triggers were typed held the
text alone; :func:`as_trigger` reads those as kind ``"unknown"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs

from .._kernel._meminfo import MemInfo
from .._kernel._parse import format_size
from .._watch._events import MemoryEventsChanged, PressureSustained, PressureTriggered


def _counters(value: Mapping[str, int] | Iterable[tuple[str, int]],
              ) -> tuple[tuple[str, int], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), int(v)) for k, v in items))


@attrs.frozen
class Trigger:
    """Why a rule fired.

    ``kind``: ``memory.events`` (counters rose), ``pressure`` (a PSI trigger or sustained
    pressure), ``available`` (the whole machine's MemAvailable below the reserve), ``usage``
    (a domain's usage at its share of memory.max), ``stall`` (the stall watchdog, the loop
    being stalled). ``cgroup``: where it fired (``None``: the whole machine). ``counters``:
    the memory.events counters that rose and by how much. ``reading`` and ``level``: the
    bytes read (usage, MemAvailable) and what they were compared with. ``source``: what
    made cgoom look (``"tripwire on /w"``, ``"when arming"``, ``"poll"``).
    """

    kind: str
    text: str
    cgroup: str | None = None
    counters: tuple[tuple[str, int], ...] = attrs.field(default=(), converter=_counters)
    reading: int | None = None
    level: int | None = None
    source: str | None = None

    def __str__(self) -> str:
        return self.text


def as_trigger(value: Trigger | str) -> Trigger:
    """``value``, or a record written before triggers were typed (the text alone)."""
    return value if isinstance(value, Trigger) else Trigger("unknown", str(value))


def of_event(event: MemoryEventsChanged | PressureTriggered | PressureSustained) -> Trigger:
    if isinstance(event, MemoryEventsChanged):
        return Trigger("memory.events", str(event), event.cgroup, event.delta)
    return Trigger("pressure", str(event), event.cgroup)


def usage(domain: str, used: int, level: int, fraction: float | None, source: str) -> Trigger:
    return Trigger("usage", f"usage {format_size(used)} >= {fraction or 0:.0%} of memory.max "
                   f"({format_size(level)}, {source})", domain, reading=used, level=level,
                   source=source)


def available(info: MemInfo, reserve: int, fraction: float | None, source: str) -> Trigger:
    return Trigger("available", f"MemAvailable {format_size(info.available)} < "
                   f"{fraction or 0:.0%} of MemTotal {format_size(info.total)} ({source})",
                   None, reading=info.available, level=reserve, source=source)


def stall(stalled: float, reason: str, cgroup: str) -> Trigger:
    return Trigger("stall", f"stall watchdog: the event loop did not run for {stalled:.1f} s; "
                   f"{reason}", cgroup, source="stall watchdog")
