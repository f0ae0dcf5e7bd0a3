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


def test_a_reader_never_sees_a_write_half_done(tree: FakeCgroupTree) -> None:
    """kernfs shows a file's old text or its new one, never the empty file between a
    truncate and a write (a unit test read memory.max as '' from another thread, and failed
    CI on a fresh clone). A thread reads while the test writes; every read parses."""
    import threading

    lab = tree.add("lab", memory_max=1 << 30)
    inode = os.stat(os.path.join(lab.dir, "memory.max")).st_ino
    seen: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(tree.fs.read(os.path.join(lab.dir, "memory.max")))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(300):
            lab.set_memory_max("max" if i % 2 else (1 << 30) + i * 4096)
            tree.set(lab.path, "memory.current", f"{i}\n")
    finally:
        stop.set()
        reader.join()
    assert len(seen) > 10
    assert all(text == "max\n" or text.strip().isdigit() for text in seen), \
        sorted(set(seen) - {"max\n"})[:3]
    # Written in place: a watch on the file stays valid.
    assert os.stat(os.path.join(lab.dir, "memory.max")).st_ino == inode
