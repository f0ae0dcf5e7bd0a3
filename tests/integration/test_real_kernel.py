"""The foundation against a real cgroup v2 kernel: every interface file in its real format,
limits that take effect, kills, freezing, reclaim, moves, and the errors the kernel gives.

Each test works in its own sandbox cgroup (the ``box`` fixture), removed afterwards."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom.cli import main as cli_main
from cgoom.testing import wait_until

from .conftest import KERNEL_VERSION, hog, throttled

Spawn = Callable[[cgoom.Cgroup, str], Any]


def _proc_cgroup(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        return next(line[3:].strip() for line in f if line.startswith("0::"))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


class TestHierarchy:
    def test_discover_finds_the_mount_with_memory(
        self, parent: cgoom.Cgroup, box: cgoom.Cgroup
    ) -> None:
        """discover() finds the cgroup2 mount; the probe sees the memory controller, the
        kernel's feature lists, and (a memory-enabled child existing) the non-root files."""
        h = cgoom.Hierarchy.discover()
        assert h.mount == parent.mount
        f = h.features()
        assert f.memory
        assert f.kernel_features is not None and "memory_localevents" in f.kernel_features
        assert f.delegatable is not None and "cgroup.procs" in f.delegatable
        assert f.probed != "/"
        assert f.has("memory.peak") and f.has("memory.reclaim")  # 6.1 has both
        assert {"memory.current", "memory.events", "memory.high", "memory.max"} <= f.interface_files
        assert f.psi
        h.require_memory()

    def test_walk_and_glob(self, box: cgoom.Cgroup) -> None:
        """walk() and glob() see cgroups made on the real kernel."""
        a = box.create_child("a")
        a.enable_controllers("memory")
        a.create_child("x1")
        a.create_child("x2")
        box.create_child("b")
        h = cgoom.Hierarchy.discover()
        paths = [c.path for c in h.walk(box.path)]
        assert paths == [box.path, f"{box.path}/a", f"{box.path}/a/x1", f"{box.path}/a/x2",
                         f"{box.path}/b"]
        assert [c.path for c in h.glob(f"{box.path}/*/x?")] == [f"{box.path}/a/x1",
                                                                f"{box.path}/a/x2"]


class TestInterfaceFiles:
    def test_every_read_parses_the_real_format(self, box: cgoom.Cgroup) -> None:
        """Every read method parses what the real kernel prints, with kernel defaults."""
        c = box.create_child("fresh")
        assert c.memory_current() >= 0
        assert c.memory_peak() >= 0
        assert c.memory_swap_current() == 0
        assert c.memory_zswap_current() == 0
        assert (c.memory_min(), c.memory_low()) == (0, 0)
        assert (c.memory_high(), c.memory_max()) == ("max", "max")
        assert (c.memory_swap_high(), c.memory_swap_max(), c.memory_zswap_max()) == ("max",) * 3
        assert c.memory_oom_group() is False
        stat = c.memory_stat()
        assert {"anon", "file", "kernel", "shmem", "pgfault"} <= set(stat)
        assert stat.anon is not None
        # oom_group_kill since 5.17; sock_throttled since 6.19; nothing unknown on any kernel
        zero = cgoom.MemoryEvents(low=0, high=0, max=0, oom=0, oom_kill=0, oom_group_kill=0,
                                  sock_throttled=0 if KERNEL_VERSION >= (6, 19) else None)
        assert c.memory_events() == zero
        assert c.memory_events(local=True) == zero
        assert c.memory_swap_events() == cgoom.SwapEvents(max=0, fail=0, high=0)
        pressure = c.memory_pressure()
        assert pressure.full is not None and pressure.some.total_us >= 0
        assert c.cgroup_events() == cgoom.CgroupEvents(populated=False, frozen=False)
        assert c.cgroup_procs() == ()
        assert {"memory", "pids"} <= c.cgroup_controllers()
        assert c.cgroup_subtree_control() == frozenset()
        assert c.cgroup_type() == "domain"
        assert c.cgroup_freeze() is False
        assert {"cgroup.kill", "memory.reclaim", "memory.peak"} <= c.interface_files()

    def test_limits_write_and_read_back(self, box: cgoom.Cgroup) -> None:
        """Limits accept ints, size strings and 'max'; the kernel keeps whole pages."""
        c = box.create_child("limits")
        c.set_memory_min("1M")
        c.set_memory_low(2 * 1024 * 1024)
        c.set_memory_high("64m")
        c.set_memory_max("1G")
        c.set_memory_swap_high("32M")
        c.set_memory_swap_max(0)
        c.set_memory_zswap_max("16M")
        assert c.memory_min() == 1 << 20
        assert c.memory_low() == 2 << 20
        assert c.memory_high() == 64 << 20
        assert c.memory_max() == 1 << 30
        assert c.memory_swap_high() == 32 << 20
        assert c.memory_swap_max() == 0
        assert c.memory_zswap_max() == 16 << 20
        c.set_memory_max(1_000_000)  # not page-aligned: rounded *down* to 244 pages
        assert c.memory_max() == 999_424
        c.set_memory_max("max")
        assert c.memory_max() == "max"
        c.set_memory_oom_group(True)
        assert c.memory_oom_group() is True
        c.set_memory_oom_group(False)
        assert c.memory_oom_group() is False

    async def test_async_limit_writes(self, box: cgoom.Cgroup) -> None:
        """The executor-backed writes land like the blocking ones."""
        c = box.create_child("alimits")
        await c.aset_memory_high("48M")
        await c.aset_memory_max("96M")
        assert (c.memory_high(), c.memory_max()) == (48 << 20, 96 << 20)

    @pytest.mark.parametrize(
        ("name", "value", "code"),
        [
            ("memory.max", "12X", errno.EINVAL),
            ("memory.oom.group", "2", errno.EINVAL),
            ("cgroup.kill", "0", errno.ERANGE),
            ("cgroup.freeze", "2", errno.ERANGE),
            ("memory.current", "5", errno.EINVAL),
        ],
    )
    def test_kernel_refusals_become_invalid_value(
        self, box: cgoom.Cgroup, name: str, value: str, code: int
    ) -> None:
        """Raw values the kernel refuses give InvalidValue naming file, value and errno."""
        c = box.create_child("refuse")
        with pytest.raises(cgoom.InvalidValue) as info:
            c.write_file(name, value)
        assert info.value.errno == code
        assert info.value.path == f"{c.dir}/{name}"
        assert repr(value) in str(info.value)
        assert errno.errorcode[code] in str(info.value)


class TestLimitsTakeEffect:
    def test_memory_max_oom_kills(self, box: cgoom.Cgroup, spawn: Spawn) -> None:
        """A process over memory.max is OOM-killed; memory.events counts it here and above."""
        c = box.create_child("oom")
        c.set_memory_max("32M")
        c.set_memory_swap_max(0)
        p = spawn(c, hog(128))
        assert p.wait(120) != 0
        events = c.memory_events()
        assert events.oom >= 1
        assert events.oom_kill >= 1
        assert events.oom_group_kill == 0
        assert c.memory_events(local=True).oom_kill >= 1
        assert box.memory_events().oom_kill >= 1  # hierarchical: the parent sees it too
        assert box.memory_events(local=True).oom_kill == 0
        assert c.memory_peak() <= 32 << 20

    def test_oom_group_kills_the_whole_group(self, box: cgoom.Cgroup, spawn: Spawn) -> None:
        """With memory.oom.group=1 the kernel kills every process of the cgroup."""
        c = box.create_child("group")
        c.set_memory_max("32M")
        c.set_memory_swap_max(0)
        c.set_memory_oom_group(True)
        bystander = spawn(c, "exec sleep 1000")
        wait_until(lambda: bystander.pid in c.cgroup_procs(), 10, "the bystander to join")
        spawn(c, hog(128))
        wait_until(lambda: not c.cgroup_events().populated, 120, "the group to be killed")
        assert bystander.wait(10) == -9
        events = c.memory_events()
        assert events.oom_group_kill == 1
        assert events.oom_kill >= 2

    def test_memory_high_throttles_without_killing(self, box: cgoom.Cgroup, spawn: Spawn) -> None:
        """Over memory.high the kernel throttles and counts `high`, and never kills."""
        c = throttled(box, "high")
        p = spawn(c, hog(64))
        wait_until(lambda: c.memory_events().high > 0, 60, "the high counter to move")
        wait_until(lambda: c.memory_pressure().some.total_us > 0, 60, "memory stall time")
        time.sleep(1)
        events = c.memory_events()
        assert events.oom == 0 and events.oom_kill == 0
        assert p.proc.poll() is None  # still alive, only slowed down
        assert c.memory_current() < 64 << 20


class TestActions:
    def test_kill_empties_a_forking_subtree(self, box: cgoom.Cgroup, spawn: Spawn) -> None:
        """cgroup.kill takes down every process of the subtree, forking ones included."""
        k = box.create_child("k")
        k.enable_controllers("memory", "pids")
        x, y = k.create_child("x"), k.create_child("y")
        spawn(x, "while :; do sleep 30 & sleep 0.05; done")
        spawn(y, "sleep 1000 & sleep 1000 & wait")
        wait_until(lambda: len(x.cgroup_procs()) > 3, 30, "the forker to fork")
        wait_until(lambda: len(y.cgroup_procs()) == 3, 30, "y's sleepers")
        victims = x.cgroup_procs() + y.cgroup_procs()
        k.kill()
        wait_until(lambda: not k.cgroup_events().populated, 30, "populated 0")
        assert x.cgroup_procs() == () and y.cgroup_procs() == ()
        assert not any(_alive(pid) for pid in victims)

    async def test_akill(self, box: cgoom.Cgroup, spawn: Spawn) -> None:
        """akill() kills through the executor."""
        c = box.create_child("ak")
        spawn(c, "sleep 1000 & sleep 1000 & wait")
        wait_until(lambda: len(c.cgroup_procs()) == 3, 30, "the sleepers")
        await c.akill()
        wait_until(lambda: not c.cgroup_events().populated, 30, "populated 0")

    def test_freeze_and_thaw(self, box: cgoom.Cgroup, spawn: Spawn) -> None:
        """freeze() completes asynchronously (cgroup.events frozen 1); thaw() undoes it."""
        c = box.create_child("ice")
        p = spawn(c, "exec sleep 1000")
        wait_until(lambda: p.pid in c.cgroup_procs(), 10, "the sleeper")
        c.freeze()
        assert c.cgroup_freeze() is True
        wait_until(lambda: c.cgroup_events().frozen is True, 30, "frozen 1")
        c.thaw()
        assert c.cgroup_freeze() is False
        wait_until(lambda: c.cgroup_events().frozen is False, 30, "frozen 0")
        assert _alive(p.pid)

    def test_reclaim_moves_anon_memory_to_swap(self, box: cgoom.Cgroup, spawn: Spawn) -> None:
        """memory.reclaim frees what it can (to swap here) and says when it could not."""
        with open("/proc/meminfo") as f:
            swap_kb = next(int(line.split()[1]) for line in f if line.startswith("SwapTotal:"))
        if swap_kb < 128 * 1024:
            pytest.skip("needs 128 MiB of swap (cgoom-vm sets up zram swap in the VM)")
        c = box.create_child("reclaim")
        spawn(c, "{ head -c 64M /dev/zero; sleep 1000; } | tail > /dev/null")
        wait_until(lambda: c.memory_current() > 60 << 20, 60, "64 MiB resident")
        before = c.memory_current()
        assert c.reclaim("32M") is True
        # The kernel counts 32M reclaimed; memory.current falls by a little less when some
        # swapped-out pages stay in the swap cache for a while (seen: 28-32M here).
        assert c.memory_current() <= before - (16 << 20)
        assert c.memory_swap_current() >= 16 << 20
        assert c.reclaim("1G") is False  # far more than the cgroup has: EAGAIN
        empty = box.create_child("empty")
        assert empty.reclaim("1M") is False

    async def test_areclaim(self, box: cgoom.Cgroup) -> None:
        """areclaim() reports the kernel's answer from the executor."""
        assert await box.create_child("ar").areclaim("1M") is False

    def test_attach_moves_a_process(self, box: cgoom.Cgroup, spawn: Spawn) -> None:
        """attach() moves a process; /proc agrees; a gone pid is ProcessGone."""
        a, b = box.create_child("a"), box.create_child("b")
        p = spawn(a, "exec sleep 1000")
        wait_until(lambda: p.pid in a.cgroup_procs(), 10, "the sleeper")
        b.attach(p.pid)
        assert _proc_cgroup(p.pid) == b.path
        assert p.pid in b.cgroup_procs() and p.pid not in a.cgroup_procs()
        assert b.cgroup_events().populated and not a.cgroup_events().populated
        done = spawn(a, "exit 0")
        done.wait()
        with pytest.raises(cgoom.ProcessGone) as info:
            b.attach(done.pid)
        assert info.value.errno == errno.ESRCH


class TestErrors:
    def test_no_internal_process_rule(self, box: cgoom.Cgroup, spawn: Spawn) -> None:
        """Enabling memory in a cgroup with processes, or moving a process into a cgroup that
        enables it, is CgroupBusy with the rule explained."""
        p = box.create_child("p")
        s = spawn(p, "exec sleep 1000")
        wait_until(lambda: s.pid in p.cgroup_procs(), 10, "the sleeper")
        with pytest.raises(cgoom.CgroupBusy, match="no-internal-process rule") as info:
            p.enable_controllers("memory")
        assert info.value.errno == errno.EBUSY
        q = box.create_child("q")
        q.enable_controllers("memory")
        with pytest.raises(cgoom.CgroupBusy, match="no-internal-process rule"):
            q.attach(s.pid)

    def test_removed_cgroup_is_gone(self, box: cgoom.Cgroup) -> None:
        """After rmdir, every read is CgroupGone; removing twice is fine with missing_ok."""
        c = box.create_child("ephemeral")
        c.remove()
        with pytest.raises(cgoom.CgroupGone) as info:
            c.memory_current()
        assert info.value.errno == errno.ENOENT
        with pytest.raises(cgoom.CgroupGone):
            c.memory_events()
        c.remove(missing_ok=True)
        assert list(c.walk()) == []

    def test_fd_opened_before_removal_reads_enodev_as_gone(self, box: cgoom.Cgroup) -> None:
        """A file opened before the rmdir fails with ENODEV, which is also CgroupGone."""
        c = box.create_child("opened")
        fd = os.open(f"{c.dir}/memory.events", os.O_RDONLY)
        try:
            c.remove()
            with pytest.raises(OSError, match="No such device") as raw:
                os.read(fd, 100)
            assert raw.value.errno == errno.ENODEV
            err = cgoom._kernel._fs.translate_os_error(raw.value, c.fs, f"{c.dir}/memory.events",
                                               mount=c.mount, what="read")
            assert isinstance(err, cgoom.CgroupGone)
        finally:
            os.close(fd)

    def test_removing_a_populated_cgroup_is_busy(self, box: cgoom.Cgroup, spawn: Spawn) -> None:
        c = box.create_child("full")
        s = spawn(c, "exec sleep 1000")
        wait_until(lambda: s.pid in c.cgroup_procs(), 10, "the sleeper")
        with pytest.raises(cgoom.CgroupBusy, match="still has processes"):
            c.remove()

    def test_controller_not_enabled(self, box: cgoom.Cgroup) -> None:
        """A grandchild whose parent does not enable memory has no memory files: the error
        says which subtree_control to write; an unavailable controller is refused too."""
        n = box.create_child("n")
        nn = n.create_child("nn")
        with pytest.raises(cgoom.ControllerNotEnabled, match=f"{n.dir}/cgroup.subtree_control"):
            nn.memory_current()
        with pytest.raises(cgoom.ControllerNotEnabled) as info:
            n.enable_controllers("hugetlb")  # available at the root, not enabled by box
        assert info.value.errno == errno.ENOENT

    def test_root_has_no_memory_current(self, parent: cgoom.Cgroup) -> None:
        root = cgoom.Hierarchy.discover().root
        with pytest.raises(cgoom.NotSupported, match="root cgroup"):
            root.memory_current()


def test_cli_status_shows_the_sandbox(
    box: cgoom.Cgroup, spawn: Spawn, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cgoom status PATH` lists the subtree with the kernel's numbers."""
    c = box.create_child("shown")
    c.set_memory_max("64M")
    assert cli_main(["status", box.path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[0] == "CGROUP"
    row = next(line for line in out if line.startswith(c.path))
    assert "64.0M" in row.split()
