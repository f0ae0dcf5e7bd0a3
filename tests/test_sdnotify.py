"""sd_notify over a socket the test provides: a path, and the abstract namespace."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from cgoom._ops._sdnotify import notify, reloading, watchdog_interval


def test_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert notify("READY=1", "STATUS=watching 3 domains", environ={"NOTIFY_SOCKET": path})
        assert server.recv(4096) == b"READY=1\nSTATUS=watching 3 domains"
        assert notify(*reloading(), environ={"NOTIFY_SOCKET": path})
        first, second = server.recv(4096).decode().split("\n")
        assert first == "RELOADING=1" and second.startswith("MONOTONIC_USEC=")


def test_the_abstract_namespace() -> None:
    name = f"cgoom-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        assert notify("STOPPING=1", environ={"NOTIFY_SOCKET": "@" + name})
        assert server.recv(4096) == b"STOPPING=1"


def test_not_supervised_or_gone(tmp_path: Path) -> None:
    assert not notify("READY=1", environ={})
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"})


def test_watchdog_interval() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "20000000"}) == 10.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "20000000",
                              "WATCHDOG_PID": str(os.getpid())}) == 10.0
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
