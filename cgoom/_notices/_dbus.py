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

import contextlib
import logging
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
        self._bus: Any = None
        self._unregister: Callable[[], None] | None = None

    async def start(self) -> None:
        domains = sorted({r.domain for r in self.handler.rules})
        if not any(inside(self.domain, d) for d in domains):
            raise CgoomError(f"D-Bus warnings for {self.domain}: in no rule's domain "
                             f"({', '.join(domains)}): there would be no level to send")
        try:
            from dbus_fast import BusType, Message, RequestNameReply
            from dbus_fast.aio import MessageBus
        except ImportError as exc:
            raise CgoomError("D-Bus warnings need the dbus extra: pip install "
                             "'cgoom[dbus]' (dbus-fast)") from exc
        if self.bus_name in ("system", "session"):
            bus = MessageBus(bus_type=BusType.SYSTEM if self.bus_name == "system"
                             else BusType.SESSION)
        else:
            bus = MessageBus(bus_address=self.bus_name)
        try:
            self._bus = await bus.connect()
            reply = await self._bus.request_name(NAME)
        except Exception as exc:
            if self._bus is not None:
                self._bus.disconnect()
            raise CgoomError(f"D-Bus ({self.bus_name}): cannot connect or ask for {NAME}: "
                             f"{exc}") from exc
        self.owns_name = reply == RequestNameReply.PRIMARY_OWNER
        if not self.owns_name:
            log.warning("cgoom: D-Bus (%s): %s is owned by another (%s); LowMemoryWarning "
                        "goes out from %s, which subscribers matching on the name do not "
                        "hear", self.bus_name, NAME, reply, self._bus.unique_name)
        message = Message.new_signal

        def warn(notice: Notice) -> None:
            if self._bus is None or not self._bus.connected:
                return
            sent = self._bus.send(message(PATH, INTERFACE, "LowMemoryWarning", "y",
                                          [WARNING[notice.level]]))
            sent.add_done_callback(_failed)
            self.sent += 1

        async def answer_nothing(notice: Notice) -> None:
            warn(notice)

        self._unregister = self.handler.register(self.domain, answer_nothing, tell=warn)

    async def aclose(self) -> None:
        if self._unregister is not None:
            self._unregister()
        if self._bus is not None:
            self._bus.disconnect()
            with contextlib.suppress(Exception):
                await self._bus.wait_for_disconnect()
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
