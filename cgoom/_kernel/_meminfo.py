"""The machine's memory as the kernel sums it up: ``MemTotal`` and ``MemAvailable`` from
``/proc/meminfo`` (parsing is pure; reading goes through the hierarchy's ``proc_root``).

Some facts about /proc/meminfo (Documentation/filesystems/proc.rst, fs/proc/meminfo.c):

- ``Key:   value kB`` lines; sizes are KiB. Keys appear over kernel versions; only the two
  below are read here. ``MemAvailable`` (3.14+) is the kernel's estimate of what can be
  allocated without swapping: free memory above the low watermarks plus the reclaimable
  part of the page cache and slab. It is what earlyoom, nohang and low-memory-monitor watch.
- Reading it costs about 30 us (si_meminfo and a few sums; no lock of note), cheap enough to
  re-check on every tripwire event.
"""

from __future__ import annotations

import os

import attrs

from .._errors import ParseError
from ._hierarchy import Hierarchy


@attrs.frozen
class MemInfo:
    """The machine's memory, in bytes."""

    total: int
    available: int

    def fraction_available(self) -> float:
        return self.available / self.total if self.total else 0.0


def parse_meminfo(text: str, source: str) -> MemInfo:
    """``MemTotal`` and ``MemAvailable`` of ``/proc/meminfo``'s text."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key not in ("MemTotal", "MemAvailable"):
            continue
        parts = rest.split()
        if len(parts) != 2 or parts[1] != "kB" or not parts[0].isdigit():
            raise ParseError(f"{source}: {key} is not 'N kB': {line[:80]!r}", path=source)
        found[key] = int(parts[0]) * 1024
    missing = {"MemTotal", "MemAvailable"} - found.keys()
    if missing:
        raise ParseError(f"{source}: no {' or '.join(sorted(missing))} line (MemAvailable is "
                         "there since Linux 3.14)", path=source)
    return MemInfo(total=found["MemTotal"], available=found["MemAvailable"])


def read_meminfo(hierarchy: Hierarchy) -> MemInfo:
    """The machine's memory now, from ``<proc_root>/meminfo``."""
    path = os.path.join(hierarchy.proc_root, "meminfo")
    return parse_meminfo(hierarchy.fs.read(path), path)
