"""The daemon as an operator deploys it: ``cgoom run`` in its own process with the default
``[handler]`` settings (whatever they start: the kernel log, the process connector where it
is followed), from exec to READY, its CPU to get there, its resident size and its CPU while
idle; and what each optional part costs.

    python benchmarks/daemon.py [--json] [--cgroups 200] [--large 10000]
                                [--idle-seconds 60] [--runs 5]

The host here has no cgroup v2 memory controller, so the daemon watches a fake tree on
tmpfs through the real filesystem code (``--mount``/``--proc``: inotify on the fake's
files, the real watcher, handler and tripwires; a fresh tree for each start, after one
uncounted start that caches the bytecode, as a wheel's install does), with the
example configuration's shape: a ``workload`` rule on ``workload.slice`` (N cgroups under
it, early trigger 10% below memory.max) and a ``machine`` rule on ``/`` (memory.high
tripwires on the top-level cgroups). It is **not** a dry run, so the process connector is
opened where the configuration follows it, and pidfds are ready: the fake tree holds no
process at all, so there is nothing any rule could signal (and the tree is idle: nothing
fires).

Configurations: ``default`` (only ``own_cgroup`` set), ``proc_events`` (``proc_events =
true``: the connector on whatever the kernel; pyroute2 imported before READY), ``lean``
(``kmsg = false``, ``proc_events = false``). Keys:

- ``startup_s_default``, ``startup_s_proc_events``, ``startup_s_lean``: median over
  ``--runs`` of exec to ``READY=1`` on a notify socket (target 0.5 s with the default);
- ``startup_cpu_s``: CPU seconds the default daemon used up to READY (median);
- ``rss_mb_200_default``, ``rss_mb_200_proc_events``, ``rss_mb_200_lean``: VmRSS after
  READY with N (default 200) cgroups (target 20 MB with the default);
- ``rss_mb_10000``: the same with ``--large`` (default 10,000) cgroups, default settings
  (target 50 MB);
- ``idle_cpu_s_60``: CPU seconds the default daemon's threads ran over the idle period
  (schedstat, in ns; 60 s by default; named for the default even when changed);
- ``pyroute2_import_s``: a fresh interpreter's ``import pyroute2`` (median of 3);
- ``setup_default``: what the default daemon said at start (its set-up lines).
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


#: ``[handler]`` lines of each configuration measured (``own_cgroup`` is always set).
CONFIGS = {
    "default": "",
    "proc_events": "proc_events = true\n",
    "lean": "kmsg = false\nproc_events = false\n",
}


def build(base: str, n: int, handler: str = "") -> tuple[FakeCgroupTree, str]:
    tree = FakeCgroupTree(base)
    tree.add("workload.slice", memory_max=4096 * M, memory_current=100 * M)
    for i in range(n - 1):
        tree.add(f"workload.slice/job-{i:05d}", memory_current=1 * M)
    tree.add("system.slice", memory_current=200 * M)
    tree.set_meminfo(total=16384 * M, available=12288 * M)  # the machine rule stays quiet
    config = os.path.join(base, "cgoom.toml")
    with open(config, "w") as f:
        f.write('[handler]\nown_cgroup = "/system.slice"\n' + handler +
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


def daemon_env(work: str, notify: str) -> dict[str, str]:
    """The daemon's environment: as installed from a wheel, its modules' bytecode is cached
    (pip compiles it; PYTHONDONTWRITEBYTECODE, set on some hosts, would have every start
    compile ~180 modules: 0.2 s), kept under ``work`` so the checkout stays clean."""
    env = {**os.environ, "NOTIFY_SOCKET": notify,
           "PYTHONPYCACHEPREFIX": os.path.join(work, "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


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
             tree.hierarchy.proc_root, "run", "--config", config],
            env=daemon_env(work, path), stderr=stderr)
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


def said(work: str) -> list[str]:
    """The set-up lines the daemon logged (its stderr)."""
    with open(os.path.join(work, "daemon.log")) as f:
        return [line.split("set-up: ", 1)[1].strip() for line in f if "set-up: " in line]


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


def measure(work: str, name: str, cgroups: int, runs: int,
            ) -> tuple[list[float], list[float], subprocess.Popen[bytes], socket.socket]:
    """``runs`` starts (exec to READY, CPU to READY), then one more left running."""
    startups, cpus = [], []
    for run in range(-1, runs + 1):  # -1: a warm-up (bytecode cached), not counted
        # A fresh tree each run: the real filesystem code writes the fake's regular files in
        # place, without truncating (kernfs semantics), so a restored "max" would land over
        # a longer number.
        tree, config = build(os.path.join(work, f"{name}-{cgroups}-{run}"), cgroups,
                             CONFIGS[name])
        for cgroup in tree.hierarchy.root.walk():  # nothing here a rule could signal
            assert not cgroup.cgroup_procs(), cgroup.path
        proc, took, server = start(tree, config, work)
        if run == runs:
            return startups, cpus, proc, server
        if run >= 0:
            startups.append(took)
            cpus.append(cpu_seconds(proc.pid))
        stop(proc, server)
    raise AssertionError("unreachable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--cgroups", type=int, default=200)
    parser.add_argument("--large", type=int, default=10000)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cgoom-bench-daemon-")
    result: dict[str, object] = {"cgroups": args.cgroups, "large": args.large,
                                 "idle_seconds": args.idle_seconds}
    try:
        for name in CONFIGS:
            startups, cpus, proc, server = measure(work, name, args.cgroups, args.runs)
            try:
                time.sleep(1.0)  # settle after READY
                result[f"rss_mb_200_{name}"] = round(rss_mb(proc.pid), 1)
                result[f"startup_s_{name}"] = round(statistics.median(startups), 3)
                if name == "default":
                    result["startup_cpu_s"] = round(statistics.median(cpus), 3)
                    result["startup_runs_s"] = [round(s, 3) for s in startups]
                    result["setup_default"] = said(work)
                    before = cpu_seconds(proc.pid)
                    time.sleep(args.idle_seconds)
                    result["idle_cpu_s_60"] = round(cpu_seconds(proc.pid) - before, 6)
            finally:
                stop(proc, server)
        _, _, proc, server = measure(work, "default", args.large, 0)
        try:
            time.sleep(1.0)
            result["rss_mb_10000"] = round(rss_mb(proc.pid), 1)
        finally:
            stop(proc, server)
        result["pyroute2_import_s"] = round(pyroute2_import(), 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            if isinstance(value, list) and key == "setup_default":
                print(f"{key:>24}:")
                for line in value:
                    print(f"{'':>26}{line}")
            else:
                print(f"{key:>24}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
