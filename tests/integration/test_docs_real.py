"""The docs' examples marked <!-- real-kernel --> (they need kernel PSI files), run against
the real kernel with the cgroups they name, under memory pressure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom.testing import kill_and_remove

from ..test_docs import PAGES, blocks
from .conftest import hog, throttled


def test_real_kernel_examples(parent: cgoom.Cgroup, spawn: Callable[[cgoom.Cgroup, str], Any],
                              capsys: pytest.CaptureFixture[str]) -> None:
    if not parent.is_root:
        pytest.skip("the examples name workload.slice at the root of the mount")
    code = [(page, block) for page in PAGES for block in blocks(page, real_kernel=True)]
    assert code, "no <!-- real-kernel --> examples found in docs/"
    slice_ = parent.create_child("workload.slice")
    try:
        slice_.enable_controllers("memory", "pids")
        batch = throttled(slice_, "batch-1")
        spawn(batch, hog(64))
        for page, block in code:
            exec(compile(block, page.name, "exec"), {})
    finally:
        kill_and_remove(slice_)
    out = capsys.readouterr().out
    assert "/workload.slice/batch-1 memory pressure sustained: some > 10% for 2s" in out
