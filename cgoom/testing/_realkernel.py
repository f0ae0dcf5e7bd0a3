"""Finding a real cgroup v2 subtree that tests may use, and making throwaway sandboxes in it.

Tests on the real kernel need a cgroup they may create children in, with the memory
controller available. That is, in order of preference:

1. ``$CGOOM_TEST_CGROUP``: a directory you delegated for tests (writable, memory in its
   ``cgroup.controllers``, no processes of its own so it may enable controllers);
2. the root of the cgroup2 mount, when we are root (the root cgroup is exempt from the
   no-internal-process rule, so it can enable ``memory`` for children while holding
   processes).

Anything else is "not available here", with the reason.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .._errors import CgoomError, CgroupGone
from .._kernel._cgroup import Cgroup, remove_tree
from .._kernel._hierarchy import Hierarchy

ENV_PARENT = "CGOOM_TEST_CGROUP"
_counter = itertools.count()


def find_test_parent() -> tuple[Cgroup | None, str]:
    """``(cgroup, "")`` for a cgroup tests may create children in, or ``(None, reason)``."""
    try:
        hierarchy = Hierarchy.discover()
        hierarchy.require_memory()
    except CgoomError as exc:
        return None, str(exc)
    explicit = os.environ.get(ENV_PARENT)
    if explicit:
        parent = hierarchy.cgroup(explicit)
        if not parent.exists() or not os.access(parent.dir, os.W_OK):
            return None, f"${ENV_PARENT}={explicit} is not a writable cgroup directory"
        if "memory" not in parent.cgroup_controllers():
            return None, f"${ENV_PARENT}={explicit} has no memory controller available"
    elif os.geteuid() == 0:
        parent = hierarchy.root
    else:
        return None, (
            f"not root, and ${ENV_PARENT} does not name a delegated cgroup with the memory "
            "controller; run as root, set it, or use the VM: cgoom-vm test"
        )
    try:
        if "memory" not in parent.cgroup_subtree_control():
            parent.enable_controllers("memory", "pids")
    except CgoomError as exc:
        return None, f"cannot enable memory for children of {parent.dir}: {exc}"
    return parent, ""


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true (tests only: the library itself never polls)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def kill_and_remove(cgroup: Cgroup, timeout: float = 30.0) -> None:
    """Kill everything in ``cgroup``'s subtree, wait until it is empty, remove it."""
    try:
        if cgroup.cgroup_events().populated:
            cgroup.kill()
            wait_until(lambda: not cgroup.cgroup_events().populated, timeout,
                       f"{cgroup.path} to empty")
        # A frozen cgroup's killed tasks still exit; thaw anyway so rmdir is not refused.
        for each in cgroup.walk():
            if each.cgroup_freeze():
                each.thaw()
    except CgroupGone:
        return
    remove_tree(cgroup)


@contextmanager
def sandbox(parent: Cgroup, controllers: tuple[str, ...] = ("memory", "pids")) -> Iterator[Cgroup]:
    """A fresh child of ``parent`` with ``controllers`` enabled for its children; killed
    and removed afterwards, also when the test failed."""
    cgroup = parent.create_child(f"cgoom-test-{os.getpid()}-{next(_counter)}")
    try:
        cgroup.enable_controllers(*controllers)
        yield cgroup
    finally:
        kill_and_remove(cgroup)
