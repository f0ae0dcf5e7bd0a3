"""``FakeCgroupTree``: builds a fake cgroup2 host in a directory, for cgoom's tests and yours.

Layout under ``base``::

    cgroup/                      the cgroup2 mount (root cgroup files, then cgroups)
    proc/self/mountinfo          names cgroup/ as a cgroup2 mount, with the chosen options
    proc/self/cgroup             "0::/"
    proc/pressure/memory         system-wide PSI
    proc/meminfo                 MemTotal and MemAvailable (:meth:`FakeCgroupTree.set_meminfo`)
    sys/kernel/cgroup/features   what the kernel supports
    sys/kernel/cgroup/delegate   what a delegatee may write
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .._kernel._cgroup import Cgroup
from .._kernel._hierarchy import Hierarchy
from ._fake import MEMORY_STAT_KEYS, PRESSURE_ZERO, FakeCgroupFS, memory_events_text

_KERNEL_FEATURES = "nsdelegate favordynmods memory_localevents memory_recursiveprot\n"
_DELEGATE = (
    "cgroup.procs\ncgroup.threads\ncgroup.subtree_control\nmemory.oom.group\nmemory.reclaim\n"
)


class FakeCgroupTree:
    """A fake cgroup v2 host rooted at ``base``.

    ``controllers`` are those the root cgroup has (``memory=False`` in effect when "memory"
    is left out, like a host whose memory controller is bound to cgroup v1); the root
    enables all of them for children. ``kernel`` decides which files and counters exist
    (``(5, 15)`` has no memory.peak, memory.reclaim, zswap, nor ``oom_group_kill``).

    >>> tree = FakeCgroupTree(base)                                   # doctest: +SKIP
    >>> batch = tree.add("lab/batch", memory_max="1G", procs=[4242])  # doctest: +SKIP
    >>> tree.hierarchy.cgroup("lab/batch").memory_max()               # doctest: +SKIP
    1073741824
    """

    def __init__(
        self,
        base: str | os.PathLike[str],
        *,
        controllers: Iterable[str] = ("cpu", "io", "memory", "pids"),
        kernel: tuple[int, int] = (6, 1),
        mount_options: Iterable[str] = ("rw", "nosuid", "nodev", "noexec", "relatime",
                                        "nsdelegate", "memory_recursiveprot"),
    ) -> None:
        self.base = os.fspath(base)
        self.mount = os.path.join(self.base, "cgroup")
        self.kernel = kernel
        self._stat_given: set[str] = set()
        self.fs = FakeCgroupFS(self.mount, kernel=kernel)
        controllers = sorted(set(controllers))
        proc = os.path.join(self.base, "proc")
        kernel_dir = os.path.join(self.base, "sys", "kernel", "cgroup")
        for directory in (self.mount, os.path.join(proc, "self"), os.path.join(proc, "pressure"),
                          kernel_dir):
            os.makedirs(directory, exist_ok=True)
        escaped = self.mount.replace("\\", "\\134").replace(" ", "\\040")
        opts = ",".join(mount_options)
        self._write(os.path.join(proc, "self", "mountinfo"),
                    "22 1 0:21 / / rw,relatime - ext4 /dev/vda rw\n"
                    f"31 22 0:28 / {escaped} rw,nosuid - cgroup2 cgroup2 {opts}\n")
        self._write(os.path.join(proc, "self", "cgroup"), "0::/\n")
        self._write(os.path.join(proc, "self", "oom_score_adj"), "0\n")
        self._write(os.path.join(proc, "pressure", "memory"), PRESSURE_ZERO)
        self.set_meminfo(total=4 << 30, available=3 << 30)
        self._write(os.path.join(kernel_dir, "features"), _KERNEL_FEATURES)
        self._write(os.path.join(kernel_dir, "delegate"), _DELEGATE)
        self.fs.proc_root = proc
        self.fs._populate(self.mount, set(controllers))
        self.fs.write(os.path.join(self.mount, "cgroup.subtree_control"),
                      " ".join(f"+{c}" for c in controllers))
        self.hierarchy = Hierarchy.discover(proc_root=proc, sys_root=os.path.join(self.base, "sys"),
                                            fs=self.fs)

    def _write(self, path: str, text: str | bytes) -> None:
        self.fs.replace(path, text)

    def cgroup(self, path: str) -> Cgroup:
        return self.hierarchy.cgroup(path)

    def add(
        self,
        path: str,
        *,
        procs: Iterable[int] = (),
        memory_current: int | None = None,
        memory_max: int | str | None = None,
        memory_high: int | str | None = None,
        enable: Iterable[str] = (),
    ) -> Cgroup:
        """Create ``path`` and its missing ancestors (each ancestor enables the root's
        controllers for its children, as a supervisor would), then set what is given."""
        cgroup = self.hierarchy.root
        root_controllers = sorted(cgroup.cgroup_controllers())
        for part in [p for p in path.split("/") if p]:
            if not cgroup.is_root and not cgroup.cgroup_subtree_control():
                cgroup.enable_controllers(*root_controllers)
            cgroup = cgroup.create_child(part, exist_ok=True)
        if enable:
            cgroup.enable_controllers(*enable)
        for pid in procs:
            cgroup.attach(pid)
        if memory_current is not None:
            self.set(path, "memory.current", f"{memory_current}\n")
        if memory_max is not None:
            cgroup.set_memory_max(memory_max)
        if memory_high is not None:
            cgroup.set_memory_high(memory_high)
        return cgroup

    def set(self, path: str, name: str, text: str) -> None:
        """Write ``text`` into interface file ``name`` of ``path`` as the *kernel* would
        (read-only files included), bypassing the simulated write rules."""
        cgroup = self.cgroup(path)
        self._write(os.path.join(cgroup.dir, name), text)
        if name == "memory.stat":
            self._stat_given.add(cgroup.path)
        elif (name == "memory.current" and cgroup.path not in self._stat_given
              and text.strip().isdigit()
              and os.path.exists(stat := os.path.join(cgroup.dir, "memory.stat"))):
            # Until a test says otherwise (set_memory_stat), a cgroup's memory is anonymous:
            # all of it freed by a kill (MemoryStat.freeable), as a test that sets only
            # memory.current means it.
            self._write(stat, _stat_text({"anon": int(text)}))

    def set_memory_stat(self, path: str, **fields: int) -> None:
        """``memory.stat`` of ``path``: ``fields`` in bytes (``anon=``, ``file=``,
        ``shmem=``, ``zswap=``, ...), every other key of Linux 6.1 at 0. From then on
        memory.current no longer sets ``anon``."""
        self.set(path, "memory.stat", _stat_text(fields))

    def set_meminfo(self, *, total: int, available: int) -> None:
        """The machine's ``MemTotal`` and ``MemAvailable`` in ``proc/meminfo`` (bytes,
        written as the kernel does, in kB; default 4 GiB and 3 GiB)."""
        self._write(os.path.join(self.base, "proc", "meminfo"),
                    f"MemTotal:       {total // 1024} kB\nMemFree:        {available // 1024} kB\n"
                    f"MemAvailable:   {available // 1024} kB\nBuffers:           0 kB\n")

    def set_memory_events(self, path: str, *, local: bool = False, **counts: int) -> None:
        """Set ``memory.events`` (or ``.local``) counters, e.g. ``high=3, oom_kill=1``."""
        name = "memory.events.local" if local else "memory.events"
        self.set(path, name, memory_events_text(self.kernel, **counts))

    def memory_event(self, path: str, name: str, count: int = 1) -> None:
        """Count ``count`` memory events ``name`` (``"high"``, ``"oom_kill"``, ...) as the
        kernel's memcg_memory_event() does: in ``memory.events.local`` of ``path``, and in
        ``memory.events`` of ``path`` and every ancestor except the root."""
        cgroup = self.cgroup(path)
        self._bump(cgroup, "memory.events.local", name, count)
        node: Cgroup | None = cgroup
        while node is not None and not node.is_root:
            self._bump(node, "memory.events", name, count)
            node = node.parent

    def _bump(self, cgroup: Cgroup, filename: str, name: str, count: int) -> None:
        events = cgroup.memory_events(local=filename.endswith(".local"))
        counts = {k: getattr(events, k) for k in ("low", "high", "max", "oom", "oom_kill")}
        if events.oom_group_kill is not None:
            counts["oom_group_kill"] = events.oom_group_kill
        if name not in counts:
            raise ValueError(f"{name!r} is not a memory event of Linux {self.kernel}")
        counts[name] += count
        self.set(cgroup.path, filename, memory_events_text(self.kernel, **counts))

    def add_process(self, pid: int, *, name: str | bytes = "worker", oom_score_adj: int = 0,
                    rss: int = 0, start_time: int | None = None, state: str = "S",
                    kernel_thread: bool = False, private: int | None = None,
                    pss_anon: int | None = None, swap_pss: int = 0) -> None:
        """A fake ``/proc/<pid>`` (stat, comm, oom_score_adj, statm, smaps_rollup) for
        process snapshots; ``rss`` in bytes; ``name`` may be any bytes, as
        ``prctl(PR_SET_NAME)`` allows; ``start_time`` (field 22 of stat) defaults to
        ``pid``. smaps_rollup: ``private`` bytes of its RSS its own (Private_Dirty; default
        all of it), the rest shared with one other process (Pss counts half of it),
        ``pss_anon`` (default: Pss) and ``swap_pss``. Put the pid in a cgroup with
        ``add(..., procs=[pid])``."""
        base = os.path.join(self.base, "proc", str(pid))
        os.makedirs(base, exist_ok=True)
        pages = rss // os.sysconf("SC_PAGE_SIZE")
        comm = name.encode() if isinstance(name, str) else name
        flags = 0x00200000 if kernel_thread else 0x00400000
        start = pid if start_time is None else start_time
        # proc(5): pid (comm) state ppid pgrp session tty tpgid flags ... starttime(22)
        # vsize(23) rss(24) ...
        fields = [state, "1", str(pid), str(pid), "0", "-1", str(flags)] + ["0"] * 12
        fields += [str(start), str(pages * 2 * 4096), str(pages)] + ["0"] * 28
        self._write(os.path.join(base, "stat"),
                    f"{pid} (".encode() + comm + b") " + " ".join(fields).encode() + b"\n")
        self._write(os.path.join(base, "comm"), comm + b"\n")
        self._write(os.path.join(base, "oom_score_adj"), f"{oom_score_adj}\n")
        self._write(os.path.join(base, "statm"), f"{pages * 2} {pages} 0 0 0 0 0\n")
        own = rss if private is None else private
        pss = own + (rss - own) // 2
        self._write(os.path.join(base, "smaps_rollup"), (
            "00400000-7ffd00000000 ---p 00000000 00:00 0                          [rollup]\n"
            + "".join(f"{key + ':':<16}{value // 1024:>8} kB\n" for key, value in (
                ("Rss", rss), ("Pss", pss), ("Pss_Dirty", pss),
                ("Pss_Anon", pss if pss_anon is None else pss_anon), ("Pss_File", 0),
                ("Pss_Shmem", 0), ("Shared_Clean", 0), ("Shared_Dirty", rss - own),
                ("Private_Clean", 0), ("Private_Dirty", own), ("Referenced", rss),
                ("Anonymous", rss), ("Swap", swap_pss), ("SwapPss", swap_pss),
                ("Locked", 0)))).encode())
        where = self.fs.cgroup_of(pid)
        if where is not None:
            self.fs.note_cgroup(pid, where)
        else:
            self._write(os.path.join(base, "cgroup"), "0::/\n")

    def remove_process(self, pid: int) -> None:
        """The process exits: its fake ``/proc/<pid>`` goes (it stays in ``cgroup.procs``
        until the test takes it out, as in the moment before the kernel does)."""
        base = os.path.join(self.base, "proc", str(pid))
        for name in os.listdir(base):
            os.unlink(os.path.join(base, name))
        os.rmdir(base)

    def chown(self, path: str, uid: int) -> None:
        """Delegate ``path`` to ``uid`` as ``chown`` (systemd's ``Delegate=yes``) would: its
        directory's ``st_uid`` reads ``uid`` (no root needed: the fake keeps an overlay)."""
        self.fs.owners[os.path.normpath(self.cgroup(path).dir)] = uid

    def remove_behind_our_back(self, path: str) -> None:
        """Delete ``path`` (and its subtree) as another process would, ignoring the rules."""
        directory = self.cgroup(path).dir
        for current, _dirs, files in os.walk(directory, topdown=False):
            for name in files:
                os.unlink(os.path.join(current, name))
            os.rmdir(current)


def _stat_text(fields: dict[str, int]) -> str:
    keys = list(MEMORY_STAT_KEYS) + [k for k in fields if k not in MEMORY_STAT_KEYS]
    return "".join(f"{key} {fields.get(key, 0)}\n" for key in keys)
