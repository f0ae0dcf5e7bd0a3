"""Policies on a real kernel: settings kept as xattrs on real cgroups reach the snapshots,
and the priority policy picks the low-priority hog while its important sibling is spared."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom.cli import main as cli_main
from cgoom.testing import wait_until

from .conftest import holding_hog

Spawn = Callable[[cgoom.Cgroup, str], Any]
M = 1 << 20


def test_xattrs_reach_snapshots(box: cgoom.Cgroup) -> None:
    """user.cgoom.* and the peers' xattrs (user.oomd_*, trusted.oomd_*) on cgroupfs are read
    back into snapshots."""
    cases = {
        "pri": lambda c: c.set_priority(-7),
        "pref": lambda c: c.set_preference("prefer"),
        "omit": lambda c: c.set_xattr("user.oomd_omit", "1"),
        "avoid": lambda c: c.set_xattr("user.oomd_avoid", "1"),
        "tprefer": lambda c: c.set_xattr("trusted.oomd_prefer", "1"),  # root: CAP_SYS_ADMIN
        "kill": lambda c: c.set_killable(True),
        "over": lambda c: c.set_xattr("user.cgoom.overlimit", "1"),
        "broken": lambda c: c.set_xattr("user.cgoom.priority", "very"),
    }
    for name, setup in cases.items():
        setup(box.create_child(name))
    time.sleep(1.1)
    snaps = cgoom.Snapshotter(cgoom.Hierarchy.discover()).snapshot(box.path)
    s = {path.rsplit("/", 1)[1]: snap for path, snap in snaps.items()}
    assert s["pri"].priority == -7
    assert (s["pref"].preference, s["omit"].preference, s["avoid"].preference,
            s["tprefer"].preference) == ("prefer", "omit", "avoid", "prefer")
    assert s["kill"].killable and s["over"].overlimit
    assert s["broken"].priority == 0 and "not an integer" in s["broken"].problems[0]
    assert box.child("pri").priority() == -7
    fresh = s["pri"]
    assert fresh.usage is not None and fresh.events is not None and fresh.pressure is not None
    assert fresh.populated is False and fresh.oom_group is False and fresh.memory_max == "max"
    # kernfs sets a directory's ctime when it is created: age is the cgroup's age.
    assert fresh.age is not None and 1.0 <= fresh.age < 120


def test_priority_policy_on_live_processes(box: cgoom.Cgroup, spawn: Spawn,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A hog in a low-priority cgroup is chosen; its high-priority sibling, larger or not,
    is spared; inside the leaf the process with the highest oom_score_adj is the victim."""
    low, high = box.create_child("low"), box.create_child("high")
    low.set_priority(0)
    high.set_priority(100)
    big = spawn(high, holding_hog(48))
    small = spawn(low, f"echo 500 > /proc/self/oom_score_adj; {holding_hog(16)}")
    wait_until(lambda: high.memory_current() > 40 * M and low.memory_current() > 12 * M, 60,
               "both hogs to hold their memory")
    snaps = cgoom.Snapshotter(cgoom.Hierarchy.discover()).snapshot(box.path)
    incident = cgoom.Incident.create(box.path, own_cgroup=cgoom.Hierarchy.discover()
                                     .own_cgroup().path)
    decision = cgoom.decide(cgoom.load_policy("priority"), incident, snaps)
    assert decision.notes == ()
    first = decision.first
    assert first is not None and first.cgroup == low.path and not first.whole
    # The sh that set oom_score_adj 500 passed it on to the hog's processes it forked.
    with open(f"/proc/{first.pid}/oom_score_adj") as f:
        assert int(f.read()) == 500
    assert first.pid in low.cgroup_procs() and first.pid != small.pid
    assert [v.cgroup for v in decision.victims][-1] == high.path
    assert big.proc.poll() is None
    assert cli_main(["rank", box.path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith(f"  1. {low.path} (pid {first.pid}): priority 0")
    os.kill(first.pid, 9)
