"""Finding, validating and running policies: built-ins and plugins.

Plugins are found through the entry-point group ``cgoom.policies``: the entry point's name is
the policy's name, and it points at a factory (a function or class) that takes the policy's
arguments as keywords and returns a :class:`~cgoom.Policy`. A plugin is validated when it is
loaded, not when memory runs out (pluggy's habit): it must import, accept its arguments, have
a name, and answer a small test incident with a valid, repeatable decision. Any failure is a
:class:`PluginError` naming the plugin and where it came from.

At incident time :func:`decide` (or :func:`adecide` on the event loop) runs the chosen policy
and checks its answer. The policy gets a read-only view of the candidates, and runs in a
worker thread started before any incident, with a deadline (``budget``). If it raises
(anything, ``SystemExit`` included), does not answer in time, or names what it must not
(outside the incident, omitted, protected, empty, inside a unit, a pid not in the cgroup or
with ``oom_score_adj`` -1000, a cgroup whole where only its own processes may die, a
victim twice), the fallback decides instead (the priority policy with the caller's kill
granularity) and the decision's ``notes`` say why. A call that overran is abandoned: Python
cannot stop a thread, so it runs on in its own thread and its answer is discarded; until it
ends, that policy is not called again (its later incidents go straight to the fallback), and
a fresh worker serves the other policies. :func:`decide` never raises for anything a policy
does, and an empty decision always carries a note saying why.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import attrs

from .._errors import CgoomError
from .._kernel._worker import Worker
from ._candidates import CgroupSnapshot, Incident
from ._policy import (
    Decision,
    KillableFirstPolicy,
    KubernetesQoSPolicy,
    Policy,
    PriorityPolicy,
    growth,
    largest,
    pressure,
    select_process,
    swap,
    units,
    victim_problem,
)

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
                          f"{type(exc).__name__}: {exc}{_options_of(factory)}",
                          plugin=name) from exc
    validate_policy(policy, plugin=name, origin=origin)
    return policy


def _options_of(factory: Callable[..., object]) -> str:
    """"; it takes a, b" (or "; it takes no options"): the keywords ``factory`` accepts, to
    say with a refusal; empty where its signature cannot be read or takes ``**kwargs``."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return ""
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return ""
    names = [p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return f"; it takes {', '.join(names)}" if names else "; it takes no options"


def _trial() -> tuple[Incident, dict[str, CgroupSnapshot]]:
    snap = CgroupSnapshot
    return Incident("/trial", "validation"), {
        "/trial": snap("/trial", usage=700, populated=True),
        "/trial/a": snap("/trial/a", usage=300, populated=True, oom_group=True, priority=1),
        "/trial/b": snap("/trial/b", usage=400, populated=True, oom_group=True),
        "/trial/c": snap("/trial/c", usage=50, populated=True, oom_group=True,
                         preference="omit"),
    }


#: How long a plugin may take on the validation incident (four cgroups).
VALIDATION_BUDGET = 1.0


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
    fields = getattr(policy, "fields", None)
    if fields is not None and not (isinstance(fields, frozenset | set)
                                   and all(isinstance(f, str) for f in fields)):
        raise PluginError(f"{label} has `fields` = {fields!r}: a frozenset of snapshot field "
                          "names, or None for all", plugin=plugin)
    incident, candidates = _trial()
    answers = []
    for _ in range(2):
        decision, problem = _GUARD.call(policy, incident, candidates, VALIDATION_BUDGET)  # type: ignore[arg-type]
        if problem is not None:
            raise PluginError(f"{label} {problem} on a test incident", plugin=plugin)
        answers.append(decision)
    if answers[0] != answers[1]:
        raise PluginError(f"{label} gave two different answers to the same input (policies "
                          "must be deterministic) on a test incident", plugin=plugin)


def decision_problem(decision: object, incident: Incident,
                     candidates: Mapping[str, CgroupSnapshot],
                     allowed_units: list[CgroupSnapshot] | None = None) -> str | None:
    """Why ``decision`` must not be acted on, or ``None``. ``allowed_units``: what
    :func:`cgoom.units` gives for this incident, if already computed."""
    if not isinstance(decision, Decision):
        return f"returned a {type(decision).__name__}, not a cgoom.Decision"
    victims: object = decision.victims  # frozen, but a plugin can force anything in
    if not isinstance(victims, tuple):
        return "returned victims that are not a tuple"
    name: object = decision.policy
    if not isinstance(name, str):
        return f"named itself {name!r} in its decision, not a str"
    if allowed_units is None:
        allowed_units = units(incident, candidates)
    allowed = {(s.path, s.internal): s for s in allowed_units}
    seen: set[tuple[str, bool, int | None]] = set()
    for victim in victims:
        problem = victim_problem(victim)
        if problem is not None:
            return problem
        ident = (victim.cgroup, victim.whole, victim.pid)
        if ident in seen:
            return f"chose {victim.cgroup} (pid {victim.pid}) twice"
        seen.add(ident)
        unit = allowed.get((victim.cgroup, False))
        inner = allowed.get((victim.cgroup, True))
        if unit is None and inner is None:
            return (f"chose {victim.cgroup}, which is not a unit it may kill for {incident.cgroup}"
                    " (outside the subtree, omitted, protected, empty, or inside a unit)")
        if victim.whole and unit is None:
            return (f"chose {victim.cgroup} whole, but it has child cgroups: only its own "
                    "processes may die (cgroup.kill would take its children too)")
        if not victim.whole:
            snapshot = unit or inner
            assert snapshot is not None
            process = next((p for p in snapshot.processes if p.pid == victim.pid), None)
            if process is None or victim.pid not in snapshot.pids:
                return f"chose pid {victim.pid}, which is not a process read in {victim.cgroup}"
            if process.oom_score_adj is None or process.oom_score_adj <= -1000:
                return (f"chose pid {victim.pid} in {victim.cgroup}, whose oom_score_adj is "
                        f"{process.oom_score_adj} (never killed)")
    return None


class _Guard:
    """Runs policies in a worker thread with a deadline; remembers calls that overran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._worker: Worker | None = None
        #: Policies (by id) whose abandoned call is still running, with that call's future.
        self._overrunning: dict[int, tuple[object, concurrent.futures.Future[Any]]] = {}

    def start(self) -> Worker:
        with self._lock:
            if self._worker is None:
                self._worker = Worker("cgoom-policy")
            return self._worker

    def submit(self, policy: Policy, incident: Incident,
               view: Mapping[str, CgroupSnapshot],
               ) -> tuple[concurrent.futures.Future[Any] | None, str | None]:
        running = self._overrunning.get(id(policy))
        if running is not None:
            if not running[1].done():
                return None, ("is still running a call that overran its budget; not called "
                              "again until it ends")
            del self._overrunning[id(policy)]
        return self.start().submit(lambda: policy(incident, view)), None

    def abandon(self, policy: Policy, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._overrunning[id(policy)] = (policy, future)
            if self._worker is not None:
                self._worker.abandon()  # busy for good; it ends after the call, if ever
                self._worker = None
        # The replacement is started once this decision is made (decide/adecide): a thread
        # start must not delay the fallback at OOM time, nor the next incident.

    def outcome(self, policy: Policy, future: concurrent.futures.Future[Any] | None,
                problem: str | None, incident: Incident,
                candidates: Mapping[str, CgroupSnapshot], budget: float,
                allowed: list[CgroupSnapshot] | None = None,
                ) -> tuple[Decision | None, str | None]:
        if future is None:
            return None, problem
        if not future.done():
            self.abandon(policy, future)
            return None, (f"did not answer within its budget of {budget * 1000:.0f} ms; the "
                          "call was abandoned (it runs on in its thread, its answer discarded)")
        exc = future.exception()
        if exc is not None:
            return None, f"raised {type(exc).__name__}: {exc}"
        decision = future.result()
        problem = decision_problem(decision, incident, candidates, allowed)
        return (decision if problem is None else None), problem

    def call(self, policy: Policy, incident: Incident, candidates: Mapping[str, CgroupSnapshot],
             budget: float, allowed: list[CgroupSnapshot] | None = None,
             ) -> tuple[Decision | None, str | None]:
        """Run the policy; ``allowed`` (if given, a list to fill) receives the incident's
        units, computed here while the policy thinks."""
        started = time.monotonic()
        view = MappingProxyType(dict(candidates))
        if runs_inline(policy):
            if allowed is not None:
                allowed.extend(units(incident, candidates))
            try:
                decision = policy(incident, view)
            except Exception as exc:  # a bug in cgoom's own policy: still never raise
                return None, f"raised {type(exc).__name__}: {exc}"
            problem = decision_problem(decision, incident, candidates,
                                       allowed if allowed is not None else None)
            return (decision if problem is None else None), problem
        future, problem = self.submit(policy, incident, view)
        if allowed is not None:
            allowed.extend(units(incident, candidates))
        if future is not None:
            concurrent.futures.wait([future], timeout=max(0.0, started + budget
                                                          - time.monotonic()))
        return self.outcome(policy, future, problem, incident, candidates, budget,
                            allowed if allowed is not None else None)


_GUARD = _Guard()


def runs_inline(policy: object) -> bool:
    """Whether ``policy`` is cgoom's own bounded code (the priority and kubernetes-qos
    policies, killable-first over one of them), which :func:`decide` runs on the caller's
    thread: a thread hop costs tens of milliseconds in a loaded VM (measured: 38 ms for a
    4-cgroup decision), more than the decision. Plugins and ``RankBy`` (which may carry
    user functions) always run in the guard's thread, with its deadline."""
    if type(policy) in (PriorityPolicy, KubernetesQoSPolicy):
        return True
    return isinstance(policy, KillableFirstPolicy) and runs_inline(policy.then)


def start_policy_worker() -> None:
    """Start the thread policies run in now, so no incident waits for it (an engine calls
    this when it starts; :func:`decide` starts it on first use otherwise)."""
    _GUARD.start()


def _granularity(policy: object) -> bool | None:
    whole = getattr(policy, "whole", None)
    return whole if isinstance(whole, bool) else None


def _finish(policy: Policy, incident: Incident, candidates: Mapping[str, CgroupSnapshot],
            decision: Decision | None, problem: str | None, elapsed: float, budget: float,
            fallback: Policy | None, allowed: list[CgroupSnapshot]) -> Decision:
    if decision is not None and problem is None and elapsed > budget:
        problem = f"took {elapsed * 1000:.1f} ms, over its budget of {budget * 1000:.0f} ms"
        decision = None
    if decision is None:
        name = getattr(policy, "name", None)
        label = repr(name) if isinstance(name, str) else repr(type(policy).__name__)
        decision = _fallback(incident, candidates, fallback, _granularity(policy),
                             f"policy {label} {problem}", allowed)
    return _explain(decision, incident, candidates, allowed)


def _fallback(incident: Incident, candidates: Mapping[str, CgroupSnapshot],
              fallback: Policy | None, whole: bool | None, why: str,
              allowed: list[CgroupSnapshot]) -> Decision:
    notes = [why]
    if fallback is not None:
        try:
            answer = fallback(incident, MappingProxyType(dict(candidates)))
            problem = decision_problem(answer, incident, candidates, allowed)
        except Exception as exc:
            problem = f"raised {type(exc).__name__}: {exc}"
        if problem is None:
            assert isinstance(answer, Decision)
            return Decision(answer.policy, answer.victims,
                            (*answer.notes, f"{why}; {answer.policy!r} decided"))
        notes.append(f"the fallback {getattr(fallback, 'name', fallback)!r} {problem}")
    default = PriorityPolicy(whole=whole)
    try:
        answer = default(incident, candidates)
    except Exception as exc:  # a bug in cgoom: still never raise at OOM time
        notes.append(f"the priority policy raised {type(exc).__name__}: {exc}")
        return Decision("none", (), tuple(notes))
    return Decision(answer.policy, answer.victims,
                    (*answer.notes, f"{'; '.join(notes)}; {answer.policy!r} decided"))


def _explain(decision: Decision, incident: Incident,
             candidates: Mapping[str, CgroupSnapshot],
             all_units: list[CgroupSnapshot]) -> Decision:
    """Add notes for units passed over for want of a process that may die, and for an empty
    decision, why it is empty."""
    chosen_paths = {v.cgroup for v in decision.victims}
    notes = list(decision.notes)
    for unit in all_units:
        if unit.path not in chosen_paths and unit.processes and \
                select_process(unit.processes) is None:
            notes.append(f"{unit.path}{' (its own processes)' if unit.internal else ''} was "
                         "passed over: none of its processes may die (oom_score_adj -1000 or "
                         "unreadable)")
    if not decision.victims:
        if incident.cgroup not in candidates:
            notes.append(f"no victim: {incident.cgroup} was not in the snapshot (it vanished, "
                         "or the snapshot is of another subtree)")
        elif not all_units:
            notes.append(f"no victim: nothing in {incident.cgroup} may be chosen (every cgroup "
                         "is omitted, protected, threaded or holds no memory)")
        elif not any("passed over" in n for n in notes):
            notes.append(f"no victim: the policy chose none of the {len(all_units)} unit(s) "
                         f"of {incident.cgroup}")
    return decision if notes == list(decision.notes) else attrs.evolve(decision,
                                                                      notes=tuple(notes))


def decide(
    policy: Policy,
    incident: Incident,
    candidates: Mapping[str, CgroupSnapshot],
    *,
    budget: float = 0.1,
    fallback: Policy | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Decision:
    """Run ``policy`` on a read-only view of ``candidates`` and return its decision, or the
    fallback's when it raised, did not answer within ``budget`` seconds, or chose what it
    may not; the notes then say what happened. ``fallback`` (default: the priority policy,
    killing whole or not as ``policy.whole`` says) is checked too. Never raises for what a
    policy does; blocks for at most about ``budget`` (the guarded call runs in a worker)."""
    started = clock()
    allowed: list[CgroupSnapshot] = []
    decision, problem = _GUARD.call(policy, incident, candidates, budget, allowed)
    answer = _finish(policy, incident, candidates, decision, problem, clock() - started, budget,
                     fallback, allowed)
    if not runs_inline(policy):
        _GUARD.start()  # after an abandoned call, its replacement; else a no-op
    return answer


async def adecide(
    policy: Policy,
    incident: Incident,
    candidates: Mapping[str, CgroupSnapshot],
    *,
    budget: float = 0.1,
    fallback: Policy | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Decision:
    """:func:`decide` for the event loop: the loop keeps running while the policy thinks."""
    import asyncio

    started = clock()
    if runs_inline(policy):
        return decide(policy, incident, candidates, budget=budget, fallback=fallback,
                      clock=clock)
    view = MappingProxyType(dict(candidates))
    future, problem = _GUARD.submit(policy, incident, view)
    allowed = units(incident, candidates)  # while the policy thinks
    if future is not None:
        await asyncio.wait({asyncio.wrap_future(future)}, timeout=budget)
    decision, problem = _GUARD.outcome(policy, future, problem, incident, candidates, budget,
                                       allowed)
    # After an abandoned call its replacement starts once the caller has acted on this
    # decision (the loop runs it when the caller next yields); else it is a no-op.
    asyncio.get_running_loop().call_soon(_GUARD.start)
    return _finish(policy, incident, candidates, decision, problem, clock() - started, budget,
                   fallback, allowed)
