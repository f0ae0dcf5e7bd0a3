"""cgoom: out-of-memory policy for Linux cgroup v2.

The package by layer, lowest first (data flows up; a layer imports only the layers below it
and no module reaches into another's private names: tests/test_layers.py enforces both):

- ``_errors``: the exception classes, grouped by how callers react.
- ``_kernel/``: what the kernel says and how to ask it: pure parsers and the frozen records
  they build (``_parse``, ``_types``), the I/O edge where errnos become errors (``_fs``),
  syscalls (``_linux``), ``Cgroup`` and ``Hierarchy``, path spelling (``_paths``), /proc and
  meminfo readers, the kernel log, netlink, and the worker thread for blocking calls.
- ``_watch/``: event records (pure) and the watcher (inotify, PSI triggers) on the loop.
- ``_decide/``: candidate records (pure), snapshots, the policies (pure) and their plugins
  and guard.
- ``_engine/``: rules, set-up and undo, tripwires, actions, the workloads' first chance,
  incident records, the handler (orchestration only) and the stall watchdog.
- ``_notices/``: the notice protocol (pure), its socket and systemd's pressure socket, D-Bus.
- ``_ops/``: ``cgoom run``: configuration, daemon, sd_notify, journal, record log, metrics,
  privileges, self-protection.
- On top: ``cli`` (the ``cgoom`` command), ``client`` (the applications' side of the notice
  socket), ``testing`` (fakes and the VM runner, for our tests and yours).

Everything public is re-exported here; import from ``cgoom``, not from the private modules.
"""

from typing import TYPE_CHECKING

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
from ._kernel._cgroup import Cgroup as Cgroup
from ._kernel._cgroup import remove_tree as remove_tree
from ._kernel._fs import CgroupFS as CgroupFS
from ._kernel._fs import OsFS as OsFS
from ._kernel._hierarchy import Features as Features
from ._kernel._hierarchy import Hierarchy as Hierarchy
from ._kernel._parse import parse_size as _parse_size
from ._kernel._types import MAX as MAX
from ._kernel._types import CgroupEvents as CgroupEvents
from ._kernel._types import CgroupType as CgroupType
from ._kernel._types import Limit as Limit
from ._kernel._types import MemoryEvents as MemoryEvents
from ._kernel._types import MemoryStat as MemoryStat
from ._kernel._types import Pressure as Pressure
from ._kernel._types import PressureLine as PressureLine
from ._kernel._types import SwapEvents as SwapEvents

if TYPE_CHECKING:
    from ._decide._candidates import PRIORITY_MAX as PRIORITY_MAX
    from ._decide._candidates import PRIORITY_MIN as PRIORITY_MIN
    from ._decide._candidates import CgroupSnapshot as CgroupSnapshot
    from ._decide._candidates import Incident as Incident
    from ._decide._candidates import Preference as Preference
    from ._decide._candidates import ProcessSnapshot as ProcessSnapshot
    from ._decide._plugins import BUILTIN_POLICIES as BUILTIN_POLICIES
    from ._decide._plugins import PluginError as PluginError
    from ._decide._plugins import adecide as adecide
    from ._decide._plugins import available_policies as available_policies
    from ._decide._plugins import decide as decide
    from ._decide._plugins import load_policy as load_policy
    from ._decide._plugins import start_policy_worker as start_policy_worker
    from ._decide._plugins import validate_policy as validate_policy
    from ._decide._policy import Decision as Decision
    from ._decide._policy import KillableFirstPolicy as KillableFirstPolicy
    from ._decide._policy import KubernetesQoSPolicy as KubernetesQoSPolicy
    from ._decide._policy import Policy as Policy
    from ._decide._policy import PriorityPolicy as PriorityPolicy
    from ._decide._policy import RankBy as RankBy
    from ._decide._policy import Victim as Victim
    from ._decide._policy import growth as growth
    from ._decide._policy import largest as largest
    from ._decide._policy import make_victim as make_victim
    from ._decide._policy import pressure as pressure
    from ._decide._policy import select_process as select_process
    from ._decide._policy import swap as swap
    from ._decide._policy import units as units
    from ._decide._snapshot import FIELDS as FIELDS
    from ._decide._snapshot import OPT_IN_FIELDS as OPT_IN_FIELDS
    from ._decide._snapshot import Snapshotter as Snapshotter
    from ._decide._snapshot import UsageHistory as UsageHistory
    from ._decide._snapshot import policy_fields as policy_fields
    from ._engine._actions import ActionResult as ActionResult
    from ._engine._actions import Pidfds as Pidfds
    from ._engine._actions import ProcessControl as ProcessControl
    from ._engine._firstchance import Answer as Answer
    from ._engine._firstchance import FirstChance as FirstChance
    from ._engine._firstchance import FirstChanceOutcome as FirstChanceOutcome
    from ._engine._firstchance import Notice as Notice
    from ._engine._freed import FreedSample as FreedSample
    from ._engine._handler import Handler as Handler
    from ._engine._handler import HandlerStatistics as HandlerStatistics
    from ._engine._handler import open_handler as open_handler
    from ._engine._incident import IncidentRecord as IncidentRecord
    from ._engine._incident import Timings as Timings
    from ._engine._rules import Rule as Rule
    from ._engine._shadow import ShadowVerdict as ShadowVerdict
    from ._engine._trigger import Trigger as Trigger
    from ._kernel._kmsg import KernelOomKill as KernelOomKill
    from ._notices._server import NoticeServer as NoticeServer
    from ._notices._server import PressureSocket as PressureSocket
    from ._notices._server import ServerStatistics as ServerStatistics
    from ._notices._server import open_notice_server as open_notice_server
    from ._notices._server import open_pressure_socket as open_pressure_socket
    from ._ops._config import Config as Config
    from ._ops._config import ConfigError as ConfigError
    from ._ops._config import load_config as load_config
    from ._ops._protect import Protection as Protection
    from ._ops._protect import protect_self as protect_self
    from ._ops._recordlog import RecordLog as RecordLog
    from ._ops._recordlog import read_records as read_records
    from ._ops._recordlog import record_from_json as record_from_json
    from ._watch._events import CgroupCreated as CgroupCreated
    from ._watch._events import CgroupRemoved as CgroupRemoved
    from ._watch._events import CgroupStateChanged as CgroupStateChanged
    from ._watch._events import ControllersChanged as ControllersChanged
    from ._watch._events import Event as Event
    from ._watch._events import MemoryEventsChanged as MemoryEventsChanged
    from ._watch._events import PressureSustained as PressureSustained
    from ._watch._events import PressureTrigger as PressureTrigger
    from ._watch._events import PressureTriggered as PressureTriggered
    from ._watch._events import PressureTriggerEnded as PressureTriggerEnded
    from ._watch._events import Resynchronized as Resynchronized
    from ._watch._events import SustainedPressure as SustainedPressure
    from ._watch._events import SwapEventsChanged as SwapEventsChanged
    from ._watch._events import WatchFailed as WatchFailed
    from ._watch._watcher import DEFAULT_FILES as DEFAULT_FILES
    from ._watch._watcher import Watcher as Watcher
    from ._watch._watcher import WatcherStatistics as WatcherStatistics
    from ._watch._watcher import open_watcher as open_watcher

__version__ = "0.1.0.dev0"

# Loaded on first use, so that `import cgoom` stays under 60 ms for supervisors that only
# manage cgroups: the watcher needs asyncio (~50 ms), and the event, snapshot, policy and
# plugin layers define many attrs classes (~1 ms each). The one table of lazy public names:
# `__all__`, `__dir__` and the TYPE_CHECKING imports above follow it (tests/test_exports.py
# checks that they agree).
_LAZY: dict[str, str] = {
    "ActionResult": "_engine._actions",
    "Pidfds": "_engine._actions",
    "ProcessControl": "_engine._actions",
    "Answer": "_engine._firstchance",
    "FirstChance": "_engine._firstchance",
    "FirstChanceOutcome": "_engine._firstchance",
    "Notice": "_engine._firstchance",
    "Handler": "_engine._handler",
    "HandlerStatistics": "_engine._handler",
    "open_handler": "_engine._handler",
    "FreedSample": "_engine._freed",
    "IncidentRecord": "_engine._incident",
    "KernelOomKill": "_kernel._kmsg",
    "Timings": "_engine._incident",
    "Config": "_ops._config",
    "ConfigError": "_ops._config",
    "load_config": "_ops._config",
    "RecordLog": "_ops._recordlog",
    "read_records": "_ops._recordlog",
    "record_from_json": "_ops._recordlog",
    "Rule": "_engine._rules",
    "ShadowVerdict": "_engine._shadow",
    "Trigger": "_engine._trigger",
    "CgroupSnapshot": "_decide._candidates",
    "Incident": "_decide._candidates",
    "PRIORITY_MAX": "_decide._candidates",
    "PRIORITY_MIN": "_decide._candidates",
    "Preference": "_decide._candidates",
    "ProcessSnapshot": "_decide._candidates",
    "CgroupCreated": "_watch._events",
    "ControllersChanged": "_watch._events",
    "CgroupRemoved": "_watch._events",
    "CgroupStateChanged": "_watch._events",
    "Event": "_watch._events",
    "MemoryEventsChanged": "_watch._events",
    "PressureSustained": "_watch._events",
    "PressureTrigger": "_watch._events",
    "PressureTriggered": "_watch._events",
    "PressureTriggerEnded": "_watch._events",
    "Resynchronized": "_watch._events",
    "SustainedPressure": "_watch._events",
    "SwapEventsChanged": "_watch._events",
    "WatchFailed": "_watch._events",
    "BUILTIN_POLICIES": "_decide._plugins",
    "PluginError": "_decide._plugins",
    "adecide": "_decide._plugins",
    "available_policies": "_decide._plugins",
    "decide": "_decide._plugins",
    "load_policy": "_decide._plugins",
    "start_policy_worker": "_decide._plugins",
    "validate_policy": "_decide._plugins",
    "Decision": "_decide._policy",
    "KillableFirstPolicy": "_decide._policy",
    "KubernetesQoSPolicy": "_decide._policy",
    "Policy": "_decide._policy",
    "PriorityPolicy": "_decide._policy",
    "RankBy": "_decide._policy",
    "Victim": "_decide._policy",
    "growth": "_decide._policy",
    "largest": "_decide._policy",
    "make_victim": "_decide._policy",
    "pressure": "_decide._policy",
    "select_process": "_decide._policy",
    "swap": "_decide._policy",
    "units": "_decide._policy",
    "NoticeServer": "_notices._server",
    "ServerStatistics": "_notices._server",
    "open_notice_server": "_notices._server",
    "PressureSocket": "_notices._server",
    "open_pressure_socket": "_notices._server",
    "Protection": "_ops._protect",
    "protect_self": "_ops._protect",
    "FIELDS": "_decide._snapshot",
    "OPT_IN_FIELDS": "_decide._snapshot",
    "Snapshotter": "_decide._snapshot",
    "UsageHistory": "_decide._snapshot",
    "policy_fields": "_decide._snapshot",
    "DEFAULT_FILES": "_watch._watcher",
    "Watcher": "_watch._watcher",
    "WatcherStatistics": "_watch._watcher",
    "open_watcher": "_watch._watcher",
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
