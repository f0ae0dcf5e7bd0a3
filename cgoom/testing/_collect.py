"""Collecting a watcher's events in tests: the helper cgoom's own tests use, for yours."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from .._watch._events import Event
    from .._watch._watcher import Watcher

_E = TypeVar("_E")


async def collect_events(watcher: Watcher, until: Callable[[list[Event]], bool], *,
                         seconds: float = 5.0) -> list[Event]:
    """The events ``watcher`` delivers (through ``async for``) until ``until(events)``
    holds; :class:`TimeoutError` after ``seconds``, or ``AssertionError`` if the
    watcher closes first, each with the events seen so far."""
    events: list[Event] = []

    async def run() -> None:
        async for event in watcher:
            events.append(event)
            if until(events):
                return
        raise AssertionError(f"the watcher closed first; events so far: {events}")

    try:
        await asyncio.wait_for(run(), seconds)
    except TimeoutError:
        raise TimeoutError(f"no match within {seconds} s; events so far: {events}") from None
    return events


def events_of_type(events: list[Event], cls: type[_E]) -> list[_E]:
    """The events of ``cls``, in order."""
    return [e for e in events if isinstance(e, cls)]
