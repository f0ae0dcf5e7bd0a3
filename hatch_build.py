"""Build hook: the man page and the shell completions of ``cgoom``, rendered from its
argument parser when the wheel is built, so that they cannot drift from the code.

They go to the wheel's data (``share/``), which an installer puts under the environment's
prefix: ``<venv>/share/man/man1/cgoom.1`` (man-db finds it beside ``<venv>/bin`` on the
PATH), ``<venv>/share/bash-completion/completions/cgoom`` and
``<venv>/share/zsh/site-functions/_cgoom``.

The hook imports ``cgoom.cli`` from the tree being built; the parser needs attrs, hence
attrs in ``[build-system] requires``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CliDocsHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        if "shared_data" not in build_data:
            raise RuntimeError("hatch_build.py needs hatchling with build data 'shared_data' "
                               "(1.27 or newer)")
        sys.path.insert(0, self.root)
        try:
            from cgoom._ops._clidoc import render_completion
            from cgoom.cli import build_parser, man_page
        finally:
            sys.path.remove(self.root)
        out = self._out = tempfile.mkdtemp(prefix="cgoom-cli-docs-")
        files = {
            "cgoom.1": ("share/man/man1/cgoom.1", man_page(self.metadata.version)),
            "cgoom.bash": ("share/bash-completion/completions/cgoom",
                           render_completion(build_parser(), "bash")),
            "_cgoom": ("share/zsh/site-functions/_cgoom",
                       render_completion(build_parser(), "zsh")),
        }
        for name, (destination, text) in files.items():
            path = os.path.join(out, name)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            build_data["shared_data"][path] = destination

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        out = getattr(self, "_out", None)
        if out is not None:
            shutil.rmtree(out, ignore_errors=True)
