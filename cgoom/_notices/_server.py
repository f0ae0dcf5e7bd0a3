"""cgoom's end of the notice socket: a Unix stream socket on the handler's event loop that
turns each client's registrations into :meth:`Handler.register` and
:meth:`Handler.declare_killable` calls, and carries notices and answers both ways
(protocol: :mod:`cgoom._notices._protocol`; docs/notices.md). Also the systemd memory pressure
protocol's socket (:class:`PressureSocket`): a consumer of ``$MEMORY_PRESSURE_WATCH``
connects and is woken with a byte when its domain reaches the configured level.

Who may register for what is decided by the peer's credentials (``SO_PEERCRED``, taken
by the kernel when the client connected): root, for any cgroup; anyone else for the cgroup
its process lives in, or a cgroup whose directory its user owns (a delegated subtree,
systemd's ``Delegate=yes``). Never someone else's.

A client can do nothing that delays an action or the loop for long:

- a line longer than :data:`~cgoom._notices._protocol.MAX_LINE` ends its connection;
- it is read at most ``max_rate`` messages a second (then the kernel's socket buffer
  fills and the client waits: backpressure, not a busy loop);
- ``max_errors`` bad messages end its connection;
- it is never written to with more than ``max_buffered`` bytes queued: one that stops
  reading is dropped, and its first chance ends then (``error: stopped reading``);
- one that goes mid-incident ends its first chance at once (``error: disconnected``);
- at most ``max_clients`` connections at a time, and ``max_per_user`` of one user (root
  excepted: its services are the machine's own); more are turned away at once, told why;
- never more connections, across every socket of the process, than its file descriptor
  limit (``RLIMIT_NOFILE``, the soft one) less :data:`FD_RESERVE`: without that, a user who
  opened ~1,000 connections under systemd's default soft limit of 1024 left the engine
  unable to open ``memory.current`` at OOM time (no decision at all), and asyncio's accept
  loop logging ``EMFILE`` thousands of times a second (measured with a soft limit of 256:
  246 clients in, 1.27 million log lines in 12 s). ``cgoom run`` raises its soft limit to
  the hard one at start (:func:`raise_fd_limit`);
- at most ``max_registrations`` cgroups registered per connection, and
  ``max_registrations_per_user`` per user across its connections (root excepted);
- at most ``max_bytes_per_user`` bytes held for one user across its connections (root
  excepted): what it sent and cgoom has not handled yet (unfinished lines, messages waiting
  their turn) and what cgoom wrote to it that it has not read. The connection that would
  take the user over is ended (``error: holds too much``). Without it, one user's 256
  connections, each with unread answers and a 60 KiB unfinished line, grew the daemon from
  28 to 72 MiB (benchmarks/notify.py ``hold_rss_growth_mib``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import socket
import stat
import struct
import time
import weakref
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, ClassVar

import attrs

from .._engine._firstchance import Answer, Gone, Notice
from .._errors import CgoomError
from .._kernel._linux import FD_RESERVE, fd_room
from .._kernel._paths import inside, normalize_path
from ._connection import Connection, LineTooLong
from ._protocol import (
    LEVELS,
    MAX_LINE,
    OPS,
    VERSION,
    ProtocolError,
    Register,
    Reply,
    SetKillable,
    Unregister,
    encode,
    parse_request,
)

if TYPE_CHECKING:
    from .._engine._handler import Handler
    from .._kernel._hierarchy import Hierarchy

log = logging.getLogger("cgoom.notices")

#: listen(2)'s backlog for the sockets; the kernel caps it at net.core.somaxconn.
BACKLOG = 4096

#: How often at most a server logs that it turned clients away (each one is counted).
_REFUSAL_LOG_INTERVAL = 10.0
#: The longest the notice server handles messages in one turn of the loop (seconds), and how
#: many read messages may wait for it.
SLICE = 0.001
INBOX = 256


def _count_down(counts: dict[int, int], uid: int, by: int) -> None:
    """``counts[uid] -= by``; a count that reaches 0 leaves the dict (per-uid counts stay as
    many as the users holding something)."""
    left = counts.get(uid, 0) - by
    if left > 0:
        counts[uid] = left
    else:
        counts.pop(uid, None)


class Refused(Exception):
    """A client may not register for that cgroup; the text says why."""


@attrs.frozen
class Peer:
    """The credentials the kernel took when the client connected (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, sock: socket.socket) -> Peer:
        # struct ucred { pid_t pid; uid_t uid; gid_t gid; } (socket(7), unix(7))
        pid, uid, gid = struct.unpack("3i", sock.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        return cls(pid, uid, gid)


def authorize(hierarchy: Hierarchy, peer: Peer, requested: str | None,
              domains: tuple[str, ...]) -> str:
    """The cgroup ``peer`` may register for when it asks for ``requested`` (``None``: its
    own), or :class:`Refused`. It must lie in one of ``domains`` (else it would hear
    nothing)."""
    own: str | None = None
    try:
        own = hierarchy.own_cgroup(peer.pid).path
        # The pid was the peer's when it connected; by now it may be another process's
        # (the peer exited and its pid was reused). A process of another user is caught
        # here: its own cgroup is not the peer's to claim. (A process of the same user
        # could claim nothing that user could not already signal or write.)
        if hierarchy.fs.stat(os.path.join(hierarchy.proc_root, str(peer.pid))).st_uid \
                != peer.uid and peer.uid != 0:
            own = None
    except (CgoomError, OSError):
        own = None
    if own is None and requested is None:
        raise Refused(f"cannot tell the cgroup of process {peer.pid} (it went?); name "
                      "the cgroup")
    path = normalize_path(requested) if requested is not None else own
    assert path is not None
    cgroup = hierarchy.cgroup(path)
    try:
        owner = hierarchy.fs.stat(cgroup.dir).st_uid
    except OSError:
        raise Refused(f"cgroup {path}: no such cgroup") from None
    if peer.uid != 0 and path != own and owner != peer.uid:
        raise Refused(f"cgroup {path}: not yours: uid {peer.uid} may register for its own "
                      f"cgroup ({own or 'unknown'}) or one its user owns (delegated); "
                      f"{path} belongs to uid {owner}")
    if not any(inside(path, d) for d in domains):
        raise Refused(f"cgroup {path}: in no rule's domain ({', '.join(domains)}): it "
                      "would hear nothing")
    return path


@attrs.frozen
class ServerStatistics:
    """What the notice socket has seen: clients connected now and in all, registrations
    now, clients turned away (over ``max_clients``, ``max_per_user`` or the process's file
    descriptors) and dropped (too long a line, too many
    errors, stopped reading, holding too much), bad messages, notices written; ``held``:
    the bytes held for the clients now (read and not handled yet, written and not sent
    yet)."""

    clients: int
    connected: int
    registrations: int
    refused: int
    dropped: int
    bad_messages: int
    notices: int
    held: int = 0


class _Client:
    """One connection: its credentials, what it registered, what it has not answered."""

    def __init__(self, server: NoticeServer, connection: Connection,
                 transport: asyncio.Transport, peer: Peer) -> None:
        self.server = server
        self.connection = connection
        self.transport = transport
        self.peer = peer
        self.registered: dict[str, Callable[[], None]] = {}
        self.killable: dict[str, Callable[[], None]] = {}
        self.pending: dict[int, asyncio.Future[Answer]] = {}
        self.closed = False
        self.why = "disconnected"
        #: Bad messages so far (``max_errors`` of them end the connection).
        self.errors = 0
        #: Bytes held for it: read and not handled yet, and written and not sent yet (as
        #: last seen: the transport's buffer only shrinks between two writes).
        self.held_in = 0
        self.held_out = 0

    def took(self, size: int) -> None:
        """``size`` bytes came from the client (its connection's count)."""
        if self.closed:
            return
        self.held_in += size
        if not self.server._hold(self, size):
            self.close("holds too much")

    def handled(self, size: int) -> None:
        """A message of ``size`` bytes (counted by :meth:`took`) was handled or dropped."""
        if not self.closed:
            self.held_in -= size
            self.server._hold(self, -size)

    def send(self, data: bytes) -> bool:
        """Queue ``data``; ``False`` (and the client dropped) when it has stopped reading."""
        if self.closed:
            return False
        transport = self.transport
        if transport.is_closing():
            self.close("disconnected")
            return False
        if transport.get_write_buffer_size() + len(data) > self.server.max_buffered:
            self.server._dropped += 1
            self.close("stopped reading")
            return False
        transport.write(data)
        size = transport.get_write_buffer_size()  # 0 when the socket took it all
        if size != self.held_out:
            grew, self.held_out = size - self.held_out, size
            if not self.server._hold(self, grew):
                self.close("holds too much")
                return False
        return True

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed, self.why = True, why
        self.server._let_go(self)
        for undo in [*self.registered.values(), *self.killable.values()]:
            undo()
        self.server._forget(self.peer.uid, len(self.registered))
        self.registered.clear()
        self.killable.clear()
        for future in self.pending.values():
            if not future.done():
                future.set_exception(Gone(why))
        self.pending.clear()
        self.transport.abort()

    def tell(self, notice: Notice) -> None:
        """A notice that takes no answer, written at once (a fan-out makes no tasks)."""
        if self.send(self._line(next(self.server._ids), notice)):
            self.server._notices += 1

    @staticmethod
    def _line(nid: int, notice: Notice) -> bytes:
        # encode("notice", ...) by hand: a fan-out writes one per client (measured: half
        # the time of json.dumps for 1,000 clients). The same bytes, key for key.
        return (f'{{"v":{VERSION},"op":"notice","id":{nid},"level":"{notice.level}",'
                f'"domain":{_quoted(notice.domain)},"cgroup":{_quoted(notice.cgroup)},'
                f'"usage":{_number(notice.usage)},"threshold":{_number(notice.threshold)},'
                f'"reclaim_target":{notice.reclaim_target},'
                f'"deadline":{_number(notice.deadline)}}}\n').encode()

    async def on_notice(self, notice: Notice) -> Answer | None:
        """The handler registered for this client's cgroups: write the notice; for a first
        chance, wait for the answer (the engine cuts it off at the deadline)."""
        nid = next(self.server._ids)
        if not self.send(self._line(nid, notice)):
            raise Gone(self.why)
        self.server._notices += 1
        if notice.deadline is None:
            return None
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.pending[nid] = future
        try:
            return await future
        finally:
            self.pending.pop(nid, None)


class _UnixServer:
    """What both sockets share: a stale socket replaced, the listening socket with its mode,
    one task per connection (``_converse``), who is let in (``max_clients``, ``max_per_user``
    and the process's file descriptors: the module docstring), and a stop that aborts the
    connections (``_abort_all``), lets their tasks end, and removes the socket."""

    #: Connections held by every server of this process: they share its fd limit.
    _in_process: ClassVar[int] = 0
    #: Whether what clients send is read and dropped (it means nothing to this server).
    _discard: ClassVar[bool] = False

    def __init__(self, path: str, mode: int, *, max_clients: int, max_per_user: int,
                 limit: int = 2 ** 16) -> None:
        self.path = path
        self.mode = mode
        self.max_clients = max_clients
        self.max_per_user = max_per_user
        self._limit = limit  # the longest line a client may send
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Every connection made, including one accepted as the server stops, whose task
        #: has not started yet (so is not in _tasks): aclose must end those too.
        self._made: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._closing = False
        self._held: dict[int, int] = {}  # connections by uid
        self._refused = 0
        #: Every log line a client can cause goes through a throttle (journald's default
        #: per-service limit, 10,000 lines in 30 s, would otherwise drop cgoom's own).
        self._said = Throttle(_REFUSAL_LOG_INTERVAL)
        self._failed = Throttle(_REFUSAL_LOG_INTERVAL)

    async def start(self) -> None:
        _check_directory(self.path)
        _remove_stale(self.path)
        # A backlog as large as the kernel allows (net.core.somaxconn caps it): clients
        # that all connect at once, at boot or after a restart, are not refused.
        self._server = await asyncio.get_running_loop().create_unix_server(
            self._connection, self.path, backlog=BACKLOG)
        _chmod_socket(self.path, self.mode)
        room = fd_room()
        if room < self.max_clients:
            log.warning("cgoom: %s: at most %d clients, not %d: the file descriptor limit is "
                        "%d (%d kept for the engine); raise it (LimitNOFILE= in the unit)",
                        self.path, room, self.max_clients, room + FD_RESERVE, FD_RESERVE)

    def _connection(self) -> Connection:
        connection = Connection(self._serve, self._limit, discard=self._discard,
                                refused=self._closing)
        self._made.add(connection)
        return connection

    async def aclose(self) -> None:
        self._closing = True  # a connection accepted from now on is ended as it is made
        if self._server is not None:
            self._server.close()
        self._abort_all()
        # One accepted as the server closed: made, its task not started (so not in
        # _tasks): its transport would stay open, unowned, once the loop ends.
        late = [c for c in list(self._made) if c.task is not None and c.task not in self._tasks
                and not c.task.done()]
        for connection in late:
            assert connection.transport is not None and connection.task is not None
            connection.transport.abort()
            connection.task.cancel()
        tasks = set(self._tasks) | {c.task for c in late if c.task is not None}
        if self._tasks:  # each ends on its own once its connection is aborted
            await asyncio.wait(set(self._tasks), timeout=1.0)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def _admit(self, uid: int) -> str | None:
        """Why a connection of ``uid`` may not be held now, or ``None``."""
        if sum(self._held.values()) >= self.max_clients:
            return f"this socket holds max_clients ({self.max_clients}) connections"
        if uid != 0 and self._held.get(uid, 0) >= self.max_per_user:
            return f"uid {uid} holds max_per_user ({self.max_per_user}) connections"
        room = fd_room()
        if _UnixServer._in_process >= room:
            return (f"cgoom's clients hold every file descriptor it may give them "
                    f"({room}: RLIMIT_NOFILE less {FD_RESERVE} kept for the engine)")
        return None

    def _turned_away(self, why: str) -> None:
        self._refused += 1
        said = self._said.due()
        if said is not None:
            log.warning("cgoom: %s: a client was turned away (%d since the last time said): "
                        "%s", self.path, said, why)

    async def _serve(self, connection: Connection) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        transport = connection.transport
        assert transport is not None
        uid: int | None = None
        try:
            sock = transport.get_extra_info("socket")
            try:
                peer = Peer.of(sock) if sock is not None else None
            except OSError:
                peer = None  # gone before it was looked at
            if peer is None:
                return
            why = self._admit(peer.uid)
            if why is not None:
                self._turned_away(why)
                self._refuse(transport, why)
                return
            uid = peer.uid
            self._held[uid] = self._held.get(uid, 0) + 1
            _UnixServer._in_process += 1
            await self._converse(connection, transport, peer)
        except (asyncio.CancelledError, ConnectionError):
            pass  # cancelled only when stopping
        except Exception:  # a defect here, never a client's doing: said, rate-limited
            if self._failed.due() is not None:
                log.exception("cgoom: %s: a connection failed", self.path)
        finally:
            if uid is not None:
                _UnixServer._in_process -= 1
                _count_down(self._held, uid, 1)
            self._tasks.discard(task)
            transport.abort()

    def _refuse(self, transport: asyncio.Transport, why: str) -> None:
        """Say ``why`` to a client turned away, if the protocol has a way (then it is closed)."""

    def _abort_all(self) -> None:
        raise NotImplementedError

    async def _converse(self, connection: Connection, transport: asyncio.Transport,
                        peer: Peer) -> None:
        raise NotImplementedError


class NoticeServer(_UnixServer):
    """The notice socket at ``path`` for ``handler`` (use :func:`open_notice_server`).
    ``mode``: the socket's permissions (0o666: anyone may connect; what they may register
    for is decided by their credentials)."""

    def __init__(self, handler: Handler, path: str, *, mode: int = 0o666,
                 max_clients: int = 4096, max_rate: float = 100.0, max_errors: int = 20,
                 max_buffered: int = 4 * MAX_LINE, max_registrations: int = 64,
                 max_per_user: int = 256, max_registrations_per_user: int = 1024,
                 max_bytes_per_user: int = 1 << 20) -> None:
        super().__init__(path, mode, max_clients=max_clients, max_per_user=max_per_user,
                         limit=MAX_LINE)
        self.handler = handler
        self.max_rate = max_rate
        self.max_errors = max_errors
        self.max_buffered = max_buffered
        self.max_registrations = max_registrations
        self.max_registrations_per_user = max_registrations_per_user
        self.max_bytes_per_user = max_bytes_per_user
        self._registrations_by_uid: dict[int, int] = {}
        #: Bytes held for each user's clients (an upper bound: see :meth:`_hold`), and
        #: those clients.
        self._bytes_by_uid: dict[int, int] = {}
        self._clients_by_uid: dict[int, set[_Client]] = {}
        self._clients: set[_Client] = set()
        #: Messages read and not yet handled: bounded, so a flood waits in its sockets.
        self._inbox: asyncio.Queue[tuple[_Client, bytes]] = asyncio.Queue(INBOX)
        self._processor: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._connected = self._dropped = self._bad = self._notices = 0

    def __repr__(self) -> str:
        return f"<NoticeServer {self.path} clients={len(self._clients)}>"

    def _abort_all(self) -> None:
        for client in list(self._clients):
            client.close("cgoom stopped")

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            clients=len(self._clients), connected=self._connected,
            registrations=sum(len(c.registered) for c in self._clients),
            refused=self._refused, dropped=self._dropped, bad_messages=self._bad,
            notices=self._notices,
            held=sum(c.held_in + c.transport.get_write_buffer_size() for c in self._clients))

    def _refuse(self, transport: asyncio.Transport, why: str) -> None:
        transport.write(encode("error", to=None, error=f"turned away: {why}"))

    async def start(self) -> None:
        await super().start()
        self._processor = asyncio.get_running_loop().create_task(self._process())

    async def aclose(self) -> None:
        # The listener first, before any await: a connection accepted meanwhile would get a
        # task after the stop and outlive the server.
        await super().aclose()
        if self._processor is not None:
            self._processor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._processor
            self._processor = None

    async def _converse(self, connection: Connection, transport: asyncio.Transport,
                        peer: Peer) -> None:
        """Read the client's lines into the server's inbox, at most ``max_rate`` a second;
        the messages are handled by :meth:`_process`, one task for every client."""
        client = _Client(self, connection, transport, peer)
        self._clients.add(client)
        self._clients_by_uid.setdefault(peer.uid, set()).add(client)
        self._connected += 1
        connection.taken = client.took
        client.took(connection.early)
        budget, refilled = self.max_rate, time.monotonic()
        try:
            while not client.closed:
                try:
                    line = await connection.readline()
                except LineTooLong:
                    self._dropped += 1
                    client.send(encode("error", to=None, error=f"a line longer than "
                                       f"{MAX_LINE} bytes: connection closed"))
                    client.close("sent too long a line")
                    break
                except ConnectionError:
                    break
                if not line:
                    break
                await self._inbox.put((client, line))  # full: wait, as the client should
                # Each message gives the loop a turn: buffered lines are read without one.
                await asyncio.sleep(0)
                # The rate limit: a token per message, max_rate a second.
                now = time.monotonic()
                budget = min(self.max_rate, budget + (now - refilled) * self.max_rate) - 1
                refilled = now
                if budget < 0:
                    await asyncio.sleep(-budget / self.max_rate)
        finally:
            self._clients.discard(client)
            client.close(client.why if client.closed else "disconnected")

    async def _process(self) -> None:
        """Every client's messages, in the order they came, handled by this one task for at
        most :data:`SLICE` seconds of each loop turn: a turn in which 256 connections each
        had a message to handle blocked the loop 1.2 s at a time, and an OOM event waited
        behind it. Between slices the loop runs whatever else is ready (the engine first)."""
        while True:
            client, line = await self._inbox.get()
            started = time.perf_counter()
            self._message(client, line)
            while not self._inbox.empty() and time.perf_counter() - started < SLICE:
                client, line = self._inbox.get_nowait()
                self._message(client, line)
            await asyncio.sleep(0)

    def _hold(self, client: _Client, change: int) -> bool:
        """What ``client`` holds changed by ``change`` bytes: ``False`` when its user now
        holds more than ``max_bytes_per_user`` (root: never). The count is an upper bound
        (a write buffer shrinks unseen as the kernel takes it); only when it is over is the
        user's every write buffer looked at, so a fan-out costs no sum per write."""
        uid = client.peer.uid
        total = self._bytes_by_uid.get(uid, 0) + change
        if total > self.max_bytes_per_user and uid != 0 and change > 0:
            total = 0
            for other in self._clients_by_uid.get(uid, ()):
                other.held_out = other.transport.get_write_buffer_size()
                total += other.held_in + other.held_out
            if total > self.max_bytes_per_user:
                self._bytes_by_uid[uid] = total
                self._dropped += 1
                # Written as is (send would count it): delivered if the socket takes it
                # now, for the connection is aborted next.
                client.transport.write(encode("error", to=None, error=(
                    f"uid {uid} holds {total} bytes across its connections (lines not "
                    f"handled yet, answers not read), more than max_bytes_per_user "
                    f"({self.max_bytes_per_user}): connection closed")))
                return False
        self._bytes_by_uid[uid] = total
        return True

    def _let_go(self, client: _Client) -> None:
        """``client`` closed: what it held is no longer its user's."""
        uid = client.peer.uid
        _count_down(self._bytes_by_uid, uid, client.held_in + client.held_out)
        client.held_in = client.held_out = 0
        clients = self._clients_by_uid.get(uid)
        if clients is not None:
            clients.discard(client)
            if not clients:
                del self._clients_by_uid[uid]

    def _message(self, client: _Client, line: bytes) -> None:
        """One message of ``client``: handled, or answered with what is wrong and counted
        (and the client dropped after ``max_errors``); never an exception."""
        if client.closed:
            return
        client.handled(len(line))
        try:
            self._handle(client, parse_request(line))
        except Exception as exc:  # whatever a client sends: an answer, never a crash
            if not isinstance(exc, ProtocolError | Refused | CgoomError):
                log.debug("cgoom notices: a message from uid %d failed", client.peer.uid,
                          exc_info=True)
                exc = ProtocolError(f"the message could not be handled: "
                                    f"{type(exc).__name__}")
            self._bad += isinstance(exc, ProtocolError)
            client.errors += 1
            client.send(encode("error", to=_op_of(line), error=str(exc)))
            if client.errors >= self.max_errors:
                self._dropped += 1
                client.send(encode("error", to=None, error=f"{client.errors} bad messages: "
                                   "connection closed"))
                client.close("sent too many bad messages")

    def _handle(self, client: _Client, request: object) -> None:
        domains = tuple(sorted({r.domain for r in self.handler.rules}))
        if isinstance(request, Register):
            path = authorize(self.handler.hierarchy, client.peer, request.cgroup, domains)
            uid = client.peer.uid
            held = self._registrations_by_uid.get(uid, 0)
            new = path not in client.registered
            if new and len(client.registered) >= self.max_registrations:
                raise Refused(f"cgroup {path}: this connection already has "
                              f"{self.max_registrations} registrations, the most it may have")
            if new and uid != 0 and held >= self.max_registrations_per_user:
                raise Refused(f"cgroup {path}: uid {uid} already holds {held} registrations "
                              "on this socket, the most one user may have")
            old = client.registered.pop(path, None)
            if old is not None:
                old()
            try:
                client.registered[path] = self.handler.register(
                    path, client.on_notice, deadline=request.deadline, levels=request.levels,
                    tell=client.tell)
            except BaseException:
                if not new:  # the one it replaced is gone too
                    self._forget(uid, 1)
                raise
            if new:
                self._registrations_by_uid[uid] = held + 1
            if request.killable is not None:
                self._set_killable(client, path, request.killable)
            client.send(encode("registered", to="register", cgroup=path,
                               deadline=request.deadline,
                               levels=[x for x in LEVELS if x in request.levels],
                               killable=path in client.killable))
        elif isinstance(request, SetKillable):
            path = authorize(self.handler.hierarchy, client.peer, request.cgroup, domains)
            self._set_killable(client, path, request.value)
            client.send(encode("ok", to="killable", cgroup=path, killable=request.value))
        elif isinstance(request, Reply):
            future = client.pending.get(request.notice)
            if future is None:
                raise ProtocolError(f"notice {request.notice}: no such notice awaits an "
                                    "answer (answered, past its deadline, or never sent)")
            if not future.done():
                future.set_result(Answer(request.status, request.freed))
            client.send(encode("ok", to="answer", notice=request.notice))
        elif isinstance(request, Unregister):
            path = authorize(self.handler.hierarchy, client.peer, request.cgroup, domains)
            undo = client.registered.pop(path, None)
            if undo is None:
                raise ProtocolError(f"cgroup {path}: not registered on this connection")
            undo()
            self._forget(client.peer.uid, 1)
            clear = client.killable.pop(path, None)
            if clear is not None:
                clear()
            client.send(encode("ok", to="unregister", cgroup=path))

    def _forget(self, uid: int, count: int) -> None:
        """``count`` registrations of ``uid`` ended."""
        _count_down(self._registrations_by_uid, uid, count)

    def _set_killable(self, client: _Client, path: str, value: bool) -> None:
        if value and path not in client.killable:
            client.killable[path] = self.handler.declare_killable(path)
        elif not value:
            clear = client.killable.pop(path, None)
            if clear is not None:
                clear()


@functools.lru_cache(maxsize=4096)
def _quoted(text: str) -> str:
    return json.dumps(text)


def _number(value: float | None) -> str:
    return "null" if value is None else repr(value)


def _op_of(line: bytes) -> str | None:
    """The op a bad message asked for, if it is one of the protocol's (an answer never
    echoes what a client wrote: a 60 KiB op made a 60 KiB error line)."""
    with contextlib.suppress(Exception):
        op = json.loads(line).get("op")
        return op if op in OPS else None
    return None


class Throttle:
    """At most one log line per ``interval`` seconds for something clients can cause: each
    :meth:`due` counts one occurrence and returns how many there were since the last line
    said (this one included) when a line is due now, else ``None``."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._count = 0
        self._said_at = -interval

    def due(self) -> int | None:
        self._count += 1
        now = time.monotonic()
        if now - self._said_at < self.interval:
            return None
        count, self._count, self._said_at = self._count, 0, now
        return count


def _check_directory(path: str) -> None:
    """Refuse to make a socket in a directory others can write: they could swap what is at
    the path between the bind and anything done to it after (a symlink planted there made
    root's chmod hit another file)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise CgoomError(f"cannot make the socket {path}: {directory}: {exc.strerror}",
                         path=directory) from exc
    if st.st_mode & 0o022 or st.st_uid not in (0, os.geteuid()):
        raise CgoomError(f"will not make the socket {path}: its directory {directory} "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid}) can be "
                         "written by others; use a directory only root (or cgoom's user) "
                         "can write, such as RuntimeDirectory=cgoom (/run/cgoom)",
                         path=directory)


def _chmod_socket(path: str, mode: int) -> None:
    """The socket's mode, set on the socket just bound, never on whatever the path names now:
    opened without following a symlink (``O_PATH | O_NOFOLLOW``), checked to be a socket, and
    changed through its descriptor (``/proc/self/fd``; ``chmod`` on a path follows links)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise CgoomError(f"{path} is no longer the socket cgoom made: not changing its "
                             "mode", path=path)
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def _remove_stale(path: str) -> None:
    """A socket left by a cgoom that died goes; anything else at ``path`` is an error."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise CgoomError(f"{path} exists and is not a socket: will not replace it",
                         path=path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody listens: a stale socket
    else:
        raise CgoomError(f"{path}: another process serves this socket", path=path)
    finally:
        probe.close()


@contextlib.asynccontextmanager
async def open_pressure_socket(handler: Handler, path: str, *, level: str = "low",
                               mode: int = 0o666) -> AsyncIterator[PressureSocket]:
    """Serve systemd's memory pressure protocol for ``handler`` at ``path`` while the block
    runs (:class:`PressureSocket`)."""
    server = PressureSocket(handler, path, level=level, mode=mode)
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


@contextlib.asynccontextmanager
async def open_notice_server(handler: Handler, path: str, **options: float,
                             ) -> AsyncIterator[NoticeServer]:
    """Serve the notice protocol for ``handler`` at ``path`` (a Unix stream socket) while
    the block runs; ``options``: :class:`NoticeServer`'s limits."""
    server = NoticeServer(handler, path, **options)  # type: ignore[arg-type]
    await server.start()
    try:
        yield server
    finally:
        await server.aclose()


class PressureSocket(_UnixServer):
    """systemd's memory pressure protocol (docs/PRESSURE.md in systemd), served: point a
    service's ``$MEMORY_PRESSURE_WATCH`` at ``path`` and a program built on sd-event or
    GLib (or anything that connects and waits for POLLIN) is woken, with a line naming the
    level, when the domain holding its cgroup reaches ``level`` or above. The peer's cgroup
    comes from its credentials; what it writes after connecting (``$MEMORY_PRESSURE_WRITE``,
    a PSI trigger meant for the kernel) is read and ignored."""

    def __init__(self, handler: Handler, path: str, *, level: str = "low",
                 mode: int = 0o666, max_clients: int = 4096,
                 max_per_user: int = 256) -> None:
        if level not in LEVELS:
            raise CgoomError(f"pressure level {level!r}: one of {', '.join(LEVELS)}")
        super().__init__(path, mode, max_clients=max_clients, max_per_user=max_per_user)
        self.handler = handler
        self.level = level
        self._transports: set[asyncio.Transport] = set()
        self.woken = 0

    #: The trigger a client may write (``$MEMORY_PRESSURE_WRITE``) is not ours to act on.
    _discard = True

    def _abort_all(self) -> None:
        for transport in list(self._transports):
            transport.abort()

    async def _converse(self, connection: Connection, transport: asyncio.Transport,
                        peer: Peer) -> None:
        domains = tuple(sorted({r.domain for r in self.handler.rules}))
        try:
            path = authorize(self.handler.hierarchy, peer, None, domains)
        except (Refused, OSError) as exc:
            said = self._said.due()
            if said is not None:
                log.info("cgoom: a memory pressure watcher was turned away (%d since the last "
                         "time said): %s", said, exc)
            return
        levels = LEVELS[LEVELS.index(self.level):]

        def wake(notice: Notice) -> None:
            if transport.is_closing() or transport.get_write_buffer_size() > MAX_LINE:
                transport.abort()  # it has stopped reading
                return
            transport.write(f"{notice.level}\n".encode())
            self.woken += 1

        async def answer_nothing(notice: Notice) -> None:
            wake(notice)

        self._transports.add(transport)
        unregister = self.handler.register(path, answer_nothing, levels=levels, tell=wake)
        try:
            await connection.wait_closed()
        finally:
            unregister()
            self._transports.discard(transport)
