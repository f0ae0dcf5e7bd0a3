"""``Hierarchy``: the cgroup2 mount, its options, walking and matching cgroups, and the
feature probe. Every path goes through the mount found here (or given), and /proc and /sys
through ``proc_root`` and ``sys_root``, so a fake tree can stand in for all three.

Some facts about finding cgroup v2 (Documentation/admin-guide/cgroup-v2.rst):

- cgroup2 is usually at /sys/fs/cgroup (systemd's unified mode); in hybrid mode it is at
  /sys/fs/cgroup/unified while v1 hierarchies own the controllers. A controller can be bound
  to one hierarchy only, so with a v1 ``memory`` mount the v2 root's ``cgroup.controllers``
  has no ``memory`` and no cgroup has ``memory.*`` files (these development machines).
- Mount options that change semantics: ``memory_localevents`` (5.2) makes memory.events
  local-only; ``memory_recursiveprot`` (5.7) makes memory.min/low protection recursive;
  ``nsdelegate`` (4.15) makes cgroup namespaces delegation boundaries.
- /sys/kernel/cgroup/features lists the options this kernel supports; /sys/kernel/cgroup/delegate
  the files a delegatee may write on its delegation root. Both are absent on old kernels.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable, Iterator

import attrs

from .._errors import CgroupGone, InvalidValue, MemoryControllerUnavailable, ParseError
from . import _parse
from ._cgroup import Cgroup, normpath
from ._fs import CgroupFS, OsFS


@attrs.frozen
class Features:
    """What this kernel and mount provide, probed once per :class:`Hierarchy`."""

    #: Mount options of the cgroup2 mount (``nsdelegate``, ``memory_localevents``, ...).
    mount_options: frozenset[str]
    #: /sys/kernel/cgroup/features, or ``None`` where the kernel has no such file.
    kernel_features: frozenset[str] | None
    #: /sys/kernel/cgroup/delegate, or ``None`` where the kernel has no such file.
    delegatable: frozenset[str] | None
    #: The root cgroup's ``cgroup.controllers``.
    controllers: frozenset[str]
    #: Interface files of a non-root cgroup with the memory controller, where one exists
    #: (the first child of the root that has it), else of the root cgroup, which lacks most
    #: memory.* files: on a host with no such child yet, :meth:`has` answers for the root.
    #: The probe never creates a cgroup to find out.
    interface_files: frozenset[str]
    #: The cgroup whose files ``interface_files`` lists.
    probed: str
    #: PSI is available (/proc/pressure/memory exists).
    psi: bool

    @property
    def memory(self) -> bool:
        """The memory controller is available on this cgroup v2 hierarchy."""
        return "memory" in self.controllers

    @property
    def local_events(self) -> bool:
        """``memory.events`` is local-only (mount option ``memory_localevents``)."""
        return "memory_localevents" in self.mount_options

    def has(self, name: str) -> bool:
        """Whether interface file ``name`` exists on this kernel (as far as the probe saw)."""
        return name in self.interface_files


def _frozenset(values: Iterable[str]) -> frozenset[str]:
    return frozenset(values)


def _read_set(fs: CgroupFS, path: str) -> frozenset[str] | None:
    try:
        return frozenset(fs.read(path).split())
    except OSError:
        return None


@attrs.define(eq=False)
class Hierarchy:
    """A cgroup2 hierarchy: where it is mounted and how, and handles on its cgroups.

    ``Hierarchy.discover()`` finds the mount; ``Hierarchy(mount=...)`` takes one you know.
    """

    mount: str = attrs.field(converter=normpath)
    options: frozenset[str] = attrs.field(factory=frozenset, converter=_frozenset)
    fs: CgroupFS = attrs.field(factory=OsFS)
    proc_root: str = "/proc"
    sys_root: str = "/sys"
    _features: Features | None = attrs.field(default=None, init=False)

    @classmethod
    def discover(
        cls, *, proc_root: str = "/proc", sys_root: str = "/sys", fs: CgroupFS | None = None
    ) -> Hierarchy:
        """Find the cgroup2 mount in ``<proc_root>/self/mountinfo``.

        Raises :class:`~cgoom.MemoryControllerUnavailable` when there is no cgroup2 mount.
        Where there are several (a container with its own), the one at /sys/fs/cgroup wins,
        then the shortest path.
        """
        fs = fs if fs is not None else OsFS()
        source = os.path.join(proc_root, "self", "mountinfo")
        try:
            text = fs.read(source)
        except OSError as exc:
            raise MemoryControllerUnavailable(
                f"cannot read {source} to find the cgroup2 mount: {exc.strerror}", path=source
            ) from exc
        mounts = [(point, opts) for point, fstype, opts in _parse.parse_mountinfo(text, source)
                  if fstype == "cgroup2"]
        if not mounts:
            raise MemoryControllerUnavailable(
                f"no cgroup2 filesystem is mounted ({source} lists none); mount one with "
                "'mount -t cgroup2 none /sys/fs/cgroup', or boot a kernel with cgroup v2 "
                "(systemd.unified_cgroup_hierarchy=1)",
                path=source,
            )
        mounts.sort(key=lambda m: (m[0] != "/sys/fs/cgroup", len(m[0])))
        point, opts = mounts[0]
        return cls(mount=point, options=opts, fs=fs, proc_root=proc_root, sys_root=sys_root)

    @classmethod
    def at(
        cls, mount: str, *, proc_root: str = "/proc", sys_root: str = "/sys",
        fs: CgroupFS | None = None,
    ) -> Hierarchy:
        """The cgroup2 hierarchy at ``mount``, a directory you name (a second mount, a
        container's, a fake tree).

        Its mount options come from ``<proc_root>/self/mountinfo`` where ``mount`` is listed
        there as a cgroup2 mount, and are empty otherwise. The kernel's facts (features,
        delegatable files, PSI) are read under ``sys_root`` and ``proc_root``, never from the
        host's /sys and /proc unless those are the roots given. Raises
        :class:`~cgoom.InvalidValue` when ``mount`` is not a directory with
        ``cgroup.controllers``.
        """
        fs = fs if fs is not None else OsFS()
        mount = normpath(os.path.abspath(mount))
        if not os.path.isdir(mount):
            raise InvalidValue(f"{mount}: no such directory, so no cgroup2 mount",
                               value=mount, path=mount)
        if not fs.exists(os.path.join(mount, "cgroup.controllers")):
            raise InvalidValue(f"{mount}: not a cgroup2 mount (it has no cgroup.controllers)",
                               value=mount, path=mount)
        options: frozenset[str] = frozenset()
        source = os.path.join(proc_root, "self", "mountinfo")
        try:
            listed = _parse.parse_mountinfo(fs.read(source), source)
        except (OSError, ParseError):
            listed = []
        for point, fstype, opts in listed:
            if fstype == "cgroup2" and normpath(point) == mount:
                options = frozenset(opts)
        return cls(mount=mount, options=options, fs=fs, proc_root=proc_root, sys_root=sys_root)

    def __repr__(self) -> str:
        opts = ",".join(sorted(self.options))
        return f"<Hierarchy cgroup2 at {self.mount} ({opts})>"

    # --- handles -----------------------------------------------------------------------

    @property
    def root(self) -> Cgroup:
        return Cgroup(self.mount, "/", self.fs)

    def cgroup(self, path: str) -> Cgroup:
        """A handle on ``path`` below the mount (``"lab/batch"`` or ``"/lab/batch"``), or an
        absolute directory inside the mount."""
        if os.path.isabs(path) and (path == self.mount or path.startswith(self.mount + "/")):
            path = path[len(self.mount):] or "/"
        return Cgroup(self.mount, path, self.fs)

    def own_cgroup(self, pid: int | str = "self") -> Cgroup:
        """The cgroup process ``pid`` lives in, from ``/proc/<pid>/cgroup`` (``0::/path``)."""
        source = os.path.join(self.proc_root, str(pid), "cgroup")
        try:
            text = self.fs.read(source)
        except OSError as exc:
            raise CgroupGone(f"cannot read {source}: {exc.strerror}", path=source) from exc
        for line in text.splitlines():
            if line.startswith("0::"):
                return self.cgroup(line[3:])
        raise ParseError(f"{source}: no cgroup v2 line ('0::/path') in {text!r}", path=source)

    def walk(self, start: str = "/") -> Iterator[Cgroup]:
        """Every cgroup from ``start`` down, parents first; vanishing ones are skipped."""
        return self.cgroup(start).walk()

    def glob(self, pattern: str) -> list[Cgroup]:
        """Cgroups whose path matches ``pattern``, segment by segment with fnmatch rules
        (``workload.slice/*``, ``*/batch-?``); ``**`` matches any number of segments."""
        parts = [p for p in pattern.split("/") if p]
        found: list[Cgroup] = []
        self._glob(self.root, parts, found)
        return sorted(set(found), key=lambda c: c.path)

    def _glob(self, cgroup: Cgroup, parts: list[str], found: list[Cgroup]) -> None:
        if not parts:
            found.append(cgroup)
            return
        head, rest = parts[0], parts[1:]
        if head == "**":
            self._glob(cgroup, rest, found)
        try:
            children = cgroup.children()
        except CgroupGone:
            return
        for child in children:
            if head == "**":
                self._glob(child, parts, found)
            elif fnmatch.fnmatchcase(child.name, head):
                self._glob(child, rest, found)

    # --- features ----------------------------------------------------------------------

    def features(self) -> Features:
        """Probe what this kernel and mount provide. Done once; later calls return the same
        record (features do not change while the system runs)."""
        if self._features is None:
            self._features = self._probe()
        return self._features

    def _probe(self) -> Features:
        root = self.root
        controllers = root.cgroup_controllers()
        probed = root
        if "memory" in root.cgroup_subtree_control():
            for child in root.children():
                try:
                    if "memory" in child.cgroup_controllers():
                        probed = child
                        break
                except CgroupGone:
                    continue
        kernel = os.path.join(self.sys_root, "kernel", "cgroup")
        return Features(
            mount_options=self.options,
            kernel_features=_read_set(self.fs, os.path.join(kernel, "features")),
            delegatable=_read_set(self.fs, os.path.join(kernel, "delegate")),
            controllers=controllers,
            interface_files=probed.interface_files(),
            probed=probed.path,
            psi=self.fs.exists(os.path.join(self.proc_root, "pressure", "memory")),
        )

    def require_memory(self) -> None:
        """Raise :class:`~cgoom.MemoryControllerUnavailable`, saying why and what to do,
        unless this hierarchy has the memory controller."""
        features = self.features()
        if features.memory:
            return
        v1 = self._v1_memory_mount()
        where = f" (it is bound to cgroup v1, mounted at {v1})" if v1 else ""
        listed = " ".join(sorted(features.controllers)) or "nothing"
        raise MemoryControllerUnavailable(
            f"the cgroup v2 hierarchy at {self.mount} has no memory controller{where}: "
            f"{self.mount}/cgroup.controllers lists {listed}, so no cgroup here has memory.* "
            "files. Boot the kernel with cgroup_no_v1=all (or "
            "systemd.unified_cgroup_hierarchy=1) so that the memory controller is on cgroup v2 "
            "(docs/operator-guide.md)",
            path=os.path.join(self.mount, "cgroup.controllers"),
        )

    def _v1_memory_mount(self) -> str | None:
        source = os.path.join(self.proc_root, "self", "mountinfo")
        try:
            mounts = _parse.parse_mountinfo(self.fs.read(source), source)
        except (OSError, ParseError):
            return None
        for point, fstype, opts in mounts:
            if fstype == "cgroup" and "memory" in opts:
                return point
        return None
