"""The plugin of docs/writing-a-policy.md, installed and run; broken plugins named."""

from __future__ import annotations

from pathlib import Path

import pytest

import cgoom
from cgoom.testing import FakeCgroupTree

from .plugins import EXAMPLE, install, install_example

M = 1 << 20


def test_the_docs_show_the_real_module() -> None:
    page = (EXAMPLE.parent.parent / "writing-a-policy.md").read_text()
    assert (EXAMPLE / "cgoom_smallest_first.py").read_text() in page


def test_installed_example_loads_validates_and_decides(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tree: FakeCgroupTree) -> None:
    install_example(tmp_path / "site", monkeypatch)
    assert cgoom.available_policies()["smallest-first"] == (
        "entry point smallest-first = cgoom_smallest_first:SmallestFirst "
        "from cgoom-smallest-first 0.1.0")
    policy = cgoom.load_policy("smallest-first", min_usage=20 * M)
    tree.add("ws/a", memory_current=10 * M, procs=[1])
    tree.add("ws/b", memory_current=30 * M, procs=[2])
    tree.add("ws/c", memory_current=50 * M, procs=[3])
    snaps = cgoom.Snapshotter(tree.hierarchy).snapshot("ws")
    decision = cgoom.decide(policy, cgoom.Incident("/ws"), snaps)
    assert decision.notes == ()
    assert [(v.cgroup, v.whole) for v in decision.victims] == [("/ws/b", True), ("/ws/c", True)]
    assert decision.victims[0].reason.startswith(f"usage {30 * M} bytes, the smallest")


@pytest.mark.parametrize(("module", "target", "args", "match"), [
    ("import not_a_module_anywhere\n", "broken_mod:make", {},
     r"policy plugin 'broken' \(entry point broken = broken_mod:make from broken-plugin 1\.0\) "
     r"failed to import: ModuleNotFoundError"),
    ("make = 42\n", "broken_mod:make", {}, "is a int, not a factory to call"),
    ("def make():\n    return lambda i, c: None\n", "broken_mod:make", {}, "has no `name`"),
    ("def make():\n    pass\n", "broken_mod:make", {"x": 1}, "refused its arguments"),
    ("import itertools, cgoom\n"
     "calls = itertools.count()\n"
     "class P:\n    name = 'p'\n"
     "    def __call__(self, i, c):\n"
     "        why = f'call {next(calls)}'\n"
     "        return cgoom.Decision('p', tuple(cgoom.make_victim(s, 0, why, True)\n"
     "                                         for s in cgoom.units(i, c)))\n"
     "def make():\n    return P()\n", "broken_mod:make", {}, "must be deterministic"),
])
def test_broken_plugins_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str,
                                  target: str, args: dict[str, int], match: str) -> None:
    install(tmp_path / "site", monkeypatch, dist="broken-plugin", version="1.0",
            entry_points={"broken": target}, modules={"broken_mod": module})
    with pytest.raises(cgoom.PluginError, match=match) as info:
        cgoom.load_policy("broken", **args)
    assert info.value.plugin == "broken"


def test_a_plugin_cannot_shadow_a_builtin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(tmp_path / "site", monkeypatch, dist="shadow", version="1.0",
            entry_points={"priority": "shadow_mod:make"}, modules={"shadow_mod": "make = 1\n"})
    assert cgoom.available_policies()["priority"] == "built in"
    assert isinstance(cgoom.load_policy("priority"), cgoom.PriorityPolicy)
