"""A fake cgroup2 filesystem: a plain directory tree with the kernel's file formats, and a
:class:`~cgoom.CgroupFS` that answers writes the way the kernel does (same errnos, same side
effects), so code under test takes the same paths as on a real kernel. It kills nothing and
runs no processes: ``cgroup.procs`` holds whatever ids the test put there.

What it simulates (Linux 6.1 semantics, kernel/cgroup/cgroup.c and mm/memcontrol.c):

- ``mkdir`` creates the core files, plus the memory files when the parent enables ``memory``
  in ``cgroup.subtree_control``; ``rmdir`` refuses (EBUSY) a populated cgroup or one with
  children.
- Limits are parsed like ``page_counter_memparse`` (number with K/M/G/T/P/E suffix or
  ``max``; EINVAL otherwise) and stored in whole pages, rounded down.
- ``cgroup.subtree_control``: EINVAL for an unknown controller name, ENOENT for a known one
  missing from ``cgroup.controllers``,
  EBUSY when a non-root cgroup with processes enables any (the no-internal-process rule);
  children gain or lose the controller's files.
- ``cgroup.procs``: moves the id from wherever it was; EBUSY into a non-root cgroup that
  enables controllers for children. ``populated`` in ``cgroup.events`` follows, up the tree.
- ``cgroup.kill`` (only ``1``; ERANGE otherwise) empties the subtree's ``cgroup.procs``.
- ``cgroup.freeze`` (``0``/``1``; ERANGE otherwise) sets ``frozen`` at once.
- ``memory.reclaim`` lowers ``memory.current``; EAGAIN when asked for more than is there;
  its ``swappiness=`` key is refused (EINVAL) before 6.10.
- Read-only files refuse writes with EINVAL, as kernfs does for root.

Files are rewritten only when their content changes, so inotify sees what it would see on a
real kernel (minus its 10-16 ms rate limit). A write and a read never interleave: kernfs shows
a file's old text or its new one, never the empty file between truncate and write, so every
read and write of the fake's files (its cgroups, /proc and /sys alike) holds one lock
(:meth:`FakeCgroupFS.replace`). Files keep their inode: a watch on them stays valid.
"""

from __future__ import annotations

import errno
import os
import re
import threading

from .._kernel._fs import OsFS

PAGE_SIZE = 4096
#: PAGE_COUNTER_MAX on 64-bit: LONG_MAX / PAGE_SIZE pages.
PAGE_COUNTER_MAX = (2**63 - 1) // PAGE_SIZE

#: Interface files and the kernel release that added them; files newer than the fake's
#: ``kernel`` are not created. (../notes/kernel-interface.md, version matrix.)
FILE_SINCE: dict[str, tuple[int, int]] = {
    "memory.peak": (5, 19),
    "memory.reclaim": (5, 19),
    "memory.zswap.current": (5, 19),
    "memory.zswap.max": (5, 19),
    "cgroup.kill": (5, 14),
    "memory.swap.peak": (6, 5),
}

#: memory.stat keys of Linux 6.1, in the kernel's order.
MEMORY_STAT_KEYS = (
    "anon", "file", "kernel", "kernel_stack", "pagetables", "sec_pagetables", "percpu", "sock",
    "vmalloc", "shmem", "zswap", "zswapped", "file_mapped", "file_dirty", "file_writeback",
    "swapcached", "anon_thp", "file_thp", "shmem_thp", "inactive_anon", "active_anon",
    "inactive_file", "active_file", "unevictable", "slab_reclaimable", "slab_unreclaimable",
    "slab", "workingset_refault_anon", "workingset_refault_file", "workingset_activate_anon",
    "workingset_activate_file", "workingset_restore_anon", "workingset_restore_file",
    "workingset_nodereclaim", "pgscan", "pgsteal", "pgscan_kswapd", "pgscan_direct",
    "pgsteal_kswapd", "pgsteal_direct", "pgfault", "pgmajfault", "pgrefill", "pgactivate",
    "pgdeactivate", "pglazyfree", "pglazyfreed", "zswpin", "zswpout", "thp_fault_alloc",
    "thp_collapse_alloc",
)

PRESSURE_ZERO = (
    "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
)


def memory_events_text(kernel: tuple[int, int], **counts: int) -> str:
    """``memory.events`` as the kernel prints it, with the keys ``kernel`` has."""
    keys = ["low", "high", "max", "oom", "oom_kill"]
    if kernel >= (5, 17):
        keys.append("oom_group_kill")
    return "".join(f"{k} {counts.get(k, 0)}\n" for k in keys)


def core_files(kernel: tuple[int, int], *, root: bool) -> dict[str, str]:
    """The core (non-controller) files of a cgroup and their initial text."""
    files = {
        "cgroup.controllers": "\n",
        "cgroup.subtree_control": "\n",
        "cgroup.procs": "",
        "cgroup.threads": "",
        "cgroup.max.depth": "max\n",
        "cgroup.max.descendants": "max\n",
        "cgroup.stat": "nr_descendants 0\nnr_dying_descendants 0\n",
        "memory.pressure": PRESSURE_ZERO,
        "cpu.pressure": PRESSURE_ZERO,
        "io.pressure": PRESSURE_ZERO,
    }
    if not root:
        files.update(
            {
                "cgroup.events": "populated 0\nfrozen 0\n",
                "cgroup.freeze": "0\n",
                "cgroup.kill": "",
                "cgroup.type": "domain\n",
            }
        )
    return {k: v for k, v in files.items() if kernel >= FILE_SINCE.get(k, (0, 0))}


def memory_files(kernel: tuple[int, int], *, root: bool) -> dict[str, str]:
    """The memory controller's files of a cgroup and their initial text."""
    files = {
        "memory.stat": "".join(f"{k} 0\n" for k in MEMORY_STAT_KEYS),
        "memory.reclaim": "",
    }
    if not root:
        files.update(
            {
                "memory.current": "0\n",
                "memory.peak": "0\n",
                "memory.min": "0\n",
                "memory.low": "0\n",
                "memory.high": "max\n",
                "memory.max": "max\n",
                "memory.oom.group": "0\n",
                "memory.events": memory_events_text(kernel),
                "memory.events.local": memory_events_text(kernel),
                "memory.swap.current": "0\n",
                "memory.swap.high": "max\n",
                "memory.swap.max": "max\n",
                "memory.swap.events": "high 0\nmax 0\nfail 0\n",
                "memory.zswap.current": "0\n",
                "memory.zswap.max": "max\n",
            }
        )
    return {k: v for k, v in files.items() if kernel >= FILE_SINCE.get(k, (0, 0))}


KNOWN_CONTROLLERS = frozenset(
    {"cpuset", "cpu", "io", "memory", "hugetlb", "pids", "rdma", "misc", "perf_event"}
)

_READ_ONLY = frozenset(
    {
        "cgroup.controllers", "cgroup.events", "cgroup.stat", "memory.current", "memory.peak",
        "memory.stat", "memory.events", "memory.events.local", "memory.swap.current",
        "memory.swap.events", "memory.zswap.current", "memory.numa_stat",
    }
)
_LIMITS = frozenset(
    {
        "memory.min", "memory.low", "memory.high", "memory.max", "memory.swap.high",
        "memory.swap.max", "memory.zswap.max",
    }
)
_MEMPARSE = re.compile(r"([0-9]+)([kKmMgGtTpPeE]?)")
_SHIFT = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}


def _digits(text: str) -> bool:
    # The kernel's kstrto*() take ASCII digits only; str.isdigit() also takes "\uff13".
    return text.isascii() and text.isdigit()


def _err(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def _memparse_pages(text: str, path: str) -> int:
    """``page_counter_memparse``: pages for a size, PAGE_COUNTER_MAX for ``max``."""
    text = text.strip()
    if text == "max":
        return PAGE_COUNTER_MAX
    match = _MEMPARSE.fullmatch(text)
    if match is None:
        raise _err(errno.EINVAL, path)
    size = int(match.group(1)) << _SHIFT[match.group(2).lower()]
    return min(size // PAGE_SIZE, PAGE_COUNTER_MAX)


class FakeCgroupFS(OsFS):
    """:class:`~cgoom.CgroupFS` over a fake tree at ``mount``, simulating the kernel's writes.

    Paths outside ``mount`` (the fake /proc and /sys) are plain files.
    """

    __slots__ = ("kernel", "lock", "mount", "owners", "pids", "proc_root")

    def __init__(self, mount: str, *, kernel: tuple[int, int] = (6, 1)) -> None:
        self.mount = os.path.normpath(mount)
        self.kernel = kernel
        #: uid overrides by path, so tests can delegate a cgroup without being root (see
        #: :meth:`FakeCgroupTree.chown`); ``stat`` reports them as ``st_uid``.
        self.owners: dict[str, int] = {}
        #: The fake /proc, when there is one: moving a pid updates its ``cgroup`` file.
        self.proc_root: str | None = None
        #: Where each pid was last moved to (a hint: files written directly bypass it).
        self.pids: dict[int, str] = {}
        #: Held by every read and write of the fake's files, from any thread.
        self.lock = threading.RLock()

    def read(self, path: str) -> str:
        with self.lock:
            return OsFS.read(self, path)

    def replace(self, path: str, data: str | bytes) -> None:
        """Write ``data`` as the whole content of ``path`` (created if missing), in place
        (same inode, so inotify watches stay) and atomically for every reader that goes
        through this object."""
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        with self.lock:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, raw)
            finally:
                os.close(fd)

    def stat(self, path: str) -> os.stat_result:
        st = os.stat(path)
        uid = self.owners.get(os.path.normpath(path))
        if uid is None:
            return st
        fields = list(st[:10])
        fields[4] = uid
        return os.stat_result(fields, {"st_ctime": st.st_ctime, "st_mtime": st.st_mtime,
                                       "st_atime": st.st_atime})

    def __repr__(self) -> str:
        return f"FakeCgroupFS({self.mount!r}, kernel={self.kernel!r})"

    # --- helpers -----------------------------------------------------------------------

    def _inside(self, path: str) -> bool:
        path = os.path.normpath(path)
        return path == self.mount or path.startswith(self.mount + "/")

    def _is_root(self, directory: str) -> bool:
        return os.path.normpath(directory) == self.mount

    def _get(self, directory: str, name: str) -> str:
        return self.read(os.path.join(directory, name))

    def _put(self, directory: str, name: str, text: str) -> None:
        path = os.path.join(directory, name)
        with self.lock:
            try:
                if OsFS.read(self, path) == text:
                    return
            except FileNotFoundError:
                pass
            self.replace(path, text)

    def _subdirs(self, directory: str) -> list[str]:
        return [os.path.join(directory, n) for n, is_dir in OsFS.listdir(self, directory) if is_dir]

    def _procs(self, directory: str) -> list[int]:
        return [int(p) for p in self._get(directory, "cgroup.procs").split()]

    def _update_populated(self, directory: str) -> None:
        """Recompute ``populated`` for ``directory`` and its ancestors, as
        cgroup_update_populated() propagates it up the tree."""
        while not self._is_root(directory):
            populated = bool(self._procs(directory)) or any(
                self._get(d, "cgroup.events").startswith("populated 1")
                for d in self._subdirs(directory)
            )
            events = self._get(directory, "cgroup.events")
            lines = [f"populated {int(populated)}" if ln.startswith("populated ") else ln
                     for ln in events.splitlines()]
            self._put(directory, "cgroup.events", "\n".join(lines) + "\n")
            directory = os.path.dirname(directory)

    def _populate(self, directory: str, controllers: set[str]) -> None:
        root = self._is_root(directory)
        for name, text in core_files(self.kernel, root=root).items():
            self._put(directory, name, text)
        self._put(directory, "cgroup.controllers", " ".join(sorted(controllers)) + "\n")
        if "memory" in controllers:
            for name, text in memory_files(self.kernel, root=root).items():
                self._put(directory, name, text)

    # --- CgroupFS ----------------------------------------------------------------------

    def mkdir(self, path: str) -> None:
        if not self._inside(path):
            OsFS.mkdir(self, path)
            return
        parent = os.path.dirname(os.path.normpath(path))
        if not os.path.isdir(parent):
            raise _err(errno.ENOENT, path)
        OsFS.mkdir(self, path)
        self._populate(path, set(self._get(parent, "cgroup.subtree_control").split()))

    def rmdir(self, path: str) -> None:
        if not self._inside(path):
            OsFS.rmdir(self, path)
            return
        if not os.path.isdir(path):
            raise _err(errno.ENOENT, path)
        if self._subdirs(path) or self._procs(path):
            raise _err(errno.EBUSY, path)
        for name, _ in OsFS.listdir(self, path):
            os.unlink(os.path.join(path, name))
        OsFS.rmdir(self, path)

    def write(self, path: str, data: str) -> None:
        with self.lock:  # the kernel's side effects and the file, seen as one change
            self._write(path, data)

    def _write(self, path: str, data: str) -> None:
        if not self._inside(path):
            OsFS.write(self, path, data)
            return
        directory, name = os.path.split(os.path.normpath(path))
        if not os.path.isdir(directory):
            raise _err(errno.ENOENT, path)
        if not os.path.exists(path):
            raise _err(errno.ENOENT, path)
        if name in _READ_ONLY:
            # kernfs: a file without a write op answers EINVAL (root's open succeeds).
            raise _err(errno.EINVAL, path)
        handler = getattr(self, "_write_" + name.replace(".", "_"), None)
        if name in _LIMITS:
            pages = _memparse_pages(data, path)
            self._put(directory, name,
                      "max\n" if pages == PAGE_COUNTER_MAX else f"{pages * PAGE_SIZE}\n")
        elif handler is not None:
            handler(directory, data.strip(), path)
        else:
            self._put(directory, name, data if data.endswith("\n") else data + "\n")

    def _write_memory_oom_group(self, directory: str, value: str, path: str) -> None:
        if value not in ("0", "1"):
            raise _err(errno.EINVAL, path)
        self._put(directory, "memory.oom.group", value + "\n")

    def _write_cgroup_freeze(self, directory: str, value: str, path: str) -> None:
        if not _digits(value.lstrip("-")):
            raise _err(errno.EINVAL, path)
        if value not in ("0", "1"):
            raise _err(errno.ERANGE, path)
        self._put(directory, "cgroup.freeze", value + "\n")
        events = self._get(directory, "cgroup.events")
        self._put(directory, "cgroup.events", re.sub(r"frozen \d", f"frozen {value}", events))

    def _write_cgroup_kill(self, directory: str, value: str, path: str) -> None:
        if not _digits(value.lstrip("-")):
            raise _err(errno.EINVAL, path)
        if value != "1":
            raise _err(errno.ERANGE, path)
        for current, _dirs, _files in os.walk(directory, topdown=False):
            self._put(current, "cgroup.procs", "")
            self._update_populated(current)

    def _write_cgroup_procs(self, directory: str, value: str, path: str) -> None:
        if not _digits(value):
            raise _err(errno.EINVAL, path)
        pid = int(value)
        if not self._is_root(directory) and self._get(directory, "cgroup.subtree_control").split():
            raise _err(errno.EBUSY, path)
        for current, _dirs, _files in os.walk(self.mount):
            if current != directory and pid in self._procs(current):
                self._put(current, "cgroup.procs",
                          "".join(f"{p}\n" for p in self._procs(current) if p != pid))
                if not self._is_root(current):
                    self._update_populated(current)
        if pid not in self._procs(directory):
            self._put(directory, "cgroup.procs",
                      "".join(f"{p}\n" for p in [*self._procs(directory), pid]))
        if not self._is_root(directory):
            self._update_populated(directory)
        self.pids[pid] = directory
        self.note_cgroup(pid, directory)

    def cgroup_of(self, pid: int) -> str | None:
        """The directory whose ``cgroup.procs`` holds ``pid``: the hint if it still holds,
        else a walk (for files a test wrote directly)."""
        hint = self.pids.get(pid)
        if hint is not None and os.path.isdir(hint) and pid in self._procs(hint):
            return hint
        for current, _dirs, _files in os.walk(self.mount):
            if pid in self._procs(current):
                return current
        return None

    def note_cgroup(self, pid: int, directory: str) -> None:
        """Write the fake ``/proc/<pid>/cgroup`` (``0::/path``) if that process exists."""
        if self.proc_root is not None and os.path.isdir(f"{self.proc_root}/{pid}"):
            rel = os.path.relpath(directory, self.mount)
            self.replace(f"{self.proc_root}/{pid}/cgroup", f"0::/{'' if rel == '.' else rel}\n")

    def remove_pid(self, pid: int) -> None:
        """The process exits: out of whichever ``cgroup.procs`` holds it."""
        for current, _dirs, _files in os.walk(self.mount):
            if pid in self._procs(current):
                self._put(current, "cgroup.procs",
                          "".join(f"{p}\n" for p in self._procs(current) if p != pid))
                if not self._is_root(current):
                    self._update_populated(current)

    def _write_cgroup_subtree_control(self, directory: str, value: str, path: str) -> None:
        available = set(self._get(directory, "cgroup.controllers").split())
        enabled = set(self._get(directory, "cgroup.subtree_control").split())
        enable: set[str] = set()
        disable: set[str] = set()
        for token in value.split():
            if token[:1] not in "+-" or token[1:] not in KNOWN_CONTROLLERS:
                raise _err(errno.EINVAL, path)
            if token[1:] not in available:
                raise _err(errno.ENOENT, path)
            (enable if token[0] == "+" else disable).add(token[1:])
        if enable - enabled and not self._is_root(directory) and self._procs(directory):
            raise _err(errno.EBUSY, path)
        children = self._subdirs(directory)
        for child in children:
            if disable & set(self._get(child, "cgroup.subtree_control").split()):
                raise _err(errno.EBUSY, path)
        new = (enabled | enable) - disable
        self._put(directory, "cgroup.subtree_control", " ".join(sorted(new)) + "\n")
        for child in children:
            self._put(child, "cgroup.controllers", " ".join(sorted(new)) + "\n")
            mem = memory_files(self.kernel, root=False)
            if "memory" in new - enabled:
                for name, text in mem.items():
                    self._put(child, name, text)
            elif "memory" in enabled - new:
                for name in mem:
                    os.unlink(os.path.join(child, name))

    def _write_memory_reclaim(self, directory: str, value: str, path: str) -> None:
        amount, *options = value.split()
        for option in options:
            key, _, val = option.partition("=")
            if (key != "swappiness" or not _digits(val) or int(val) > 200
                    or self.kernel < (6, 10)):  # swappiness= from 6.10
                raise _err(errno.EINVAL, path)
        pages = _memparse_pages(amount, path)
        if amount == "max" or pages == 0:
            raise _err(errno.EINVAL, path)
        current = int(self._get(directory, "memory.current"))
        wanted = pages * PAGE_SIZE
        self._put(directory, "memory.current", f"{max(0, current - wanted)}\n")
        if wanted > current:
            raise _err(errno.EAGAIN, path)
