"""`cgoom run` on the fake tree (dry run: a fake tree's pids are not this host's): READY and
STOPPING over a notify socket the test provides, a record in the log, SIGHUP with a broken
file keeps the running configuration, SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cgoom._ops._daemon import run
from cgoom.testing import FakeCgroupTree, ManualClock

from .daemon import send, stop

M = 1 << 20


async def receive(sock: socket.socket, seconds: float = 10) -> str:
    loop = asyncio.get_running_loop()
    return (await asyncio.wait_for(loop.sock_recv(sock, 4096), seconds)).decode()


@pytest.fixture(autouse=True)
def _unfreeze() -> Iterator[None]:
    """cgoom run freezes the start-up's objects (gc.freeze): give them back to the
    collector after each test, as the pytest process lives on."""
    yield
    gc.unfreeze()


async def test_the_daemon_on_a_fake_tree(tree: FakeCgroupTree, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    for name, pid, prio in (("db", 100, 100), ("batch", 300, 0)):
        tree.add(f"t/{name}", procs=[pid], memory_current=100 * M).set_priority(prio)
        tree.add_process(pid, rss=100 * M)
    records = tmp_path / "records.jsonl"
    config = tmp_path / "cgoom.toml"
    config.write_text(f'[handler]\nown_cgroup = "/"\nrecords = "{records}"\nkmsg = false\n'
                      'proc_events = false\n[[rule]]\nname = "t"\ndomain = "t"\n')
    notify_path = str(tmp_path / "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(notify_path)
    server.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    caplog.set_level("INFO", "cgoom")
    try:
        daemon = asyncio.get_running_loop().create_task(
            run(str(config), dry_run=True, hierarchy=tree.hierarchy))
        ready = await receive(server)
        assert ready.startswith("READY=1\nSTATUS=1 rule(s) on 1 domain(s) (dry run)")
        assert gc.get_freeze_count() > 0 and "kept out of the garbage collector" in caplog.text
        tree.memory_event("t/batch", "high")
        for _ in range(500):
            if records.exists() and records.read_text():
                break
            await asyncio.sleep(0.01)
        line = json.loads(records.read_text().splitlines()[0])
        assert line["rule"] == "t" and line["dry_run"] is True
        assert line["decision"]["victims"][0]["cgroup"] == "/t/batch"
        config.write_text("[[rule]\n")  # broken
        send(daemon, signal.SIGHUP)
        assert (await receive(server)).startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert (await receive(server)).startswith("READY=1\nSTATUS=")
        assert "the configuration cannot be used; the running one is kept" in caplog.text
        send(daemon, signal.SIGTERM)
        assert await receive(server) == "STOPPING=1"
        assert await asyncio.wait_for(daemon, 10) == 0
    finally:
        server.close()


async def test_a_daemon_that_stopped_fails_its_test_not_the_run(tree: FakeCgroupTree,
                                                              tmp_path: Path) -> None:
    """A signal for a daemon that already ended is not sent: SIGTERM's default action would
    end pytest itself (status 143, no report). The test fails with how the daemon ended."""
    config = tmp_path / "cgoom.toml"
    config.write_text("[[rule]\n")  # broken: the daemon ends at once
    daemon = asyncio.get_running_loop().create_task(
        run(str(config), dry_run=True, hierarchy=tree.hierarchy))
    await asyncio.wait([daemon], timeout=10)
    with pytest.raises(AssertionError, match=r"cannot send SIGTERM: the daemon is not taking "
                       r"it \(ConfigError: "):
        await stop(daemon)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # what it would have met


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def wait_lines(path: Path, count: int, seconds: float = 5) -> list[str]:
    for _ in range(int(seconds * 100)):
        lines = lines_of(path)
        if len(lines) >= count:
            return lines
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path}: {count} line(s) expected, {lines}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text: str = r.read().decode()
            return text
    return await asyncio.to_thread(get)


async def test_a_reload_applies_priorities_and_keeps_the_cooldown(
        tree: FakeCgroupTree, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SIGHUP with [priorities] swapped: the next decision follows them, while the rest the
    first incident began is kept (an event during it starts nothing). A reload that moves a
    rule's domain is refused as a whole, naming the field; metrics count it all."""
    for name, pid in (("db", 100), ("batch", 300)):
        tree.add(f"t/{name}", procs=[pid], memory_current=100 * M)
        tree.add_process(pid, rss=100 * M)
    records = tmp_path / "records.jsonl"
    config = tmp_path / "cgoom.toml"
    port = free_port()
    head = (f'[handler]\nown_cgroup = "/"\nrecords = "{records}"\nkmsg = false\n'
            f'proc_events = false\nstall_timeout = 5\n[metrics]\nport = {port}\n')
    rule = '[[rule]]\nname = "t"\ndomain = "t"\ncooldown = 1.0\n'
    config.write_text(head + '[priorities]\n"t/db" = 100\n"t/batch" = 0\n' + rule)
    caplog.set_level("INFO", "cgoom")
    clock = ManualClock()
    daemon = asyncio.get_running_loop().create_task(
        run(str(config), dry_run=True, hierarchy=tree.hierarchy, clock=clock))
    try:
        for _ in range(500):
            if "running 1 rule(s)" in caplog.text:
                break
            await asyncio.sleep(0.01)
        # A dry run: the stall watchdog acts for no rule, and says so.
        assert "stall watchdog armed: acts on the last ranking of (no killing rule)" \
            in caplog.text
        tree.memory_event("t", "high")
        first = json.loads((await wait_lines(records, 1))[0])
        assert first["decision"]["victims"][0]["cgroup"] == "/t/batch"
        config.write_text(head + '[priorities]\n"t/db" = 0\n"t/batch" = 100\n' + rule)
        send(daemon, signal.SIGHUP)
        for _ in range(500):
            if "reload: applied" in caplog.text:
                break
            await asyncio.sleep(0.01)
        assert "reload: applied: priorities: 2 pattern(s)" in caplog.text, caplog.text
        tree.memory_event("t", "high")  # resting: the cooldown survived the reload
        await clock.advance(1.0)  # the cooldown ends
        tree.memory_event("t", "high")
        second = json.loads((await wait_lines(records, 2))[1])
        assert second["decision"]["victims"][0]["cgroup"] == "/t/db"
        # Had the cooldown been lost, the resting event's incident would be this one, at
        # the first one's time on the manual clock.
        assert second["started_at"] - first["started_at"] == pytest.approx(1.0)
        config.write_text(head + rule.replace('domain = "t"', 'domain = "u"'))
        send(daemon, signal.SIGHUP)
        for _ in range(500):
            if "was not applied" in caplog.text:
                break
            await asyncio.sleep(0.01)
        assert ("need cgoom started again (the set-up they change is made once, at "
                "start): rule 't': domain: '/t' -> '/u'") in caplog.text
        text = await scrape(port)
        assert 'cgoom_incidents_total{dry_run="true",rule="t",trigger="memory.events"} 2.0' \
            in text, text
        assert 'cgoom_reloads_total{result="applied"} 1.0' in text
        assert 'cgoom_reloads_total{result="refused"} 1.0' in text
        assert "cgoom_watched_cgroups 3.0" in text
        assert "cgoom_kills_total" not in text.replace("# HELP cgoom_kills_total", "") \
            .replace("# TYPE cgoom_kills_total", "")  # a dry run kills nothing
    finally:
        assert await stop(daemon) == 0


def test_the_example_unit() -> None:
    """docs/cgoom.service parses as a unit file, says what the daemon speaks (Type=notify,
    a watchdog, OOMScoreAdjust=-1000, MemoryMin=), and its ExecStart is a command line
    cgoom accepts."""
    import configparser
    import shlex

    from cgoom.cli import build_parser

    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are CamelCase
    unit.read(Path(__file__).resolve().parent.parent / "docs" / "cgoom.service")
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["OOMScoreAdjust"] == "-1000" and service["MemoryMin"] == "64M"
    assert service["WatchdogSec"] == "30s" and service["ExecReload"].endswith("-HUP $MAINPID")
    argv = shlex.split(service["ExecStart"])
    assert Path(argv[0]).name == "cgoom"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == "/etc/cgoom/cgoom.toml"
    # After a crash too, what it set is put back from the undo log it keeps in /run/cgoom.
    argv = shlex.split(service["ExecStopPost"])
    args = build_parser().parse_args(argv[1:])
    assert args.command == "restore" and args.config == "/etc/cgoom/cgoom.toml"
    assert service["RuntimeDirectory"] == "cgoom"
    assert service["RuntimeDirectoryPreserve"] == "yes"
    # Sandboxed as systemd-oomd and earlyoom are; cgroupfs stays writable (no
    # ProtectControlGroups=) and /dev/kmsg readable (no ProtectKernelLogs=).
    assert service["ProtectSystem"] == "strict" and service["NoNewPrivileges"] == "yes"
    assert "ProtectControlGroups" not in service and "ProtectKernelLogs" not in service
    assert {"CAP_KILL", "CAP_SYS_ADMIN", "CAP_NET_ADMIN"} <= set(
        service["CapabilityBoundingSet"].split())
    assert unit["Unit"]["Conflicts"] == "shutdown.target"


def test_the_example_unit_verifies_and_its_exposure_is_recorded(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts docs/cgoom.service (its binaries pointed at this
    virtualenv's), and `systemd-analyze security --offline` rates it as docs/operator-guide.md
    says."""
    import re
    import shutil

    analyze = shutil.which("systemd-analyze")
    cgoom_bin = shutil.which("cgoom")
    if analyze is None or cgoom_bin is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze (the systemd package) is missing: CI checks the unit")
        pytest.skip("systemd-analyze is not installed here")
    text = (Path(__file__).resolve().parent.parent / "docs" / "cgoom.service").read_text()
    unit = tmp_path / "cgoom.service"
    unit.write_text(text.replace("/opt/cgoom/bin/cgoom", cgoom_bin))
    verified = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                              timeout=120)
    assert verified.returncode == 0, verified.stderr
    security = subprocess.run([analyze, "security", "--offline=true", str(unit)],
                              capture_output=True, text=True, timeout=120)
    found = re.search(r"Overall exposure level for cgoom.service: ([0-9.]+) (\w+)",
                      security.stdout)
    assert found is not None, security.stdout[-500:]
    guide = (Path(__file__).resolve().parent.parent / "docs" / "operator-guide.md").read_text()
    assert f"exposure level {found[1]} {found[2]}" in guide, found[0]


def exists(*paths: str) -> bool:
    return all(os.path.exists(p) for p in paths)


def mode_of(path: str) -> int:
    return os.stat(path).st_mode & 0o777


async def test_the_daemon_serves_notices_and_pressure(
        tree: FakeCgroupTree, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """[notices]: the daemon serves the notice socket and the pressure socket; a client
    registered through it hears the domain's low level. It raised its soft file descriptor
    limit to the hard one first (systemd gives services 1024 soft)."""
    import resource

    from cgoom import client as notices

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    caplog.set_level("INFO", "cgoom")

    tree.add("t/batch", procs=[300], memory_current=100 * M)
    tree.add_process(300, rss=100 * M)
    tree.hierarchy.cgroup("t").set_memory_high(200 * M)
    base = tmp_path_factory.mktemp("d")
    config = base / "cgoom.toml"
    sock, pressure = str(base / "n.sock"), str(base / "p.sock")
    config.write_text(f'[handler]\nown_cgroup = "/"\nkmsg = false\nproc_events = false\n'
                      f'[notices]\nsocket = "{sock}"\npressure_socket = "{pressure}"\n'
                      'mode = 0o600\ninterval = 1.0\n'
                      '[[rule]]\nname = "t"\ndomain = "t"\non = "max"\n')
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    daemon = asyncio.get_running_loop().create_task(
        run(str(config), dry_run=True, hierarchy=tree.hierarchy))
    try:
        for _ in range(500):
            if exists(sock, pressure):
                break
            await asyncio.sleep(0.01)
        assert mode_of(sock) == 0o600
        async with notices.connect(sock) as client:
            assert (await client.register("t/batch"))["cgroup"] == "/t/batch"
            tree.memory_event("t", "high")
            notice = await asyncio.wait_for(client.notices().__anext__(), 5)
        assert (notice.level, notice.cgroup, notice.domain) == ("low", "/t/batch", "/t")
        raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    finally:
        assert await stop(daemon) == 0
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not exists(sock) and not exists(pressure)
    assert raised == hard
    if hard > 1024:
        assert f"file descriptor limit raised from 1024 to {hard}" in caplog.text


async def test_a_slow_reload_never_stalls_the_loop(tree: FakeCgroupTree, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """issue 19: SIGHUP loaded the configuration (and so its policies' plugin factories) on
    the event loop: a factory taking 4 s stalled it 4 s. Now in a thread, with a deadline
    past which the running configuration is kept."""
    import time

    import cgoom._ops._daemon as daemon_module

    tree.add("t/batch", procs=[300], memory_current=100 * M)
    config = tmp_path / "cgoom.toml"
    config.write_text('[handler]\nown_cgroup = "/"\nkmsg = false\nproc_events = false\n'
                      '[[rule]]\nname = "t"\ndomain = "t"\n')
    loads = 0
    real = daemon_module.load_config

    def slow(path: str) -> object:
        nonlocal loads
        loads += 1
        if loads > 1:
            time.sleep(1.0)  # a plugin factory that takes its time, on reload
        return real(path)

    monkeypatch.setattr(daemon_module, "load_config", slow)
    monkeypatch.setattr(daemon_module, "RELOAD_DEADLINE", 0.4)
    caplog.set_level("INFO", "cgoom")
    daemon = asyncio.get_running_loop().create_task(
        run(str(config), dry_run=True, hierarchy=tree.hierarchy))
    try:
        for _ in range(500):
            if "running 1 rule(s)" in caplog.text:
                break
            await asyncio.sleep(0.01)
        send(daemon, signal.SIGHUP)
        longest, last = 0.0, time.monotonic()
        for _ in range(80):  # 0.8 s of 10 ms ticks while the reload loads
            await asyncio.sleep(0.01)
            now = time.monotonic()
            longest, last = max(longest, now - last), now
        for _ in range(500):
            if "took more than 0.4 s" in caplog.text:
                break
            await asyncio.sleep(0.01)
    finally:
        assert await stop(daemon) == 0
    assert loads == 2
    assert longest < 0.5, f"the loop stalled {longest:.2f} s during the reload"
    assert "reload: loading the configuration took more than 0.4 s" in caplog.text
    assert "the running one is kept" in caplog.text


async def test_idle_scrapers_hold_no_thread_and_are_bounded() -> None:
    """issue 19: prometheus_client's server started a thread per connection with no
    timeout: 300 idle connections held 301 threads (and systemd's TasksMax would then refuse
    the engine's). Served from the loop: no thread, at most MAX_CONNECTIONS at once."""
    import threading

    from cgoom._ops import _metrics
    from cgoom.testing import until

    metrics = _metrics.Metrics()
    await metrics.astart("127.0.0.1", 0)
    port = metrics.port
    assert port is not None
    threads = threading.active_count()
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
    await until(lambda: metrics.turned_away == 40 - _metrics.MAX_CONNECTIONS,
                what="the connections past the bound to be turned away")
    assert threading.active_count() == threads
    for _, writer in idle:
        writer.close()
    text = await scrape(port)
    assert "cgoom_incidents_total" in text or "# HELP cgoom_incidents" in text
    await metrics.aclose()
