"""The notice socket against other users: forked children that setuid to uid 65534 and
connect, as a tenant would. Here, in the real-kernel tier, because it needs root (which the
VM's tests have; the unit tier may run as anyone, and skips nothing), not a real cgroup: the
cgroups are the fake tree's."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from collections.abc import Callable, Iterator

import pytest

import cgoom
from cgoom import client as notices
from cgoom.testing import FakeCgroupTree, until

from ..test_notices import handler_for

M = 1 << 20


@pytest.fixture
def domain(tree: FakeCgroupTree) -> FakeCgroupTree:
    """/t with db, web and batch, on the fake tree (no priorities: the VM's /tmp, tmpfs on
    6.1, keeps no user xattrs, and these tests rank nothing)."""
    for name, pid, usage in (("db", 100, 140), ("web", 200, 40), ("batch", 300, 90)):
        tree.add(f"t/{name}", procs=[pid], memory_current=usage * M)
        tree.add_process(pid, name=name, rss=usage * M)
    tree.hierarchy.cgroup("t").set_memory_max(300 * M)
    tree.set("t", "memory.current", f"{270 * M}\n")
    return tree


def as_user(uid: int, work: Callable[[], bytes]) -> bytes:
    """``work()`` in a forked child running as ``uid`` (plain syscalls only, then _exit);
    what it returned, or the exception it raised, as text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgid(uid)
            os.setuid(uid)
            os.write(w, work())
        except BaseException as exc:
            os.write(w, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def connect_as(uid: int, path: str, count: int) -> list[bytes]:
    """As ``uid``: ``count`` connections to ``path``; what the last one was told, what came
    after it, and whether the first is still open."""
    def work() -> bytes:
        socks = [socket.socket(socket.AF_UNIX) for _ in range(count)]
        for s in socks:
            s.connect(path)
            s.settimeout(5)
        told, after = socks[-1].recv(1000), socks[-1].recv(1000)
        socks[0].settimeout(0.3)
        try:
            first = socks[0].recv(1000) or b"closed"
        except TimeoutError:
            first = b"open"
        return b"\0".join((told.strip(), after, first))
    return as_user(uid, work).split(b"\0")


def register_as(uid: int, path: str, plan: list[list[str]]) -> list[bytes]:
    """As ``uid``: a connection per list of ``plan``, each registering those cgroups in
    turn; every reply line, in order."""
    def work() -> bytes:
        replies, socks = [], []
        for cgroups in plan:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.settimeout(5)
            socks.append(s)
            f = s.makefile("rb")
            for cgroup in cgroups:
                s.sendall(b'{"v":1,"op":"register","cgroup":"%s"}\n' % cgroup.encode())
                replies.append(f.readline().strip())
        return b"\n".join(replies)
    return as_user(uid, work).split(b"\n")


@pytest.fixture
def shared_sock() -> Iterator[str]:
    """A socket path another user may reach (pytest's tmp_path is root's alone)."""
    import tempfile

    where = tempfile.mkdtemp(prefix="cgoom-n-")
    os.chmod(where, 0o755)
    yield os.path.join(where, "n.sock")
    shutil.rmtree(where, ignore_errors=True)


async def test_one_user_holds_at_most_max_per_user_connections(
        domain: FakeCgroupTree, shared_sock: str, root: None) -> None:
    sock_path = shared_sock
    async with handler_for(domain) as handler, \
            cgoom.open_notice_server(handler, sock_path, max_per_user=2) as server, \
            notices.connect(sock_path), notices.connect(sock_path), \
            notices.connect(sock_path):  # root: not counted against anyone's share
        said = await asyncio.to_thread(connect_as, 65534, sock_path, 3)
        statistics = server.statistics()
    assert len(said) == 3, said
    told, after, first = said
    assert b"turned away: uid 65534 holds max_per_user (2) connections" in told, told
    assert after == b"" and first == b"open"
    assert statistics.refused == 1 and statistics.connected == 5


async def test_one_user_holds_at_most_max_registrations_per_user(
        domain: FakeCgroupTree, shared_sock: str, root: None) -> None:
    # One user's registrations across its connections are bounded, not only per connection
    # (256 connections x 64 registrations would be 16,384 notices to write per level).
    for name in ("web", "batch"):
        domain.chown(f"t/{name}", 65534)  # delegated: the user may register for them
    sock_path = shared_sock
    async with handler_for(domain) as handler, \
            cgoom.open_notice_server(handler, sock_path,
                                     max_registrations_per_user=2) as server:
        replies = await asyncio.to_thread(register_as, 65534, sock_path,
                                          [["t/web", "t/batch"], ["t/web"]])
        # The child has exited: its registrations end with its connections, and so does
        # its count (a count that drifted would lock the user out for good).
        await until(lambda: server.statistics().clients == 0)
        left = dict(server._registrations_by_uid)
    assert len(replies) == 3, replies
    assert all(b'"op":"registered"' in line for line in replies[:2]), replies
    assert b"uid 65534 already holds 2 registrations on this socket" in replies[2], replies
    assert left == {} and len(handler._notifier.registry) == 0


def hold_as(uid: int, path: str, sizes: list[int], go: int) -> list[bytes]:
    """As ``uid``: a connection per size in ``sizes``, each sending that many bytes of a
    line it never finishes; once a byte comes on ``go``, what each was told ("open" if
    nothing)."""
    def work() -> bytes:
        socks = []
        for size in sizes:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.sendall(b'{"v":1,"op":"register","cgroup":"' + b"x" * size)
            socks.append(s)
        os.read(go, 1)
        told = []
        for s in socks:
            s.settimeout(0.5)
            try:
                told.append(s.recv(4096).strip() or b"closed")
            except TimeoutError:
                told.append(b"open")
            except ConnectionResetError:
                told.append(b"reset")
        return b"\0".join(told)
    return as_user(uid, work).split(b"\0")


async def test_one_user_holds_at_most_max_bytes_per_user(
        domain: FakeCgroupTree, shared_sock: str, root: None) -> None:
    """issue 19: one user's 256 connections, each with a 60 KiB line it never finished and
    answers it never read, grew the daemon from 28 to 72 MiB. What one user makes cgoom hold
    is bounded across its connections: the connection that would take it over (whichever
    of the three cgoom reads last) is ended, told why; the others, and other users, go
    on."""
    sock_path = shared_sock
    go_read, go = os.pipe()
    try:
        async with handler_for(domain) as handler, \
                cgoom.open_notice_server(handler, sock_path,
                                         max_bytes_per_user=64 << 10) as server:
            holding = asyncio.ensure_future(asyncio.to_thread(
                hold_as, 65534, sock_path, [30_000, 30_000, 30_000], go_read))
            await until(lambda: server.statistics().dropped == 1 or holding.done(), 120,
                        what="a connection ended for what its user holds")
            await until(lambda: server.statistics().held >= 60_000, 60,
                        what="the other two lines read")
            statistics = server.statistics()  # while the child still holds its connections
            os.write(go, b"x")
            told = await holding
            async with notices.connect(sock_path) as client:  # root: its own share
                assert (await client.register("t/web"))["cgroup"] == "/t/web"
            await until(lambda: server.statistics().clients == 0, 60)
            left = dict(server._bytes_by_uid)
    finally:
        os.close(go_read)
        os.close(go)
    ended = [t for t in told if t != b"open"]
    assert len(ended) == 1 and told.count(b"open") == 2, told
    assert ended[0].startswith(b'{"v":1,"op":"error"') and b"uid 65534 holds" in ended[0] \
        and b"more than max_bytes_per_user (65536): connection closed" in ended[0], told
    assert statistics.dropped == 1 and statistics.clients == 2
    assert 60_000 <= statistics.held <= 64 << 10
    assert left == {}  # its count went with its connections
    assert server.statistics().bad_messages == 2  # the unfinished lines, at the end


def flood_unread_as(uid: int, path: str, count: int, go: int) -> bytes:
    """As ``uid``: ``count`` registrations for t/web on one connection, none of the answers
    read until a byte comes on ``go`` (the test's word that cgoom has acted); then how many
    answers came, and how it ended."""
    def work() -> bytes:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(b'{"v":1,"op":"register","cgroup":"t/web"}\n' * count)
        os.read(go, 1)
        s.settimeout(10)
        data = b""
        try:
            while chunk := s.recv(1 << 16):
                data += chunk
            end = b"closed"
        except ConnectionResetError:
            end = b"reset"
        except TimeoutError:
            end = b"open"
        return b"%d %s" % (data.count(b'"op":"registered"'), end)
    return as_user(uid, work)


async def test_answers_a_user_does_not_read_count_against_its_bytes(
        domain: FakeCgroupTree, shared_sock: str, root: None) -> None:
    domain.chown("t/web", 65534)  # delegated: the user may register for it
    sock_path = shared_sock
    go_read, go = os.pipe()
    try:
        async with handler_for(domain) as handler, \
                cgoom.open_notice_server(handler, sock_path, max_rate=1e6,
                                         max_buffered=1 << 20,  # not what ends it
                                         max_bytes_per_user=16 << 10) as server:
            flooding = asyncio.ensure_future(
                asyncio.to_thread(flood_unread_as, 65534, sock_path, 5000, go_read))
            # Deterministic on a slow machine: the client reads nothing until cgoom acted.
            await until(lambda: server.statistics().dropped == 1 or flooding.done(), 120,
                        what="the connection ended for what its user holds")
            os.write(go, b"x")
            said = await flooding
            statistics = server.statistics()
    finally:
        os.close(go_read)
        os.close(go)
    answered, end = said.split()
    assert end in (b"closed", b"reset") and 0 < int(answered) < 5000, said
    assert statistics.dropped == 1 and statistics.clients == 0
