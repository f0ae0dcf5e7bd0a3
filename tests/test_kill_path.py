"""The process kill path (issue 20): the identity check through the pidfd's own cgroup id
where the kernel has ``PIDFD_GET_INFO`` (6.13; the fake tree answers as its kernel would),
/proc where not; and ``process_mrelease`` in the reaper threads, never on the event loop,
with the pidfd kept open until the release is done."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

import cgoom
from cgoom._engine._actions import kill_process
from cgoom._kernel._worker import WorkerPool
from cgoom.testing import FakeCgroupTree, FakeProcesses, next_incident

M = 1 << 20

KERNELS = {"6.1 (/proc)": ((6, 1), "/proc"), "6.13 (PIDFD_GET_INFO)": ((6, 13), "PIDFD_GET_INFO")}


@pytest.fixture(params=list(KERNELS))
def kernel(request: pytest.FixtureRequest) -> tuple[tuple[int, int], str]:
    return KERNELS[request.param]


def two_jobs(tmp_path: object, version: tuple[int, int]) -> FakeCgroupTree:
    """/t/a holds the hog (pid 300, start time 777) and pid 301; /t/b is empty."""
    tree = FakeCgroupTree(tmp_path, kernel=version)  # type: ignore[arg-type]
    tree.add("t", memory_current=200 * M)
    tree.add("t/a", procs=[300, 301], memory_current=200 * M)
    tree.add("t/b")
    tree.add_process(300, rss=150 * M, start_time=777)
    tree.add_process(301, rss=10 * M)
    return tree


def hog(tree: FakeCgroupTree) -> cgoom.Victim:
    return cgoom.Victim("/t/a", 1.0, "the hog", False, 300,
                        cgroup_id=os.stat(tree.cgroup("t/a").dir).st_ino, start_time=777)


class TestIdentity:
    def test_the_process_decided_on_is_killed_and_the_path_is_said(
            self, tmp_path: object, kernel: tuple[tuple[int, int], str]) -> None:
        version, path = kernel
        tree = two_jobs(tmp_path, version)
        procs = FakeProcesses(tree)
        result, handle = kill_process(tree.hierarchy, hog(tree), procs)
        assert result.ok and result.identity == path and procs.killed == [300]
        assert handle is not None
        procs.close(handle)

    def test_a_process_moved_out_is_not_killed(
            self, tmp_path: object, kernel: tuple[tuple[int, int], str]) -> None:
        version, path = kernel
        tree = two_jobs(tmp_path, version)
        tree.cgroup("t/b").attach(300)
        procs = FakeProcesses(tree)
        result, handle = kill_process(tree.hierarchy, hog(tree), procs)
        assert handle is None and procs.killed == []
        assert result.stale and result.identity == path
        assert "process 300 left /t/a" in result.detail
        b = os.stat(tree.cgroup("t/b").dir).st_ino
        if path == "PIDFD_GET_INFO":  # the cgroup the pidfd named, not /proc's path
            assert f"its pidfd is in cgroup id {b}" in result.detail

    def test_a_reused_pid_is_not_killed(
            self, tmp_path: object, kernel: tuple[tuple[int, int], str]) -> None:
        """Same pid, same cgroup, another process (start time 900): the pidfd would name
        the new one, and the start time read with it open says so."""
        version, path = kernel
        tree = two_jobs(tmp_path, version)
        tree.remove_process(300)
        tree.add_process(300, rss=150 * M, start_time=900)
        procs = FakeProcesses(tree)
        result, handle = kill_process(tree.hierarchy, hog(tree), procs)
        assert handle is None and procs.killed == [] and result.stale
        assert result.identity == path
        assert "pid 300 was reused (start time 777 is now 900)" in result.detail

    def test_a_process_reaped_while_the_pidfd_opens_is_gone(self, tmp_path: object) -> None:
        tree = two_jobs(tmp_path, (6, 13))

        class ReapedMeanwhile(FakeProcesses):
            def cgroup_id(self, handle: int) -> int | None:
                tree.remove_process(300)  # between pidfd_open and the ioctl
                return super().cgroup_id(handle)

        procs = ReapedMeanwhile(tree)
        result, handle = kill_process(tree.hierarchy, hog(tree), procs)
        assert handle is None and procs.killed == [] and result.stale
        assert result.detail == "not killed: process 300 is gone"

    def test_a_process_control_without_cgroup_id_uses_proc(self, tmp_path: object) -> None:
        """A ProcessControl written before cgroup_id existed still works (the /proc check)."""
        tree = two_jobs(tmp_path, (6, 13))

        class Older(FakeProcesses):
            cgroup_id = None  # type: ignore[assignment]

        procs = Older(tree)
        result, handle = kill_process(tree.hierarchy, hog(tree), procs)
        assert result.ok and result.identity == "/proc" and handle is not None
        procs.close(handle)


class HeldRelease(FakeProcesses):
    """process_mrelease that blocks until the test lets it go, noting where it ran, whether
    the handle was still open then, and when handles were closed."""

    def __init__(self, tree: FakeCgroupTree) -> None:
        super().__init__(tree)
        self.go = threading.Event()
        self.running = threading.Event()
        self.events: list[str] = []
        self.threads: list[str] = []

    def release(self, handle: int) -> None:
        self.threads.append(threading.current_thread().name)
        self.running.set()
        assert self.go.wait(10), "the test never let the release go"
        os.fstat(handle)  # still open: OSError (EBADF) otherwise
        self.events.append("released")
        super().release(handle)

    def close(self, handle: int) -> None:
        self.events.append("closed")
        super().close(handle)


class TestReapers:
    async def test_process_mrelease_runs_off_the_loop_and_the_handle_waits_for_it(
            self, tmp_path: object) -> None:
        """The release blocks until a task *on the event loop* lets it go: were it called on
        the loop, that task could never run and this test would hang (and fail at 10 s)."""
        tree = two_jobs(tmp_path, (6, 13))
        procs = HeldRelease(tree)
        loop_thread = threading.current_thread().name

        async def let_go() -> None:
            assert await asyncio.to_thread(procs.running.wait, 10)
            await asyncio.sleep(0.05)  # the loop keeps running while the release is held
            procs.go.set()

        async with cgoom.open_handler(tree.hierarchy, cgoom.Rule("r", "t"), own_cgroup="/",
                                      processes=procs) as handler:
            helper = asyncio.create_task(let_go())
            tree.memory_event("t/a", "max")
            record = await next_incident(handler)
            await helper
        victim = record.victim
        assert victim is not None and victim.pid == 300 and procs.killed == [300]
        assert procs.threads and procs.threads[0].startswith("cgoom-reaper-")
        assert procs.threads[0] != loop_thread
        assert victim.identity == "PIDFD_GET_INFO"
        assert "its memory freed at once (process_mrelease, in cgoom-reaper-" in victim.detail
        assert victim.mrelease_ms is not None and victim.mrelease_ms >= 40
        assert procs.events.index("released") < procs.events.index("closed")
        assert "(identity by PIDFD_GET_INFO)" in record.explain()

    async def test_a_release_that_fails_is_said_and_the_kill_stands(
            self, tmp_path: object) -> None:
        tree = two_jobs(tmp_path, (6, 1))

        class Broken(FakeProcesses):
            def release(self, handle: int) -> None:
                raise RuntimeError("the plugin's own bug")

        procs = Broken(tree)
        async with cgoom.open_handler(tree.hierarchy, cgoom.Rule("r", "t"), own_cgroup="/",
                                      processes=procs) as handler:
            tree.memory_event("t/a", "max")
            record = await next_incident(handler)
        victim = record.victim
        assert victim is not None and victim.ok and procs.killed == [300]
        assert "process_mrelease failed: RuntimeError(\"the plugin's own bug\")" in victim.detail
        assert victim.mrelease_ms is None and victim.identity == "/proc"


def test_a_pool_gives_a_call_to_the_thread_that_is_free() -> None:
    pool = WorkerPool("test-pool", 2)
    try:
        held = threading.Event()
        first = pool.submit(lambda: (held.wait(10), threading.current_thread().name)[1])
        second = pool.submit(lambda: threading.current_thread().name)
        assert second.result(5) != "" and not first.done()  # not queued behind the first
        held.set()
        assert {first.result(5), second.result(5)} == {"test-pool-0", "test-pool-1"}
    finally:
        pool.close()


@pytest.mark.parametrize(("kernel", "followed"), [((6, 13), True), ((6, 14), False)])
def test_the_process_connector_is_followed_by_default_only_before_6_14(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch, kernel: tuple[int, int],
        followed: bool) -> None:
    """On the real filesystem (here a fake tree read through it, as ``cgoom --mount`` does),
    the default follows the process connector where a fork can escape cgroup.kill, and says
    why not from 6.14; asked for, it is followed on any kernel."""
    import cgoom._engine._handler as handler_module
    from cgoom._kernel._fs import OsFS

    tree = FakeCgroupTree(tmp_path)  # type: ignore[arg-type]
    tree.add("t")
    real = cgoom.Hierarchy(mount=tree.hierarchy.mount, fs=OsFS(),
                           proc_root=tree.hierarchy.proc_root)
    monkeypatch.setattr(handler_module, "kernel_release", lambda: kernel)
    handler = cgoom.Handler(real, [cgoom.Rule("r", "t")], own_cgroup="/", kmsg=None)
    assert (handler._executor._connector is not None) is followed
    said = handler._proc_events_why
    assert (said is None) is followed
    if not followed:
        assert said is not None and "from Linux 6.14 no fork escapes cgroup.kill" in said
    asked = cgoom.Handler(real, [cgoom.Rule("r", "t")], own_cgroup="/", kmsg=None,
                          proc_events=True)
    assert asked._executor._connector is not None and asked._proc_events_why is None


async def test_a_kill_cancelled_while_the_reaper_runs_still_closes_its_handle(
        tmp_path: object) -> None:
    """The handler stops while the reaper thread is sending the signal: the thread finishes
    its kill and release, and the handle is closed once it has (no pidfd leaks)."""
    from cgoom._engine._executor import Executor
    from cgoom._kernel._clock import SYSTEM
    from cgoom._kernel._worker import Worker

    tree = two_jobs(tmp_path, (6, 13))

    class HeldKill(HeldRelease):
        def __init__(self, tree: FakeCgroupTree) -> None:
            super().__init__(tree)
            self.killing, self.kill_go = threading.Event(), threading.Event()

        def kill(self, handle: int) -> None:
            self.killing.set()
            assert self.kill_go.wait(10), "the test never let the kill go"
            super().kill(handle)

    procs = HeldKill(tree)
    procs.go.set()  # the release itself is not held
    executor = Executor(tree.hierarchy, writer=Worker("w"), clock=SYSTEM, processes=procs,
                        proc_events=False)
    executor.reapers.start()
    handle = procs.open(300)
    task = asyncio.create_task(executor._kill_in_reaper(hog(tree), handle, "PIDFD_GET_INFO"))
    assert await asyncio.to_thread(procs.killing.wait, 10)  # in the thread, not sent yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    procs.kill_go.set()
    for _ in range(500):
        if "closed" in procs.events:
            break
        await asyncio.sleep(0.01)
    assert procs.events == ["released", "closed"] and procs.killed == [300]
    executor.reapers.close()
