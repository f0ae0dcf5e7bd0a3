"""The man page and the shell completions, rendered from the parser: groff reads the page
without a warning and it documents every command and option; bash completes commands,
options, files and cgroups as an operator types them; zsh reads its function."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cgoom.cli import build_parser, main, man_page


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} ({package}) is missing: scripts/test installs it for CI")
        pytest.skip(f"{name} is not installed here")
    return found


def _every_option() -> list[tuple[str, str]]:
    parser = build_parser()
    found = [("", flag) for action in parser._actions for flag in action.option_strings]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((name, ""))
                found += [(name, flag) for a in sub._actions for flag in a.option_strings]
    return found


def test_the_man_page_is_clean_roff(tmp_path: Path) -> None:
    groff = _tool("groff", "groff")
    page = tmp_path / "cgoom.1"
    page.write_text(man_page("9.9.9"))
    done = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(page)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_the_man_page_documents_every_command_and_option(tmp_path: Path) -> None:
    groff = _tool("groff", "groff")
    page = tmp_path / "cgoom.1"
    page.write_text(man_page("9.9.9"))
    text = subprocess.run([groff, "-man", "-Tascii", "-P", "-cbou", str(page)],
                          capture_output=True, text=True, check=True).stdout
    flat = " ".join(text.replace("\u2010\n", "").split())
    assert "cgoom 9.9.9" in flat and "EXIT STATUS" in flat
    missing = [(command, flag) for command, flag in _every_option()
               if (flag or command) not in flat]
    assert not missing, missing


def _complete(script: Path, *words: str) -> list[str]:
    """What bash's completion offers after ``words`` (the last is the word being typed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (f"source {script}\nCOMP_WORDS=({quoted})\n"
               "COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n"
               '_cgoom 2>/dev/null\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    done = subprocess.run(["bash", "--norc", "--noprofile", "-c", program],
                          capture_output=True, text=True, check=True)
    return sorted(line for line in done.stdout.splitlines() if line)


@pytest.fixture
def bash_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["completion", "bash"]) == 0
    script = tmp_path / "cgoom.bash"
    script.write_text(capsys.readouterr().out)
    return script


def test_bash_completes_commands_and_options(bash_script: Path) -> None:
    assert _complete(bash_script, "cgoom", "r") == ["rank", "restore", "run"]
    assert "check-config" in _complete(bash_script, "cgoom", "")
    assert _complete(bash_script, "cgoom", "--mount", "/x", "rank", "--c") == ["--config"]
    assert _complete(bash_script, "cgoom", "completion", "") == ["bash", "zsh"]
    assert _complete(bash_script, "cgoom", "--v") == ["--version"]


def test_bash_completes_files_and_cgroups(bash_script: Path, tmp_path: Path) -> None:
    mount = tmp_path / "cgroup"
    for path in ("lab/batch", "lab/web", "system.slice"):
        (mount / path).mkdir(parents=True)
    (tmp_path / "cgoom.toml").write_text("")
    assert _complete(bash_script, "cgoom", "run", "--config", f"{tmp_path}/cgoom.t") == [
        f"{tmp_path}/cgoom.toml"]
    # cgroups as cgoom names them, below the --mount given (else /sys/fs/cgroup)
    assert _complete(bash_script, "cgoom", "--mount", str(mount), "status", "/lab/") == [
        "/lab/batch", "/lab/web"]
    assert _complete(bash_script, "cgoom", "--mount", str(mount), "omit", "/s") == [
        "/system.slice"]
    # the second positional of set-priority is a number: nothing offered
    assert _complete(bash_script, "cgoom", "--mount", str(mount), "set-priority",
                     "/lab/batch", "") == []


def test_zsh_reads_its_function(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zsh = _tool("zsh", "zsh")
    assert main(["completion", "zsh"]) == 0
    script = tmp_path / "_cgoom"
    script.write_text(capsys.readouterr().out)
    text = script.read_text()
    assert text.startswith("#compdef cgoom\n")
    missing = [(command, flag) for command, flag in _every_option()
               if flag not in ("-h", "--help") and (flag or command) not in text]
    assert not missing, missing
    done = subprocess.run([zsh, "-n", str(script)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    # defined and callable by compinit's loader: autoload it and ask zsh whether it is a
    # function (a spec zsh cannot parse fails here, not only at the user's first <Tab>)
    done = subprocess.run(
        [zsh, "-f", "-c", f"fpath=({tmp_path} $fpath); autoload -Uz compinit; "
         "compinit -u -D; autoload -Uz _cgoom; whence -w _cgoom"],
        capture_output=True, text=True, check=False)
    assert "_cgoom: function" in done.stdout, done.stdout + done.stderr


def test_unknown_shell_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["completion", "tcsh"])
    assert exc.value.code == 2
    assert "invalid choice: 'tcsh'" in capsys.readouterr().err
