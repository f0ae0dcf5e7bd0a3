"""Structured records for the systemd journal, through its native protocol, when ``cgoom
run``'s stderr is the journal. No libsystemd: a datagram per entry.

Some facts (systemd's docs/JOURNAL_NATIVE_PROTOCOL.md, systemd.exec(5) on
``$JOURNAL_STREAM``):

- A service whose stderr is connected to the journal gets ``$JOURNAL_STREAM`` =
  ``DEVICE:INODE`` of that stream; a process compares it with ``fstat(2)`` to know that its
  stderr still goes there (a redirect in between makes them differ) before it upgrades to
  the native protocol.
- The native protocol: one ``AF_UNIX`` datagram to ``/run/systemd/journal/socket`` per
  entry, fields as ``NAME=value`` lines; a value holding a newline is sent as ``NAME``, a
  newline, its length as a 64-bit little-endian integer, the bytes, and a newline. Field
  names are upper case letters, digits and underscores, not starting with an underscore.
- ``MESSAGE_ID`` is a 128-bit id in hex, the same for every entry of one kind, so
  ``journalctl MESSAGE_ID=...`` finds them all; ``PRIORITY`` is syslog's (3 error, 4
  warning, 6 info).

So each incident goes to the journal once with its fields (``CGOOM_INCIDENT``, ``CGOOM_RULE``,
``CGOOM_VICTIM``, ...); the human line on stderr stays as it is.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
from collections.abc import Mapping

from .._engine._incident import IncidentRecord
from .._engine._shadow import ShadowVerdict
from .._kernel._kmsg import KernelOomKill

JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: ``journalctl MESSAGE_ID=15cff7cacf9744719b9fbfa333faaa6e``: cgoom's incidents.
INCIDENT_MESSAGE_ID = "15cff7cacf9744719b9fbfa333faaa6e"
#: The kernel's own OOM kills, as cgoom read them from /dev/kmsg.
KERNEL_KILL_MESSAGE_ID = "9286d3c436e942b0a94b8619157b63d7"
#: A dry run's decision paired with the kernel's OOM kill that followed (shadow mode).
SHADOW_MESSAGE_ID = "97d7eaee481f4c2fb2d40c522326690a"

_NAME = re.compile(r"^[A-Z0-9][A-Z0-9_]*$")


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """Whether ``fd`` (stderr) is the journal stream ``$JOURNAL_STREAM`` names."""
    env = os.environ if environ is None else environ
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(fd)
        return (int(device), int(inode)) == (st.st_dev, st.st_ino)
    except (ValueError, OSError):
        return False


class PriorityPrefix(logging.Formatter):
    """``<N>message``: the syslog priority of the record's level in front of each line, which
    journald reads from a service's stderr (``SyslogLevelPrefix=yes``, systemd's default;
    sd-daemon(3)): without it every line of cgoom's, warnings and errors too, was stored at the
    stream's one priority (info)."""

    LEVELS = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
              (logging.INFO, 6))

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in self.LEVELS if record.levelno >= level), 7)
        return "\n".join(f"<{priority}>{line}"
                         for line in super().format(record).splitlines() or [""])


def stderr_formatter(environ: Mapping[str, str] | None = None, fd: int = 2,
                     ) -> logging.Formatter:
    """The daemon's stderr format: priority-prefixed lines when stderr is the journal, plain
    messages otherwise (a terminal, a file)."""
    if stderr_is_journal(environ, fd):
        return PriorityPrefix("%(message)s")
    return logging.Formatter("%(message)s")


def encode(fields: Mapping[str, str]) -> bytes:
    """One entry in the native protocol. Pure."""
    out = bytearray()
    for name, value in fields.items():
        if not _NAME.match(name):
            raise ValueError(f"not a journal field name: {name!r}")
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


def record_fields(record: IncidentRecord | KernelOomKill | ShadowVerdict) -> dict[str, str]:
    """The journal entry for one record."""
    if isinstance(record, ShadowVerdict):
        return {"MESSAGE": f"cgoom: {record}", "PRIORITY": "5",
                "MESSAGE_ID": SHADOW_MESSAGE_ID, "SYSLOG_IDENTIFIER": "cgoom",
                "CGOOM_INCIDENT": record.record, "CGOOM_RULE": record.rule,
                "CGOOM_DOMAIN": record.domain, "CGOOM_SHADOW": "agreed" if record.agreed
                else "disagreed", "CGOOM_CHOSEN": record.would,
                "CGOOM_SHADOW_LEAD_S": f"{record.lead:.1f}",
                "CGOOM_KERNEL_KILL_PID": str(record.kill.pid),
                "CGOOM_KERNEL_KILL_CGROUP": record.kill.task_memcg or ""}
    if isinstance(record, KernelOomKill):
        return {"MESSAGE": f"cgoom: kernel OOM kill: {record}", "PRIORITY": "4",
                "MESSAGE_ID": KERNEL_KILL_MESSAGE_ID, "SYSLOG_IDENTIFIER": "cgoom",
                "CGOOM_KERNEL_KILL_PID": str(record.pid),
                "CGOOM_KERNEL_KILL_TASK": record.task,
                "CGOOM_KERNEL_KILL_CGROUP": record.task_memcg or ""}
    victim = record.victim
    fields = {"MESSAGE": "cgoom: " + record.explain().splitlines()[0],
              "PRIORITY": "4" if victim is not None else "6",
              "MESSAGE_ID": INCIDENT_MESSAGE_ID, "SYSLOG_IDENTIFIER": "cgoom",
              "CGOOM_INCIDENT": record.id, "CGOOM_RULE": record.rule,
              "CGOOM_DOMAIN": record.domain, "CGOOM_TRIGGER": str(record.trigger),
              "CGOOM_TRIGGER_KIND": record.trigger.kind,
              "CGOOM_POLICY": record.decision.policy,
              "CGOOM_DRY_RUN": str(record.dry_run).lower(),
              "CGOOM_EXPLAIN": record.explain()}
    first = record.decision.first
    if first is not None:  # whom the decision named first (also in a dry run)
        fields["CGOOM_CHOSEN"] = first.cgroup
    if victim is not None:  # whom an action was taken on
        fields["CGOOM_VICTIM"] = victim.cgroup
        fields["CGOOM_ACTION"] = victim.action
        if victim.pid is not None:
            fields["CGOOM_VICTIM_PID"] = str(victim.pid)
    t = record.timings
    if t.kill_ms is not None:
        fields["CGOOM_KILL_MS"] = f"{t.kill_ms:.1f}"
    if t.confirmed_ms is not None:
        fields["CGOOM_GONE_MS"] = f"{t.confirmed_ms:.1f}"
    return fields


class Journal:
    """Sends entries to the journal's socket; ``send`` is ``False`` when it could not (the
    entry is not lost to the operator: the human line went to stderr too)."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def send(self, fields: Mapping[str, str]) -> bool:
        try:
            self._sock.sendto(encode(fields), self.path)
        except OSError:
            return False
        return True

    def close(self) -> None:
        self._sock.close()
