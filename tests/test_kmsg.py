"""Kernel OOM kills from the kernel log: parsing hostile names, and the handler's stream."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import cgoom
from cgoom._kernel._kmsg import OomKillParser, parse_record
from cgoom.testing import FakeCgroupTree

SUMMARY = ("oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
           "oom_memcg=/t,task_memcg=/t/db,task=python3,pid=246,uid=0")
KILLED = ("Memory cgroup out of memory: Killed process 246 (python3) total-vm:219728kB, "
          "anon-rss:50904kB, file-rss:3212kB, shmem-rss:0kB, UID:0 pgtables:164kB "
          "oom_score_adj:0")


def test_summary_and_kill_line_are_joined_by_pid() -> None:
    parser = OomKillParser()
    assert parser.feed(SUMMARY, 5, 1.0) is None
    kill = parser.feed(KILLED, 6, 1.0)
    assert kill is not None
    assert (kill.pid, kill.task, kill.task_memcg, kill.oom_memcg, kill.constraint) == (
        246, "python3", "/t/db", "/t", "CONSTRAINT_MEMCG")
    assert (kill.anon_rss, kill.file_rss, kill.oom_score_adj) == (50904 << 10, 3212 << 10, 0)
    assert str(kill).startswith("kernel OOM kill in /t/db: pid 246 (python3)")


def test_group_members_have_no_summary() -> None:
    kill = OomKillParser().feed(KILLED.replace("246", "247"), 7, 1.0)
    assert kill is not None and kill.pid == 247 and kill.task_memcg is None


def test_names_crafted_like_the_separators() -> None:
    """A task named ') total-vm:1kB' and a cgroup named 'x,task=y' garble nothing that
    matters: the fixed tail is matched from the end."""
    summary = SUMMARY.replace("task_memcg=/t/db", "task_memcg=/t/x,task=y").replace(
        "task=python3", "task=a,pid=1")
    killed = KILLED.replace("(python3)", "(a) total-vm:1kB)")
    parser = OomKillParser()
    parser.feed(summary, 1, 1.0)
    kill = parser.feed(killed, 2, 1.0)
    assert kill is not None and kill.pid == 246 and kill.task == "a) total-vm:1kB"
    assert kill.anon_rss == 50904 << 10
    assert kill.ambiguous and kill.task_memcg is None  # the names held separators


def test_a_cgroup_named_like_a_separator_is_not_taken_at_its_word() -> None:
    """issue 19: a tenant's cgroup named 'a,task_memcg=/system.slice/db.service' made the
    kernel's kill in /t/a read as "kernel OOM kill in /system.slice/db.service". The summary
    is ambiguous: no cgroup is named from it (memory.events says where it happened)."""
    summary = SUMMARY.replace("task_memcg=/t/db",
                              "task_memcg=/t/a,task_memcg=/system.slice/db.service")
    parser = OomKillParser()
    parser.feed(summary, 1, 1.0)
    kill = parser.feed(KILLED, 2, 1.0)
    assert kill is not None and kill.pid == 246 and kill.ambiguous
    assert kill.task_memcg is None and kill.oom_memcg is None
    assert "db.service" not in str(kill)
    plain = OomKillParser()
    plain.feed(SUMMARY, 1, 1.0)
    clean = plain.feed(KILLED, 2, 1.0)
    assert clean is not None and not clean.ambiguous and clean.task_memcg == "/t/db"


def test_records() -> None:
    assert parse_record(f"6,1234,5678,-;{KILLED}\n SUBSYSTEM=x") == (1234, 5678, KILLED)
    assert parse_record("garbage") is None and parse_record("a,b,c;x") is None


async def test_kernel_kills_join_the_handlers_stream(tree: FakeCgroupTree,
                                                     tmp_path: Path) -> None:
    tree.add("t/db")
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # keeps the FIFO open for the reader
    try:
        rule = cgoom.Rule("r", "t", dry_run=True)
        async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/",
                                      kmsg=str(fifo)) as handler:
            os.write(writer, f"4,10,100,-;{SUMMARY}\n".encode())
            os.write(writer, f"3,11,101,-;{KILLED}\n".encode())
            kill = await asyncio.wait_for(handler.__anext__(), 5)
            assert isinstance(kill, cgoom.KernelOomKill) and kill.task_memcg == "/t/db"
            assert handler.statistics().kernel_kills == 1
    finally:
        os.close(writer)


async def test_an_unreadable_log_is_said(tree: FakeCgroupTree, tmp_path: Path) -> None:
    tree.add("t")
    rule = cgoom.Rule("r", "t", dry_run=True)
    async with cgoom.open_handler(tree.hierarchy, rule, own_cgroup="/",
                                  kmsg=str(tmp_path / "missing")) as handler:
        assert "kernel OOM kills are not followed: cannot read" in handler.setup[0]
