"""The client side of cgoom's notice socket, for applications (docs/notices.md): register
your cgroup, hear its domain's levels, get the first chance before cgoom acts, and declare
yourself background-killable. Two flavours with the same methods:

- :func:`connect` (asyncio): ``async with cgoom.client.connect() as c: ...``;
- :class:`Client` (blocking, for threads and programs without an event loop).

Either may be used from any process that can reach the socket; what it may register for
is decided by cgoom from the process's credentials (its own cgroup, or one its user owns).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import select
import socket
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any, Literal

import attrs

from ._notices._protocol import LEVELS, MAX_LINE, VERSION, encode

#: Where cgoom serves notices by default; ``$CGOOM_NOTICES`` overrides it.
DEFAULT_PATH = "/run/cgoom/notices.sock"

__all__ = ["DEFAULT_PATH", "AsyncClient", "Client", "Notice", "NoticeError", "connect"]


class NoticeError(Exception):
    """cgoom refused a request (the text is its reason), or the connection ended."""


@attrs.frozen
class Notice:
    """A notice from cgoom (the protocol's ``notice`` message): ``level`` ``low`` (free
    what you can spare), ``critical`` (free everything you can), ``oom`` (cgoom is about
    to act). ``reclaim_target``: bytes that would bring ``domain`` back below
    ``threshold``. ``deadline``: seconds to answer before cgoom acts (a first chance), or
    ``None`` when no answer is expected."""

    id: int
    level: Literal["low", "critical", "oom"]
    domain: str
    cgroup: str
    usage: int | None
    threshold: int | None
    reclaim_target: int
    deadline: float | None

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Notice:
        return cls(message["id"], message["level"], message["domain"], message["cgroup"],
                   message.get("usage"), message.get("threshold"),
                   message.get("reclaim_target", 0), message.get("deadline"))


def _path(path: str | None) -> str:
    return path or os.environ.get("CGOOM_NOTICES") or DEFAULT_PATH


def _register(cgroup: str | None, deadline: float | None, levels: Iterable[str],
              killable: bool | None) -> bytes:
    fields: dict[str, Any] = {"deadline": deadline, "levels": [x for x in LEVELS
                                                                if x in set(levels)]}
    if cgroup is not None:
        fields["cgroup"] = cgroup
    if killable is not None:
        fields["killable"] = killable
    return encode("register", **fields)


def _killable(value: bool, cgroup: str | None) -> bytes:
    return encode("killable", value=value, **({} if cgroup is None else {"cgroup": cgroup}))


def _answer(notice: Notice | int, status: str, freed: int | None) -> bytes:
    nid = notice.id if isinstance(notice, Notice) else notice
    return encode("answer", notice=nid, status=status,
                  **({} if freed is None else {"freed": freed}))


def _decode(line: bytes) -> dict[str, Any]:
    message = json.loads(line)
    if not isinstance(message, dict) or message.get("v") != VERSION:
        raise NoticeError(f"cgoom sent something this client does not speak: {line!r:.200}")
    return message


class AsyncClient:
    """A connection to cgoom's notice socket on an asyncio loop (from :func:`connect`).
    Requests are answered in order; notices arrive between the answers and wait in
    :meth:`notices` (or ``async for notice in client``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._replies: collections.deque[asyncio.Future[dict[str, Any]]] = \
            collections.deque()
        self._notices: asyncio.Queue[Notice | None] = asyncio.Queue()
        self._reading = asyncio.get_running_loop().create_task(self._read())
        self._error: NoticeError | None = None

    async def _read(self) -> None:
        try:
            while True:
                line = await self._reader.readline()
                if not line:
                    break
                message = _decode(line)
                if message.get("op") == "notice":
                    self._notices.put_nowait(Notice.from_message(message))
                elif self._replies:
                    future = self._replies.popleft()
                    if not future.done():
                        future.set_result(message)
                elif message.get("op") == "error":
                    self._error = NoticeError(str(message.get("error")))
        except (OSError, ValueError, NoticeError) as exc:
            self._error = NoticeError(f"the connection to cgoom failed: {exc}")
        finally:
            self._error = self._error or NoticeError("cgoom closed the connection")
            for future in self._replies:
                if not future.done():
                    future.set_exception(self._error)
            self._replies.clear()
            self._notices.put_nowait(None)

    async def _request(self, data: bytes) -> dict[str, Any]:
        if self._reading.done():
            raise self._error or NoticeError("the connection is closed")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies.append(future)
        self._writer.write(data)
        await self._writer.drain()
        reply = await future
        if reply.get("op") == "error":
            raise NoticeError(str(reply.get("error")))
        return reply

    async def register(self, cgroup: str | None = None, *, deadline: float | None = None,
                       levels: Iterable[str] = LEVELS, killable: bool | None = None,
                       ) -> dict[str, Any]:
        """Hear ``cgroup``'s domain (default: your own cgroup) at ``levels``; with
        ``deadline`` (seconds), get the first chance before cgoom acts. Returns cgoom's
        ``registered`` reply (the cgroup it resolved); :class:`NoticeError` if refused."""
        return await self._request(_register(cgroup, deadline, levels, killable))

    async def set_killable(self, value: bool, cgroup: str | None = None) -> None:
        """Declare (``True``) or clear your background-killable state: your state is saved
        and you may die first. It lasts while this connection does."""
        await self._request(_killable(value, cgroup))

    async def answer(self, notice: Notice | int, status: Literal["done", "cannot"] = "done",
                     *, freed: int | None = None) -> None:
        """Answer a first-chance notice: ``done`` (``freed`` bytes if you know) or
        ``cannot`` (nothing to free: cgoom acts at once)."""
        await self._request(_answer(notice, status, freed))

    async def unregister(self, cgroup: str | None = None) -> None:
        await self._request(encode("unregister", **({} if cgroup is None
                                                     else {"cgroup": cgroup})))

    async def notices(self) -> AsyncIterator[Notice]:
        """The notices as they come, until the connection ends."""
        while True:
            notice = await self._notices.get()
            if notice is None:
                self._notices.put_nowait(None)  # for any other reader
                return
            yield notice

    def __aiter__(self) -> AsyncIterator[Notice]:
        return self.notices()

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        self._reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reading


@contextlib.asynccontextmanager
async def connect(path: str | None = None) -> AsyncIterator[AsyncClient]:
    """Connect to cgoom's notice socket at ``path`` (default ``$CGOOM_NOTICES``, else
    :data:`DEFAULT_PATH`) for the block."""
    try:
        reader, writer = await asyncio.open_unix_connection(_path(path), limit=MAX_LINE)
    except OSError as exc:
        raise NoticeError(f"cannot reach cgoom at {_path(path)}: {exc.strerror or exc}") \
            from exc
    client = AsyncClient(reader, writer)
    try:
        yield client
    finally:
        await client.aclose()


class Client:
    """A blocking connection to cgoom's notice socket: the same requests as
    :class:`AsyncClient`, and :meth:`wait` for the next notice. Use as a context manager."""

    def __init__(self, path: str | None = None) -> None:
        self.path = _path(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.connect(self.path)
        except OSError as exc:
            self._sock.close()
            raise NoticeError(f"cannot reach cgoom at {self.path}: {exc.strerror or exc}") \
                from exc
        self._buffer = bytearray()
        self._backlog: collections.deque[Notice] = collections.deque()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        """The socket, for select()/poll() in your own loop (then call :meth:`wait` with
        ``timeout=0``)."""
        return self._sock.fileno()

    def _line(self, timeout: float | None) -> dict[str, Any] | None:
        end = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                raise NoticeError(f"cgoom sent a line longer than {MAX_LINE} bytes")
            left = None if end is None else max(end - time.monotonic(), 0.0)
            if not select.select([self._sock], [], [], left)[0]:
                return None
            chunk = self._sock.recv(65536)
            if not chunk:
                raise NoticeError("cgoom closed the connection")
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        return _decode(line)

    def _request(self, data: bytes) -> dict[str, Any]:
        self._sock.sendall(data)
        while True:
            message = self._line(None)
            assert message is not None
            if message.get("op") == "notice":
                self._backlog.append(Notice.from_message(message))
                continue
            if message.get("op") == "error":
                raise NoticeError(str(message.get("error")))
            return message

    def register(self, cgroup: str | None = None, *, deadline: float | None = None,
                 levels: Iterable[str] = LEVELS, killable: bool | None = None,
                 ) -> dict[str, Any]:
        """As :meth:`AsyncClient.register`."""
        return self._request(_register(cgroup, deadline, levels, killable))

    def set_killable(self, value: bool, cgroup: str | None = None) -> None:
        """As :meth:`AsyncClient.set_killable`."""
        self._request(_killable(value, cgroup))

    def answer(self, notice: Notice | int, status: Literal["done", "cannot"] = "done", *,
               freed: int | None = None) -> None:
        """As :meth:`AsyncClient.answer`."""
        self._request(_answer(notice, status, freed))

    def unregister(self, cgroup: str | None = None) -> None:
        self._request(encode("unregister", **({} if cgroup is None else {"cgroup": cgroup})))

    def wait(self, timeout: float | None = None) -> Notice | None:
        """The next notice; ``None`` if none came within ``timeout`` seconds."""
        if self._backlog:
            return self._backlog.popleft()
        while True:
            message = self._line(timeout)
            if message is None:
                return None
            if message.get("op") == "notice":
                return Notice.from_message(message)

    def __iter__(self) -> Iterator[Notice]:
        while True:
            notice = self.wait()
            assert notice is not None
            yield notice
