"""``Clock``: the one source of time of the engine and its watcher.

Every cooldown, deadline, rate limit, timer and timestamp of an incident reads this object,
never ``time`` or the loop directly, so a test can drive them with
:class:`cgoom.testing.ManualClock` instead of sleeping. Two readings: ``monotonic()`` (seconds
on the same scale as ``time.monotonic()`` and asyncio's default ``loop.time()``: events,
cooldowns, timings) and ``wall()`` (seconds since the epoch: record ids and ``started_at``).
The durations of syscalls (``ActionResult.syscall_ms``) are measured with ``perf_counter``
where they happen: they are the work's own time, not the engine's logic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

_T = TypeVar("_T")


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock:
    """The real clock: ``time.monotonic``, ``time.time`` and the running loop's timers."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Call ``callback(*args)`` on the loop after ``delay`` seconds."""
        return asyncio.get_running_loop().call_later(delay, callback, *args)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)

    async def wait(self, futures: Iterable[asyncio.Future[Any]], seconds: float,
                   ) -> set[asyncio.Future[Any]]:
        """Wait up to ``seconds`` for all of ``futures``; the ones done. Cancels
        nothing (unlike ``asyncio.wait_for``, it never waits for a cancelled task to end)."""
        pending = {f for f in futures if not f.done()}
        if pending:
            expired = asyncio.get_running_loop().create_future()
            timer = self.call_later(max(seconds, 0.0), _set, expired)
            try:
                while pending and not expired.done():
                    await asyncio.wait({*pending, expired},
                                       return_when=asyncio.FIRST_COMPLETED)
                    pending = {f for f in pending if not f.done()}
            finally:
                timer.cancel()
                expired.cancel()
        return {f for f in futures if f.done()}

    async def wait_for(self, awaitable: Awaitable[_T], seconds: float) -> _T:
        """``awaitable``'s result, or :class:`TimeoutError` after ``seconds`` (then
        it is cancelled, as ``asyncio.wait_for`` does, without waiting for it to end)."""
        future = asyncio.ensure_future(awaitable)
        if not await self.wait([future], seconds):
            future.cancel()
            raise TimeoutError
        return future.result()


def _set(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


#: The clock of everything that is not given one.
SYSTEM = Clock()
