"""The errors cgoom raises, grouped by how a caller reacts to them.

Every error carries the file it concerns (``path``), the value written if any (``value``) and
the errno if the kernel refused (``errno``), and builds its message from them, so a log line
alone says what went wrong where. Kernel errnos are translated into these classes in exactly
one place, :func:`cgoom._kernel._fs.translate_os_error`, at the I/O boundary
(``raise ... from exc``).

How to react:

- :class:`CgroupGone` / :class:`ProcessGone`: the thing vanished. Normal on a live system;
  drop it and carry on. Never retry a kill on it.
- :class:`NotSupported` (and :class:`ControllerNotEnabled`, :class:`MemoryControllerUnavailable`):
  this kernel, mount or cgroup lacks the feature. A configuration fact; probe once, adapt.
- :class:`PermissionDenied`: run as root, or delegate the subtree.
- :class:`InvalidValue`: the value (yours, or the kernel's verdict on it) is wrong. Fix input.
- :class:`CgroupBusy`: the cgroup's state forbids it now (processes present, children exist).
- :class:`ParseError`: a kernel file did not have the format cgoom knows. A bug or a new kernel;
  report it with the message, which quotes the offending text.
"""

from __future__ import annotations

import errno as _errno


class CgoomError(Exception):
    """Base of every error cgoom raises.

    Attributes:
        path: the file or directory concerned, when there is one.
        value: the value that was being written, when the error came from a write.
        errno: the kernel's errno, when the error came from the kernel.
        key: the setting concerned (a rule's field, a configuration key), when there is one:
            callers find it here, never by searching the message.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        value: str | None = None,
        errno: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.value = value
        self.errno = errno
        self.key = key

    def __str__(self) -> str:
        return self.message


class CgroupGone(CgoomError):
    """The cgroup no longer exists (its directory is gone: ENOENT/ENODEV).

    A cgroup can be removed at any moment by its owner. This is the ordinary end of a cgroup's
    life, not a fault: treat the cgroup as dead, stop watching it, never act on it again.
    """


class ProcessGone(CgoomError):
    """The process no longer exists (ESRCH): it exited or was reaped."""


class PermissionDenied(CgoomError):
    """The kernel refused the operation for lack of privilege (EACCES/EPERM)."""


class InvalidValue(CgoomError, ValueError):
    """A value was refused: by cgoom's own validation, or by the kernel (EINVAL/ERANGE)."""


class ParseError(CgoomError, ValueError):
    """A kernel file's content was not in the format cgoom expects. The message quotes it."""


class CgroupBusy(CgoomError):
    """The cgroup's current state forbids the operation (EBUSY).

    Usually the cgroup v2 *no-internal-process rule*: a non-root cgroup that has processes of
    its own cannot enable domain controllers (such as ``memory``) for children, and a process
    cannot join a cgroup that has them enabled. Also: ``rmdir`` of a cgroup that still has
    processes or children.
    """


class NotSupported(CgoomError):
    """The interface file does not exist here: this kernel is too old for it, or it is not
    provided on the root cgroup, or the controller that provides it is not enabled."""


class ControllerNotEnabled(NotSupported):
    """The controller that provides this file is not enabled for this cgroup.

    Enable it in the parent's ``cgroup.subtree_control`` (``+memory``).
    """


class MemoryControllerUnavailable(NotSupported):
    """This host has no usable cgroup v2 memory controller (no cgroup2 mount, or the memory
    controller is bound to cgroup v1). The message says which and what to do."""


def errno_name(code: int) -> str:
    """``errno_name(22) == "EINVAL"``; unknown codes come back as their number."""
    return _errno.errorcode.get(code, str(code))
