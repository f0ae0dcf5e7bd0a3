"""`cgoom run` on the real kernel: the daemon, started from a configuration file, handles
the priority inversion (issue #10's first acceptance case, without metrics yet): batch is
killed whole, db and web live on, one JSON record lands in the log, sd_notify says READY
and STOPPING on a socket the test provides, and SIGTERM puts memory.high back."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom.testing import wait_until

from .conftest import holding_hog, python_cmd
from .test_handler_real import GROW, inversion

Spawn = Callable[[cgoom.Cgroup, str], Any]
M = 1 << 20


def test_cgoom_run_handles_the_priority_inversion(box: cgoom.Cgroup, spawn: Spawn,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    parent, kids = inversion(box, early=False)
    spawn(kids["db"], holding_hog(140))
    spawn(kids["web"], holding_hog(50))
    wait_until(lambda: kids["db"].memory_current() > 135 * M
               and kids["web"].memory_current() > 45 * M, 60, "db and web to hold memory")
    work = tempfile.mkdtemp(prefix="cgoom-daemon-")
    records = os.path.join(work, "records.jsonl")
    config = os.path.join(work, "cgoom.toml")
    with open(config, "w") as f:
        f.write(f'[handler]\nrecords = "{records}"\n\n[[rule]]\nname = "inversion"\n'
                f'domain = "{parent.path}"\non = ["high"]\nhigh_below_max = 0.1\n'
                "oom_group_leaves = true\nconfirm_timeout = 20\n")
    notify_path = os.path.join(work, "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(notify_path)
    server.settimeout(90)  # pyroute2 takes 8-10 s to import in the emulated VM
    daemon = subprocess.Popen([sys.executable, "-m", "cgoom.cli", "run", "--config", config],
                              env={**os.environ, "NOTIFY_SOCKET": notify_path},
                              stderr=subprocess.PIPE, text=True)
    try:
        started = time.monotonic()
        ready = server.recv(4096).decode()
        ready_s = time.monotonic() - started
        assert ready.startswith("READY=1"), ready
        assert parent.memory_high() == 270 * M
        spawn(kids["batch"], python_cmd(GROW))
        wait_until(lambda: os.path.exists(records) and os.path.getsize(records) > 0, 60,
                   "a record in the log")
        daemon.send_signal(signal.SIGTERM)
        assert server.recv(4096) == b"STOPPING=1"
        assert daemon.wait(30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        stderr = daemon.communicate()[1]
        server.close()
    with open(records) as f:
        lines = f.read().splitlines()
    assert len(lines) == 1, lines
    record = cgoom.record_from_json(lines[0])
    assert isinstance(record, cgoom.IncidentRecord)
    assert record.victim is not None and record.victim.cgroup == kids["batch"].path, stderr
    assert kids["db"].cgroup_procs() and kids["web"].cgroup_procs()
    assert parent.memory_events().oom_kill == 0
    assert parent.memory_high() == "max"  # put back on SIGTERM
    t = record.timings
    with capsys.disabled():
        print(f"\n[figures] cgoom run: READY after {ready_s:.1f} s (VM); onset to kill "
              f"{t.kill_ms:.1f} ms, notification to empty {t.confirmed_ms:.1f} ms; "
              f"{json.loads(lines[0])['trigger']}")
