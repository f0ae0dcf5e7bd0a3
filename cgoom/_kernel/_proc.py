"""Readers of one process's /proc files, read now (at decision and kill time).

Every path goes through ``hierarchy.proc_root`` (a fake tree has its own /proc). A process
that exits between two reads is normal: each reader says ``None`` then, never raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._errors import CgoomError
from ._parse import parse_proc_stat

if TYPE_CHECKING:
    from ._hierarchy import Hierarchy


def readable(text: str) -> str:
    """``text`` with undecodable bytes shown as U+FFFD. OsFS decodes with surrogateescape; a
    process name may be any bytes: show them, rather than carry lone surrogates that no
    strict encoder can print."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def process_stat(hierarchy: Hierarchy, pid: int) -> tuple[int, str] | None:
    """``(start time, state)`` of process ``pid`` now, from /proc/PID/stat (read and
    closed), or ``None`` if it is gone."""
    path = f"{hierarchy.proc_root}/{pid}/stat"
    try:
        _, state, _, start, _ = parse_proc_stat(readable(hierarchy.fs.read(path)), path)
    except (OSError, CgoomError):
        return None
    return start, state


def process_now(hierarchy: Hierarchy, pid: int) -> tuple[int, str, str] | None:
    """``(start time, state, cgroup path)`` of process ``pid`` now, from /proc/PID/stat and
    /proc/PID/cgroup (``0::/path``), or ``None`` if it is gone."""
    stat = process_stat(hierarchy, pid)
    if stat is None:
        return None
    start, state = stat
    try:
        cgroup_text = hierarchy.fs.read(f"{hierarchy.proc_root}/{pid}/cgroup")
    except OSError:
        return None
    for line in cgroup_text.splitlines():
        if line.startswith("0::"):
            return start, state, line[3:]
    return None


def oom_score_adj(hierarchy: Hierarchy, pid: int) -> int | None:
    """Process ``pid``'s oom_score_adj now (-1000..1000), ``None`` if it cannot be read or
    is out of the kernel's range."""
    try:
        adj = int(hierarchy.fs.read(f"{hierarchy.proc_root}/{pid}/oom_score_adj").strip())
    except (OSError, ValueError):
        return None
    return adj if -1000 <= adj <= 1000 else None
