from __future__ import annotations

from pathlib import Path

import pytest

from cgoom.testing import FakeCgroupTree


@pytest.fixture
def tree(tmp_path: Path) -> FakeCgroupTree:
    """A fake cgroup v2 host (Linux 6.1 formats) with cpu, io, memory and pids."""
    return FakeCgroupTree(tmp_path)
