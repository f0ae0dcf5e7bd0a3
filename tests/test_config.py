"""The configuration file: the annotated example loads, drop-ins merge, and every mistake is
an error naming the file, the key, its line, the value and the expected form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import cgoom
from cgoom._ops._config import ConfigError, load_config
from cgoom.cli import main
from cgoom.testing import FakeCgroupTree

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "cgoom.example.toml"


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_the_documented_example_loads() -> None:
    config = load_config(str(EXAMPLE))
    assert [r.name for r in config.rules] == ["workload", "machine", "pressure"]
    workload, machine, pressure = config.rules
    assert workload.domain == "/workload.slice" and workload.high_below_max == 0.1
    assert machine.available_below == 0.1 and machine.on == frozenset()
    assert pressure.pressure == cgoom.SustainedPressure("full", 20.0, 5.0, 2.0)
    assert pressure.pressure_scope == "system" and pressure.dry_run
    assert config.priorities[0] == ("workload.slice/db*", 100)
    assert config.handler.restore and config.handler.own_cgroup is None


def test_drop_ins_merge_in_name_order(tmp_path: Path) -> None:
    main_file = write(tmp_path / "cgoom.toml", '[[rule]]\nname = "w"\ndomain = "w.slice"\n'
                      'cooldown = 5\n[priorities]\n"a*" = 1\n"b*" = 2\n')
    (tmp_path / "cgoom.toml.d").mkdir()
    write(tmp_path / "cgoom.toml.d" / "20-more.toml", '[[rule]]\nname = "m"\ndomain = "/"\n'
          "available_below = 0.05\n")
    write(tmp_path / "cgoom.toml.d" / "10-tune.toml", '[[rule]]\nname = "w"\ncooldown = 30\n'
          '[priorities]\n"a*" = 7\n')
    write(tmp_path / "cgoom.toml.d" / "ignored.txt", "not toml")
    config = load_config(main_file)
    assert [(r.name, r.cooldown) for r in config.rules] == [("w", 30.0), ("m", 5.0)]
    assert config.rules[0].domain == "/w.slice"  # kept from the main file
    assert config.priorities == (("b*", 2), ("a*", 7))
    assert [Path(s).name for s in config.sources] == ["cgoom.toml", "10-tune.toml",
                                                      "20-more.toml"]


@pytest.mark.parametrize(("text", "message"), [
    ('[[rule]]\nname = "r"\ndomain = "t"\nthreshold = 0\n',
     r"cgoom.toml, line 4: rule 'r': threshold=0, a positive number"),
    ('[[rule]]\nname = "w"\ndomain = "a"\n\n[[rule]]\nname = "w"\ndomain = "b"\n',
     r"line 6: rule 'w': named twice in this file \(\[\[rule\]\] #1 and #2\): rule names "
     "are unique"),
    ('[[rule]]\nname = "w"\non = "max"\n',
     r"line 2: rule 'w': each \[\[rule\]\] needs a domain: the cgroup whose subtree it "
     "watches"),
    ('[handler]\nrecords = "/nonexistent/cgoom/records.jsonl"\n[[rule]]\nname = "w"\n'
     'domain = "t"\n', r"\[handler\] records = '/nonexistent/cgoom/records.jsonl': its "
     "directory /nonexistent/cgoom does not exist"),
    ('[[rule]]\nname = "r"\ndomain = "t"\ncoldown = 5\n',
     r"line 4: rule 'r': unknown key 'coldown': a rule has action, available_below, "),
    ('rules = 1\n',
     r"line 1: unknown key 'rules': the top level has handler, metrics, notices, priorities, rule"),
    ('[metrics]\nport = 70000\n', r"line 2: \[metrics\] port = 70000: a TCP port, 1-65535"),
    ('[metrics]\naddress = "::1"\n', r"cgoom.toml: \[metrics\]: metrics need a port"),
    ('[metrics]\nport = true\n', r"line 2: \[metrics\] port = True: a TCP port"),
    ('[handler]\nstall_timeout = 0\n', r"line 2: \[handler\] stall_timeout = 0: a number of "
     "seconds above 0"),
    ('[[rule]]\nname = "r"\ndomain = "t"\npolicy = "nosuch"\n',
     r"line 4: rule 'r': policy = 'nosuch': .*nosuch"),
    ('[[rule]]\nname = "r"\ndomain = "t"\npressure = { kind = "half", percent = 10 }\n',
     r"line 4: rule 'r': pressure: kind = 'half': \"some\" or \"full\"$"),
    # which of the pressure table's values is wrong, not the whole table's rules again
    ('[[rule]]\nname = "r"\ndomain = "t"\npressure = { kind = "some", percent = 200 }\n',
     r"line 4: rule 'r': pressure: percent = 200: stalled percent of the window, above 0, "
     r"at most 100$"),
    ('[[rule]]\nname = "r"\ndomain = "t"\npressure = { kind = "some", percent = 9, '
     'window = 0 }\n', r"line 4: rule 'r': pressure: window = 0: seconds above 0$"),
    # a known policy that refuses an option: the line of policy_args, and what it takes
    ('[[rule]]\nname = "r"\ndomain = "t"\npolicy = "largest"\n\npolicy_args = { fo = 1 }\n',
     r"line 6: rule 'r': policy_args = \{'fo': 1\}: policy 'largest' .*unexpected keyword "
     r"argument 'fo'; it takes protection_aware, whole$"),
    ('[[rule]]\nname = "r"\ndomain = "t"\naction = "explode"\n', r"line 4: rule 'r': .*action"),
    ('[[rule]]\ndomain = "t"\n', r"rule #1: name = None: each \[\[rule\]\] needs a name"),
    ('[handler]\nrestore = "yes"\n', r"line 2: \[handler\] restore = 'yes': true or false"),
    ('[handler]\nmax_tenant_cgroups = 0\n', r"line 2: \[handler\] max_tenant_cgroups = 0: a "
     "number of cgroups, 1 or more"),
    ('[priorities]\n"db*" = "high"\n', r"line 2: \[priorities\] 'db\*' = 'high': an integer"),
    ('[handler]\nrestore = true\n', r"no \[\[rule\]\]: the handler needs at least one rule"),
    ('[[rule]\nname = "r"\n', r"not valid TOML: .*line 1"),
    # The key comes with the error (InvalidValue.key), so the line is found for sizes too.
    ('[[rule]]\nname = "r"\ndomain = "t"\naction = "reclaim"\nreclaim = "12Q"\n',
     r"line 5: rule 'r': reclaim: '12Q' is not a size"),
    ('[[rule]]\nname = "r"\ndomain = "t"\noom_group = [""]\n',
     r"line 4: rule 'r': oom_group pattern ''"),
    ('[[rule]]\nname = "r"\ndomain = "t"\non = []\n', r"line 4: rule 'r': .*no trigger"),
])
def test_mistakes_name_file_key_line_and_value(tmp_path: Path, text: str,
                                                message: str) -> None:
    path = write(tmp_path / "cgoom.toml", text)
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(path)
    assert str(caught.value).startswith(path)


def test_a_missing_file_is_said(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration: No such file"):
        load_config(str(tmp_path / "nope.toml"))


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "rule 'machine' on /: triggers MemAvailable < 10%" in out
    assert "rule 'pressure' on /: triggers PSI full > 20% for 5s (system)" in out
    bad = write(tmp_path / "bad.toml", '[[rule]]\nname = "r"\ndomain = "t"\nwindow = -1\n')
    assert main(["check-config", bad]) == 2
    assert f"cgoom: {bad}, line 4: rule 'r'" in capsys.readouterr().err


def test_the_reference_names_every_key() -> None:
    """docs/configuration.md, checked against the code: every key of [handler], [metrics],
    [notices] and [[rule]] is named there (in backticks), so the reference cannot fall
    behind."""
    from cgoom._ops._config import HANDLER_TYPES, METRICS_TYPES, NOTICES_TYPES, RULE_KEYS

    text = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    missing = [k for k in sorted({*HANDLER_TYPES, *METRICS_TYPES, *NOTICES_TYPES, *RULE_KEYS})
               if f"`{k}`" not in text]
    assert missing == [], f"docs/configuration.md does not name {missing}"


@pytest.mark.parametrize(("text", "error"), [
    ("[notices]\npressure_level = 'urgent'\n", "pressure_level = 'urgent': one of"),
    ("[notices]\nmode = 0o7777\n", "mode = 4095: the sockets' permissions"),
    ("[notices]\ninterval = 0\n", "interval = 0: a number of seconds above 0"),
    ("[notices]\nsockets = '/x'\n", "unknown key 'sockets'"),
])
def test_notices_mistakes_are_named(tmp_path: Path, text: str, error: str) -> None:
    from cgoom._ops._config import ConfigError, load_config

    config = tmp_path / "cgoom.toml"
    config.write_text(text + '[[rule]]\nname = "r"\ndomain = "t"\n')
    with pytest.raises(ConfigError, match=re.escape(error)):
        load_config(str(config))


def test_notices_settings_load(tmp_path: Path) -> None:
    from cgoom._ops._config import load_config

    config = tmp_path / "cgoom.toml"
    config.write_text('[notices]\nsocket = "/run/cgoom/notices.sock"\npressure_level = '
                      '"critical"\n[[rule]]\nname = "r"\ndomain = "t"\n')
    loaded = load_config(str(config))
    assert loaded.notices.socket == "/run/cgoom/notices.sock"
    assert loaded.notices.pressure_level == "critical" and loaded.notices.mode == 0o666
    assert "notices: socket=/run/cgoom/notices.sock" in loaded.describe()


async def test_each_policy_is_loaded_once(tree: FakeCgroupTree, tmp_path: Path) -> None:
    """load_config loads (and so validates) each rule's policy; the handler takes those
    instead of loading them again, at start and on a reload."""
    path = write(tmp_path / "cgoom.toml", '[[rule]]\nname = "r"\ndomain = "t"\n'
                 'policy = "largest"\n')
    config = load_config(path)
    tree.add("t")
    handler = cgoom.Handler(tree.hierarchy, config.rules, own_cgroup="/",
                            policies=config.policies, kmsg=None, proc_events=False)
    assert handler.policies["r"] is config.policies["r"]
    write(tmp_path / "cgoom.toml", '[[rule]]\nname = "r"\ndomain = "t"\n'
          'policy = "priority"\n')
    fresh = load_config(path)
    assert handler.reconfigure(fresh.rules, policies=fresh.policies) == [
        "rule 'r': policy changed"]
    assert handler.policies["r"] is fresh.policies["r"]


def test_files_others_can_write_are_refused(tmp_path: Path) -> None:
    """issue 19: a drop-in another user wrote into a world-writable cgoom.toml.d was loaded
    silently (its record log pointing at /etc/ld.so.preload, its priorities at the
    maximum). As sshd and sudo do, cgoom refuses what others can write."""
    path = write(tmp_path / "cgoom.toml", '[[rule]]\nname = "r"\ndomain = "t"\n')
    drop_ins = tmp_path / "cgoom.toml.d"
    drop_ins.mkdir()
    write(drop_ins / "50-evil.toml", '[handler]\nrecords = "/etc/ld.so.preload"\n')
    drop_ins.chmod(0o1777)
    with pytest.raises(ConfigError, match=r"cgoom.toml.d: can be written by others \(uid \d+, "
                       r"mode 1777\)"):
        load_config(path)
    drop_ins.chmod(0o755)
    assert load_config(path).handler.records == "/etc/ld.so.preload"  # root's own choice
    Path(path).chmod(0o664)
    with pytest.raises(ConfigError, match=r"cgoom.toml: can be written by others"):
        load_config(path)


def test_max_tenant_cgroups_loads_and_reaches_the_handler(tmp_path: Path) -> None:
    from cgoom._ops._daemon import _Daemon

    config = tmp_path / "cgoom.toml"
    config.write_text('[handler]\nmax_tenant_cgroups = 7\nown_cgroup = "/"\n'
                      '[[rule]]\nname = "r"\ndomain = "t"\n')
    loaded = load_config(str(config))
    assert loaded.handler.max_tenant_cgroups == 7
    assert "max_tenant_cgroups=7" in loaded.describe()
    tree = FakeCgroupTree(tmp_path / "fake")
    tree.add("t")
    daemon = _Daemon(str(config), loaded, tree.hierarchy, dry_run=True,
                     clock=cgoom.testing.ManualClock())
    assert daemon.handler._snapshotter.max_tenant_cgroups == 7


def test_the_per_key_reference_is_generated_from_the_code() -> None:
    """docs/reference.md is `python -m cgoom._ops._reference`'s output: every key, its type,
    default and meaning, and whether a reload applies it, from the code that reads them."""
    from cgoom._ops._reference import reference

    page = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
    assert page.read_text() == reference(), \
        "docs/reference.md is stale: python -m cgoom._ops._reference > docs/reference.md"
    for key in ("confirm_timeout", "grace", "max_tenant_cgroups", "state"):
        assert f"| `{key}` |" in page.read_text()
