"""The few Linux interfaces the stdlib lacks: inotify, ``process_mrelease``, ``mlockall``
(ctypes) and the ``PIDFD_GET_INFO`` ioctl, plus small helpers for capabilities, sysctls
and the kernel release. Nothing here knows about cgroups.

Why our own inotify binding (docs/design-notes.md has the long form): it is ~100 lines over
three libc calls; it needs no dependency (asyncinotify would be one more package; pyroute2's
helper is not a supported API); and cgoom must handle the cases generic wrappers hide:
IN_Q_OVERFLOW (resynchronise), IN_IGNORED, and ENOSPC on ``inotify_add_watch`` (the
per-user watch limit) with an error that names the sysctl and the number needed.

Some facts about inotify on cgroupfs (kernfs), measured on Debian 6.1 (notes/real-kernel-vm.md):

- Interface files that notify (memory.events, memory.events.local, memory.swap.events,
  cgroup.events, PSI files when a trigger is destroyed) raise IN_MODIFY on a watch of the
  *file*. A watch on the directory only sees a file's change while the file's inode happens
  to be cached, so watch the files themselves: the watch pins the inode.
- kernfs delivers inotify from a workqueue (``kernfs_notify_workfn``), at most one
  notification per file per ~10-16 ms (CGROUP_FILE_NOTIFY_MIN_INTV = DIV_ROUND_UP(HZ, 100)
  jiffies); changes inside the window are coalesced into a trailing notification, never
  dropped. So a notification means "re-read now", and counters must be diffed.
- ``rmdir`` of a cgroup gives *nothing* on watches of its own directory or files; the parent
  directory's watch gets IN_DELETE|IN_ISDIR. ``mkdir`` gives the parent IN_CREATE|IN_ISDIR,
  and the new cgroup's files all exist by then.
- The inotify fd is an ordinary readable fd: ``loop.add_reader`` works on it (unlike kernfs
  and PSI fds, which are always "readable" and make add_reader spin).
- Each watch counts against ``fs.inotify.max_user_watches`` (8192 in a 1 GiB VM; it scales
  with RAM), per user, across all processes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import resource
import struct
from collections.abc import Iterator

import attrs

IN_MODIFY = 0x00000002
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name

MAX_USER_WATCHES = "/proc/sys/fs/inotify/max_user_watches"


@attrs.frozen
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: str


def parse_inotify_events(buf: bytes) -> Iterator[InotifyEvent]:
    """Split a read(2) of an inotify fd into events (pure; the kernel never splits one)."""
    offset = 0
    while offset + _EVENT.size <= len(buf):
        wd, mask, cookie, length = _EVENT.unpack_from(buf, offset)
        offset += _EVENT.size
        raw = buf[offset:offset + length]
        offset += length
        yield InotifyEvent(wd, mask, cookie, raw.split(b"\0", 1)[0].decode("utf-8",
                                                                             "surrogateescape"))


_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # CDLL(None): the symbols already in the process, libc's among them; unlike
        # ctypes.util.find_library, it runs no subprocess.
        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.syscall.restype = ctypes.c_long
        _libc = lib
    return _libc


def _check(result: int, what: str, path: str | None = None) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}", path)
    return result


#: process_mrelease(2), Linux 5.15: 448 in the unified syscall table of x86-64, arm64 and
#: asm-generic (arch/x86/entry/syscalls/syscall_64.tbl, include/uapi/asm-generic/unistd.h).
NR_PROCESS_MRELEASE = 448


def process_mrelease(pidfd: int) -> None:
    """Free the address space of the *dying* process behind ``pidfd`` now, in this thread,
    instead of waiting for its exit or the kernel's OOM reaper (which waits 2 s).

    Facts (mm/oom_kill.c; notes/kernel-interface.md §6): the process must already have a
    fatal signal pending (EINVAL otherwise); ESRCH when its memory is already gone; EAGAIN
    when reaping failed (retry); ENOSYS before 5.15. File-backed pages are left.
    """
    lib = _lib()
    if lib.syscall(NR_PROCESS_MRELEASE, ctypes.c_int(pidfd), ctypes.c_uint(0)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"process_mrelease: {os.strerror(code)}")


# Some facts about PIDFD_GET_INFO (fs/pidfs.c, include/uapi/linux/pidfd.h):
#
# - Linux 6.13. ``ioctl(pidfd, PIDFD_GET_INFO, &info)`` fills ``struct pidfd_info`` (64 bytes
#   in its first version: mask, cgroupid, then eleven u32s: pid, tgid, ppid and the ids) for
#   the process *the pidfd pins*, with no /proc path in between: that is what makes it a
#   race-free check. The kernel dispatches on the ioctl's number and reads the size from the
#   command (an extensible struct), so a newer kernel answers the 64-byte request too.
# - ``cgroupid`` (mask bit PIDFD_INFO_CGROUPID) is the id of the process's cgroup in the v2
#   hierarchy: the kernfs node id, which on 64-bit kernels is the cgroup directory's inode
#   number (what cgoom already uses as a cgroup's identity), whatever cgroup namespace the
#   reader is in.
# - ESRCH once the process has been reaped (6.15 adds PIDFD_INFO_EXIT to still answer then;
#   not asked for here). ENOTTY (no pidfs ioctls: before 6.11) or EINVAL (pidfs ioctls without
#   this one: 6.11-6.12) mean the kernel has no such ioctl.

#: _IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info) with the 64-byte first version.
PIDFD_GET_INFO = (3 << 30) | (64 << 16) | (0xFF << 8) | 11
PIDFD_INFO_CGROUPID = 1 << 2
_PIDFD_INFO = struct.Struct("=QQ11I4x")  # mask, cgroupid, pid ... fsgid, spare0
_NO_IOCTL = (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS)


def pidfd_cgroup_id(pidfd: int) -> int | None:
    """The cgroup id (v2) of the process behind ``pidfd``, through ``PIDFD_GET_INFO``; ``None``
    where the kernel has no such ioctl (before 6.13). :class:`ProcessLookupError` once the
    process has been reaped."""
    buf = bytearray(_PIDFD_INFO.size)
    _PIDFD_INFO.pack_into(buf, 0, PIDFD_INFO_CGROUPID, 0, *([0] * 11))
    try:
        fcntl.ioctl(pidfd, PIDFD_GET_INFO, buf, True)
    except OSError as exc:
        if exc.errno in _NO_IOCTL:
            return None
        if exc.errno == errno.ESRCH:
            raise ProcessLookupError(errno.ESRCH, "the process was reaped") from exc
        raise
    mask, cgroup_id = _PIDFD_INFO.unpack_from(buf)[:2]
    return cgroup_id if mask & PIDFD_INFO_CGROUPID else None


@attrs.frozen
class ProcessFeatures:
    """What this kernel offers for acting on processes, probed once on cgoom's own process."""

    #: pidfd_open(2) (5.3).
    pidfd: bool
    #: process_mrelease(2) (5.15).
    process_mrelease: bool
    #: The PIDFD_GET_INFO ioctl with the cgroup id (6.13).
    pidfd_get_info: bool

    def names(self) -> list[str]:
        """The features present, as ``cgoom features`` prints them."""
        return [name for name, present in (("pidfd", self.pidfd),
                                           ("process_mrelease", self.process_mrelease),
                                           ("PIDFD_GET_INFO", self.pidfd_get_info)) if present]


_process_features: ProcessFeatures | None = None


def process_features() -> ProcessFeatures:
    """Probe (once) what the running kernel offers for acting on processes: cgoom opens a
    pidfd on itself, asks it for its cgroup id and calls process_mrelease on it (EINVAL: it
    exists, and cgoom is not dying; ENOSYS: it does not)."""
    global _process_features
    if _process_features is None:
        try:
            fd = os.pidfd_open(os.getpid())
        except OSError:
            _process_features = ProcessFeatures(False, False, False)
            return _process_features
        try:
            has_info = pidfd_cgroup_id(fd) is not None
            try:
                process_mrelease(fd)
                has_release = True
            except OSError as exc:
                has_release = exc.errno != errno.ENOSYS
        finally:
            os.close(fd)
        _process_features = ProcessFeatures(True, has_release, has_info)
    return _process_features


MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4


def mlockall(flags: int) -> None:
    """mlockall(2). ``MCL_ONFAULT`` (4.4) locks pages as they are faulted in instead of
    faulting every mapping in at once."""
    if _lib().mlockall(ctypes.c_int(flags)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"mlockall: {os.strerror(code)}")


class Inotify:
    """One inotify instance (non-blocking, close-on-exec). Not thread-safe; close() it."""

    __slots__ = ("fd",)

    def __init__(self) -> None:
        self.fd: int = _check(_lib().inotify_init1(IN_NONBLOCK | IN_CLOEXEC), "inotify_init1")

    def add_watch(self, path: str, mask: int) -> int:
        """The watch descriptor; the same one again for a path already watched."""
        return _check(
            _lib().inotify_add_watch(self.fd, os.fsencode(path), mask), "inotify_add_watch", path
        )

    def rm_watch(self, wd: int) -> None:
        """Remove a watch; one the kernel already dropped (EINVAL) is fine."""
        if _lib().inotify_rm_watch(self.fd, wd) < 0 and ctypes.get_errno() != errno.EINVAL:
            code = ctypes.get_errno()
            raise OSError(code, f"inotify_rm_watch: {os.strerror(code)}")

    def read(self) -> list[InotifyEvent]:
        """Every event queued now; ``[]`` when there is none (EAGAIN)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return [e for chunk in chunks for e in parse_inotify_events(chunk)]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def has_cap_sys_resource() -> bool:
    """Whether this process has CAP_SYS_RESOURCE (bit 24 of CapEff in /proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) & (1 << 24))
    except OSError:
        pass
    return False


def kernel_release(release: str | None = None) -> tuple[int, int]:
    """``(6, 1)`` for ``"6.1.0-56-amd64"``; ``(0, 0)`` if it cannot be read."""
    text = release if release is not None else os.uname().release
    parts = text.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def trim_heap() -> int | None:
    """Give the C heap's free memory back to the kernel (glibc's ``malloc_trim(0)``: the
    free space at the top of the heap, and since glibc 2.8 the free pages inside it, by
    ``MADV_DONTNEED``). A start-up's temporaries (the configuration parsed, every cgroup
    read once) leave megabytes free in the heap that a long-lived daemon would otherwise
    keep resident. Returns 1 if memory was released, 0 if not, ``None`` where the C library
    has no ``malloc_trim`` (musl)."""
    try:
        trim = _lib().malloc_trim
    except AttributeError:
        return None
    trim.argtypes = [ctypes.c_size_t]
    return int(trim(0))


#: File descriptors never given to clients, whatever the limit: the engine's own must still
#: open at OOM time (each snapshot read, a pidfd per process of a cgroup killed sparing its
#: -1000 processes, the watcher's PSI triggers, the process connector, /dev/kmsg, metrics).
FD_RESERVE = 256


def fd_room() -> int:
    """How many client connections this process may hold: its soft ``RLIMIT_NOFILE`` less
    :data:`FD_RESERVE` (the fds already open for other things are within the reserve)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(0, soft - FD_RESERVE)


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one, as a program that does not use
    select(2) should (systemd gives services 1024 soft, 524288 hard by default, and leaves
    raising it to them). Returns ``(before, after)``; a refusal leaves it as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]
