"""The rules' set-up and its undo: what cgoom changes on the host before any incident (early
triggers: memory.high below memory.max; memory.oom.group), and the log that puts it back.

Owns the undo log and the set-up's sentences (``lines``: what was done, and what could not
be). Touches the cgroup files it names, through the engine's writer thread for any write that
may reclaim (memory.high), directly for those that never do (memory.oom.group). It knows
nothing of incidents, tripwires (``_arming``) or actions (``_executor``).

A dry run (``Rule.dry_run``) writes nothing: each step says what it would have written, and
which trigger the rule then cannot see.

Every change is noted in the durable undo log (:mod:`cgoom._engine._undo`) before it is made,
and put back from it, newest first, so a value changed twice ends as first found.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable

from .._errors import CgoomError, CgroupGone, PermissionDenied
from .._kernel._hierarchy import Hierarchy
from .._kernel._parse import format_size
from .._kernel._paths import inside, parent_path
from .._kernel._worker import Worker
from ._rules import Rule
from ._undo import UndoLog

log = logging.getLogger("cgoom")


class SetUp:
    """The set-up of a handler's rules on ``hierarchy``, and its undo log."""

    def __init__(self, hierarchy: Hierarchy, writer: Worker, undo: UndoLog) -> None:
        self.hierarchy = hierarchy
        self.writer = writer
        #: What the set-up did, one sentence each (and what it could not do).
        self.lines: list[str] = []
        self.undo_log = undo

    def say(self, line: str) -> None:
        self.lines.append(line)

    async def early_trigger(self, rule: Rule) -> None:
        """memory.high ``rule.high_below_max`` below the domain's memory.max, remembered to
        be undone."""
        assert rule.high_below_max is not None
        domain = self.hierarchy.cgroup(rule.domain)
        limit = domain.memory_max()
        if rule.dry_run:
            self.say(f"{rule.name}: dry run: memory.high of {rule.domain} not set (it would "
                     + ("not be: no memory.max" if limit == "max" else
                        f"be {format_size(int(limit * (1 - rule.high_below_max)))}")
                     + "); the rule sees the domain's own memory.high, memory.max and OOM "
                     "events, not cgoom's margin")
            return
        if limit == "max":
            self.say(f"{rule.name}: {rule.domain} has no memory.max, so memory.high was not "
                     "set (set memory.max first)")
            return
        target = int(limit * (1 - rule.high_below_max)) // 4096 * 4096
        old = domain.memory_high()
        if old != "max" and old <= target:
            return
        try:
            # The write reclaims down to the new value in the writer's context: in the
            # writer thread, never on the loop; the undo log's write (an fsync) there too,
            # noted first: a crash after it is undone.
            def write() -> None:
                self.undo_log.before(domain.path, "memory.high", str(old))
                domain.set_memory_high(target)
            await self.writer.run(write)
        except PermissionDenied as exc:
            # Unprivileged, the delegated root's own files stay root's: the rule still
            # fires on memory.events, without cgoom's margin.
            self.say(f"{rule.name}: memory.high of {rule.domain} was not set ({exc}); the "
                     "rule fires on the domain's own memory.high or memory.max: set "
                     "MemoryHigh= on its unit, or give cgoom the file")
            return
        self.say(f"{rule.name}: memory.high of {rule.domain} set to {format_size(target)} "
                 f"({rule.high_below_max:.0%} below memory.max {format_size(limit)}; was "
                 f"{old if old == 'max' else format_size(old)})")

    def oom_group(self, path: str) -> str | None:
        """memory.oom.group=1 on ``path`` (a direct write: it does no reclaim), undone on
        stop; a cgroup gone meanwhile is fine. Returns what went wrong, or ``None``."""
        cgroup = self.hierarchy.cgroup(path)
        try:
            if not cgroup.memory_oom_group():
                self.undo_log.before(path, "memory.oom.group", "0")
                cgroup.set_memory_oom_group(True)
        except CgroupGone:
            pass
        except CgoomError as exc:
            return f"memory.oom.group of {path}: {exc}"
        return None

    def oom_groups(self, rule: Rule, paths: Iterable[str]) -> None:
        """The rule's memory.oom.group set-up on the domain's cgroups known now:
        ``oom_group_leaves`` on the leaves, ``oom_group`` on those its patterns match."""
        known = set(paths)
        if rule.dry_run:
            if rule.oom_group_leaves or rule.oom_group:
                self.say(f"{rule.name}: dry run: memory.oom.group not set on any cgroup of "
                         f"{rule.domain}; the decisions are made as if it were")
            return
        if rule.oom_group_leaves:
            parents = {parent_path(p) for p in known if p != "/"}
            leaves = sorted(known - parents)
            self._each(rule, leaves)
            self.say(f"{rule.name}: memory.oom.group=1 on {len(leaves)} leaf cgroup(s) of "
                     f"{rule.domain}")
        if rule.oom_group:
            matching = [p for p in sorted(known) if matches(p, rule.oom_group)]
            self._each(rule, matching)
            self.say(f"{rule.name}: memory.oom.group=1 on {len(matching)} cgroup(s) "
                     f"matching {', '.join(rule.oom_group)}, and on those that appear")

    def _each(self, rule: Rule, paths: Iterable[str]) -> None:
        for path in paths:
            problem = self.oom_group(path)
            if problem is not None:
                self.say(f"{rule.name}: {problem}")

    def appeared(self, rules: Iterable[Rule], path: str) -> None:
        """A cgroup appeared: memory.oom.group=1 on it where a rule's ``oom_group`` pattern
        matches (a new pod dies whole)."""
        for rule in rules:
            if rule.oom_group and not rule.dry_run and inside(path, rule.domain) \
                    and matches(path, rule.oom_group):
                problem = self.oom_group(path)
                if problem is not None:
                    log.warning("cgoom handler: %s: %s", rule.name, problem)

    async def undo(self) -> None:
        """Put back every change in the undo log (the set-up's and any other noted there),
        newest first; a cgroup gone meanwhile is fine, anything else is said."""
        for problem in await self.writer.run(self.undo_log.put_back):
            log.warning("cgoom handler: %s", problem)


def matches(path: str, patterns: Iterable[str]) -> bool:
    """Whether ``path`` (without its leading ``/``) matches one of the glob ``patterns``."""
    rel = path.lstrip("/")
    return any(fnmatch.fnmatchcase(rel, p) for p in patterns)
