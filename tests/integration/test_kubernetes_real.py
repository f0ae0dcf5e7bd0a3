"""Kubernetes' layout on the real kernel: kubepods.slice (memory.max 300M, memory.high
270M) with a BestEffort pod whose app grows and a Burstable pod holding 140M, each pod a
pause container and an app container, memory.oom.group on neither pod (as the kubelet leaves
them). The rule's oom_group patterns make each pod a unit; kubernetes-qos chooses the
BestEffort pod, and the engine kills it whole, its pause container with it, never a
container alone; the Burstable pod lives on and the kernel's OOM killer stays idle."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import cgoom
from cgoom.testing import wait_until

from .conftest import holding_hog, python_cmd, report_figures
from .test_handler_real import GROW

Spawn = Callable[[cgoom.Cgroup, str], Any]
M = 1 << 20


async def test_kubernetes_qos_kills_the_besteffort_pod_whole(
        box: cgoom.Cgroup, spawn: Spawn, capsys: pytest.CaptureFixture[str]) -> None:
    kubepods = box.create_child("kubepods.slice")
    kubepods.enable_controllers("memory", "pids")
    pods, containers = {}, {}
    for qos, uid in (("besteffort", "0be5_aa11"), ("burstable", "0b05_bb22")):  # hex, as uids
        tier = kubepods.create_child(f"kubepods-{qos}.slice")
        tier.enable_controllers("memory", "pids")
        pod = tier.create_child(f"kubepods-{qos}-pod{uid}.slice")
        pod.enable_controllers("memory", "pids")
        pods[qos] = pod
        for name in ("pause", "app"):
            containers[qos, name] = pod.create_child(f"cri-containerd-{name}.scope")
            spawn(containers[qos, name], "exec sleep 1000")
    kubepods.set_memory_max("300M")
    kubepods.set_memory_high("270M")
    kubepods.set_memory_swap_max(0)
    spawn(containers["burstable", "app"], holding_hog(140))
    wait_until(lambda: pods["burstable"].memory_current() > 135 * M, 60, "the burstable pod")
    rel = kubepods.path.lstrip("/")
    rule = cgoom.Rule("pods", kubepods.path, on="high", policy="kubernetes-qos",
                      oom_group=[f"{rel}/kubepods-*.slice/kubepods-*-pod*.slice"],
                      confirm_timeout=20)
    async with cgoom.open_handler(cgoom.Hierarchy.discover(), rule) as handler:
        assert all(p.memory_oom_group() for p in pods.values()), handler.setup
        assert not containers["besteffort", "app"].memory_oom_group()
        spawn(containers["besteffort", "app"], python_cmd(GROW))
        record = await asyncio.wait_for(handler.__anext__(), 60)
    assert isinstance(record, cgoom.IncidentRecord)
    assert record.decision.policy == "kubernetes-qos", record.explain()
    victim = record.victim
    assert victim is not None and victim.cgroup == pods["besteffort"].path, record.explain()
    assert victim.action == "kill-cgroup"
    assert [v.cgroup for v in record.decision.victims] == [pods["besteffort"].path,
                                                          pods["burstable"].path]
    assert not pods["besteffort"].cgroup_events().populated  # pause and app: both gone
    assert containers["burstable", "pause"].cgroup_procs()
    assert containers["burstable", "app"].cgroup_procs()
    assert kubepods.memory_events().oom_kill == 0
    assert not any(p.memory_oom_group() for p in pods.values())  # put back on stop
    t = record.timings
    with capsys.disabled():
        report_figures(f"kubernetes-qos: the BestEffort pod killed whole (pause and app), "
              f"the Burstable pod alive; onset to kill {t.kill_ms:.1f} ms, to empty "
              f"{t.confirmed_ms:.1f} ms; ranking: "
              + ", ".join(v.cgroup.rsplit("/", 1)[1] for v in record.decision.victims))
