"""The cgoom command on a fake tree: the table, JSON, features, and the failure message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cgoom.cli import human, main
from cgoom.testing import FakeCgroupTree


@pytest.fixture
def lab(tree: FakeCgroupTree) -> FakeCgroupTree:
    tree.add("lab/batch", procs=[100], memory_current=300 << 20, memory_max="1G",
             memory_high="900M")
    tree.add("lab/web", memory_current=64 << 20)
    for name, count in (("high", 37), ("max", 2), ("oom", 1), ("oom_kill", 1)):
        tree.memory_event("lab/batch", name, count)
    return tree


def test_status_table(lab: FakeCgroupTree, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mount", lab.mount, "status", "lab"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CGROUP", "CURRENT", "HIGH", "MAX", "HIGH#", "MAX#", "OOM",
                                "OOM_KILL", "POP", "PSI10", "PRIO", "PREF"]
    assert lines[2].split() == ["/lab/batch", "300.0M", "900.0M", "1.0G", "37", "2", "1", "1",
                                "1", "0.00", "-", "-"]
    assert lines[3].split()[:4] == ["/lab/web", "64.0M", "max", "max"]


def test_status_json_and_depth(lab: FakeCgroupTree, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mount", lab.mount, "status", "/", "--depth", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == ["/", "/lab"]
    assert rows[0]["current"] is None  # the root has no memory.current
    assert rows[1]["events"]["oom_kill"] == 1 and rows[1]["populated"] is True


def test_status_of_missing_cgroup(lab: FakeCgroupTree, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mount", lab.mount, "status", "nope"]) == 1
    assert "cgoom: no cgroup /nope under" in capsys.readouterr().err


def test_features(lab: FakeCgroupTree, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mount", lab.mount, "features", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["memory"] is True and "memory.max" in record["interface_files"]


def test_features_of_a_named_mount_read_its_own_roots(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--mount`` with ``--proc``/``--sys``: the features, the mount options and PSI are the
    tree's own, not the host's (whose /sys/kernel/cgroup lists other options and whose
    mountinfo does not list the fake mount at all)."""
    tree = FakeCgroupTree(tmp_path, mount_options=("rw", "memory_localevents"))
    features = tmp_path / "sys" / "kernel" / "cgroup" / "features"
    features.write_text("nsdelegate memory_localevents only_in_this_tree\n")
    (tmp_path / "proc" / "pressure" / "memory").unlink()
    argv = ["--mount", tree.mount, "--proc", str(tmp_path / "proc"),
            "--sys", str(tmp_path / "sys"), "features", "--json"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["kernel_features"] == ["memory_localevents", "nsdelegate", "only_in_this_tree"]
    assert {"memory_localevents", "rw"} <= set(record["mount_options"])
    assert "nsdelegate" not in record["mount_options"]  # the tree's mount was made without
    assert record["local_events"] is True
    assert record["psi"] is False
    assert record["sys"] == str(tmp_path / "sys") and record["proc"] == str(tmp_path / "proc")


def test_a_mount_not_in_mountinfo_has_no_options(
        lab: FakeCgroupTree, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "proc" / "self" / "mountinfo").write_text("22 1 0:21 / / rw - ext4 /dev/vda rw\n")
    assert main(["--mount", lab.mount, "--proc", str(tmp_path / "proc"), "features",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["mount_options"] == []


def test_no_memory_controller_says_what_to_do(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    tree = FakeCgroupTree(tmp_path, controllers=("cpu", "pids"))
    assert main(["--mount", tree.mount, "status"]) == 1
    err = capsys.readouterr().err
    assert "has no memory controller" in err and "cgroup_no_v1=all" in err
    assert "cgoom-vm" not in err  # the project's test tool is no user's remedy


@pytest.mark.parametrize(("value", "shown"), [(None, "-"), ("max", "max"), (512, "512B"),
                                              (1536, "1.5K"), (5 << 30, "5.0G")])
def test_human(value: int | str | None, shown: str) -> None:
    assert human(value) == shown  # type: ignore[arg-type]


def test_rank_is_a_dry_run_with_reasons(lab: FakeCgroupTree,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    lab.add_process(100, name="batchd", oom_score_adj=200, rss=250 << 20)
    lab.cgroup("lab/web").attach(300)
    lab.add_process(300, name="nginx", rss=50 << 20)
    lab.cgroup("lab/web").set_priority(10)
    assert main(["--mount", lab.mount, "--proc", f"{lab.base}/proc", "rank", "lab"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("policy priority: 2 candidate(s) in /lab, first to die first "
                      "(dry run: nothing is killed)")
    assert out[1].startswith("  1. /lab/batch (pid 100): priority 0, usage 300.0M")
    assert out[2].startswith("  2. /lab/web (pid 300): priority 10")
    assert lab.cgroup("lab/batch").cgroup_procs() == (100,)  # nothing was killed


def test_rank_with_a_policy_and_arguments(lab: FakeCgroupTree,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    lab.cgroup("lab/web").attach(300)
    assert main(["--mount", lab.mount, "--proc", f"{lab.base}/proc", "rank", "lab",
                 "--policy", "largest",
                 "--arg", "protection_aware=false", "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["policy"] == "largest"
    assert [v["cgroup"] for v in decision["victims"]] == ["/lab/batch", "/lab/web"]


@pytest.mark.parametrize(("argv", "message", "status"), [
    (["rank", "lab", "--policy", "nope"], "no policy named 'nope'", 1),
    (["rank", "lab", "--arg", "oops"], "write NAME=VALUE", 2),
    (["rank", "missing"], "no cgroup /missing", 1),
    (["set-priority", "lab", "high"], "a priority is an integer", 2),
])
def test_rank_errors(lab: FakeCgroupTree, capsys: pytest.CaptureFixture[str], argv: list[str],
                     message: str, status: int) -> None:
    """docs/cli.md: 2 for a usage error (what was asked cannot be), 1 when cgoom cannot do
    its job here."""
    assert main(["--mount", lab.mount, *argv]) == status
    assert message in capsys.readouterr().err


def test_a_mount_that_is_not_one_is_a_usage_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mount", str(tmp_path / "nonexistent"), "status"]) == 2
    assert "--mount" in capsys.readouterr().err
    assert main(["--mount", str(tmp_path), "features"]) == 2
    assert "not a cgroup2 mount (it has no cgroup.controllers)" in capsys.readouterr().err


def test_policies_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    assert "priority         built in" in out and "kubernetes-qos" in out


def test_rank_shows_what_it_ignored(lab: FakeCgroupTree,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A preference of OMIT is ignored: the cgroup the user meant to protect is listed to
    die, and rank says why, in text and JSON."""
    lab.add_process(100, name="batchd", rss=250 << 20)
    lab.cgroup("lab/batch").set_xattr("user.cgoom.preference", "OMIT")
    argv = ["--mount", lab.mount, "--proc", f"{lab.base}/proc", "rank", "lab"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("  1. /lab/batch (pid 100)")
    assert out[2] == ("       problem: user.cgoom.preference='OMIT' is not prefer, avoid or "
                      "omit; ignored")
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == {"/lab/batch": [
        "user.cgoom.preference='OMIT' is not prefer, avoid or omit; ignored"]}


def test_rank_refuses_an_argument_a_policy_cannot_take(lab: FakeCgroupTree,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mount", lab.mount, "rank", "lab", "--arg", "whole=no"]) == 1
    err = capsys.readouterr().err
    assert "refused its arguments {'whole': 'no'}" in err and "None (follow" in err


def test_names_that_are_not_utf8_never_give_a_traceback(lab: FakeCgroupTree) -> None:
    """A cgroup named with bytes that are not UTF-8, and a process naming itself so, on a
    strict UTF-8 stdout: printed escaped, exit 0."""
    lab.fs.mkdir(lab.cgroup("lab/batch").dir + "/" + os.fsdecode(b"\xff\xfe"))
    lab.add_process(100, name=b"\xff\xfe", rss=250 << 20)
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict")
    for command in (["status", "lab"], ["rank", "lab"]):
        done = subprocess.run([sys.executable, "-m", "cgoom.cli", "--mount", lab.mount,
                               "--proc", f"{lab.base}/proc", *command],
                              capture_output=True, env=env, check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert b"Traceback" not in done.stderr
    assert b"\\udcff\\udcfe" in done.stdout or b"\xef\xbf\xbd" in done.stdout


def test_set_priority_and_preferences(lab: FakeCgroupTree,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--mount", lab.mount, "set-priority", "lab/batch", "-5"]) == 0
    assert main(["--mount", lab.mount, "avoid", "lab/web"]) == 0
    assert lab.cgroup("lab/batch").priority() == -5
    assert lab.cgroup("lab/web").get_xattr("user.cgoom.preference") == "avoid"
    # said where they are set: an xattr goes with the cgroup systemd makes anew on restart
    assert capsys.readouterr().err.count("note: an xattr lives with its cgroup") == 2
    assert main(["--mount", lab.mount, "status", "lab"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-2:] == ["PRIO", "PREF"]
    assert lines[2].split()[-2:] == ["-5", "-"] and lines[3].split()[-2:] == ["-", "avoid"]
    assert main(["--mount", lab.mount, "set-priority", "lab/batch", "none"]) == 0
    assert main(["--mount", lab.mount, "no-preference", "lab/web"]) == 0
    assert lab.cgroup("lab/batch").priority() is None
    assert lab.cgroup("lab/web").get_xattr("user.cgoom.preference") is None
    assert main(["--mount", lab.mount, "set-priority", "lab/batch", "high"]) == 2
    assert "a priority is an integer (higher is more important) or 'none', not 'high'" in \
        capsys.readouterr().err
    assert main(["--mount", lab.mount, "set-priority", "lab/batch", str(2**31)]) == 2
    lab.cgroup("lab/batch").set_xattr("user.cgoom.priority", "lots")
    capsys.readouterr()
    assert main(["--mount", lab.mount, "status", "lab", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["priority"] == "invalid"


def test_cgoom_run_imports_asyncio_without_tls() -> None:
    """In a fresh interpreter, as `cgoom run` starts: asyncio comes without ssl (libcrypto
    stays out of the daemon), and ssl itself can still be imported afterwards."""
    import subprocess
    import sys

    code = ("import sys\nfrom cgoom.cli import _asyncio_without_tls\n_asyncio_without_tls()\n"
            "import asyncio.sslproto\nassert asyncio.sslproto.ssl is None\n"
            "assert 'ssl' not in sys.modules\nimport ssl\nprint(ssl.HAS_TLSv1_3 in (True, False))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr


def test_a_reader_that_goes_away_is_no_traceback(lab: FakeCgroupTree) -> None:
    """`cgoom status --json | head`: the pipe closes early; cgoom ends without a
    BrokenPipeError traceback."""
    for i in range(300):
        lab.add(f"lab/many/c{i}")
    shell = (f"{sys.executable} -m cgoom.cli --mount {lab.mount} status --json | head -c 10 "
             ">/dev/null")
    out = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr


def test_rank_with_the_daemon_s_configuration(lab: FakeCgroupTree, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """issue 18: `rank --config` ranks as `cgoom run` on that file would: its [priorities]
    (the operator's main tool: without them, batch's 300M made it first), the rule's policy,
    its oom_group_leaves in place (whole); and what no policy may choose is listed, not
    silently left out."""
    lab.add_process(100, name="batchd", rss=250 << 20)
    lab.cgroup("lab/web").attach(300)
    lab.add_process(300, name="nginx", rss=50 << 20)
    lab.add("lab/keep", procs=[400], memory_current=10 << 20)
    lab.add_process(400, name="keep", rss=10 << 20)
    lab.cgroup("lab/keep").set_preference("omit")  # root's: trusted
    config = tmp_path / "cgoom.toml"
    config.write_text('[priorities]\n"lab/batch" = 100\n"lab/web" = 0\n\n'
                      '[[rule]]\nname = "lab"\ndomain = "lab"\noom_group_leaves = true\n\n'
                      '[[rule]]\nname = "machine"\ndomain = "/"\navailable_below = 0.1\n')
    argv = ["--mount", lab.mount, "--proc", f"{lab.base}/proc", "rank"]
    assert main([*argv, "lab"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("  1. /lab/batch (pid 100)")
    assert main([*argv, "--config", str(config), "--rule", "lab"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("  1. /lab/web (whole cgroup): priority 0"), out
    assert out[2].startswith("  2. /lab/batch (whole cgroup): priority 100"), out
    assert out[-1] == ("left out: /lab/keep: omitted by a trusted writer "
                       "(user.cgoom.preference=omit, or user.oomd_omit): never chosen, nor "
                       "anything below it")
    assert main([*argv, "lab/web", "--config", str(config)]) == 0  # the rule holding PATH
    assert "1. /lab/web (whole cgroup)" in capsys.readouterr().out
    assert main([*argv, "--config", str(config)]) == 2  # two rules, no PATH: which?
    assert "which rule? the file has lab, machine: give --rule NAME" in \
        capsys.readouterr().err
    assert main([*argv, "--config", str(config), "--rule", "nope"]) == 2
    assert main([*argv, "--config", str(config), "--rule", "lab", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["left_out"] == {
        "/lab/keep": "omitted by a trusted writer (user.cgoom.preference=omit, or "
                     "user.oomd_omit): never chosen, nor anything below it"}


def test_policies_check_config_and_explain_speak_json(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    """issue 18: `policies`, `check-config` and `explain` had no `--json`."""
    assert main(["policies", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["priority"] == "built in"
    config = tmp_path / "cgoom.toml"
    config.write_text('[priorities]\n"db*" = 100\n[[rule]]\nname = "w"\ndomain = "w.slice"\n'
                      'on = ["high", "max"]\n')
    assert main(["check-config", "--json", str(config)]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert loaded["rules"][0]["name"] == "w" and loaded["rules"][0]["domain"] == "/w.slice"
    assert loaded["rules"][0]["on"] == ["high", "max"]
    assert loaded["priorities"] == [["db*", 100]] and "policies" not in loaded


def test_the_version_is_looked_up_only_when_asked() -> None:
    # importlib.metadata (2 MB resident with what it imports) stays out of `cgoom run`.
    code = ("import sys, cgoom.cli; cgoom.cli.build_parser().parse_args(['status']); "
            "print('importlib.metadata' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out == "False\n"
    shown = subprocess.run([sys.executable, "-m", "cgoom.cli", "--version"],
                           capture_output=True, text=True, check=True)
    assert shown.stdout.startswith("cgoom ") and shown.stderr == ""


def test_trim_heap_gives_back_what_it_can() -> None:
    from cgoom._kernel._linux import trim_heap
    assert trim_heap() in (0, 1, None)  # None only where the C library lacks malloc_trim
    import ctypes
    assert trim_heap() is not None or not hasattr(ctypes.CDLL(None), "malloc_trim")
