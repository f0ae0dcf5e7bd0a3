"""``cgoom-vm``: run commands, or the real-kernel test tier, in a throwaway VM with a stock
cgroup v2 kernel.

Why: hosts whose memory controller is bound to cgroup v1 (these development and CI machines)
have no memory.* files at all, and a cgroup library proven only on fakes is not proven.

How (verified recipe, ../notes/real-kernel-vm.md): virtme-ng boots the host's Debian kernel
under qemu in software emulation (``--disable-kvm``: guests hang with KVM here), sharing the
host's root filesystem read-only, so the project's checkout and virtualenv are at the same
paths inside. ``cgroup_no_v1=all`` gives cgroup v2 every controller. One boot takes ~20 s;
everything runs inside that one boot. The command's exit status comes back.

Usage::

    cgoom-vm test [PYTEST ARGS...]   # tests/integration: here if this host can, else in the
                                     # VM; fails if any test skipped or none ran
    cgoom-vm run -- COMMAND...        # any command in the VM, e.g. cgoom status

What it installs when missing (as root, with apt): qemu-system-x86, linux-image-amd64,
busybox-static and dbus-daemon (the D-Bus test starts a bus of its own);
into the running virtualenv, with pip: virtme-ng. Without root it says what to install.
"""

from __future__ import annotations

import argparse
import glob
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence

#: qemu and a stock Debian kernel; virtme-ng's init needs a static busybox (the shared note's
#: recipe omits it: without it virtme-run stops with "a statically linked busybox could not be
#: found").
APT_PACKAGES = ("qemu-system-x86", "linux-image-amd64", "busybox-static",
                # The D-Bus test starts a bus of its own (tests/integration).
                "dbus-daemon")
KERNEL_GLOB = "/boot/vmlinuz-*-amd64"
#: Environment variable the integration tests read: set, a missing cgroup v2 memory
#: controller is a failure, not a skip (tests/integration/conftest.py).
REQUIRE_ENV = "CGOOM_REQUIRE_CGROUP2"
#: The ``cgoom`` command the daemon tests run: the wheel built from the checkout, installed
#: into a virtualenv of its own (what an operator installs, not the source tree).
CLI_ENV = "CGOOM_CLI"


def install_wheel(directory: str) -> str:
    """Build the checkout's wheel and install it (with the ``metrics`` extra) into a new
    virtualenv under ``directory``; the path of its ``cgoom``. :class:`VMError` if that
    cannot be done (the daemon tests must not fall back to the source tree in silence)."""
    dist, venv = os.path.join(directory, "dist"), os.path.join(directory, "venv")
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", dist, os.getcwd()],
        [base, "-m", "venv", venv],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise VMError(f"cannot install the wheel for the daemon tests: {shlex.join(step)}: "
                          f"{done.stderr.strip()[-500:]}")
    wheels = glob.glob(os.path.join(dist, "cgoom-*.whl"))
    if len(wheels) != 1:
        raise VMError(f"expected one wheel in {dist}, found {wheels}")
    step = [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
            "--disable-pip-version-check", f"{wheels[0]}[metrics]"]
    done = subprocess.run(step, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise VMError(f"cannot install the wheel for the daemon tests: {shlex.join(step)}: "
                      f"{done.stderr.strip()[-500:]}")
    _say(f"the daemon tests run the installed wheel: {os.path.basename(wheels[0])} in {venv}")
    return os.path.join(venv, "bin", "cgoom")


class VMError(Exception):
    """The VM cannot be run here; the message names what is missing and how to get it."""


def _say(message: str) -> None:
    print(f"cgoom-vm: {message}", file=sys.stderr, flush=True)


def _kernel() -> str | None:
    kernels = sorted(glob.glob(KERNEL_GLOB))
    return kernels[-1] if kernels else None


def ensure_prerequisites() -> tuple[str, str]:
    """Install what is missing where we can; return ``(vng, kernel)`` paths."""
    if platform.machine() != "x86_64":
        raise VMError(
            f"the VM runner needs an x86-64 host (qemu-system-x86 with a Debian amd64 kernel); "
            f"this one is {platform.machine()}"
        )
    missing = [pkg for pkg, ok in (("qemu-system-x86", shutil.which("qemu-system-x86_64")),
                                   ("linux-image-amd64", _kernel()),
                                   ("busybox-static", shutil.which("busybox")),
                                   ("dbus-daemon", shutil.which("dbus-daemon"))) if not ok]
    if missing:
        if os.geteuid() != 0:
            raise VMError(
                f"missing {', '.join(missing)}; install as root: "
                f"apt-get install -y {' '.join(APT_PACKAGES)}"
            )
        if not shutil.which("apt-get"):
            raise VMError(f"missing {', '.join(missing)} and there is no apt-get to install it")
        _say(f"installing {' '.join(APT_PACKAGES)} with apt-get (about a minute)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-q"],
                    # With recommends, as in the verified recipe (ipxe-qemu comes that way).
                    ["apt-get", "install", "-y", "-q", *APT_PACKAGES]):
            done = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, check=False)
            if done.returncode != 0:
                raise VMError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    kernel = _kernel()
    if kernel is None or not shutil.which("qemu-system-x86_64") or not shutil.which("busybox"):
        raise VMError(f"still missing a kernel ({KERNEL_GLOB}), qemu-system-x86_64 or busybox "
                      "after installing them")
    if not os.access(kernel, os.R_OK):
        raise VMError(f"cannot read the kernel image {kernel}: run as root")
    bindir = os.path.dirname(sys.executable)
    vng = os.path.join(bindir, "vng")
    if not os.path.exists(vng):
        _say("installing virtme-ng into this virtualenv with pip")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "virtme-ng"],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0 or not os.path.exists(vng):
            raise VMError(f"pip install virtme-ng failed:\n{done.stderr[-2000:]}")
    return vng, kernel


def run_in_vm(command: str, *, rwdirs: Sequence[str] = (), memory: str = "1G", cpus: int = 2,
              timeout: float = 1800.0) -> int:
    """Boot the VM, run ``command`` (a shell string) from the current directory inside it,
    and return its exit status. Standard input is closed; output streams through."""
    vng, kernel = ensure_prerequisites()
    argv = [vng, "--disable-kvm", "-r", kernel, "--memory", memory, "--cpus", str(cpus),
            "--append", "cgroup_no_v1=all", "--cwd", os.getcwd()]
    for directory in rwdirs:
        argv += ["--rwdir", directory]
    argv += ["--", command]
    # vng runs virtme-run by name: put this virtualenv's bin first on PATH.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ.get("PATH", ""))
    _say(f"booting {os.path.basename(kernel)} under qemu (software emulation, ~20 s)")
    started = time.monotonic()
    # The VM's output goes through a pipe that we copy: qemu reopens its stdout, and when
    # that is a regular file (a CI log) it truncates it, erasing everything printed before.
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    deadline = started + timeout
    out = sys.stdout.buffer
    try:
        for line in iter(proc.stdout.readline, b""):
            out.write(line.replace(b"\0", b""))
            out.flush()
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(argv, timeout)
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        _say(f"the VM did not finish within {timeout:.0f} s; stopped it")
        return 124
    finally:
        proc.stdout.close()
    _say(f"VM finished with status {status} after {time.monotonic() - started:.1f} s")
    return status


def _junit_counts(path: str) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, "0"))
    return counts


def run_tests(pytest_args: Sequence[str], *, require: bool = True, vm: bool | None = None) -> int:
    """Run tests/integration on this host if it has a usable cgroup v2 memory controller
    (``vm=None``; ``vm=False`` insists), else inside the VM. With ``require``, a skipped test
    or an empty run is a failure: a green real-kernel tier that proved nothing is not green."""
    if vm is None or vm is False:
        from ._realkernel import find_test_parent

        parent, reason = find_test_parent()
        if parent is not None:
            _say(f"this host has a cgroup v2 memory controller: testing under {parent.dir}")
            vm = False
        elif vm is False:
            _say(f"cannot run the real-kernel tier on this host: {reason}")
            return 3
        else:
            _say("no usable cgroup v2 memory controller on this host; using the VM")
            vm = True
    with tempfile.TemporaryDirectory(prefix="cgoom-vm-") as results:
        junit = os.path.join(results, "junit.xml")
        env = {
            REQUIRE_ENV: "1" if require else "0",
            CLI_ENV: install_wheel(results),
            # The checkout is read-only inside the guest: no bytecode, and hypothesis keeps its
            # example database in the writable results directory.
            "PYTHONDONTWRITEBYTECODE": "1",
            "HYPOTHESIS_STORAGE_DIRECTORY": os.path.join(results, "hypothesis"),
        }
        # The guest has no swap; a small zram swap makes memory.reclaim and memory.swap.*
        # testable (anon memory is only reclaimable to swap, and the guest has no page cache
        # worth reclaiming: its root is 9p without caching).
        make_swap = ("{ modprobe zram && echo 256M > /sys/block/zram0/disksize && "
                     "mkswap /dev/zram0 >/dev/null && swapon /dev/zram0; } "
                     "|| echo 'cgoom-vm: could not set up zram swap' >&2; ")
        pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/integration",
                  f"--junitxml={junit}", *pytest_args]
        command = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()),
                            *map(shlex.quote, pytest)])
        if vm:
            status = run_in_vm(make_swap + command, rwdirs=[results])
        else:
            status = subprocess.run(pytest, env=dict(os.environ, **env), check=False).returncode
        if not os.path.exists(junit):
            _say(f"no test report came back from the VM (status {status})")
            return status or 1
        counts = _junit_counts(junit)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    _say(f"real-kernel tier: {summary}")
    if require and counts["tests"] == 0:
        _say("FAILED: the real-kernel tier ran no test")
        return status or 1
    if require and counts["skipped"]:
        _say("FAILED: tests were skipped in the real-kernel tier; they must run there")
        return status or 1
    return status


def command_words(argv: Sequence[str]) -> list[str]:
    """The command after ``run``: only the first ``--`` (argparse keeps it) separates it;
    any later one belongs to the command (``cgoom-vm run -- grep -- -v f``)."""
    words = list(argv)
    return words[1:] if words[:1] == ["--"] else words


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cgoom-vm", description="Run cgoom's real-kernel tests or any command in a "
        "throwaway cgroup v2 VM.")
    sub = parser.add_subparsers(dest="command", required=True)
    test = sub.add_parser("test", help="run tests/integration in the VM (extra args go to pytest)")
    test.add_argument("--allow-skips", action="store_true",
                      help="do not fail when tests skip or none run")
    where = test.add_mutually_exclusive_group()
    where.add_argument("--vm", dest="vm", action="store_const", const=True, default=None,
                       help="always boot the VM, even on a host that could run the tests")
    where.add_argument("--host", dest="vm", action="store_const", const=False,
                       help="only on this host; fail if it has no usable memory controller")
    run = sub.add_parser("run", help="run a command in the VM: cgoom-vm run -- cgoom status")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "test":
            return run_tests(extra, require=not args.allow_skips, vm=args.vm)
        words = command_words(args.argv) + extra
        if not words:
            parser.error("run needs a command: cgoom-vm run -- COMMAND")
        # Put the virtualenv first so `cgoom` resolves to this checkout's.
        bindir = shlex.quote(os.path.dirname(sys.executable))
        return run_in_vm(f"PATH={bindir}:$PATH " + " ".join(map(shlex.quote, words)))
    except VMError as exc:
        _say(str(exc))
        return 3


if __name__ == "__main__":
    sys.exit(main())
