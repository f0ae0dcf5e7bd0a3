"""Pure parsers and formatters for the kernel's cgroup file formats. No I/O here.

Each parser takes the file's text and a ``source`` (the file's path, used only in error
messages) and returns typed values, or raises :class:`~cgoom.ParseError` quoting the text.
Each formatter validates a Python value and returns the exact text to write, or raises
:class:`~cgoom.InvalidValue` naming the file, the value and the reason.

Some facts about the formats (Documentation/admin-guide/cgroup-v2.rst, "Interface Files"):

- Single values end in a newline; limits print ``max`` for "no limit"
  (``seq_puts_memcg_tunable`` in mm/memcontrol.c).
- Flat-keyed files are ``key value`` lines; nested-keyed files are
  ``key sub=value sub=value`` lines. New keys appear over kernel versions, anywhere.
- Limit writes go through ``page_counter_memparse``: a decimal number with an optional
  K/M/G/T/P/E suffix (powers of 1024, either case) or ``max``. The kernel stores whole pages
  (rounding the byte count down) and clamps to PAGE_COUNTER_MAX, which reads back as ``max``.
  cgoom converts sizes itself and writes plain decimal bytes, so what it writes is exactly
  what a reader of the fake tree sees, and a typo is refused before it reaches the kernel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from .._errors import InvalidValue, ParseError
from ._types import (
    MAX,
    CgroupEvents,
    CgroupType,
    Limit,
    MemoryEvents,
    MemoryStat,
    Pressure,
    PressureLine,
    SwapEvents,
)

#: The largest value the kernel's memparse can hold (unsigned long long).
U64_MAX = 2**64 - 1

_SUFFIXES = {
    "": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50, "e": 1 << 60,
}
# [0-9], not \d: \d also matches fullwidth and Arabic-Indic digits, which the kernel refuses.
_SIZE_RE = re.compile(r"[ \t\n]*([0-9]+)[ \t\n]*([kmgtpe]?)[ \t\n]*", re.IGNORECASE)


def _quote(text: str, limit: int = 120) -> str:
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)


# --- single values ----------------------------------------------------------------------


def parse_int(text: str, source: str) -> int:
    """A single non-negative integer, such as ``memory.current``."""
    stripped = text.strip()
    if not stripped.isdigit() or not stripped.isascii():
        raise ParseError(f"{source}: expected an integer, got {_quote(text)}", path=source)
    return int(stripped)


def parse_limit(text: str, source: str) -> Limit:
    """A limit: a byte count or ``"max"``, such as ``memory.high``."""
    if text.strip() == MAX:
        return MAX
    try:
        return parse_int(text, source)
    except ParseError:
        raise ParseError(
            f"{source}: expected a byte count or 'max', got {_quote(text)}", path=source
        ) from None


def parse_bool(text: str, source: str) -> bool:
    """``0`` or ``1``, such as ``memory.oom.group`` or ``cgroup.freeze``."""
    stripped = text.strip()
    if stripped not in ("0", "1"):
        raise ParseError(f"{source}: expected 0 or 1, got {_quote(text)}", path=source)
    return stripped == "1"


def parse_size(value: int | str, source: str) -> int:
    """A size given by a user: an ``int`` of bytes, or a string such as ``"512M"``.

    Suffixes K, M, G, T, P, E are powers of 1024 in either case, as the kernel's memparse
    reads them. Refused: negatives, fractions, hex, unit words (``"512MB"``), values over
    2**64 - 1. ``"max"`` is not a size; see :func:`format_limit`.
    """
    if isinstance(value, bool):
        raise InvalidValue(
            f"{source}: {value!r} is a bool, not a size", path=source, value=str(value)
        )
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if match is None:
            raise InvalidValue(
                f"{source}: {value!r} is not a size: write a whole number of bytes with an "
                "optional K/M/G/T/P/E suffix (powers of 1024), e.g. 536870912 or '512M'",
                path=source,
                value=value,
            )
        number = int(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    else:
        raise InvalidValue(
            f"{source}: {value!r} is a {type(value).__name__}, not a size",
            path=source,
            value=repr(value),
        )
    if number < 0:
        raise InvalidValue(f"{source}: {value!r} is negative", path=source, value=str(value))
    if number > U64_MAX:
        raise InvalidValue(
            f"{source}: {value!r} is larger than the kernel can hold (2**64 - 1); write 'max' "
            "for no limit",
            path=source,
            value=str(value),
        )
    return number


_SIZE_UNITS = ("B", "K", "M", "G", "T", "P", "E")


#: The largest byte count a kernel counter holds (a signed 64-bit value): anything larger
#: came from outside (a client, an xattr) and is shown, never converted to a float.
BYTES_MAX = 2**63 - 1


def format_size(value: int) -> str:
    """``1536 -> "1.5K"``: binary units, as the kernel counts (for logs and reasons). Any
    int is shown: one past :data:`BYTES_MAX` (from outside: no kernel counts that high) as
    ``"over 8.0E"``, never an ``OverflowError`` on the way to a record."""
    if value < 1024:
        return f"{value}B"
    if value > BYTES_MAX:
        return "over 8.0E"
    exponent = min((value.bit_length() - 1) // 10, len(_SIZE_UNITS) - 1)
    return f"{value / (1 << (10 * exponent)):.1f}{_SIZE_UNITS[exponent]}"


def format_limit(value: int | str, source: str) -> str:
    """The text to write for a limit: ``"max"`` or the size in decimal bytes."""
    if isinstance(value, str) and value.strip() == MAX:
        return MAX
    return str(parse_size(value, source))


# --- keyed files ------------------------------------------------------------------------


def parse_flat_keyed(text: str, source: str) -> dict[str, int]:
    """``key value`` lines, values integers (``memory.stat``, ``memory.events``)."""
    result: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not parts[1].isascii():
            raise ParseError(
                f"{source}: line {lineno} is not 'key value': {_quote(line)}", path=source
            )
        result[parts[0]] = int(parts[1])
    return result


def parse_nested_keyed(text: str, source: str) -> dict[str, dict[str, str]]:
    """``key sub=value ...`` lines (``memory.pressure``, ``memory.numa_stat``)."""
    result: dict[str, dict[str, str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, *fields = line.split()
        entry: dict[str, str] = {}
        for field in fields:
            sub, sep, val = field.partition("=")
            if not sep or not sub:
                raise ParseError(
                    f"{source}: line {lineno}: {field!r} is not 'name=value' in {_quote(line)}",
                    path=source,
                )
            entry[sub] = val
        result[key] = entry
    return result


def _take(
    values: Mapping[str, int], known: tuple[str, ...], source: str
) -> tuple[dict[str, int], dict[str, int]]:
    missing = [k for k in known if k not in values]
    if missing:
        raise ParseError(f"{source}: missing {', '.join(missing)}", path=source)
    return {k: values[k] for k in known}, {k: v for k, v in values.items() if k not in known}


_EVENTS_REQUIRED = ("low", "high", "max", "oom", "oom_kill")
_EVENTS_OPTIONAL = ("oom_group_kill", "sock_throttled")


def parse_memory_events(text: str, source: str) -> MemoryEvents:
    """``memory.events`` / ``memory.events.local``.

    ``low high max oom`` since 4.5, ``oom_kill`` since 4.13, ``oom_group_kill`` 5.17,
    ``sock_throttled`` 6.19; anything newer lands in ``extra``.
    """
    values = parse_flat_keyed(text, source)
    required, rest = _take(values, _EVENTS_REQUIRED, source)
    optional = {k: rest.pop(k) for k in _EVENTS_OPTIONAL if k in rest}
    return MemoryEvents(**required, **optional, extra=rest)


def parse_swap_events(text: str, source: str) -> SwapEvents:
    """``memory.swap.events``: ``max fail`` since 5.0, ``high`` since 5.8."""
    values = parse_flat_keyed(text, source)
    required, rest = _take(values, ("max", "fail"), source)
    high = rest.pop("high", None)
    return SwapEvents(**required, high=high, extra=rest)


def parse_cgroup_events(text: str, source: str) -> CgroupEvents:
    """``cgroup.events``: ``populated``, and ``frozen`` since 5.2."""
    values = parse_flat_keyed(text, source)
    required, rest = _take(values, ("populated",), source)
    frozen = rest.pop("frozen", None)
    return CgroupEvents(
        populated=bool(required["populated"]),
        frozen=None if frozen is None else bool(frozen),
        extra=rest,
    )


def parse_memory_stat(text: str, source: str) -> MemoryStat:
    """``memory.stat``: every key kept."""
    return MemoryStat(parse_flat_keyed(text, source))


def _pressure_line(fields: Mapping[str, str], name: str, source: str) -> PressureLine:
    try:
        return PressureLine(
            avg10=float(fields["avg10"]),
            avg60=float(fields["avg60"]),
            avg300=float(fields["avg300"]),
            total_us=int(fields["total"]),
        )
    except (KeyError, ValueError) as exc:
        raise ParseError(
            f"{source}: the {name!r} line needs avg10= avg60= avg300= total=, got {dict(fields)}",
            path=source,
        ) from exc


def parse_pressure(text: str, source: str) -> Pressure:
    """A PSI file: ``some`` line, and ``full`` where the kernel prints it."""
    nested = parse_nested_keyed(text, source)
    if "some" not in nested:
        raise ParseError(f"{source}: no 'some' line in {_quote(text)}", path=source)
    full = nested.get("full")
    return Pressure(
        some=_pressure_line(nested["some"], "some", source),
        full=None if full is None else _pressure_line(full, "full", source),
    )


# --- lists ------------------------------------------------------------------------------


def parse_pids(text: str, source: str) -> tuple[int, ...]:
    """``cgroup.procs`` / ``cgroup.threads``: one id a line."""
    pids: list[int] = []
    for line in text.split():
        if not line.isdigit() or not line.isascii():
            raise ParseError(f"{source}: {line!r} is not a process id", path=source)
        pids.append(int(line))
    return tuple(pids)


def parse_controllers(text: str, source: str) -> frozenset[str]:
    """``cgroup.controllers`` / ``cgroup.subtree_control``: space-separated names."""
    names = text.split()
    for name in names:
        if not name.replace("_", "").isalnum():
            raise ParseError(f"{source}: {name!r} is not a controller name", path=source)
    return frozenset(names)


_CGROUP_TYPES: frozenset[str] = frozenset(
    ("domain", "domain threaded", "domain invalid", "threaded")
)


def parse_cgroup_type(text: str, source: str) -> CgroupType:
    """``cgroup.type``."""
    stripped = " ".join(text.split())
    if stripped not in _CGROUP_TYPES:
        raise ParseError(f"{source}: unknown cgroup type {_quote(text)}", path=source)
    return stripped  # type: ignore[return-value]  # checked against the Literal's members


def format_controllers(enable: frozenset[str], disable: frozenset[str], source: str) -> str:
    """The text for ``cgroup.subtree_control``: ``+memory +pids -io``."""
    both = enable & disable
    if both:
        raise InvalidValue(
            f"{source}: cannot both enable and disable {', '.join(sorted(both))}",
            path=source,
            value=" ".join(sorted(both)),
        )
    for name in enable | disable:
        if not name or not name.replace("_", "").isalnum():
            raise InvalidValue(
                f"{source}: {name!r} is not a controller name", path=source, value=name
            )
    return " ".join([f"+{n}" for n in sorted(enable)] + [f"-{n}" for n in sorted(disable)])


# --- /proc/self/mountinfo -----------------------------------------------------------------


def _unescape_mount(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \040 \011 \012 \134 (show_path).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str, source: str) -> list[tuple[str, str, frozenset[str]]]:
    """``/proc/<pid>/mountinfo`` (proc(5)) as ``(mount_point, fstype, options)`` per mount,
    where ``options`` joins the per-mount and the superblock options (cgroup2's
    ``nsdelegate``, ``memory_localevents``, ``memory_recursiveprot`` are superblock ones)."""
    mounts: list[tuple[str, str, frozenset[str]]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        before, sep, after = line.partition(" - ")
        left, right = before.split(), after.split()
        if not sep or len(left) < 6 or len(right) < 2:
            raise ParseError(f"{source}: line {lineno} is not a mountinfo line: {_quote(line)}",
                             path=source)
        options = set(left[5].split(","))
        if len(right) >= 3:
            options.update(right[2].split(","))
        mounts.append((_unescape_mount(left[4]), right[0], frozenset(options)))
    return mounts


# --- settings and /proc -------------------------------------------------------------------

#: The range of a priority (``user.cgoom.priority``, configured patterns): a signed 32-bit
#: integer. Values outside it are refused when written and ignored (with a problem) when read.
PRIORITY_MIN: Final = -(2**31)
PRIORITY_MAX: Final = 2**31 - 1

_PRIORITY_RE = re.compile(r"-?[0-9]{1,10}")


def parse_priority(text: str, source: str) -> int:
    """A priority as stored in ``user.cgoom.priority``: an optional ``-`` and ASCII digits,
    surrounding whitespace allowed, within :data:`PRIORITY_MIN` .. :data:`PRIORITY_MAX`. No
    ``+``, no ``_``, no other digits: :class:`~cgoom.ParseError` quoting the text otherwise."""
    stripped = text.strip(" \t\n")
    if _PRIORITY_RE.fullmatch(stripped) is None:
        raise ParseError(f"{source}: {_quote(text, 40)} is not a priority (an integer from "
                         f"{PRIORITY_MIN} to {PRIORITY_MAX}, ASCII digits)", path=source)
    value = int(stripped)
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ParseError(f"{source}: priority {stripped} is outside "
                         f"{PRIORITY_MIN}..{PRIORITY_MAX}", path=source)
    return value


def check_priority(value: object, source: str) -> int:
    """``value`` if it is an ``int`` (not a bool) within :data:`PRIORITY_MIN`..
    :data:`PRIORITY_MAX`; :class:`~cgoom.InvalidValue` naming ``source`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValue(f"{source}: a priority is an int, not {value!r}", value=repr(value))
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        shown = str(value)
        shown = shown if len(shown) <= 24 else f"{shown[:12]}...({len(shown)} digits)"
        raise InvalidValue(
            f"{source}: priority {shown} is outside {PRIORITY_MIN}..{PRIORITY_MAX}",
            value=shown)
    return value


#: /proc/PID/stat flags bit of kernel threads (include/linux/sched.h): never candidates.
PF_KTHREAD = 0x00200000


def parse_proc_stat(text: str, source: str) -> tuple[str, str, int, int, int]:
    """``(comm, state, flags, start_time, rss_pages)`` from ``/proc/PID/stat``.

    ``comm`` is whatever the process set (``prctl(PR_SET_NAME)``: up to 15 bytes, any but
    NUL, parentheses, spaces and newlines included), so it is taken between the first ``(``
    and the *last* ``)``; the fields after it are space-separated (proc(5)): state is field
    3, flags 9, starttime 22, rss 24 (pages).
    """
    open_at, close_at = text.find("("), text.rfind(")")
    rest = text[close_at + 1:].split() if 0 <= open_at < close_at else []
    try:
        return (text[open_at + 1:close_at], rest[0], int(rest[6]), int(rest[19]),
                int(rest[21]))
    except (IndexError, ValueError):
        raise ParseError(f"{source}: not a /proc/PID/stat line: {_quote(text)}",
                         path=source) from None


# Some facts about /proc/PID/smaps_rollup (Documentation/filesystems/proc.rst, and
# Documentation/ABI/testing/procfs-smaps_rollup):
# - Linux 4.14 added it: one "[rollup]" header line, then the fields of /proc/PID/smaps
#   summed over every mapping, each "Name:   <n> kB" (Rss, Pss, Private_Clean, ...,
#   Swap, SwapPss, Locked).
# - Linux 5.3 added Pss_Anon, Pss_File, Pss_Shmem (the Pss of each kind), 6.0 Pss_Dirty;
#   a missing field is None, never 0.
# - Reading it walks the process's page tables under its mmap lock (read) and holds its mm
#   meanwhile: costly (proportional to the mappings), and never done while killing.


def parse_smaps_rollup(text: str, source: str) -> dict[str, int]:
    """The ``kB`` fields of ``/proc/PID/smaps_rollup`` in bytes (the header line and
    unknown or malformed lines skipped); :class:`~cgoom.ParseError` without ``Rss`` and
    ``Pss`` (not such a file)."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        parts = rest.split()
        if sep and len(parts) == 2 and parts[1] == "kB" and parts[0].isascii() \
                and parts[0].isdigit():
            values[name] = int(parts[0]) * 1024
    if "Rss" not in values or "Pss" not in values:
        raise ParseError(f"{source}: not a /proc/PID/smaps_rollup (no Rss and Pss): "
                         f"{_quote(text)}", path=source)
    return values


def rollup_sizes(values: Mapping[str, int]) -> tuple[int, int, int]:
    """``(pss, uss, freeable)`` of a process from its smaps_rollup fields.

    - ``uss``: Private_Clean + Private_Dirty, the pages no other process maps.
    - ``freeable``, what its kill gives back: its private anonymous memory and its share of
      swap. smaps_rollup has no "private anonymous" field, so the smaller of two bounds:
      USS (private, but counting private clean file pages, which stay in the page cache)
      and Pss_Anon (anonymous, but counting a share of pages forked siblings still map);
      plus SwapPss. Before 5.3 (no Pss_Anon): USS + SwapPss.
    """
    uss = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    anon = values.get("Pss_Anon")
    freeable = (uss if anon is None else min(uss, anon)) + values.get(
        "SwapPss", values.get("Swap", 0))
    return values["Pss"], uss, freeable
