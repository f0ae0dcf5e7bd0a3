"""What a user installs: the wheel built from this checkout, installed into a virtualenv of
its own (outside the checkout), runs `cgoom --version` and `cgoom check-config` on the
example, carries the LICENSE and the man page and completions, and leaves the project's test
tools (the VM runner) out."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(dist), str(ROOT)], check=True,
                   timeout=300)
    (wheel,) = dist.glob("cgoom-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"cgoom/cli.py", "cgoom/py.typed", "cgoom/testing/_tree.py"} <= set(names)
    assert "cgoom/testing/vm.py" not in names  # the project's VM runner is not installed
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE")
               for n in names), names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "cgoom = cgoom.cli:main" in scripts and "cgoom-vm" not in scripts, scripts
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=600)
    run = {"cwd": str(tmp_path), "capture_output": True, "text": True, "timeout": 120}
    version = subprocess.run([str(venv / "bin" / "cgoom"), "--version"], **run)  # type: ignore[call-overload]
    assert version.returncode == 0 and version.stdout.strip() == "cgoom 0.1.0.dev0", version
    checked = subprocess.run([str(venv / "bin" / "cgoom"), "check-config",  # type: ignore[call-overload]
                              str(ROOT / "docs" / "cgoom.example.toml")], **run)
    assert checked.returncode == 0, checked.stderr
    assert "rule 'machine' on /" in checked.stdout, checked.stdout
    where = subprocess.run([str(venv / "bin" / "python"), "-c",  # type: ignore[call-overload]
                            "import cgoom; print(cgoom.__file__)"], **run)
    assert where.stdout.startswith(str(venv)), where.stdout  # the installed one, not ours
    assert not (venv / "bin" / "cgoom-vm").exists()
    # the man page and the completions, rendered from the parser at build time, installed
    # under the environment's share/ (man-db finds <venv>/share/man beside <venv>/bin)
    share = venv / "share"
    page = (share / "man" / "man1" / "cgoom.1").read_text()
    assert page.startswith(".TH CGOOM 1") and '"cgoom 0.1.0.dev0"' in page
    for shell, path in (("bash", share / "bash-completion" / "completions" / "cgoom"),
                        ("zsh", share / "zsh" / "site-functions" / "_cgoom")):
        printed = subprocess.run([str(venv / "bin" / "cgoom"), "completion", shell], **run)  # type: ignore[call-overload]
        assert printed.returncode == 0 and path.read_text() == printed.stdout, shell
