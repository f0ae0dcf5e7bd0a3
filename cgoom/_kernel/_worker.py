"""``Worker``: one thread, started before it is needed, that runs calls off the event loop;
``WorkerPool``: a few of them (the reapers that run ``process_mrelease``).

DESIGN.md principle 3: at OOM time nothing may wait for a thread to start. Measured in the VM
under memory pressure, a call through the loop's default executor (which starts its threads
on first use) took 125-490 ms where the work itself took 1.4 ms. A ``Worker`` starts its
thread when it is made and keeps it; calls queue in order.

A call that never returns (a plugin that hangs) keeps its worker busy for good: whoever
abandons such a call must :meth:`~Worker.abandon` the worker and use a new one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")
_STOP = object()


class Worker:
    """A daemon thread running submitted callables one at a time."""

    def __init__(self, name: str = "cgoom-worker", *, start: bool = True) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        # Each counter is written by one side only (no lock): submitters, the thread.
        self._submitted = 0
        self._finished = 0
        if start:
            self._thread.start()

    def start(self) -> None:
        """Start the thread now (made with ``start=False``: its owner starts it before any
        incident). Safe to call twice."""
        if not self._thread.is_alive() and not self._closed and self._thread.ident is None:
            self._thread.start()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<Worker {self.name} ({state})>"

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            future, func = item
            try:
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = func()
                except BaseException as exc:  # delivered to the caller, whatever it is
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            finally:
                self._finished += 1

    def submit(self, func: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        """Run ``func()`` in the worker's thread; its future holds the result."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self.start()  # never waits: started long before, by whoever owns it
        self._submitted += 1
        self._queue.put((future, func))
        return future

    async def run(self, func: Callable[[], _T]) -> _T:
        """``await`` ``func()`` run in the worker's thread."""
        return await asyncio.wrap_future(self.submit(func))

    @property
    def pending(self) -> int:
        """Calls submitted and not finished yet."""
        return self._submitted - self._finished

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Let the thread end once the calls queued so far are done. Safe to call twice."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)

    abandon = close


class WorkerPool:
    """A few :class:`Worker` threads started together; each call goes to the one with the
    fewest calls pending, so that one slow call (a ``process_mrelease`` of a swap-heavy
    process: 792 ms measured upstream) does not hold up the next."""

    def __init__(self, name: str, size: int, *, start: bool = True) -> None:
        if size < 1:
            raise ValueError(f"a pool of {size} threads")
        self.workers = [Worker(f"{name}-{i}", start=start) for i in range(size)]

    def __repr__(self) -> str:
        return f"<WorkerPool of {len(self.workers)}: {', '.join(map(repr, self.workers))}>"

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def submit(self, func: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        """Run ``func()`` in the least busy thread; its future holds the result."""
        return min(self.workers, key=lambda w: w.pending).submit(func)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
