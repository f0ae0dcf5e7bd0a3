"""The configuration file's per-key reference (docs/reference.md), generated from the code
that reads it, so that the two cannot disagree: each table's keys with their type, default and
meaning (``[[rule]]``: the ``#:`` comment above each field of :class:`cgoom.Rule`; the other
tables: the descriptions ``load_config`` checks them with), and whether a reload (SIGHUP)
applies a change. tests/test_config.py checks that docs/reference.md is this module's output.

    python -m cgoom._ops._reference > docs/reference.md
"""

from __future__ import annotations

import ast
import inspect
import types
from collections.abc import Mapping

import attrs

from .._engine import _rules
from .._engine._rules import SETUP_FIELDS, Rule
from ._config import (
    HANDLER_TYPES,
    METRICS_TYPES,
    NOTICES_TYPES,
    HandlerSettings,
    MetricsSettings,
    NoticeSettings,
)


def field_comments(cls: type, module: types.ModuleType) -> dict[str, str]:
    """The ``#:`` comment above each annotated field of ``cls``, joined into one line, read
    from ``module``'s file (where it is defined: ``cgoom`` names its public classes as its
    own once they are used, and attrs makes a new class for slots)."""
    path = inspect.getsourcefile(module)
    assert path is not None
    with open(path, encoding="utf-8") as f:
        source = f.read()
    lines = source.splitlines()
    body = next(node for node in ast.parse(source).body
                if isinstance(node, ast.ClassDef) and node.name == cls.__name__)
    comments = {}
    for node in body.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text: list[str] = []
            row = node.lineno - 2
            while row >= 0 and lines[row].strip().startswith("#:"):
                text.insert(0, lines[row].strip()[2:].strip())
                row -= 1
            comments[node.target.id] = " ".join(text)
    return comments


#: Defaults that read better than their repr.
_SHOWN = {("notices", "mode"): "`0o666`",
          ("handler", "state"): "/run/cgoom/undo.json as root on the host's own cgroups",
          ("handler", "proc_events"): "on before Linux 6.14, off from 6.14"}


def _default(field: attrs.Attribute, table: str = "rule") -> str:  # type: ignore[type-arg]
    if (table, field.name) in _SHOWN:
        return _SHOWN[(table, field.name)]
    value: object = field.default
    if value is attrs.NOTHING:
        return "required"
    factory = getattr(value, "factory", None)
    if factory is not None:
        value = factory()
    if value is None or value in ((), frozenset()):
        return "none"
    return f"`{value!r}`"


def _type(field: attrs.Attribute) -> str:  # type: ignore[type-arg]
    return str(field.type).replace("|", "or").replace("Literal", "one of")


def _table(name: str, types: Mapping[str, tuple[tuple[type, ...], str]], settings: type,
           reload: str) -> list[str]:
    defaults = {f.name: f for f in attrs.fields(settings)}
    lines = [f"## [{name}]", "", "| key | value | default | on reload (SIGHUP) |",
             "|---|---|---|---|"]
    for key in sorted(types):
        _, description = types[key]
        field = defaults.get(key)
        default = _default(field, name) if field is not None else "none"
        applies = "applied" if (name, key) == ("handler", "records") else reload
        lines.append(f"| `{key}` | {description} | {default} | {applies} |")
    return [*lines, ""]


def reference() -> str:
    """docs/reference.md's text."""
    comments = field_comments(Rule, _rules)
    out = [
        "# Configuration reference",
        "",
        "Every key of the configuration file, generated from the code that reads it "
        "(`python -m cgoom._ops._reference > docs/reference.md`; tests/test_config.py checks "
        "that this page is its output). What the keys are for, with examples: "
        "[configuration.md](configuration.md).",
        "",
    ]
    out += _table("handler", HANDLER_TYPES, HandlerSettings, "restart")
    out += _table("metrics", METRICS_TYPES, MetricsSettings, "restart")
    out += _table("notices", NOTICES_TYPES, NoticeSettings, "restart")
    out += ["## [priorities]", "",
            "`\"glob pattern\" = priority`, an integer from -2147483648 to 2147483647 (higher "
            "is more important), for cgroups without a trusted `user.cgoom.priority`; the first "
            "match wins. A reload applies it.", "", "## [[rule]]", "",
            "One table per rule; sizes are bytes or strings such as `\"64M\"`. A reload "
            "applies a changed rule in place unless the change is to its set-up (then it "
            "needs a restart); a rule added or removed needs a restart.", "",
            "| key | type | default | meaning | on reload (SIGHUP) |", "|---|---|---|---|---|"]
    for field in attrs.fields(Rule):
        meaning = comments.get(field.name, "").replace("|", "\\|").replace("``", "`")
        applies = "restart" if field.name in SETUP_FIELDS or field.name == "name" \
            else "applied"
        out.append(f"| `{field.name}` | {_type(field)} | {_default(field)} | {meaning} | "
                   f"{applies} |")
    actions = ", ".join(f"`{a}`" for a in sorted(_rules.ACTIONS))
    triggers = ", ".join(f"`{t}`" for t in sorted(_rules.TRIGGERS))
    out += ["", f"`action` is one of {actions}; `on` of {triggers}.", ""]
    return "\n".join(out)


def main() -> None:
    print(reference(), end="")


if __name__ == "__main__":
    main()
