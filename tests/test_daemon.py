"""`cgoom run` on the fake tree (dry run: a fake tree's pids are not this host's): READY and
STOPPING over a notify socket the test provides, a record in the log, SIGHUP with a broken
file keeps the running configuration, SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
from pathlib import Path

import pytest

from cgoom._daemon import run
from cgoom.testing import FakeCgroupTree

M = 1 << 20


async def receive(sock: socket.socket, seconds: float = 10) -> str:
    loop = asyncio.get_running_loop()
    return (await asyncio.wait_for(loop.sock_recv(sock, 4096), seconds)).decode()


async def test_the_daemon_on_a_fake_tree(tree: FakeCgroupTree, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    for name, pid, prio in (("db", 100, 100), ("batch", 300, 0)):
        tree.add(f"t/{name}", procs=[pid], memory_current=100 * M).set_priority(prio)
        tree.add_process(pid, rss=100 * M)
    records = tmp_path / "records.jsonl"
    config = tmp_path / "cgoom.toml"
    config.write_text(f'[handler]\nown_cgroup = "/"\nrecords = "{records}"\nkmsg = false\n'
                      'proc_events = false\n[[rule]]\nname = "t"\ndomain = "t"\n')
    notify_path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(notify_path)
    server.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    caplog.set_level("INFO", "cgoom")
    try:
        daemon = asyncio.get_running_loop().create_task(
            run(str(config), dry_run=True, hierarchy=tree.hierarchy))
        ready = await receive(server)
        assert ready.startswith("READY=1\nSTATUS=1 rule(s) on 1 domain(s) (dry run)")
        tree.memory_event("t/batch", "high")
        for _ in range(500):
            if records.exists() and records.read_text():
                break
            await asyncio.sleep(0.01)
        line = json.loads(records.read_text().splitlines()[0])
        assert line["rule"] == "t" and line["dry_run"] is True
        assert line["decision"]["victims"][0]["cgroup"] == "/t/batch"
        config.write_text("[[rule]\n")  # broken
        os.kill(os.getpid(), signal.SIGHUP)
        assert (await receive(server)).startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert await receive(server) == "READY=1"
        assert "the configuration cannot be used; the running one is kept" in caplog.text
        os.kill(os.getpid(), signal.SIGTERM)
        assert await receive(server) == "STOPPING=1"
        assert await asyncio.wait_for(daemon, 10) == 0
    finally:
        server.close()


def test_the_example_unit() -> None:
    """docs/cgoom.service parses as a unit file, says what the daemon speaks (Type=notify,
    a watchdog, OOMScoreAdjust=-1000, MemoryMin=), and its ExecStart is a command line
    cgoom accepts."""
    import configparser
    import shlex

    from cgoom.cli import build_parser

    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are CamelCase
    unit.read(Path(__file__).resolve().parent.parent / "docs" / "cgoom.service")
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["OOMScoreAdjust"] == "-1000" and service["MemoryMin"] == "64M"
    assert service["WatchdogSec"] == "30s" and service["ExecReload"].endswith("-HUP $MAINPID")
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "cgoom"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == "/etc/cgoom/cgoom.toml"
