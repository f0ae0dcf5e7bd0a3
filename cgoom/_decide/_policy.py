"""Victim selection: the policy contract and the built-in policies. Pure: no I/O, no clock.

A policy is any callable ``policy(incident, candidates) -> Decision`` with a ``name``:
``candidates`` maps each cgroup path of the incident's subtree to its
:class:`~cgoom.CgroupSnapshot`; the decision lists victims in the order to kill them, each
with a machine-readable ``score`` and a sentence saying why. Same input, same answer: every
ordering ends with the path, so ties are broken by a stated rule.

What may be chosen (:func:`units`), for every built-in:

- a *unit* is a cgroup that dies whole (``memory.oom.group=1``) or a leaf; nothing below a
  ``memory.oom.group`` cgroup is considered separately (the kernel kills it as one);
- the processes living directly in a cgroup that also has children are a unit too (an
  *internal* unit, ``CgroupSnapshot.internal``): they give up single processes, never the
  cgroup whole; threaded cgroups are not units (their threaded domain is);
- never a cgroup marked ``omit``, nor anything below one;
- never cgoom's own cgroup or its ancestors (``Incident.protected``), nor their processes;
- never a cgroup outside the incident's subtree;
- only units with something to free: populated (or unknown) and usage above zero (or unknown).

A unit that is not killed whole gives up one process: the highest ``oom_score_adj``, ties to
the largest RSS (Google's handler, step 6); ``oom_score_adj`` -1000 is never chosen, as the
kernel's OOM killer never chooses it, nor one whose ``oom_score_adj`` could not be read.

A policy may declare ``fields`` (a frozenset of ``cgoom.FIELDS`` names): a snapshot for it
then reads only those, plus what every snapshot holds. The built-ins declare theirs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import attrs

from .._kernel._parse import format_size
from .._kernel._paths import ancestors_and_self, inside
from ._candidates import (
    CgroupSnapshot,
    Incident,
    ProcessSnapshot,
    str_tuple,
    tree_children,
)


def _size(value: int | None) -> str:
    return "unknown" if value is None else format_size(value)


@attrs.frozen
class Victim:
    """One entry of a decision: kill ``cgroup`` whole (``whole``), or process ``pid`` in it.

    ``cgroup_id`` and ``start_time`` are the identity the decision was made on (the
    cgroup's inode, the process's start time): whoever acts re-checks them first
    (:meth:`cgoom.Snapshotter.recheck`), so a cgroup re-created at the same path, or a
    reused pid, is never hit by an older decision. :func:`make_victim` fills them.

    The types are checked by :func:`cgoom.decide` (a victim with ``whole="no"`` or a
    ``pid`` that is not an ``int`` makes the decision fall back), not here: policies build
    a thousand of these per decision.
    """

    cgroup: str
    #: The policy's number for this victim (bigger means "kill sooner" within one policy).
    score: float
    #: A sentence for humans: why this one, with the numbers.
    reason: str
    whole: bool
    pid: int | None = None
    cgroup_id: int | None = attrs.field(default=None, kw_only=True)
    start_time: int | None = attrs.field(default=None, kw_only=True)


def victim_problem(victim: object) -> str | None:
    """Why ``victim`` is not a well-formed :class:`Victim`, or ``None``."""
    if not isinstance(victim, Victim):
        return f"gave a {type(victim).__name__} as a victim, not a cgoom.Victim"
    checks: tuple[tuple[str, object, tuple[type, ...], bool], ...] = (
        ("cgroup", victim.cgroup, (str,), False), ("reason", victim.reason, (str,), False),
        ("whole", victim.whole, (bool,), False), ("pid", victim.pid, (int,), True),
        ("cgroup_id", victim.cgroup_id, (int,), True),
        ("start_time", victim.start_time, (int,), True),
    )
    for name, value, types, optional in checks:
        if (value is None and optional) or (isinstance(value, types) and not (
                name != "whole" and isinstance(value, bool))):
            continue
        kind = {"str": "a str", "bool": "a bool", "int": "an int"}[types[0].__name__]
        return f"chose a victim with {name}={value!r}, which is not {kind}"
    score: object = victim.score
    if isinstance(score, bool) or not isinstance(score, int | float) or math.isnan(score):
        return f"chose a victim with score={score!r}, which is not a number"
    return None


def _victims(value: Iterable[Victim]) -> tuple[Victim, ...]:
    return tuple(value)


@attrs.frozen
class Decision:
    """A policy's answer: ``victims`` in the order to kill them (the first one first). Any
    iterable of :class:`Victim` is taken (and kept as a tuple)."""

    policy: str = attrs.field(validator=attrs.validators.instance_of(str))
    victims: tuple[Victim, ...] = attrs.field(converter=_victims)
    #: Remarks for the incident record, e.g. that a plugin failed and a fallback decided,
    #: or why there is no victim at all.
    notes: tuple[str, ...] = attrs.field(default=(), converter=str_tuple)

    @property
    def first(self) -> Victim | None:
        return self.victims[0] if self.victims else None


@runtime_checkable
class Policy(Protocol):
    """Chooses victims. Must be pure, deterministic and fast (see docs/writing-a-policy.md)."""

    @property
    def name(self) -> str: ...

    def __call__(self, incident: Incident,
                 candidates: Mapping[str, CgroupSnapshot]) -> Decision: ...


# --- shared rules ----------------------------------------------------------------------------


def has_memory(snapshot: CgroupSnapshot) -> bool:
    """Something to free: populated (or unknown), and usage above zero (or unknown) or
    processes of its own. cgroup v2 does not move a process's charges with it: one that
    moved in (a tenant moving its hog between its own cgroups) leaves its memory charged
    where it came from, and its new cgroup may read 0. Killing it frees that memory, so a
    cgroup with processes is a unit whatever its usage; its place among its siblings is
    ranked by its ancestors' usage, which holds the charge."""
    if snapshot.populated is False:
        return False
    return snapshot.usage is None or snapshot.usage > 0 or bool(snapshot.pids)


def internal_unit(snapshot: CgroupSnapshot) -> CgroupSnapshot:
    """The unit made of the processes living directly in ``snapshot``'s cgroup, which also
    has child cgroups: the same record with ``internal=True``, ``usage`` the sum of those
    processes' RSS (``None`` when they were not read). It ranks with its cgroup's own
    settings, as an implicit leaf beside the cgroup's children."""
    usage = sum(p.rss for p in snapshot.processes) if snapshot.processes else None
    return attrs.evolve(snapshot, internal=True, usage=usage, freeable=usage, oom_group=False,
                        populated=bool(snapshot.pids))


def units(incident: Incident, candidates: Mapping[str, CgroupSnapshot]) -> list[CgroupSnapshot]:
    """The units that may be chosen for ``incident``, by the rules in the module docstring,
    sorted by path (an internal unit right before its cgroup's children).

    A cgroup may hold processes of its own *and* child cgroups (legal while it enables no
    domain controller for them; the root cgroup always does): the kernel's memcg OOM killer
    sees those processes too, so they are a unit of their own (``internal=True``), which
    gives up single processes and never dies whole. Threaded cgroups are never units: their
    processes are those of their threaded domain, which ends the descent.
    """
    if incident.cgroup not in candidates:
        return []
    children = tree_children(candidates)
    found: list[CgroupSnapshot] = []

    def visit(path: str) -> tuple[bool, bool]:
        """Collect the units below ``path``; whether one of them has processes seen, and
        whether the subtree may die whole (nothing omitted or protected in it)."""
        snapshot = candidates[path]
        if snapshot.preference == "omit" or snapshot.threaded:
            return False, snapshot.threaded
        kids = [k for k in children.get(path, []) if not candidates[k].threaded]
        if (snapshot.oom_group is True or not kids) and path not in incident.protected:
            if has_memory(snapshot):
                found.append(snapshot)
            return bool(snapshot.pids) or snapshot.oom_group is True, True
        seen, whole = False, path not in incident.protected
        if snapshot.pids and path not in incident.protected:
            inner = internal_unit(snapshot)
            if has_memory(inner):
                found.append(inner)
                seen = True
        for kid in kids:
            kid_seen, kid_whole = visit(kid)
            seen, whole = seen or kid_seen, whole and kid_whole
        if (not seen and whole and path != incident.cgroup and snapshot.populated is True
                and (snapshot.usage or 0) > 0):
            # The kernel says processes live below and the subtree holds memory, but no
            # cgroup read showed one: they moved between its cgroups while those were read
            # (cgroup v2 leaves their memory charged where they were). The subtree is still
            # theirs to lose, before any higher-ranked sibling: it dies whole.
            found.append(attrs.evolve(snapshot, subtree=True))
            seen = True
        return seen, whole

    visit(incident.cgroup)
    return sorted(found, key=lambda s: (s.path, not s.internal))


def select_process(processes: Sequence[ProcessSnapshot]) -> ProcessSnapshot | None:
    """The process to kill inside a cgroup not killed whole: highest ``oom_score_adj``, then
    the one whose kill frees the most (``freeable`` where smaps_rollup was read, a policy
    asking for ``"pss"``; else RSS), then lowest pid; never one with ``oom_score_adj`` -1000
    (the kernel never kills those) or unknown."""
    eligible = [p for p in processes if p.oom_score_adj is not None and p.oom_score_adj > -1000]
    return max(eligible, key=lambda p: (p.oom_score_adj, p.frees, -p.pid), default=None)


def preference_rank(snapshot: CgroupSnapshot) -> int:
    """2 for ``prefer`` (kill sooner), 1 for none, 0 for ``avoid``."""
    return {"prefer": 2, "avoid": 0}.get(snapshot.preference or "", 1)


def make_victim(snapshot: CgroupSnapshot, score: float, reason: str,
                whole: bool | None) -> Victim | None:
    """A victim for ``snapshot``: whole if ``whole`` (``None``: if it has memory.oom.group=1),
    else its process chosen by :func:`select_process`; ``None`` when no process may die.
    An internal unit (processes beside child cgroups) never dies whole: ``cgroup.kill``
    would take its children too. The victim carries the identity to re-check."""
    if snapshot.unread:
        # Whole whatever the policy asked: no process of it was read, and passing it over
        # would let a tenant shield itself by making cgroups.
        return Victim(snapshot.path, score, f"{reason}; killed whole with its subtree: "
                      f"uid {snapshot.owner} made {snapshot.unread} cgroups below it, more "
                      "than a decision reads below a delegated cgroup (they were not read)",
                      True, cgroup_id=snapshot.inode)
    if snapshot.subtree:
        if whole is False:
            return None  # one process was asked for, and none of its processes was seen
        return Victim(snapshot.path, score, f"{reason}; killed whole with its subtree: the "
                      "kernel says processes live in it, none was seen in its cgroups (moved "
                      "between them while read)", True, cgroup_id=snapshot.inode)
    if snapshot.internal:
        reason = f"{reason}; its own processes (it also has child cgroups)"
    elif whole if whole is not None else bool(snapshot.oom_group):
        why = "memory.oom.group=1" if snapshot.oom_group else "this policy kills cgroups whole"
        return Victim(snapshot.path, score, f"{reason}; killed whole ({why})", True,
                      cgroup_id=snapshot.inode)
    process = select_process(snapshot.processes)
    if process is None:
        return None
    adj = process.oom_score_adj
    return Victim(snapshot.path, score,
                  f"{reason}; process {process.pid} ({process.name}): oom_score_adj "
                  f"{adj}, rss {_size(process.rss)}"
                  + ("" if process.freeable is None else
                     f" (pss {_size(process.pss)}, frees {_size(process.freeable)})"),
                  False, process.pid,
                  cgroup_id=snapshot.inode, start_time=process.start_time)


def _whole_fields(whole: bool | None, *names: str) -> frozenset[str]:
    return frozenset(names) if whole is True else frozenset({*names, "processes"})


def _whole_validator(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"whole={value!r}: True (kill units whole), False (one process) or "
                        "None (follow memory.oom.group)")


def _preference_note(snapshot: CgroupSnapshot) -> str:
    return {"prefer": ", preferred", "avoid": ", avoided"}.get(snapshot.preference or "", "")


# --- ranking policies ------------------------------------------------------------------------


@attrs.frozen
class RankBy:
    """A policy that ranks :func:`units` by ``key`` (bigger: kill sooner) after the
    preference (prefer, none, avoid), then by path. The building block of the flat built-ins
    and of plugins: ``RankBy("newest", key=lambda s: (-(s.age or 0),), ...)``.

    ``describe(snapshot)`` is the start of the human reason; ``score(snapshot)`` the number.
    ``whole``: kill units whole (``True``), follow memory.oom.group (``None``), or take one
    process from each (``False``). ``needs``: the snapshot fields ``key``, ``describe`` and
    ``score`` read (``cgoom.FIELDS``; ``None``: all), so a snapshot reads only those.
    """

    name: str
    key: Callable[[CgroupSnapshot], tuple[float, ...]]
    describe: Callable[[CgroupSnapshot], str]
    score: Callable[[CgroupSnapshot], float]
    whole: bool | None = attrs.field(default=True, validator=_whole_validator)
    needs: frozenset[str] | None = attrs.field(default=None, kw_only=True)

    @property
    def fields(self) -> frozenset[str] | None:
        """What a snapshot must read for this policy (``None``: everything)."""
        if self.needs is None:
            return None
        return _whole_fields(self.whole, *self.needs)

    def __call__(self, incident: Incident,
                 candidates: Mapping[str, CgroupSnapshot]) -> Decision:
        ranked = units(incident, candidates)  # sorted by path: the final tie-break
        ranked.sort(key=lambda s: (preference_rank(s), *self.key(s)), reverse=True)
        victims = []
        for s in ranked:
            victim = make_victim(s, self.score(s), self.describe(s) + _preference_note(s),
                                 self.whole)
            if victim is not None:
                victims.append(victim)
        return Decision(self.name, tuple(victims))


def frees(s: CgroupSnapshot) -> int:
    """What killing ``s`` gives back: its ``freeable`` memory where it was read, else its
    usage (page cache included)."""
    return s.freeable if s.freeable is not None else (s.usage or 0)


def _usage(s: CgroupSnapshot) -> str:
    """``usage 300M``, and what a kill frees of it where that was read and differs."""
    if s.freeable is None or s.freeable == s.usage:
        return f"usage {_size(s.usage)}"
    return f"usage {_size(s.usage)} (freeable {_size(s.freeable)})"


def _protected_size(s: CgroupSnapshot) -> int:
    usage = s.usage or 0
    return min(frees(s), usage - min(usage, s.protection))


def _describe_protected(s: CgroupSnapshot) -> str:
    protection = s.protection
    usage = s.usage or 0
    over = usage - min(usage, protection)
    text = f"usage {_size(s.usage)} minus protection {_size(protection)}: {_size(over)}"
    if s.freeable is not None and s.freeable < over:
        text += f", of which a kill frees {_size(s.freeable)}"
    return text


def largest(*, protection_aware: bool = True, whole: bool | None = True) -> RankBy:
    """The unit whose kill frees the most (oomd's kill_by_memory_size, on what a kill gives
    back rather than usage: :func:`frees`; ties by usage). With ``protection_aware``, no more
    than its usage minus its memory.min/low protection (oomd's protection-aware size)."""
    if protection_aware:
        return RankBy(
            "largest", key=lambda s: (_protected_size(s), s.usage or 0),
            describe=_describe_protected, score=lambda s: float(_protected_size(s)),
            whole=whole, needs=frozenset({"usage", "freeable", "memory_min", "memory_low"}))
    return RankBy("largest", key=lambda s: (frees(s), s.usage or 0),
                  describe=_usage, score=lambda s: float(frees(s)), whole=whole,
                  needs=frozenset({"usage", "freeable"}))


def growth(*, whole: bool | None = True) -> RankBy:
    """The unit growing fastest (bytes per second over the snapshotter's window), then the
    largest; units without a growth reading rank after those with one (oomd's
    kill_by_memory_size_or_growth, growth half)."""
    return RankBy(
        "growth",
        key=lambda s: (0 if s.growth is None else 1,
                       -math.inf if s.growth is None else s.growth, s.usage or 0),
        describe=lambda s: ("growth unknown" if s.growth is None
                            else f"growing {_size(int(s.growth))}/s") + f", usage {_size(s.usage)}",
        score=lambda s: -math.inf if s.growth is None else s.growth, whole=whole,
        needs=frozenset({"growth", "usage"}))


def pressure(*, kind: str = "some", window: str = "avg10", whole: bool | None = True) -> RankBy:
    """The unit with the highest memory pressure (PSI ``kind`` ``window``), then the largest
    (systemd-oomd's and oomd's pressure-based choice)."""
    if kind not in ("some", "full") or window not in ("avg10", "avg60", "avg300"):
        raise ValueError(f"pressure(kind={kind!r}, window={window!r}): kind is some or full, "
                         "window avg10, avg60 or avg300")

    def level(s: CgroupSnapshot) -> float:
        line = None if s.pressure is None else getattr(s.pressure, kind)
        return -1.0 if line is None else float(getattr(line, window))

    return RankBy(
        "pressure", key=lambda s: (level(s), s.usage or 0),
        describe=lambda s: f"memory pressure {kind} {window} "
                           f"{'unknown' if level(s) < 0 else f'{level(s):.2f}%'}, "
                           f"usage {_size(s.usage)}",
        score=level, whole=whole, needs=frozenset({"pressure", "usage"}))


def swap(*, whole: bool | None = True) -> RankBy:
    """The unit with the most swap (systemd-oomd's swap-based choice), then the largest."""
    return RankBy("swap", key=lambda s: (s.swap or 0, s.usage or 0),
                  describe=lambda s: f"swap {_size(s.swap)}, usage {_size(s.usage)}",
                  score=lambda s: float(s.swap or 0), whole=whole,
                  needs=frozenset({"swap", "usage"}))


_Key = tuple[int, int, int, int, int, int, str]


def priority_key(s: CgroupSnapshot) -> _Key:
    """How the priority policy orders siblings: lowest priority, then background-killable,
    then overlimit, then ``prefer`` before none before ``avoid``, then the one whose kill
    frees the most (:func:`frees`), then the largest usage, then the path (so no two tie)."""
    return (s.priority, 0 if s.killable else 1, 0 if s.overlimit else 1,
            -preference_rank(s), -frees(s), -(s.usage or 0), s.path)


@attrs.frozen
class PriorityPolicy:
    """Google's cgroup OOM handler: descend from the cgroup that ran out of memory; at each
    level take the child with the lowest priority; among equals, one declared
    background-killable (its state saved: ``user.cgoom.killable`` or a client's
    declaration) first, then one whose limit was raised temporarily (overlimit), then
    ``prefer`` before none before ``avoid``, then the one whose kill frees the most (its
    ``freeable`` memory: anonymous, swap and the processes' kernel memory, not page cache),
    then the largest usage, then the path. Stop at a unit (a leaf, or a
    ``memory.oom.group`` cgroup, which dies whole); inside a leaf, one process.

    With every priority equal it reduces to "free the most memory", level by level. The
    full order of victims is the same comparison applied to every unit's chain of ancestors.
    """

    #: ``None``: follow memory.oom.group (a unit with it dies whole, any other gives up one
    #: process); ``True``: kill units whole; ``False``: one process, even from an oom.group
    #: unit (whose other processes the kernel would kill with it on its own OOM).
    whole: bool | None = attrs.field(default=None, validator=_whole_validator)
    name: str = "priority"
    #: Choose the process inside a unit by what its kill frees (its private anonymous
    #: memory and share of swap, from /proc/<pid>/smaps_rollup), not by its RSS, which
    #: counts pages its forked siblings share. Costs a page-table walk per process.
    pss: bool = attrs.field(default=False, kw_only=True,
                            validator=attrs.validators.instance_of(bool))

    @property
    def fields(self) -> frozenset[str]:
        """What a snapshot must read for this policy."""
        fields = _whole_fields(self.whole, "usage", "freeable")
        return fields | {"pss"} if self.pss and self.whole is not True else fields

    def descend(self, node: CgroupSnapshot, kids: Sequence[CgroupSnapshot],
                is_leaf: Callable[[str], bool]) -> tuple[str, bool] | None:
        """One level of the descent, for a snapshot read level by level
        (:meth:`Snapshotter.descend`): ``node`` has children (``kids``, all of them, read);
        ``is_leaf(path)``: the cgroup has no children at all. Returns ``(path, True)`` to go
        on into that child, ``(path, False)`` to stop at that unit (a child, or ``node``'s own
        processes), ``None`` when nothing here may be chosen. The same comparison as
        :meth:`__call__`'s, so where it stops is where the full ranking starts (the engine
        checks that it is, and reads everything when not)."""
        options: list[tuple[_Key, str, bool]] = []
        domains = [k for k in kids if not k.threaded]
        if not domains:  # threaded children only: node is the unit
            return (node.path, False) if has_memory(node) else None
        for kid in domains:
            if kid.preference == "omit":
                continue
            unit = kid.oom_group is True or is_leaf(kid.path)
            if unit and not has_memory(kid):
                continue
            options.append((priority_key(kid), kid.path, not unit))
        if node.pids:
            inner = internal_unit(node)
            if has_memory(inner):
                options.append((priority_key(inner), node.path, False))
        if not options:
            return None
        _, path, deeper = min(options)
        return path, deeper

    def __call__(self, incident: Incident,
                 candidates: Mapping[str, CgroupSnapshot]) -> Decision:
        chosen = units(incident, candidates)
        depth = len([p for p in incident.cgroup.split("/") if p])

        chains: dict[str, tuple[_Key, ...]] = {}

        def path_chain(path: str) -> tuple[_Key, ...]:
            # The keys of ``path`` and its ancestors below the incident's cgroup, top down:
            # the descent compares siblings level by level. Memoised: siblings share it.
            found = chains.get(path)
            if found is None:
                depth_here = path.count("/") if path != "/" else 0
                if depth_here <= depth:
                    found = ()
                else:
                    parent = path.rsplit("/", 1)[0] or "/"
                    found = path_chain(parent) + ((priority_key(candidates[path]),)
                                                  if path in candidates else ())
                chains[path] = found
            return found

        def chain(s: CgroupSnapshot) -> tuple[_Key, ...]:
            # An internal unit is an implicit leaf child of its cgroup, ranked by its
            # cgroup's settings and its own usage (its path sorts before its cgroup's
            # children's). The incident's own cgroup, as a unit, has an empty chain.
            keys = path_chain(s.path)
            if s.internal:
                keys += (priority_key(s),)
            return keys or (priority_key(s),)

        chosen.sort(key=chain)
        victims = []
        for s in chosen:
            reason = (f"priority {s.priority}{', background-killable' if s.killable else ''}"
                      f"{', overlimit' if s.overlimit else ''}"
                      f"{_preference_note(s)}, {_usage(s)}; lowest priority first, "
                      f"level by level from {incident.cgroup}")
            victim = make_victim(s, float(-s.priority), reason, self.whole)
            if victim is not None:
                victims.append(victim)
        return Decision(self.name, tuple(victims))


@attrs.frozen
class KillableFirstPolicy:
    """Workloads that declared themselves background-killable (``user.cgoom.killable``)
    die first, largest first; then the rest in the order of ``then`` (default: priority)."""

    then: Policy = attrs.field(factory=PriorityPolicy)
    whole: bool | None = attrs.field(default=True, validator=_whole_validator)
    name: str = "killable-first"

    @property
    def fields(self) -> frozenset[str] | None:
        """What a snapshot must read for this policy (``None``: everything)."""
        then = getattr(self.then, "fields", None)
        return None if then is None else _whole_fields(self.whole, "usage") | then

    def __call__(self, incident: Incident,
                 candidates: Mapping[str, CgroupSnapshot]) -> Decision:
        killable = sorted((s for s in units(incident, candidates) if s.killable),
                          key=lambda s: (-(s.usage or 0), s.path))
        victims = []
        for s in killable:
            victim = make_victim(s, float(s.usage or 0),
                                 f"declared background-killable, usage {_size(s.usage)}",
                                 self.whole)
            if victim is not None:
                victims.append(victim)
        first = {s.path for s in killable}
        rest = self.then(incident, candidates)
        victims += [v for v in rest.victims if v.cgroup not in first]
        return Decision(self.name, tuple(victims), rest.notes)


_POD = re.compile(r"(kubepods-(besteffort-|burstable-)?)?pod[0-9a-fA-F_-]+(\.slice)?")
_QOS_RANK = {"besteffort": 0, "burstable": 1, "guaranteed": 2}


def qos_class(path: str) -> str | None:
    """The Kubernetes QoS class of a cgroup under kubepods (cgroupfs or systemd driver
    layouts), or ``None`` outside kubepods."""
    parts = [p for p in path.split("/") if p]
    if not any(p.startswith("kubepods") for p in parts):
        return None
    for part in parts:
        if "besteffort" in part:
            return "besteffort"
        if "burstable" in part:
            return "burstable"
    return "guaranteed"


def is_pod(path: str) -> bool:
    return bool(_POD.fullmatch(path.rsplit("/", 1)[1])) and qos_class(path) is not None


@attrs.frozen
class KubernetesQoSPolicy:
    """Pods by QoS class, as the kubelet evicts: BestEffort first, then Burstable by how far
    usage exceeds the request (memory.min or memory.low, as the kubelet's MemoryQoS sets
    them), then Guaranteed; within a class lower priority (``user.cgoom.priority``) first,
    then the largest. Pods die whole. Outside kubepods it ranks ordinary units by usage."""

    name: str = "kubernetes-qos"
    #: What a snapshot must read for this policy (pods die whole).
    fields: frozenset[str] = frozenset({"usage", "memory_min", "memory_low"})

    def __call__(self, incident: Incident,
                 candidates: Mapping[str, CgroupSnapshot]) -> Decision:
        pods = [s for path, s in candidates.items()
                if is_pod(path) and inside(path, incident.cgroup) and has_memory(s)
                and path not in incident.protected
                and not any(candidates.get(a) is not None
                            and candidates[a].preference == "omit"
                            for a in ancestors_and_self(path))]
        pool = sorted(pods, key=lambda s: s.path) or units(incident, candidates)

        def over_request(s: CgroupSnapshot) -> int:
            request = max((v for v in (s.memory_min, s.memory_low) if isinstance(v, int)),
                          default=0)
            return (s.usage or 0) - request

        def key(s: CgroupSnapshot) -> tuple[int, int, int, int, int]:
            qos = qos_class(s.path) or "guaranteed"
            return (_QOS_RANK[qos], -preference_rank(s), -over_request(s) if qos == "burstable"
                    else 0, s.priority, -(s.usage or 0))

        pool.sort(key=key)
        victims = []
        for s in pool:
            qos = qos_class(s.path) or "not a pod"
            extra = (f", {_size(over_request(s))} over its request" if qos == "burstable" else "")
            victim = make_victim(s, float(-_QOS_RANK.get(qos, 2)),
                                 f"QoS {qos}{extra}, priority {s.priority}, usage "
                                 f"{_size(s.usage)}{_preference_note(s)}", True)
            if victim is not None:
                victims.append(victim)
        return Decision(self.name, tuple(victims))
