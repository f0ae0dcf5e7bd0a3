"""cgoom: out-of-memory policy for Linux cgroup v2.

General layout (data flows up; lower layers never import higher ones):

- ``_parse`` / ``_types``: pure parsers of the kernel's file formats and the frozen records
  they return. No I/O.
- ``_fs``: the I/O edge (``CgroupFS``, ``OsFS``) and the one place errnos become errors.
- ``_cgroup`` / ``_hierarchy``: typed handles on cgroups and on the cgroup2 mount.
- ``_linux``: inotify and the other few interfaces the stdlib lacks.
- ``_events`` / ``_watcher``: event records (pure) and the watcher that produces them from
  inotify and PSI triggers on the event loop.
- ``cli``: the ``cgoom`` command. ``testing``: fakes and the VM runner, for our tests and yours.

Everything public is re-exported here; import from ``cgoom``, not from the private modules.
"""

from typing import TYPE_CHECKING

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
from ._events import CgroupCreated as CgroupCreated
from ._events import CgroupRemoved as CgroupRemoved
from ._events import CgroupStateChanged as CgroupStateChanged
from ._events import Event as Event
from ._events import MemoryEventsChanged as MemoryEventsChanged
from ._events import PressureSustained as PressureSustained
from ._events import PressureTrigger as PressureTrigger
from ._events import PressureTriggered as PressureTriggered
from ._events import PressureTriggerEnded as PressureTriggerEnded
from ._events import Resynchronized as Resynchronized
from ._events import SustainedPressure as SustainedPressure
from ._events import SwapEventsChanged as SwapEventsChanged
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

if TYPE_CHECKING:
    from ._watcher import DEFAULT_FILES as DEFAULT_FILES
    from ._watcher import Watcher as Watcher
    from ._watcher import WatcherStatistics as WatcherStatistics
    from ._watcher import open_watcher as open_watcher

__version__ = "0.1.0.dev0"

# The watcher imports asyncio (~50 ms); it is loaded on first use so that `import cgoom`
# stays fast for code that never watches.
_LAZY = {"DEFAULT_FILES", "Watcher", "WatcherStatistics", "open_watcher"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from . import _watcher

        value = getattr(_watcher, name)
        if isinstance(value, type):
            value.__module__ = "cgoom"
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cgoom' has no attribute {name!r}")


def parse_size(value: int | str) -> int:
    """Bytes for a size such as ``"512M"`` (K/M/G/T/P/E are powers of 1024, as the kernel
    reads them), or the ``int`` itself; :class:`InvalidValue` for anything else."""
    return _parse_size(value, "size")


__all__ = [
    "DEFAULT_FILES",
    "MAX",
    "CgoomError",
    "Cgroup",
    "CgroupBusy",
    "CgroupCreated",
    "CgroupEvents",
    "CgroupFS",
    "CgroupGone",
    "CgroupRemoved",
    "CgroupStateChanged",
    "CgroupType",
    "ControllerNotEnabled",
    "Event",
    "Features",
    "Hierarchy",
    "InvalidValue",
    "Limit",
    "MemoryControllerUnavailable",
    "MemoryEvents",
    "MemoryEventsChanged",
    "MemoryStat",
    "NotSupported",
    "OsFS",
    "ParseError",
    "PermissionDenied",
    "Pressure",
    "PressureLine",
    "PressureSustained",
    "PressureTrigger",
    "PressureTriggerEnded",
    "PressureTriggered",
    "ProcessGone",
    "Resynchronized",
    "SustainedPressure",
    "SwapEvents",
    "SwapEventsChanged",
    "Watcher",
    "WatcherStatistics",
    "open_watcher",
    "parse_size",
    "remove_tree",
]


def _fixup_module_metadata() -> None:
    # Tracebacks, reprs and docs show cgoom.CgroupGone, not cgoom._errors.CgroupGone.
    for name in __all__:
        if name in _LAZY:
            continue
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith("cgoom._"):
            obj.__module__ = "cgoom"


_fixup_module_metadata()
