"""sd_notify: tell systemd (or any supervisor speaking the protocol) how the daemon is, in a
few lines over the documented datagram protocol, without libsystemd.

Some facts (sd_notify(3), systemd's docs/PRESSURE.md neighbours, src/libsystemd/sd-daemon):

- ``$NOTIFY_SOCKET`` names a ``AF_UNIX`` datagram socket: a path, or, starting with ``@``,
  one in the abstract namespace (the ``@`` stands for a leading NUL byte). Unset: not
  supervised, nothing to send.
- A message is newline-separated ``KEY=VALUE`` lines in one datagram: ``READY=1``,
  ``STATUS=...``, ``STOPPING=1``, ``WATCHDOG=1``, ``RELOADING=1`` (with ``MONOTONIC_USEC=``
  the CLOCK_MONOTONIC microseconds, since systemd 253).
- ``$WATCHDOG_USEC`` asks for ``WATCHDOG=1`` more often than that; sending at half of it is
  the documented practice. ``$WATCHDOG_PID``, when set, names the process it is for.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def notify(*lines: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``lines`` (``"READY=1"``, ...) as one datagram; ``False`` when not supervised
    or the socket is gone (a supervisor that went away is not an error for the daemon)."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        return False  # vsock and other forms: not spoken here
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(lines).encode(), address)
        except OSError:
            return False
    return True


def reloading() -> tuple[str, str]:
    """The lines that say a reload began."""
    return "RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}"


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or ``None`` when no
    watchdog is asked of this process."""
    env = os.environ if environ is None else environ
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None
