"""Installing policy plugins for tests the way an installer lays them out: the module, and a
``<name>-<version>.dist-info`` with METADATA and entry_points.txt, on sys.path, so that
importlib.metadata (and so cgoom.load_policy) finds them exactly as after ``pip install``."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "smallest_first"


def install(site: Path, monkeypatch: pytest.MonkeyPatch, *, dist: str, version: str,
            entry_points: dict[str, str], modules: dict[str, str]) -> None:
    site.mkdir(parents=True, exist_ok=True)
    for name, source in modules.items():
        (site / f"{name}.py").write_text(source)
        monkeypatch.delitem(sys.modules, name, raising=False)
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[cgoom.policies]\n{lines}")
    monkeypatch.syspath_prepend(str(site))


def install_example(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Install docs/examples/smallest_first from its own pyproject.toml."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    install(site, monkeypatch, dist=project["name"], version=project["version"],
            entry_points=project["entry-points"]["cgoom.policies"],
            modules={"cgoom_smallest_first": (EXAMPLE / "cgoom_smallest_first.py").read_text()})
