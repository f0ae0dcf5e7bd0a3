"""cgoom: out-of-memory policy for Linux cgroup v2.

General layout (data flows up; lower layers never import higher ones):

- ``_parse`` / ``_types``: pure parsers of the kernel's file formats and the frozen records
  they return. No I/O.
- ``_fs``: the I/O edge (``CgroupFS``, ``OsFS``) and the one place errnos become errors.
- ``_cgroup`` / ``_hierarchy``: typed handles on cgroups and on the cgroup2 mount.
- ``cli``: the ``cgoom`` command. ``testing``: fakes and the VM runner, for our tests and yours.

Everything public is re-exported here; import from ``cgoom``, not from the private modules.
"""

from ._cgroup import Cgroup as Cgroup
from ._cgroup import remove_tree as remove_tree
from ._errors import CgoomError as CgoomError
from ._errors import CgroupBusy as CgroupBusy
from ._errors import CgroupGone as CgroupGone
from ._errors import ControllerNotEnabled as ControllerNotEnabled
from ._errors import InvalidValue as InvalidValue
from ._errors import MemoryControllerUnavailable as MemoryControllerUnavailable
from ._errors import NotSupported as NotSupported
from ._errors import ParseError as ParseError
from ._errors import PermissionDenied as PermissionDenied
from ._errors import ProcessGone as ProcessGone
from ._fs import CgroupFS as CgroupFS
from ._fs import OsFS as OsFS
from ._hierarchy import Features as Features
from ._hierarchy import Hierarchy as Hierarchy
from ._parse import parse_size as _parse_size
from ._types import MAX as MAX
from ._types import CgroupEvents as CgroupEvents
from ._types import CgroupType as CgroupType
from ._types import Limit as Limit
from ._types import MemoryEvents as MemoryEvents
from ._types import MemoryStat as MemoryStat
from ._types import Pressure as Pressure
from ._types import PressureLine as PressureLine
from ._types import SwapEvents as SwapEvents

__version__ = "0.1.0.dev0"


def parse_size(value: int | str) -> int:
    """Bytes for a size such as ``"512M"`` (K/M/G/T/P/E are powers of 1024, as the kernel
    reads them), or the ``int`` itself; :class:`InvalidValue` for anything else."""
    return _parse_size(value, "size")


__all__ = [
    "MAX",
    "CgoomError",
    "Cgroup",
    "CgroupBusy",
    "CgroupEvents",
    "CgroupFS",
    "CgroupGone",
    "CgroupType",
    "ControllerNotEnabled",
    "Features",
    "Hierarchy",
    "InvalidValue",
    "Limit",
    "MemoryControllerUnavailable",
    "MemoryEvents",
    "MemoryStat",
    "NotSupported",
    "OsFS",
    "ParseError",
    "PermissionDenied",
    "Pressure",
    "PressureLine",
    "ProcessGone",
    "SwapEvents",
    "parse_size",
    "remove_tree",
]


def _fixup_module_metadata() -> None:
    # Tracebacks, reprs and docs show cgoom.CgroupGone, not cgoom._errors.CgroupGone.
    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith("cgoom._"):
            obj.__module__ = "cgoom"


_fixup_module_metadata()
