"""The fake cgroupfs itself: it must behave like the kernel where tests rely on it."""

from __future__ import annotations

import errno
import os

import pytest

from cgoom.testing import FakeCgroupTree


def test_memory_event_propagates_like_the_kernel(tree: FakeCgroupTree) -> None:
    """Hierarchical counters rise in every non-root ancestor; local ones only at the origin."""
    tree.add("a/b/c")
    tree.memory_event("a/b/c", "oom_kill", 2)
    for path in ("a", "a/b", "a/b/c"):
        assert tree.cgroup(path).memory_events().oom_kill == 2
    assert tree.cgroup("a/b/c").memory_events(local=True).oom_kill == 2
    assert tree.cgroup("a/b").memory_events(local=True).oom_kill == 0
    with pytest.raises(ValueError, match="not a memory event"):
        tree.memory_event("a", "bogus")


def test_mkdir_populates_by_parent_subtree_control(tree: FakeCgroupTree) -> None:
    lab = tree.add("lab")
    plain = lab.create_child("plain")  # lab enables nothing yet
    assert "memory.max" not in plain.interface_files()
    assert "cgroup.events" in plain.interface_files()
    assert plain.cgroup_controllers() == frozenset()


def test_unknown_controller_is_einval(tree: FakeCgroupTree) -> None:
    path = os.path.join(tree.add("lab").dir, "cgroup.subtree_control")
    with pytest.raises(OSError, match="Invalid argument") as info:
        tree.fs.write(path, "+bogus")
    assert info.value.errno == errno.EINVAL


def test_disable_with_grandchildren_using_it_is_busy(tree: FakeCgroupTree) -> None:
    tree.add("lab/mid/leaf")  # lab and mid both enable the root's controllers
    path = os.path.join(tree.cgroup("lab").dir, "cgroup.subtree_control")
    with pytest.raises(OSError, match="busy") as info:
        tree.fs.write(path, "-memory")
    assert info.value.errno == errno.EBUSY


def test_paths_outside_the_mount_are_plain_files(tree: FakeCgroupTree) -> None:
    outside = os.path.join(tree.base, "plain")
    tree.fs.mkdir(outside)
    with open(os.path.join(outside, "f"), "w"):
        pass  # OsFS.write never creates files: interface files always exist
    tree.fs.write(os.path.join(outside, "f"), "x")
    assert tree.fs.read(os.path.join(outside, "f")) == "x"
    os.unlink(os.path.join(outside, "f"))
    tree.fs.rmdir(outside)
