"""Levels on D-Bus, as freedesktop's low-memory-monitor sends them: the signal
``LowMemoryWarning(y)`` of ``org.freedesktop.LowMemoryMonitor`` at
``/org/freedesktop/LowMemoryMonitor``, with 50 ("free unneeded resources"), 100 ("try
harder; a good time to quit") or 255 ("the system will start terminating processes"). GLib's
GMemoryMonitor and the applications built on it listen to this name; cgoom sends the levels
of one domain (the whole machine, ``/``, as low-memory-monitor does, or any other).

An optional extra (``pip install 'cgoom[dbus]'``: dbus-fast, a maintained asyncio D-Bus
library in pure Python with optional compiled speed-ups), imported only when configured.
Subscribers that match on the sender's well-known name (GLib does) hear it only when cgoom
owns that name: on the system bus that takes a bus policy allowing it (docs/notices.md) and
no low-memory-monitor running; when the name cannot be had, cgoom says so and sends from
its unique name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from .._engine._firstchance import Notice
from .._errors import CgoomError
from .._kernel._paths import inside, normalize_path

if TYPE_CHECKING:
    from .._engine._handler import Handler

log = logging.getLogger("cgoom.dbus")

NAME = "org.freedesktop.LowMemoryMonitor"
PATH = "/org/freedesktop/LowMemoryMonitor"
INTERFACE = "org.freedesktop.LowMemoryMonitor"
#: cgoom's levels as low-memory-monitor's (its README: 50 low, 100 medium, 255 critical).
WARNING = {"low": 50, "critical": 100, "oom": 255}


class LowMemoryMonitor:
    """Sends ``domain``'s levels as ``LowMemoryWarning`` on ``bus`` (``"system"``,
    ``"session"`` or a D-Bus address such as ``unix:path=/run/dbus/...``); use
    :func:`open_low_memory_monitor`. ``owns_name``: whether it got the well-known name."""

    def __init__(self, handler: Handler, domain: str = "/", bus: str = "system") -> None:
        self.handler = handler
        self.domain = normalize_path(domain)
        self.bus_name = bus
        self.owns_name = False
        self.sent = 0
        #: Warnings not sent because the bus was away, and times it came back.
        self.missed = 0
        self.reconnects = 0
        self._bus: Any = None
        self._unregister: Callable[[], None] | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        domains = sorted({r.domain for r in self.handler.rules})
        if not any(inside(self.domain, d) for d in domains):
            raise CgoomError(f"D-Bus warnings for {self.domain}: in no rule's domain "
                             f"({', '.join(domains)}): there would be no level to send")
        try:
            from dbus_fast import Message
        except ImportError as exc:
            raise CgoomError("D-Bus warnings need the dbus extra: pip install "
                             "'cgoom[dbus]' (dbus-fast)") from exc
        await self._connect()
        message = Message.new_signal

        def warn(notice: Notice) -> None:
            if self._bus is None or not self._bus.connected:
                self.missed += 1  # said when the connection went, counted here
                return
            sent = self._bus.send(message(PATH, INTERFACE, "LowMemoryWarning", "y",
                                          [WARNING[notice.level]]))
            sent.add_done_callback(_failed)
            self.sent += 1

        async def answer_nothing(notice: Notice) -> None:
            warn(notice)

        self._unregister = self.handler.register(self.domain, answer_nothing, tell=warn)
        self._keeper = asyncio.get_running_loop().create_task(self._keep_connected())

    async def _connect(self) -> None:
        """Connect and ask for the well-known name; :class:`CgoomError` if either fails."""
        from dbus_fast import BusType, RequestNameReply
        from dbus_fast.aio import MessageBus

        if self.bus_name in ("system", "session"):
            bus = MessageBus(bus_type=BusType.SYSTEM if self.bus_name == "system"
                             else BusType.SESSION)
        else:
            bus = MessageBus(bus_address=self.bus_name)
        connected = None
        try:
            connected = await bus.connect()
            reply = await connected.request_name(NAME)
        except Exception as exc:
            if connected is not None:
                connected.disconnect()
            raise CgoomError(f"D-Bus ({self.bus_name}): cannot connect or ask for {NAME}: "
                             f"{exc}") from exc
        self._bus = connected
        self.owns_name = reply == RequestNameReply.PRIMARY_OWNER
        if not self.owns_name:
            log.warning("cgoom: D-Bus (%s): %s is owned by another (%s); LowMemoryWarning "
                        "goes out from %s, which subscribers matching on the name do not "
                        "hear", self.bus_name, NAME, reply, connected.unique_name)

    @property
    def connected(self) -> bool:
        return self._bus is not None and bool(self._bus.connected)

    async def _keep_connected(self) -> None:
        """When the bus goes (dbus-daemon restarted), say so and connect again, waiting
        0.5 s, then twice as long each time up to 30 s: LowMemoryWarning was never sent
        again, silently, after a restart of the bus."""
        while True:
            bus = self._bus
            assert bus is not None
            try:
                await bus.wait_for_disconnect()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # stopping
            except Exception:  # gone with an error: gone all the same
                pass
            self._bus = None
            log.warning("cgoom: D-Bus (%s): the connection was lost; LowMemoryWarning is not "
                        "sent until it is back: connecting again", self.bus_name)
            lost, delay, tries = time.monotonic(), 0.5, 0
            while self._bus is None:
                await asyncio.sleep(delay)
                tries += 1
                try:
                    await self._connect()
                except CgoomError as exc:
                    delay = min(delay * 2, 30.0)
                    if tries in (1, 10) or tries % 100 == 0:  # said, not a flood
                        log.warning("cgoom: D-Bus: still not connected after %d tries: %s",
                                    tries, exc)
            self.reconnects += 1
            log.warning("cgoom: D-Bus (%s): connected again after %.1f s (%d warning(s) "
                        "missed meanwhile)", self.bus_name, time.monotonic() - lost,
                        self.missed)

    async def aclose(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
            self._keeper = None
        if self._unregister is not None:
            self._unregister()
        if self._bus is not None:
            self._bus.disconnect()
            try:
                await self._bus.wait_for_disconnect()
            except asyncio.CancelledError:
                # dbus-fast cancels its own future on a disconnect we asked for; a
                # cancellation of this task itself goes on.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            except Exception:  # gone with an error: gone all the same
                pass
            self._bus = None


def _failed(future: Any) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning("cgoom: D-Bus: LowMemoryWarning not sent: %s", future.exception())


@contextlib.asynccontextmanager
async def open_low_memory_monitor(handler: Handler, domain: str = "/", bus: str = "system",
                                  ) -> AsyncIterator[LowMemoryMonitor]:
    """Send ``domain``'s levels as ``LowMemoryWarning(y)`` on ``bus`` while the block runs
    (:class:`LowMemoryMonitor`)."""
    monitor = LowMemoryMonitor(handler, domain, bus)
    await monitor.start()
    try:
        yield monitor
    finally:
        await monitor.aclose()
