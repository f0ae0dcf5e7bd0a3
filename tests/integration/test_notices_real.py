"""The notice socket on the real kernel (issue #11), in the priority inversion's domain (300M,
memory.high 270M; db 140M and web 50M held). Applications are separate processes in their
cgroups speaking to cgoom through cgoom.client:

- batch registers for its own cgroup's levels, grows a cache, and drops it on a ``low``
  notice: memory falls back, nothing is killed;
- batch takes the first chance and leaves mid-incident, while other clients flood, send
  garbage, stop reading, and one as another user asks for db: nothing is delayed (batch is
  killed long before its deadline), the other user is refused;
- a smaller workload that declares itself background-killable dies before a bigger one of
  equal priority.

Each prints its figures."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom.testing import until, wait_until

from .conftest import holding_hog, python_cmd, report_figures
from .test_daemon_real import NOBODY, interpreter_for, readable_lib
from .test_handler_real import inversion

Spawn = Callable[[cgoom.Cgroup, str], Any]
M = 1 << 20

# argv: socket path, output file, mode ("low": drop the cache on a notice; "leave": take
# the first chance, then close the connection on the notice and keep growing).
APP = (
    "import json, os, sys, time\n"
    "from cgoom.client import Client\n"
    "path, out, mode = sys.argv[1:4]\n"
    "c = Client(path)\n"
    "if mode == 'low':\n"
    "    reply = c.register(levels=['low', 'critical'])\n"
    "else:\n"
    "    reply = c.register(deadline=5.0)\n"
    "open(out + '.tmp', 'w').write(json.dumps(reply))\n"
    "os.rename(out + '.tmp', out + '.reg')\n"
    "cache, grow = [], True\n"
    "while True:\n"
    "    n = c.wait(timeout=0.1) if c is not None else time.sleep(0.1)\n"
    "    if n is not None:\n"
    "        at = time.monotonic()\n"
    "        if mode == 'low':\n"
    "            cache.clear()\n"
    "            grow = False\n"
    "        else:\n"
    "            c.close()\n"
    "            c = None\n"
    "        with open(out, 'a') as f:\n"
    "            f.write(json.dumps({'at': at, 'level': n.level, 'usage': n.usage,\n"
    "                                'threshold': n.threshold,\n"
    "                                'target': n.reclaim_target}) + '\\n')\n"
    "        continue\n"
    "    if grow:\n"
    "        chunk = bytearray(4 << 20)\n"
    "        for i in range(0, len(chunk), 4096): chunk[i] = 1\n"
    "        cache.append(chunk)\n"
)

HOLD_KILLABLE = (  # argv: socket path, output file; holds 20M, declared background-killable
    "import json, os, sys, time\n"
    "from cgoom.client import Client\n"
    "held = bytearray(20 << 20)\n"
    "for i in range(0, len(held), 4096): held[i] = 1\n"
    "c = Client(sys.argv[1])\n"
    "reply = c.register(killable=True)\n"
    "open(sys.argv[2] + '.tmp', 'w').write(json.dumps(reply))\n"
    "os.rename(sys.argv[2] + '.tmp', sys.argv[2] + '.reg')\n"
    "while True: time.sleep(1)\n"
)


GROW = ("import time\nheap = []\nwhile True:\n"  # about 40 MiB/s until killed
        "    chunk = bytearray(4 << 20)\n"
        "    for i in range(0, len(chunk), 4096): chunk[i] = 1\n"
        "    heap.append(chunk)\n    time.sleep(0.1)\n")


def lines(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            # Only whole lines: the app may be between its open() and its write().
            return [json.loads(x) for x in f if x.endswith("\n") and x.strip()]
    except FileNotFoundError:
        return []


def mark_low(handler: cgoom.Handler, cgroup: str) -> list[float]:
    """When ``cgroup``'s domain is raised to low, noted at once (``tell``: no task): the
    start of the fan-out, when registered before the others."""
    told: list[float] = []

    def mark(notice: cgoom.Notice) -> None:
        told.append(time.monotonic())

    async def note(notice: cgoom.Notice) -> None:
        mark(notice)

    handler.register(cgroup, note, levels=("low",), tell=mark)
    return told


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def reply_of(out: str) -> dict[str, Any]:
    with open(out + ".reg") as f:
        reply: dict[str, Any] = json.load(f)
    return reply


def held(kids: dict[str, cgoom.Cgroup], spawn: Spawn) -> None:
    spawn(kids["db"], holding_hog(140))
    spawn(kids["web"], holding_hog(50))
    wait_until(lambda: kids["db"].memory_current() > 135 * M
               and kids["web"].memory_current() > 45 * M, 60, "db and web to hold memory")


async def test_a_low_notice_frees_memory_and_nothing_is_killed(
        box: cgoom.Cgroup, spawn: Spawn, capsys: pytest.CaptureFixture[str]) -> None:
    parent, kids = inversion(box, early=True)
    held(kids, spawn)
    work = tempfile.mkdtemp(prefix="cgoom-n-")
    path, out = os.path.join(work, "n.sock"), os.path.join(work, "batch")

    # cgoom acts only when high events keep coming for 5 s: the workload has time to act.
    rule = cgoom.Rule("inversion", parent.path, on="high", window=1.0, sustained=5.0,
                      confirm_timeout=20)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler, \
            cgoom.open_notice_server(handler, path):
        told = mark_low(handler, kids["batch"].path)
        spawn(kids["batch"], "exec " + python_cmd(APP) + f" {path} {out} low")
        await until(lambda: os.path.exists(out + ".reg"), 90, what="batch to register")
        assert reply_of(out)["cgroup"] == kids["batch"].path
        await until(lambda: bool(lines(out)), 60, what="the low notice")
        (notice,) = lines(out)[:1]
        threshold = notice["threshold"]
        await until(lambda: parent.memory_current() <= threshold, 10, what="memory to fall back")
        fell = time.monotonic()
        await asyncio.sleep(6.0)  # longer than the rule's 5 s: no incident comes
        assert handler.statistics().incidents == 0
    assert notice["level"] == "low" and notice["target"] > 0
    assert kids["batch"].cgroup_procs() and kids["db"].cgroup_procs()
    assert parent.memory_events().oom_kill == 0
    with capsys.disabled():
        report_figures(f"a low notice over the socket: usage {notice['usage'] / M:.0f}M, "
              f"told to free {notice['target'] / M:.1f}M; notice to the app "
              f"{(notice['at'] - told[0]) * 1000:.1f} ms after cgoom sent it; memory below "
              f"{threshold / M:.0f}M {(fell - notice['at']) * 1000:.0f} ms after; "
              "nothing killed, the kernel's oom_kill 0")


def flood(path: str, cgroup: str, stop: threading.Event) -> None:
    """Register over and over as fast as it can, never reading a reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(path)
    line = b'{"v":1,"op":"register","cgroup":"%s"}\n' % cgroup.encode()
    try:
        while not stop.is_set():
            sock.sendall(line * 50)
    except OSError:
        pass
    finally:
        sock.close()


def garbage(path: str, cgroup: str, stop: threading.Event) -> None:
    """Garbage until cgoom closes the connection, then again on a new one."""
    while not stop.is_set():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        try:
            while not stop.is_set():
                sock.sendall(b"\x00\xff{not json\n" * 10)
                time.sleep(0.01)
        except OSError:
            pass
        finally:
            sock.close()
        time.sleep(0.05)

ASK_FOR_DB = (  # argv: socket path, cgroup; as another user
    "import sys\n"
    "from cgoom.client import Client, NoticeError\n"
    "c = Client(sys.argv[1])\n"
    "try:\n"
    "    c.register(sys.argv[2], deadline=1.0)\n"
    "except NoticeError as exc:\n"
    "    print('refused:', exc)\n"
    "else:\n"
    "    print('accepted')\n"
)


async def test_misbehaving_clients_delay_nothing(
        box: cgoom.Cgroup, spawn: Spawn, capsys: pytest.CaptureFixture[str]) -> None:
    parent, kids = inversion(box, early=True)
    held(kids, spawn)
    work = tempfile.mkdtemp(prefix="cgoom-n-")
    os.chmod(work, 0o755)
    path, out = os.path.join(work, "n.sock"), os.path.join(work, "batch")
    deadline = 5.0
    rule = cgoom.Rule("inversion", parent.path, on="high", confirm_timeout=20,
                      first_chance=deadline)
    stop = threading.Event()
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler, \
            cgoom.open_notice_server(handler, path) as server:
        # Another user asks for db: refused, whatever it asks.
        lib = readable_lib(work)
        other = await asyncio.to_thread(
            subprocess.run, [interpreter_for(NOBODY), "-c", ASK_FOR_DB, path,
                             kids["db"].path],
            user=NOBODY, group=NOBODY, env={"PYTHONPATH": lib}, capture_output=True,
            text=True, timeout=60, cwd=work)
        assert other.stdout.startswith("refused:") and "not yours: uid 65534" in \
            other.stdout, (other.stdout, other.stderr)
        # A flooder that never reads, and a garbage sender, from now on.
        threads = [threading.Thread(target=f, args=(path, kids["batch"].path, stop),
                                    daemon=True)
                   for f in (flood, garbage)]
        for t in threads:
            t.start()
        spawn(kids["batch"], "exec " + python_cmd(APP) + f" {path} {out} leave")
        await until(lambda: os.path.exists(out + ".reg"), 90, what="batch to register")
        record = await asyncio.wait_for(handler.__anext__(), 90)
        stop.set()
        stats = server.statistics()
    for t in threads:
        t.join(10)
    assert isinstance(record, cgoom.IncidentRecord)
    assert record.victim is not None and record.victim.cgroup == kids["batch"].path, \
        record.explain()
    chance = record.first_chance
    assert chance is not None and not chance.recovered
    answers = {t.answer for t in chance.told}
    assert answers == {"disconnected"}, record.explain()
    t_ = record.timings
    assert t_.kill_ms is not None and t_.kill_ms < deadline * 1000 / 2, record.explain()
    assert kids["db"].cgroup_procs() and kids["web"].cgroup_procs()
    assert parent.memory_events().oom_kill == 0
    assert stats.dropped >= 1 and stats.bad_messages >= 20, stats
    with capsys.disabled():
        report_figures(f"misbehaving clients: batch left mid-incident (first chance "
              f"{deadline:.0f} s): killed {t_.kill_ms:.1f} ms after the notification, empty "
              f"at {t_.confirmed_ms:.1f} ms; {stats.dropped} clients dropped, "
              f"{stats.bad_messages} bad messages, {stats.connected} connections; another "
              f"user refused: {other.stdout.strip()[:120]}")


async def test_a_background_killable_workload_dies_before_a_bigger_one(
        box: cgoom.Cgroup, spawn: Spawn, capsys: pytest.CaptureFixture[str]) -> None:
    parent, kids = inversion(box, early=True)
    held(kids, spawn)
    # A second workload (20M) of batch's priority (0) declares itself background-killable;
    # batch grows to about 60M by the time the domain reaches memory.high.
    saved = parent.create_child("saved")
    saved.set_memory_oom_group(True)
    work = tempfile.mkdtemp(prefix="cgoom-n-")
    path, out = os.path.join(work, "n.sock"), os.path.join(work, "saved")
    rule = cgoom.Rule("inversion", parent.path, on="high", confirm_timeout=20)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler, \
            cgoom.open_notice_server(handler, path):
        spawn(saved, "exec " + python_cmd(HOLD_KILLABLE) + f" {path} {out}")
        # A Python start and cgoom's import: seconds under emulation, more on a busy host.
        await until(lambda: os.path.exists(out + ".reg"), 90, what="the declaration")
        assert reply_of(out)["killable"] is True
        spawn(kids["batch"], python_cmd(GROW))
        record = await asyncio.wait_for(handler.__anext__(), 90)
    assert isinstance(record, cgoom.IncidentRecord)
    assert record.victim is not None and record.victim.cgroup == saved.path, record.explain()
    first = record.decision.victims[0]
    assert "background-killable" in first.reason
    sizes = {s.path: s.usage for s in record.candidates}
    assert (sizes[saved.path] or 0) < (sizes[kids["batch"].path] or 0), sizes
    assert kids["db"].cgroup_procs() and kids["batch"].cgroup_procs()
    with capsys.disabled():
        report_figures(f"background-killable: {saved.path} "
              f"({(sizes[saved.path] or 0) / M:.0f}M, declared over the socket) killed "
              f"before batch ({(sizes[kids['batch'].path] or 0) / M:.0f}M, same priority) "
              f"{record.timings.kill_ms:.1f} ms after the notification; reason: "
              f"{first.reason}")


# What sd-event does with $MEMORY_PRESSURE_WATCH naming a socket (sd-event.c,
# sd_event_add_memory_pressure): connect, write $MEMORY_PRESSURE_WRITE (base64) if set,
# then wait in poll() for POLLIN. It writes when it was woken and what it read (to a
# temporary file renamed into place: the test must never read it half-written).
CONSUMER = (
    "import base64, os, select, socket, stat, time\n"
    "watch = os.environ['MEMORY_PRESSURE_WATCH']\n"
    "assert stat.S_ISSOCK(os.stat(watch).st_mode)\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "s.connect(watch)\n"
    "s.sendall(base64.b64decode(os.environ['MEMORY_PRESSURE_WRITE']))\n"
    "p = select.poll()\n"
    "p.register(s, select.POLLIN)\n"
    "open(os.environ['OUT'] + '.tmp', 'w').write('waiting')\n"
    "os.rename(os.environ['OUT'] + '.tmp', os.environ['OUT'] + '.reg')\n"
    "p.poll()\n"
    "at = time.monotonic()\n"
    "with open(os.environ['OUT'] + '.tmp', 'w') as f:\n"
    "    f.write(f'{at} {s.recv(100).decode().strip()}')\n"
    "os.rename(os.environ['OUT'] + '.tmp', os.environ['OUT'])\n"
    "time.sleep(3600)\n"
)


async def test_a_memory_pressure_watch_consumer_is_woken(
        box: cgoom.Cgroup, spawn: Spawn, capsys: pytest.CaptureFixture[str]) -> None:
    import base64

    parent, kids = inversion(box, early=True)
    held(kids, spawn)
    service = parent.create_child("service")  # a service with MemoryPressureWatch=
    work = tempfile.mkdtemp(prefix="cgoom-n-")
    path, out = os.path.join(work, "p.sock"), os.path.join(work, "service")

    rule = cgoom.Rule("inversion", parent.path, on="high", window=1.0, sustained=30.0,
                      confirm_timeout=20)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
        told = mark_low(handler, kids["batch"].path)
        async with cgoom.open_pressure_socket(handler, path, level="low") as pressure:
            env = (f"MEMORY_PRESSURE_WATCH={path} OUT={out} MEMORY_PRESSURE_WRITE="
                   f"{base64.b64encode(b'some 200000 2000000').decode()} ")
            spawn(service, "exec env " + env + python_cmd(CONSUMER))
            await until(lambda: os.path.exists(out + ".reg"), 90, what="the consumer to connect")
            await until(lambda: len(handler._notifier.registry) == 2, 10, what="its registration")
            spawn(kids["batch"], python_cmd(GROW))
            await until(lambda: os.path.exists(out), 60, what="the consumer to be woken")
            at, said = read_text(out).split()
            woken = pressure.woken
    assert said == "low" and woken == 1
    assert told, "cgoom told nobody"
    with capsys.disabled():
        report_figures(f"a $MEMORY_PRESSURE_WATCH consumer (poll() on the socket) in "
              f"{service.path}: woken {(float(at) - told[0]) * 1000:.1f} ms after cgoom "
              f"raised the domain's level to low")


STUBBORN = (  # argv: socket path, output file; registers, ignores notices and SIGTERM, grows
    "import json, os, signal, sys, time\n"
    "from cgoom.client import Client\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "c = Client(sys.argv[1])\n"
    "reply = c.register(deadline=1.0)\n"
    "open(sys.argv[2] + '.tmp', 'w').write(json.dumps(reply))\n"
    "os.rename(sys.argv[2] + '.tmp', sys.argv[2] + '.reg')\n"
    "heap = []\n"
    "while True:\n"
    "    c.wait(timeout=0.1)\n"
    "    chunk = bytearray(4 << 20)\n"
    "    for i in range(0, len(chunk), 4096): chunk[i] = 1\n"
    "    heap.append(chunk)\n"
)


async def test_escalation_notice_deadline_sigterm_grace_sigkill(
        box: cgoom.Cgroup, spawn: Spawn, capsys: pytest.CaptureFixture[str]) -> None:
    """One action, each step recorded: batch is told (a reclaim target) over the socket,
    lets its 1 s deadline pass, ignores SIGTERM for the 1 s grace, and is killed."""
    parent, kids = inversion(box, early=True)
    held(kids, spawn)
    work = tempfile.mkdtemp(prefix="cgoom-n-")
    path, out = os.path.join(work, "n.sock"), os.path.join(work, "batch")
    rule = cgoom.Rule("inversion", parent.path, on="high", confirm_timeout=20,
                      first_chance=5.0, action="graceful", grace=1.0)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler, \
            cgoom.open_notice_server(handler, path):
        spawn(kids["batch"], "exec " + python_cmd(STUBBORN) + f" {path} {out}")
        await until(lambda: os.path.exists(out + ".reg"), 90, what="batch to register")
        record = await asyncio.wait_for(handler.__anext__(), 90)
    assert isinstance(record, cgoom.IncidentRecord)
    victim, t = record.victim, record.timings
    assert victim is not None and victim.cgroup == kids["batch"].path, record.explain()
    assert victim.graced_ms is not None and victim.graced_ms >= 1000, record.explain()
    assert t.kill_ms is not None and t.kill_ms >= 2000, record.explain()
    assert record.first_chance is not None
    assert [c.answer for c in record.first_chance.told] == ["no answer"]
    steps = record.escalation()
    assert steps is not None and "SIGTERM at" in steps and "SIGKILL at" in steps
    assert not kids["batch"].cgroup_procs() and kids["db"].cgroup_procs()
    assert parent.memory_events().oom_kill == 0
    with capsys.disabled():
        report_figures(f"escalation (deadline 1 s, grace 1 s): {steps}")
