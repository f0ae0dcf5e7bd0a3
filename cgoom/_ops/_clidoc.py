"""The ``cgoom`` command's man page and shell completions, rendered from its argparse parser.

One source of truth: an option added to the parser is in the man page and the completions
with its help text; nothing here lists a command by hand. Pure: each function takes the
parser and returns text. Rendered at build time (``hatch_build.py`` puts ``cgoom.1`` and the
completions under the wheel's ``share/``) and by ``cgoom completion SHELL``.

What a value completes to comes from the action: its ``choices``, else the ``complete``
attribute the parser sets (:data:`FILE`, :data:`DIRECTORY`, :data:`CGROUP`), else nothing
(a number, a name).

Reading argparse: the subcommands are the choices of its ``_SubParsersAction`` and their
help is in that action's ``_choices_actions``; argparse has no public API for either
(shtab and argcomplete read the same attributes).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

import attrs

#: ``action.complete`` values: a file, a directory, a cgroup below the mount.
FILE = "file"
DIRECTORY = "directory"
CGROUP = "cgroup"


def completes(action: argparse.Action, kind: str) -> argparse.Action:
    """Mark what ``action``'s value completes to (:data:`FILE`, :data:`DIRECTORY`,
    :data:`CGROUP`); returns the action."""
    action.complete = kind  # type: ignore[attr-defined]
    return action


@attrs.frozen
class _Arg:
    flags: tuple[str, ...]  # empty for a positional
    name: str  # the positional's name, or the metavar of the option's value
    help: str
    takes_value: bool
    kind: str | None
    choices: tuple[str, ...]
    required: bool
    repeatable: bool


@attrs.frozen
class _Command:
    name: str
    help: str
    args: tuple[_Arg, ...]

    @property
    def options(self) -> tuple[_Arg, ...]:
        return tuple(a for a in self.args if a.flags)

    @property
    def positionals(self) -> tuple[_Arg, ...]:
        return tuple(a for a in self.args if not a.flags)


def _args(parser: argparse.ArgumentParser) -> tuple[_Arg, ...]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        takes_value = action.nargs != 0
        name = action.metavar if isinstance(action.metavar, str) else (
            action.dest.upper() if action.option_strings else action.dest)
        found.append(_Arg(
            flags=tuple(action.option_strings),
            name=name,
            help=" ".join((action.help or "").split()) if action.help != argparse.SUPPRESS
            else "",
            takes_value=takes_value,
            kind=getattr(action, "complete", None),
            choices=tuple(str(c) for c in action.choices or ()),
            required=bool(action.required),
            repeatable=isinstance(action, argparse._AppendAction),
        ))
    return tuple(found)


def _commands(parser: argparse.ArgumentParser) -> tuple[_Command, ...]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return tuple(_Command(name, " ".join(helps.get(name, "").split()), _args(sub))
                         for name, sub in action.choices.items())
    return ()


# --- the man page ------------------------------------------------------------------------

def _roff(text: str) -> str:
    # the help texts' `literal` and the docstrings' ``literal`` marks are not roff's
    text = text.replace("`", "")
    text = text.replace("\\", "\\e").replace("-", "\\-")
    # a line starting with . or ' is a request to roff
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def _man_arg(arg: _Arg) -> str:
    choices = f" One of: {_roff(', '.join(arg.choices))}." if arg.choices else ""
    if not arg.flags:
        return f".TP\n.I {_roff(arg.name)}\n{_roff(arg.help)}{choices}\n"
    flags = ", ".join(f"\\fB{_roff(f)}\\fR" for f in arg.flags)
    value = f" \\fI{_roff(arg.name)}\\fR" if arg.takes_value else ""
    more = " Repeatable." if arg.repeatable else ""
    return f".TP\n{flags}{value}\n{_roff(arg.help)}{choices}{more}\n"


def _synopsis(command: _Command) -> str:
    parts = [f"\\fBcgoom {_roff(command.name)}\\fR"]
    for arg in command.args:
        if arg.flags and arg.flags[0] in ("-h", "--help"):
            continue
        if arg.flags:
            value = f" \\fI{_roff(arg.name)}\\fR" if arg.takes_value else ""
            text = f"\\fB{_roff(arg.flags[-1])}\\fR{value}"
            parts.append(text if arg.required else f"[{text}]")
        else:
            parts.append(f"[\\fI{_roff(arg.name)}\\fR]" if not arg.required
                         else f"\\fI{_roff(arg.name)}\\fR")
    return " ".join(parts)


def render_man(parser: argparse.ArgumentParser, *, version: str, summary: str,
               description: str, sections: Sequence[tuple[str, str]] = ()) -> str:
    """The man page (section 1, roff with the ``man`` macros) of the command ``parser``
    parses: name with ``summary``, synopsis, ``description``, global options, each command
    with its options, then ``sections`` (title, plain text; blank lines part paragraphs)."""
    out = [
        f'.TH CGOOM 1 "" "cgoom {_roff(version)}" "User Commands"',
        ".SH NAME",
        f"cgoom \\- {_roff(summary)}",
        ".SH SYNOPSIS",
        "\\fBcgoom\\fR [\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]",
        ".SH DESCRIPTION",
    ]
    for paragraph in description.split("\n\n"):
        out += [".PP", _roff(" ".join(paragraph.split()))]
    out.append(".SH GLOBAL OPTIONS")
    out += [_man_arg(a).rstrip("\n") for a in _args(parser)]
    out.append(".SH COMMANDS")
    for command in _commands(parser):
        out += [f".SS {_roff(command.name)}", _synopsis(command), ".PP",
                _roff(command.help)]
        shown = [a for a in command.args if a.flags[:1] not in (("-h",), ("--help",))]
        if shown:
            out.append(".RS")
            out += [_man_arg(a).rstrip("\n") for a in shown]
            out.append(".RE")
    for title, text in sections:
        out.append(f".SH {_roff(title.upper())}")
        for paragraph in text.split("\n\n"):
            out += [".PP", _roff(" ".join(paragraph.split()))]
    return "\n".join(out) + "\n"


# --- bash ---------------------------------------------------------------------------------

def _words(values: Sequence[str]) -> str:
    return " ".join(values)


def _bash_value(kind: str | None, choices: Sequence[str]) -> str:
    if choices:
        return f'COMPREPLY=($(compgen -W "{_words(choices)}" -- "$cur"))'
    if kind == FILE:
        return 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur"))'
    if kind == DIRECTORY:
        return 'compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -d -- "$cur"))'
    if kind == CGROUP:
        return "_cgoom_cgroups"
    return "COMPREPLY=()"


def render_bash(parser: argparse.ArgumentParser) -> str:
    """A bash completion for the command (``complete -F _cgoom cgoom``)."""
    glob = _args(parser)
    commands = _commands(parser)
    valued_global = [f for a in glob if a.takes_value for f in a.flags]
    lines = [
        "# bash completion for cgoom, rendered from its argument parser.",
        "_cgoom_cgroups() {",
        "    # cgroups as cgoom names them: directories below the cgroup2 mount",
        '    local root=${_cgoom_mount:-/sys/fs/cgroup} c',
        "    COMPREPLY=()",
        '    while IFS= read -r c; do',
        '        COMPREPLY+=("${c#"$root"}")',
        '    done < <(compgen -d -- "$root/${cur#/}")',
        "    compopt -o nospace 2>/dev/null",
        "    return 0",
        "}",
        "",
        "_cgoom() {",
        '    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}',
        '    local cmd="" i n=0 _cgoom_mount=""',
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        '        case ${COMP_WORDS[i]} in',
    ]
    if valued_global:
        lines += [
            f"            {'|'.join(valued_global)})",
            '                [[ ${COMP_WORDS[i]} == --mount ]] && _cgoom_mount=${COMP_WORDS[i+1]}',
            "                ((i++)) ;;",
        ]
    lines += [
        "            -*) ;;",
        '            *) cmd=${COMP_WORDS[i]}; break ;;',
        "        esac",
        "    done",
        '    if [[ -z $cmd ]]; then',
        '        case $prev in',
    ]
    for arg in glob:
        if arg.takes_value:
            lines.append(f"            {'|'.join(arg.flags)}) "
                         f"{_bash_value(arg.kind, arg.choices)}; return 0 ;;")
    flags = [f for a in glob for f in a.flags]
    lines += [
        "        esac",
        '        if [[ $cur == -* ]]; then',
        f'            COMPREPLY=($(compgen -W "{_words(flags)}" -- "$cur"))',
        "        else",
        f'            COMPREPLY=($(compgen -W "{_words([c.name for c in commands])}" '
        '-- "$cur"))',
        "        fi",
        "        return 0",
        "    fi",
        '    case $cmd in',
    ]
    for command in commands:
        valued = [f for a in command.options if a.takes_value for f in a.flags]
        lines.append(f"        {command.name})")
        lines.append('            case $prev in')
        for arg in command.options:
            if arg.takes_value:
                lines.append(f"                {'|'.join(arg.flags)}) "
                             f"{_bash_value(arg.kind, arg.choices)}; return 0 ;;")
        lines += [
            "            esac",
            '            if [[ $cur == -* ]]; then',
            '                COMPREPLY=($(compgen -W '
            f'"{_words([f for a in command.options for f in a.flags])}" -- "$cur"))',
            "                return 0",
            "            fi",
            "            # which positional is this: words after the command, less options",
            "            # and their values",
            "            for ((i = i + 1; i < COMP_CWORD; i++)); do",
            '                case ${COMP_WORDS[i]} in',
        ]
        if valued:
            lines.append(f"                    {'|'.join(valued)}) ((i++)) ;;")
        lines += [
            "                    -*) ;;",
            "                    *) ((n++)) ;;",
            "                esac",
            "            done",
            "            case $n in",
        ]
        for index, arg in enumerate(command.positionals):
            lines.append(f"                {index}) {_bash_value(arg.kind, arg.choices)} ;;")
        lines += [
            "                *) COMPREPLY=() ;;",
            "            esac",
            "            ;;",
        ]
    lines += [
        "        *) COMPREPLY=() ;;",
        "    esac",
        "    return 0",
        "}",
        "",
        "complete -F _cgoom cgoom",
    ]
    return "\n".join(lines) + "\n"


# --- zsh ----------------------------------------------------------------------------------

def _zsh_text(text: str) -> str:
    # inside '...' of an _arguments spec: no quote, no brackets, colons escaped
    text = text.replace("'", "").replace("[", "(").replace("]", ")")
    return text.replace(":", "\\:")


def _zsh_action(kind: str | None, choices: Sequence[str]) -> str:
    if choices:
        return f"({' '.join(choices)})"
    if kind == FILE:
        return "_files"
    if kind == DIRECTORY:
        return "_files -/"
    if kind == CGROUP:
        return "_cgoom_cgroups"
    return " "


def _zsh_spec(arg: _Arg, position: int) -> str:
    help_text = _zsh_text(arg.help)
    if not arg.flags:
        optional = "" if arg.required else ":"
        return (f"'{position}:{optional}{_zsh_text(arg.name)}:"
                f"{_zsh_action(arg.kind, arg.choices)}'")
    repeat = "*" if arg.repeatable else ""
    names = arg.flags if len(arg.flags) == 1 else ()
    if arg.takes_value:
        value = f":{_zsh_text(arg.name)}:{_zsh_action(arg.kind, arg.choices)}"
        if names:
            return f"'{repeat}{names[0]}=[{help_text}]{value}'"
        group = " ".join(arg.flags)
        return f"'{repeat}({group})'{{{','.join(arg.flags)}}}'[{help_text}]{value}'"
    if names:
        return f"'{repeat}{names[0]}[{help_text}]'"
    group = " ".join(arg.flags)
    return f"'({group})'{{{','.join(arg.flags)}}}'[{help_text}]'"


def render_zsh(parser: argparse.ArgumentParser) -> str:
    """A zsh completion function (``#compdef cgoom``, for a directory on ``$fpath``)."""
    commands = _commands(parser)
    glob_specs = " \\\n    ".join(_zsh_spec(a, 0) for a in _args(parser))
    described = "\n".join(f"    '{c.name}:{_zsh_text(c.help)}'" for c in commands)
    cases = []
    for command in commands:
        specs = [_zsh_spec(a, 0) for a in command.options]
        specs += [_zsh_spec(a, i) for i, a in enumerate(command.positionals, start=1)]
        joined = " \\\n            ".join(specs)
        cases.append(f"        {command.name})\n            _arguments -s \\\n"
                     f"            {joined} ;;")
    body = "\n".join(cases)
    return f"""#compdef cgoom
# zsh completion for cgoom, rendered from its argument parser.

_cgoom_cgroups() {{
  local root=${{opt_args[--mount]:-/sys/fs/cgroup}}
  _path_files -W "$root" -/
}}

_cgoom() {{
  local curcontext="$curcontext" state line ret=1
  typeset -A opt_args
  local -a commands
  commands=(
{described}
  )
  _arguments -C \\
    {glob_specs} \\
    '1: :->command' \\
    '*:: :->args' && ret=0
  case $state in
    command)
      _describe -t commands 'cgoom command' commands && ret=0 ;;
    args)
      case $line[1] in
{body}
      esac ;;
  esac
  return ret
}}

_cgoom "$@"
"""


def render_completion(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (``bash`` or ``zsh``)."""
    if shell == "bash":
        return render_bash(parser)
    if shell == "zsh":
        return render_zsh(parser)
    raise ValueError(f"no completion for shell {shell!r}: bash or zsh")


#: The shells :func:`render_completion` knows.
SHELLS = ("bash", "zsh")
