"""Finding, validating and running policies: built-ins and plugins.

Plugins are found through the entry-point group ``cgoom.policies``: the entry point's name is
the policy's name, and it points at a factory (a function or class) that takes the policy's
arguments as keywords and returns a :class:`~cgoom.Policy`. A plugin is validated when it is
loaded, not when memory runs out (pluggy's habit): it must import, accept its arguments, have
a name, and answer a small test incident with a valid, repeatable decision. Any failure is a
:class:`PluginError` naming the plugin and where it came from.

At incident time :func:`decide` runs the chosen policy and checks its answer; if the policy
raises, runs past its time budget, or names a cgroup it must not (outside the incident,
omitted, protected, a pid not in the cgroup), the default policy decides instead and the
decision's ``notes`` say why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ._errors import CgoomError
from ._policy import (
    Decision,
    Incident,
    KillableFirstPolicy,
    KubernetesQoSPolicy,
    Policy,
    PriorityPolicy,
    growth,
    largest,
    pressure,
    swap,
    units,
)
from ._snapshot import CgroupSnapshot

ENTRY_POINT_GROUP = "cgoom.policies"

#: The built-in policies by name; each takes its options as keyword arguments.
BUILTIN_POLICIES: dict[str, Callable[..., Policy]] = {
    "priority": PriorityPolicy,
    "largest": largest,
    "growth": growth,
    "pressure": pressure,
    "swap": swap,
    "killable-first": KillableFirstPolicy,
    "kubernetes-qos": KubernetesQoSPolicy,
}


class PluginError(CgoomError):
    """A policy plugin cannot be used; the message names it and says why. ``plugin`` is the
    policy's name."""

    def __init__(self, message: str, *, plugin: str) -> None:
        super().__init__(message)
        self.plugin = plugin


if TYPE_CHECKING:
    from importlib.metadata import EntryPoint


def _entry_points() -> dict[str, EntryPoint]:
    # importlib.metadata scans sys.path: loaded here, when a plugin is looked up.
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist
    where = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {ep.name} = {ep.value}{where}"


def available_policies() -> dict[str, str]:
    """Every policy name that :func:`load_policy` accepts, with where it comes from."""
    found = {name: "built in" for name in BUILTIN_POLICIES}
    for name, ep in sorted(_entry_points().items()):
        found.setdefault(name, _origin(ep))
    return found


def load_policy(name: str, /, **args: Any) -> Policy:
    """The policy ``name`` (a built-in, else a ``cgoom.policies`` plugin) made with ``args``
    and validated; :class:`PluginError` says what is wrong. Built-ins cannot be overridden
    by a plugin of the same name."""
    factory = BUILTIN_POLICIES.get(name)
    origin = "built-in policy"
    if factory is None:
        ep = _entry_points().get(name)
        if ep is None:
            known = ", ".join(sorted(available_policies()))
            raise PluginError(f"no policy named {name!r}; available: {known}", plugin=name)
        origin = _origin(ep)
        try:
            factory = ep.load()
        except Exception as exc:
            raise PluginError(f"policy plugin {name!r} ({origin}) failed to import: "
                              f"{type(exc).__name__}: {exc}", plugin=name) from exc
        if not callable(factory):
            raise PluginError(f"policy plugin {name!r} ({origin}) is a "
                              f"{type(factory).__name__}, not a factory to call", plugin=name)
    try:
        policy = factory(**args)
    except Exception as exc:
        raise PluginError(f"policy {name!r} ({origin}) refused its arguments {args!r}: "
                          f"{type(exc).__name__}: {exc}", plugin=name) from exc
    validate_policy(policy, plugin=name, origin=origin)
    return policy


def _trial() -> tuple[Incident, dict[str, CgroupSnapshot]]:
    snap = CgroupSnapshot
    return Incident("/trial", "validation"), {
        "/trial": snap("/trial", usage=700, populated=True),
        "/trial/a": snap("/trial/a", usage=300, populated=True, oom_group=True, priority=1),
        "/trial/b": snap("/trial/b", usage=400, populated=True, oom_group=True),
        "/trial/c": snap("/trial/c", usage=50, populated=True, oom_group=True,
                         preference="omit"),
    }


def validate_policy(policy: object, *, plugin: str, origin: str = "policy") -> None:
    """Check that ``policy`` keeps the contract; :class:`PluginError` if not."""
    label = f"policy {plugin!r} ({origin})"
    if not callable(policy):
        raise PluginError(f"{label} made a {type(policy).__name__}, which cannot be called",
                          plugin=plugin)
    name = getattr(policy, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"{label} has no `name` (a non-empty str) to put in incident records",
                          plugin=plugin)
    incident, candidates = _trial()
    try:
        first = policy(incident, candidates)
        second = policy(incident, candidates)
    except Exception as exc:
        raise PluginError(f"{label} raised on a test incident: {type(exc).__name__}: {exc}",
                          plugin=plugin) from exc
    problem = decision_problem(first, incident, candidates)
    if problem is None and first != second:
        problem = "gave two different answers to the same input (policies must be deterministic)"
    if problem is not None:
        raise PluginError(f"{label} {problem} on a test incident", plugin=plugin)


def decision_problem(decision: object, incident: Incident,
                     candidates: Mapping[str, CgroupSnapshot]) -> str | None:
    """Why ``decision`` must not be acted on, or ``None``."""
    if not isinstance(decision, Decision):
        return f"returned a {type(decision).__name__}, not a cgoom.Decision"
    allowed = {s.path for s in units(incident, candidates)}
    for victim in decision.victims:
        snapshot = candidates.get(victim.cgroup)
        if snapshot is None or victim.cgroup not in allowed:
            return (f"chose {victim.cgroup}, which is not a unit it may kill for {incident.cgroup}"
                    " (outside the subtree, omitted, protected, empty, or inside a unit)")
        if not victim.whole and (victim.pid is None or victim.pid not in snapshot.pids):
            return f"chose pid {victim.pid}, which is not in {victim.cgroup}"
    return None


def decide(
    policy: Policy,
    incident: Incident,
    candidates: Mapping[str, CgroupSnapshot],
    *,
    budget: float = 0.1,
    fallback: Policy | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Decision:
    """Run ``policy`` and return its decision, or the ``fallback``'s (default: priority)
    when it raised, took longer than ``budget`` seconds, or chose what it may not; the
    decision's notes then say what happened. The budget is checked, not enforced: a policy
    runs to its end (there is no safe way to stop Python code midway), and then its answer
    is discarded."""
    started = clock()
    try:
        decision = policy(incident, candidates)
        problem = decision_problem(decision, incident, candidates)
    except Exception as exc:
        problem = f"raised {type(exc).__name__}: {exc}"
    elapsed = clock() - started
    if problem is None and elapsed > budget:
        problem = f"took {elapsed * 1000:.1f} ms, over its budget of {budget * 1000:.0f} ms"
    if problem is None:
        assert isinstance(decision, Decision)
        return decision
    backup = fallback if fallback is not None else PriorityPolicy()
    answer = backup(incident, candidates)
    name = getattr(policy, "name", repr(policy))
    return attrs.evolve(answer, notes=(*answer.notes,
                                       f"policy {name!r} {problem}; {answer.policy!r} decided"))
