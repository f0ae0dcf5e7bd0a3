"""``cgoom run``: the handler as a daemon, from a configuration file. Orchestration only:
the configuration (``_config``), the engine (``_handler``), the record log (``_recordlog``)
and sd_notify (``_sdnotify``) do the work.

Signals: SIGTERM and SIGINT stop it cleanly (the handler puts back what it set, unless the
configuration says ``restore = false``). SIGHUP reopens the record log (after rotation) and
checks the configuration file again: a file that fails to load is reported and the running
configuration kept; a changed one is reported as needing a restart to apply, for now
(applying it without losing cooldowns and history is the next step of issue #10).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import attrs

from ._config import Config, ConfigError, load_config
from ._hierarchy import Hierarchy
from ._recordlog import Record, RecordLog
from ._sdnotify import notify, reloading, watchdog_interval

log = logging.getLogger("cgoom")


async def run(config_path: str, *, dry_run: bool = False,
              hierarchy: Hierarchy | None = None) -> int:
    """Run the handler that ``config_path`` describes until SIGTERM or SIGINT; 0 when it
    stopped cleanly. ``dry_run``: every rule decides and records, none acts."""
    from ._handler import Handler

    config = load_config(config_path)
    h = hierarchy if hierarchy is not None else Hierarchy.discover()
    h.require_memory()
    rules = [attrs.evolve(r, dry_run=True) if dry_run else r for r in config.rules]
    settings = config.handler
    records = RecordLog(settings.records) if settings.records else None
    handler = Handler(h, rules, own_cgroup=settings.own_cgroup, restore=settings.restore,
                      kmsg="" if settings.kmsg else None, proc_events=settings.proc_events,
                      priorities=config.priorities)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, config_path, config, records)

    def on_record(record: Record) -> None:
        if records is not None:
            try:
                records.write(record)
            except OSError as exc:
                log.error("cgoom: cannot append to the record log %s: %s", records.path, exc)

    watchdog: asyncio.Task[None] | None = None
    try:
        async with handler:
            handler.add_listener(on_record)
            for line in handler.setup:
                log.info("cgoom: %s", line)
            status = (f"{len(rules)} rule(s) on {len({r.domain for r in rules})} domain(s)"
                      + (" (dry run)" if dry_run else ""))
            log.info("cgoom: running %s from %s", status, ", ".join(config.sources))
            notify("READY=1", f"STATUS={status}")
            interval = watchdog_interval()
            if interval is not None:
                watchdog = loop.create_task(_watchdog(interval))
            await stop.wait()
            notify("STOPPING=1")
            log.info("cgoom: stopping")
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        if records is not None:
            records.close()
    return 0


async def _watchdog(interval: float) -> None:
    """``WATCHDOG=1`` from the event loop itself: if the loop stalls, the pings stop and
    systemd acts (WatchdogSec=)."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def _reload(path: str, running: Config, records: RecordLog | None) -> None:
    notify(*reloading())
    if records is not None:
        try:
            records.reopen()
        except OSError as exc:
            log.error("cgoom: cannot reopen the record log %s: %s", records.path, exc)
    try:
        fresh = load_config(path)
    except ConfigError as exc:
        log.error("cgoom: reload: the configuration cannot be used; the running one is "
                  "kept: %s", exc)
    else:
        if fresh.describe() != running.describe():
            log.warning("cgoom: reload: %s changed; restart cgoom to apply it (a reload "
                        "that keeps cooldowns and history is not built yet)", path)
        else:
            log.info("cgoom: reload: the configuration is unchanged")
    notify("READY=1")
