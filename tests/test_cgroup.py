"""Cgroup on the fake cgroupfs: every interface file read and written in the kernel's format,
and every error path named with file, value and errno."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

import cgoom
from cgoom.testing import FakeCgroupTree


def raw(cg: cgoom.Cgroup, name: str) -> str:
    with open(os.path.join(cg.dir, name)) as f:
        return f.read()


class TestHandle:
    def test_identity_and_navigation(self, tree: FakeCgroupTree) -> None:
        cg = tree.cgroup("lab/batch/")
        assert cg.path == "/lab/batch" and cg.name == "batch" and not cg.is_root
        assert cg.dir == os.path.join(tree.mount, "lab", "batch")
        assert cg.parent == tree.cgroup("lab")
        assert tree.hierarchy.root.parent is None and tree.hierarchy.root.name == ""
        assert cg.child("x") == tree.cgroup("/lab/batch/x")
        assert repr(cg) == f"<Cgroup /lab/batch at {tree.mount}>"
        assert cg == cgoom.Cgroup(tree.mount, "lab/batch")  # fs is not part of identity

    @pytest.mark.parametrize("path", ["../etc", "a/../../b"])
    def test_path_cannot_escape_the_mount(self, tree: FakeCgroupTree, path: str) -> None:
        with pytest.raises(cgoom.InvalidValue, match=r"must not contain '\.\.'"):
            tree.cgroup(path)

    @pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\nb"])
    def test_bad_child_names(self, tree: FakeCgroupTree, name: str) -> None:
        with pytest.raises(cgoom.InvalidValue, match="is not a cgroup name"):
            tree.hierarchy.root.create_child(name)


class TestReads:
    def test_every_read_on_a_fresh_cgroup(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab")
        assert cg.memory_current() == 0 and cg.memory_peak() == 0
        assert cg.memory_swap_current() == 0 and cg.memory_zswap_current() == 0
        assert (cg.memory_min(), cg.memory_low()) == (0, 0)
        assert (cg.memory_high(), cg.memory_max()) == ("max", "max")
        assert (cg.memory_swap_high(), cg.memory_swap_max(), cg.memory_zswap_max()) == ("max",) * 3
        assert cg.memory_oom_group() is False
        assert cg.memory_stat()["anon"] == 0 and cg.memory_stat().kernel == 0
        assert cg.memory_events() == cgoom.MemoryEvents(0, 0, 0, 0, 0, oom_group_kill=0)
        assert cg.memory_events(local=True).oom_kill == 0
        assert cg.memory_swap_events() == cgoom.SwapEvents(max=0, fail=0, high=0)
        assert cg.memory_pressure().some.avg10 == 0.0
        assert cg.cgroup_events() == cgoom.CgroupEvents(populated=False, frozen=False)
        assert cg.cgroup_procs() == ()
        assert cg.cgroup_controllers() == {"cpu", "io", "memory", "pids"}
        assert cg.cgroup_subtree_control() == frozenset()
        assert cg.cgroup_type() == "domain"
        assert cg.cgroup_freeze() is False

    def test_counters_as_the_kernel_writes_them(self, tree: FakeCgroupTree) -> None:
        tree.add("lab")
        tree.set_memory_events("lab", high=37, max=2, oom=1, oom_kill=1)
        tree.set("lab", "memory.pressure",
                 "some avg10=12.50 avg60=3.00 avg300=0.50 total=987654\n"
                 "full avg10=1.00 avg60=0.00 avg300=0.00 total=1234\n")
        cg = tree.cgroup("lab")
        ev = cg.memory_events()
        assert (ev.high, ev.max, ev.oom, ev.oom_kill) == (37, 2, 1, 1)
        pressure = cg.memory_pressure()
        assert pressure.some.total_us == 987654 and pressure.full is not None
        assert pressure.full.avg10 == 1.0

    def test_read_file_and_interface_files(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab")
        assert cg.read_file("cgroup.max.depth") == "max\n"
        assert {"memory.max", "cgroup.kill", "memory.reclaim"} <= cg.interface_files()


class TestWrites:
    def test_limits_are_written_as_decimal_bytes(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab")
        cg.set_memory_min("1M")
        cg.set_memory_low(8192)
        cg.set_memory_high("900M")
        cg.set_memory_max("1G")
        cg.set_memory_swap_high("64M")
        cg.set_memory_swap_max(0)
        cg.set_memory_zswap_max("max")
        assert raw(cg, "memory.max") == f"{1 << 30}\n"
        assert (cg.memory_min(), cg.memory_low(), cg.memory_high(), cg.memory_max()) == (
            1 << 20, 8192, 900 << 20, 1 << 30)
        assert (cg.memory_swap_high(), cg.memory_swap_max(), cg.memory_zswap_max()) == (
            64 << 20, 0, "max")

    def test_unaligned_limit_rounds_down_to_pages(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab")
        cg.set_memory_max(1_000_000)  # measured on 6.1: reads back 999424
        assert cg.memory_max() == 999_424

    def test_bad_limit_names_file_and_value_and_writes_nothing(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab", memory_max="1G")
        with pytest.raises(cgoom.InvalidValue) as info:
            cg.set_memory_max("1 GB")
        assert info.value.path == os.path.join(cg.dir, "memory.max")
        assert info.value.value == "1 GB" and "'1 GB'" in str(info.value)
        assert cg.memory_max() == 1 << 30

    def test_oom_group(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab")
        cg.set_memory_oom_group(True)
        assert raw(cg, "memory.oom.group") == "1\n" and cg.memory_oom_group()

    def test_kernel_refusal_carries_errno(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab")
        with pytest.raises(cgoom.InvalidValue) as info:
            cg.write_file("cgroup.kill", "0")
        assert info.value.errno == errno.ERANGE
        assert str(info.value) == (f"cannot write '0' to {cg.dir}/cgroup.kill: the kernel "
                                   "refused the value (ERANGE)")

    def test_read_only_file(self, tree: FakeCgroupTree) -> None:
        with pytest.raises(cgoom.InvalidValue, match="EINVAL"):
            tree.add("lab").write_file("memory.current", "5")

    async def test_async_writes(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab")
        await cg.aset_memory_high("1G")
        await cg.aset_memory_max("2G")
        assert (cg.memory_high(), cg.memory_max()) == (1 << 30, 2 << 30)


class TestActions:
    def test_kill_empties_the_subtree(self, tree: FakeCgroupTree) -> None:
        tree.add("lab/a", procs=[10, 11])
        tree.add("lab/b", procs=[12])
        lab = tree.cgroup("lab")
        assert lab.cgroup_events().populated
        lab.kill()
        assert tree.cgroup("lab/a").cgroup_procs() == () and not lab.cgroup_events().populated

    async def test_akill(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab", procs=[10])
        await cg.akill()
        assert not cg.cgroup_events().populated

    def test_kill_refuses_the_root(self, tree: FakeCgroupTree) -> None:
        with pytest.raises(cgoom.InvalidValue, match="refusing to kill the root cgroup"):
            tree.hierarchy.root.kill()

    def test_freeze_thaw(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab", procs=[10])
        cg.freeze()
        assert cg.cgroup_freeze() and cg.cgroup_events().frozen
        cg.thaw()
        assert not cg.cgroup_freeze() and cg.cgroup_events().frozen is False

    def test_reclaim(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab", memory_current=64 << 20)
        assert cg.reclaim("16M") is True
        assert cg.memory_current() == 48 << 20
        assert cg.reclaim("1G") is False  # EAGAIN: less was reclaimable
        assert raw(cg, "memory.current") == "0\n"
        with pytest.raises(cgoom.InvalidValue):  # swappiness= is 6.10's; this fake is 6.1
            cg.reclaim(4096, swappiness=0)

    def test_reclaim_with_swappiness(self, tmp_path: Path) -> None:
        tree = FakeCgroupTree(tmp_path, kernel=(6, 12))
        cg = tree.add("lab", memory_current=64 << 20)
        assert cg.reclaim("16M", swappiness=0) is True
        assert cg.memory_current() == 48 << 20

    @pytest.mark.parametrize("swappiness", [-1, 201, True])
    def test_reclaim_bad_swappiness(self, tree: FakeCgroupTree, swappiness: int) -> None:
        with pytest.raises(cgoom.InvalidValue, match="swappiness must be an integer from 0 to 200"):
            tree.add("lab").reclaim("1M", swappiness=swappiness)

    async def test_areclaim(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab", memory_current=8192)
        assert await cg.areclaim(4096) is True

    def test_attach_moves_between_cgroups(self, tree: FakeCgroupTree) -> None:
        a = tree.add("lab/a", procs=[10])
        b = tree.add("lab/b")
        b.attach(10)
        assert a.cgroup_procs() == () and b.cgroup_procs() == (10,)
        assert not a.cgroup_events().populated and b.cgroup_events().populated

    @pytest.mark.parametrize("pid", [0, -3, True, "12"])
    def test_attach_bad_pid(self, tree: FakeCgroupTree, pid: object) -> None:
        with pytest.raises(cgoom.InvalidValue, match="is not a process id"):
            tree.add("lab").attach(pid)  # type: ignore[arg-type]

    def test_no_internal_process_rule_is_explained(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab", procs=[10])
        with pytest.raises(cgoom.CgroupBusy, match="no-internal-process rule") as info:
            cg.enable_controllers("memory")
        assert info.value.errno == errno.EBUSY
        parent = tree.add("svc", enable=["memory"])
        with pytest.raises(cgoom.CgroupBusy, match="move the process into a leaf child"):
            parent.attach(10)

    def test_enable_and_disable_controllers(self, tree: FakeCgroupTree) -> None:
        lab = tree.add("lab")
        child = lab.create_child("c")
        assert not child.exists() or "memory.max" not in child.interface_files()
        lab.enable_controllers("memory", "pids")
        assert lab.cgroup_subtree_control() == {"memory", "pids"}
        assert child.memory_max() == "max"
        lab.disable_controllers("memory")
        with pytest.raises(cgoom.ControllerNotEnabled, match=r"write '\+memory' to .*/lab/cgroup"):
            child.memory_max()

    def test_unavailable_controller(self, tree: FakeCgroupTree) -> None:
        with pytest.raises(cgoom.ControllerNotEnabled, match="lists cpu io memory pids") as info:
            tree.add("lab").enable_controllers("hugetlb")
        assert info.value.errno == errno.ENOENT

    def test_create_and_remove(self, tree: FakeCgroupTree) -> None:
        lab = tree.add("lab")
        child = lab.create_child("c")
        assert child.exists() and lab.children() == [child]
        with pytest.raises(cgoom.CgoomError, match="already exists"):
            lab.create_child("c")
        assert lab.create_child("c", exist_ok=True) == child
        child.remove()
        assert not child.exists()
        child.remove(missing_ok=True)
        with pytest.raises(cgoom.CgroupGone):
            child.remove()

    def test_remove_busy(self, tree: FakeCgroupTree) -> None:
        tree.add("lab/c", procs=[5])
        with pytest.raises(cgoom.CgroupBusy, match="still has processes or child cgroups"):
            tree.cgroup("lab/c").remove()
        with pytest.raises(cgoom.CgroupBusy):
            tree.cgroup("lab").remove()

    def test_remove_tree(self, tree: FakeCgroupTree) -> None:
        tree.add("lab/a/x")
        tree.add("lab/b")
        cgoom.remove_tree(tree.cgroup("lab"))
        assert not tree.cgroup("lab").exists()
        with pytest.raises(cgoom.CgroupGone):
            cgoom.remove_tree(tree.cgroup("lab"), missing_ok=False)
        cgoom.remove_tree(tree.cgroup("lab"))

    def test_root_cannot_be_removed(self, tree: FakeCgroupTree) -> None:
        with pytest.raises(cgoom.InvalidValue, match="refusing to remove the root"):
            tree.hierarchy.root.remove()


class TestGone:
    def test_vanished_cgroup_reads_as_gone(self, tree: FakeCgroupTree) -> None:
        cg = tree.add("lab/batch")
        tree.remove_behind_our_back("lab/batch")
        for read in (cg.memory_current, cg.memory_events, cg.cgroup_events, cg.children):
            with pytest.raises(cgoom.CgroupGone, match="no longer exists") as info:
                read()
            assert info.value.errno == errno.ENOENT
        with pytest.raises(cgoom.CgroupGone):
            cg.set_memory_max("1G")
        with pytest.raises(cgoom.CgroupGone):
            cg.kill()

    def test_walk_skips_what_vanishes(self, tree: FakeCgroupTree) -> None:
        tree.add("lab/a/x")
        tree.add("lab/b")
        seen = []
        for cg in tree.cgroup("lab").walk():
            seen.append(cg.path)
            if cg.path == "/lab":
                tree.remove_behind_our_back("lab/a")
        assert seen == ["/lab", "/lab/b"]
        assert list(tree.cgroup("nothing").walk()) == []


class TestOlderKernel:
    def test_5_15_lacks_peak_and_reclaim(self, tmp_path: object) -> None:
        tree = FakeCgroupTree(str(tmp_path), kernel=(5, 15))
        cg = tree.add("lab")
        with pytest.raises(cgoom.NotSupported, match=r"added in Linux 5\.19"):
            cg.memory_peak()
        with pytest.raises(cgoom.NotSupported, match=r"memory\.reclaim.*added in Linux 5\.19"):
            cg.reclaim("1M")
        assert cg.memory_events().oom_group_kill is None

    def test_root_lacks_memory_current(self, tree: FakeCgroupTree) -> None:
        with pytest.raises(cgoom.NotSupported, match=r"not provide memory\.current on the root"):
            tree.hierarchy.root.memory_current()

    def test_host_without_memory_controller(self, tmp_path: object) -> None:
        tree = FakeCgroupTree(str(tmp_path), controllers=("cpu", "pids"))
        cg = tree.add("lab")
        with pytest.raises(cgoom.MemoryControllerUnavailable, match="no memory controller"):
            cg.memory_current()
