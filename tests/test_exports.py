"""The public surface: everything in __all__ exists, shows as cgoom.X, and import is lean."""

from __future__ import annotations

import subprocess
import sys

import cgoom
import cgoom.testing


def test_all_names_exist_and_show_as_cgoom() -> None:
    for name in cgoom.__all__:
        obj = getattr(cgoom, name)
        if isinstance(obj, type):
            assert obj.__module__ == "cgoom", name
    for name in cgoom.testing.__all__:
        assert hasattr(cgoom.testing, name)


def test_import_does_not_load_pyroute2_or_asyncio() -> None:
    """pyroute2 costs 0.2 s (seconds in the VM) and asyncio ~50 ms: neither at import."""
    code = "import sys, cgoom; print(sorted(m for m in ('pyroute2', 'asyncio', 'cachetools') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_one_table_of_public_names() -> None:
    """__all__, dir(cgoom) and the TYPE_CHECKING imports follow the one table (_LAZY plus
    the eager imports): no name is public in one place and missing in another."""
    import ast
    import inspect

    source = inspect.getsource(cgoom)
    tree = ast.parse(source)
    typed: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom)
                typed |= {alias.asname or alias.name for alias in stmt.names}
    assert typed == set(cgoom._LAZY)
    assert set(cgoom.__all__) == set(cgoom._LAZY) | set(cgoom._EAGER)
    assert set(cgoom.__all__) <= set(dir(cgoom))
    assert "open_watcher" in dir(cgoom) and "Snapshotter" in dir(cgoom)
