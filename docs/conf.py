"""Sphinx configuration for cgoom's documentation site.

Built by ``tests/test_docs_site.py`` (in ``scripts/test``, so in CI) with warnings as errors;
by hand: ``python -m sphinx -W --keep-going -b html docs build/docs``.

Why Sphinx (with myst-parser) and not mkdocs: cgoom's docstrings are reStructuredText
(``:class:`~cgoom.Rule```, ``literal``), which autodoc reads as they are, with the
signatures and attrs fields from the code; myst-parser keeps the pages Markdown, as they were
written and as GitHub shows them, and their ``python`` blocks go on running in the tests.
"""

from __future__ import annotations

import os
import sys

# The package from this checkout, whether or not it is installed.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

project = "cgoom"
author = "the cgoom developers"
copyright = "the cgoom developers (MIT licence)"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["examples/**/README.md"]
myst_heading_anchors = 3
# Links to files that are not pages (the example unit, the example configuration) are
# published beside the pages.
myst_url_schemes = ["http", "https", "mailto"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "alabaster"
html_title = "cgoom"
html_static_path: list[str] = []


# --- the public constants and type aliases ----------------------------------------------
# ``cgoom`` re-exports them by import, so their ``#:`` comments sit in the private module
# that defines them, where autodoc does not look: find them there.

def _defining_docs() -> dict[str, list[str]]:
    import importlib
    import pkgutil

    from sphinx.pycode import ModuleAnalyzer

    import cgoom

    docs: dict[str, list[str]] = {}
    for info in pkgutil.walk_packages(cgoom.__path__, "cgoom."):
        if info.name.endswith(".vm"):
            continue
        importlib.import_module(info.name)
        for (scope, name), lines in ModuleAnalyzer.for_module(info.name).find_attr_docs().items():
            if not scope and name in cgoom.__all__:
                docs.setdefault(name, list(lines))
    return docs


_DOCS: dict[str, list[str]] = {}


def _fill(app: object, what: str, name: str, obj: object, options: object,
          lines: list[str]) -> None:
    module, _, short = name.rpartition(".")
    if module != "cgoom" or what not in ("data", "attribute"):
        return
    if not _DOCS:
        _DOCS.update(_defining_docs())
    # autodoc's fallback for a value is its type's docstring (str's, int's): never wanted
    lines[:] = _DOCS.get(short, [])


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("autodoc-process-docstring", _fill)
