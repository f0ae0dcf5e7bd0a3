"""LowMemoryWarning on D-Bus on the real kernel (issue #11): a bus started for the test (a
real dbus-daemon), a subscriber matching on low-memory-monitor's name as GLib's
GMemoryMonitor does, and cgoom sending the inversion domain's levels there: batch grows
into memory.high and the subscriber hears 50 ("low"). Prints how long after cgoom raised
the level the signal arrived."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom._notices._dbus import INTERFACE, NAME, open_low_memory_monitor
from cgoom.testing import FakeCgroupTree, until

from .conftest import python_cmd, report_figures
from .test_handler_real import inversion
from .test_notices_real import GROW, held, mark_low

Spawn = Callable[[cgoom.Cgroup, str], Any]


def start_bus(dbus_daemon: str, address: str) -> subprocess.Popen[str]:
    """A session-style bus (anyone may own any name) at ``address``, just for the test."""
    return subprocess.Popen([dbus_daemon, "--session", "--nofork", "--nopidfile",
                             f"--address={address}", "--print-address"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_low_memory_warning_reaches_a_subscriber(
        box: cgoom.Cgroup, spawn: Spawn, capsys: pytest.CaptureFixture[str]) -> None:
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    dbus_daemon = shutil.which("dbus-daemon")
    assert dbus_daemon is not None, "dbus-daemon is missing (cgoom-vm installs it)"
    parent, kids = inversion(box, early=True)
    held(kids, spawn)
    work = tempfile.mkdtemp(prefix="cgoom-dbus-")
    address = f"unix:path={os.path.join(work, 'bus')}"
    bus_daemon = start_bus(dbus_daemon, address)
    subscriber = None
    try:
        assert bus_daemon.stdout is not None
        printed = await asyncio.to_thread(bus_daemon.stdout.readline)
        assert printed.startswith(address), printed
        subscriber = await MessageBus(bus_address=address).connect()
        heard: list[tuple[float, int]] = []

        def on_message(message: Message) -> None:
            if message.message_type == MessageType.SIGNAL and \
                    message.member == "LowMemoryWarning":
                heard.append((time.monotonic(), message.body[0]))

        subscriber.add_message_handler(on_message)
        # The match GLib's GMemoryMonitor makes: by the sender's well-known name.
        reply = await subscriber.call(Message(
            destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus", member="AddMatch", signature="s",
            body=[f"type='signal',sender='{NAME}',interface='{INTERFACE}',"
                  "member='LowMemoryWarning'"]))
        assert reply is not None and reply.message_type == MessageType.METHOD_RETURN

        rule = cgoom.Rule("inversion", parent.path, on="high", window=1.0, sustained=30.0,
                          confirm_timeout=20)
        async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
            told = mark_low(handler, kids["batch"].path)
            async with open_low_memory_monitor(handler, parent.path, address) as monitor:
                assert monitor.owns_name
                spawn(kids["batch"], python_cmd(GROW))
                await until(lambda: bool(heard), 60, what="LowMemoryWarning")
                sent = monitor.sent
    finally:
        if subscriber is not None:
            subscriber.disconnect()
        bus_daemon.terminate()
        await asyncio.to_thread(bus_daemon.wait, 10)
        for stream in (bus_daemon.stdout, bus_daemon.stderr):
            if stream is not None:
                stream.close()
    assert heard[0][1] == 50 and sent >= 1
    with capsys.disabled():
        report_figures(f"D-Bus: LowMemoryWarning(50) reached a subscriber matching on "
              f"{NAME} {(heard[0][0] - told[0]) * 1000:.1f} ms after cgoom raised "
              f"{parent.path} to low")


async def test_a_restarted_bus_is_connected_again(
        tree: FakeCgroupTree, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    """issue 19: after dbus-daemon restarted, LowMemoryWarning was never sent again and
    nothing was logged. The outage is said, cgoom connects again, and a subscriber on the new
    bus hears the next level. (A fake tree: the bus, not the kernel, is under test.)"""
    from dbus_fast import Message, MessageType
    from dbus_fast.aio import MessageBus

    dbus_daemon = shutil.which("dbus-daemon")
    assert dbus_daemon is not None, "dbus-daemon is missing (cgoom-vm installs it)"
    caplog.set_level("INFO", "cgoom")
    tree.add("t/app", procs=[100], memory_current=100 << 20)
    tree.hierarchy.cgroup("t").set_memory_max(300 << 20)
    tree.set("t", "memory.current", f"{280 << 20}\n")
    work = tempfile.mkdtemp(prefix="cgoom-dbus-")
    address = f"unix:path={os.path.join(work, 'bus')}"
    daemons = [start_bus(dbus_daemon, address)]
    subscriber = None
    rule = cgoom.Rule("t", "t", on="max", dry_run=True)
    try:
        assert daemons[0].stdout is not None
        await asyncio.to_thread(daemons[0].stdout.readline)
        async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/", kmsg=None,
                                      proc_events=False) as handler, \
                open_low_memory_monitor(handler, "/t", address) as monitor:
            assert monitor.connected
            daemons[0].terminate()  # the bus restarts (an upgrade, a crash)
            await asyncio.to_thread(daemons[0].wait, 10)
            await until(lambda: not monitor.connected, 10, what="the loss to be seen")
            with contextlib.suppress(FileNotFoundError):  # a socket file left behind
                os.unlink(os.path.join(work, "bus"))
            lost_at = time.monotonic()
            daemons.append(start_bus(dbus_daemon, address))
            assert daemons[1].stdout is not None
            await asyncio.to_thread(daemons[1].stdout.readline)
            await until(lambda: monitor.connected, 60, what="cgoom to connect again")
            back_after = time.monotonic() - lost_at
            subscriber = await MessageBus(bus_address=address).connect()
            heard: list[int] = []

            def on_message(message: Message) -> None:
                if message.message_type == MessageType.SIGNAL and \
                        message.member == "LowMemoryWarning":
                    heard.append(message.body[0])

            subscriber.add_message_handler(on_message)
            await subscriber.call(Message(
                destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus", member="AddMatch", signature="s",
                body=[f"type='signal',sender='{NAME}',interface='{INTERFACE}',"
                      "member='LowMemoryWarning'"]))
            tree.memory_event("t", "high")
            await until(lambda: bool(heard), 10, what="LowMemoryWarning on the new bus")
            assert monitor.owns_name and monitor.reconnects == 1
    finally:
        if subscriber is not None:
            subscriber.disconnect()
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.terminate()
            await asyncio.to_thread(daemon.wait, 10)
            for stream in (daemon.stdout, daemon.stderr):
                if stream is not None:
                    stream.close()
        shutil.rmtree(work, ignore_errors=True)
    assert heard == [50]
    assert "the connection was lost; LowMemoryWarning is not sent until it is back" \
        in caplog.text
    assert "connected again after" in caplog.text
    with capsys.disabled():
        report_figures(f"D-Bus: the bus restarted; cgoom connected again "
              f"{back_after * 1000:.0f} ms after the new bus was started, and the next "
              "LowMemoryWarning(50) reached a subscriber on it")
