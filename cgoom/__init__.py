"""cgoom: out-of-memory policy for Linux cgroup v2.

General layout (data flows up; lower layers never import higher ones):

- ``_parse`` / ``_types``: pure parsers of the kernel's file formats and the frozen records
  they return. No I/O.
- ``_fs``: the I/O edge (``CgroupFS``, ``OsFS``) and the one place errnos become errors.
- ``_cgroup`` / ``_hierarchy``: typed handles on cgroups and on the cgroup2 mount.
- ``_linux``: inotify and the other few interfaces the stdlib lacks.
- ``_events`` / ``_watcher``: event records (pure) and the watcher that produces them from
  inotify and PSI triggers on the event loop.
- ``_snapshot``: candidate snapshots read in one pass (I/O); ``_policy``: the policy contract
  and the built-in policies (pure); ``_plugins``: finding, validating and guarding policies.
- ``_rules`` / ``_actions`` / ``_incident`` / ``_handler``: the engine (rules, the I/O of
  acting, the record, the orchestration); ``_config`` / ``_daemon``: ``cgoom run``.
- ``_firstchance``: notices, levels and first-chance registrations (pure);
  ``_protocol``: the notice protocol's messages (pure); ``_server``: its socket and
  systemd's pressure socket (I/O); ``_dbus``: low-memory-monitor's signal (optional extra).
- ``cli``: the ``cgoom`` command. ``client``: the applications' side of the notice socket.
  ``testing``: fakes and the VM runner, for our tests and yours.

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
    from ._actions import ActionResult as ActionResult
    from ._actions import Pidfds as Pidfds
    from ._actions import ProcessControl as ProcessControl
    from ._candidates import PRIORITY_MAX as PRIORITY_MAX
    from ._candidates import PRIORITY_MIN as PRIORITY_MIN
    from ._candidates import CgroupSnapshot as CgroupSnapshot
    from ._candidates import Incident as Incident
    from ._candidates import Preference as Preference
    from ._candidates import ProcessSnapshot as ProcessSnapshot
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
    from ._events import WatchFailed as WatchFailed
    from ._firstchance import Answer as Answer
    from ._firstchance import FirstChance as FirstChance
    from ._firstchance import FirstChanceOutcome as FirstChanceOutcome
    from ._firstchance import Notice as Notice
    from ._handler import Handler as Handler
    from ._handler import HandlerStatistics as HandlerStatistics
    from ._handler import open_handler as open_handler
    from ._incident import IncidentRecord as IncidentRecord
    from ._incident import Timings as Timings
    from ._kmsg import KernelOomKill as KernelOomKill
    from ._plugins import BUILTIN_POLICIES as BUILTIN_POLICIES
    from ._plugins import PluginError as PluginError
    from ._plugins import adecide as adecide
    from ._plugins import available_policies as available_policies
    from ._plugins import decide as decide
    from ._plugins import load_policy as load_policy
    from ._plugins import start_policy_worker as start_policy_worker
    from ._plugins import validate_policy as validate_policy
    from ._policy import Decision as Decision
    from ._policy import KillableFirstPolicy as KillableFirstPolicy
    from ._policy import KubernetesQoSPolicy as KubernetesQoSPolicy
    from ._policy import Policy as Policy
    from ._policy import PriorityPolicy as PriorityPolicy
    from ._policy import RankBy as RankBy
    from ._policy import Victim as Victim
    from ._policy import growth as growth
    from ._policy import largest as largest
    from ._policy import make_victim as make_victim
    from ._policy import pressure as pressure
    from ._policy import select_process as select_process
    from ._policy import swap as swap
    from ._policy import units as units
    from ._protect import Protection as Protection
    from ._protect import protect_self as protect_self
    from ._recordlog import RecordLog as RecordLog
    from ._recordlog import read_records as read_records
    from ._recordlog import record_from_json as record_from_json
    from ._rules import Rule as Rule
    from ._server import NoticeServer as NoticeServer
    from ._server import PressureSocket as PressureSocket
    from ._server import ServerStatistics as ServerStatistics
    from ._server import open_notice_server as open_notice_server
    from ._server import open_pressure_socket as open_pressure_socket
    from ._snapshot import FIELDS as FIELDS
    from ._snapshot import Snapshotter as Snapshotter
    from ._snapshot import UsageHistory as UsageHistory
    from ._snapshot import policy_fields as policy_fields
    from ._watcher import DEFAULT_FILES as DEFAULT_FILES
    from ._watcher import Watcher as Watcher
    from ._watcher import WatcherStatistics as WatcherStatistics
    from ._watcher import open_watcher as open_watcher

__version__ = "0.1.0.dev0"

# Loaded on first use, so that `import cgoom` stays under 60 ms for supervisors that only
# manage cgroups: the watcher needs asyncio (~50 ms), and the event, snapshot, policy and
# plugin layers define many attrs classes (~1 ms each). The one table of lazy public names:
# `__all__`, `__dir__` and the TYPE_CHECKING imports above follow it (tests/test_exports.py
# checks that they agree).
_LAZY: dict[str, str] = {
    "ActionResult": "_actions",
    "Pidfds": "_actions",
    "ProcessControl": "_actions",
    "Answer": "_firstchance",
    "FirstChance": "_firstchance",
    "FirstChanceOutcome": "_firstchance",
    "Notice": "_firstchance",
    "Handler": "_handler",
    "HandlerStatistics": "_handler",
    "open_handler": "_handler",
    "IncidentRecord": "_incident",
    "KernelOomKill": "_kmsg",
    "Timings": "_incident",
    "RecordLog": "_recordlog",
    "read_records": "_recordlog",
    "record_from_json": "_recordlog",
    "Rule": "_rules",
    "CgroupSnapshot": "_candidates",
    "Incident": "_candidates",
    "PRIORITY_MAX": "_candidates",
    "PRIORITY_MIN": "_candidates",
    "Preference": "_candidates",
    "ProcessSnapshot": "_candidates",
    "CgroupCreated": "_events",
    "CgroupRemoved": "_events",
    "CgroupStateChanged": "_events",
    "Event": "_events",
    "MemoryEventsChanged": "_events",
    "PressureSustained": "_events",
    "PressureTrigger": "_events",
    "PressureTriggered": "_events",
    "PressureTriggerEnded": "_events",
    "Resynchronized": "_events",
    "SustainedPressure": "_events",
    "SwapEventsChanged": "_events",
    "WatchFailed": "_events",
    "BUILTIN_POLICIES": "_plugins",
    "PluginError": "_plugins",
    "adecide": "_plugins",
    "available_policies": "_plugins",
    "decide": "_plugins",
    "load_policy": "_plugins",
    "start_policy_worker": "_plugins",
    "validate_policy": "_plugins",
    "Decision": "_policy",
    "KillableFirstPolicy": "_policy",
    "KubernetesQoSPolicy": "_policy",
    "Policy": "_policy",
    "PriorityPolicy": "_policy",
    "RankBy": "_policy",
    "Victim": "_policy",
    "growth": "_policy",
    "largest": "_policy",
    "make_victim": "_policy",
    "pressure": "_policy",
    "select_process": "_policy",
    "swap": "_policy",
    "units": "_policy",
    "NoticeServer": "_server",
    "ServerStatistics": "_server",
    "open_notice_server": "_server",
    "PressureSocket": "_server",
    "open_pressure_socket": "_server",
    "Protection": "_protect",
    "protect_self": "_protect",
    "FIELDS": "_snapshot",
    "Snapshotter": "_snapshot",
    "UsageHistory": "_snapshot",
    "policy_fields": "_snapshot",
    "DEFAULT_FILES": "_watcher",
    "Watcher": "_watcher",
    "WatcherStatistics": "_watcher",
    "open_watcher": "_watcher",
}


def __getattr__(name: str) -> object:
    module_name = _LAZY.get(name)
    if module_name is not None:
        import importlib

        value = getattr(importlib.import_module(f"cgoom.{module_name}"), name)
        if isinstance(value, type) and value.__module__.startswith("cgoom._"):
            value.__module__ = "cgoom"
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cgoom' has no attribute {name!r}")


def parse_size(value: int | str) -> int:
    """Bytes for a size such as ``"512M"`` (K/M/G/T/P/E are powers of 1024, as the kernel
    reads them), or the ``int`` itself; :class:`InvalidValue` for anything else."""
    return _parse_size(value, "size")


#: Imported eagerly above (the kernel-facing layer every user needs).
_EAGER = (
    "MAX", "CgoomError", "Cgroup", "CgroupBusy", "CgroupEvents", "CgroupFS", "CgroupGone",
    "CgroupType", "ControllerNotEnabled", "Features", "Hierarchy", "InvalidValue", "Limit",
    "MemoryControllerUnavailable", "MemoryEvents", "MemoryStat", "NotSupported", "OsFS",
    "ParseError", "PermissionDenied", "Pressure", "PressureLine", "ProcessGone", "SwapEvents",
    "parse_size", "remove_tree",
)

__all__ = sorted([*_EAGER, *_LAZY])


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _fixup_module_metadata() -> None:
    # Tracebacks, reprs and docs show cgoom.CgroupGone, not cgoom._errors.CgroupGone.
    for name in __all__:
        if name in _LAZY:
            continue
        obj = globals()[name]
        if isinstance(obj, type) and obj.__module__.startswith("cgoom._"):
            obj.__module__ = "cgoom"


_fixup_module_metadata()
