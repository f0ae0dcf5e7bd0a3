"""The VM runner's decisions that need no VM: what it refuses and why, and how it judges the
test report that comes back (a skipped test or an empty run fails the tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cgoom.testing import vm

#: The real one (an autouse fixture below stands in for it).
RESOLVE_KERNEL = vm.resolve_kernel


def test_refuses_a_non_x86_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm.platform, "machine", lambda: "aarch64")
    with pytest.raises(vm.VMError, match=r"needs an x86-64 host .* this one is aarch64"):
        vm.ensure_prerequisites()


def test_names_what_is_missing_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(vm.shutil, "which", lambda name: None)
    monkeypatch.setattr(vm, "_kernel", lambda: None)
    monkeypatch.setattr(vm.os, "geteuid", lambda: 1000)
    with pytest.raises(vm.VMError) as info:
        vm.ensure_prerequisites()
    assert str(info.value) == (
        "missing qemu-system-x86, linux-image-amd64, busybox-static, dbus-daemon; install as "
        "root: apt-get install -y qemu-system-x86 linux-image-amd64 busybox-static "
        "dbus-daemon")


def test_needs_apt_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(vm.shutil, "which", lambda name: None)
    monkeypatch.setattr(vm, "_kernel", lambda: "/boot/vmlinuz-6.1.0-1-amd64")
    monkeypatch.setattr(vm.os, "geteuid", lambda: 0)
    with pytest.raises(vm.VMError, match="missing qemu-system-x86, busybox-static, dbus-daemon and "
                                         "there is "
                                         "no apt-get to install it"):
        vm.ensure_prerequisites()


@pytest.fixture(autouse=True)
def kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """No download and no /boot here: each kernel name stands for a vmlinuz path of its own
    (test_kernel_* below exercise the real resolution's pure parts)."""
    paths = {None: "/boot/vmlinuz-6.1.0-57-amd64", "host": "/boot/vmlinuz-6.1.0-57-amd64",
             "6.12": "/var/lib/cgoom-vm/kernels/6.12.117+deb13-amd64/boot/"
                     "vmlinuz-6.12.117+deb13-amd64",
             "newest": "/var/lib/cgoom-vm/kernels/7.3.4+deb13-amd64/usr/lib/modules/"
                       "7.3.4+deb13-amd64/vmlinuz"}
    monkeypatch.setattr(vm, "resolve_kernel", lambda wanted: paths[wanted])


@pytest.fixture(autouse=True)
def no_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_tests builds and installs the wheel for the daemon tests (tests/test_packaging.py
    does that for real): a stand-in here."""
    monkeypatch.setattr(vm, "install_wheel", lambda directory: "/opt/wheel/bin/cgoom")


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest"
errors="{errors}" failures="{failures}" skipped="{skipped}" tests="{tests}"></testsuite>
</testsuites>"""


@pytest.mark.parametrize(("counts", "status", "require", "expected"), [
    ({"tests": 37, "failures": 0, "errors": 0, "skipped": 0}, 0, True, 0),
    ({"tests": 37, "failures": 0, "errors": 0, "skipped": 2}, 0, True, 1),
    ({"tests": 0, "failures": 0, "errors": 0, "skipped": 0}, 5, True, 5),
    ({"tests": 0, "failures": 0, "errors": 0, "skipped": 0}, 0, True, 1),
    ({"tests": 37, "failures": 0, "errors": 0, "skipped": 2}, 0, False, 0),
    ({"tests": 37, "failures": 1, "errors": 0, "skipped": 0}, 1, True, 1),
])
def test_report_judgement(monkeypatch: pytest.MonkeyPatch, counts: dict[str, int], status: int,
                          require: bool, expected: int, capsys: pytest.CaptureFixture[str]) -> None:
    """Runs run_tests with the VM replaced by a stand-in that writes a JUnit report."""

    def fake_vm(command: str, *, rwdirs: list[str], **kw: object) -> int:
        assert "tests/integration" in command and "CGOOM_REQUIRE_CGROUP2=" in command
        assert "CGOOM_CLI=/opt/wheel/bin/cgoom" in command
        (Path(rwdirs[0]) / "junit.xml").write_text(JUNIT.format(**counts))
        return status

    monkeypatch.setattr(vm, "run_in_vm", fake_vm)
    assert vm.run_tests([], require=require, vm=True) == expected
    err = capsys.readouterr().err
    assert f"{counts['tests']} tests" in err
    if expected and not status:
        assert "FAILED" in err


def test_missing_report_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm, "run_in_vm", lambda command, **kw: 0)
    assert vm.run_tests([], vm=True) == 1


@pytest.mark.parametrize(("argv", "words"), [
    (["--", "grep", "--", "-v", "f"], ["grep", "--", "-v", "f"]),
    (["grep", "-v", "--", "f"], ["grep", "-v", "--", "f"]),
    (["--", "--"], ["--"]),
])
def test_run_keeps_the_commands_own_double_dashes(argv: list[str], words: list[str]) -> None:
    assert vm.command_words(argv) == words


def test_the_tier_runs_once_per_kernel_and_tallies_each(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    booted: list[str | None] = []

    def fake_vm(command: str, *, rwdirs: list[str], kernel: str | None = None,
                **kw: object) -> int:
        booted.append(kernel)
        failed = 1 if kernel is not None and "7.3.4" in kernel else 0
        (Path(rwdirs[0]) / "junit.xml").write_text(JUNIT.format(
            tests=82, failures=failed, errors=0, skipped=0))
        return failed

    monkeypatch.setattr(vm, "run_in_vm", fake_vm)
    assert vm.run_tests([], vm=None, kernels=["host", "6.12", "newest"]) == 1
    assert [vm.kernel_release(k or "") for k in booted] == [
        "6.1.0-57-amd64", "6.12.117+deb13-amd64", "7.3.4+deb13-amd64"]
    err = capsys.readouterr().err
    assert "real-kernel tier, per kernel:" in err
    assert "  6.12.117+deb13-amd64: 82 tests, 0 failures, 0 errors, 0 skipped in " in err
    assert "  7.3.4+deb13-amd64: 82 tests, 1 failures, 0 errors, 0 skipped in " in err


def test_a_kernel_needs_the_vm(capsys: pytest.CaptureFixture[str]) -> None:
    assert vm.run_tests([], vm=False, kernels=["6.12"]) == 2
    assert "--kernel needs the VM" in capsys.readouterr().err


@pytest.mark.parametrize(("wanted", "picked"), [
    ("6.12", "6.12.117"), ("7", "7.3.4"), ("7.2", "7.2.13"), ("newest", "7.3.4"),
    ("6.1", None),  # whole components: 6.1 is not 6.12
    ("8", None),
])
def test_kernel_pick(wanted: str, picked: str | None) -> None:
    assert vm._pick(["6.12.117", "7.2.13", "7.3.4", "6.12.9"], wanted) == picked


def test_kernel_release_of_both_package_shapes() -> None:
    assert vm.kernel_release("/boot/vmlinuz-6.1.0-57-amd64") == "6.1.0-57-amd64"
    assert vm.kernel_release("/c/kernels/7.3.4+deb13-amd64/usr/lib/modules/7.3.4+deb13-amd64/"
                             "vmlinuz") == "7.3.4+deb13-amd64"


def test_guest_modules_bind_an_unpacked_tree(tmp_path: Path) -> None:
    kver = "6.12.117+deb13-amd64"
    (tmp_path / "usr" / "lib" / "modules" / kver).mkdir(parents=True)
    (tmp_path / "boot").mkdir()
    script = vm._guest_modules(str(tmp_path / "boot" / f"vmlinuz-{kver}"))
    assert f"mount --bind {tmp_path}/usr/lib/modules/{kver} /lib/modules/{kver}" in script
    assert vm._guest_modules("/boot/vmlinuz-6.1.0-57-amd64") == ""  # the host's own


def test_a_kernel_path_that_is_not_there(tmp_path: Path) -> None:
    with pytest.raises(vm.VMError, match=r"--kernel .*/nope/vmlinuz: no such file"):
        RESOLVE_KERNEL(str(tmp_path / "nope" / "vmlinuz"))
