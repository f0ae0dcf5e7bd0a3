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
