"""The kernel's own OOM kills, from the kernel log (/dev/kmsg): parsing (pure) and a reader
on the event loop. So a handler's stream shows every OOM kill on the machine, cgoom's or not.

Some facts about /dev/kmsg (Documentation/ABI/testing/dev-kmsg, mm/oom_kill.c 6.1):

- Each read(2) returns exactly one record: ``pri,seq,usec,flags;message\\n``, then
  continuation lines starting with a space (``" SUBSYSTEM=..."``). Opening it starts at the
  oldest record still in the buffer; ``lseek(SEEK_END)`` skips to new ones. EPIPE: records
  were overwritten before we read them (we lost some; the next read goes on). It is pollable
  (POLLIN), so ``loop.add_reader`` works; reading needs CAP_SYSLOG unless
  ``kernel.dmesg_restrict=0``.
- An OOM kill prints ``oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,
  mems_allowed=0,oom_memcg=/t,task_memcg=/t,task=python3,pid=246,uid=0`` (dump_oom_summary),
  then ``Memory cgroup out of memory: Killed process 246 (python3) total-vm:219728kB,
  anon-rss:50904kB, file-rss:3212kB, shmem-rss:0kB, UID:0 pgtables:164kB oom_score_adj:0``
  (``Out of memory:`` for a global OOM). A ``memory.oom.group`` kill prints one "Killed
  process" line per member, with no oom-kill line of its own.
- The task name and the cgroup paths are chosen by the workload: any text, commas and
  parentheses included (non-printable bytes are escaped as ``\\xNN``). So the fixed tail of
  each line is matched from the end, and the two lines are joined by pid; a name crafted to
  look like the separators can only garble the *report* of a kill the kernel made.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("cgoom")

_SUMMARY = re.compile(
    r"oom-kill:constraint=(?P<constraint>[A-Z_]+),.*,oom_memcg=(?P<oom_memcg>.*),"
    r"task_memcg=(?P<task_memcg>.*),task=(?P<task>.*),pid=(?P<pid>[0-9]+),uid=(?P<uid>[0-9]+)")
_KILLED = re.compile(
    r"(?P<why>.*): Killed process (?P<pid>[0-9]+) \((?P<task>.*)\) total-vm:(?P<vm>[0-9]+)kB, "
    r"anon-rss:(?P<anon>[0-9]+)kB, file-rss:(?P<file>[0-9]+)kB, shmem-rss:(?P<shmem>[0-9]+)kB, "
    r"UID:(?P<uid>[0-9]+) pgtables:(?P<pgt>[0-9]+)kB oom_score_adj:(?P<adj>-?[0-9]+)")


@attrs.frozen
class KernelOomKill:
    """A process the kernel's OOM killer killed. Sizes in bytes. ``constraint``,
    ``oom_memcg`` (the cgroup that ran out of memory) and ``task_memcg`` come from the
    oom-kill summary line, ``None`` for the other members of a memory.oom.group kill."""

    pid: int
    task: str
    reason: str
    anon_rss: int
    file_rss: int
    shmem_rss: int
    oom_score_adj: int
    uid: int
    constraint: str | None = None
    oom_memcg: str | None = None
    task_memcg: str | None = None
    #: Microseconds since boot, from the kernel's record.
    kernel_usec: int = 0
    #: ``time.monotonic()`` when cgoom read it.
    time: float = 0.0
    #: The summary line could not be read one way only: a cgroup or task name held one of
    #: its own separators (a tenant can name its cgroup ``a,task_memcg=/system.slice/db``).
    #: ``oom_memcg`` and ``task_memcg`` are then ``None``, never a guess; the memory.events
    #: ``oom_kill`` counters of the cgroups cgoom watches say where it happened.
    ambiguous: bool = False

    def explain(self) -> str:
        return str(self)

    def __str__(self) -> str:
        where = f" in {self.task_memcg}" if self.task_memcg else ""
        cause = f" ({self.constraint}, {self.oom_memcg} out of memory)" if self.oom_memcg else ""
        return (f"kernel OOM kill{where}: pid {self.pid} ({self.task}), anon-rss "
                f"{self.anon_rss >> 10}K, oom_score_adj {self.oom_score_adj}{cause}")


def parse_record(text: str) -> tuple[int, int, str] | None:
    """``(seq, usec, message)`` of one /dev/kmsg record, or ``None`` if it is not one."""
    head, sep, rest = text.partition(";")
    fields = head.split(",")
    if not sep or len(fields) < 3:
        return None
    try:
        seq, usec = int(fields[1]), int(fields[2])
    except ValueError:
        return None
    return seq, usec, rest.split("\n", 1)[0]


class OomKillParser:
    """Turns kernel log messages into :class:`KernelOomKill` records: a summary line waits
    for the "Killed process" line of the same pid. Pure (the caller gives the time)."""

    def __init__(self) -> None:
        self._summaries: dict[int, re.Match[str]] = {}

    def feed(self, message: str, usec: int, now: float) -> KernelOomKill | None:
        summary = _SUMMARY.fullmatch(message)
        if summary is not None:
            self._summaries[int(summary["pid"])] = summary
            if len(self._summaries) > 64:  # a summary whose kill line never came
                self._summaries.pop(next(iter(self._summaries)))
            return None
        killed = _KILLED.fullmatch(message)
        if killed is None:
            return None
        pid = int(killed["pid"])
        s = self._summaries.pop(pid, None)
        # The kernel prints "...,oom_memcg=%s,task_memcg=%s,task=%s,pid=%d,uid=%d" with the
        # cgroup paths and the task's name unescaped (mm/memcontrol.c
        # mem_cgroup_print_oom_context, mm/oom_kill.c dump_oom_summary): a name holding a
        # separator makes the split a guess, and the guess is the tenant's to steer.
        ambiguous = s is not None and any(
            s.string.count(sep) != 1 for sep in (",oom_memcg=", ",task_memcg=", ",task="))
        if ambiguous:
            log.warning("cgoom: a kernel OOM kill's summary names its cgroups ambiguously "
                        "(a cgroup or task name holds a separator): not attributed from "
                        "the log: %r", s.string[:300])  # type: ignore[union-attr]
        known = s is not None and not ambiguous
        return KernelOomKill(
            pid=pid, task=killed["task"], reason=killed["why"],
            anon_rss=int(killed["anon"]) << 10, file_rss=int(killed["file"]) << 10,
            shmem_rss=int(killed["shmem"]) << 10, oom_score_adj=int(killed["adj"]),
            uid=int(killed["uid"]), constraint=None if s is None else s["constraint"],
            oom_memcg=s["oom_memcg"] if known else None,  # type: ignore[index]
            task_memcg=s["task_memcg"] if known else None,  # type: ignore[index]
            kernel_usec=usec, time=now, ambiguous=ambiguous)


class KmsgReader:
    """Follows ``path`` (/dev/kmsg) on the loop from now on, calling ``on_kill`` for each
    kernel OOM kill. :meth:`open` raises ``OSError`` when the log cannot be read (no
    CAP_SYSLOG with dmesg_restrict, or no such device): the caller says so and goes on."""

    def __init__(self, path: str, on_kill: Callable[[KernelOomKill], object]) -> None:
        self.path = path
        self.on_kill = on_kill
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._parser = OomKillParser()
        self.lost = 0

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # Only what happens from now on (a FIFO, in tests, has no position: it starts empty).
        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_END)
        self._fd, self._loop = fd, loop
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        while True:
            try:
                chunk = os.read(self._fd, 8192)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten before we read: go on
                    self.lost += 1
                    continue
                log.warning("cgoom: reading %s: %s", self.path, exc)
                self.close()
                return
            if not chunk:
                return
            now = time.monotonic()
            # /dev/kmsg gives one record a read; a FIFO (tests) may give several.
            for text in chunk.decode("utf-8", "replace").splitlines():
                record = parse_record(text) if not text.startswith(" ") else None
                if record is None:
                    continue
                kill = self._parser.feed(record[2], record[1], now)
                if kill is not None:
                    try:
                        self.on_kill(kill)
                    except Exception:
                        log.exception("cgoom: a kernel OOM kill listener failed")

    def close(self) -> None:
        if self._fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
