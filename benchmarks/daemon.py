"""The daemon as an operator runs it: ``cgoom run`` in its own process, from exec to READY, its
resident size and its CPU while idle.

    python benchmarks/daemon.py [--json] [--cgroups 200] [--idle-seconds 60] [--runs 5]

The host here has no cgroup v2 memory controller, so the daemon watches a fake tree on
tmpfs through the real filesystem code (``--mount``/``--proc``: inotify on the fake's
files, the real watcher, handler and tripwires; a fresh tree for each start), with the
example configuration's shape: a ``workload`` rule on ``workload.slice`` (N cgroups under
it, early trigger 10% below memory.max) and a ``machine`` rule on ``/`` (memory.high
tripwires on the top-level cgroups). It runs ``--dry-run`` (a fake tree's pids are not
this host's processes), which leaves out two parts of a real start, reported beside the
figures: the process connector (pyroute2, imported in a worker before READY:
``pyroute2_import_s``) and the kernel log.

- startup_s: median over ``--runs`` of exec to ``READY=1`` on a notify socket;
- rss_mb_200: VmRSS of the daemon after READY, watching N (default 200) cgroups;
- idle_cpu_s_60: CPU seconds the daemon's threads ran over the idle period (schedstat, in
  ns; 60 s by default; named for the default even when changed);
- pyroute2_import_s: a fresh interpreter's ``import pyroute2`` (median of 3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from cgoom.testing import FakeCgroupTree

M = 1 << 20
TICKS = os.sysconf("SC_CLK_TCK")


def build(base: str, n: int) -> tuple[FakeCgroupTree, str]:
    tree = FakeCgroupTree(base)
    tree.add("workload.slice", memory_max=4096 * M, memory_current=100 * M)
    for i in range(n - 1):
        tree.add(f"workload.slice/job-{i:04d}", memory_current=1 * M)
    tree.add("system.slice", memory_current=200 * M)
    config = os.path.join(base, "cgoom.toml")
    with open(config, "w") as f:
        f.write('[handler]\nown_cgroup = "/system.slice"\nkmsg = false\nproc_events = false\n'
                '\n[[rule]]\nname = "workload"\ndomain = "workload.slice"\n'
                'high_below_max = 0.1\n\n[[rule]]\nname = "machine"\ndomain = "/"\n'
                "available_below = 0.1\n")
    return tree, config


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads, from /proc/PID/task/*/schedstat (ns; the clock
    ticks of /proc/PID/stat are 10 ms, too coarse for an idle minute); threads that ended
    meanwhile are lost, so a sample is taken while the daemon idles."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except FileNotFoundError:  # no schedstat (CONFIG_SCHED_INFO off): ticks
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start(tree: FakeCgroupTree, config: str, work: str) -> tuple[subprocess.Popen[bytes],
                                                                  float, socket.socket]:
    path = os.path.join(work, f"notify-{time.monotonic_ns()}")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(60)
    log = os.path.join(work, "daemon.log")
    started = time.monotonic()
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cgoom.cli", "--mount", tree.hierarchy.mount, "--proc",
             tree.hierarchy.proc_root, "run", "--config", config, "--dry-run"],
            env={**os.environ, "NOTIFY_SOCKET": path}, stderr=stderr)
    try:
        message = server.recv(4096).decode()
    except TimeoutError:
        proc.kill()
        with open(log) as f:
            raise RuntimeError(
                f"no READY within 60 s; the daemon said: {f.read()[-2000:]}") from None
    took = time.monotonic() - started
    if not message.startswith("READY=1"):
        raise RuntimeError(f"the daemon said {message!r}")
    return proc, took, server


def stop(proc: subprocess.Popen[bytes], server: socket.socket) -> None:
    proc.send_signal(signal.SIGTERM)
    if proc.wait(30) != 0:
        raise RuntimeError(f"the daemon exited {proc.returncode}")
    server.close()


def pyroute2_import() -> float:
    code = "import time; t = time.perf_counter(); import pyroute2; print(time.perf_counter() - t)"
    return statistics.median(
        float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                             text=True).stdout) for _ in range(3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cgroups", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cgoom-bench-daemon-")
    try:
        startups = []
        for run in range(args.runs + 1):
            # A fresh tree each run: the real filesystem code writes the fake's regular
            # files in place, without truncating (kernfs semantics), so a restored "max"
            # would land over a longer number.
            tree, config = build(os.path.join(work, f"tree-{run}"), args.cgroups)
            proc, took, server = start(tree, config, work)
            if run == args.runs:
                break
            startups.append(took)
            stop(proc, server)
        try:
            time.sleep(1.0)  # settle after READY
            rss = rss_mb(proc.pid)
            before = cpu_seconds(proc.pid)
            time.sleep(args.idle_seconds)
            idle = cpu_seconds(proc.pid) - before
        finally:
            stop(proc, server)
        result = {"startup_s": round(statistics.median(startups), 3),
                  "startup_runs_s": [round(s, 3) for s in startups],
                  "rss_mb_200": round(rss, 1), "idle_cpu_s_60": round(idle, 6),
                  "cgroups": args.cgroups, "idle_seconds": args.idle_seconds,
                  "pyroute2_import_s": round(pyroute2_import(), 3)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>20}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
