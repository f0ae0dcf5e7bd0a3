"""The documentation site: docs/ builds with Sphinx, warnings as errors; every public name has
its entry in the API reference; every page is a chapter; the first-ten-minutes commands are
commands cgoom has, and the read-only ones run on a fake host."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import cgoom
import cgoom.client
import cgoom.testing
from cgoom.cli import build_parser, main
from cgoom.testing import FakeCgroupTree

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    # A subprocess: Sphinx's own deprecation warnings are not this suite's errors.
    done = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / ".doctrees"), str(DOCS), str(out)],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"sphinx -W failed:\n{done.stdout}\n{done.stderr}"
    return out


def test_every_page_is_a_chapter(site: Path) -> None:
    pages = {p.stem for p in DOCS.glob("*.md")}
    built = {p.stem for p in site.glob("*.html")} - {"genindex", "search", "py-modindex"}
    assert pages == built


def test_every_public_name_is_in_the_api_reference(site: Path) -> None:
    from sphinx.util.inventory import InventoryFile

    with (site / "objects.inv").open("rb") as f:
        inventory = InventoryFile.load(f, "", lambda base, uri: uri)
    documented = {name for objects in inventory.values() for name in objects}
    missing = [f"{module.__name__}.{name}"
               for module in (cgoom, cgoom.client, cgoom.testing)
               for name in module.__all__
               if f"{module.__name__}.{name}" not in documented]
    assert not missing, f"add these to docs/api.md: {missing}"


def test_constants_carry_their_own_words(site: Path) -> None:
    """A constant's entry has the ``#:`` comment of the module defining it, not the
    docstring of its type (``str(object='') -> str``)."""
    api = (site / "api.html").read_text()
    assert "no limit" in api  # MAX's comment
    assert "str(object=" not in api and "int([x])" not in api


SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
READ_ONLY = {"features", "rank", "check-config", "status", "policies"}


def first_ten_minutes_commands() -> list[list[str]]:
    page = (DOCS / "first-ten-minutes.md").read_text()
    return [shlex.split(line)[1:] for block in SH_BLOCK.findall(page)
            for line in block.splitlines() if line.startswith("/opt/cgoom/bin/cgoom ")]


def test_the_first_ten_minutes_walk_the_promised_path() -> None:
    commands = [argv[0] for argv in first_ten_minutes_commands()]
    assert commands == ["features", "rank", "check-config", "run", "explain"]


@pytest.mark.parametrize("argv", first_ten_minutes_commands(), ids=lambda a: a[0])
def test_first_ten_minutes_commands(argv: list[str], tree: FakeCgroupTree, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    build_parser().parse_args(argv)  # every option the page shows exists
    if argv[0] not in READ_ONLY:
        return
    for pid, name in enumerate(("db", "web", "batch"), start=1001):
        tree.add(f"workload.slice/{name}", memory_current=100 << 20, procs=[pid])
    config = tmp_path / "cgoom.toml"
    config.write_text((DOCS / "cgoom.example.toml").read_text())
    argv = [str(config) if a == "/etc/cgoom/cgoom.toml" else a for a in argv]
    roots = ["--mount", tree.mount, "--proc", str(tmp_path / "proc"),
             "--sys", str(tmp_path / "sys")]
    assert main([*roots, *argv]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    if argv[0] == "rank":
        assert out.splitlines()[1].split()[1] == "/workload.slice/batch", out
