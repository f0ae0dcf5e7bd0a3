"""The durable undo log (issue 18, item 2): what cgoom changed is noted before it is changed,
so a cgoom killed mid-run leaves nothing behind: the next one puts it back when it starts,
and ``cgoom restore`` does without starting one. The crash here is a forked handler that
``_exit``\\ s without its clean stop (as SIGKILL would: the kernel drops its lock)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

import cgoom
from cgoom._engine._undo import UndoLog, read_state
from cgoom.cli import main
from cgoom.testing import FakeCgroupTree, FakeProcesses, next_incident

M = 1 << 20
G = 1 << 30
HIGH = int(300 * M * 0.9) // 4096 * 4096  # the early trigger: 10% below memory.max


@pytest.fixture
def host(tree: FakeCgroupTree) -> FakeCgroupTree:
    """A 4 GiB machine (3 GiB available): top-level web (50M) and t, a domain with
    memory.max 300M and two leaves, batch (90M, priority 0) and db (140M, priority 100)."""
    tree.add("web", procs=[100], memory_current=50 * M)
    for name, pid, usage, priority in (("batch", 300, 90, 0), ("db", 200, 140, 100)):
        tree.add(f"t/{name}", procs=[pid], memory_current=usage * M).set_priority(priority)
        tree.add_process(pid, name=name, rss=usage * M)
    tree.hierarchy.cgroup("t").set_memory_max(300 * M)
    tree.set_meminfo(total=4 * G, available=3 * G)
    return tree


RULES = [cgoom.Rule("machine", "/", available_below=0.1, action="notify"),
         cgoom.Rule("t", "t", on="max", high_below_max=0.1, oom_group_leaves=True,
                    action="freeze", cooldown=60)]


def values(tree: FakeCgroupTree) -> dict[str, object]:
    return {"t high": tree.cgroup("t").memory_high(),
            "web high": tree.cgroup("web").memory_high(),
            "t/batch group": tree.cgroup("t/batch").memory_oom_group(),
            "t/db group": tree.cgroup("t/db").memory_oom_group(),
            "t/batch frozen": tree.cgroup("t/batch").cgroup_freeze(),
            "t/db frozen": tree.cgroup("t/db").cgroup_freeze()}


def crash(tree: FakeCgroupTree, state: str) -> None:
    """A handler with RULES on ``tree`` in a forked child: set up, freeze batch, then die
    without its clean stop."""
    pid = os.fork()
    if pid == 0:
        async def work() -> None:
            async with cgoom.open_handler(tree.hierarchy, *RULES, own_cgroup="/", kmsg=None,
                                          proc_events=False, processes=FakeProcesses(tree),
                                          state=state) as handler:
                tree.memory_event("t", "max")
                await next_incident(handler)
                os._exit(0)  # no clean stop: nothing is put back
        try:
            asyncio.run(work())
        finally:
            os._exit(1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_a_crash_is_put_back_by_cgoom_restore(host: FakeCgroupTree, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    before = values(host)
    state = str(tmp_path / "run" / "undo.json")
    crash(host, state)
    left = values(host)
    assert left["t high"] == HIGH and left["web high"] != "max", left
    assert left["t/batch group"] and left["t/db group"] and left["t/batch frozen"], left
    noted = read_state(state)
    assert {(c.cgroup, c.file) for c in noted} == {
        ("/t", "memory.high"), ("/web", "memory.high"), ("/t/batch", "memory.oom.group"),
        ("/t/db", "memory.oom.group"), ("/t/batch", "cgroup.freeze")}
    assert [c.old for c in noted if c.cgroup == "/t"] == ["max"]  # the original, not 270M
    assert main(["--mount", host.mount, "--proc", host.hierarchy.proc_root, "restore",
                 "--state", state]) == 0
    out = capsys.readouterr().out
    assert f"a previous cgoom left 5 change(s) in {state}" in out, out
    assert "put back cgroup.freeze of /t/batch: 0" in out
    assert values(host) == before
    assert not os.path.exists(state)  # nothing left to put back
    assert main(["--mount", host.mount, "restore", "--state", state]) == 0
    assert f"{state}: nothing to put back" in capsys.readouterr().out


async def test_a_crash_is_put_back_when_cgoom_starts_again(host: FakeCgroupTree,
                                                           tmp_path: Path) -> None:
    before = values(host)
    state = str(tmp_path / "undo.json")
    await asyncio.to_thread(crash, host, state)
    assert values(host) != before
    # The restart puts back first, then sets up again (its own tripwires find the
    # originals, not the dead one's values), and its clean stop leaves the host as it was.
    async with cgoom.open_handler(host.hierarchy, *RULES, own_cgroup="/", kmsg=None,
                                  proc_events=False, processes=FakeProcesses(host),
                                  state=state) as handler:
        assert handler.setup[0] == f"a previous cgoom left 5 change(s) in {state}: putting " \
            "them back"
        assert not host.cgroup("t/batch").cgroup_freeze()  # thawed at start
        assert host.cgroup("t").memory_high() == HIGH  # its own set-up again
        assert "machine: memory.high tripwires on" in handler.setup[-1], handler.setup
        # Another cgoom (or cgoom restore) meanwhile: refused, nothing touched.
        assert main(["--mount", host.mount, "restore", "--state", state]) == 1
        assert host.cgroup("t").memory_high() == HIGH
    assert values(host) == before
    assert not Path(state).exists()  # noqa: ASYNC240 (a stat, after the handler)


def test_restore_refuses_a_file_it_cannot_trust(host: FakeCgroupTree, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "undo.json"
    good = {"cgroup": "/t", "file": "memory.high", "old": "max", "inode": None}
    for entry, why in (
            ({**good, "file": "memory.swap.max"}, "cgoom puts back only"),
            ({**good, "old": "1; rm -rf /"}, "is not a value it takes"),
            ({**good, "cgroup": "/t/../etc"}, "must not contain '..'"),
            ({**good, "old": "9" * 400}, "is not a value it takes")):
        state.write_text(json.dumps({"version": 1, "changes": [entry]}))
        assert main(["--mount", host.mount, "restore", "--state", str(state)]) == 1
        err = capsys.readouterr().err
        assert f"{state}: not a cgoom undo log" in err and why in err, err
        assert "nothing in it was put back" in err
    state.write_text(json.dumps({"version": 1, "changes": [good]}))
    os.chmod(state, 0o666)  # others could have planted it
    assert main(["--mount", host.mount, "restore", "--state", str(state)]) == 1
    assert "will not put back what it lists" in capsys.readouterr().err
    os.chmod(tmp_path, 0o777)
    os.chmod(state, 0o600)
    assert main(["--mount", host.mount, "restore", "--state", str(state)]) == 1
    assert "will not keep the undo log in" in capsys.readouterr().err
    os.chmod(tmp_path, 0o700)


def test_a_recreated_cgroup_is_left_alone(host: FakeCgroupTree, tmp_path: Path) -> None:
    state = str(tmp_path / "undo.json")
    crash(host, state)
    host.remove_behind_our_back("t/batch")
    host.add("t/spacer")  # so the filesystem does not hand the same inode back
    host.add("t/batch", procs=[300])
    undo = UndoLog(host.hierarchy, state)
    lines = undo.open()
    undo.close()
    assert "cgroup.freeze of /t/batch: the cgroup was re-created since; left alone" in lines
    assert "put back memory.high of /t: max" in lines
