"""The configuration file: TOML (stdlib ``tomllib``) read into frozen records, every value
checked when it is loaded, so that a typo is an error at start (or at reload), never at OOM
time. Pure apart from reading the files.

Layout (docs/configuration.md; docs/cgoom.example.toml is the annotated example)::

    [handler]            own_cgroup, records, restore, kmsg, proc_events, stall_timeout,
                         max_tenant_cgroups, state
    [metrics]            address, port: Prometheus metrics over HTTP (off without it)
    [notices]            socket, pressure_socket, pressure_level, mode, interval: the
                         notice socket for applications and systemd's pressure protocol
    [priorities]         "glob pattern" = priority, for cgroups without user.cgoom.priority
    [[rule]]             one per rule: the fields of cgoom.Rule, sizes as "64M", pressure
                         as a table {kind, percent, window, duration}

Drop-ins: ``FILE.d/*.toml``, read in name order after FILE, as systemd and oomd do. A table
merges key by key; a ``[[rule]]`` with the name of an earlier one changes that rule's keys,
a new name adds a rule. Unknown keys are errors that list the known ones.

Errors name the file, the key, the line where the key is found, the value and the expected
form. tomllib reports syntax errors with their line; for a wrong value the line is found by
looking for ``key =`` in the file, which is what a reader looks for too.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from typing import Any

import attrs

from .._decide._plugins import PluginError, available_policies, load_policy
from .._decide._policy import Policy
from .._decide._snapshot import TENANT_CGROUPS
from .._engine._rules import Rule
from .._errors import InvalidValue
from .._watch._events import PressureTrigger, SustainedPressure

#: The keys of each table, and for rules the fields of :class:`cgoom.Rule`.
#: ``[handler]`` and ``[metrics]``: each key's accepted types and their description.
_PATH = ((str,), "a path string")
_BOOL = ((bool,), "true or false")
_SECONDS = ((int, float), "a number of seconds above 0")
HANDLER_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "own_cgroup": _PATH, "records": _PATH, "restore": _BOOL, "kmsg": _BOOL,
    "proc_events": _BOOL, "stall_timeout": _SECONDS,
    "max_tenant_cgroups": ((int,), "a number of cgroups, 1 or more"),
    "state": ((str,), "a path string (\"\": no durable undo log)")}
METRICS_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "address": ((str,), "an IP address string, e.g. \"127.0.0.1\""),
    "port": ((int,), "a TCP port, 1-65535")}
NOTICES_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "socket": _PATH, "pressure_socket": _PATH,
    "pressure_level": ((str,), "one of \"low\", \"critical\", \"oom\""),
    "mode": ((int,), "the sockets' permissions, e.g. 0o666"),
    "dbus": ((str,), "\"system\", \"session\" or a D-Bus address"),
    "dbus_domain": _PATH,
    "interval": _SECONDS}
HANDLER_KEYS = frozenset(HANDLER_TYPES)
RULE_KEYS = frozenset(a.name for a in attrs.fields(Rule))
PRESSURE_KEYS = frozenset({"kind", "percent", "window", "duration"})
TOP_KEYS = frozenset({"handler", "metrics", "notices", "priorities", "rule"})


class ConfigError(InvalidValue):
    """The configuration cannot be used: the message names the file, the key, its line,
    the value and what was expected."""


@attrs.frozen
class HandlerSettings:
    """``[handler]``: the options of :func:`cgoom.open_handler` a daemon passes on."""

    own_cgroup: str | None = None
    #: Where ``cgoom run`` appends the records as JSON lines (``None``: not kept).
    records: str | None = None
    restore: bool = True
    kmsg: bool = True
    #: ``None``: on where it serves, kernels before 6.14 (docs/handler.md).
    proc_events: bool | None = None
    #: The stall watchdog (``cgoom run``): when the event loop has not run for this many
    #: seconds, a thread acts on the last ranking by itself (``None``: off).
    stall_timeout: float | None = None
    #: The most cgroups a decision reads below a delegated cgroup (docs/policies.md).
    max_tenant_cgroups: int = TENANT_CGROUPS
    #: The durable undo log (``None``: /run/cgoom/undo.json on the host's own mount, as
    #: root; ``""``: none).
    state: str | None = None


@attrs.frozen
class MetricsSettings:
    """``[metrics]``: Prometheus metrics over HTTP on ``address``:``port`` (localhost by
    default); needs the ``metrics`` extra (prometheus_client)."""

    port: int
    address: str = "127.0.0.1"


@attrs.frozen
class NoticeSettings:
    """``[notices]``: the notice socket for applications (``socket``: docs/notices.md),
    systemd's memory pressure protocol (``pressure_socket``, woken at ``pressure_level``),
    low-memory-monitor's D-Bus signal (``dbus``: the bus; ``dbus_domain``: whose levels),
    the sockets' ``mode``, and how often a registration may hear the same level
    (``interval`` seconds)."""

    socket: str | None = None
    pressure_socket: str | None = None
    pressure_level: str = "low"
    mode: int = 0o666
    interval: float = 10.0
    #: LowMemoryWarning on this bus (``None``: off), for ``dbus_domain``'s levels.
    dbus: str | None = None
    dbus_domain: str = "/"


@attrs.frozen
class Config:
    """A loaded configuration: ``sources`` are the files read, in order."""

    rules: tuple[Rule, ...]
    priorities: tuple[tuple[str, int], ...]
    handler: HandlerSettings
    sources: tuple[str, ...]
    metrics: MetricsSettings | None = None
    notices: NoticeSettings = NoticeSettings()
    #: Each rule's policy, loaded (and so validated) once, here: the handler takes these
    #: instead of loading them again.
    policies: Mapping[str, Policy] = attrs.field(factory=dict, eq=False, repr=False)

    def describe(self) -> str:
        """The effective configuration, for ``cgoom check-config``."""
        lines = [f"# from {', '.join(self.sources)}"]
        h = self.handler
        lines.append(f"handler: own_cgroup={h.own_cgroup or '(from /proc/self/cgroup)'} "
                     f"records={h.records or '(not kept)'} restore={h.restore} "
                     f"kmsg={h.kmsg} proc_events="
                     f"{'(before 6.14)' if h.proc_events is None else h.proc_events} "
                     f"stall_timeout={h.stall_timeout or '(off)'} "
                     f"max_tenant_cgroups={h.max_tenant_cgroups} "
                     f"state={h.state if h.state is not None else '(default)'}")
        m = self.metrics
        lines.append(f"metrics: http://{m.address}:{m.port}/metrics" if m is not None
                     else "metrics: (off)")
        n = self.notices
        lines.append(f"notices: socket={n.socket or '(off)'} pressure_socket="
                     f"{n.pressure_socket or '(off)'} (at {n.pressure_level}) "
                     f"mode={n.mode:#o} interval={n.interval:g} s dbus="
                     + (f"{n.dbus} (levels of {n.dbus_domain})" if n.dbus else "(off)"))
        for pattern, priority in self.priorities:
            lines.append(f"priority {priority:>6}  {pattern}")
        defaults = Rule("x", "/")
        for rule in self.rules:
            changed = [f"{a.name}={getattr(rule, a.name)!r}" for a in attrs.fields(Rule)
                       if a.name not in ("name", "domain", "on", "pressure")
                       and getattr(rule, a.name) != getattr(defaults, a.name)]
            lines.append(f"rule {rule.name!r} on {rule.domain}: triggers "
                         f"{_triggers(rule)}; policy {_policy_name(rule)}; action "
                         f"{rule.action}" + (f"; {', '.join(changed)}" if changed else ""))
        return "\n".join(lines)


def _triggers(rule: Rule) -> str:
    parts = []
    if rule.on:
        parts.append("memory.events " + ",".join(sorted(rule.on)))
    if rule.pressure is not None:
        parts.append(f"PSI {rule.pressure} ({rule.pressure_scope})")
    if rule.available_below is not None:
        parts.append(f"MemAvailable < {rule.available_below:.0%}")
    if rule.usage_above is not None:
        parts.append(f"usage > {rule.usage_above:.0%} of memory.max")
    return " + ".join(parts)


def _policy_name(rule: Rule) -> str:
    return rule.policy if isinstance(rule.policy, str) else getattr(rule.policy, "name", "?")


class _Source:
    """One file's text, to find the line of a key for error messages."""

    def __init__(self, path: str, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, key: str, *, table: str | None = None, nth: int = 0) -> int | None:
        """The line (1-based) of ``key =`` inside the ``nth`` ``[table]``/``[[table]]``
        header (anywhere if ``table`` is None)."""
        start, seen = 0, -1
        if table is not None:
            header = re.compile(rf"^\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?$")
            for number, line in enumerate(self.lines):
                if header.match(line):
                    seen += 1
                    if seen == nth:
                        start = number
                        break
            else:
                return None
        pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
        for number in range(start, len(self.lines)):
            line = self.lines[number]
            if number > start and table is not None and line.lstrip().startswith("["):
                break
            if pattern.match(line):
                return number + 1
        return None


def _error(source: _Source, where: str, message: str, *, key: str | None = None,
           table: str | None = None, nth: int = 0) -> ConfigError:
    line = source.line_of(key, table=table, nth=nth) if key else None
    at = f"{source.path}" + (f", line {line}" if line else "")
    return ConfigError(f"{at}: {where}: {message}", path=source.path)


def _trusted(path: str, st: os.stat_result) -> None:
    """Refuse a configuration file or drop-in directory that someone other than root or
    cgoom's own user can write, as sshd and sudo do: cgoom runs as root, and the file says
    what it kills, what it protects and where it writes (a drop-in in a world-writable
    directory could point the record log at /etc/ld.so.preload)."""
    if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
        raise ConfigError(f"{path}: can be written by others (uid {st.st_uid}, mode "
                          f"{stat.S_IMODE(st.st_mode):04o}): cgoom takes no configuration "
                          f"from it; make it root's and not group- or world-writable "
                          "(chown root; chmod go-w)", path=path)


def _read(path: str) -> tuple[_Source, dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            _trusted(path, os.fstat(f.fileno()))
            raw = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration: {exc.strerror}",
                          path=path) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): TOML files are UTF-8",
                          path=path) from exc
    source = _Source(path, text)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", path=path) from exc
    unknown = set(data) - TOP_KEYS
    if unknown:
        name = sorted(unknown)[0]
        raise _error(source, f"unknown key {name!r}", f"the top level has "
                     f"{', '.join(sorted(TOP_KEYS))} ([handler], [metrics], [notices], "
                     "[priorities], [[rule]])",
                     key=name)
    return source, data


def _drop_ins(path: str) -> list[str]:
    directory = path + ".d"
    try:
        _trusted(directory, os.stat(directory))
        names = sorted(n for n in os.listdir(directory) if n.endswith(".toml"))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot list the drop-ins: {exc.strerror}",
                          path=directory) from exc
    return [os.path.join(directory, n) for n in names]


def load_config(path: str) -> Config:
    """Read ``path`` and its drop-ins (``path.d/*.toml``) into a :class:`Config`;
    :class:`ConfigError` for anything wrong, naming the file, key, line and value."""
    handler: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    notices: dict[str, Any] = {}
    notices_source: _Source | None = None
    metrics_source: _Source | None = None
    priorities: dict[str, int] = {}
    rules: dict[str, dict[str, Any]] = {}
    origin: dict[str, tuple[_Source, int]] = {}
    sources = []
    for file in [path, *_drop_ins(path)]:
        source, data = _read(file)
        sources.append(file)
        _merge_table(source, "handler", HANDLER_TYPES, data.get("handler", {}), handler)
        _merge_table(source, "metrics", METRICS_TYPES, data.get("metrics", {}), metrics)
        if "metrics" in data:
            metrics_source = source
        _merge_table(source, "notices", NOTICES_TYPES, data.get("notices", {}), notices)
        if "notices" in data:
            notices_source = source
        _merge_priorities(source, data.get("priorities", {}), priorities)
        raw_rules = data.get("rule", [])
        if not isinstance(raw_rules, list):
            raise _error(source, "rule", "rules are [[rule]] tables (an array of tables)",
                         key="rule")
        seen: dict[str, int] = {}
        for nth, raw in enumerate(raw_rules):
            name = raw.get("name")
            if not isinstance(name, str) or not name:
                raise _error(source, f"rule #{nth + 1}", f"name = {name!r}: each [[rule]] "
                             "needs a name (a non-empty string)", table="rule", nth=nth,
                             key="name")
            unknown = set(raw) - RULE_KEYS
            if unknown:
                key = sorted(unknown)[0]
                raise _error(source, f"rule {name!r}: unknown key {key!r}",
                             f"a rule has {', '.join(sorted(RULE_KEYS))}", key=key,
                             table="rule", nth=nth)
            if name in seen:
                raise _error(source, f"rule {name!r}", f"named twice in this file ([[rule]] "
                             f"#{seen[name] + 1} and #{nth + 1}): rule names are unique; a "
                             "drop-in (FILE.d/*.toml) changes a rule of the file by naming "
                             "it", key="name", table="rule", nth=nth)
            seen[name] = nth
            rules.setdefault(name, {}).update(raw)
            origin[name] = (source, nth)
    settings = None
    if metrics_source is not None:
        if "port" not in metrics:
            raise _error(metrics_source, "[metrics]", "metrics need a port (e.g. port = "
                         "9464); the address is 127.0.0.1 unless given", key="metrics")
        settings = MetricsSettings(**metrics)
    level = notices.get("pressure_level", "low")
    if level not in ("low", "critical", "oom") and notices_source is not None:
        raise _error(notices_source, "[notices]", f"pressure_level = {level!r}: one of "
                     "\"low\", \"critical\", \"oom\"", key="pressure_level")
    if not rules:
        raise ConfigError(f"{path}: no [[rule]]: the handler needs at least one rule",
                          path=path)
    records = handler.get("records")
    if records is not None and not os.path.isdir(os.path.dirname(os.path.abspath(records))):
        raise ConfigError(f"{path}: [handler] records = {records!r}: its directory "
                          f"{os.path.dirname(os.path.abspath(records))} does not exist "
                          "(make it, e.g. LogsDirectory=cgoom in the unit for /var/log/cgoom)",
                          path=path, key="records")
    built = [_rule(origin[name][0], origin[name][1], raw) for name, raw in rules.items()]
    return Config(rules=tuple(r for r, _ in built),
                  policies={r.name: policy for r, policy in built},
                  priorities=tuple(priorities.items()),
                  handler=HandlerSettings(**handler), sources=tuple(sources),
                  metrics=settings, notices=NoticeSettings(**notices))


def _merge_table(source: _Source, table: str, types: Mapping[str, tuple[tuple[type, ...], str]],
                 raw: Any, into: dict[str, Any]) -> None:
    """Check a ``[handler]``/``[metrics]``/``[notices]`` table key by key, then merge it
    into ``into``."""
    if not isinstance(raw, dict):
        raise _error(source, table, f"[{table}] is a table", key=table)
    for key, value in raw.items():
        if key not in types:
            raise _error(source, f"[{table}] unknown key {key!r}",
                         f"[{table}] has {', '.join(sorted(types))}", key=key, table=table)
        expected, description = types[key]
        number: Any = value
        if (not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)
                or (key in ("stall_timeout", "interval") and number <= 0)
                or (key == "mode" and not 0 <= number <= 0o777)
                or (key == "port" and not 0 < number < 65536)
                or (key == "max_tenant_cgroups" and number < 1)):
            raise _error(source, f"[{table}] {key} = {value!r}", description,
                         key=key, table=table)
        into[key] = value


def _merge_priorities(source: _Source, raw: Any, into: dict[str, int]) -> None:
    if not isinstance(raw, dict):
        raise _error(source, "priorities", "[priorities] is a table of \"pattern\" = "
                     "integer", key="priorities")
    for pattern, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) \
                or not -(2**31) <= value < 2**31:
            raise _error(source, f"[priorities] {pattern!r} = {value!r}",
                         "an integer priority from -2147483648 to 2147483647 (higher is "
                         "more important)", key=pattern, table="priorities")
        into.pop(pattern, None)  # a drop-in's value moves the pattern to the end
        into[pattern] = value


def _pressure(source: _Source, where: str, raw: Any, nth: int,
              ) -> PressureTrigger | SustainedPressure:
    if not isinstance(raw, dict) or set(raw) - PRESSURE_KEYS or not {"kind", "percent"} <= \
            set(raw):
        raise _error(source, f"{where}: pressure = {raw!r}",
                     "a table {kind = \"some\" or \"full\", percent = stalled % of the "
                     "window, window = seconds (default 1), duration = seconds it must "
                     "last (optional)}", key="pressure", table="rule", nth=nth)
    kind, percent = raw["kind"], raw["percent"]
    window = raw.get("window", 1.0)

    def number(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, int | float)

    wrong = (f"kind = {kind!r}: \"some\" or \"full\"" if kind not in ("some", "full") else
             f"percent = {percent!r}: stalled percent of the window, above 0, at most 100"
             if not number(percent) or not 0 < percent <= 100 else
             f"window = {window!r}: seconds above 0" if not number(window) or window <= 0
             else None)
    if wrong is not None:
        raise _error(source, f"{where}: pressure", wrong, key="pressure", table="rule",
                     nth=nth)
    if "duration" in raw:
        duration = raw["duration"]
        if isinstance(duration, bool) or not isinstance(duration, int | float) \
                or duration <= 0:
            raise _error(source, f"{where}: pressure duration = {duration!r}",
                         "seconds > 0", key="pressure", table="rule", nth=nth)
        return SustainedPressure(kind, float(percent), float(duration), float(window))
    return PressureTrigger.percent(kind, float(percent), float(window))


def _rule(source: _Source, nth: int, raw: Mapping[str, Any]) -> tuple[Rule, Policy]:
    name = raw["name"]
    where = f"rule {name!r}"
    kwargs = dict(raw)
    if "domain" not in kwargs:
        raise _error(source, where, "each [[rule]] needs a domain: the cgroup whose subtree "
                     "it watches and chooses in, e.g. domain = \"workload.slice\" (\"/\" for "
                     "the whole machine)", key="name", table="rule", nth=nth)
    if "pressure" in kwargs:
        kwargs["pressure"] = _pressure(source, where, kwargs["pressure"], nth)
    args = kwargs.get("policy_args", {})
    if not isinstance(args, dict):
        raise _error(source, f"{where}: policy_args = {args!r}", "a table of the policy's "
                     "options", key="policy_args", table="rule", nth=nth)
    policy = kwargs.get("policy", "priority")
    if not isinstance(policy, str):
        raise _error(source, f"{where}: policy = {policy!r}", "a policy name (cgoom "
                     "policies lists them)", key="policy", table="rule", nth=nth)
    try:
        loaded = load_policy(policy, **args)  # a bad name or option: an error now
    except (PluginError, InvalidValue, TypeError) as exc:
        # the policy exists and refused its options: the line to fix is policy_args's
        if args and policy in available_policies():
            raise _error(source, f"{where}: policy_args = {args!r}", str(exc),
                         key="policy_args", table="rule", nth=nth) from exc
        raise _error(source, f"{where}: policy = {policy!r}", str(exc), key="policy",
                     table="rule", nth=nth) from exc
    try:
        return Rule(**kwargs), loaded
    except (InvalidValue, TypeError, ValueError) as exc:
        key = exc.key if isinstance(exc, InvalidValue) else None
        text = str(exc)
        text = text[len(where) + 2:] if text.startswith(f"{where}: ") else text
        raise _error(source, where, text, key=key, table="rule", nth=nth) from exc
