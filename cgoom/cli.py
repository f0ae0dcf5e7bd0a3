"""The ``cgoom`` command: inspect a cgroup v2 memory hierarchy.

``cgoom status [PATH]`` prints each cgroup under PATH with its usage, limits, event counters,
population and memory pressure; ``cgoom features`` prints what the kernel and mount provide;
``cgoom rank [PATH]`` shows whom a policy would kill if PATH ran out of memory now, and why
(a dry run: it kills nothing); ``cgoom policies`` lists the policies installed;
``cgoom check-config FILE`` checks a configuration file and prints what it means, and
``cgoom run --config FILE`` runs the handler it describes as a daemon, and ``cgoom restore``
puts back what one that died left changed (``ExecStopPost=``);
``cgoom set-priority PATH N|none`` and ``cgoom prefer|avoid|omit|no-preference PATH`` set
the xattrs the policies read; ``cgoom explain --log FILE [ID]`` tells an incident from the
record log as a person reads it; ``cgoom completion bash|zsh`` prints the shell completion.
Exit status: 0 on success, 1 when cgoom cannot do its job here (the message says why and
what to do), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from ._errors import CgoomError, CgroupGone, InvalidValue
from ._kernel._cgroup import PREFERENCE_XATTR, Cgroup, if_supported
from ._kernel._hierarchy import Hierarchy
from ._kernel._linux import process_features
from ._kernel._parse import format_size
from ._kernel._types import Limit
from ._ops._clidoc import CGROUP, DIRECTORY, FILE, SHELLS, completes, render_completion, render_man

if TYPE_CHECKING:
    from ._decide._candidates import CgroupSnapshot, Incident
    from ._decide._policy import Decision
    from ._engine._rules import Rule

def human(value: Limit | None) -> str:
    """``1536 -> "1.5K"``, ``"max" -> "max"``, ``None -> "-"`` (binary units, as the kernel)."""
    if value is None:
        return "-"
    return value if isinstance(value, str) else format_size(value)


@attrs.frozen
class Row:
    """One line of ``cgoom status``: what a handler looks at first. ``None`` where the
    cgroup has no such file (the root cgroup has no memory.current)."""

    path: str
    current: int | None
    high: Limit | None
    max: Limit | None
    events: dict[str, int | None] | None
    populated: bool | None
    pressure_some_avg10: float | None
    #: ``user.cgoom.priority`` as written ("invalid" when it is not an integer), and
    #: ``user.cgoom.preference``: what is set, not what a snapshot trusts (docs/policies.md).
    priority: int | str | None = None
    preference: str | None = None


def _xattrs(cgroup: Cgroup) -> tuple[int | str | None, str | None]:
    try:
        priority: int | str | None = cgroup.priority()
    except CgroupGone:
        raise
    except CgoomError:
        priority = "invalid"
    try:
        preference = cgroup.get_xattr(PREFERENCE_XATTR)
    except CgroupGone:
        raise
    except CgoomError:
        preference = None
    return priority, None if preference is None else preference.strip()


def status_row(cgroup: Cgroup) -> Row:
    """Read one cgroup's row; raises :class:`~cgoom.CgroupGone` if it vanished meanwhile."""
    priority, preference = _xattrs(cgroup)
    events = if_supported(cgroup.memory_events)
    cg_events = if_supported(cgroup.cgroup_events)
    pressure = if_supported(cgroup.memory_pressure)
    return Row(
        path=cgroup.path,
        current=if_supported(cgroup.memory_current),
        high=if_supported(cgroup.memory_high),
        max=if_supported(cgroup.memory_max),
        events=None if events is None else {
            k: getattr(events, k) for k in ("high", "max", "oom", "oom_kill", "oom_group_kill")
        },
        populated=None if cg_events is None else cg_events.populated,
        pressure_some_avg10=None if pressure is None else pressure.some.avg10,
        priority=priority,
        preference=preference,
    )


def status_rows(hierarchy: Hierarchy, start: str, depth: int | None) -> list[Row]:
    base = hierarchy.cgroup(start)
    if not base.exists():
        raise CgroupGone(f"no cgroup {base.path} under {hierarchy.mount}", path=base.dir)
    base_depth = base.path.count("/") if not base.is_root else 0
    rows = []
    for cgroup in base.walk():
        level = (cgroup.path.count("/") if not cgroup.is_root else 0) - base_depth
        if depth is not None and level > depth:
            continue
        try:
            rows.append(status_row(cgroup))
        except CgroupGone:
            continue  # removed while we looked: the normal case on a live system
    return rows


def format_table(rows: Sequence[Row]) -> str:
    header = ("CGROUP", "CURRENT", "HIGH", "MAX", "HIGH#", "MAX#", "OOM", "OOM_KILL", "POP",
              "PSI10", "PRIO", "PREF")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        ev = r.events or {}
        lines.append((
            r.path, human(r.current), human(r.high), human(r.max),
            *(str(ev.get(k, "-")) if r.events else "-" for k in ("high", "max", "oom", "oom_kill")),
            "-" if r.populated is None else str(int(r.populated)),
            "-" if r.pressure_some_avg10 is None else f"{r.pressure_some_avg10:.2f}",
            "-" if r.priority is None else str(r.priority),
            r.preference or "-",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                  enumerate(zip(line, widths, strict=True))).rstrip()
        for line in lines
    )


def _hierarchy(args: argparse.Namespace) -> Hierarchy:
    if args.mount:
        try:
            return Hierarchy.at(args.mount, proc_root=args.proc, sys_root=args.sys)
        except InvalidValue as exc:
            raise InvalidValue(f"--mount {exc}", value=args.mount) from exc
    return Hierarchy.discover(proc_root=args.proc, sys_root=args.sys)


def _cmd_status(args: argparse.Namespace) -> int:
    hierarchy = _hierarchy(args)
    hierarchy.require_memory()
    rows = status_rows(hierarchy, args.path, args.depth)
    if args.json:
        print(json.dumps([attrs.asdict(r) for r in rows], indent=2))
    else:
        print(format_table(rows))
    return 0


def _cmd_features(args: argparse.Namespace) -> int:
    hierarchy = _hierarchy(args)
    f = hierarchy.features()
    record = {
        "mount": hierarchy.mount,
        "mount_options": sorted(f.mount_options),
        # where the kernel's facts below were read (--proc, --sys): with --mount on a fake
        # or foreign tree, give its own roots, or these describe the running kernel
        "proc": hierarchy.proc_root,
        "sys": hierarchy.sys_root,
        "controllers": sorted(f.controllers),
        "memory": f.memory,
        "local_events": f.local_events,
        "psi": f.psi,
        "kernel_features": None if f.kernel_features is None else sorted(f.kernel_features),
        "delegatable": None if f.delegatable is None else sorted(f.delegatable),
        "probed": f.probed,
        "interface_files": sorted(f.interface_files),
        # how processes are killed: asked of the running kernel, whatever --mount says
        "processes": process_features().names(),
    }
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        for key, value in record.items():
            shown = " ".join(value) if isinstance(value, list) else value
            print(f"{key}: {shown}")
    return 0


def _policy_args(pairs: Sequence[str]) -> dict[str, object]:
    args: dict[str, object] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise InvalidValue(
                f"--arg {pair!r}: write NAME=VALUE, e.g. --arg protection_aware=false",
                value=pair)
        lowered = text.lower()
        if lowered in ("true", "false"):
            args[key] = lowered == "true"
        else:
            try:
                args[key] = int(text)
            except ValueError:
                try:
                    args[key] = float(text)
                except ValueError:
                    args[key] = text
    return args


def _cmd_rank(args: argparse.Namespace) -> int:
    from ._decide._candidates import Incident
    from ._decide._plugins import decide, load_policy
    from ._decide._snapshot import Snapshotter, policy_fields

    hierarchy = _hierarchy(args)
    hierarchy.require_memory()
    path, own = args.path, None
    if args.config is not None:
        # The ranking the daemon would make: the rule's domain, policy and options, the
        # file's [priorities] and bounds, its set-up in place.
        from ._engine._deciding import as_if_set_up
        from ._ops._config import load_config

        config = load_config(args.config)
        rule = _the_rule(config.rules, args.rule, args.path)
        policy = config.policies[rule.name]
        path = args.path if args.path != "/" else rule.domain
        snapshotter = Snapshotter(hierarchy, priorities=config.priorities,
                                  max_tenant_cgroups=config.handler.max_tenant_cgroups)
        as_if = as_if_set_up(attrs.evolve(rule, dry_run=True),
                             [c.path for c in hierarchy.cgroup(path).walk()])
        own = config.handler.own_cgroup
    else:
        if args.rule is not None:
            raise InvalidValue("--rule needs --config: the rules are the file's",
                               value=args.rule)
        policy = load_policy(args.policy, **_policy_args(args.arg))
        snapshotter, as_if = Snapshotter(hierarchy), None
    start = hierarchy.cgroup(path)
    if not start.exists():
        raise CgroupGone(f"no cgroup {start.path} under {hierarchy.mount}", path=start.dir)
    if own is None:
        try:
            own = hierarchy.own_cgroup().path
        except CgoomError:
            own = None
    # usage and freeable whatever the policy reads: rank shows what each kill would free.
    candidates = snapshotter.snapshot(start.path,
                                      fields=policy_fields(policy) | {"usage", "freeable"})
    if as_if is not None:
        candidates = {p: as_if(s) for p, s in candidates.items()}
    incident = Incident.create(start.path, "manual", own_cgroup=own)
    decision = decide(policy, incident, candidates)
    problems = {path: list(s.problems) for path, s in candidates.items() if s.problems}
    left = left_out(incident, candidates)
    if args.json:
        print(json.dumps({**attrs.asdict(decision), "problems": problems, "left_out": left},
                         indent=2))
        return 0
    print("\n".join(format_decision(decision, start.path, args.top, problems, candidates)))
    for cgroup, why in left.items():
        print(f"left out: {cgroup}: {why}")
    return 0


def _the_rule(rules: Sequence[Rule], name: str | None, path: str) -> Rule:
    """The rule ``rank --config`` ranks for: ``--rule NAME``, the only one, or the one with
    the deepest domain holding PATH."""
    from ._kernel._paths import inside, normalize_path

    names = ", ".join(r.name for r in rules)
    if name is not None:
        for rule in rules:
            if rule.name == name:
                return rule
        raise InvalidValue(f"--rule {name}: the file has no such rule ({names})", value=name)
    if len(rules) == 1:
        return rules[0]
    if path != "/":
        holding = [r for r in rules if inside(normalize_path(path), r.domain)]
        if holding:
            return max(holding, key=lambda r: len(r.domain))
    raise InvalidValue(f"which rule? the file has {names}: give --rule NAME (or a PATH in "
                       "one rule's domain)", value=names)


def left_out(incident: Incident, candidates: Mapping[str, CgroupSnapshot]) -> dict[str, str]:
    """The cgroups no policy may choose here, and why (``rank`` says so rather than leave
    them out without a word)."""
    left = {}
    for path, snap in candidates.items():
        if path in incident.protected:
            left[path] = "cgoom's own cgroup, or one of its ancestors"
        elif snap.preference == "omit":
            left[path] = ("omitted by a trusted writer (user.cgoom.preference=omit, or "
                          "user.oomd_omit): never chosen, nor anything below it")
        elif snap.threaded:
            left[path] = "a threaded cgroup: its processes are its threaded domain's"
    return left


def format_decision(decision: Decision, path: str, top: int = 10,
                    problems: Mapping[str, Sequence[str]] | None = None,
                    candidates: Mapping[str, CgroupSnapshot] | None = None) -> list[str]:
    """The lines ``cgoom rank`` prints for ``decision`` about ``path``: each victim with
    its reason, what killing a whole cgroup would free (from ``candidates``, where it is not
    its usage and the reason does not say), and the problems of its cgroup (settings ignored, files
    unreadable), then the problems of the other cgroups."""
    problems, candidates = problems or {}, candidates or {}
    lines = [f"policy {decision.policy}: {len(decision.victims)} candidate(s) in {path}, "
             "first to die first (dry run: nothing is killed)"]
    lines += [f"note: {note}" for note in decision.notes]
    shown = set()
    for rank, victim in enumerate(decision.victims[:top], 1):
        target = "whole cgroup" if victim.whole else f"pid {victim.pid}"
        lines.append(f"{rank:3}. {victim.cgroup} ({target}): {victim.reason}")
        snap = candidates.get(victim.cgroup)
        if (victim.whole and snap is not None and snap.freeable is not None
                and snap.freeable != snap.usage and "freeable" not in victim.reason):
            lines.append(f"       a kill frees {format_size(snap.freeable)} of usage "
                         f"{format_size(snap.usage or 0)} (anon, swap, kernel; not cache)")
        if victim.cgroup not in shown:
            shown.add(victim.cgroup)
            lines += [f"       problem: {p}" for p in problems.get(victim.cgroup, ())]
    if len(decision.victims) > top:
        lines.append(f"     ... and {len(decision.victims) - top} more (--top N)")
    for cgroup, found in problems.items():
        if cgroup not in shown:
            lines += [f"problem: {cgroup}: {p}" for p in found]
    return lines


def _cmd_policies(args: argparse.Namespace) -> int:
    from ._decide._plugins import available_policies

    found = available_policies()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    for name, origin in found.items():
        print(f"{name:<16} {origin}")
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from ._ops._config import ConfigError, load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"cgoom: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = attrs.asdict(config, filter=lambda a, _v: a.name != "policies")
        print(json.dumps(data, indent=2, default=_jsonable))
        return 0
    print(config.describe())
    return 0


def _jsonable(value: object) -> object:
    """For ``--json``: sets as sorted lists, anything else JSON has no type for as text."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _cmd_set_priority(args: argparse.Namespace) -> int:
    cgroup = _hierarchy(args).cgroup(args.path)
    if args.priority == "none":
        cgroup.set_priority(None)
        print(f"{cgroup.path}: user.cgoom.priority removed")
        return 0
    try:
        value = int(args.priority)
    except ValueError:
        raise InvalidValue(f"a priority is an integer (higher is more important) or 'none', "
                           f"not {args.priority!r}", value=args.priority) from None
    cgroup.set_priority(value)
    print(f"{cgroup.path}: user.cgoom.priority={value}")
    _durable_note()
    return 0


def _durable_note() -> None:
    print("note: an xattr lives with its cgroup: systemd makes a unit's cgroup anew when the "
          "unit restarts, and the setting is gone; for one that lasts, use [priorities] in "
          "cgoom's configuration (docs/configuration.md)", file=sys.stderr)


def _cmd_preference(args: argparse.Namespace) -> int:
    cgroup = _hierarchy(args).cgroup(args.path)
    preference = None if args.command == "no-preference" else args.command
    cgroup.set_preference(preference)
    print(f"{cgroup.path}: user.cgoom.preference "
          + ("removed" if preference is None else f"={preference}"))
    if preference is not None:
        _durable_note()
    if preference in ("avoid", "omit") and os.geteuid() != 0:
        print("note: avoid and omit count only when root or the domain's owner sets them "
              "(docs/policies.md)", file=sys.stderr)
    return 0


def _asyncio_without_tls() -> None:
    """Import asyncio without its TLS support: ``cgoom run`` never speaks TLS on its loop,
    and asyncio's ``import ssl`` maps libcrypto, 4.5 MB of the daemon's resident memory
    (measured: 19.7 MB after ``import asyncio``, 15.3 MB without ssl). The block is lifted
    at once, so whatever imports ssl itself later (prometheus_client for ``[metrics]``, a
    policy plugin) gets it; only TLS through this loop (``ssl=`` of asyncio's connection
    calls) would say that ssl is not available."""
    if "asyncio" in sys.modules or "ssl" in sys.modules:
        return
    sys.modules["ssl"] = None  # type: ignore[assignment]  # ImportError for asyncio
    try:
        import asyncio  # noqa: F401
    finally:
        del sys.modules["ssl"]


def _cmd_run(args: argparse.Namespace) -> int:
    _asyncio_without_tls()
    import asyncio
    import logging

    from ._ops._daemon import run
    from ._ops._journal import stderr_formatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(stderr_formatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    hierarchy = _hierarchy(args) if args.mount else None
    return asyncio.run(run(args.config, dry_run=args.dry_run, hierarchy=hierarchy))


def _cmd_restore(args: argparse.Namespace) -> int:
    from ._engine._undo import UndoLog, default_path

    path = args.state
    if path is None and args.config is not None:
        from ._ops._config import load_config

        path = load_config(args.config).handler.state
    if path is None:
        path = default_path()
    if not path:
        raise InvalidValue("no undo log to read: give --state PATH (or a --config whose "
                           "[handler] state names one)", value=repr(path))
    undo = UndoLog(_hierarchy(args), path)
    try:
        lines = undo.open()
    finally:
        undo.close()
    for line in lines or [f"{path}: nothing to put back"]:
        print(line)
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from ._engine._incident import IncidentRecord
    from ._ops._recordlog import Record, read_records

    try:
        records: list[Record] = list(read_records(args.log))
    except OSError as exc:
        raise CgoomError(f"cannot read the record log {args.log}: {exc.strerror}",
                         path=args.log) from exc
    if args.id is not None:
        incidents = [r for r in records if isinstance(r, IncidentRecord)]
        chosen: list[Record] = [r for r in incidents if r.id == args.id]
        if not chosen:
            known = [r.id for r in incidents][-5:]
            raise InvalidValue(f"no incident {args.id!r} in {args.log} (the latest: "
                               f"{', '.join(known) or 'none'})", value=args.id)
    else:
        chosen = records[-1:]
        if not chosen:
            raise CgoomError(f"{args.log} holds no record yet", path=args.log)
    if args.json:
        from ._ops._recordlog import record_to_json

        print(record_to_json(chosen[-1]))
        return 0
    print(chosen[-1].explain())
    return 0


def _version() -> str:
    """The installed distribution's version (a checkout that is not installed says so)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cgoom")
    except PackageNotFoundError:
        return "(not installed)"


def _cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(render_completion(build_parser(), args.shell))
    return 0


def man_page(version: str | None = None) -> str:
    """``cgoom(1)``, rendered from the parser (the wheel ships it as share/man/man1/cgoom.1)."""
    from .client import DEFAULT_PATH

    what = __doc__.split("\n\n")[1].split("Exit status:")[0]
    return render_man(
        build_parser(), version=version or _version(),
        summary="out-of-memory policy for Linux cgroup v2", description=what,
        sections=(
            ("Exit status", "0 on success; 1 when cgoom cannot do its job here, with a message "
             "that says why and what to do; 2 for a usage error (an option, a value or a "
             "configuration file that cannot be used)."),
            ("Files", "/etc/cgoom/cgoom.toml and its cgoom.toml.d/*.toml drop-ins: the "
             "configuration of cgoom run (the path is given with --config). "
             "/run/cgoom/undo.json (as root; $XDG_RUNTIME_DIR/cgoom/undo.json otherwise): the "
             f"undo log, what cgoom restore puts back. {DEFAULT_PATH}: the notice socket "
             "for the workloads."),
            ("Environment", "CGOOM_NOTICES: the notice socket's path, for clients."),
            ("See also", "systemd-oomd(8), earlyoom(1), systemd.resource-control(5); the "
             "documentation in the source distribution's docs/ (first-ten-minutes.md, "
             "operator-guide.md, configuration.md, reference.md)."),
        ))


class _VersionAction(argparse.Action):
    """``--version``, the version looked up only when asked: importlib.metadata (with email,
    zipfile, csv, lzma and bz2 behind it) would add 2 MB to every ``cgoom run``."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default,
                         help=help or "show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"cgoom {_version()}")  # on stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgoom", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action=_VersionAction)
    completes(parser.add_argument(
        "--mount", help="the cgroup2 mount (default: found in /proc/self/mountinfo)"
    ), DIRECTORY)
    completes(parser.add_argument("--proc", default="/proc",
                                  help="where procfs is (default: /proc)"), DIRECTORY)
    completes(parser.add_argument("--sys", default="/sys", help="where sysfs is, for the "
                                  "kernel's cgroup features (default: /sys)"), DIRECTORY)
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="usage, limits, events and pressure of each cgroup")
    completes(status.add_argument("path", nargs="?", default="/",
                                  help="subtree to show (default: all)"), CGROUP)
    status.add_argument("--depth", type=int, default=None, help="levels below PATH to show")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_cmd_status)
    features = sub.add_parser("features", help="what this kernel and cgroup2 mount provide")
    features.add_argument("--json", action="store_true", help="print JSON")
    features.set_defaults(func=_cmd_features)
    rank = sub.add_parser("rank", help="whom a policy would kill now, and why (dry run)")
    completes(rank.add_argument("path", nargs="?", default="/",
                                help="the cgroup that ran out of memory"), CGROUP)
    rank.add_argument("--policy", default="priority", help="a policy name (cgoom policies)")
    rank.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                      help="an option of the policy (repeatable)")
    rank.add_argument("--top", type=int, default=10, help="how many to show (default 10)")
    rank.add_argument("--json", action="store_true", help="print the whole decision as JSON")
    completes(rank.add_argument("--config", default=None, help="rank as `cgoom run` on this "
                                "file would: the rule's domain, policy, options and the "
                                "[priorities]"), FILE)
    rank.add_argument("--rule", default=None, help="which rule of --config (default: the "
                      "only one, or the one whose domain holds PATH)")
    rank.set_defaults(func=_cmd_rank)
    policies = sub.add_parser("policies", help="the policies installed (built-in and plugins)")
    policies.add_argument("--json", action="store_true", help="print JSON")
    policies.set_defaults(func=_cmd_policies)
    check = sub.add_parser("check-config", help="check a configuration file and print it")
    completes(check.add_argument(
        "file", help="the TOML file (its FILE.d/*.toml drop-ins are read too)"), FILE)
    check.add_argument("--json", action="store_true", help="print the loaded configuration "
                       "as JSON")
    check.set_defaults(func=_cmd_check_config)
    run = sub.add_parser("run", help="the handler as a daemon, from a configuration file")
    completes(run.add_argument("--config", required=True,
                               help="the TOML file (docs/configuration.md)"), FILE)
    run.add_argument("--dry-run", action="store_true", help="decide and record, never act")
    run.set_defaults(func=_cmd_run)
    restore = sub.add_parser("restore", help="put back what a cgoom that died left changed "
                             "(memory.high, memory.oom.group, cgroup.freeze, raised limits)")
    completes(restore.add_argument("--state", default=None, help="the undo log (default: the "
                                   "configuration's [handler] state, else "
                                   "/run/cgoom/undo.json)"), FILE)
    completes(restore.add_argument("--config", default=None, help="the daemon's TOML file"),
              FILE)
    restore.set_defaults(func=_cmd_restore)
    explain = sub.add_parser("explain", help="an incident from the record log, as a person "
                             "reads it (the latest, or by id)")
    completes(explain.add_argument("--log", required=True,
                                   help="the record log (JSON lines)"), FILE)
    explain.add_argument("id", nargs="?", default=None, help="an incident's id")
    explain.add_argument("--json", action="store_true", help="print the record as JSON")
    explain.set_defaults(func=_cmd_explain)
    prio = sub.add_parser("set-priority", help="set user.cgoom.priority (higher: more "
                          "important) or remove it")
    completes(prio.add_argument("path", help="the cgroup"), CGROUP)
    prio.add_argument("priority", help="an integer, or 'none' to remove it")
    prio.set_defaults(func=_cmd_set_priority)
    for name, text in (("prefer", "kill it first among equals"),
                       ("avoid", "kill it last among equals"),
                       ("omit", "never kill it"),
                       ("no-preference", "remove user.cgoom.preference")):
        pref = sub.add_parser(name, help=f"user.cgoom.preference: {text}")
        completes(pref.add_argument("path", help="the cgroup"), CGROUP)
        pref.set_defaults(func=_cmd_preference)
    completion = sub.add_parser("completion", help="print the shell completion script "
                                "(bash: source it, or put it in "
                                "/etc/bash_completion.d/cgoom; zsh: as _cgoom on $fpath)")
    completion.add_argument("shell", choices=SHELLS, help="the shell")
    completion.set_defaults(func=_cmd_completion)
    return parser


def _printable_output() -> None:
    # Cgroup and process names may be any bytes (os.listdir gives them surrogate-escaped):
    # on a strict stdout (PYTHONIOENCODING=utf-8:strict, a C locale) they would raise
    # UnicodeEncodeError mid-table. Show them escaped instead: never a traceback.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    _printable_output()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InvalidValue as exc:  # what was asked cannot be: a usage error
        print(f"cgoom: {exc}", file=sys.stderr)
        return 2
    except CgoomError as exc:
        print(f"cgoom: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`cgoom status --json | head`): no traceback. Python's own
        # advice (the signal module's docs): point stdout at devnull so that the flush at
        # exit does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
