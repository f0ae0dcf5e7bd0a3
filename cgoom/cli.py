"""The ``cgoom`` command: inspect a cgroup v2 memory hierarchy.

``cgoom status [PATH]`` prints each cgroup under PATH with its usage, limits, event counters,
population and memory pressure; ``cgoom features`` prints what the kernel and mount provide.
Exit status: 0 on success, 1 when cgoom cannot do its job here (the message says why and
what to do), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import attrs

from ._cgroup import Cgroup
from ._errors import CgoomError, CgroupGone, NotSupported
from ._hierarchy import Hierarchy
from ._types import Limit

_UNITS = ("B", "K", "M", "G", "T", "P", "E")


def human(value: Limit | None) -> str:
    """``1536 -> "1.5K"``, ``"max" -> "max"``, ``None -> "-"`` (binary units, as the kernel)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    amount = float(value)
    for unit in _UNITS:
        if amount < 1024 or unit == _UNITS[-1]:
            return f"{amount:.0f}{unit}" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    raise AssertionError("unreachable")


@attrs.frozen
class Row:
    """One line of ``cgoom status``: what a handler looks at first. ``None`` where the
    cgroup has no such file (the root cgroup has no memory.current)."""

    path: str
    current: int | None
    high: Limit | None
    max: Limit | None
    events: dict[str, int | None] | None
    populated: bool | None
    pressure_some_avg10: float | None


def _optional(read: object) -> object:
    try:
        return read()  # type: ignore[operator]
    except NotSupported:
        return None


def status_row(cgroup: Cgroup) -> Row:
    """Read one cgroup's row; raises :class:`~cgoom.CgroupGone` if it vanished meanwhile."""
    events = _optional(cgroup.memory_events)
    cg_events = _optional(cgroup.cgroup_events)
    pressure = _optional(cgroup.memory_pressure)
    return Row(
        path=cgroup.path,
        current=_optional(cgroup.memory_current),  # type: ignore[arg-type]
        high=_optional(cgroup.memory_high),  # type: ignore[arg-type]
        max=_optional(cgroup.memory_max),  # type: ignore[arg-type]
        events=None if events is None else {
            k: getattr(events, k) for k in ("high", "max", "oom", "oom_kill", "oom_group_kill")
        },
        populated=None if cg_events is None else cg_events.populated,  # type: ignore[attr-defined]
        pressure_some_avg10=None if pressure is None else pressure.some.avg10,  # type: ignore[attr-defined]
    )


def status_rows(hierarchy: Hierarchy, start: str, depth: int | None) -> list[Row]:
    base = hierarchy.cgroup(start)
    if not base.exists():
        raise CgroupGone(f"no cgroup {base.path} under {hierarchy.mount}", path=base.dir)
    base_depth = base.path.count("/") if not base.is_root else 0
    rows = []
    for cgroup in base.walk():
        level = (cgroup.path.count("/") if not cgroup.is_root else 0) - base_depth
        if depth is not None and level > depth:
            continue
        try:
            rows.append(status_row(cgroup))
        except CgroupGone:
            continue  # removed while we looked: the normal case on a live system
    return rows


def format_table(rows: Sequence[Row]) -> str:
    header = ("CGROUP", "CURRENT", "HIGH", "MAX", "HIGH#", "MAX#", "OOM", "OOM_KILL", "POP",
              "PSI10")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        ev = r.events or {}
        lines.append((
            r.path, human(r.current), human(r.high), human(r.max),
            *(str(ev.get(k, "-")) if r.events else "-" for k in ("high", "max", "oom", "oom_kill")),
            "-" if r.populated is None else str(int(r.populated)),
            "-" if r.pressure_some_avg10 is None else f"{r.pressure_some_avg10:.2f}",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                  enumerate(zip(line, widths, strict=True))).rstrip()
        for line in lines
    )


def _hierarchy(args: argparse.Namespace) -> Hierarchy:
    if args.mount:
        return Hierarchy(mount=args.mount)
    return Hierarchy.discover()


def _cmd_status(args: argparse.Namespace) -> int:
    hierarchy = _hierarchy(args)
    hierarchy.require_memory()
    rows = status_rows(hierarchy, args.path, args.depth)
    if args.json:
        print(json.dumps([attrs.asdict(r) for r in rows], indent=2))
    else:
        print(format_table(rows))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    hierarchy = _hierarchy(args)
    f = hierarchy.features()
    record = {
        "mount": hierarchy.mount,
        "mount_options": sorted(f.mount_options),
        "controllers": sorted(f.controllers),
        "memory": f.memory,
        "local_events": f.local_events,
        "psi": f.psi,
        "kernel_features": None if f.kernel_features is None else sorted(f.kernel_features),
        "delegatable": None if f.delegatable is None else sorted(f.delegatable),
        "probed": f.probed,
        "interface_files": sorted(f.interface_files),
    }
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        for key, value in record.items():
            shown = " ".join(value) if isinstance(value, list) else value
            print(f"{key}: {shown}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgoom", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mount", help="the cgroup2 mount (default: found in /proc/self/mountinfo)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="usage, limits, events and pressure of each cgroup")
    status.add_argument("path", nargs="?", default="/", help="subtree to show (default: all)")
    status.add_argument("--depth", type=int, default=None, help="levels below PATH to show")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_cmd_status)
    features = sub.add_parser("features", help="what this kernel and cgroup2 mount provide")
    features.add_argument("--json", action="store_true", help="print JSON")
    features.set_defaults(func=_cmd_features)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CgoomError as exc:
        print(f"cgoom: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
