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


# --- other kernels, from Debian's archive ----------------------------------------------------
#
# Debian packages the kernels cgoom's users run: 6.1 (bookworm, the host's), 6.12 (trixie)
# and 7.x (trixie-backports, sid). A private apt configuration under the cache (its own
# sources list, lists and archives; the host's dpkg status only read) downloads them with
# `apt-get download` and unpacks them with `dpkg -x`: nothing is installed on the host and
# the host's apt sources are not touched. The archive's keys are the host's
# debian-archive-keyring (bookworm's carries trixie's; sid is signed with them too).
#
# Package shapes: 6.12's linux-image-KVER-amd64 holds /boot/vmlinuz-KVER and
# /usr/lib/modules/KVER; 7.x splits it into linux-binary-KVER-amd64
# (/usr/lib/modules/KVER/vmlinuz) and linux-modules-KVER-amd64. virtme-ng finds the modules
# from the image's path (it walks up to .../usr/lib/modules) and puts the ones the guest
# needs to boot (virtio, 9p) in its initramfs; for the rest (zram) the guest's
# /lib/modules/KVER is bound to the unpacked tree before the tests (see _guest_modules).

#: Suites searched for kernels (the host's bookworm is /boot's).
DEBIAN_SUITES = ("trixie", "trixie-backports", "sid")
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def cache_dir() -> str:
    """Where fetched kernels are kept: ``$CGOOM_VM_CACHE``, else /var/lib/cgoom-vm as
    root, else ~/.cache/cgoom-vm. Not /var/cache nor /tmp: the guest mounts a tmpfs over
    those, and its modules must be visible to it at the same path."""
    if os.environ.get("CGOOM_VM_CACHE"):
        return os.environ["CGOOM_VM_CACHE"]
    if os.geteuid() == 0:
        return "/var/lib/cgoom-vm"
    return os.path.join(os.path.expanduser("~"), ".cache", "cgoom-vm")


class _Apt:
    """apt-get and apt-cache on a private configuration under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root
        for sub in ("lists/partial", "archives/partial", "etc"):
            os.makedirs(os.path.join(root, sub), exist_ok=True)
        sources = os.path.join(root, "etc", "sources.list")
        with open(sources, "w", encoding="utf-8") as f:
            for suite in DEBIAN_SUITES:
                f.write(f"deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} {suite} main\n")
        self.options = [
            "-o", f"Dir::Etc::SourceList={sources}", "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={os.path.join(root, 'lists')}",
            "-o", f"Dir::Cache={root}", "-o", "Dir::State::status=/var/lib/dpkg/status",
            "-o", "APT::Architecture=amd64", "-o", "Acquire::Languages=none",
            "-o", "APT::Sandbox::User=root",
        ]

    def __call__(self, tool: str, *args: str, cwd: str | None = None) -> str:
        cmd = [tool, *self.options, *args]
        done = subprocess.run(cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise VMError(f"{shlex.join(cmd[:1] + list(args))} failed ({done.returncode}): "
                          f"{done.stderr.strip()[-1500:]}")
        return done.stdout


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.replace("-", ".").split(".")
                 if part.isdigit())


def debian_kernels(apt: _Apt) -> dict[str, str]:
    """The kernel versions the suites offer: upstream version (``7.3.4``) -> the image
    package (``linux-image-7.3.4+deb13-amd64``), from the metapackage linux-image-amd64."""
    found: dict[str, str] = {}
    for line in apt("apt-cache", "madison", "linux-image-amd64").splitlines():
        version = line.split("|")[1].strip()  # 7.3.4-1~bpo13+1
        upstream = version.split("-")[0]
        shown = apt("apt-cache", "show", f"linux-image-amd64={version}")
        for dep in shown.split("Depends:", 1)[1].splitlines()[0].split(","):
            name = dep.split("(")[0].strip()
            if name.startswith("linux-image-") and name.endswith("-amd64"):
                found[upstream] = name
    return found


def _pick(offered: Sequence[str], wanted: str) -> str | None:
    """The newest of ``offered`` matching ``wanted``: ``newest``, or a version prefix
    (``6.12``, ``7``) matched at whole components."""
    if wanted == "newest":
        matches = list(offered)
    else:
        parts = wanted.split(".")
        matches = [v for v in offered if v.split(".")[:len(parts)] == parts]
    return max(matches, key=_version_key) if matches else None


def fetch_kernel(wanted: str) -> str:
    """The path of a vmlinuz for ``wanted`` (``6.12``, ``7``, ``newest``), downloaded from
    Debian's archive and unpacked under :func:`cache_dir` when not already there."""
    base = cache_dir()
    apt = _Apt(os.path.join(base, "apt"))
    _say(f"looking up Debian's kernels ({', '.join(DEBIAN_SUITES)})")
    apt("apt-get", "update", "-q")
    offered = debian_kernels(apt)
    upstream = _pick(list(offered), wanted)
    if upstream is None:
        raise VMError(f"no Debian kernel matches {wanted!r}; offered: "
                      f"{', '.join(sorted(offered, key=_version_key))}")
    image = offered[upstream]
    kver = image[len("linux-image-"):]  # 7.3.4+deb13-amd64
    tree = os.path.join(base, "kernels", kver)
    found = _vmlinuz(tree, kver)
    if found is not None:
        return found
    shown = apt("apt-cache", "show", image)
    depends = shown.split("Depends:", 1)[1].splitlines()[0] if "Depends:" in shown else ""
    packages = [image] + [name for name in (d.split("(")[0].strip() for d in depends.split(","))
                          if name in (f"linux-binary-{kver}", f"linux-modules-{kver}")]
    downloads = os.path.join(base, "debs")
    os.makedirs(downloads, exist_ok=True)
    _say(f"downloading {', '.join(packages)}")
    apt("apt-get", "download", "-q", *packages, cwd=downloads)
    partial = tree + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)  # dpkg -x makes the last level only
    for package in packages:
        (deb,) = glob.glob(os.path.join(downloads, f"{glob.escape(package)}_*.deb"))
        subprocess.run(["dpkg", "-x", deb, partial], check=True, stdin=subprocess.DEVNULL)
        os.unlink(deb)
    moddir = os.path.join(partial, "usr", "lib", "modules", kver)
    if os.path.isdir(moddir):
        # the .debs carry no modules.dep: modprobe in the guest needs it
        # (it warns of the modules.builtin files 7.x's packages leave out: harmless)
        subprocess.run(["depmod", "-a", "-b", os.path.join(partial, "usr"), kver], check=True,
                       stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(tree, ignore_errors=True)
    os.rename(partial, tree)
    found = _vmlinuz(tree, kver)
    if found is None:
        raise VMError(f"unpacked {', '.join(packages)} into {tree} but found no vmlinuz")
    return found


def _vmlinuz(tree: str, kver: str) -> str | None:
    for path in (os.path.join(tree, "boot", f"vmlinuz-{kver}"),
                 os.path.join(tree, "usr", "lib", "modules", kver, "vmlinuz")):
        if os.path.exists(path):
            return path
    return None


def kernel_release(path: str) -> str:
    """``6.12.117+deb13-amd64`` for a Debian vmlinuz path (from its name or directory)."""
    name = os.path.basename(path)
    if name.startswith("vmlinuz-"):
        return name[len("vmlinuz-"):]
    return os.path.basename(os.path.dirname(path))


def resolve_kernel(wanted: str | None) -> str:
    """The vmlinuz to boot: the host's newest /boot/vmlinuz-*-amd64 for ``None`` or
    ``host``, a path as given, else a Debian kernel by version (:func:`fetch_kernel`)."""
    if wanted in (None, "host"):
        kernel = _kernel()
        if kernel is None:
            raise VMError(f"no host kernel ({KERNEL_GLOB}): apt-get install linux-image-amd64")
        return kernel
    assert wanted is not None
    if os.sep in wanted:
        if not os.path.isfile(wanted):
            raise VMError(f"--kernel {wanted}: no such file")
        return wanted
    return fetch_kernel(wanted)


def _guest_modules(kernel: str) -> str:
    """Shell run first in the guest: a kernel from elsewhere has its modules in the unpacked
    tree, not in the host's /lib/modules. virtme-ng links the guest's /lib/modules/KVER to
    that tree (which must therefore be visible in the guest: see :func:`cache_dir`); where
    it did not, bind the tree there, so that modprobe (zram) finds the modules."""
    kver = kernel_release(kernel)
    moddir = kernel.split("/boot/")[0] + f"/usr/lib/modules/{kver}" if "/boot/" in kernel \
        else os.path.dirname(kernel)
    if moddir == f"/usr/lib/modules/{kver}" or not os.path.isdir(moddir):
        return ""
    target = f"/lib/modules/{kver}"
    return (f"{{ [ -e {target}/modules.dep ] || {{ mkdir -p {target} && mount --bind "
            f"{shlex.quote(moddir)} {target}; }}; }} "
            "|| echo 'cgoom-vm: could not bind the kernel modules' >&2; ")


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
              timeout: float = 1800.0, kernel: str | None = None) -> int:
    """Boot the VM on ``kernel`` (:func:`resolve_kernel`: the host's by default), run
    ``command`` (a shell string) from the current directory inside it, and return its exit
    status. Standard input is closed; output streams through."""
    vng, _ = ensure_prerequisites()
    kernel = resolve_kernel(kernel)
    command = _guest_modules(kernel) + command
    argv = [vng, "--disable-kvm", "-r", kernel, "--memory", memory, "--cpus", str(cpus),
            "--append", "cgroup_no_v1=all", "--cwd", os.getcwd()]
    for directory in rwdirs:
        argv += ["--rwdir", directory]
    argv += ["--", command]
    # vng runs virtme-run by name: put this virtualenv's bin first on PATH.
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ.get("PATH", ""))
    _say(f"booting {kernel_release(kernel)} ({kernel}) under qemu (software emulation, "
         "~20 s)")
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


def run_tests(pytest_args: Sequence[str], *, require: bool = True, vm: bool | None = None,
              kernels: Sequence[str | None] = (None,)) -> int:
    """Run tests/integration on this host if it has a usable cgroup v2 memory controller
    (``vm=None``; ``vm=False`` insists), else inside the VM, once per kernel of ``kernels``
    (:func:`resolve_kernel`), and print each kernel's tally. With ``require``, a skipped
    test or an empty run is a failure: a green real-kernel tier that proved nothing is not
    green. The status is the first failure's."""
    if len(kernels) > 1 or kernels[0] is not None:
        if vm is False:
            _say("--kernel needs the VM; it cannot be used with --host")
            return 2
        vm = True
    tallies: list[str] = []
    worst = 0
    for kernel in kernels:
        started = time.monotonic()
        status, summary = _run_tier(pytest_args, require=require, vm=vm, kernel=kernel)
        tallies.append(f"{summary} in {time.monotonic() - started:.0f} s")
        worst = worst or status
    if len(tallies) > 1:
        _say("real-kernel tier, per kernel:")
        for line in tallies:
            _say(f"  {line}")
    return worst


def _run_tier(pytest_args: Sequence[str], *, require: bool, vm: bool | None,
              kernel: str | None) -> tuple[int, str]:
    if vm is None or vm is False:
        from ._realkernel import find_test_parent

        parent, reason = find_test_parent()
        if parent is not None:
            _say(f"this host has a cgroup v2 memory controller: testing under {parent.dir}")
            vm = False
        elif vm is False:
            _say(f"cannot run the real-kernel tier on this host: {reason}")
            return 3, f"this host: not run ({reason})"
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
        where = "this host"
        if vm:
            path = resolve_kernel(kernel)
            where = kernel_release(path)
            status = run_in_vm(make_swap + command, rwdirs=[results], kernel=path)
        else:
            status = subprocess.run(pytest, env=dict(os.environ, **env), check=False).returncode
        if not os.path.exists(junit):
            _say(f"no test report came back from the VM (status {status})")
            return status or 1, f"{where}: no test report (status {status})"
        counts = _junit_counts(junit)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items())
    _say(f"real-kernel tier on {where}: {summary}")
    if require and counts["tests"] == 0:
        _say("FAILED: the real-kernel tier ran no test")
        return status or 1, f"{where}: no test ran"
    if require and counts["skipped"]:
        _say("FAILED: tests were skipped in the real-kernel tier; they must run there")
        return status or 1, f"{where}: {summary} (skips are failures)"
    return status, f"{where}: {summary}"


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
    test.add_argument("--kernel", action="append", default=None, metavar="KERNEL",
                      help="boot this kernel (repeatable: the tier runs on each): 'host' "
                      "(the default: /boot's newest), a vmlinuz path, or a Debian version "
                      "fetched from the archive: 6.12, 7, newest")
    run = sub.add_parser("run", help="run a command in the VM: cgoom-vm run -- cgoom status")
    run.add_argument("--kernel", default=None, metavar="KERNEL",
                     help="as for test (default: the host's)")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "test":
            return run_tests(extra, require=not args.allow_skips, vm=args.vm,
                             kernels=args.kernel or [None])
        words = command_words(args.argv) + extra
        if not words:
            parser.error("run needs a command: cgoom-vm run -- COMMAND")
        # Put the virtualenv first so `cgoom` resolves to this checkout's.
        bindir = shlex.quote(os.path.dirname(sys.executable))
        return run_in_vm(f"PATH={bindir}:$PATH " + " ".join(map(shlex.quote, words)),
                         kernel=args.kernel)
    except VMError as exc:
        _say(str(exc))
        return 3


if __name__ == "__main__":
    sys.exit(main())
