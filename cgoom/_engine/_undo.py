"""The durable undo log: every change cgoom makes on the host that it must put back
(memory.high for early triggers and tripwires, memory.oom.group, cgroup.freeze, a raised
memory.max and its mark), written down *before* the change, so that a cgoom killed in the
middle (SIGKILL, the kernel's OOM killer, a watchdog abort, a crash) leaves nothing behind:
the next cgoom puts it back when it starts, and ``cgoom restore`` (systemd's
``ExecStopPost=``, which runs after a crash too) does it without starting one.

Owns the state file (``path``) and its lock. Touches only the files its entries name, and
only when putting back. Thread-safe: the tripwires note their originals from the engine's
writer thread.

Some facts this relies on:

- The file lives on a tmpfs (``/run/cgoom``, systemd's ``RuntimeDirectory=``): it survives
  cgoom, not a reboot, and neither do the cgroups it describes.
- It is replaced whole, never edited: written to a temporary file, ``fsync``\\ ed, renamed
  over (atomic), the directory ``fsync``\\ ed; a crash leaves the old version or the new.
- The first value noted for a (cgroup, file) is the original; later changes of the same
  file (a tripwire stepping up) do not replace it.
- An entry carries the cgroup's inode: a cgroup removed and re-created since took cgoom's
  change with it, and the new one is left alone.
- The running cgoom holds ``flock(LOCK_EX)`` on ``<path>.lock``; the kernel drops it when the
  process dies, however it dies. ``cgoom restore`` refuses while it is held.
- What it writes back comes from a file only cgoom's user may write (checked when read: a
  file others could write is refused, as sshd refuses its keys), and only to the files
  listed in :data:`FILES`, with values of the form each takes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import threading
from collections.abc import Callable

import attrs

from .._errors import CgoomError, CgroupGone
from .._kernel._cgroup import OVERLIMIT_XATTR
from .._kernel._hierarchy import Hierarchy
from .._kernel._paths import normalize_path

#: What may be put back, and the values each takes (an xattr: any short text, or absent).
FILES: dict[str, re.Pattern[str]] = {
    "memory.high": re.compile(r"max|\d{1,20}"),
    "memory.max": re.compile(r"max|\d{1,20}"),
    "memory.oom.group": re.compile(r"[01]"),
    "cgroup.freeze": re.compile(r"[01]"),
    OVERLIMIT_XATTR: re.compile(r"[\x20-\x7e]{0,64}"),
}
VERSION = 1


@attrs.frozen
class Change:
    """``file`` of ``cgroup`` (inode ``inode``) was ``old`` before cgoom changed it
    (``None``: an xattr that was not set)."""

    cgroup: str
    file: str
    old: str | None
    inode: int | None


def default_path() -> str | None:
    """Where ``cgoom run`` keeps it: ``/run/cgoom/undo.json`` as root, else under
    ``$XDG_RUNTIME_DIR``; ``None`` when neither applies."""
    if os.geteuid() == 0:
        return "/run/cgoom/undo.json"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(runtime, "cgoom", "undo.json") if runtime else None


class UndoLog:
    """The changes to put back, kept in memory and, with ``path``, in the state file."""

    def __init__(self, hierarchy: Hierarchy, path: str | None = None) -> None:
        self.hierarchy = hierarchy
        self.path = path
        self._changes: dict[tuple[str, str], Change] = {}
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        #: The lock is held and the file was read (only then is it written or removed).
        self._opened = False

    def __len__(self) -> int:
        return len(self._changes)

    @property
    def changes(self) -> list[Change]:
        with self._lock:
            return list(self._changes.values())

    # --- the life cycle ------------------------------------------------------------------

    def open(self) -> list[str]:
        """Take the lock, and put back whatever a previous cgoom left in the file. Returns
        what was done, one sentence each. :class:`~cgoom.CgoomError` if another cgoom holds
        the lock or the file cannot be used."""
        if self.path is None:
            return []
        directory = os.path.dirname(os.path.abspath(self.path))
        _own_directory(directory)
        fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise CgoomError(f"{self.path}: another cgoom is running (it holds "
                                 f"{self.path}.lock): stop it first", path=self.path) from exc
            raise
        self._lock_fd = fd
        left = read_state(self.path)  # one it cannot trust raises: kept, for whoever looks
        self._opened = True
        if not left:
            return []
        lines = [f"a previous cgoom left {len(left)} change(s) in {self.path}: putting "
                 "them back"]
        lines += put_back(self.hierarchy, left)
        self._save()  # empty
        return lines

    def close(self) -> None:
        """Release the lock; an empty log leaves no file."""
        if self._lock_fd is None:
            return
        if self.path is not None and self._opened and not self._changes:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._lock_fd)
        self._lock_fd = None
        self._opened = False

    # --- changes -------------------------------------------------------------------------

    def before(self, cgroup: str, file: str, old: str | None) -> None:
        """About to change ``file`` of ``cgroup`` from ``old``: noted (durably) first. The
        first value noted for a file is kept (it is the original)."""
        assert file in FILES, file
        path = normalize_path(cgroup)
        with self._lock:
            if (path, file) in self._changes:
                return
            try:
                inode: int | None = self.hierarchy.fs.stat(self.hierarchy.cgroup(path).dir).st_ino
            except OSError:
                inode = None
            self._changes[(path, file)] = Change(path, file, old, inode)
            self._save()

    def forget(self, cgroup: str, file: str) -> None:
        """``file`` of ``cgroup`` was put back by whoever changed it."""
        with self._lock:
            if self._changes.pop((normalize_path(cgroup), file), None) is not None:
                self._save()

    def put_back(self) -> list[str]:
        """Put back every change, newest first; what could not be, one sentence each."""
        with self._lock:
            changes = list(self._changes.values())
            problems = [line for line in put_back(self.hierarchy, changes)
                        if not line.startswith("put back ")]
            self._changes.clear()
            self._save()
        return problems

    def clear(self) -> None:
        """Keep the changes (``restore=False``): nothing is left to put back."""
        with self._lock:
            self._changes.clear()
            self._save()

    def _save(self) -> None:
        if self.path is None or not self._opened:
            return  # in memory only; never over a file this process does not hold
        data = json.dumps({"version": VERSION, "changes": [
            attrs.asdict(c) for c in self._changes.values()]}, sort_keys=True)
        temporary = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        directory = os.open(os.path.dirname(os.path.abspath(self.path)),
                            os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def read_state(path: str) -> list[Change]:
    """The changes a state file lists; ``[]`` when there is none.
    :class:`~cgoom.CgoomError` naming the file, the entry and the reason for one that
    cannot be trusted or read (nothing of it is put back then)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CgoomError(f"cannot read {path}: {exc.strerror}", path=path) from exc
    with os.fdopen(fd) as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() \
                or st.st_mode & 0o022:
            raise CgoomError(f"{path}: will not put back what it lists: it is not a regular "
                             f"file of uid {os.geteuid()} that only its owner may write "
                             f"(uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o})",
                             path=path)
        text = f.read(1 << 20)
    try:
        data = json.loads(text or "{}")
        raw = data.get("changes", []) if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise ValueError("no list of changes")
        changes = [_change(entry) for entry in raw]
    except (ValueError, TypeError, KeyError) as exc:
        raise CgoomError(f"{path}: not a cgoom undo log ({exc}); nothing in it was put back",
                         path=path) from exc
    return changes


def _change(entry: object) -> Change:
    if not isinstance(entry, dict):
        raise ValueError(f"entry {entry!r}: not an object")
    cgroup, file, old, inode = (entry.get("cgroup"), entry.get("file"), entry.get("old"),
                                entry.get("inode"))
    if not isinstance(cgroup, str) or not cgroup.startswith("/") \
            or normalize_path(cgroup) != cgroup or ".." in cgroup.split("/"):
        raise ValueError(f"cgroup {cgroup!r}: not a cgroup path")
    pattern = FILES.get(file) if isinstance(file, str) else None
    if pattern is None or not isinstance(file, str):
        raise ValueError(f"file {file!r}: cgoom puts back only {', '.join(FILES)}")
    if not (old is None and file == OVERLIMIT_XATTR) and not (
            isinstance(old, str) and pattern.fullmatch(old)):
        raise ValueError(f"{file} of {cgroup}: {old!r} is not a value it takes")
    if inode is not None and (isinstance(inode, bool) or not isinstance(inode, int)):
        raise ValueError(f"inode {inode!r}: not an integer")
    return Change(cgroup, file, old, inode)


def put_back(hierarchy: Hierarchy, changes: list[Change]) -> list[str]:
    """Write each change's old value back, newest first; one sentence each. A cgroup gone
    or re-created since is left alone; a memory.max is never put back below what the cgroup
    uses now (that would reclaim at once or call the kernel's OOM killer)."""
    lines = []
    for change in reversed(changes):
        cgroup = hierarchy.cgroup(change.cgroup)
        what = f"{change.file} of {change.cgroup}"
        try:
            inode = hierarchy.fs.stat(cgroup.dir).st_ino
        except OSError:
            lines.append(f"{what}: the cgroup is gone; nothing to put back")
            continue
        if change.inode is not None and inode != change.inode:
            lines.append(f"{what}: the cgroup was re-created since; left alone")
            continue
        try:
            if change.file == OVERLIMIT_XATTR:
                cgroup.set_xattr(change.file, change.old)
            elif change.file == "memory.max" and change.old != "max" \
                    and change.old is not None and _usage(cgroup.memory_current) >= int(
                        change.old):
                lines.append(f"{what}: left raised: usage is above the original "
                             f"{change.old}")
                continue
            else:
                assert change.old is not None
                cgroup.write_file(change.file, change.old)
        except CgroupGone:
            lines.append(f"{what}: the cgroup is gone; nothing to put back")
            continue
        except CgoomError as exc:
            lines.append(f"{what}: could not put back {change.old!r}: {exc}")
            continue
        lines.append(f"put back {what}: {change.old if change.old is not None else '(unset)'}")
    return lines


def _usage(read: Callable[[], int]) -> int:
    try:
        return read()
    except CgoomError:
        return 0


def _own_directory(directory: str) -> None:
    """The state file's directory: made (0700) if missing; refused when others may write
    it (they could plant the file cgoom puts back from)."""
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.stat(directory)
    except OSError as exc:
        raise CgoomError(f"cannot use {directory} for the undo log: {exc.strerror}",
                         path=directory) from exc
    if st.st_mode & 0o022 or st.st_uid != os.geteuid():
        raise CgoomError(f"will not keep the undo log in {directory}: others can write it "
                         f"(mode {stat.S_IMODE(st.st_mode):04o}, uid {st.st_uid}); use a "
                         "directory only cgoom's user can write, such as RuntimeDirectory=cgoom",
                         path=directory)
