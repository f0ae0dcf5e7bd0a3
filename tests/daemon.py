"""Driving `cgoom run` in-process from a test: signals that reach the daemon, never pytest.

The daemon runs as a task on the test's own loop and takes SIGHUP and SIGTERM with
``loop.add_signal_handler``. Sent with ``os.kill`` to this process after the daemon has
stopped (it stops early when, say, an optional extra is missing), SIGTERM's default action
would end pytest itself with status 143 and no report of which test failed. So a signal goes
only to a daemon still running with its handler in place; otherwise the test fails with what
the daemon ended with.
"""

from __future__ import annotations

import asyncio
import os
import signal


def _ended(daemon: asyncio.Task[int]) -> str:
    if not daemon.done():
        return "still running, without its handler for the signal"
    if daemon.cancelled():
        return "cancelled"
    exc = daemon.exception()
    return f"exit status {daemon.result()}" if exc is None else f"{type(exc).__name__}: {exc}"


def send(daemon: asyncio.Task[int], signum: signal.Signals) -> None:
    """Send ``signum`` to the in-process daemon, or fail the test saying how it ended.

    No race: the daemon runs on this thread's loop, which does not run between the check
    and the ``os.kill``."""
    handler = signal.getsignal(signum)
    if daemon.done() or handler in (signal.SIG_DFL, signal.SIG_IGN, None):
        raise AssertionError(f"cannot send {signum.name}: the daemon is not taking it "
                             f"({_ended(daemon)})")
    os.kill(os.getpid(), signum)


async def stop(daemon: asyncio.Task[int], seconds: float = 10.0) -> int:
    """SIGTERM, then the daemon's exit status; a daemon that already ended fails the test
    with how it ended."""
    send(daemon, signal.SIGTERM)
    return await asyncio.wait_for(daemon, seconds)
