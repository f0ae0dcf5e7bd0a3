"""The README's main job, in the real-kernel tier: ``scripts/demo.py --here`` runs act 1
(the kernel alone kills db, sometimes batch too) and act 2 (``cgoom run`` on
docs/cgoom.example.toml, as it is, plus a drop-in for the record log and metrics: batch
killed, the metrics endpoint's kill counter at 1, memory.high put back on SIGTERM), and exits
0 only when act 2 went right."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import report_figures

DEMO = Path(__file__).resolve().parents[2] / "scripts" / "demo.py"


def test_the_main_job(capsys: pytest.CaptureFixture[str]) -> None:
    run = subprocess.run([sys.executable, str(DEMO), "--here"], capture_output=True,
                         text=True, timeout=600)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    # Act 1, the kernel alone: it kills db, and sometimes batch too (scripts/demo.py says why).
    assert "it killed the largest workload, db" in out, out
    assert "db alive, web alive, batch DEAD; the kernel's oom_kill: 0" in out, out
    assert ('cgoom_kills_total{action="kill-cgroup",policy="priority",rule="workload"} 1.0'
            in out), out
    assert re.search(r"exit status 0; memory\.high of \S*/workload\.slice: max", out), out
    lines = [line.strip() for line in out.splitlines()]
    act_one = [line for line in lines if line.startswith(("after", "it killed in"))]
    with capsys.disabled():
        report_figures("the kernel alone: " + "; ".join(act_one))
        report_figures("the main job: " + next(
            line for line in lines if line.startswith("onset")))
