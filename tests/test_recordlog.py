"""The record log: records as JSON lines, read back equal, rotation followed, and `cgoom
explain` telling one as a person reads it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

import cgoom
from cgoom.cli import main
from cgoom.testing import FakeCgroupTree, FakeProcesses

M = 1 << 20
KILL = cgoom.KernelOomKill(pid=7, task="tail", reason="Out of memory", anon_rss=M,
                           file_rss=0, shmem_rss=0, oom_score_adj=0, uid=0,
                           constraint="CONSTRAINT_MEMCG", oom_memcg="/t", task_memcg="/t/db")


def incident(tree: FakeCgroupTree) -> cgoom.IncidentRecord:
    for name, pid, prio, usage in (("db", 100, 100, 140), ("batch", 300, 0, 110)):
        c = tree.add(f"t/{name}", procs=[pid], memory_current=usage * M)
        c.set_priority(prio)
        tree.add_process(pid, name=name, rss=usage * M)

    async def run() -> cgoom.IncidentRecord:
        async with cgoom.open_handler(tree.hierarchy, cgoom.Rule("r", "t"), own_cgroup="/",
                                      processes=FakeProcesses(tree)) as handler:
            tree.memory_event("t/batch", "high")
            record = await asyncio.wait_for(handler.__anext__(), 10)
            assert isinstance(record, cgoom.IncidentRecord)
            return record

    return asyncio.run(run())


def test_records_come_back_equal(tree: FakeCgroupTree, tmp_path: Path) -> None:
    record = incident(tree)
    log = cgoom.RecordLog(str(tmp_path / "records.jsonl"))
    log.write(record)
    log.write(KILL)
    log.close()
    back = list(cgoom.read_records(str(tmp_path / "records.jsonl")))
    assert back == [record, KILL]
    assert cgoom.record_from_json(record.to_json()) == record


def test_rotation_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    log = cgoom.RecordLog(str(path))
    log.write(KILL)
    os.rename(path, tmp_path / "records.jsonl.1")  # logrotate moves it away
    log.write(KILL)
    assert len((tmp_path / "records.jsonl.1").read_text().splitlines()) == 1
    assert len(path.read_text().splitlines()) == 1
    path.unlink()
    log.write(KILL)  # removed outright: a new one
    log.reopen()
    log.write(KILL)
    log.close()
    assert len(path.read_text().splitlines()) == 2


def test_never_written_through_a_symlink(tmp_path: Path) -> None:
    """issue 19: root appended records to whatever a symlink at the record log's path named
    (re-followed on every append): opened O_NOFOLLOW, a regular file of cgoom's own user."""
    target = tmp_path / "ld.so.preload"
    target.write_text("")
    path = tmp_path / "records.jsonl"
    log = cgoom.RecordLog(str(path))
    log.write(KILL)
    os.rename(path, tmp_path / "records.jsonl.1")
    path.symlink_to(target)  # planted where logrotate's new file would be
    with pytest.raises(OSError, match="a symlink: the record log is never written"):
        log.write(KILL)
    with pytest.raises(OSError, match="a symlink"):
        log.reopen()
    log.close()
    assert target.read_text() == ""


def test_a_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "records.jsonl"
    path.write_text('{"pid": 1}\n\nnot json\n')
    with pytest.raises(cgoom.InvalidValue, match=r"records.jsonl, line 1: not a cgoom record"):
        list(cgoom.read_records(str(path)))
    path.write_text("[1]\n")
    with pytest.raises(cgoom.InvalidValue, match=r"line 1: not a JSON record: not an object"):
        list(cgoom.read_records(str(path)))


def test_explain_command(tree: FakeCgroupTree, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    record = incident(tree)
    path = str(tmp_path / "records.jsonl")
    log = cgoom.RecordLog(path)
    log.write(record)
    log.write(KILL)
    log.close()
    assert main(["explain", "--log", path]) == 0  # the latest: the kernel's kill
    assert capsys.readouterr().out.startswith("kernel OOM kill in /t/db: pid 7 (tail)")
    assert main(["explain", "--log", path, record.id]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"incident {record.id}: rule 'r' on /t") and "/t/batch" in out
    assert main(["explain", "--log", path, "nope"]) == 2  # a usage error
    assert f"no incident 'nope' in {path} (the latest: {record.id})" in capsys.readouterr().err
    assert main(["explain", "--log", path, record.id, "--json"]) == 0
    assert cgoom.record_from_json(capsys.readouterr().out) == record
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["explain", "--log", str(empty)]) == 1
    assert "holds no record yet" in capsys.readouterr().err
    assert main(["explain", "--log", str(tmp_path / "missing.jsonl")]) == 1
    assert "cannot read the record log" in capsys.readouterr().err
