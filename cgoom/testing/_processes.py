"""``FakeProcesses``: the engine's process control for a fake tree. Nothing real is signalled.

A handle is the read end of a pipe: "killing" the process takes its pid out of the fake
``cgroup.procs``, removes its fake ``/proc/<pid>`` and closes the pipe's write end, so the
handle becomes readable, as a pidfd does when its process exits.
"""

from __future__ import annotations

import os

from ._tree import FakeCgroupTree


class FakeProcesses:
    """:class:`cgoom.ProcessControl` over a :class:`FakeCgroupTree`'s fake processes.
    ``killed``, ``terminated`` and ``released`` list the pids, in order; ``survive`` holds
    pids that take the signal but do not exit (to test a kill that is not confirmed);
    ``stubborn`` pids ignore SIGTERM (to test the grace period running out)."""

    def __init__(self, tree: FakeCgroupTree) -> None:
        self.tree = tree
        self.killed: list[int] = []
        self.released: list[int] = []
        self.survive: set[int] = set()
        self.terminated: list[int] = []
        self.stubborn: set[int] = set()
        self._handles: dict[int, tuple[int, int]] = {}

    def open(self, pid: int) -> int:
        if not os.path.isdir(os.path.join(self.tree.base, "proc", str(pid))):
            raise ProcessLookupError(pid, "no such process")
        read_end, write_end = os.pipe()
        self._handles[read_end] = (pid, write_end)
        return read_end

    def kill(self, handle: int) -> None:
        pid = self._signal(handle)
        self.killed.append(pid)
        if pid not in self.survive:
            self._exit(handle)

    def terminate(self, handle: int) -> None:
        pid = self._signal(handle)
        self.terminated.append(pid)
        if pid not in self.survive and pid not in self.stubborn:
            self._exit(handle)

    def _signal(self, handle: int) -> int:
        pid, _write_end = self._handles[handle]
        if not os.path.isdir(os.path.join(self.tree.base, "proc", str(pid))):
            raise ProcessLookupError(pid, "no such process")
        return pid

    def _exit(self, handle: int) -> None:
        pid, write_end = self._handles[handle]
        self.tree.fs.remove_pid(pid)
        self.tree.remove_process(pid)
        os.close(write_end)
        self._handles[handle] = (pid, -1)

    def release(self, handle: int) -> None:
        self.released.append(self._handles[handle][0])

    def cgroup_id(self, handle: int) -> int | None:
        """As ``PIDFD_GET_INFO`` answers on the tree's kernel (6.13 and later): the inode of
        the cgroup directory the process is in; ``None`` on an older kernel."""
        if self.tree.kernel < (6, 13):
            return None
        pid = self._handles[handle][0]
        try:
            with open(os.path.join(self.tree.base, "proc", str(pid), "cgroup")) as f:
                path = next(line[3:].strip() for line in f if line.startswith("0::"))
        except (OSError, StopIteration):
            raise ProcessLookupError(pid, "the process was reaped") from None
        return os.stat(self.tree.cgroup(path).dir).st_ino

    def close(self, handle: int) -> None:
        _pid, write_end = self._handles.pop(handle)
        if write_end >= 0:
            os.close(write_end)
        os.close(handle)
