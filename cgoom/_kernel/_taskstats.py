"""taskstats: how long each process cgoom killed had been stalled on memory, from the
kernel's delay accounting, for the incident records. Exit statistics arrive on the loop for
every task that exits; the engine keeps those of the processes it killed.

Some facts about taskstats (Documentation/accounting/taskstats.rst, taskstats-struct.rst,
kernel/taskstats.c, include/uapi/linux/taskstats.h; measured on 6.1 and 6.18):

- A generic-netlink family ``TASKSTATS``. A listener registers a CPU mask
  (``TASKSTATS_CMD_ATTR_REGISTER_CPUMASK``, e.g. ``"0-3"``) and then receives, for each task
  exiting on those CPUs, a ``TASKSTATS_TYPE_AGGR_PID`` (the thread's own statistics) and,
  when the last thread of a multi-threaded process exits, a ``TASKSTATS_TYPE_AGGR_TGID``
  (the process's totals). Registering needs root (CAP_NET_ADMIN).
- ``struct taskstats`` only ever grows: fields are appended and ``version`` says how many
  are there (13 on 6.1, 16 on 6.18). The ones read here sit at fixed offsets of the
  version-7+ prefix: ``swapin_delay_total`` (56), ``ac_pid`` (128),
  ``freepages_delay_total`` (320: direct reclaim), ``thrashing_delay_total`` (336, v9+:
  waiting for refaulting pages), ``compact_delay_total`` (360, v11+). Nanoseconds.
  pyroute2 0.9.7's decoder picks a layout with min/max fields inline for version 15 and the
  old one otherwise, which misreads 16: so the offsets are read here, and pyroute2 is used
  for what it does well, resolving the family's id.
- Delay accounting is off by default since 5.14 (``kernel.task_delayacct=0``; boot with
  ``delayacct`` or set the sysctl): the delays then read 0, and the handler says so rather
  than record zeros as facts. Turned on at run time, it counts from then on.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ._netlink import NetlinkListener

if TYPE_CHECKING:
    import asyncio

NETLINK_GENERIC = 16
NLM_F_REQUEST = 1
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_NEW = 2
CMD_ATTR_REGISTER_CPUMASK, CMD_ATTR_DEREGISTER_CPUMASK = 3, 4
TYPE_PID, TYPE_TGID, TYPE_STATS, TYPE_AGGR_PID, TYPE_AGGR_TGID = 1, 2, 3, 4, 5
_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")


@attrs.frozen
class MemoryStall:
    """How long process ``pid`` had waited on memory over its life, in milliseconds:
    direct ``reclaim`` (freepages), ``thrashing`` (refaults), ``swapin``, ``compact``
    (``None`` where the kernel's taskstats is too old to say)."""

    pid: int
    reclaim_ms: float
    thrashing_ms: float | None
    swapin_ms: float
    compact_ms: float | None

    def __str__(self) -> str:
        parts = [f"reclaim {self.reclaim_ms:.0f} ms"]
        if self.thrashing_ms is not None:
            parts.append(f"thrashing {self.thrashing_ms:.0f} ms")
        parts.append(f"swap-in {self.swapin_ms:.0f} ms")
        if self.compact_ms is not None:
            parts.append(f"compaction {self.compact_ms:.0f} ms")
        return f"pid {self.pid}: " + ", ".join(parts)


def parse_stats(raw: bytes) -> MemoryStall | None:
    """A ``struct taskstats`` (any version from 7 on) as a :class:`MemoryStall`."""
    if len(raw) < 328:
        return None
    (version,) = struct.unpack_from("=H", raw, 0)
    (swapin,) = struct.unpack_from("=Q", raw, 56)
    (pid,) = struct.unpack_from("=I", raw, 128)
    (reclaim,) = struct.unpack_from("=Q", raw, 320)
    thrashing = compact = None
    if version >= 9 and len(raw) >= 344:
        thrashing = struct.unpack_from("=Q", raw, 336)[0] / 1e6
    if version >= 11 and len(raw) >= 368:
        compact = struct.unpack_from("=Q", raw, 360)[0] / 1e6
    return MemoryStall(pid, reclaim / 1e6, thrashing, swapin / 1e6, compact)


def _attrs(data: bytes, offset: int, end: int) -> list[tuple[int, bytes]]:
    found = []
    while offset + 4 <= end:
        length, kind = _NLA.unpack_from(data, offset)
        if length < 4:
            break
        found.append((kind & 0x3FFF, data[offset + 4:offset + length]))
        offset += (length + 3) & ~3
    return found


def parse_exit(data: bytes, family: int) -> list[tuple[bool, MemoryStall]]:
    """The statistics in one datagram of exit notifications of the TASKSTATS ``family``:
    (process totals?, stall) for each ``AGGR_PID`` (a thread) and ``AGGR_TGID`` (a whole
    process). :class:`OSError` for an error the kernel sent back."""
    found = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _port = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size:
            break
        if kind == 2 and length >= _NLMSG.size + 4:  # NLMSG_ERROR
            (code,) = struct.unpack_from("=i", data, offset + _NLMSG.size)
            if code:
                raise OSError(-code, f"taskstats: {os.strerror(-code)}")
        if kind != family:
            offset += (length + 3) & ~3
            continue
        body = offset + _NLMSG.size + 4  # genlmsghdr: cmd, version, reserved
        for kind, payload in _attrs(data, body, offset + length):
            if kind not in (TYPE_AGGR_PID, TYPE_AGGR_TGID):
                continue
            ident = None
            for inner, value in _attrs(payload, 0, len(payload)):
                if inner in (TYPE_PID, TYPE_TGID) and len(value) >= 4:
                    (ident,) = struct.unpack_from("=I", value, 0)
                elif inner == TYPE_STATS:
                    stall = parse_stats(value)
                    if stall is not None and ident is not None:
                        found.append((kind == TYPE_AGGR_TGID, attrs.evolve(stall, pid=ident)))
        offset += (length + 3) & ~3
    return found


def family_id() -> int:
    """The TASKSTATS generic-netlink family's id, through pyroute2 (slow to import: call it
    in a worker thread)."""
    from pyroute2 import TaskStats

    sock = TaskStats()
    try:
        sock.bind()
        return int(sock.prid)
    finally:
        sock.close()


def delay_accounting(proc_root: str = "/proc") -> bool | None:
    """Whether the kernel accounts delays now (``kernel.task_delayacct``); ``None`` if it
    cannot tell (before 5.14 there is no sysctl: the ``delayacct`` boot option decides)."""
    try:
        with open(os.path.join(proc_root, "sys", "kernel", "task_delayacct")) as f:
            return f.read().strip() == "1"
    except OSError:
        return None


class ExitStats(NetlinkListener):
    """Exit statistics of every task on the machine, on the loop: ``on_stall(is_process,
    stall)`` for each. :meth:`open` with the family id from :func:`family_id`."""

    what = "taskstats"

    def __init__(self, on_stall: Callable[[bool, MemoryStall], object]) -> None:
        super().__init__()
        self._on_stall = on_stall
        self._family = 0
        self._mask = f"0-{(os.cpu_count() or 1) - 1}"

    def _command(self, attr: int) -> bytes:
        value = self._mask.encode() + b"\0"
        nla = _NLA.pack(4 + len(value), attr) + value + b"\0" * (-len(value) % 4)
        body = struct.pack("=BBH", TASKSTATS_CMD_GET, 1, 0) + nla
        return _NLMSG.pack(_NLMSG.size + len(body), self._family, NLM_F_REQUEST, 1, 0) + body

    def open(self, loop: asyncio.AbstractEventLoop, family: int) -> None:
        self._family = family
        self._attach(loop, NETLINK_GENERIC, socket.SOCK_RAW, (0, 0),
                     self._command(CMD_ATTR_REGISTER_CPUMASK))

    def _unsubscribe(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the kernel drops a listener whose socket is gone
            sock.send(self._command(CMD_ATTR_DEREGISTER_CPUMASK))

    def _take(self, data: bytes) -> None:
        # parse_exit raises OSError for an error the kernel sent back (it refused the
        # listener): that stops the reader, as a failing socket does.
        for is_process, stall in parse_exit(data, self._family):
            self._on_stall(is_process, stall)
