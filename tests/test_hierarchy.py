"""Hierarchy on a fake host: discovery from mountinfo, walking, globbing, the feature probe,
and the diagnosis on a host whose memory controller is bound to cgroup v1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cgoom
from cgoom.testing import FakeCgroupTree


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class TestDiscover:
    def test_finds_the_mount_and_options(self, tree: FakeCgroupTree) -> None:
        h = tree.hierarchy
        assert h.mount == tree.mount
        assert {"nsdelegate", "memory_recursiveprot"} <= h.options
        assert repr(h).startswith(f"<Hierarchy cgroup2 at {tree.mount} (")

    def test_prefers_sys_fs_cgroup(self, tmp_path: Path) -> None:
        write(tmp_path / "self" / "mountinfo",
              "30 1 0:1 / /a/very/long/path rw - cgroup2 cgroup2 rw\n"
              "31 1 0:2 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
              "32 1 0:3 / /x rw - cgroup2 cgroup2 rw\n")
        h = cgoom.Hierarchy.discover(proc_root=str(tmp_path))
        assert h.mount == "/sys/fs/cgroup" and "nsdelegate" in h.options

    def test_no_cgroup2_mount(self, tmp_path: Path) -> None:
        write(tmp_path / "self" / "mountinfo", "22 1 0:21 / / rw - ext4 /dev/vda rw\n")
        with pytest.raises(cgoom.MemoryControllerUnavailable, match="no cgroup2 filesystem"):
            cgoom.Hierarchy.discover(proc_root=str(tmp_path))

    def test_unreadable_mountinfo(self, tmp_path: Path) -> None:
        with pytest.raises(cgoom.MemoryControllerUnavailable, match="cannot read"):
            cgoom.Hierarchy.discover(proc_root=str(tmp_path / "nowhere"))

    def test_cgroup_accepts_relative_and_absolute(self, tree: FakeCgroupTree) -> None:
        h = tree.hierarchy
        absolute = os.path.join(tree.mount, "lab/a")
        assert h.cgroup("lab/a") == h.cgroup("/lab/a") == h.cgroup(absolute)
        assert h.cgroup(tree.mount).is_root

    def test_own_cgroup(self, tree: FakeCgroupTree) -> None:
        assert tree.hierarchy.own_cgroup().is_root
        tree._write(os.path.join(tree.base, "proc", "self", "cgroup"), "0::/lab/batch\n")
        assert tree.hierarchy.own_cgroup().path == "/lab/batch"
        with pytest.raises(cgoom.CgroupGone, match="cannot read"):
            tree.hierarchy.own_cgroup(999999)


class TestWalkAndGlob:
    @pytest.fixture
    def populated(self, tree: FakeCgroupTree) -> FakeCgroupTree:
        for path in ("workload.slice/web", "workload.slice/batch-1", "workload.slice/batch-2",
                     "workload.slice/batch-2/inner", "system.slice/sshd"):
            tree.add(path)
        return tree

    def test_walk_is_preorder_sorted(self, populated: FakeCgroupTree) -> None:
        assert [c.path for c in populated.hierarchy.walk("workload.slice")] == [
            "/workload.slice", "/workload.slice/batch-1", "/workload.slice/batch-2",
            "/workload.slice/batch-2/inner", "/workload.slice/web"]

    @pytest.mark.parametrize(("pattern", "expected"), [
        ("workload.slice/*", ["/workload.slice/batch-1", "/workload.slice/batch-2",
                              "/workload.slice/web"]),
        ("*/batch-?", ["/workload.slice/batch-1", "/workload.slice/batch-2"]),
        ("**/inner", ["/workload.slice/batch-2/inner"]),
        ("**/s*", ["/system.slice", "/system.slice/sshd"]),
        ("nothing/*", []),
    ])
    def test_glob(self, populated: FakeCgroupTree, pattern: str, expected: list[str]) -> None:
        assert [c.path for c in populated.hierarchy.glob(pattern)] == expected


class TestFeatures:
    def test_probe(self, tree: FakeCgroupTree) -> None:
        tree.add("lab")
        f = tree.hierarchy.features()
        assert f.memory and f.psi and not f.local_events
        assert f.controllers == {"cpu", "io", "memory", "pids"}
        assert f.kernel_features is not None and "memory_localevents" in f.kernel_features
        assert f.delegatable is not None and "memory.oom.group" in f.delegatable
        assert f.probed == "/lab" and f.has("memory.peak") and f.has("cgroup.kill")
        assert tree.hierarchy.features() is f  # probed once

    def test_probe_without_children_sees_the_root(self, tree: FakeCgroupTree) -> None:
        f = tree.hierarchy.features()
        assert f.probed == "/" and not f.has("memory.current") and f.has("memory.stat")

    def test_old_kernel_without_feature_files(self, tree: FakeCgroupTree) -> None:
        os.unlink(os.path.join(tree.base, "sys", "kernel", "cgroup", "features"))
        f = tree.hierarchy.features()
        assert f.kernel_features is None

    def test_local_events_option(self, tmp_path: Path) -> None:
        tree = FakeCgroupTree(tmp_path, mount_options=("rw", "memory_localevents"))
        assert tree.hierarchy.features().local_events

    def test_require_memory_passes(self, tree: FakeCgroupTree) -> None:
        tree.hierarchy.require_memory()

    def test_require_memory_explains_v1_binding(self, tmp_path: Path) -> None:
        """Like these development hosts: cgroup2 mounted, memory bound to cgroup v1."""
        tree = FakeCgroupTree(tmp_path, controllers=("hugetlb",))
        mountinfo = os.path.join(tree.base, "proc", "self", "mountinfo")
        with open(mountinfo, "a") as f:
            f.write("35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n")
        with pytest.raises(cgoom.MemoryControllerUnavailable) as info:
            tree.hierarchy.require_memory()
        message = str(info.value)
        assert "has no memory controller (it is bound to cgroup v1, mounted at " \
               "/sys/fs/cgroup/memory)" in message
        assert "lists hugetlb" in message
        assert "cgroup_no_v1=all" in message and "cgoom-vm" not in message
