"""The real-kernel tier: tests that need a writable cgroup v2 subtree with the memory
controller. They run wherever one exists (root on a cgroup v2 host, a delegated
$CGOOM_TEST_CGROUP, or the VM that `cgoom-vm test` boots) and skip, saying why, elsewhere.
With CGOOM_REQUIRE_CGROUP2=1 (set by `cgoom-vm test`, so by CI) a missing controller is an
error instead: the tier must never pass by skipping."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator

import pytest

import cgoom
from cgoom._kernel._linux import kernel_release
from cgoom.testing import find_test_parent, sandbox

_parent, _reason = find_test_parent()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.cgroup2)


# --- figures ---------------------------------------------------------------------------------
# What a test measured goes through report_figures: printed at once as "[figures KERNEL] ..."
# (the kernel it came from, e.g. 6.12.117+deb13-amd64) and printed again, all together, at
# the end of the run, so that CI's log has every figure of each kernel in one place.

KERNEL = platform.release()
#: (major, minor) of the running kernel. A test whose expectation depends on the kernel
#: compares with it and says which feature (and since which version) in a comment.
KERNEL_VERSION = kernel_release(KERNEL)
_figures: list[str] = []


def report_figures(text: str) -> None:
    """Print ``text`` (lines that start with "[figures]" continue it) tagged with the kernel,
    and keep it for the run's summary. Call it where the output is not captured
    (``with capsys.disabled():``)."""
    lines = [line.removeprefix("[figures]").strip() for line in text.strip("\n").split("\n")]
    tagged = [f"[figures {KERNEL}] {line}" for line in lines]
    _figures.extend(tagged)
    print("\n" + "\n".join(tagged))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _figures:
        terminalreporter.section(f"figures measured on Linux {KERNEL}")
        for line in _figures:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def parent() -> cgoom.Cgroup:
    """The cgroup the tests' sandboxes are created in."""
    if _parent is None:
        if os.environ.get("CGOOM_REQUIRE_CGROUP2") == "1":
            pytest.fail(
                f"CGOOM_REQUIRE_CGROUP2=1 but no real cgroup v2 memory controller: {_reason}"
            )
        pytest.skip(f"no writable cgroup v2 subtree with the memory controller: {_reason}")
    return _parent


@pytest.fixture
def box(parent: cgoom.Cgroup) -> Iterator[cgoom.Cgroup]:
    """A fresh cgroup with memory and pids enabled for its children; killed and removed
    afterwards, even when the test fails."""
    with sandbox(parent) as cgroup:
        yield cgroup


class Spawned:
    """A shell command started paused, moved into a cgroup, then released: every process it
    forks is born inside the cgroup."""

    def __init__(self, cgroup: cgoom.Cgroup, script: str) -> None:
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", f"read go; {script}"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        cgroup.attach(self.proc.pid)
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def spawn() -> Iterator[object]:
    started: list[Spawned] = []

    def start(cgroup: cgoom.Cgroup, script: str) -> Spawned:
        s = Spawned(cgroup, script)
        started.append(s)
        return s

    yield start
    for s in started:
        s.cleanup()


def throttled(parent: cgoom.Cgroup, name: str) -> cgoom.Cgroup:
    """A child of ``parent`` where a 64 MiB hog is throttled, never killed: memory.high 16M
    far below memory.max 512M, and no swap to escape to."""
    cgroup = parent.create_child(name)
    cgroup.set_memory_high("16M")
    cgroup.set_memory_max("512M")
    cgroup.set_memory_swap_max(0)
    return cgroup


def hog(megabytes: int) -> str:
    """A shell pipeline that holds ``megabytes`` MiB of anonymous memory: tail keeps the
    whole newline-free stream as one line."""
    return f"head -c {megabytes}M /dev/zero | tail"


def holding_hog(megabytes: int) -> str:
    """Like :func:`hog`, but it keeps the memory until killed: tail waits for more input."""
    return f"{{ head -c {megabytes}M /dev/zero; exec sleep 1000; }} | tail > /dev/null"


def python_cmd(code: str) -> str:
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def sysctl(path: str, value: int | None = None) -> int:
    """Read an integer sysctl under /proc/sys, or set it to ``value`` first (the VM is ours;
    restore it in a ``finally``)."""
    if value is not None:
        with open(path, "w") as f:
            f.write(f"{value}\n")
    with open(path) as f:
        return int(f.read())


def cgoom_command() -> list[str]:
    """The ``cgoom`` command the daemon tests run: the installed wheel that ``cgoom-vm test``
    built ($CGOOM_CLI), as an operator runs it; elsewhere the checkout's. Under
    CGOOM_REQUIRE_CGROUP2=1 (CI) it must be the installed one."""
    cli = os.environ.get("CGOOM_CLI")
    if cli:
        return [cli]
    if os.environ.get("CGOOM_REQUIRE_CGROUP2") == "1":
        pytest.fail("CGOOM_REQUIRE_CGROUP2=1 but CGOOM_CLI is unset: the daemon tests run the "
                    "installed wheel (scripts/cgoom-vm test builds it)")
    return [sys.executable, "-m", "cgoom.cli"]


@pytest.fixture
def root() -> None:
    """Tests that act as other users (setuid in a forked child) need root: the VM's tests
    have it; elsewhere they skip, or fail under CGOOM_REQUIRE_CGROUP2=1 (CI)."""
    if os.geteuid() != 0:
        if os.environ.get("CGOOM_REQUIRE_CGROUP2") == "1":
            pytest.fail("CGOOM_REQUIRE_CGROUP2=1 but not root: cannot act as another user")
        pytest.skip("acting as another user needs root")
