"""Snapshots on the fake tree: one pass, xattr settings, process data, growth history."""

from __future__ import annotations

import pytest

import cgoom
from cgoom.testing import FakeCgroupTree

M = 1 << 20


@pytest.fixture
def jobs(tree: FakeCgroupTree) -> FakeCgroupTree:
    tree.add("jobs/web", procs=[100], memory_current=300 * M, memory_max="1G")
    tree.add("jobs/batch", procs=[200, 201], memory_current=200 * M)
    tree.add_process(100, name="nginx", oom_score_adj=0, rss=200 * M)
    tree.add_process(200, name="batch", oom_score_adj=500, rss=150 * M)
    tree.add_process(201, name="helper", oom_score_adj=500, rss=10 * M)
    tree.set("jobs/web", "memory.stat", "anon 123\nfile 456\nkernel 7\n")
    return tree


def test_one_pass_reads_every_field(jobs: FakeCgroupTree) -> None:
    snaps = cgoom.Snapshotter(jobs.hierarchy).snapshot("jobs")
    assert list(snaps) == ["/jobs", "/jobs/batch", "/jobs/web"]
    web = snaps["/jobs/web"]
    assert (web.usage, web.anon, web.file, web.kernel) == (300 * M, 123, 456, 7)
    assert web.memory_max == 1 << 30 and web.memory_high == "max" and web.oom_group is False
    assert web.populated and web.pids == (100,) and web.events is not None
    assert web.pressure is not None and web.peak == 0 and web.swap == 0
    assert web.priority == 0 and web.preference is None and not web.killable
    assert web.growth is None  # one reading so far
    assert [p.name for p in snaps["/jobs/batch"].processes] == ["batch", "helper"]
    assert snaps["/jobs"].processes == ()  # not a leaf: no process may be picked there


def test_xattr_settings(jobs: FakeCgroupTree) -> None:
    web, batch = jobs.cgroup("jobs/web"), jobs.cgroup("jobs/batch")
    web.set_priority(100)
    web.set_preference("avoid")
    batch.set_killable(True)
    batch.set_xattr("user.cgoom.overlimit", "1")
    snaps = cgoom.Snapshotter(jobs.hierarchy).snapshot("jobs")
    assert (snaps["/jobs/web"].priority, snaps["/jobs/web"].preference) == (100, "avoid")
    assert snaps["/jobs/batch"].killable and snaps["/jobs/batch"].overlimit
    assert web.priority() == 100
    web.set_priority(None)
    assert web.priority() is None


@pytest.mark.parametrize(("xattr", "preference"), [
    ("user.oomd_omit", "omit"), ("user.oomd_avoid", "avoid"), ("user.oomd_prefer", "prefer"),
])
def test_peer_conventions(jobs: FakeCgroupTree, xattr: str, preference: str) -> None:
    jobs.cgroup("jobs/web").set_xattr(xattr, "1")
    assert cgoom.Snapshotter(jobs.hierarchy).snapshot("jobs")["/jobs/web"].preference == preference


def test_own_preference_wins_over_peers(jobs: FakeCgroupTree) -> None:
    web = jobs.cgroup("jobs/web")
    web.set_xattr("user.oomd_omit", "1")
    web.set_preference("prefer")
    assert cgoom.Snapshotter(jobs.hierarchy).snapshot("jobs")["/jobs/web"].preference == "prefer"


def test_patterns_and_bad_settings(jobs: FakeCgroupTree) -> None:
    jobs.cgroup("jobs/batch").set_xattr("user.cgoom.priority", "high")
    jobs.cgroup("jobs/web").set_xattr("user.cgoom.preference", "never")
    snapper = cgoom.Snapshotter(jobs.hierarchy, priorities=[("jobs/w*", 50), ("jobs/*", 10)])
    snaps = snapper.snapshot("jobs")
    assert snaps["/jobs/web"].priority == 50
    assert snaps["/jobs/batch"].priority == 10  # the broken xattr is ignored ...
    assert snaps["/jobs/batch"].problems == (  # ... and recorded
        "user.cgoom.priority='high' is not an integer; ignored",)
    assert "is not prefer, avoid or omit" in snaps["/jobs/web"].problems[0]


def test_bad_settings_through_the_handle(jobs: FakeCgroupTree) -> None:
    web = jobs.cgroup("jobs/web")
    with pytest.raises(cgoom.InvalidValue, match="a preference is"):
        web.set_preference("maybe")
    with pytest.raises(cgoom.InvalidValue, match="a priority is an integer"):
        web.set_priority("9")  # type: ignore[arg-type]
    web.set_xattr("user.cgoom.priority", "x")
    with pytest.raises(cgoom.ParseError, match="not an integer"):
        web.priority()


def test_growth_from_history(jobs: FakeCgroupTree) -> None:
    now = [100.0]
    snapper = cgoom.Snapshotter(jobs.hierarchy, growth_window=30, clock=lambda: now[0])
    snapper.snapshot("jobs")
    jobs.set("jobs/web", "memory.current", f"{310 * M}\n")
    now[0] = 110.0
    assert snapper.snapshot("jobs")["/jobs/web"].growth == pytest.approx(M)
    now[0] = 200.0  # the history expired: no growth until a new reading is old enough
    assert snapper.snapshot("jobs")["/jobs/web"].growth is None


def test_vanishing_cgroup_is_left_out(jobs: FakeCgroupTree,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    snapper = cgoom.Snapshotter(jobs.hierarchy)
    real = snapper.read

    def racing(cgroup: cgoom.Cgroup, *, processes: bool = False) -> cgoom.CgroupSnapshot:
        if cgroup.path == "/jobs/batch":
            jobs.remove_behind_our_back("jobs/batch")
        return real(cgroup, processes=processes)

    monkeypatch.setattr(snapper, "read", racing)
    assert list(snapper.snapshot("jobs")) == ["/jobs", "/jobs/web"]


def test_snapshots_feed_policies(jobs: FakeCgroupTree) -> None:
    jobs.cgroup("jobs/web").set_priority(100)
    snaps = cgoom.Snapshotter(jobs.hierarchy).snapshot("jobs")
    d = cgoom.decide(cgoom.load_policy("priority"), cgoom.Incident("/jobs"), snaps)
    assert d.first == cgoom.Victim("/jobs/batch", 0.0, d.first.reason, False, 200)  # type: ignore[union-attr]
