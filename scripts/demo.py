"""cgoom's main job, on a real cgroup v2 kernel (run by scripts/demo): the priority inversion.

A 300M workload, /workload.slice, holds db (140M, priority 100), web (50M, priority 50) and
batch (priority 0), a job whose memory grows about 40 MiB/s. Act 1: the kernel alone. batch
runs into memory.max and the kernel's OOM killer kills the largest: db, the most important.
Act 2: the same with the daemon, ``cgoom run`` on the documented example configuration
(docs/cgoom.example.toml; a drop-in adds the record log and metrics): its ``workload`` rule
sets memory.high 10% below memory.max, fires on the first ``high`` event, the priority policy
(priorities from the file's patterns) chooses batch, cgoom kills it whole before the kernel's
OOM killer acts, db and web live on; ``cgoom explain`` shows the record, the metrics endpoint
counts the kill, SIGTERM puts memory.high back. Cleans up after itself.

On a host without a usable cgroup v2 memory controller it runs itself inside the VM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import cgoom
from cgoom.cli import main as cgoom_cli
from cgoom.testing import find_test_parent, kill_and_remove, wait_until

M = 1 << 20
GROW = ("import time\nchunks = []\nwhile True:\n    chunk = bytearray(4 << 20)\n"
        "    for i in range(0, len(chunk), 4096): chunk[i] = 1\n"
        "    chunks.append(chunk); time.sleep(0.1)\n")
HOLD = "{{ head -c {mb}M /dev/zero; exec sleep 1000; }} | tail > /dev/null"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def start_in(cgroup: cgoom.Cgroup, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start ``argv`` paused, move it into ``cgroup``, release it: all it forks is inside."""
    proc = subprocess.Popen(["/bin/sh", "-c", 'read go; exec "$@"', "sh", *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    cgroup.attach(proc.pid)
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.close()
    return proc


def build(parent: cgoom.Cgroup, *, priorities: bool = True,
          ) -> tuple[cgoom.Cgroup, dict[str, cgoom.Cgroup]]:
    """The workload: ``workload.slice`` under ``parent``, db, web and batch in it; their
    priorities as xattrs, or (``priorities=False``) left to the configuration's patterns."""
    demo = parent.child("workload.slice")
    if demo.exists():
        kill_and_remove(demo)
    demo = parent.create_child("workload.slice")
    demo.enable_controllers("memory", "pids")
    kids = {}
    for name, priority in (("db", 100), ("web", 50), ("batch", 0)):
        kids[name] = demo.create_child(name)
        if priorities:
            kids[name].set_priority(priority)
        kids[name].set_memory_oom_group(True)
    demo.set_memory_max("300M")
    demo.set_memory_swap_max(0)
    return demo, kids


def start_services(kids: dict[str, cgoom.Cgroup], procs: list[subprocess.Popen[bytes]],
                   ) -> None:
    for name, mb in (("db", 140), ("web", 50)):
        procs.append(start_in(kids[name], ["/bin/sh", "-c", HOLD.format(mb=mb)]))
    wait_until(lambda: kids["db"].memory_current() > 135 * M
               and kids["web"].memory_current() > 45 * M, 60, "db and web to hold memory")


def alive(kids: dict[str, cgoom.Cgroup]) -> str:
    return ", ".join(f"{n} {'alive' if c.cgroup_events().populated else 'DEAD'}"
                     for n, c in kids.items())


def act_one(parent: cgoom.Cgroup) -> None:
    demo, kids = build(parent)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        step("act 1, the kernel alone: db 140M (priority 100), web 50M (50), batch grows "
             f"~40 MiB/s (0); {demo.path} memory.max 300M")
        start_services(kids, procs)
        procs.append(start_in(kids["batch"], [sys.executable, "-c", GROW]))
        started = time.monotonic()
        wait_until(lambda: demo.memory_events().oom_kill > 0, 60, "the kernel's OOM kill")
        # Each child's memory.events counts the OOM kills of its own processes. The kernel
        # may kill more than once: its victim's memory is uncharged only as the victim
        # exits, and a charge that fails meanwhile (batch grows on) no longer sees the victim
        # (MMF_OOM_SKIP once the oom_reaper is done with it) and kills the next largest. Seen
        # on 7.3 under emulation: db killed, then batch 36-40 ms later. So wait until every
        # cgroup the kernel killed in is empty, and name them all.
        def killed() -> list[str]:
            return [n for n, c in kids.items() if c.memory_events().oom_kill > 0]

        wait_until(lambda: bool(killed()) and not any(
            kids[n].cgroup_events().populated for n in killed()), 30,
            "the kernel's victims to exit")
        print(f"  after {time.monotonic() - started:.1f} s the kernel's OOM killer acted "
              f"(oom_kill {demo.memory_events().oom_kill}): {alive(kids)}")
        if "db" in killed():
            print("  it killed the largest workload, db: the one that mattered most")
        if len(killed()) > 1:
            print(f"  it killed in {len(killed())} workloads ({', '.join(killed())}): a "
                  "charge failed again while its first victim's memory was being freed")
    finally:
        kill_and_remove(demo)
        for proc in procs:
            proc.wait(10)


EXAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs",
                       "cgoom.example.toml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(work: str, demo: cgoom.Cgroup) -> tuple[str, str, int]:
    """docs/cgoom.example.toml as it is, and one drop-in: the record log, metrics, and, when
    the demo is not at the root (a delegated subtree), the workload rule's domain and
    priorities moved to where it is."""
    config = os.path.join(work, "cgoom.toml")
    shutil.copy(EXAMPLE, config)
    records, port = os.path.join(work, "records.jsonl"), free_port()
    drop_in = [f'[handler]\nrecords = "{records}"\n\n[metrics]\nport = {port}\n']
    if demo.path != "/workload.slice":
        rel = demo.path.lstrip("/")
        drop_in.append(f'\n[priorities]\n"{rel}/db*" = 100\n"{rel}/web*" = 50\n'
                       f'"{rel}/batch*" = 0\n\n[[rule]]\nname = "workload"\n'
                       f'domain = "{demo.path}"\n')
    os.mkdir(config + ".d")
    with open(os.path.join(config + ".d", "50-demo.toml"), "w") as f:
        f.write("".join(drop_in))
    return config, records, port


def act_two(parent: cgoom.Cgroup) -> int:
    demo, kids = build(parent, priorities=False)
    procs: list[subprocess.Popen[bytes]] = []
    work = tempfile.mkdtemp(prefix="cgoom-demo-")
    config, records, port = write_config(work, demo)
    notify_path = os.path.join(work, "notify")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(notify_path)
    server.settimeout(120)
    daemon = None
    try:
        step(f"act 2, the same with the daemon: cgoom run --config {config} (the example, "
             "docs/cgoom.example.toml, with the drop-in cgoom.toml.d/50-demo.toml)")
        start_services(kids, procs)
        started = time.monotonic()
        daemon = subprocess.Popen([sys.executable, "-m", "cgoom.cli", "run", "--config",
                                   config], env={**os.environ, "NOTIFY_SOCKET": notify_path})
        ready = server.recv(4096).decode().splitlines()
        print(f"  sd_notify after {time.monotonic() - started:.1f} s: {', '.join(ready)}",
              flush=True)
        procs.append(start_in(kids["batch"], [sys.executable, "-c", GROW]))
        wait_until(lambda: os.path.exists(records) and os.path.getsize(records) > 0, 60,
                   "a record in the log")
        step(f"cgoom explain --log {records}")
        cgoom_cli(["explain", "--log", records])
        record = next(r for r in cgoom.read_records(records)
                      if isinstance(r, cgoom.IncidentRecord))
        step(f"metrics: http://127.0.0.1:{port}/metrics")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        for line in metrics.splitlines():
            if line.startswith(("cgoom_kills_total", "cgoom_incidents_total",
                                "cgoom_notification_to_kill_seconds_sum")):
                print(f"  {line}")
        step("SIGTERM: the daemon stops and puts back what it set")
        daemon.send_signal(signal.SIGTERM)
        print(f"  sd_notify: {server.recv(4096).decode()}; exit status {daemon.wait(30)}; "
              f"memory.high of {demo.path}: {demo.memory_high()}")
        t = record.timings
        step("outcome")
        print(f"  {alive(kids)}; the kernel's oom_kill: {demo.memory_events().oom_kill}")
        print(f"  onset (first high) to kill {t.kill_ms:.1f} ms; notification to empty "
              f"{t.confirmed_ms:.1f} ms")
        ok = (record.victim is not None and record.victim.cgroup == kids["batch"].path
              and kids["db"].cgroup_events().populated and kids["web"].cgroup_events().populated
              and demo.memory_events().oom_kill == 0)
        return 0 if ok else 1
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
        server.close()
        kill_and_remove(demo)
        for proc in procs:
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def demo() -> int:
    parent, reason = find_test_parent()
    if parent is None:
        print(f"demo: no usable cgroup v2 memory controller: {reason}", file=sys.stderr)
        return 1
    act_one(parent)
    return act_two(parent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--here", action="store_true", help="run on this host, never the VM")
    args = parser.parse_args()
    parent, _ = find_test_parent()
    if parent is not None or args.here:
        return demo()
    print("demo: this host has no usable cgroup v2 memory controller; running in the VM",
          file=sys.stderr, flush=True)
    from cgoom.testing import vm

    here = os.path.relpath(os.path.abspath(__file__))
    return vm.main(["run", "--", sys.executable, here, "--here"])


if __name__ == "__main__":
    sys.exit(main())
