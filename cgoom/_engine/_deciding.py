"""The decision of one incident: the domain's snapshot, read where it costs least, and the
rule's policy under its guard.

Owns nothing but the snapshotter's use: small domains are read on the loop's thread (a few
file reads cost less than the hop to a thread and back: 105 ms measured for 4 cgroups in a
loaded VM), large ones in the snapshotter's thread, and the priority policy's large domains
level by level (:meth:`Snapshotter.adescend`). Declared background-killable cgroups are
marked through ``mark`` (the notifier's). A dry run's rule is decided as if its set-up
were in place (``memory.oom.group`` where it would have set it: :func:`as_if_set_up`).
Writes nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection

import attrs

from .._decide._candidates import CgroupSnapshot, Incident
from .._decide._plugins import adecide, decide
from .._decide._policy import Decision, Policy, PriorityPolicy
from .._decide._snapshot import Snapshotter, policy_fields
from .._kernel._clock import Clock
from .._kernel._paths import parent_path
from ._notifier import Declared, with_declared
from ._rules import Rule
from ._setup import matches

#: Domains of at most this many cgroups are snapshotted on the loop's thread (about 0.1 ms a
#: cgroup); larger ones in the snapshotter's thread, so the loop never stalls on them.
INLINE_SNAPSHOT_CGROUPS = 64

Snaps = dict[str, CgroupSnapshot]
Mark = Callable[[Snaps], Snaps]


@attrs.frozen
class Decided:
    """A decision and what it was made on: the snapshot, when the snapshot was done
    (monotonic), and whether it came from a descent (which vouches for its first victim
    only)."""

    snaps: Snaps
    decision: Decision
    snapshot_done: float
    descended: bool = False


class Deciding:
    """Snapshots and decisions for a handler; ``mark``: marks declared cgroups,
    ``declared``: the declarations now (a copy, for a walk over several loop turns)."""

    def __init__(self, snapshotter: Snapshotter, clock: Clock, *, mark: Mark,
                 declared: Callable[[], Collection[Declared]],
                 own_cgroup: str) -> None:
        self.snapshotter = snapshotter
        self.clock = clock
        self._mark, self._declared = mark, declared
        self.own_cgroup = own_cgroup

    def incident(self, rule: Rule, trigger: str) -> Incident:
        return Incident.create(rule.domain, trigger, own_cgroup=self.own_cgroup)

    async def decide(self, rule: Rule, policy: Policy, paths: list[str],
                     incident: Incident) -> Decided:
        """The rule's decision on the domain's ``paths``, read where it costs least."""
        if len(paths) <= INLINE_SNAPSHOT_CGROUPS:
            snaps = self._marked(rule, paths, self.snapshotter.snapshot(
                rule.domain, fields=policy_fields(policy), paths=paths))
            done = self.clock.monotonic()
            return Decided(snaps, await adecide(policy, incident, snaps, budget=rule.budget),
                           done)
        if isinstance(policy, PriorityPolicy):
            return await self._descend(rule, policy, paths, incident)
        return await self.read_all(rule, policy, paths, incident)

    async def read_all(self, rule: Rule, policy: Policy, paths: list[str],
                       incident: Incident) -> Decided:
        """A snapshot of the whole domain in the snapshotter's thread, and the decision."""
        snaps = self._marked(rule, paths, await self.snapshotter.asnapshot(
            rule.domain, fields=policy_fields(policy), paths=paths))
        done = self.clock.monotonic()
        return Decided(snaps, await adecide(policy, incident, snaps, budget=rule.budget), done)

    async def _descend(self, rule: Rule, policy: PriorityPolicy, paths: list[str],
                       incident: Incident) -> Decided:
        """The priority policy's decision on a snapshot read level by level
        (:meth:`Snapshotter.descend`): only the children of the cgroups it goes into. Its
        first victim is kept if it is the unit the descent stopped at (then it is the full
        ranking's first: every sibling on the way was read and compared as the policy
        compares them); otherwise, or when nothing was found, the whole domain is read."""
        # A copy: the walk lets the loop run between slices, and a declaration arriving
        # meanwhile must not make two levels of one descent disagree.
        declared = frozenset(self._declared())
        steps: list[Callable[[CgroupSnapshot], CgroupSnapshot]] = \
            [functools.partial(with_declared, declared=declared)] if declared else []
        as_if = as_if_set_up(rule, paths)
        if as_if is not None:
            steps.append(as_if)
        snaps, stop = await self.snapshotter.adescend(
            rule.domain, policy.descend, paths=paths, fields=policy_fields(policy),
            adjust=functools.partial(_each, steps) if steps else None)
        done = self.clock.monotonic()
        if stop is not None:
            decision = await adecide(policy, incident, snaps, budget=rule.budget)
            first = decision.first
            if first is not None and first.cgroup == stop and decision.policy == policy.name:
                return Decided(snaps, attrs.evolve(decision, victims=(first,), notes=(
                    *decision.notes, f"read level by level: {len(snaps)} of {len(paths)} "
                    "cgroups; a next victim, if needed, from a snapshot of the whole "
                    "domain")), done, descended=True)
        why = ("found nothing" if stop is None else
               f"stopped at {stop}, not where the full ranking starts")
        full = await self.read_all(rule, policy, paths, incident)
        return attrs.evolve(full, decision=attrs.evolve(full.decision, notes=(
            *full.decision.notes, f"the descent {why}: the whole domain was read")))

    def _marked(self, rule: Rule, paths: list[str], snaps: Snaps) -> Snaps:
        as_if = as_if_set_up(rule, paths)
        if as_if is not None:
            snaps = {path: as_if(snap) for path, snap in snaps.items()}
        return self._mark(snaps)

    def decide_now(self, rule: Rule, policy: Policy, trigger: str,
                   ) -> tuple[Decision, tuple[CgroupSnapshot, ...]]:
        """From any thread (the stall watchdog's, the loop being stalled): the domain walked
        and read now (the loop's list of cgroups may be stale), the policy under its guard
        and budget. Raises what reading raises (``CgoomError``, ``OSError``)."""
        snaps = self._mark(self.snapshotter.snapshot(rule.domain,
                                                     fields=policy_fields(policy)))
        decision = decide(policy, self.incident(rule, trigger), snaps, budget=rule.budget)
        return decision, tuple(snaps.values())


def as_if_set_up(rule: Rule, paths: Collection[str],
                 ) -> Callable[[CgroupSnapshot], CgroupSnapshot] | None:
    """For a dry run's rule with a memory.oom.group set-up (``oom_group_leaves``,
    ``oom_group``): each record as if cgoom had set it (the decision then is the one cgoom
    would have made). ``None`` when there is nothing to pretend."""
    if not rule.dry_run or not (rule.oom_group_leaves or rule.oom_group):
        return None
    leaves = set(paths) - {parent_path(p) for p in paths if p != "/"} \
        if rule.oom_group_leaves else set()

    def as_if(snap: CgroupSnapshot) -> CgroupSnapshot:
        if snap.oom_group is not True and (snap.path in leaves or (
                rule.oom_group and matches(snap.path, rule.oom_group))):
            return attrs.evolve(snap, oom_group=True)
        return snap
    return as_if


def _each(steps: list[Callable[[CgroupSnapshot], CgroupSnapshot]],
          snap: CgroupSnapshot) -> CgroupSnapshot:
    for step in steps:
        snap = step(snap)
    return snap
