"""Unprivileged use: what cgoom says it cannot do, from its capabilities and the rules'
files, and a rule whose early trigger cannot be written (a delegated root's memory.high is
root's) runs without it instead of stopping the handler."""

from __future__ import annotations

from pathlib import Path

import pytest

import cgoom
from cgoom._ops import _privileges
from cgoom._ops._privileges import effective_capabilities, limits
from cgoom.testing import FakeCgroupTree, FakeProcesses

M = 1 << 20


def status(tree: FakeCgroupTree, cap_eff: str) -> None:
    Path(tree.hierarchy.proc_root, "self", "status").write_text(
        f"Name:\tcgoom\nCapInh:\t0000000000000000\nCapEff:\t{cap_eff}\n")


def test_root_with_every_capability_is_told_nothing(tree: FakeCgroupTree) -> None:
    status(tree, "000001ffffffffff")
    assert effective_capabilities(tree.hierarchy) == 0x1FFFFFFFFFF
    assert limits(tree.hierarchy, [cgoom.Rule("t", "t", high_below_max=0.1)]) == []


@pytest.mark.parametrize(("kernel", "netlink"), [
    ((6, 1), ["no", "process", "connector"]),
    # Linux 6.6 lets every user listen to the process connector; taskstats stays admin's
    ((6, 6), ["no", "taskstats", "(CAP_NET_ADMIN):"]),
])
def test_a_user_without_capabilities_is_told_what_it_cannot_do(
        tree: FakeCgroupTree, monkeypatch: pytest.MonkeyPatch, kernel: tuple[int, int],
        netlink: list[str]) -> None:
    monkeypatch.setattr(_privileges, "kernel_release", lambda: kernel)
    tree.add("t", memory_max=100 * M)
    status(tree, "0000000000000000")
    monkeypatch.setattr(_privileges.os, "access", lambda path, mode: False)
    said = limits(tree.hierarchy, [cgoom.Rule("t", "t", high_below_max=0.1),
                                   cgoom.Rule("u", "t", dry_run=True)])
    assert [s.split(" ", 3)[:3] for s in said][:4] == [
        ["it", "signals", "only"], ["trusted.*", "xattrs", "(oomd's"],
        ["it", "cannot", "lower"], netlink]
    assert said[4].startswith("rule 't': it cannot write memory.high of /t (a delegated "
                              "root's own files stay root's)")
    assert len(said) == 5  # rule u sets nothing on /t


def test_no_status_file_says_nothing(tree: FakeCgroupTree) -> None:
    assert limits(tree.hierarchy, [cgoom.Rule("t", "t")]) == []


async def test_an_early_trigger_refused_is_said_and_the_rule_runs(
        tree: FakeCgroupTree, monkeypatch: pytest.MonkeyPatch) -> None:
    tree.add("t/batch", procs=[300], memory_current=10 * M, memory_max=100 * M)
    tree.hierarchy.cgroup("t").set_memory_max(100 * M)
    tree.add_process(300, rss=10 * M)

    def refuse(self: cgoom.Cgroup, value: object) -> None:
        raise cgoom.PermissionDenied(f"{self.dir}/memory.high: Permission denied",
                                     path=f"{self.dir}/memory.high")

    monkeypatch.setattr(cgoom.Cgroup, "set_memory_high", refuse)
    rule = cgoom.Rule("t", "t", high_below_max=0.1, oom_group_leaves=True, action="notify")
    async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/", kmsg=None,
                                  proc_events=False,
                                  processes=FakeProcesses(tree)) as handler:
        assert handler.setup[0].startswith("t: memory.high of /t was not set (")
        assert "set MemoryHigh= on its unit" in handler.setup[0]
        assert handler.setup[1] == "t: memory.oom.group=1 on 1 leaf cgroup(s) of /t"
        tree.memory_event("t", "max")
        record = await handler.__anext__()
        assert isinstance(record, cgoom.IncidentRecord) and record.decision.first is not None
