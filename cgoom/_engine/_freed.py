"""The freed timeline: what an incident's action gave back, sampled from just before the
first action until the domain's memory settles (issue 20, item 3).

Owns :class:`FreedSample` (one reading, part of the record) and :class:`FreedSampler` (the
task that reads). It reads the domain's memory.current and memory.swap.current and, for a
machine rule, /proc/meminfo's MemAvailable, through the callables it is given; it touches
nothing else.

This is the one place the engine reads on a timer, and it is a measurement, not a trigger:
it runs only between an incident's first action and the record, and never decides
anything. Some facts about what it measures:

- A killed process's memory is uncharged from its cgroup as its address space is torn
  down (``exit_mmap``), before the task leaves the cgroup: by ``populated 0`` most of it is
  back. Not all: an ``mm`` another task holds (a reader of the victim's /proc files, a
  ``process_mrelease`` in progress, a ``vfork`` child) is freed when the last holder lets go,
  which may be after ``populated 0``; and swap slots are freed with the page tables, after
  the resident pages. So the sampler keeps reading until the readings stop moving
  (:data:`SETTLE` of them within :func:`tolerance`), not until the victim is gone.
- memory.current and memory.swap.current are page counters read without a lock (cheap: a
  few microseconds each, on the loop); /proc/meminfo is ~50 µs, read only for a machine
  rule.
- The times are the real monotonic clock's (``time.monotonic``), whatever clock the
  handler was given: the kernel frees memory in real time, and a test's manual clock would
  stop the sampler until advanced.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import attrs

from .._kernel._parse import format_size

#: Read every 5 ms for the first quarter second after the first action, then every 25 ms.
INTERVAL = 0.005
SLOW_INTERVAL = 0.025
FAST_FOR = 0.25
#: Settled: the readings of the last 50 ms (after the actions ended) within tolerance.
SETTLE = 0.05
#: At most this long after the actions ended (then the record says it had not settled).
AFTER_ACTIONS = 1.0
#: At most this many samples are kept: beyond, every other one is dropped (the first and
#: the newest stay) and the interval doubles, so a long graceful kill stays a short record.
MAX_SAMPLES = 128


@attrs.frozen
class FreedSample:
    """One reading of the freed timeline: milliseconds since just before the incident's
    first action, the domain's memory.current and memory.swap.current, and the machine's
    MemAvailable (a machine rule only). ``None`` where a value could not be read (the
    domain removed, no swap accounting)."""

    ms: float
    ram: int | None
    swap: int | None = None
    available: int | None = None


def tolerance(value: int | None) -> int:
    """How far two readings may differ and count as the same: 1 MiB or 1% of ``value``."""
    return max(1 << 20, (value or 0) // 100)


def _near(a: int | None, b: int | None, within: int) -> bool:
    return a is None or b is None or abs(a - b) <= within


def settled_at(samples: Sequence[FreedSample]) -> float | None:
    """When the timeline reached its last level: the time of the first sample from which
    every later one is within tolerance of the last (RAM and swap both). ``None`` without
    samples."""
    if not samples:
        return None
    last = samples[-1]
    ram_tol, swap_tol = tolerance(samples[0].ram), tolerance(samples[0].swap)
    at = last.ms
    for sample in reversed(samples):
        if not (_near(sample.ram, last.ram, ram_tol) and _near(sample.swap, last.swap,
                                                                swap_tol)):
            break
        at = sample.ms
    return at


def describe(samples: Sequence[FreedSample]) -> str:
    """The timeline in one line, only the samples where something moved (and the last):
    ``0 ms 100.4M/0B, 5.1 ms 61.2M/0B, 40.3 ms 0.7M/0B (RAM/swap)``."""
    if not samples:
        return ""
    ram_tol, swap_tol = tolerance(samples[0].ram), tolerance(samples[0].swap)

    def show(s: FreedSample) -> str:
        ram = "?" if s.ram is None else format_size(s.ram)
        text = f"{s.ms:.1f} ms {ram}"
        if s.swap is not None:
            text += f"/{format_size(s.swap)}"
        if s.available is not None:
            text += f" (MemAvailable {format_size(s.available)})"
        return text

    shown = [samples[0]]
    for sample in samples[1:]:
        prev = shown[-1]
        if not (_near(sample.ram, prev.ram, ram_tol)
                and _near(sample.swap, prev.swap, swap_tol)):
            shown.append(sample)
    if shown[-1] is not samples[-1]:
        shown.append(samples[-1])
    unit = " (RAM/swap)" if samples[0].swap is not None else " (RAM)"
    return ", ".join(show(s) for s in shown) + unit + f"; {len(samples)} samples"


class FreedSampler:
    """Reads the domain's memory from :meth:`start` (just before the first action) until
    :meth:`stop` (the actions ended) and then until it settles; :meth:`stop` returns the
    samples. Each read is a callable returning ``None`` when it cannot be read."""

    def __init__(self, ram: Callable[[], int | None], swap: Callable[[], int | None],
                 available: Callable[[], int | None] | None = None) -> None:
        self._reads = (ram, swap, available)
        self._samples: list[FreedSample] = []
        self._task: asyncio.Task[None] | None = None
        self._started = 0.0
        self._stopped: float | None = None
        self._last_at = 0.0
        self._wake = asyncio.Event()
        self._interval = INTERVAL

    @property
    def started(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        """The first reading now, then a task reading on."""
        if self._task is not None:
            return
        self._started = time.monotonic()
        self._sample(self._started)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _sample(self, now: float | None = None) -> None:
        ram, swap, available = self._reads
        now = self._last_at = time.monotonic() if now is None else now
        self._samples.append(FreedSample(
            round((now - self._started) * 1000, 3), ram(), swap(),
            available() if available is not None else None))
        if len(self._samples) > MAX_SAMPLES:
            self._samples = [self._samples[0], *self._samples[2:-1:2], self._samples[-1]]
            self._interval *= 2

    def _settled(self) -> bool:
        """The actions ended, a reading was taken since, and the readings have stayed at
        their last level for :data:`SETTLE` (or :data:`AFTER_ACTIONS` has passed)."""
        if self._stopped is None:
            return False
        if time.monotonic() - self._stopped >= AFTER_ACTIONS:
            return True
        if self._last_at < self._stopped:
            return False
        level = settled_at(self._samples)
        return level is not None and self._samples[-1].ms - level >= SETTLE * 1000

    async def _run(self) -> None:
        while not self._settled():
            fast = time.monotonic() - self._started < FAST_FOR or self._stopped is not None
            interval = self._interval if fast else max(self._interval, SLOW_INTERVAL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            self._sample()

    async def stop(self) -> tuple[FreedSample, ...]:
        """The actions ended: read on until the memory settles (at most
        :data:`AFTER_ACTIONS`), then the samples."""
        if self._task is None:
            return ()
        if self._stopped is None:
            self._stopped = time.monotonic()
            self._interval = INTERVAL
            self._wake.set()  # a reading at once, then every INTERVAL
        await self._task
        return tuple(self._samples)

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
