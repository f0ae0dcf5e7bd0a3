"""``cgoom run``: the handler as a daemon, from a configuration file. Orchestration only:
the configuration (``_config``), the engine (``_handler``), the record log (``_recordlog``),
metrics (``_metrics``), the notice sockets (``_server``) and sd_notify (``_sdnotify``) do
the work.

Signals: SIGTERM and SIGINT stop it cleanly (the handler puts back what it set, unless the
configuration says ``restore = false``). SIGHUP reopens the record log (after rotation) and
loads the configuration again: a file that fails to load is reported and the running
configuration kept; a loaded one is applied to the running handler without losing its state
(cooldowns, debounce counts, growth history, the incident in flight:
:meth:`Handler.reconfigure`), or, when it changes what is set up once at start (a rule's
domain or triggers, rules added or removed, ``[handler]``, ``[metrics]`` or ``[notices]``
other than the record log), refused as a whole with the reason, the running one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal

import attrs

from .._engine._incident import IncidentRecord
from .._engine._rules import Rule
from .._engine._stall import StallWatchdog
from .._engine._undo import default_path as default_state
from .._errors import CgoomError
from .._kernel._clock import SYSTEM, Clock
from .._kernel._hierarchy import Hierarchy
from .._kernel._linux import trim_heap
from . import _journal
from ._config import Config, ConfigError, load_config
from ._privileges import limits
from ._recordlog import Record, RecordLog
from ._sdnotify import notify, reloading, watchdog_interval

log = logging.getLogger("cgoom")

#: How long a reload may take to load the file (its policies' plugin factories run then);
#: past it the running configuration is kept, and said.
RELOAD_DEADLINE = 30.0


async def run(config_path: str, *, dry_run: bool = False,
              hierarchy: Hierarchy | None = None, clock: Clock = SYSTEM) -> int:
    """Run the handler that ``config_path`` describes until SIGTERM or SIGINT; 0 when it
    stopped cleanly. ``dry_run``: every rule decides and records, none acts. ``hierarchy``
    and ``clock``: the engine's (a fake tree and a manual clock in tests)."""
    config = load_config(config_path)
    h = hierarchy if hierarchy is not None else Hierarchy.discover()
    h.require_memory()
    from .._kernel._linux import FD_RESERVE, raise_fd_limit

    before, after = raise_fd_limit()
    if after != before:
        log.info("cgoom: file descriptor limit raised from %d to %d (the notice sockets' "
                 "clients; %d are always kept for the engine)", before, after, FD_RESERVE)
    for line in limits(h, config.rules):
        log.warning("cgoom: not allowed here: %s", line)
    daemon = _Daemon(config_path, config, h, dry_run=dry_run, clock=clock,
                     host=hierarchy is None)
    return await daemon.run()


class _Daemon:
    def __init__(self, path: str, config: Config, hierarchy: Hierarchy, *,
                 dry_run: bool, clock: Clock, host: bool = False) -> None:
        from .._engine._handler import Handler

        self.host = host
        config = self._settled(config)
        self.path, self.config, self.dry_run = path, config, dry_run
        settings = config.handler
        self.records = RecordLog(settings.records) if settings.records else None
        self.handler = Handler(hierarchy, self._rules(config), own_cgroup=settings.own_cgroup,
                               restore=settings.restore,
                               kmsg="" if settings.kmsg else None,
                               proc_events=settings.proc_events, priorities=config.priorities,
                               notice_interval=config.notices.interval, clock=clock,
                               policies=config.policies,
                               max_tenant_cgroups=settings.max_tenant_cgroups,
                               state=settings.state or None)
        self.stall: StallWatchdog | None = None
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False
        # stderr is the journal: each record also goes there with its fields.
        self.journal = _journal.Journal(_journal.JOURNAL_SOCKET) \
            if _journal.stderr_is_journal() else None
        self.metrics = None
        if config.metrics is not None:
            from ._metrics import Metrics

            self.metrics = Metrics(lambda: self.handler.statistics().watched)

    def _rules(self, config: Config) -> list[Rule]:
        return [attrs.evolve(r, dry_run=True) if self.dry_run else r for r in config.rules]

    def _status(self) -> str:
        rules = self.config.rules
        return (f"{len(rules)} rule(s) on {len({r.domain for r in rules})} domain(s)"
                + (" (dry run)" if self.dry_run else ""))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        watchdog: asyncio.Task[None] | None = None
        try:
            if self.records is not None:  # a path it cannot write is said now, not at OOM
                self.records = _open_log(self.records.path)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            async with self.handler, contextlib.AsyncExitStack() as sockets:
                self.handler.add_listener(self.on_record)  # set-up lines: logged by it
                await self._open_sockets(sockets)
                if self.metrics is not None:
                    assert self.config.metrics is not None
                    m = self.config.metrics
                    await self.metrics.astart(m.address, m.port)
                    log.info("cgoom: metrics on http://%s:%d/metrics", m.address, m.port)
                timeout = self.config.handler.stall_timeout
                if timeout is not None:
                    self.stall = StallWatchdog(self.handler, timeout, self.on_stall_record)
                    await self.stall.start()
                    log.info("cgoom: stall watchdog armed: acts on the last ranking of %s "
                             "when the event loop has not run for %g s",
                             ", ".join(self.stall.eligible()) or "(no killing rule)", timeout)
                if self.journal is not None:
                    log.info("cgoom: stderr is the journal: each record also goes there with "
                             "its fields (MESSAGE_ID=%s)", _journal.INCIDENT_MESSAGE_ID)
                log.info("cgoom: running %s from %s", self._status(),
                         ", ".join(self.config.sources))
                # Everything made so far lives as long as the daemon: out of the collector's
                # sight, so that no full collection walks it during an incident (10,000
                # watched cgroups: 11-20 ms a full collection, none after).
                gc.collect()
                gc.freeze()
                # What the start-up's temporaries left free in the C heap, back to the
                # kernel: resident memory is what an operator compares (benchmarks/daemon.py).
                trim_heap()
                log.info("cgoom: %d objects of the start-up kept out of the garbage "
                         "collector's full passes (gc.freeze)", gc.get_freeze_count())
                notify("READY=1", f"STATUS={self._status()}")
                interval = watchdog_interval()
                if interval is not None:
                    watchdog = loop.create_task(_watchdog(interval))
                await stop.wait()
                notify("STOPPING=1")
                log.info("cgoom: stopping")
                if self.stall is not None:
                    await self.stall.close()
        finally:
            for task in (watchdog, self._reloading):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            if self.metrics is not None:
                await self.metrics.aclose()
            if self.records is not None:
                self.records.close()
            if self.journal is not None:
                self.journal.close()
        return 0

    async def _open_sockets(self, stack: contextlib.AsyncExitStack) -> None:
        n = self.config.notices
        if n.socket is None and n.pressure_socket is None and n.dbus is None:
            return  # the notice server's modules stay unloaded: 0.8 MB resident
        from .._notices._server import open_notice_server, open_pressure_socket

        if n.socket is not None:
            await stack.enter_async_context(open_notice_server(self.handler, n.socket,
                                                               mode=n.mode))
            log.info("cgoom: notices for applications on %s", n.socket)
        if n.pressure_socket is not None:
            await stack.enter_async_context(open_pressure_socket(
                self.handler, n.pressure_socket, level=n.pressure_level, mode=n.mode))
            log.info("cgoom: systemd's memory pressure protocol on %s (woken at %s)",
                     n.pressure_socket, n.pressure_level)
        if n.dbus is not None:
            from .._notices._dbus import open_low_memory_monitor

            monitor = await stack.enter_async_context(open_low_memory_monitor(
                self.handler, n.dbus_domain, n.dbus))
            log.info("cgoom: LowMemoryWarning on the %s bus for %s's levels%s", n.dbus,
                     n.dbus_domain, "" if monitor.owns_name else
                     " (without the name org.freedesktop.LowMemoryMonitor)")

    def on_record(self, record: Record) -> None:
        if self.journal is not None:
            self.journal.send(_journal.record_fields(record))
        if self.records is not None:
            try:
                self.records.write(record)
            except OSError as exc:
                log.error("cgoom: cannot append to the record log %s: %s", self.records.path,
                          exc)
        if self.metrics is not None:
            self.metrics.record(record)
        if self.stall is not None and isinstance(record, IncidentRecord):
            self.stall.stale()  # an incident changed the domain: rank again

    def on_stall_record(self, record: IncidentRecord) -> None:
        """From the stall watchdog's thread (the loop is stalled)."""
        if self.metrics is not None:
            self.metrics.stall_kills.inc()
        self.on_record(record)

    def reload(self) -> None:
        """SIGHUP: reload in a task of its own (a SIGHUP while one runs asks for another
        after it); the running configuration keeps deciding meanwhile."""
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload())

    async def _reload(self) -> None:
        """Reopen the record log, load the file again and apply it, or keep the running
        configuration and say why. The file is loaded in a thread, within
        :data:`RELOAD_DEADLINE`: loading runs the policies' plugin factories, and one that
        took 4 s, run on the loop, stalled it 4 s (an OOM decision waited, WATCHDOG=1
        stopped)."""
        notify(*reloading())
        if self.records is not None:
            try:
                self.records.reopen()
            except OSError as exc:
                log.error("cgoom: cannot reopen the record log %s: %s", self.records.path,
                          exc)
        try:
            fresh = await asyncio.wait_for(asyncio.to_thread(load_config, self.path),
                                           RELOAD_DEADLINE)
            changes = self._apply(self._settled(fresh))
        except TimeoutError:
            log.error("cgoom: reload: loading the configuration took more than %g s (a "
                      "policy plugin that hangs?); the running one is kept", RELOAD_DEADLINE)
            if self.metrics is not None:
                self.metrics.reloaded(False)
        except CgoomError as exc:
            what = ("cannot be used" if isinstance(exc, ConfigError)
                    else "was not applied")
            log.error("cgoom: reload: the configuration %s; the running one is kept: %s",
                      what, exc)
            if self.metrics is not None:
                self.metrics.reloaded(False)
        else:
            if self.stall is not None:
                self.stall.stale()
            if changes:
                log.info("cgoom: reload: applied: %s", "; ".join(changes))
            else:
                log.info("cgoom: reload: the configuration is unchanged")
            if self.metrics is not None:
                self.metrics.reloaded(True)
        notify("READY=1", f"STATUS={self._status()}")
        if self._reload_again:
            self._reload_again = False
            self._reloading = asyncio.get_running_loop().create_task(self._reload())

    def _settled(self, config: Config) -> Config:
        """``config`` with its defaults that depend on where it runs: the durable undo log
        in /run/cgoom (as root) on the host's own cgroups, unless the file names one."""
        if config.handler.state is None and self.host:
            return attrs.evolve(config, handler=attrs.evolve(config.handler,
                                                             state=default_state()))
        return config

    def _apply(self, fresh: Config) -> list[str]:
        """Apply ``fresh`` to the running daemon, all or nothing."""
        old, new = self.config.handler, fresh.handler
        fixed = [f"[handler] {a.name}: {getattr(old, a.name)!r} -> {getattr(new, a.name)!r}"
                 for a in attrs.fields(type(old))
                 if a.name != "records" and getattr(old, a.name) != getattr(new, a.name)]
        if fresh.metrics != self.config.metrics:
            fixed.append(f"[metrics]: {self.config.metrics} -> {fresh.metrics}")
        if fresh.notices != self.config.notices:
            fixed.append(f"[notices]: {self.config.notices} -> {fresh.notices}")
        if fixed:
            raise CgoomError("these changes need cgoom started again: " + "; ".join(fixed))
        records = self.records
        if new.records != old.records and new.records is not None:
            records = _open_log(new.records)  # before anything changes
        try:
            changes = self.handler.reconfigure(self._rules(fresh), priorities=fresh.priorities,
                                               policies=fresh.policies)
        except CgoomError:
            if records is not self.records and records is not None:
                records.close()
            raise
        if new.records != old.records:
            if self.records is not None:
                self.records.close()
            self.records = records if new.records is not None else None
            changes.append(f"record log: {old.records or '(none)'} -> "
                           f"{new.records or '(none)'}")
        self.config = fresh
        return changes


def _open_log(path: str) -> RecordLog:
    records = RecordLog(path)
    try:
        records.reopen()
    except OSError as exc:
        raise CgoomError(f"cannot open the record log {path}: {exc.strerror}") from exc
    return records


async def _watchdog(interval: float) -> None:
    """``WATCHDOG=1`` from the event loop itself: if the loop stalls, the pings stop and
    systemd acts (WatchdogSec=)."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)
