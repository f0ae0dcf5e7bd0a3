"""Time in tests: :class:`ManualClock` drives the engine's cooldowns, deadlines, rate limits
and timers without sleeping; :func:`until` and :func:`next_incident` wait, with a timeout
that says what was awaited, for something the engine does on the running loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._kernel._clock import Clock

if TYPE_CHECKING:
    from .._engine._handler import Handler
    from .._engine._incident import IncidentRecord


class _Timer:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]):
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock(Clock):
    """A clock that moves only when told (:meth:`advance`): pass it as ``clock=`` to
    :func:`cgoom.open_handler` (or :class:`cgoom.Watcher`) and every time the engine reads,
    every timer it sets and every sleep it takes follow it. The events of a handler's
    watcher are stamped with it too, so cooldowns compare like with like.

    Work the engine does in its threads (snapshots of large domains, memory.high writes)
    still takes real time: :meth:`advance` lets the loop run between timers, and
    :func:`until` waits for an outcome."""

    def __init__(self, start: float = 1000.0, *, wall: float = 1_767_225_600.0) -> None:
        self._now = start
        self._wall_offset = wall - start
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall_offset + self._now

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> _Timer:
        timer = _Timer(self._now + max(delay, 0.0), callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.call_later(delay, _resolve, future)
        await future

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, firing each timer due on the way at its own time,
        the loop running after each."""
        end = self._now + seconds
        await _turns()
        while self._timers and self._timers[0][0] <= end:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.callback(*timer.args)
            await _turns()
        self._now = end
        await _turns()

    @property
    def pending(self) -> int:
        """Timers set and not yet fired or cancelled."""
        return sum(not t.cancelled for _, _, t in self._timers)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def until(predicate: Callable[[], object], seconds: float = 5.0, *,
                what: str = "the condition") -> None:
    """Let the loop run until ``predicate()`` holds; :class:`TimeoutError` naming ``what``
    after ``seconds`` of real time (the engine's threads take real time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.005)


async def next_incident(handler: Handler, seconds: float = 10.0) -> IncidentRecord:
    """The handler's next incident record (the kernel's own OOM kills in the same stream
    are passed over); :class:`TimeoutError` after ``seconds`` of real time."""
    from .._engine._incident import IncidentRecord

    async def next_one() -> IncidentRecord:
        async for record in handler:
            if isinstance(record, IncidentRecord):
                return record
        raise RuntimeError(f"{handler!r} stopped before an incident")

    try:
        return await asyncio.wait_for(next_one(), seconds)
    except TimeoutError:
        raise TimeoutError(f"no incident from {handler!r} within {seconds} s") from None
