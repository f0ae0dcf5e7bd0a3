"""Policies: tables per built-in, invariants under hypothesis, and the guard around them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cgoom
from cgoom import CgroupSnapshot as S
from cgoom import Incident, ProcessSnapshot
from cgoom.testing import FakeCgroupTree

M = 1 << 20


def tree(*snaps: S) -> dict[str, S]:
    return {s.path: s for s in snaps}


def victims(decision: cgoom.Decision) -> list[str]:
    return [v.cgroup for v in decision.victims]


def group(path: str, usage: int, **kw: object) -> S:
    """A populated memory.oom.group unit."""
    return S(path, usage=usage, populated=True, oom_group=True, **kw)  # type: ignore[arg-type]


JOBS = tree(
    S("/jobs", usage=1000 * M, populated=True),
    group("/jobs/web", 300 * M, priority=100),
    group("/jobs/batch", 200 * M, priority=0),
    group("/jobs/cache", 500 * M, priority=0),
    group("/jobs/idle", 0, priority=-5),          # nothing to free
)


#: issue 19: a tenant (priority 0) flips its hog between its own cgroups a and b while they
#: are read: the hog is in neither list, its memory charged to a. The kernel's own flag says
#: the tenant is populated.
FLIPPED = tree(
    S("/w", usage=400 * M, populated=True),
    S("/w/tenant", usage=300 * M, populated=True, priority=0),
    S("/w/tenant/a", usage=300 * M, populated=False),
    S("/w/tenant/b", usage=0, populated=False),
    group("/w/batch", 60 * M, priority=10, pids=(500,)),
    group("/w/db", 40 * M, priority=100, pids=(600,)),
)


class TestASubtreeWhoseProcessesMoved:
    def test_it_dies_whole_before_any_higher_priority_sibling(self) -> None:
        d = cgoom.PriorityPolicy()(Incident("/w"), FLIPPED)
        assert victims(d)[0] == "/w/tenant", d
        assert d.first is not None and d.first.whole
        assert "killed whole with its subtree" in d.first.reason
        assert victims(d)[1:] == ["/w/batch", "/w/db"]

    def test_not_when_something_in_it_may_not_die(self) -> None:
        omitted = {**FLIPPED, "/w/tenant/b": S("/w/tenant/b", usage=0, populated=False,
                                                 preference="omit")}
        assert victims(cgoom.PriorityPolicy()(Incident("/w"), omitted))[0] == "/w/batch"
        protected = Incident.create("/w", own_cgroup="/w/tenant/b")
        assert victims(cgoom.PriorityPolicy()(protected, FLIPPED))[0] == "/w/batch"

    def test_not_when_it_is_empty_or_holds_nothing(self) -> None:
        empty = {**FLIPPED, "/w/tenant": attrs.evolve(FLIPPED["/w/tenant"], populated=False)}
        assert victims(cgoom.PriorityPolicy()(Incident("/w"), empty))[0] == "/w/batch"
        nothing = {**FLIPPED, "/w/tenant": attrs.evolve(FLIPPED["/w/tenant"], usage=0)}
        assert victims(cgoom.PriorityPolicy()(Incident("/w"), nothing))[0] == "/w/batch"

    def test_one_process_policies_pass_it_over(self) -> None:
        d = cgoom.PriorityPolicy(whole=False)(Incident("/w"), FLIPPED)
        assert "/w/tenant" not in victims(d)


class TestPriority:
    def test_lowest_priority_first_ties_to_largest(self) -> None:
        d = cgoom.PriorityPolicy()(Incident("/jobs"), JOBS)
        assert victims(d) == ["/jobs/cache", "/jobs/batch", "/jobs/web"]
        assert d.first is not None and d.first.whole and d.first.score == 0.0
        assert d.first.reason.startswith("priority 0, usage 500.0M; lowest priority first")
        assert "killed whole (memory.oom.group=1)" in d.first.reason

    def test_equal_priorities_reduce_to_largest(self) -> None:
        flat = {p: S(p, usage=s.usage, populated=True, oom_group=s.oom_group)
                for p, s in JOBS.items()}
        d = cgoom.PriorityPolicy()(Incident("/jobs"), flat)
        assert victims(d) == ["/jobs/cache", "/jobs/web", "/jobs/batch"]

    def test_descends_level_by_level(self) -> None:
        """A low-priority parent is chosen before a big high-priority sibling, and inside it
        the lowest-priority child."""
        cands = tree(
            S("/", usage=0, populated=True),
            S("/a", usage=100 * M, populated=True, priority=1),
            group("/a/x", 60 * M, priority=5),
            group("/a/y", 40 * M, priority=3),
            group("/b", 900 * M, priority=10),
        )
        assert victims(cgoom.PriorityPolicy()(Incident("/"), cands)) == ["/a/y", "/a/x", "/b"]

    def test_overlimit_then_preference_break_ties(self) -> None:
        cands = tree(
            S("/t", populated=True, usage=3 * M),
            group("/t/big", 9 * M),
            group("/t/raised", 1 * M, overlimit=True),
            group("/t/pref", 1 * M, preference="prefer"),
            group("/t/avoid", 20 * M, preference="avoid"),
        )
        assert victims(cgoom.PriorityPolicy()(Incident("/t"), cands)) == [
            "/t/raised", "/t/pref", "/t/big", "/t/avoid"]

    def test_process_inside_a_leaf(self) -> None:
        procs = (ProcessSnapshot(10, "db", -500, 900 * M), ProcessSnapshot(11, "w1", 300, 5 * M),
                 ProcessSnapshot(12, "w2", 300, 80 * M), ProcessSnapshot(13, "init", -1000, M))
        cands = tree(S("/t", usage=M, populated=True),
                     S("/t/leaf", usage=990 * M, populated=True, pids=(10, 11, 12, 13),
                       processes=procs))
        d = cgoom.PriorityPolicy()(Incident("/t"), cands)
        assert d.first == cgoom.Victim("/t/leaf", 0.0, d.first.reason, False, 12)  # type: ignore[union-attr]
        assert "process 12 (w2): oom_score_adj 300, rss 80.0M" in d.first.reason  # type: ignore[union-attr]

    def test_only_unkillable_processes(self) -> None:
        cands = tree(S("/t", usage=M, populated=True, pids=(1,),
                       processes=(ProcessSnapshot(1, "x", -1000, M),)))
        assert cgoom.PriorityPolicy()(Incident("/t"), cands).victims == ()

    def test_omit_protected_and_outside_are_never_chosen(self) -> None:
        cands = tree(
            S("/", usage=0, populated=True),
            S("/sys", usage=M, populated=True),
            group("/sys/cgoom", 50 * M, priority=-100),     # cgoom itself
            group("/sys/sshd", 10 * M, preference="omit"),
            S("/apps", usage=M, populated=True, preference="omit"),
            group("/apps/x", 90 * M, priority=-50),          # below an omitted cgroup
            group("/other", 70 * M),
        )
        incident = Incident.create("/", own_cgroup="/sys/cgoom")
        assert victims(cgoom.PriorityPolicy()(incident, cands)) == ["/other"]
        assert victims(cgoom.PriorityPolicy()(Incident.create("/sys"), cands)) == ["/sys/cgoom"]


class TestFlatPolicies:
    CANDS = tree(
        S("/w", usage=0, populated=True),
        group("/w/a", 100 * M, swap=5 * M, growth=1e6, memory_low=90 * M),
        group("/w/b", 80 * M, swap=50 * M, growth=None),
        group("/w/c", 60 * M, swap=0, growth=5e6,
              pressure=cgoom.Pressure(cgoom.PressureLine(42.0, 1, 1, 1))),
    )

    @pytest.mark.parametrize(("policy", "order"), [
        (cgoom.largest(), ["/w/b", "/w/c", "/w/a"]),                 # a is 90M protected
        (cgoom.largest(protection_aware=False), ["/w/a", "/w/b", "/w/c"]),
        (cgoom.growth(), ["/w/c", "/w/a", "/w/b"]),
        (cgoom.pressure(), ["/w/c", "/w/a", "/w/b"]),                 # unknown PSI ranks last
        (cgoom.swap(), ["/w/b", "/w/a", "/w/c"]),
    ])
    def test_order(self, policy: cgoom.Policy, order: list[str]) -> None:
        assert victims(policy(Incident("/w"), self.CANDS)) == order

    def test_preference_comes_first(self) -> None:
        cands = dict(self.CANDS)
        cands["/w/c"] = group("/w/c", 60 * M, preference="prefer")
        cands["/w/a"] = group("/w/a", 100 * M, preference="avoid")
        assert victims(cgoom.largest(protection_aware=False)(Incident("/w"), cands)) == [
            "/w/c", "/w/b", "/w/a"]

    def test_reasons_carry_numbers(self) -> None:
        d = cgoom.largest()(Incident("/w"), self.CANDS)
        assert d.victims[-1].reason.startswith(
            "usage 100.0M minus protection 90.0M: 10.0M; killed whole")

    def test_pressure_arguments_are_checked(self) -> None:
        with pytest.raises(ValueError, match="kind is some or full"):
            cgoom.pressure(kind="most")

    def test_killable_first(self) -> None:
        cands = dict(JOBS)
        cands["/jobs/web"] = group("/jobs/web", 300 * M, priority=100, killable=True)
        d = cgoom.KillableFirstPolicy()(Incident("/jobs"), cands)
        assert victims(d) == ["/jobs/web", "/jobs/cache", "/jobs/batch"]
        assert d.victims[0].reason.startswith("declared background-killable")


class TestKubernetes:
    def test_qos_order(self) -> None:
        base = "/kubepods.slice"
        cands = tree(
            S(base, usage=0, populated=True),
            S(f"{base}/kubepods-pod9f1.slice", usage=900 * M, populated=True),
            S(f"{base}/kubepods-burstable.slice", usage=0, populated=True),
            S(f"{base}/kubepods-burstable.slice/kubepods-burstable-podb1.slice", usage=300 * M,
              populated=True, memory_min=250 * M),
            S(f"{base}/kubepods-burstable.slice/kubepods-burstable-podb2.slice", usage=200 * M,
              populated=True, memory_min=50 * M),
            S(f"{base}/kubepods-burstable.slice/kubepods-burstable-podb2.slice/ctr", usage=M,
              populated=True),
            S(f"{base}/kubepods-besteffort.slice", usage=0, populated=True),
            S(f"{base}/kubepods-besteffort.slice/kubepods-besteffort-pode1.slice", usage=10 * M,
              populated=True),
        )
        d = cgoom.KubernetesQoSPolicy()(Incident(base), cands)
        assert [v.cgroup.rsplit("/", 1)[1] for v in d.victims] == [
            "kubepods-besteffort-pode1.slice", "kubepods-burstable-podb2.slice",
            "kubepods-burstable-podb1.slice", "kubepods-pod9f1.slice"]
        assert "150.0M over its request" in d.victims[1].reason
        assert all(v.whole for v in d.victims)

    def test_qos_class_of_cgroupfs_driver_paths(self) -> None:
        from cgoom._decide._policy import is_pod, qos_class
        assert qos_class("/kubepods/besteffort/pod1234-ab") == "besteffort"
        assert qos_class("/kubepods/pod1234") == "guaranteed"
        assert qos_class("/system.slice") is None
        assert is_pod("/kubepods/burstable/pod0f3e-11") and not is_pod("/kubepods/burstable")


# --- invariants ----------------------------------------------------------------------------

names = st.sampled_from(["a", "b", "c", "d"])


@st.composite
def candidate_trees(draw: st.DrawFn) -> tuple[Incident, dict[str, S]]:
    """Random trees below /r (and a sibling /z outside the incident), random settings."""
    paths = {"/r", "/z"}
    for _ in range(draw(st.integers(1, 12))):
        parent = draw(st.sampled_from(sorted(paths)))
        paths.add(f"{parent.rstrip('/')}/{draw(names)}")
    snaps = {}
    for path in sorted(paths):
        threaded = path.count("/") > 1 and draw(st.integers(0, 9)) == 0
        pids = () if threaded else tuple(draw(st.lists(st.integers(100, 110), max_size=3,
                                                        unique=True)))
        snaps[path] = S(
            path,
            usage=draw(st.one_of(st.none(), st.integers(0, 10**9))),
            populated=draw(st.one_of(st.none(), st.booleans())),
            oom_group=draw(st.one_of(st.none(), st.booleans())),
            priority=draw(st.integers(-3, 3)),
            preference=draw(st.sampled_from([None, None, "prefer", "avoid", "omit"])),
            overlimit=draw(st.booleans()),
            killable=draw(st.booleans()),
            swap=draw(st.one_of(st.none(), st.integers(0, 10**8))),
            growth=draw(st.one_of(st.none(), st.floats(-1e6, 1e6))),
            pids=pids,
            threaded=threaded,
            processes=tuple(ProcessSnapshot(
                p, "p", draw(st.one_of(st.none(), st.integers(-1000, 1000))),
                draw(st.integers(0, 10**8)), p * 7) for p in pids),
        )
    own = draw(st.sampled_from(sorted(paths)))
    return Incident.create("/r", own_cgroup=own), snaps


POLICIES = [cgoom.load_policy(n) for n in cgoom.BUILTIN_POLICIES]


def below_omitted(path: str, cands: Mapping[str, S]) -> bool:
    parts = [p for p in path.split("/") if p]
    return any(cands.get("/" + "/".join(parts[:i])) is not None
               and cands["/" + "/".join(parts[:i])].preference == "omit"
               for i in range(1, len(parts) + 1))


@settings(max_examples=300, deadline=None)
@given(candidate_trees())
def test_invariants(case: tuple[Incident, dict[str, S]]) -> None:
    incident, cands = case
    for policy in POLICIES:
        d = policy(incident, cands)
        assert d == policy(incident, cands), policy.name          # deterministic
        assert cgoom._decide._plugins.decision_problem(d, incident, cands) is None, policy.name
        for v in d.victims:
            assert v.cgroup == "/r" or v.cgroup.startswith("/r/")  # inside the incident
            assert not below_omitted(v.cgroup, cands)             # never omitted
            assert v.cgroup not in incident.protected             # never cgoom itself
            assert not cands[v.cgroup].threaded                    # never a threaded cgroup
            if v.pid is not None:                                 # never -1000 or unknown
                proc = next(p for p in cands[v.cgroup].processes if p.pid == v.pid)
                assert proc.oom_score_adj is not None and proc.oom_score_adj > -1000
                assert v.start_time == proc.start_time            # identity carried
        assert len({v.cgroup for v in d.victims}) == len(d.victims)


def as_read(cands: Mapping[str, S]) -> dict[str, S]:
    """The records as a snapshot reads them: ``populated`` from the cgroup's own pids
    (None where cgroup.procs cannot be read), derived for the parents afterwards."""
    return {p: attrs.evolve(s, populated=None if s.threaded else bool(s.pids))
            for p, s in cands.items()}


@settings(max_examples=500, deadline=None)
@given(candidate_trees())
def test_the_descent_is_kept_only_where_the_full_ranking_starts(
        case: tuple[Incident, dict[str, S]]) -> None:
    """The engine reads a large domain level by level for the priority policy and keeps the
    decision on that partial snapshot only when its first victim is the unit the descent
    stopped at. Whenever it does, that victim is the full ranking's first: never another
    (a wrong kill), whatever the tree, settings, omitted, threaded or protected cgroups."""
    from cgoom._decide._snapshot import derive_populated, descend_tree

    incident, cands = case
    raw = as_read(cands)
    inside = {p: s for p, s in raw.items() if p == "/r" or p.startswith("/r/")}
    children: dict[str, list[str]] = {}
    for path in sorted(inside):
        if path != "/r":
            children.setdefault(path.rsplit("/", 1)[0] or "/", []).append(path)
    for whole in (None, True, False):
        policy = cgoom.PriorityPolicy(whole=whole)
        full = dict(inside)
        derive_populated(full)
        partial, stop = descend_tree("/r", children, inside.get, policy.descend)
        derive_populated(partial)
        expected = policy(incident, full).first
        got = policy(incident, partial).first
        if stop is not None and got is not None and got.cgroup == stop:
            assert expected is not None, (stop, got)
            assert (got.cgroup, got.pid, got.whole) == (
                expected.cgroup, expected.pid, expected.whole), (whole, stop)


def test_the_descent_reads_only_the_levels_it_goes_into(tree: FakeCgroupTree) -> None:
    # 200 candidates in 5 groups of 40: the descent reads the domain, the 5 groups and the
    # 40 children of the one it goes into (the largest group, then its largest child).
    for i in range(200):
        c = tree.add(f"dom/g{i // 40}/c{i}", memory_current=(i % 37 + 1) * (1 << 20),
                     procs=[50_000 + i])
        c.set_memory_oom_group(True)
    structure = [str(c.path) for c in tree.hierarchy.cgroup("dom").walk()]
    snapshotter = cgoom.Snapshotter(tree.hierarchy)
    policy = cgoom.PriorityPolicy()
    tree.set("dom/g3", "memory.current", f"{60_000 << 20}\n")
    snaps, stop = snapshotter.descend("/dom", policy.descend, paths=structure,
                                      fields=cgoom.policy_fields(policy))
    full = snapshotter.snapshot("/dom", fields=cgoom.policy_fields(policy), paths=structure)
    incident = Incident.create("/dom")
    assert len(snaps) == 46 and len(full) == 206
    assert stop == policy(incident, full).first.cgroup == policy(incident, snaps).first.cgroup
    assert stop.startswith("/dom/g3/")


@settings(max_examples=300, deadline=None)
@given(candidate_trees())
def test_priority_never_skips_a_lower_priority_sibling(
        case: tuple[Incident, dict[str, S]]) -> None:
    """At every level of the first victim's chain, no sibling that still holds a killable
    unit has a lower priority than the one taken."""
    incident, cands = case
    d = cgoom.PriorityPolicy(whole=True)(incident, cands)
    if d.first is None:
        return
    # Units that can yield a victim: whole ones always (whole=True), internal ones only with
    # a process that may die (the policy passes over the others, and decide() notes it).
    killable = [s for s in cgoom.units(incident, cands)
                if not s.internal or cgoom.select_process(s.processes) is not None]
    allowed = {s.path for s in killable}
    inner = {s.path for s in killable if s.internal}
    if d.first.cgroup in inner and not d.first.whole:
        # Its own processes went first: no child of it with a unit has a lower priority.
        top = d.first.cgroup
        for other in cands:
            if (other.rsplit("/", 1)[0] or "/") == top and any(
                    u == other or u.startswith(other + "/") for u in allowed):
                assert cands[top].priority <= cands[other].priority
    parts = [p for p in d.first.cgroup.split("/") if p]
    for depth in range(2, len(parts) + 1):
        taken = "/" + "/".join(parts[:depth])
        parent = taken.rsplit("/", 1)[0] or "/"
        for other in cands:
            if other != taken and (other.rsplit("/", 1)[0] or "/") == parent and any(
                    u == other or u.startswith(other + "/") for u in allowed):
                assert cands[taken].priority <= cands[other].priority


# --- loading and guarding ------------------------------------------------------------------


class TestLoading:
    def test_builtins_load_with_arguments(self) -> None:
        assert cgoom.load_policy("largest", protection_aware=False).name == "largest"
        assert isinstance(cgoom.load_policy("priority"), cgoom.Policy)
        assert cgoom.available_policies()["priority"] == "built in"

    def test_unknown_name(self) -> None:
        with pytest.raises(cgoom.PluginError,
                           match=r"no policy named 'nope'; available: .*priority"):
            cgoom.load_policy("nope")

    def test_bad_arguments_name_the_policy(self) -> None:
        with pytest.raises(cgoom.PluginError, match=r"policy 'largest' .* refused its arguments"):
            cgoom.load_policy("largest", size=3)

    @pytest.mark.parametrize(("policy", "match"), [
        (42, "cannot be called"),
        (lambda incident, candidates: None, "has no `name`"),
    ])
    def test_validation(self, policy: object, match: str) -> None:
        with pytest.raises(cgoom.PluginError, match=match):
            cgoom.validate_policy(policy, plugin="x")

    def test_validation_runs_a_trial(self) -> None:
        class Wrong:
            name = "wrong"

            def __call__(self, incident: Incident, candidates: Mapping[str, S]) -> cgoom.Decision:
                return cgoom.Decision("wrong", (cgoom.Victim("/trial/c", 1, "omitted!", True),))

        with pytest.raises(cgoom.PluginError, match="chose /trial/c, which is not a unit"):
            cgoom.validate_policy(Wrong(), plugin="wrong")


class TestDecide:
    def test_good_policy_decides(self) -> None:
        d = cgoom.decide(cgoom.largest(), Incident("/jobs"), JOBS)
        assert d.policy == "largest" and d.notes == ()

    def test_raising_policy_falls_back(self) -> None:
        class Broken:
            name = "broken"

            def __call__(self, incident: Incident, candidates: Mapping[str, S]) -> cgoom.Decision:
                raise ZeroDivisionError("oops")

        d = cgoom.decide(Broken(), Incident("/jobs"), JOBS)
        assert d.policy == "priority" and victims(d)[0] == "/jobs/cache"
        assert d.notes == ("policy 'broken' raised ZeroDivisionError: oops; 'priority' decided",)

    def test_slow_policy_falls_back(self) -> None:
        ticks = iter([0.0, 0.5])
        d = cgoom.decide(cgoom.largest(), Incident("/jobs"), JOBS, budget=0.1,
                         clock=lambda: next(ticks))
        assert d.policy == "priority"
        assert "took 500.0 ms, over its budget of 100 ms" in d.notes[0]

    def test_forbidden_victim_falls_back(self) -> None:
        class Rogue:
            name = "rogue"

            def __call__(self, incident: Incident, candidates: Mapping[str, S]) -> cgoom.Decision:
                return cgoom.Decision("rogue", (cgoom.Victim("/elsewhere", 1, "x", True),))

        d = cgoom.decide(Rogue(), Incident("/jobs"), JOBS, fallback=cgoom.largest())
        assert d.policy == "largest"
        assert "chose /elsewhere" in d.notes[0]


# --- the guard against policies that lie, cheat or hang (issue #8 §3) ---------------------


WITH_PROCS = tree(
    S("/t", usage=300 * M, populated=True),
    S("/t/low", usage=100 * M, populated=True, pids=(10, 11), processes=(
        ProcessSnapshot(10, "guardian", -1000, 90 * M), ProcessSnapshot(11, "w", 0, 5 * M))),
    S("/t/omitted", usage=150 * M, populated=True, preference="omit", oom_group=True),
    S("/t/db", usage=50 * M, populated=True, priority=100, pids=(20,),
      processes=(ProcessSnapshot(20, "db", 0, 50 * M),)),
)


def policy_of(func: Callable[[Incident, Mapping[str, S]], object], name: str = "p") -> object:
    class P:
        def __call__(self, incident: Incident, candidates: Mapping[str, S]) -> object:
            return func(incident, candidates)

    p = P()
    p.name = name  # type: ignore[attr-defined]
    return p


def decide_with(func: Callable[[Incident, Mapping[str, S]], object], **kw: Any) -> cgoom.Decision:
    return cgoom.decide(policy_of(func), Incident("/t"), WITH_PROCS, **kw)  # type: ignore[arg-type]


class TestGuard:
    def test_never_a_pid_with_oom_score_adj_minus_1000(self) -> None:
        d = decide_with(lambda i, c: cgoom.Decision(
            "p", [cgoom.Victim("/t/low", 1, "x", False, 10)]))
        assert "whose oom_score_adj is -1000 (never killed)" in d.notes[0]
        assert (d.policy, d.first.pid if d.first else None) == ("priority", 11)

    def test_mutating_the_candidates_cannot_unomit(self) -> None:
        def cheat(i: Incident, c: Mapping[str, S]) -> cgoom.Decision:
            c["/t/omitted"] = attrs.evolve(c["/t/omitted"], preference=None)  # type: ignore[index]
            return cgoom.Decision("p", [cgoom.Victim("/t/omitted", 1, "x", True)])

        d = decide_with(cheat)
        assert "raised TypeError" in d.notes[0] and "/t/omitted" not in victims(d)
        assert WITH_PROCS["/t/omitted"].preference == "omit"

    def test_forged_answers(self) -> None:
        bad_whole = decide_with(lambda i, c: cgoom.Decision(
            "p", [cgoom.Victim("/t/db", 1, "x", "no")]))  # type: ignore[arg-type]
        assert "chose a victim with whole='no', which is not a bool" in bad_whole.notes[0]
        assert bad_whole.policy == "priority"
        twice = decide_with(lambda i, c: cgoom.Decision(
            "p", [cgoom.Victim("/t/db", 1, "x", False, 20)] * 2))
        assert "chose /t/db (pid 20) twice" in twice.notes[0]
        forced = cgoom.Decision("p", [])
        object.__setattr__(forced, "victims", [cgoom.Victim("/t/db", 1, "x", False, 20)])
        sneaky = decide_with(lambda i, c: forced)
        assert "returned victims that are not a tuple" in sneaky.notes[0]
        nan = decide_with(lambda i, c: cgoom.Decision(
            "p", [cgoom.Victim("/t/db", float("nan"), "x", False, 20)]))
        assert "score=nan, which is not a number" in nan.notes[0]
        pid = decide_with(lambda i, c: cgoom.Decision(
            "p", [cgoom.Victim("/t/db", 1, "x", False, True)]))  # type: ignore[arg-type]
        assert "pid=True, which is not an int" in pid.notes[0]

    def test_a_generator_of_victims_is_kept(self) -> None:
        d = decide_with(lambda i, c: cgoom.Decision(
            "p", (v for v in [cgoom.Victim("/t/db", 1, "x", False, 20)])))
        assert d.policy == "p" and d.first is not None and d.first.pid == 20

    @pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
    def test_base_exceptions_never_escape(self, exc: BaseException) -> None:
        def boom(i: Incident, c: Mapping[str, S]) -> cgoom.Decision:
            raise exc

        d = decide_with(boom)
        assert d.policy == "priority" and f"raised {type(exc).__name__}" in d.notes[0]

    def test_a_hanging_policy_is_abandoned_within_its_budget(self) -> None:
        release = threading.Event()

        def hang(i: Incident, c: Mapping[str, S]) -> cgoom.Decision:
            release.wait(10)
            return cgoom.Decision("p", [cgoom.Victim("/t/db", 1, "x", False, 20)])

        policy = policy_of(hang, "hang")
        started = time.monotonic()
        d = cgoom.decide(policy, Incident("/t"), WITH_PROCS, budget=0.05)  # type: ignore[arg-type]
        assert time.monotonic() - started < 2  # not the 10 s it would take
        assert d.policy == "priority" and "did not answer within its budget of 50 ms" in d.notes[0]
        # While its call runs on, it is not called again: straight to the fallback.
        again = cgoom.decide(policy, Incident("/t"), WITH_PROCS, budget=0.05)  # type: ignore[arg-type]
        assert "still running a call that overran its budget" in again.notes[0]
        # Other policies are served by a fresh worker meanwhile.
        assert cgoom.decide(cgoom.largest(), Incident("/t"), WITH_PROCS).policy == "largest"
        release.set()
        for _ in range(100):
            later = cgoom.decide(policy, Incident("/t"), WITH_PROCS, budget=1)  # type: ignore[arg-type]
            if later.policy == "p":
                break
            time.sleep(0.02)
        assert later.policy == "p"  # once the old call ended, it is trusted again

    async def test_adecide_keeps_the_loop_running(self) -> None:
        release = threading.Event()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        try:
            d = await cgoom.adecide(policy_of(lambda i, c: release.wait(5), "slow"),  # type: ignore[arg-type]
                                    Incident("/t"), WITH_PROCS, budget=0.1)
        finally:
            task.cancel()
            release.set()
        assert d.policy == "priority" and ticks >= 5

    def test_fallback_keeps_the_callers_granularity(self) -> None:
        whole = cgoom.largest(whole=True)
        broken = attrs.evolve(whole, key=lambda s: 1 / 0)  # type: ignore[misc]
        d = cgoom.decide(broken, Incident("/t"), WITH_PROCS)
        assert d.policy == "priority" and all(v.whole for v in d.victims)
        assert [v.cgroup for v in d.victims] == ["/t/low", "/t/db"]

    def test_a_broken_fallback_still_decides(self) -> None:
        d = decide_with(lambda i, c: 1 / 0, fallback=policy_of(lambda i, c: None, "f"))  # type: ignore[arg-type]
        assert d.policy == "priority" and "the fallback 'f' returned a NoneType" in d.notes[0]

    def test_empty_decisions_say_why(self) -> None:
        all_omitted = {p: attrs.evolve(s, preference="omit") if p != "/t" else s
                       for p, s in WITH_PROCS.items()}
        d = cgoom.decide(cgoom.PriorityPolicy(), Incident("/t"), all_omitted)
        assert d.victims == () and "no victim: nothing in /t may be chosen" in d.notes[-1]
        missing = cgoom.decide(cgoom.PriorityPolicy(), Incident("/gone"), WITH_PROCS)
        assert "no victim: /gone was not in the snapshot" in missing.notes[-1]
        chose_none = decide_with(lambda i, c: cgoom.Decision("p", ()))
        assert chose_none.notes == ("no victim: the policy chose none of the 2 unit(s) of /t",)

    @pytest.mark.parametrize(("name", "args"), [
        ("priority", {"whole": "no"}), ("largest", {"whole": 0}),
        ("killable-first", {"whole": "yes"}),
    ])
    def test_impossible_arguments_are_refused(self, name: str, args: dict[str, object]) -> None:
        with pytest.raises(cgoom.PluginError, match="refused its arguments"):
            cgoom.load_policy(name, **args)

    def test_validation_catches_a_hanging_plugin(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import cgoom._decide._plugins

        monkeypatch.setattr(cgoom._decide._plugins, "VALIDATION_BUDGET", 0.05)
        gate = threading.Event()
        with pytest.raises(cgoom.PluginError, match="did not answer within its budget"):
            cgoom.validate_policy(policy_of(lambda i, c: gate.wait(5), "sleepy"), plugin="sleepy")
        gate.set()


def test_builtins_run_inline_plugins_in_the_guard() -> None:
    """cgoom's own bounded policies skip the thread hop; anything that may carry user code
    (plugins, RankBy) runs in the guard's thread with its deadline."""
    from cgoom._decide._plugins import runs_inline

    assert runs_inline(cgoom.PriorityPolicy()) and runs_inline(cgoom.KubernetesQoSPolicy())
    assert runs_inline(cgoom.KillableFirstPolicy())
    assert not runs_inline(cgoom.KillableFirstPolicy(then=cgoom.largest()))
    assert not runs_inline(cgoom.largest()) and not runs_inline(policy_of(lambda i, c: None))


async def test_the_descent_on_the_loop_lets_it_run(tree: FakeCgroupTree) -> None:
    # adescend reads on the event loop (no thread to wait for), pausing after every
    # DESCENT_SLICE cgroups: 150 children of one cgroup are read in three slices, and the
    # result is the same as descend()'s.
    from cgoom._decide._snapshot import DESCENT_SLICE

    for i in range(150):
        tree.add(f"dom/c{i}", memory_current=(i % 13 + 1) << 20,
                 procs=[60_000 + i]).set_memory_oom_group(True)
    structure = [str(c.path) for c in tree.hierarchy.cgroup("dom").walk()]
    snapshotter = cgoom.Snapshotter(tree.hierarchy)
    policy = cgoom.PriorityPolicy()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    running = asyncio.get_running_loop().create_task(ticker())
    await asyncio.sleep(0)
    ticks = 0
    snaps, stop = await snapshotter.adescend("/dom", policy.descend, paths=structure,
                                             fields=cgoom.policy_fields(policy))
    during = ticks
    running.cancel()
    assert 151 // DESCENT_SLICE <= during <= 151 // DESCENT_SLICE + 1
    again, stop_again = snapshotter.descend("/dom", policy.descend, paths=structure,
                                            fields=cgoom.policy_fields(policy))
    assert stop == stop_again == "/dom/c103"  # the largest (13M), first by path

    def aged(records: Mapping[str, S]) -> dict[str, S]:
        return {p: attrs.evolve(r, age=None) for p, r in records.items()}
    assert aged(snaps) == aged(again)
