"""PSI triggers: memory.pressure (a cgroup's) or /proc/pressure/memory (the system's), armed
and delivered as events on the loop.

Some facts about PSI triggers (notes/kernel-interface.md; Documentation/accounting/psi.rst):

- A trigger is a line written to the pressure file ("some 150000 1000000\\n": stall in us
  within a window in us); the newline matters. One trigger per open file description: a
  second write answers EBUSY. Windows are 500 ms to 10 s on 6.1 (rules checked first,
  :func:`trigger_problem`).
- A trigger signals with EPOLLPRI, and kernfs/PSI files are always "readable": asyncio's
  ``add_reader`` registers EPOLLIN only and would spin. So each trigger's fd sits in a private
  ``select.epoll`` registered for EPOLLPRI, whose own fd goes to ``add_reader``; the readiness
  check on the way consumes the event.
- When the cgroup is removed the trigger is destroyed with it: EPOLLERR, which persists.
- Before 6.5 a trigger on /proc/pressure needs CAP_SYS_RESOURCE; a cgroup's pressure file
  needs only write permission. EOPNOTSUPP: PSI is off (boot with psi=1).

Owns the trigger fds and their epolls; emits through ``emit``; stamps events with ``clock``.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
from collections.abc import Callable

import attrs

from .._errors import CgoomError, InvalidValue
from .._kernel._clock import Clock
from .._kernel._fs import translate_os_error
from .._kernel._hierarchy import Hierarchy
from .._kernel._linux import has_cap_sys_resource
from ._events import (
    Event,
    PressureSustained,
    PressureTrigger,
    PressureTriggered,
    PressureTriggerEnded,
    SustainedState,
    trigger_problem,
)


@attrs.define
class _Trigger:
    cgroup: str | None
    trigger: PressureTrigger
    state: SustainedState | None
    epoll: select.epoll


class PsiTriggers:
    """The PSI triggers of one watcher."""

    def __init__(self, hierarchy: Hierarchy, emit: Callable[[Event], None], clock: Clock,
                 kernel: tuple[int, int]) -> None:
        self.hierarchy = hierarchy
        self._emit = emit
        self.clock = clock
        self.kernel = kernel
        self._triggers: dict[int, _Trigger] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Times a trigger's fd woke the loop.
        self.wakeups = 0

    def __len__(self) -> int:
        return len(self._triggers)

    def arm(self, cgroup: str | None, trigger: PressureTrigger,
            state: SustainedState | None) -> None:
        """Arm ``trigger`` on ``cgroup`` (``None``: system-wide); ``state``: a sustained
        rule's, else each firing is a :class:`PressureTriggered`. On the running loop."""
        self._loop = asyncio.get_running_loop()
        if cgroup is None:
            path = os.path.join(self.hierarchy.proc_root, "pressure", "memory")
            name = None
        else:
            handle = self.hierarchy.cgroup(cgroup)
            path, name = os.path.join(handle.dir, "memory.pressure"), handle.path
        privileged = has_cap_sys_resource()
        problem = trigger_problem(trigger, kernel=self.kernel, privileged=privileged)
        if problem:
            raise InvalidValue(f"cannot arm the PSI trigger {trigger.line().strip()!r} on "
                               f"{path}: {problem}", path=path, value=trigger.line().strip())
        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise self._error(exc, path, trigger, privileged) from exc
        try:
            os.write(fd, trigger.line().encode())
        except OSError as exc:
            os.close(fd)
            raise self._error(exc, path, trigger, privileged) from exc
        epoll = select.epoll()
        try:
            epoll.register(fd, select.EPOLLPRI)
        except OSError as exc:
            epoll.close()
            os.close(fd)
            raise CgoomError(f"cannot poll {path} for PSI events: {exc.strerror}; it is not a "
                             "kernel pressure file", path=path, errno=exc.errno) from exc
        self._triggers[fd] = _Trigger(name, trigger, state, epoll)
        self._loop.add_reader(epoll.fileno(), self._on_pressure, fd)

    def _error(self, exc: OSError, path: str, trigger: PressureTrigger,
               privileged: bool) -> CgoomError:
        err = translate_os_error(exc, self.hierarchy.fs, path, mount=self.hierarchy.mount,
                                 what="write", value=trigger.line().strip())
        if exc.errno in (errno.EACCES, errno.EPERM) and not privileged:
            err.message += ("; PSI triggers on /proc/pressure need CAP_SYS_RESOURCE before "
                            "Linux 6.5 (cgroup pressure files need only write permission)")
        elif exc.errno == errno.EOPNOTSUPP:
            err.message += "; PSI is disabled on this kernel (boot with psi=1)"
        elif exc.errno == errno.EBUSY:
            err.message += "; a trigger is already armed on this file descriptor"
        return err

    def _drop(self, fd: int) -> _Trigger | None:
        entry = self._triggers.pop(fd, None)
        if entry is not None:
            if self._loop is not None:
                self._loop.remove_reader(entry.epoll.fileno())
            entry.epoll.close()
            os.close(fd)
        return entry

    def _end(self, fd: int, reason: str) -> None:
        entry = self._drop(fd)
        if entry is not None:
            self._emit(PressureTriggerEnded(entry.cgroup, entry.trigger, reason,
                                            self.clock.monotonic()))

    def end(self, cgroup: str, reason: str) -> None:
        """``cgroup`` went: its triggers end, each said with a :class:`PressureTriggerEnded`."""
        for fd, entry in list(self._triggers.items()):
            if entry.cgroup == cgroup:
                self._end(fd, reason)

    def close(self) -> None:
        """Release every trigger (nothing is emitted)."""
        for fd in list(self._triggers):
            self._drop(fd)

    def _on_pressure(self, fd: int) -> None:
        entry = self._triggers.get(fd)
        if entry is None:
            return
        self.wakeups += 1
        now = self.clock.monotonic()
        # Usually empty, or EPOLLPRI: the readiness check on the way here consumed the event.
        # Only EPOLLERR (the trigger was destroyed with its cgroup) persists.
        mask = 0
        for _, bits in entry.epoll.poll(0):
            mask |= bits
        if mask & select.EPOLLERR:
            self._end(fd, "the cgroup was removed")
        elif entry.state is None:
            self._emit(PressureTriggered(entry.cgroup, entry.trigger, now))
        else:
            since = entry.state.fired(now)
            if since is not None:
                self._emit(PressureSustained(entry.cgroup, entry.state.rule, since, now))
