"""What this process may do, said once at start: ``cgoom run`` as an unprivileged user in a
delegated subtree (systemd ``Delegate=yes``, or a subtree chowned to it) works with what
that allows, and says what it cannot do there. Reads only /proc/self/status and the access
of a few files.

Some facts (capabilities(7), cgroups(7) "Cgroups v2 delegation", xattr(7), proc(5)):

- ``CapEff`` in /proc/self/status is the effective capability mask, in hex: root in a
  container may lack some; a service with ``AmbientCapabilities=`` may have some as a user.
- Delegation hands over a subtree's directories, ``cgroup.procs``, ``cgroup.threads`` and
  ``cgroup.subtree_control``; the delegated root's own interface files (``memory.high``,
  ``memory.max``) stay root's, its children's are the delegate's whole.
- ``trusted.*`` xattrs are neither read nor listed without CAP_SYS_ADMIN (oomd's
  ``trusted.oomd_*``); ``user.*`` on cgroupfs need Linux 5.7.
- Signals reach another user's processes only with CAP_KILL; ``cgroup.kill`` needs only
  write access to the file (a delegated cgroup's is the delegate's).
- Lowering one's own ``oom_score_adj`` needs CAP_SYS_RESOURCE (raising it does not).
- The process connector and taskstats need CAP_NET_ADMIN; /dev/kmsg needs CAP_SYSLOG
  where ``kernel.dmesg_restrict=1``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .._engine._rules import Rule
from .._kernel._hierarchy import Hierarchy
from .._kernel._linux import kernel_release

CAP_KILL, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_RESOURCE, CAP_SYSLOG = 5, 12, 21, 24, 34


def effective_capabilities(hierarchy: Hierarchy) -> int | None:
    """The ``CapEff`` mask of this process, or ``None`` if it cannot be read."""
    try:
        text = hierarchy.fs.read(f"{hierarchy.proc_root}/self/status")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("CapEff:"):
            try:
                return int(line.split()[1], 16)
            except (IndexError, ValueError):
                return None
    return None


def limits(hierarchy: Hierarchy, rules: Iterable[Rule]) -> list[str]:
    """One sentence per thing this process cannot do that a handler would, given its
    capabilities and the rules' files; empty when it may do everything."""
    caps = effective_capabilities(hierarchy)
    if caps is None:
        return []

    def lacks(cap: int) -> bool:
        return not caps & (1 << cap)

    said: list[str] = []
    uid = os.geteuid()
    if lacks(CAP_KILL):
        said.append(f"it signals only its own user's processes (uid {uid}; CAP_KILL): a "
                    "victim process of another user is refused; whole cgroups are killed "
                    "through cgroup.kill where it may write that file (a delegated subtree)")
    if lacks(CAP_SYS_ADMIN):
        said.append("trusted.* xattrs (oomd's trusted.oomd_prefer/avoid) are invisible "
                    "without CAP_SYS_ADMIN: only user.* settings and [priorities] count")
    if lacks(CAP_SYS_RESOURCE):
        said.append("it cannot lower its own oom_score_adj (CAP_SYS_RESOURCE): set "
                    "OOMScoreAdjust=-1000 in the unit")
    if lacks(CAP_NET_ADMIN):
        # Linux 6.6 ("connector/cn_proc: Allow non-root users access") lets any user
        # listen to the process connector; taskstats' GET stays GENL_ADMIN_PERM.
        if kernel_release() >= (6, 6):
            said.append("no taskstats (CAP_NET_ADMIN): the memory stalls of killed processes "
                        "are not recorded (the process connector needs no capability since "
                        "Linux 6.6)")
        else:
            said.append("no process connector nor taskstats (CAP_NET_ADMIN, before Linux "
                        "6.6): kills are confirmed by populated 0 and pidfds alone")
    for rule in rules:
        if rule.high_below_max is None and rule.usage_above is None:
            continue
        path = os.path.join(hierarchy.cgroup(rule.domain).dir, "memory.high")
        if os.path.exists(path) and not os.access(path, os.W_OK):
            said.append(f"rule {rule.name!r}: it cannot write memory.high of {rule.domain} "
                        "(a delegated root's own files stay root's): the early trigger or "
                        "usage tripwire there is not set; put the rule on a child, or set "
                        "MemoryHigh= on the unit")
    return said
