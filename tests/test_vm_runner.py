"""The VM runner's decisions that need no VM: what it refuses and why, and how it judges the
test report that comes back (a skipped test or an empty run fails the tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cgoom.testing import vm


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
