"""One client connection of cgoom's sockets, as lines: what it reads is bounded by what is
being handled, not by what the client sends (:class:`Connection`). I/O only; what the lines
mean is :mod:`cgoom._notices._protocol`'s, who may connect :mod:`cgoom._notices._server`'s.

Some facts about reading a Unix stream socket from asyncio, which decide the shape here:

- asyncio's streams read ahead: a ``StreamReader`` pauses its transport only once it holds
  twice its limit (128 KiB for a 64 KiB line), and the selector transport takes up to
  256 KiB per ``recv`` whatever the limit. Under a flood of 256 connections that pipelined
  their requests, cgoom held ~256 KiB of each in memory before handling the first line, and
  the allocator kept the peak (RSS 28 -> 85 MiB, benchmarks/notify.py ``hold_rss_growth_mib``).
- A :class:`asyncio.BufferedProtocol` hands the transport a buffer to ``recv_into``: the
  protocol decides how much one read takes (:data:`CHUNK`), and stops reading
  (``pause_reading``) while a line it has read waits to be handled. What the client sent
  beyond that stays in the kernel, counted against the *sender's* socket buffer
  (``net.core.wmem_default``, ~208 KiB): backpressure, at no cost to cgoom.
- The write side is the transport's own: it buffers what the socket does not take at once
  (``get_write_buffer_size``) and cgoom bounds that per connection and per user.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

#: The most one read takes from a client's socket.
CHUNK = 4096


class LineTooLong(Exception):
    """The client sent a line longer than the connection's limit."""


class Connection(asyncio.BufferedProtocol):
    """A client's connection: :meth:`readline` for its lines (at most ``limit`` bytes each,
    newline included), :attr:`transport` to write. ``serve(connection)`` runs as a task from
    the moment it connects. ``taken(size)`` hears of every ``size`` bytes read (before it is
    set, they add up in :attr:`early`). With ``discard``, what comes in is read and dropped
    (:meth:`wait_closed` waits for the end). With ``refused`` (its server is stopping), it is
    aborted as it is made and never served."""

    def __init__(self, serve: Callable[[Connection], Coroutine[Any, Any, None]],
                 limit: int, *, discard: bool = False, refused: bool = False) -> None:
        self._serve = serve
        self._refused = refused
        self.limit = limit
        self.discard = discard
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None
        self.taken: Callable[[int], None] | None = None
        self.early = 0
        self._chunk = bytearray(CHUNK)
        self._partial = bytearray()
        self._lines: deque[bytes] = deque()
        self._too_long = False
        self._ended = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio's side ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self._refused:  # made after its server began to stop: ended at once, unserved
            transport.abort()
            return
        self.task = asyncio.get_running_loop().create_task(self._serve(self))

    def get_buffer(self, sizehint: int) -> bytearray:
        return self._chunk

    def buffer_updated(self, nbytes: int) -> None:
        if self.taken is None:
            self.early += nbytes
        else:
            self.taken(nbytes)
        if self.discard or self._too_long:
            return
        self._partial += memoryview(self._chunk)[:nbytes]
        while (end := self._partial.find(b"\n")) >= 0:
            if end + 1 > self.limit:
                self._too_long = True
                break
            self._lines.append(bytes(self._partial[:end + 1]))
            del self._partial[:end + 1]
        if len(self._partial) > self.limit:
            self._too_long = True
        if self._lines or self._too_long:
            self._pause()
        self._wake()

    def eof_received(self) -> bool:
        self._ended = True
        self._wake()
        return False  # the transport closes

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended = True
        self._wake()

    # -- the server's side -------------------------------------------------------------

    @property
    def held(self) -> int:
        """Bytes read and not yet taken by :meth:`readline`."""
        return len(self._partial) + sum(map(len, self._lines))

    async def readline(self) -> bytes:
        """The next line, newline included; at the end, what was left without one (``b""``
        when nothing); :class:`LineTooLong` once a line passed the limit."""
        while True:
            if self._lines:
                line = self._lines.popleft()
                if not self._lines:
                    self._resume()
                return line
            if self._too_long:
                raise LineTooLong(f"a line longer than {self.limit} bytes")
            if self._ended:
                rest, self._partial = bytes(self._partial), bytearray()
                return rest
            self._resume()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def wait_closed(self) -> None:
        """Until the client is gone."""
        while not self._ended:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _pause(self) -> None:
        if not self._paused and self.transport is not None \
                and not self.transport.is_closing():
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None \
                and not self.transport.is_closing():
            self._paused = False
            self.transport.resume_reading()
