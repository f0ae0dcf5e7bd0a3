"""The process connector: every fork and exit on the machine as the kernel reports them, on
the event loop. The engine uses it to confirm its kills process by process (each exit with
its signal) and to catch a fork racing a whole-cgroup kill. pyroute2 is the boundary: its
message classes decode the kernel's structs; the socket is our own (below).

Some facts about the process connector (drivers/connector/cn_proc.c, include/uapi/linux/
cn_proc.h; measured on 6.1 in the project's VM):

- A ``NETLINK_CONNECTOR`` datagram socket bound to multicast group ``CN_IDX_PROC`` receives
  one message per event after a ``PROC_CN_MCAST_LISTEN`` control message. Binding to the
  group needs root (the connector family does not allow unprivileged receivers), and listen
  needs CAP_NET_ADMIN in the initial user namespace.
- An exit event is sent for every thread: ``process_pid`` is the thread, ``process_tgid``
  the process; the process is gone with its last thread. ``exit_code`` is the wait status
  (the killing signal in the low 7 bits: 9 for SIGKILL, whether cgoom's or the kernel's).
  Event ``timestamp_ns`` is ``ktime_get_ns()``: CLOCK_MONOTONIC, ``time.monotonic_ns()``.
- The kernel drops events when the receive buffer is full; the next ``recv`` fails with
  ENOBUFS. They are counted (``lost``), never guessed: a kill is still confirmed by
  ``populated 0`` or the pidfd, which cannot be lost.
- pyroute2's own ``ProcEventSocket`` delivered fork and exec events but **dropped every exit
  event** on 6.1 while a raw socket received them (DESIGN.md), and its ``control(listen=
  True)`` blocks waiting for a reply the kernel does not send. So cgoom opens the socket,
  sends the listen message that pyroute2's ``proc_event_control`` encodes, and decodes each
  datagram with pyroute2's ``ProcEventMarshal``.
- Importing pyroute2 costs about 0.3 s on a host and 8-10 s in the emulated VM: it is
  imported in a worker thread when a handler starts (``load``), never at OOM time.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("cgoom")

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1


@attrs.frozen
class ProcessExit:
    """Process ``pid`` (its last thread) exited with wait status ``status``."""

    pid: int
    parent: int
    status: int
    #: CLOCK_MONOTONIC nanoseconds, from the kernel.
    timestamp_ns: int

    @property
    def signal(self) -> int | None:
        """The signal that ended it, or ``None`` for a normal exit."""
        return self.status & 0x7F or None


@attrs.frozen
class ProcessFork:
    """Process ``parent`` forked process ``child``."""

    parent: int
    child: int
    timestamp_ns: int


ProcEvent = ProcessExit | ProcessFork

_classes: dict[str, Any] = {}


def load() -> None:
    """Import pyroute2's connector classes (slow: call it in a worker thread)."""
    if _classes:
        return
    from pyroute2.netlink import NLMSG_DONE
    from pyroute2.netlink.connector.cn_proc import (
        CN_VAL_PROC,
        PROC_CN_MCAST_LISTEN,
        ProcEventMarshal,
        proc_event_control,
    )

    listen = proc_event_control()
    listen["header"]["type"] = NLMSG_DONE
    listen["header"]["flags"] = 0
    listen["header"]["sequence_number"] = 0
    listen["header"]["pid"] = 0
    listen["idx"], listen["val"] = CN_IDX_PROC, CN_VAL_PROC
    listen["len"], listen["action"] = 4, PROC_CN_MCAST_LISTEN
    listen.encode()
    _classes.update(listen=bytes(listen.data), marshal=ProcEventMarshal())


class NetlinkListener:
    """A netlink socket read on the loop. A subclass subscribes through :meth:`_attach`
    (the socket's protocol, type, address and first message), handles each datagram in
    :meth:`_take` (an :class:`OSError` there stops it, as a failing socket does), and may
    say goodbye in :meth:`_unsubscribe` before the socket closes."""

    #: What the log calls it.
    what = "netlink"

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Times the kernel dropped messages (ENOBUFS).
        self.lost = 0

    def _attach(self, loop: asyncio.AbstractEventLoop, protocol: int, kind: int,
                address: tuple[int, int], first: bytes) -> None:
        sock = socket.socket(socket.AF_NETLINK, kind | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC, protocol)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind(address)
            sock.send(first)
        except OSError:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        loop.add_reader(sock.fileno(), self._readable)

    def close(self) -> None:
        if self._sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._unsubscribe(self._sock)
        self._sock.close()
        self._sock = None

    def _unsubscribe(self, sock: socket.socket) -> None:
        """Tell the kernel before the socket goes (nothing to say by default)."""

    def _take(self, data: bytes) -> None:
        raise NotImplementedError

    def _lose(self) -> None:
        self.lost += 1

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            for data in datagrams(self._sock, self._lose):
                self._take(data)
        except OSError as exc:
            log.error("cgoom: %s stopped: %s", self.what, exc)
            self.close()


class ProcConnector(NetlinkListener):
    """The process connector on the loop: ``on_event`` gets each :class:`ProcessExit`
    (process exits only, not threads) and :class:`ProcessFork` (new processes, not
    threads). :meth:`open` after :func:`load`."""

    what = "the process connector"

    def __init__(self, on_event: Callable[[ProcEvent], object]) -> None:
        super().__init__()
        self._on_event = on_event
        self.received = 0

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind and listen; :class:`OSError` if this process may not (root and
        CAP_NET_ADMIN are needed)."""
        load()
        self._attach(loop, NETLINK_CONNECTOR, socket.SOCK_DGRAM, (0, CN_IDX_PROC),
                     _classes["listen"])

    def _take(self, data: bytes) -> None:
        self.received += 1
        try:
            messages = list(_classes["marshal"].parse(data))
        except Exception:  # a message pyroute2 cannot decode: not ours to act on
            log.debug("cgoom: undecodable process connector message", exc_info=True)
            return
        for msg in messages:
            event = _event(msg)
            if event is not None:
                self._on_event(event)


def datagrams(sock: socket.socket, lost: Callable[[], object]) -> Iterator[bytes]:
    """The datagrams waiting on a non-blocking netlink socket, at most 256 (then the loop
    breathes; the reader is level-triggered, so it comes back). ``lost()`` for each ENOBUFS
    (the kernel dropped messages); any other error is raised."""
    for _ in range(256):
        try:
            yield sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            lost()


def _event(msg: Any) -> ProcEvent | None:
    name = msg.get("event")
    if name == "PROC_EVENT_EXIT":
        if msg["process_pid"] != msg["process_tgid"]:
            return None  # a thread (the leader's exit is the process's, as wait() sees it)
        return ProcessExit(msg["process_tgid"], msg["parent_tgid"], msg["exit_code"],
                           msg["timestamp_ns"])
    if name == "PROC_EVENT_FORK":
        if msg["child_pid"] != msg["child_tgid"]:
            return None  # a new thread
        return ProcessFork(msg["parent_tgid"], msg["child_tgid"], msg["timestamp_ns"])
    return None


def now_ns() -> int:
    """CLOCK_MONOTONIC nanoseconds, as the connector's timestamps."""
    return time.monotonic_ns()
