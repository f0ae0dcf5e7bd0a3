"""What a kill frees (issue #20, item 3): ``MemoryStat.freeable``, the snapshot's
``freeable`` field, and the rankings that use it (``largest``, the priority policy's
tie-break), on plain records and on the fake cgroupfs."""

from __future__ import annotations

from pathlib import Path

import pytest

import cgoom
from cgoom import CgroupSnapshot as S
from cgoom import Incident
from cgoom._kernel._types import FREEABLE_KEYS
from cgoom.cli import main
from cgoom.testing import FakeCgroupTree

M = 1 << 20


class TestMemoryStatFreeable:
    def test_sums_what_dies_with_the_processes_and_swap(self) -> None:
        stat = cgoom.MemoryStat({
            "anon": 100, "zswap": 10, "kernel_stack": 1, "pagetables": 2, "sec_pagetables": 3,
            "sock": 4, "slab_unreclaimable": 5,
            # left out: page cache (tmpfs and shared memory included), the cgroup's own
            "file": 1000, "shmem": 500, "file_mapped": 300, "percpu": 7,
            "slab_reclaimable": 8, "kernel": 30,
        })
        assert stat.freeable(swap=50) == 100 + 10 + 1 + 2 + 3 + 4 + 5 + 50

    def test_no_swap_accounting_adds_nothing_and_missing_keys_count_zero(self) -> None:
        assert cgoom.MemoryStat({"anon": 7, "file": 9}).freeable(swap=None) == 7

    def test_every_key_is_in_the_fakes_kernel(self) -> None:
        from cgoom.testing._fake import MEMORY_STAT_KEYS
        assert set(FREEABLE_KEYS) <= set(MEMORY_STAT_KEYS)


def fake_domain(tmp_path: Path) -> FakeCgroupTree:
    """Two leaves of equal priority under /d: ``cache``, the larger by memory.current but
    mostly page cache, and ``anon``, all anonymous memory."""
    tree = FakeCgroupTree(tmp_path)
    tree.add("d")
    tree.add("d/cache", procs=[100], memory_current=140 * M)
    tree.set_memory_stat("d/cache", anon=1 * M, file=139 * M, shmem=20 * M)
    tree.add("d/anon", procs=[200], memory_current=100 * M)
    tree.add_process(100, rss=M)
    tree.add_process(200, rss=100 * M)
    return tree


class TestSnapshot:
    def test_reads_freeable_from_memory_stat_and_swap(self, tmp_path: Path) -> None:
        tree = fake_domain(tmp_path)
        tree.set("d/anon", "memory.swap.current", f"{30 * M}\n")
        snaps = cgoom.Snapshotter(tree.hierarchy).snapshot("/d", fields={"freeable"})
        assert snaps["/d/cache"].freeable == 1 * M
        assert snaps["/d/anon"].freeable == 130 * M  # 100M anon + 30M swap

    def test_not_read_unless_asked(self, tmp_path: Path) -> None:
        snaps = cgoom.Snapshotter(fake_domain(tmp_path).hierarchy).snapshot(
            "/d", fields={"usage"})
        assert snaps["/d/anon"].freeable is None

    def test_the_fake_counts_memory_current_as_anonymous_until_told(self,
                                                                     tmp_path: Path) -> None:
        tree = FakeCgroupTree(tmp_path)
        cg = tree.add("t", memory_current=5 * M)
        assert cg.memory_stat().anon == 5 * M
        tree.set_memory_stat("t", file=5 * M)
        tree.set("t", "memory.current", f"{6 * M}\n")
        assert cg.memory_stat().anon == 0 and cg.memory_stat().file == 5 * M


class TestRanking:
    def test_largest_and_priority_rank_what_a_kill_frees(self, tmp_path: Path) -> None:
        snaps = cgoom.Snapshotter(fake_domain(tmp_path).hierarchy).snapshot("/d")
        incident = Incident("/d")
        for policy in (cgoom.largest(), cgoom.largest(protection_aware=False),
                       cgoom.PriorityPolicy(whole=True)):
            decision = policy(incident, snaps)
            assert [v.cgroup for v in decision.victims] == ["/d/anon", "/d/cache"], policy
        reason = cgoom.PriorityPolicy(whole=True)(incident, snaps).victims[1].reason
        assert "usage 140.0M (freeable 1.0M)" in reason, reason

    def test_usage_breaks_ties_and_stands_in_where_freeable_is_unknown(self) -> None:
        candidates = {s.path: s for s in (
            S("/d", usage=300 * M, populated=True),
            S("/d/a", usage=100 * M, freeable=50 * M, populated=True, oom_group=True),
            S("/d/b", usage=120 * M, freeable=50 * M, populated=True, oom_group=True),
            S("/d/c", usage=60 * M, populated=True, oom_group=True),  # freeable not read
        )}
        decision = cgoom.largest(protection_aware=False)(Incident("/d"), candidates)
        assert [v.cgroup for v in decision.victims] == ["/d/c", "/d/b", "/d/a"]

    def test_protection_caps_what_counts(self) -> None:
        candidates = {s.path: s for s in (
            S("/d", usage=300 * M, populated=True),
            S("/d/a", usage=100 * M, freeable=90 * M, memory_min=60 * M, populated=True,
              oom_group=True),
            S("/d/b", usage=80 * M, freeable=50 * M, populated=True, oom_group=True),
        )}
        decision = cgoom.largest()(Incident("/d"), candidates)
        assert [v.cgroup for v in decision.victims] == ["/d/b", "/d/a"]
        assert decision.victims[0].score == 50 * M and decision.victims[1].score == 40 * M
        assert "of which a kill frees 50.0M" in decision.victims[0].reason



class TestRank:
    def test_rank_shows_what_each_kill_would_free(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        tree = fake_domain(tmp_path)
        for name in ("cache", "anon"):
            tree.cgroup(f"d/{name}").set_memory_oom_group(True)  # killed whole
        base = ["--mount", tree.mount, "--proc", str(tmp_path / "proc")]
        assert main([*base, "rank", "/d"]) == 0
        lines = capsys.readouterr().out.splitlines()
        first = next(i for i, line in enumerate(lines) if "1. /d/anon" in line)
        assert "2. /d/cache" in lines[first + 1]
        assert "usage 140.0M (freeable 1.0M)" in lines[first + 1]
        # A policy that ranks by something else still shows what its kill frees.
        assert main([*base, "rank", "/d", "--policy", "growth"]) == 0
        out = capsys.readouterr().out
        assert "a kill frees 1.0M of usage 140.0M (anon, swap, kernel; not cache)" in out


ROLLUP = """\
55d4c0a2b000-7ffc8b1f5000 ---p 00000000 00:00 0                          [rollup]
Rss:              103200 kB
Pss:               52800 kB
Pss_Dirty:         51900 kB
Pss_Anon:          51500 kB
Pss_File:           1300 kB
Pss_Shmem:             0 kB
Shared_Clean:       1800 kB
Shared_Dirty:     100000 kB
Private_Clean:       400 kB
Private_Dirty:      1000 kB
Referenced:       103200 kB
Anonymous:        101000 kB
LazyFree:              0 kB
AnonHugePages:         0 kB
Swap:               2048 kB
SwapPss:            1024 kB
Locked:                0 kB
"""


class TestSmapsRollup:
    """Per-process: what a kill frees, from /proc/PID/smaps_rollup (a forked worker's
    memory is mostly its siblings' too: RSS counts it whole, its kill frees its own)."""

    def test_parses_the_kernels_format(self) -> None:
        from cgoom._kernel._parse import parse_smaps_rollup, rollup_sizes
        values = parse_smaps_rollup(ROLLUP, "/proc/7/smaps_rollup")
        assert values["Rss"] == 103200 * 1024 and values["SwapPss"] == 1024 * 1024
        # USS 1.4M (private clean + dirty), Pss_Anon 51.5M: the smaller, plus its swap share.
        assert rollup_sizes(values) == (52800 * 1024, 1400 * 1024, (1400 + 1024) * 1024)

    def test_before_5_3_uss_and_swap(self) -> None:
        from cgoom._kernel._parse import parse_smaps_rollup, rollup_sizes
        old = "\n".join(line for line in ROLLUP.splitlines() if not line.startswith("Pss_"))
        assert rollup_sizes(parse_smaps_rollup(old, "x")) == (
            52800 * 1024, 1400 * 1024, (1400 + 1024) * 1024)
        only = "Rss: 10 kB\nPss: 8 kB\nPrivate_Dirty: 6 kB\nPss_Anon: 4 kB\n"
        assert rollup_sizes(parse_smaps_rollup(only, "x")) == (8192, 6144, 4096)

    @pytest.mark.parametrize("text", ["", "Rss: 10 kB\n", "Pss: x kB\nRss: 1 kB\n",
                                      "Rss: １０ kB\nPss: 1 kB\n", "\x00" * 20])
    def test_not_such_a_file_is_a_parse_error(self, text: str) -> None:
        from cgoom._kernel._parse import parse_smaps_rollup
        with pytest.raises(cgoom.ParseError, match="/proc/9/smaps_rollup"):
            parse_smaps_rollup(text, "/proc/9/smaps_rollup")

    def test_unknown_and_odd_lines_are_skipped(self) -> None:
        from cgoom._kernel._parse import parse_smaps_rollup
        values = parse_smaps_rollup("Rss: 4 kB\nPss: 2 kB\nNew_Field: 9 kB\nVmFlags: rd wr\n"
                                    "Odd: 3 MB\n", "x")
        assert values == {"Rss": 4096, "Pss": 2048, "New_Field": 9216}

    @staticmethod
    def workers(tmp_path: Path) -> FakeCgroupTree:
        """One cgroup, two processes: 10, a forked worker of 100M RSS of which 98M is
        shared with its sibling (not in this cgroup); 11, 60M all its own."""
        tree = FakeCgroupTree(tmp_path, kernel=(6, 12))
        tree.add("w", procs=[10, 11], memory_current=170 * M)
        tree.add_process(10, name="worker", rss=100 * M, private=2 * M)
        tree.add_process(11, name="loader", rss=60 * M)
        return tree

    def test_read_only_when_the_policy_asks(self, tmp_path: Path) -> None:
        tree = self.workers(tmp_path)
        snapshotter = cgoom.Snapshotter(tree.hierarchy)
        plain = snapshotter.snapshot("/", fields={"processes"})["/w"].processes
        assert [(p.pid, p.pss, p.uss, p.freeable) for p in plain] == [
            (10, None, None, None), (11, None, None, None)]
        assert "pss" not in cgoom.policy_fields(cgoom.PriorityPolicy())
        # Units killed whole: no process is chosen, nothing to read.
        assert "pss" not in cgoom.policy_fields(cgoom.PriorityPolicy(pss=True, whole=True))
        fields = cgoom.policy_fields(cgoom.PriorityPolicy(pss=True))
        assert "pss" in fields and "pss" not in cgoom.FIELDS
        read = {p.pid: p for p in snapshotter.snapshot("/", fields=fields)["/w"].processes}
        assert (read[10].pss, read[10].uss, read[10].freeable) == (51 * M, 2 * M, 2 * M)
        assert (read[11].pss, read[11].uss, read[11].freeable) == (60 * M, 60 * M, 60 * M)

    def test_the_priority_policy_with_pss_kills_the_process_that_frees_the_most(
            self, tmp_path: Path) -> None:
        tree = self.workers(tmp_path)
        incident = Incident.create("/", "test")
        snapshotter = cgoom.Snapshotter(tree.hierarchy)
        for policy, pid in ((cgoom.PriorityPolicy(whole=False), 10),
                            (cgoom.PriorityPolicy(whole=False, pss=True), 11)):
            snaps = snapshotter.snapshot("/", fields=cgoom.policy_fields(policy))
            victim = policy(incident, snaps).victims[0]
            assert (victim.cgroup, victim.pid) == ("/w", pid), victim
        assert "rss 60.0M (pss 60.0M, frees 60.0M)" in victim.reason

    def test_an_unreadable_rollup_ranks_by_rss(self, tmp_path: Path) -> None:
        tree = self.workers(tmp_path)
        tree.fs.replace(str(tmp_path / "proc" / "11" / "smaps_rollup"), "garbage\n")
        snaps = cgoom.Snapshotter(tree.hierarchy).snapshot(
            "/", fields=cgoom.policy_fields(cgoom.PriorityPolicy(pss=True)))
        by_pid = {p.pid: p for p in snaps["/w"].processes}
        assert by_pid[11].freeable is None and by_pid[11].frees == 60 * M
        assert by_pid[10].frees == 2 * M

    def test_policy_args_in_the_configuration(self) -> None:
        policy = cgoom.load_policy("priority", pss=True, whole=False)
        assert "pss" in cgoom.policy_fields(policy)
        with pytest.raises(cgoom.PluginError, match="pss"):
            cgoom.load_policy("priority", pss="yes")
