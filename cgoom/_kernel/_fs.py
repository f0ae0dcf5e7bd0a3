"""The I/O edge: the only module that touches cgroupfs, and the one place errnos become errors.

:class:`CgroupFS` is the small interface every higher layer reaches the kernel through.
:class:`OsFS` is the real one; :class:`cgoom.testing.FakeCgroupFS` implements it over a plain
directory tree with the kernel's formats and errnos. Both raise plain :class:`OSError`;
:func:`translate_os_error` turns those into :mod:`cgoom` errors, with path, value and errno.

Some facts about cgroupfs (kernfs) I/O:

- A write must be one ``write(2)`` of the whole value: kernfs hands each write to the
  controller separately, so a value split across writes is two values.
- Reads of "seq" files (memory.stat grows with every release) may take several ``read(2)``
  calls; read until EOF.
- A removed cgroup's files fail with ENOENT on open; an fd opened before the ``rmdir`` fails
  with ENODEV on read (the kernfs node is deactivated). Both mean "gone".
- ENOENT from a file in a directory that still exists is something else: the kernel lacks that
  interface file, the file is not provided on the root cgroup (``CFTYPE_NOT_ON_ROOT``), or the
  controller that provides it is not enabled in the parent's ``cgroup.subtree_control``.
- Extended attributes on cgroup directories: ``trusted.*`` (CAP_SYS_ADMIN) for long, ``user.*``
  since Linux 5.7 ("cgroupfs: Support user xattrs"); before that ``user.*`` is EOPNOTSUPP.
  systemd and the OOM daemons keep their per-cgroup settings there (``user.oomd_avoid``).
"""

from __future__ import annotations

import errno
import os
from typing import Protocol

from .._errors import (
    CgoomError,
    CgroupBusy,
    CgroupGone,
    ControllerNotEnabled,
    InvalidValue,
    MemoryControllerUnavailable,
    NotSupported,
    PermissionDenied,
    ProcessGone,
    errno_name,
)


class CgroupFS(Protocol):
    """What cgoom needs from a cgroup filesystem. Paths are absolute host paths.

    Implementations raise :class:`OSError` with the kernel's errno; callers translate.
    """

    def read(self, path: str) -> str:
        """The whole file as text."""
        ...

    def write(self, path: str, data: str) -> None:
        """Write ``data`` in a single write(2)."""
        ...

    def mkdir(self, path: str) -> None:
        """Create a cgroup directory."""
        ...

    def rmdir(self, path: str) -> None:
        """Remove an empty cgroup directory."""
        ...

    def listdir(self, path: str) -> list[tuple[str, bool]]:
        """The entries of a directory as ``(name, is_directory)``."""
        ...

    def exists(self, path: str) -> bool:
        """Whether the path exists now."""
        ...

    def getxattr(self, path: str, name: str) -> bytes | None:
        """An extended attribute's value, ``None`` when it is not set."""
        ...

    def listxattr(self, path: str) -> list[str]:
        """The names of the extended attributes set on ``path`` (those the caller may see:
        ``trusted.*`` only with CAP_SYS_ADMIN)."""
        ...

    def stat(self, path: str) -> os.stat_result:
        """``stat(2)`` of ``path``: a cgroup's id (``st_ino``), owner (``st_uid``) and
        creation time (``st_ctime``)."""
        ...

    def setxattr(self, path: str, name: str, value: bytes | None) -> None:
        """Set an extended attribute (``None``: remove it; removing an unset one is fine)."""
        ...


class OsFS:
    """:class:`CgroupFS` over the real filesystem, with raw ``os`` calls (no buffering)."""

    __slots__ = ()

    def read(self, path: str) -> str:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # A short read is the end: kernfs and seq_file fill the buffer until the file
            # ends (seq_read_iter), and so do regular files. Only a full one reads on.
            data = os.read(fd, 65536)
            if len(data) == 65536:
                chunks = [data]
                while chunk := os.read(fd, 65536):
                    chunks.append(chunk)
                data = b"".join(chunks)
        finally:
            os.close(fd)
        return data.decode("utf-8", "surrogateescape")

    def write(self, path: str, data: str) -> None:
        # O_TRUNC: kernfs accepts it and ignores it (a shell's `echo 1 > cgroup.freeze` opens
        # so); on a regular file (a tree on disk read through this class, as `cgoom --mount`
        # does on a fake one) "max" written over "283115520" must not leave "max115520".
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def rmdir(self, path: str) -> None:
        os.rmdir(path)

    def listdir(self, path: str) -> list[tuple[str, bool]]:
        with os.scandir(path) as entries:
            return [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def getxattr(self, path: str, name: str) -> bytes | None:
        try:
            return os.getxattr(path, name)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                return None
            raise

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(path)

    def stat(self, path: str) -> os.stat_result:
        return os.stat(path)

    def setxattr(self, path: str, name: str, value: bytes | None) -> None:
        if value is not None:
            os.setxattr(path, name, value)
            return
        try:
            os.removexattr(path, name)
        except OSError as exc:
            if exc.errno != errno.ENODATA:
                raise

    def __repr__(self) -> str:
        return "OsFS()"


#: Interface files and the kernel release that added them, for "too old" messages.
#: Sources: Documentation/admin-guide/cgroup-v2.rst history; ../notes/kernel-interface.md §1.
SINCE: dict[str, str] = {
    "memory.min": "4.18",
    "memory.oom.group": "4.19",
    "memory.swap.events": "5.0",
    "memory.events.local": "5.2",
    "cgroup.freeze": "5.2",
    "memory.swap.high": "5.8",
    "cgroup.kill": "5.14",
    "memory.peak": "5.19",
    "memory.reclaim": "5.19",
    "memory.zswap.current": "5.19",
    "memory.zswap.max": "5.19",
    "memory.swap.peak": "6.5",
    "memory.zswap.writeback": "6.8",
}

#: Files the kernel does not create in the root cgroup (``CFTYPE_NOT_ON_ROOT``).
NOT_ON_ROOT = frozenset(
    {
        "memory.current", "memory.peak", "memory.min", "memory.low", "memory.high",
        "memory.max", "memory.events", "memory.events.local", "memory.oom.group",
        "memory.swap.current", "memory.swap.high", "memory.swap.max", "memory.swap.events",
        "memory.swap.peak", "memory.zswap.current", "memory.zswap.max",
        "memory.zswap.writeback", "cgroup.events", "cgroup.freeze", "cgroup.kill",
        "cgroup.type",
    }
)

_BUSY_EXPLAINED = {
    "cgroup.subtree_control": (
        "the cgroup has processes of its own, and cgroup v2's no-internal-process rule lets "
        "only the root cgroup or a cgroup without processes enable domain controllers (such "
        "as memory) for its children; move its processes into a leaf child first"
    ),
    "cgroup.procs": (
        "the cgroup has domain controllers enabled for its children (cgroup.subtree_control), "
        "and cgroup v2's no-internal-process rule keeps processes out of such a cgroup; "
        "move the process into a leaf child instead"
    ),
}


def _controllers(fs: CgroupFS, directory: str) -> frozenset[str] | None:
    try:
        return frozenset(fs.read(os.path.join(directory, "cgroup.controllers")).split())
    except OSError:
        return None


def _missing_file(
    fs: CgroupFS, path: str, *, mount: str, what: str, value: str | None, code: int
) -> CgoomError:
    """ENOENT on a file whose directory still exists: say why the file is not there."""
    directory, name = os.path.split(path)
    controller = name.partition(".")[0]
    is_root = os.path.normpath(directory) == os.path.normpath(mount)

    def error(cls: type[CgoomError], message: str) -> CgoomError:
        return cls(message, path=path, value=value, errno=code)

    if is_root and name in NOT_ON_ROOT:
        return error(
            NotSupported,
            f"cannot {what} {path}: the kernel does not provide {name} on the root cgroup",
        )
    available = _controllers(fs, directory)
    if controller not in ("cgroup", "") and available is not None and controller not in available:
        root_controllers = _controllers(fs, mount)
        if root_controllers is not None and controller not in root_controllers:
            return error(
                MemoryControllerUnavailable,
                f"cannot {what} {path}: this host's cgroup v2 hierarchy at {mount} has no "
                f"{controller} controller ({mount}/cgroup.controllers lists "
                f"{' '.join(sorted(root_controllers)) or 'nothing'}); it is probably bound to "
                "cgroup v1. Boot with cgroup_no_v1=all (or systemd.unified_cgroup_hierarchy=1) "
                "so that it is on cgroup v2 (docs/operator-guide.md)",
            )
        parent = os.path.dirname(directory)
        return error(
            ControllerNotEnabled,
            f"cannot {what} {path}: the {controller} controller is not enabled for this cgroup "
            f"({directory}/cgroup.controllers lists {' '.join(sorted(available)) or 'nothing'}); "
            f"write '+{controller}' to {parent}/cgroup.subtree_control",
        )
    since = SINCE.get(name)
    reason = f"it was added in Linux {since}" if since else "this kernel does not provide it"
    return error(NotSupported, f"cannot {what} {path}: no such interface file; {reason}")


def translate_os_error(
    exc: OSError,
    fs: CgroupFS,
    path: str,
    *,
    mount: str,
    what: str,
    value: str | None = None,
    cgroup_dir: str | None = None,
) -> CgoomError:
    """The cgoom error for ``exc``, raised while doing ``what`` ("read", "write", "create",
    "remove", "list", "move pid N into") on ``path``.

    ``cgroup_dir`` is the cgroup the operation concerns (default: the file's directory); a
    "gone" verdict is only given after checking that this directory really is gone, as
    psutil only raises NoSuchProcess once /proc/<pid> is gone.
    """
    code = exc.errno if exc.errno is not None else 0
    name = errno_name(code)
    shown = f" {value!r} to" if value is not None and what == "write" else ""
    head = f"cannot {what}{shown} {path}"

    def error(cls: type[CgoomError], message: str) -> CgoomError:
        return cls(message, path=path, value=value, errno=code)

    cgroup_dir = cgroup_dir if cgroup_dir is not None else os.path.dirname(path)

    if code == errno.ENODEV or (code == errno.ENOENT and not fs.exists(cgroup_dir)):
        return error(CgroupGone, f"{head}: the cgroup {cgroup_dir} no longer exists ({name})")
    if code == errno.ENOENT and what == "write" and fs.exists(path):
        # The file is there, so the kernel refused a name in the value: writing an unknown or
        # unavailable controller to cgroup.subtree_control gives ENOENT (cgroup.c,
        # cgroup_subtree_control_write).
        available = _controllers(fs, cgroup_dir)
        listed = " ".join(sorted(available)) if available else "nothing"
        return error(
            ControllerNotEnabled,
            f"{head}: a controller it names is not available to this cgroup "
            f"({cgroup_dir}/cgroup.controllers lists {listed}) ({name})",
        )
    if code == errno.ENOENT and what in ("read", "write"):
        return _missing_file(fs, path, mount=mount, what=what, value=value, code=code)
    if code == errno.ESRCH:
        return error(ProcessGone, f"{head}: no such process ({name})")
    if code in (errno.EACCES, errno.EPERM):
        return error(
            PermissionDenied,
            f"{head}: permission denied; run as root or delegate this subtree ({name})",
        )
    if code in (errno.EINVAL, errno.ERANGE):
        return error(InvalidValue, f"{head}: the kernel refused the value ({name})")
    if code == errno.EBUSY:
        basename = os.path.basename(path)
        reason = _BUSY_EXPLAINED.get(basename)
        if reason is None and what == "remove":
            reason = "it still has processes or child cgroups"
        return error(CgroupBusy, f"{head}: {reason or 'busy'} ({name})")
    if code == errno.EOPNOTSUPP:
        return error(NotSupported, f"{head}: not supported here ({name})")
    if code == errno.EEXIST:
        return error(CgoomError, f"{head}: it already exists ({name})")
    return error(CgoomError, f"{head}: {exc.strerror or exc} ({name})")
