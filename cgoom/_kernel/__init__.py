"""The kernel layer: what the kernel says and how to ask it.

Pure parsers of the kernel's formats and the frozen records they build (``_parse``,
``_types``), the filesystem edge where errnos become errors (``_fs``), the syscalls the stdlib
lacks (``_linux``), typed handles on cgroups and the mount (``_cgroup``, ``_hierarchy``),
/proc and /proc/meminfo readers (``_proc``, ``_meminfo``), path spelling (``_paths``), the
kernel log (``_kmsg``), netlink (``_netlink``, ``_taskstats``) and the thread that runs
blocking calls off the loop (``_worker``).

Imports nothing of cgoom but ``cgoom._errors``. Nothing is imported here, so that
``import cgoom`` stays lazy.
"""
