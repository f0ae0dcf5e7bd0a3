"""Snapshots on the fake tree: one pass, xattr settings, process data, growth history."""

from __future__ import annotations

import errno
import os

import pytest

import cgoom
from cgoom.testing import FakeCgroupFS, FakeCgroupTree

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
        "user.cgoom.priority='high' is not an integer from -2147483648 to 2147483647; "
        "ignored",)
    assert "is not prefer, avoid or omit" in snaps["/jobs/web"].problems[0]


def test_bad_settings_through_the_handle(jobs: FakeCgroupTree) -> None:
    web = jobs.cgroup("jobs/web")
    with pytest.raises(cgoom.InvalidValue, match="a preference is"):
        web.set_preference("maybe")
    with pytest.raises(cgoom.InvalidValue, match="a priority is an int"):
        web.set_priority("9")  # type: ignore[arg-type]
    web.set_xattr("user.cgoom.priority", "x")
    with pytest.raises(cgoom.ParseError, match="'x' is not a priority"):
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
    real = snapper._read

    def racing(cgroup: cgoom.Cgroup, ctx: object) -> cgoom.CgroupSnapshot | None:
        if cgroup.path == "/jobs/batch":
            jobs.remove_behind_our_back("jobs/batch")
        return real(cgroup, ctx)  # type: ignore[arg-type]

    monkeypatch.setattr(snapper, "_read", racing)
    assert list(snapper.snapshot("jobs")) == ["/jobs", "/jobs/web"]


def test_snapshots_feed_policies(jobs: FakeCgroupTree) -> None:
    jobs.cgroup("jobs/web").set_priority(100)
    snaps = cgoom.Snapshotter(jobs.hierarchy).snapshot("jobs")
    d = cgoom.decide(cgoom.load_policy("priority"), cgoom.Incident("/jobs"), snaps)
    inode = snaps["/jobs/batch"].inode
    assert d.first == cgoom.Victim("/jobs/batch", 0.0, d.first.reason, False, 200,  # type: ignore[union-attr]
                                   cgroup_id=inode, start_time=200)
    assert inode == os.stat(jobs.cgroup("jobs/batch").dir).st_ino


# --- hostile workloads and broken input (issue #8 §1-§2) -----------------------------------


def decide_at(tree: FakeCgroupTree, path: str, policy: str = "priority",
              **kw: object) -> cgoom.Decision:
    snapper = cgoom.Snapshotter(tree.hierarchy, **kw)  # type: ignore[arg-type]
    pol = cgoom.load_policy(policy)
    snaps = snapper.snapshot(path, fields=cgoom.policy_fields(pol))
    return cgoom.decide(pol, cgoom.Incident(path), snaps)


class TestProcesses:
    def test_a_renamed_process_cannot_hide(self, tree: FakeCgroupTree) -> None:
        """comm may be any bytes (prctl(PR_SET_NAME)): not UTF-8, with ") " and newlines.
        The process stays a candidate and the low-priority cgroup is still chosen."""
        tree.add("t/low", procs=[100], memory_current=40 * M)
        tree.add("t/db", procs=[200], memory_current=40 * M)
        tree.cgroup("t/db").set_priority(100)
        tree.add_process(100, name=b"\xff\xfe) Z 1 (x\n", rss=30 * M)
        tree.add_process(200, name="db", rss=100 * M)
        d = decide_at(tree, "t")
        assert d.first is not None and (d.first.cgroup, d.first.pid) == ("/t/low", 100)
        assert "\ufffd\ufffd) Z 1 (x" in d.first.reason
        d.first.reason.encode("utf-8")  # printable by any strict UTF-8 stream

    def test_unreadable_files_keep_the_process(self, tree: FakeCgroupTree) -> None:
        """A read failure other than "gone" keeps the process, never chosen alone (its
        oom_score_adj is unknown), and the cgroup still counts as populated."""
        tree.add("t/low", procs=[100], memory_current=40 * M)
        tree.add_process(100, rss=30 * M)
        os.unlink(f"{tree.base}/proc/100/oom_score_adj")
        snap = cgoom.Snapshotter(tree.hierarchy).snapshot("t")["/t/low"]
        assert snap.populated and [(p.pid, p.oom_score_adj) for p in snap.processes] == [
            (100, None)]
        assert cgoom.select_process(snap.processes) is None

    def test_exited_and_kernel_threads_are_left_out(self, tree: FakeCgroupTree) -> None:
        tree.add("t/a", procs=[100, 101, 102], memory_current=40 * M)
        tree.add_process(100, rss=M)
        tree.add_process(101, rss=M, kernel_thread=True)
        tree.add_process(102, rss=M)
        tree.remove_process(102)
        snap = cgoom.Snapshotter(tree.hierarchy).snapshot("t")["/t/a"]
        assert [p.pid for p in snap.processes] == [100]
        assert snap.processes[0].start_time == 100

    def test_never_an_oom_score_adj_of_minus_1000(self, tree: FakeCgroupTree) -> None:
        tree.add("t/low", procs=[100], memory_current=40 * M)
        tree.add("t/high", procs=[200], memory_current=40 * M)
        tree.cgroup("t/high").set_priority(5)
        tree.add_process(100, oom_score_adj=-1000, rss=90 * M)
        tree.add_process(200, rss=10 * M)
        d = decide_at(tree, "t")
        assert [(v.cgroup, v.pid) for v in d.victims] == [("/t/high", 200)]
        assert d.notes == ("/t/low was passed over: none of its processes may die "
                           "(oom_score_adj -1000 or unreadable)",)


class TestInternalProcesses:
    def test_processes_beside_children_are_candidates(self, tree: FakeCgroupTree) -> None:
        """/t/low holds 30M of its own processes and a child cgroup (legal while it enables
        no controller for it): those processes die before priority-100 db."""
        tree.add("t/db", procs=[200], memory_current=40 * M)
        tree.cgroup("t/db").set_priority(100)
        tree.add("t/low", memory_current=30 * M)
        tree.cgroup("t/low").create_child("idle")
        tree.set("t/low", "cgroup.procs", "100\n")  # as the kernel lets it: no controllers
        tree.add_process(100, name="hog", rss=30 * M)
        tree.add_process(200, name="db", rss=100 * M)
        d = decide_at(tree, "t")
        assert d.first is not None
        assert (d.first.cgroup, d.first.whole, d.first.pid) == ("/t/low", False, 100)
        assert "its own processes (it also has child cgroups)" in d.first.reason
        # A whole-cgroup policy cannot take them whole, so its process falls back to pid.
        whole = decide_at(tree, "t", "largest")
        assert ("/t/low", False, 100) in [(v.cgroup, v.whole, v.pid) for v in whole.victims]

    def test_internal_unit_ranks_with_its_siblings(self, tree: FakeCgroupTree) -> None:
        """Inside /t (priority 0 everywhere) the internal processes compete by size with
        the children: the largest first."""
        tree.add("t/kid", procs=[300], memory_current=40 * M)
        tree.set("t", "cgroup.procs", "100\n")  # a process beside the child, as the kernel
        tree.add_process(100, rss=50 * M)
        tree.add_process(300, rss=20 * M)
        tree.set("t/kid", "memory.current", f"{20 * M}\n")
        d = decide_at(tree, "t")
        assert [(v.cgroup, v.pid) for v in d.victims] == [("/t", 100), ("/t/kid", 300)]


class TestIdentity:
    def test_victims_carry_identity_and_recheck_catches_reuse(
            self, tree: FakeCgroupTree) -> None:
        tree.add("t/a", procs=[100], memory_current=40 * M)
        tree.add_process(100, rss=M, start_time=5555)
        snapper = cgoom.Snapshotter(tree.hierarchy)
        d = cgoom.decide(cgoom.PriorityPolicy(), cgoom.Incident("t"), snapper.snapshot("t"))
        victim = d.first
        assert victim is not None and victim.start_time == 5555 and victim.cgroup_id
        assert snapper.recheck(victim) is None
        tree.add_process(100, rss=M, start_time=6666)  # pid 100 reused
        assert "pid 100 was reused" in (snapper.recheck(victim) or "")

    def test_recheck_catches_a_recreated_cgroup(self, tree: FakeCgroupTree) -> None:
        tree.add("t/a", procs=[100], memory_current=40 * M)
        tree.add_process(100, rss=M)
        snapper = cgoom.Snapshotter(tree.hierarchy)
        d = cgoom.decide(cgoom.PriorityPolicy(whole=True), cgoom.Incident("t"),
                         snapper.snapshot("t"))
        assert d.first is not None and d.first.whole
        tree.cgroup("t/a").kill()
        tree.cgroup("t/a").remove()
        assert snapper.recheck(d.first) == "/t/a no longer exists"
        # A new cgroup under the same name gets another inode.
        os.mkdir(f"{tree.cgroup('t').dir}/spacer")  # keep tmpfs from reusing the inode
        tree.add("t/a")
        assert "was removed and re-created" in (snapper.recheck(d.first) or "")

    def test_recheck_catches_a_process_that_moved(self, tree: FakeCgroupTree) -> None:
        tree.add("t/a", procs=[100], memory_current=40 * M)
        tree.add("t/b")
        tree.add_process(100, rss=M)
        snapper = cgoom.Snapshotter(tree.hierarchy)
        d = cgoom.decide(cgoom.PriorityPolicy(), cgoom.Incident("t"), snapper.snapshot("t"))
        tree.cgroup("t/b").attach(100)
        assert d.first is not None and snapper.recheck(d.first) == "process 100 left /t/a"


class TestTrust:
    """A delegated tenant owns its directory and so its user.* xattrs (docs/policies.md)."""

    @pytest.fixture
    def tenant(self, tree: FakeCgroupTree) -> FakeCgroupTree:
        tree.add("t/db", procs=[200], memory_current=40 * M)
        tree.cgroup("t/db").set_priority(100)
        tree.add("t/tenant", procs=[100], memory_current=40 * M)
        tree.add_process(100, name="tenant", rss=30 * M)
        tree.add_process(200, name="db", rss=100 * M)
        tree.chown("t/tenant", 65534)
        return tree

    def test_tenant_cannot_make_itself_immortal(self, tenant: FakeCgroupTree) -> None:
        t = tenant.cgroup("t/tenant")
        t.set_priority(1000)
        t.set_preference("omit")
        t.set_xattr("user.oomd_avoid", "1")
        d = decide_at(tenant, "t")
        assert d.first is not None and d.first.cgroup == "/t/tenant"
        snap = cgoom.Snapshotter(tenant.hierarchy).snapshot("t")["/t/tenant"]
        assert (snap.priority, snap.preference, snap.owner) == (0, None, 65534)
        assert any("user.cgoom.priority=1000 ignored: set by uid 65534" in p
                   for p in snap.problems)
        assert any("user.cgoom.preference (omit) ignored" in p for p in snap.problems)

    def test_tenant_orders_its_own_children(self, tenant: FakeCgroupTree) -> None:
        tenant.set("t/tenant", "cgroup.procs", "")
        for name, pid, prio in (("keep", 300, 50), ("drop", 301, 1)):
            tenant.add(f"t/tenant/{name}", procs=[pid], memory_current=10 * M)
            tenant.add_process(pid, rss=10 * M)
            tenant.chown(f"t/tenant/{name}", 65534)
            tenant.cgroup(f"t/tenant/{name}").set_priority(prio)
        tenant.set("t/tenant", "cgroup.procs", "100\n")  # its own process beside them
        snaps = cgoom.Snapshotter(tenant.hierarchy).snapshot("t")
        assert snaps["/t/tenant/keep"].priority == 50 and snaps["/t/tenant/drop"].priority == 1
        d = cgoom.decide(cgoom.PriorityPolicy(), cgoom.Incident("t"), snaps)
        order = [v.cgroup for v in d.victims]
        assert order.index("/t/tenant/drop") < order.index("/t/tenant/keep")
        assert order[-1] == "/t/db"

    def test_tenant_may_lower_itself_or_ask_to_die_first(self, tenant: FakeCgroupTree) -> None:
        t = tenant.cgroup("t/tenant")
        t.set_priority(-5)
        t.set_preference("prefer")
        t.set_killable(True)
        snap = cgoom.Snapshotter(tenant.hierarchy).snapshot("t")["/t/tenant"]
        assert (snap.priority, snap.preference, snap.killable, snap.problems) == (
            -5, "prefer", True, ())

    def test_a_single_read_does_not_let_the_tenant_vouch_for_itself(
            self, tenant: FakeCgroupTree) -> None:
        tenant.cgroup("t/tenant").set_priority(1000)
        snap = cgoom.Snapshotter(tenant.hierarchy).read(tenant.cgroup("t/tenant"))
        assert snap.priority == 0 and "ignored: set by uid 65534" in snap.problems[0]

    def test_domain_owner_is_trusted(self, tenant: FakeCgroupTree) -> None:
        """An incident inside the tenant's own subtree: the tenant decides there."""
        tenant.cgroup("t/tenant").set_preference("omit")
        snap = cgoom.Snapshotter(tenant.hierarchy).snapshot("t/tenant")["/t/tenant"]
        assert snap.preference == "omit" and snap.problems == ()

    def test_trusted_xattrs_and_patterns_always_count(self, tenant: FakeCgroupTree) -> None:
        tenant.cgroup("t/tenant").set_xattr("trusted.oomd_avoid", "1")
        snaps = cgoom.Snapshotter(tenant.hierarchy, priorities=[("t/tenant", 7)]).snapshot("t")
        assert (snaps["/t/tenant"].preference, snaps["/t/tenant"].priority) == ("avoid", 7)


class TestBadValues:
    @pytest.mark.parametrize("text", ["9" * 400, "2147483648", "+7", "1_000", "\uff17",
                                      "\u0663", "1e3", ""])
    def test_absurd_priority_is_a_problem_not_a_crash(self, tree: FakeCgroupTree,
                                                      text: str) -> None:
        tree.add("t/a", procs=[100], memory_current=40 * M)
        tree.add_process(100, rss=M)
        tree.cgroup("t/a").set_xattr("user.cgoom.priority", text)
        snap = cgoom.Snapshotter(tree.hierarchy).snapshot("t")["/t/a"]
        assert snap.priority == 0 and "user.cgoom.priority=" in snap.problems[0]
        assert decide_at(tree, "t").first is not None

    def test_priority_range_on_write(self, tree: FakeCgroupTree) -> None:
        a = tree.add("t/a")
        for bad in (10**400, 2**31, -(2**31) - 1):
            with pytest.raises(cgoom.InvalidValue, match=r"is outside -2147483648\.\.2147483647"):
                a.set_priority(bad)
        a.set_priority(2**31 - 1)
        a.set_priority(cgoom.PRIORITY_MIN)
        assert a.priority() == -(2**31)

    @pytest.mark.parametrize(("priorities", "match"), [
        ([("t/web", "100")], r"priorities\[0\] \('t/web'\): a priority is an int, not '100'"),
        ([("t/web", 10**12)], r"outside"),
        (["t/web"], r"write \(pattern, priority\)"),
        ([(7, 1)], r"write \(pattern, priority\)"),
    ])
    def test_configuration_is_checked_when_given(self, tree: FakeCgroupTree,
                                                 priorities: object, match: str) -> None:
        with pytest.raises(cgoom.InvalidValue, match=match):
            cgoom.Snapshotter(tree.hierarchy, priorities=priorities)  # type: ignore[arg-type]

    def test_an_unparsable_file_is_a_problem_of_its_cgroup(self, tree: FakeCgroupTree) -> None:
        tree.add("t/a", procs=[100], memory_current=40 * M)
        tree.add("t/b", procs=[200], memory_current=40 * M)
        tree.add_process(100, rss=M)
        tree.add_process(200, rss=M)
        tree.set("t/a", "memory.current", "lots\n")
        tree.set("t/b", "memory.oom.group", "2\n")
        snaps = cgoom.Snapshotter(tree.hierarchy).snapshot("t")
        assert snaps["/t/a"].usage is None and "memory.current" in snaps["/t/a"].problems[0]
        assert snaps["/t/b"].oom_group is None and "memory.oom.group" in snaps["/t/b"].problems[0]
        assert len(decide_at(tree, "t").victims) == 2

    def test_threaded_subtree_is_decided(self, tree: FakeCgroupTree,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
        """cgroup.procs is EOPNOTSUPP in a threaded cgroup: the cgroup is marked, its
        threaded domain is the unit, and the rest of the subtree is still decided."""
        tree.add("t/dom/thr")
        tree.set("t/dom", "memory.current", f"{20 * M}\n")
        tree.add("t/other", procs=[200], memory_current=40 * M)
        tree.set("t/dom", "cgroup.procs", "100\n")
        tree.add_process(100, rss=20 * M)
        tree.add_process(200, rss=10 * M)
        thr = tree.cgroup("t/dom/thr").dir
        real_read = FakeCgroupFS.read

        def read(self: FakeCgroupFS, path: str) -> str:
            if path == f"{thr}/cgroup.procs":
                raise OSError(errno.EOPNOTSUPP, "Operation not supported", path)
            return real_read(self, path)

        monkeypatch.setattr(FakeCgroupFS, "read", read)
        snaps = cgoom.Snapshotter(tree.hierarchy).snapshot("t")
        assert snaps["/t/dom/thr"].threaded and "threaded cgroup" in snaps["/t/dom/thr"].problems[0]
        d = cgoom.decide(cgoom.PriorityPolicy(), cgoom.Incident("t"), snaps)
        assert [(v.cgroup, v.pid) for v in d.victims] == [("/t/other", 200), ("/t/dom", 100)]

    @pytest.mark.parametrize("spelling", ["t", "/t/", "//t", "/./t"])
    def test_paths_are_normalised_once(self, tree: FakeCgroupTree, spelling: str) -> None:
        tree.add("t/a", procs=[100], memory_current=40 * M)
        tree.add_process(100, rss=M)
        snaps = cgoom.Snapshotter(tree.hierarchy).snapshot(spelling)
        d = cgoom.decide(cgoom.PriorityPolicy(), cgoom.Incident.create(spelling), snaps)
        assert cgoom.Incident.create(spelling).cgroup == "/t" and d.first is not None


class TestReadingOnlyWhatIsNeeded:
    def test_fields_limit_the_reads(self, jobs: FakeCgroupTree) -> None:
        snapper = cgoom.Snapshotter(jobs.hierarchy)
        snaps = snapper.snapshot("jobs", fields=cgoom.PriorityPolicy(whole=True).fields)
        web = snaps["/jobs/web"]
        assert web.usage == 300 * M and web.pressure is None and web.memory_max is None
        assert web.processes == () and web.pids == (100,) and web.populated is True
        assert web.oom_group is False and web.inode and web.age is not None

    def test_known_structure_skips_the_walk(self, jobs: FakeCgroupTree) -> None:
        snapper = cgoom.Snapshotter(jobs.hierarchy)
        walked = snapper.snapshot("jobs")
        given = snapper.snapshot("jobs", paths=["/jobs/web", "/jobs/batch", "/other",
                                                "/jobs/gone"])
        assert list(given) == list(walked) == ["/jobs", "/jobs/batch", "/jobs/web"]

    def test_history_outlives_a_snapshotter(self, jobs: FakeCgroupTree) -> None:
        now = [100.0]
        history = cgoom.UsageHistory(30, clock=lambda: now[0])
        cgoom.Snapshotter(jobs.hierarchy, history=history).snapshot("jobs")
        jobs.set("jobs/web", "memory.current", f"{320 * M}\n")
        now[0] = 110.0
        snap = cgoom.Snapshotter(jobs.hierarchy, history=history).snapshot("jobs")["/jobs/web"]
        assert snap.growth == pytest.approx(2 * M)

    async def test_async_snapshot_runs_off_the_loop(self, jobs: FakeCgroupTree) -> None:
        import threading

        snapper = cgoom.Snapshotter(jobs.hierarchy)
        seen = []
        real = snapper.snapshot

        def spy(*args: object, **kw: object) -> object:
            seen.append(threading.current_thread().name)
            return real(*args, **kw)  # type: ignore[arg-type]

        snapper.snapshot = spy  # type: ignore[method-assign]
        try:
            snaps = await snapper.asnapshot("jobs")
        finally:
            snapper.close()
        assert list(snaps) == ["/jobs", "/jobs/batch", "/jobs/web"]
        assert seen == ["cgoom-snapshot"]


class TestManyTenantCgroups:
    """issue 19: what a decision reads is bounded by what it needs, not by what a tenant
    creates (docs/policies.md, "A tenant's many cgroups")."""

    @pytest.fixture
    def crowd(self, tree: FakeCgroupTree) -> FakeCgroupTree:
        """/t: db (root's, priority 100, 140M), batch (root's, priority 10, 60M), and a
        tenant (uid 65534, 40M) with 5 cgroups of its own, one process each."""
        for name, pid, prio, usage in (("db", 100, 100, 140), ("batch", 200, 10, 60)):
            tree.add(f"t/{name}", procs=[pid], memory_current=usage * M).set_priority(prio)
            tree.add_process(pid, name=name, rss=usage * M)
        tree.add("t/tenant", memory_current=40 * M)
        tree.chown("t/tenant", 65534)
        for i in range(5):
            tree.add(f"t/tenant/c{i}", procs=[300 + i], memory_current=8 * M)
            tree.chown(f"t/tenant/c{i}", 65534)
            tree.add_process(300 + i, name=f"c{i}", rss=8 * M)
        return tree

    def test_a_delegated_cgroup_over_the_bound_stands_for_its_subtree(
            self, crowd: FakeCgroupTree) -> None:
        for paths in (None, [c.path for c in crowd.cgroup("t").walk()]):
            snaps = cgoom.Snapshotter(crowd.hierarchy, max_tenant_cgroups=4).snapshot(
                "t", paths=paths)
            assert list(snaps) == ["/t", "/t/batch", "/t/db", "/t/tenant"], paths
            tenant = snaps["/t/tenant"]
            assert tenant.subtree and tenant.unread == 5 and tenant.populated is True
            assert tenant.usage == 40 * M
            assert "uid 65534 made 5 cgroups below it, more than a decision reads below a " \
                "delegated cgroup (4)" in tenant.problems[-1]
            assert "cgroup.max.descendants" in tenant.problems[-1]

    def test_within_the_bound_and_root_s_own_cgroups_are_read_cgroup_by_cgroup(
            self, crowd: FakeCgroupTree) -> None:
        snaps = cgoom.Snapshotter(crowd.hierarchy, max_tenant_cgroups=5).snapshot("t")
        assert "/t/tenant/c4" in snaps and not snaps["/t/tenant"].subtree
        crowd.chown("t/tenant", 0)  # the operator's own: however many, all read
        for i in range(5):
            crowd.chown(f"t/tenant/c{i}", 0)
        snaps = cgoom.Snapshotter(crowd.hierarchy, max_tenant_cgroups=1).snapshot("t")
        assert "/t/tenant/c4" in snaps and not snaps["/t/tenant"].unread
        # the tenant's own domain: it is trusted there, and decided cgroup by cgroup
        crowd.chown("t/tenant", 65534)
        snaps = cgoom.Snapshotter(crowd.hierarchy, max_tenant_cgroups=1).snapshot("t/tenant")
        assert "/t/tenant/c4" in snaps and not snaps["/t/tenant"].unread

    @pytest.mark.parametrize(("name", "args"), [
        ("priority", {}), ("priority", {"whole": False}), ("largest", {}),
        ("largest", {"whole": False})])
    def test_it_is_ranked_by_its_own_totals_and_killed_whole(
            self, crowd: FakeCgroupTree, name: str, args: dict[str, object]) -> None:
        """Lowest priority (the priority policy) or largest (largest, the tenant's 40M
        against batch's 30M here): the tenant, whole, whatever the policy would have
        taken from it; passing it over (no process of it read) would let it shield itself
        by making cgroups, and kill batch."""
        crowd.set("t/batch", "memory.current", f"{30 * M}\n")
        crowd.set("t/db", "memory.current", f"{20 * M}\n")
        crowd.cgroup("t/tenant").set_priority(0)
        snaps = cgoom.Snapshotter(crowd.hierarchy, max_tenant_cgroups=4).snapshot("t")
        policy = cgoom.load_policy(name, **args)
        decision = cgoom.decide(policy, cgoom.Incident.create("/t", "test"), snaps)
        first = decision.first
        assert first is not None and first.cgroup == "/t/tenant" and first.whole, decision
        assert first.pid is None and first.cgroup_id == snaps["/t/tenant"].inode
        assert "uid 65534 made 5 cgroups below it" in first.reason

    def test_the_descent_stops_at_it(self, crowd: FakeCgroupTree) -> None:
        crowd.cgroup("t/tenant").set_priority(0)
        paths = [c.path for c in crowd.cgroup("t").walk()]
        snapshotter = cgoom.Snapshotter(crowd.hierarchy, max_tenant_cgroups=4)
        snaps, stop = snapshotter.descend("t", cgoom.PriorityPolicy().descend, paths=paths)
        assert stop == "/t/tenant" and snaps["/t/tenant"].unread == 5
        assert not any(p.startswith("/t/tenant/") for p in snaps)

    def test_the_bound_is_checked(self, crowd: FakeCgroupTree) -> None:
        for bad in (0, -1, True, 2.5, "256"):
            with pytest.raises(cgoom.InvalidValue, match="max_tenant_cgroups"):
                cgoom.Snapshotter(crowd.hierarchy, max_tenant_cgroups=bad)  # type: ignore[arg-type]


def test_descendant_counts_go_through_parents() -> None:
    from cgoom._decide._snapshot import descendant_counts

    paths = ["/t", "/t/a", "/t/a-b", "/t/a/b", "/t/a/b/c", "/t/z", "/u/orphan/x"]
    assert descendant_counts(paths) == {"/t": 5, "/t/a": 2, "/t/a-b": 0, "/t/a/b": 1,
                                        "/t/a/b/c": 0, "/t/z": 0, "/u/orphan/x": 0}
