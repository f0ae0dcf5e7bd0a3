"""Every ```python block in docs/*.md runs, in order, one namespace per page, against a fake
host: `cgoom.Hierarchy.discover` is pointed at a FakeCgroupTree holding the cgroups the
examples name. Nothing real is touched."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cgoom
from cgoom.testing import FakeCgroupTree

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(DOCS.glob("*.md"))
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def test_docs_have_examples() -> None:
    assert sum(len(BLOCK.findall(p.read_text())) for p in PAGES) >= 8


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeCgroupTree(tmp_path)
    for path in ("workload.slice/batch-1", "workload.slice/batch-2", "workload.slice/web"):
        tree.add(path, memory_current=100 << 20)
    monkeypatch.setattr(cgoom.Hierarchy, "discover", classmethod(lambda cls, **kw: tree.hierarchy))
    blocks = BLOCK.findall(page.read_text())
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, f"{page.name}", "exec"), namespace)
    if page.name == "cgroups.md":
        out = capsys.readouterr().out
        assert "no-internal-process rule" in out
        assert "gone: " in out
