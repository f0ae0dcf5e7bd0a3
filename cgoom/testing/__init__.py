"""Test support for cgoom and for code built on it (plugin authors, supervisors).

- :class:`FakeCgroupTree` builds a fake cgroup v2 host in a directory: the kernel's file
  formats, and a :class:`FakeCgroupFS` that answers writes with the kernel's errnos and side
  effects. Nothing real is touched or killed.
- :func:`sandbox` / :func:`find_test_parent`: a throwaway subtree on a real cgroup v2 kernel
  for your own integration tests, removed afterwards even when the test fails.
- :func:`collect_events` / :func:`events_of_type`: gather a watcher's events until a
  condition holds, with a timeout that shows what did arrive.
- :class:`ManualClock`: the engine's time, moved by the test (``await clock.advance(5)``)
  instead of slept; :func:`until` and :func:`next_incident`: wait for what the engine does.
- ``cgoom.testing.vm``, in a source checkout only (not in the wheel), boots a throwaway VM
  with a stock cgroup v2 kernel for cgoom's own real-kernel tier (``scripts/cgoom-vm``).
"""

from ._collect import collect_events as collect_events
from ._collect import events_of_type as events_of_type
from ._fake import FakeCgroupFS as FakeCgroupFS
from ._processes import FakeProcesses as FakeProcesses
from ._realkernel import find_test_parent as find_test_parent
from ._realkernel import kill_and_remove as kill_and_remove
from ._realkernel import sandbox as sandbox
from ._realkernel import wait_until as wait_until
from ._time import ManualClock as ManualClock
from ._time import next_incident as next_incident
from ._time import until as until
from ._tree import FakeCgroupTree as FakeCgroupTree

__all__ = [
    "FakeCgroupFS",
    "FakeCgroupTree",
    "FakeProcesses",
    "ManualClock",
    "collect_events",
    "events_of_type",
    "find_test_parent",
    "kill_and_remove",
    "next_incident",
    "sandbox",
    "until",
    "wait_until",
]
