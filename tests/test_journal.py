"""The journal's native protocol: entries encoded as systemd reads them (a value with a
newline in the binary form), stderr recognised as the journal only when $JOURNAL_STREAM
names it, and `cgoom run` sending each record with its fields to the journal's socket (a
socket the test provides)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from pathlib import Path

import pytest

from cgoom._ops import _journal
from cgoom._ops._daemon import run
from cgoom._ops._journal import INCIDENT_MESSAGE_ID, encode, stderr_is_journal
from cgoom.testing import FakeCgroupTree

from .daemon import stop

M = 1 << 20


def decode(data: bytes) -> dict[str, str]:
    """The journal's side of the protocol, as journald parses it."""
    fields, i = {}, 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            i = end + 1
        else:
            name = line
            (size,) = struct.unpack("<Q", data[end + 1:end + 9])
            value = data[end + 9:end + 9 + size]
            assert data[end + 9 + size:end + 10 + size] == b"\n"
            i = end + 10 + size
        fields[name.decode()] = value.decode()
    return fields


def test_encode_plain_and_binary_values() -> None:
    entry = {"MESSAGE": "one line", "CGOOM_EXPLAIN": "two\nlines", "PRIORITY": "4"}
    data = encode(entry)
    assert data.startswith(b"MESSAGE=one line\nCGOOM_EXPLAIN\n" + struct.pack("<Q", 9))
    assert decode(data) == entry
    with pytest.raises(ValueError, match="not a journal field name: 'lower'"):
        encode({"lower": "x"})


def test_stderr_is_the_journal_only_when_the_stream_matches(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        assert stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"},
                                     f.fileno())
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"}, f.fileno())
        assert not stderr_is_journal({}, f.fileno())


async def test_cgoom_run_sends_each_record_to_the_journal(
        tree: FakeCgroupTree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree.add("t/batch", procs=[300], memory_current=100 * M)
    tree.add_process(300, rss=100 * M)
    config = tmp_path / "cgoom.toml"
    config.write_text('[handler]\nown_cgroup = "/"\nkmsg = false\nproc_events = false\n'
                      '[[rule]]\nname = "t"\ndomain = "t"\n')
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(tmp_path / "journal"))
    journal.setblocking(False)
    monkeypatch.setattr(_journal, "JOURNAL_SOCKET", str(tmp_path / "journal"))
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    loop = asyncio.get_running_loop()
    daemon = loop.create_task(run(str(config), dry_run=True, hierarchy=tree.hierarchy))
    try:
        await asyncio.sleep(0.5)
        tree.memory_event("t", "high")
        fields = decode(await asyncio.wait_for(loop.sock_recv(journal, 65536), 10))
    finally:
        assert await stop(daemon) == 0
        journal.close()
    assert fields["MESSAGE_ID"] == INCIDENT_MESSAGE_ID and fields["CGOOM_RULE"] == "t"
    assert fields["SYSLOG_IDENTIFIER"] == "cgoom" and fields["CGOOM_DRY_RUN"] == "true"
    assert fields["CGOOM_INCIDENT"] and fields["MESSAGE"].startswith("cgoom: incident ")
    assert fields["CGOOM_CHOSEN"] == "/t/batch" and "CGOOM_VICTIM" not in fields  # dry run
    assert "policy priority" in fields["CGOOM_EXPLAIN"] and "\n" in fields["CGOOM_EXPLAIN"]


def test_stderr_lines_carry_their_priority_when_stderr_is_the_journal(tmp_path: Path) -> None:
    """issue 18: every stderr line reached the journal at one priority; with stderr the
    journal's stream, each line carries its level as a ``<N>`` prefix (sd-daemon(3))."""
    import logging

    from cgoom._ops._journal import PriorityPrefix, stderr_formatter

    def line(level: int, message: str) -> str:
        record = logging.LogRecord("cgoom", level, __file__, 1, message, None, None)
        return PriorityPrefix("%(message)s").format(record)

    assert line(logging.WARNING, "cgoom: not allowed here") == "<4>cgoom: not allowed here"
    assert line(logging.ERROR, "a\nb") == "<3>a\n<3>b"
    assert line(logging.INFO, "set-up") == "<6>set-up"
    assert line(logging.DEBUG, "") == "<7>"
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        journal = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert isinstance(stderr_formatter(journal, f.fileno()), PriorityPrefix)
        assert not isinstance(stderr_formatter({}, f.fileno()), PriorityPrefix)
