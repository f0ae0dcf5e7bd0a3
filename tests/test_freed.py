"""The freed timeline's sampler (``cgoom._engine._freed``): it reads from just before the
first action, goes on past the actions' end until the readings settle, keeps its size
bounded, and says when the memory reached its last level. The reads are scripted by call
count, so what is asserted does not depend on how fast this machine runs."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator

import pytest

import cgoom
from cgoom._engine import _freed
from cgoom._engine._freed import FreedSampler, describe, settled_at

M = 1 << 20


def script(*steps: tuple[int, int | None]) -> Callable[[], int | None]:
    """A read returning each ``(count, value)``'s value ``count`` times, the last for ever."""
    values: Iterator[int | None] = itertools.chain.from_iterable(
        itertools.repeat(value, count) for count, value in steps)
    last: list[int | None] = [steps[-1][1]]

    def read() -> int | None:
        return next(values, last[0])
    return read


async def test_it_reads_past_the_actions_end_until_memory_settles() -> None:
    # The kill returns at once; the memory comes back over the next readings (an mm another
    # task held, swap freed after the resident pages), as it may after populated 0.
    sampler = FreedSampler(script((2, 300 * M), (3, 250 * M), (1, 200 * M), (1, 190 * M)),
                           script((4, 20 * M), (1, 0)))
    sampler.start()
    await asyncio.sleep(0)
    samples = await sampler.stop()
    assert samples[0].ms == 0 and samples[0].ram == 300 * M and samples[0].swap == 20 * M
    assert [s.ram for s in samples[:7]] == [300 * M] * 2 + [250 * M] * 3 + [200 * M, 190 * M]
    assert samples[-1].ram == 190 * M and samples[-1].swap == 0
    assert all(s.available is None for s in samples)  # not a machine rule
    # It stopped once 50 ms of readings agreed, not at the first two equal ones.
    assert samples[-1].ms - samples[6].ms >= _freed.SETTLE * 1000
    assert len(samples) >= 9
    assert settled_at(samples) == samples[6].ms
    assert [b.ms >= a.ms for a, b in itertools.pairwise(samples)] == [True] * (len(samples) - 1)


async def test_a_level_within_tolerance_counts_as_settled() -> None:
    # Readings that wander by less than 1% of the first (here 1.5M of 300M) are the same level.
    wobble = itertools.cycle([300 * M, 300 * M + 1_500_000])
    sampler = FreedSampler(lambda: next(wobble), lambda: None)
    sampler.start()
    samples = await sampler.stop()
    assert samples[-1].ms < _freed.AFTER_ACTIONS * 1000  # settled, not cut off
    assert settled_at(samples) == 0


async def test_memory_that_never_settles_is_cut_off_and_kept_short(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_freed, "AFTER_ACTIONS", 0.3)
    monkeypatch.setattr(_freed, "MAX_SAMPLES", 8)
    counter = itertools.count()
    sampler = FreedSampler(lambda: 500 * M - next(counter) * 10 * M, lambda: None,
                           lambda: 4000 * M)
    sampler.start()
    samples = await sampler.stop()
    assert samples[-1].ms >= 300 and len(samples) <= 9
    assert samples[0].ms == 0 and samples[0].ram == 500 * M  # the first reading stays
    assert all(s.available == 4000 * M for s in samples)  # a machine rule's MemAvailable
    assert settled_at(samples) == samples[-1].ms  # it never reached a level


async def test_a_domain_gone_reads_as_none_and_settles() -> None:
    sampler = FreedSampler(script((1, 80 * M), (1, None)), lambda: None)
    sampler.start()
    samples = await sampler.stop()
    assert samples[0].ram == 80 * M and samples[-1].ram is None
    assert samples[-1].ms < _freed.AFTER_ACTIONS * 1000


async def test_not_started_not_sampled() -> None:
    sampler = FreedSampler(lambda: 1, lambda: 1)
    assert await sampler.stop() == () and not sampler.started


def test_describe_shows_where_it_moved() -> None:
    S = cgoom.FreedSample
    samples = [S(0.0, 300 * M, 20 * M), S(5.0, 300 * M, 20 * M), S(10.2, 250 * M, 20 * M),
               S(15.0, 190 * M, 0), S(20.0, 190 * M, 0), S(70.1, 190 * M + 4096, 0)]
    assert describe(samples) == ("0.0 ms 300.0M/20.0M, 10.2 ms 250.0M/20.0M, 15.0 ms "
                                 "190.0M/0B, 70.1 ms 190.0M/0B (RAM/swap); 6 samples")
    assert settled_at(samples) == 15.0
    assert describe([S(0.0, 10 * M, None, 900 * M)]) == \
        "0.0 ms 10.0M (MemAvailable 900.0M) (RAM); 1 samples"
    assert describe([]) == "" and settled_at([]) is None
