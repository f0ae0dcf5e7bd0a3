"""Shadow mode (issue 18): a dry run's decision paired with the kernel's OOM kill that
followed it in the same domain, in the stream, the statistics, the record log, the journal
and the metrics."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import cgoom
from cgoom._engine._shadow import Shadow
from cgoom._ops import _journal
from cgoom._ops._recordlog import record_from_json, record_to_json
from cgoom.testing import FakeCgroupTree, FakeProcesses, next_incident

M = 1 << 20


def kill(pid: int, memcg: str | None, at: float) -> cgoom.KernelOomKill:
    return cgoom.KernelOomKill(pid, "hog", "x", 50 * M, 0, 0, 0, 0, constraint="MEMCG",
                               oom_memcg="/t", task_memcg=memcg, time=at,
                               ambiguous=memcg is None)


@pytest.fixture
def domain(tree: FakeCgroupTree) -> FakeCgroupTree:
    """/t: db (priority 100, pid 100), batch (priority 0, pids 300 and 301, dies whole)."""
    tree.add("t/db", procs=[100], memory_current=140 * M).set_priority(100)
    tree.add("t/batch", procs=[300, 301], memory_current=90 * M).set_memory_oom_group(True)
    for pid, name in ((100, "db"), (300, "batch"), (301, "helper")):
        tree.add_process(pid, name=name, rss=40 * M)
    return tree


async def dry_run_record(tree: FakeCgroupTree) -> cgoom.IncidentRecord:
    async with cgoom.open_handler(tree.hierarchy, cgoom.Rule("r", "t", dry_run=True),
                                  own_cgroup="/", kmsg=None, proc_events=False,
                                  processes=FakeProcesses(tree)) as handler:
        tree.memory_event("t", "max")
        return await next_incident(handler)


async def test_the_kernel_killing_the_same_is_agreed_and_elsewhere_disagreed(
        domain: FakeCgroupTree) -> None:
    record = await dry_run_record(domain)
    first = record.decision.first
    assert first is not None and first.cgroup == "/t/batch" and first.whole
    assert "dry run: would have done kill /t/batch whole; nothing was done" in record.explain()
    shadow = Shadow(horizon=60)
    shadow.decided(record, 10.0)
    assert shadow.kernel_kill(kill(999, "/u/x", 11.0)) is None  # another domain's
    verdict = shadow.kernel_kill(kill(301, "/t/batch", 14.1))
    assert verdict is not None and verdict.agreed and verdict.lead == pytest.approx(4.1)
    assert verdict.explain() == (
        "shadow: agreed: cgoom would have killed /t/batch (whole) 4.1 s before the kernel "
        f"killed pid 301 (hog) in /t/batch (rule 'r', dry run {record.id})")
    assert shadow.kernel_kill(kill(300, "/t/batch", 15.0)) is None  # one verdict a decision
    shadow.decided(record, 20.0)
    verdict = shadow.kernel_kill(kill(100, "/t/db", 21.0))
    assert verdict is not None and not verdict.agreed
    assert verdict.explain().startswith("shadow: disagreed: cgoom would have killed /t/batch")
    # a kill whose line named no cgroup (a tenant's name held its separators): by its pid
    shadow.decided(record, 30.0)
    verdict = shadow.kernel_kill(kill(300, None, 31.0))
    assert verdict is not None and verdict.agreed
    # too late: the decision is no longer answered
    shadow.decided(record, 40.0)
    assert shadow.kernel_kill(kill(300, "/t/batch", 101.0)) is None
    assert shadow.kernel_kill(kill(300, "/t/batch", 102.0)) is None


async def test_a_verdict_reaches_the_stream_the_statistics_and_every_sink(
        domain: FakeCgroupTree, tmp_path: Path) -> None:
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    summary = ("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
               "mems_allowed=0,oom_memcg=/t,task_memcg=/t/db,task=db,pid=100,uid=0")
    killed = ("Memory cgroup out of memory: Killed process 100 (db) total-vm:219728kB, "
              "anon-rss:50904kB, file-rss:3212kB, shmem-rss:0kB, UID:0 pgtables:164kB "
              "oom_score_adj:0")
    try:
        async with cgoom.open_handler(domain.hierarchy, cgoom.Rule("r", "t", dry_run=True),
                                      own_cgroup="/", kmsg=str(fifo), proc_events=False,
                                      processes=FakeProcesses(domain)) as handler:
            domain.memory_event("t", "max")
            record = await next_incident(handler)
            os.write(writer, f"4,10,100,-;{summary}\n".encode())
            os.write(writer, f"3,11,101,-;{killed}\n".encode())
            seen = [await asyncio.wait_for(handler.__anext__(), 5) for _ in range(2)]
            statistics = handler.statistics()
    finally:
        os.close(writer)
    assert isinstance(seen[0], cgoom.KernelOomKill)
    verdict = seen[1]
    assert isinstance(verdict, cgoom.ShadowVerdict) and verdict.record == record.id
    assert not verdict.agreed and verdict.would == "/t/batch" and verdict.kill.pid == 100
    assert (statistics.shadow_verdicts, statistics.shadow_agreed) == (1, 0)
    assert record_from_json(record_to_json(verdict)) == verdict
    fields = _journal.record_fields(verdict)
    assert fields["MESSAGE_ID"] == _journal.SHADOW_MESSAGE_ID
    assert (fields["CGOOM_SHADOW"], fields["CGOOM_CHOSEN"], fields["CGOOM_KERNEL_KILL_PID"]
            ) == ("disagreed", "/t/batch", "100")
    prometheus = pytest.importorskip("prometheus_client")
    from cgoom._ops._metrics import Metrics

    metrics = Metrics()
    metrics.record(verdict)
    text = prometheus.generate_latest(metrics.registry).decode()
    assert 'cgoom_shadow_decisions_total{agreed="false",rule="r"} 1.0' in text
