"""The package's layering, enforced: every import inside ``cgoom`` goes down or sideways,
never up, and no module reaches into another module's private names.

The layers, lowest first (cgoom/__init__.py and DESIGN.md draw the same picture):
``_errors``; ``_kernel``; ``_watch``; ``_decide``; ``_engine``; ``_notices``; ``_ops``; and the
public faces on top (``cgoom``, ``cli``, ``client``, ``testing``). Imports under
``TYPE_CHECKING`` and inside functions count like any other: a lazy import upward is still a
dependency upward.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "cgoom"

LAYERS = ("_errors", "_kernel", "_watch", "_decide", "_engine", "_notices", "_ops")
TOP = len(LAYERS)


def module_name(path: pathlib.Path) -> str:
    parts = ["cgoom", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return TOP  # cgoom itself, cli, client, testing


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package(module):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> list[tuple[int, str, str | None]]:
    """``(line, imported module, imported name or None)`` for every import of ``module``:
    ``from x import y`` gives ``(x.y, None)`` when ``x.y`` is a module, else ``(x, y)``."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub, None) if sub in MODULES
                             else (node.lineno, target, alias.name))
    return [f for f in found if f[1] == "cgoom" or f[1].startswith("cgoom.")]


def module_aliases(module: str) -> dict[str, str]:
    """Local names bound to cgoom modules (``from .. import _parse``, ``import cgoom.x``)."""
    tree = ast.parse(MODULES[module].read_text())
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:
                    names[alias.asname or alias.name] = f"{target}.{alias.name}"
    return names


def test_the_modules_are_found() -> None:
    assert "cgoom._engine._handler" in MODULES
    assert {layer(m) for m in MODULES} == set(range(len(LAYERS) + 1))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_goes_up(module: str) -> None:
    upward = [f"line {line}: {target} ({LAYERS[layer(target)] if layer(target) < TOP else 'top'})"
              for line, target, _ in imports(module)
              if target in MODULES and layer(target) > layer(module)]
    assert not upward, (f"{module} ({LAYERS[layer(module)] if layer(module) < TOP else 'top'}) "
                        f"imports a higher layer: {upward}")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_private_name_of_another_module(module: str) -> None:
    reach = [f"line {line}: {target}.{name}" for line, target, name in imports(module)
             if name is not None and name.startswith("_") and not name.startswith("__")
             and target != module]
    aliases = module_aliases(module)
    tree = ast.parse(MODULES[module].read_text())
    reach += [f"line {node.lineno}: {aliases[node.value.id]}.{node.attr}"
              for node in ast.walk(tree)
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in aliases and node.attr.startswith("_")
              and not node.attr.startswith("__")]
    assert not reach, f"{module} uses another module's private names: {reach}"


def test_the_subpackages_import_nothing() -> None:
    # `import cgoom` stays lazy: a subpackage's __init__ holds a docstring only.
    for module, path in MODULES.items():
        if path.name == "__init__.py" and layer(module) < TOP:
            body = ast.parse(path.read_text()).body
            assert all(isinstance(n, ast.Expr) for n in body), module


def test_the_checks_catch_what_they_are_for(tmp_path: pathlib.Path) -> None:
    # The two rules applied to made-up modules, so a check that can never fail is seen.
    module = "cgoom._kernel._x"
    MODULES[module] = tmp_path / "_x.py"
    try:
        MODULES[module].write_text("from .._engine import _handler\n"
                                   "from .._decide._policy import _private\n")
        with pytest.raises(AssertionError, match=r"imports a higher layer.*_engine\._handler"):
            test_no_import_goes_up(module)
        with pytest.raises(AssertionError, match=r"private names.*_policy\._private"):
            test_no_private_name_of_another_module(module)
        MODULES[module].write_text("from . import _parse\nX = _parse._quote\n")
        with pytest.raises(AssertionError, match=r"_kernel\._parse\._quote"):
            test_no_private_name_of_another_module(module)
    finally:
        del MODULES[module]
