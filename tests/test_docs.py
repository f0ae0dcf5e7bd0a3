"""Every ```python block in docs/*.md runs, in order, one namespace per page, against a fake
host: `cgoom.Hierarchy.discover` is pointed at a FakeCgroupTree holding the cgroups the
examples name. Nothing real is touched."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

import cgoom
from cgoom.testing import FakeCgroupTree

from .plugins import install_example

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.md"))
BLOCK = re.compile(r"^(<!-- real-kernel -->\n)?```python\n(.*?)^```", re.S | re.M)


def blocks(page: Path, *, real_kernel: bool) -> list[str]:
    """The page's python blocks; those marked ``<!-- real-kernel -->`` need kernel PSI files
    and run in tests/integration/test_docs_real.py instead."""
    return [code for marker, code in BLOCK.findall(page.read_text())
            if bool(marker) == real_kernel]


def test_docs_have_examples() -> None:
    assert sum(len(blocks(p, real_kernel=False)) for p in PAGES) >= 10


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeCgroupTree(tmp_path)
    for pid, path in enumerate(("workload.slice/batch-1", "workload.slice/batch-2",
                                "workload.slice/web"), start=1001):
        tree.add(path, memory_current=100 << 20, procs=[pid])
        tree.add_process(pid, name=path.rsplit("/", 1)[1], rss=(90 + pid % 10) << 20)
    monkeypatch.setattr(cgoom.Hierarchy, "discover", classmethod(lambda cls, **kw: tree.hierarchy))
    if page.name == "writing-a-policy.md":
        install_example(tmp_path / "site", monkeypatch)
    namespace: dict[str, object] = {}
    stop = threading.Event()
    if page.name in ("events.md", "handler.md"):
        # The first example waits for an OOM kill: count some events, then one, from another
        # thread while it runs (the fake kernel's side of the story).
        def kernel() -> None:
            while not stop.wait(0.05):
                tree.memory_event("workload.slice/batch-1", "high", 3)
                tree.memory_event("workload.slice/batch-1", "oom_kill")

        threading.Thread(target=kernel, daemon=True).start()
    try:
        for block in blocks(page, real_kernel=False):
            exec(compile(block, f"{page.name}", "exec"), namespace)
    finally:
        stop.set()
    if page.name == "writing-a-policy.md":
        assert "smallest-first ['/workload.slice/batch-1'," in capsys.readouterr().out
    if page.name == "events.md":
        # The first oom_kill seen is batch-1's or its parent's (hierarchical) counter: the
        # order of inotify events across two files is not defined.
        assert re.search(r"killed by the kernel in /workload\.slice(/batch-1)? total",
                         capsys.readouterr().out)
    if page.name == "policies.md":
        out = capsys.readouterr().out
        assert "/workload.slice/batch-2 False 1002" in out  # the largest, not avoided
        assert "65534 0 user.cgoom.priority=1000 ignored: set by uid 65534" in out
    if page.name == "handler.md":
        out = capsys.readouterr().out
        assert "rule 'workload' on /workload.slice" in out and "[dry run]" in out
        assert "dry run: would have done kill" in out and '{"actions":' in out
        assert "machine: memory.high tripwires on 1 of 1 child(ren) of /" in out
    if page.name == "first-chance.md":
        out = capsys.readouterr().out
        assert "told: /workload.slice/batch, free 13 MiB within 1 s" in out
        assert "first chance (/workload.slice/batch: done, freed 70.0M after" in out
        assert "nothing more was done" in out and "killed: None" in out
    if page.name == "notices.md":
        out = capsys.readouterr().out
        assert "oom: free 13 MiB within 2 s" in out
        assert "first chance (/workload.slice/app: done, freed 70.0M after" in out
        assert "nothing more was done" in out and "killed: None" in out
        assert "blocking client heard: low" in out
    if page.name == "kubernetes.md":
        out = capsys.readouterr().out
        assert "memory.oom.group=1 on 3 cgroup(s) matching" in out
        assert out.splitlines()[1:] == [
            "kubepods-besteffort-podaa11.slice whole QoS besteffort",
            "kubepods-burstable-podbb22.slice whole QoS burstable",
            "kubepods-podcc33.slice whole QoS guaranteed"]
    if page.name == "configuration.md":
        assert "rule 'machine' on /: triggers MemAvailable < 10%" in capsys.readouterr().out
    if page.name == "cgroups.md":
        out = capsys.readouterr().out
        assert "no-internal-process rule" in out
        assert "gone: " in out
