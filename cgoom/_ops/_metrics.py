"""Prometheus metrics for ``cgoom run`` (``[metrics]`` in the configuration): counters and
histograms fed from the handler's records, rendered by prometheus_client (the ``metrics``
extra) and served over HTTP from the event loop, bound to localhost unless configured
otherwise.

Owns nothing of the engine: it only reads the records the handler delivers (on the loop, a
few microseconds each) and the handler's and watcher's statistics when scraped. Its own
registry, not prometheus_client's global one, so an application importing cgoom keeps its
own metrics apart. Names follow the Prometheus conventions: ``cgoom_..._total`` for
counters, ``_seconds`` for durations (https://prometheus.io/docs/practices/naming/).

Served from the event loop (asyncio), not prometheus_client's server, which starts a thread
per connection with no timeout: 300 idle connections to the port held 301 threads and
+7 MiB, and under systemd's ``TasksMax=`` every thread the engine needs would then be
refused. Here a connection costs a task, at most :data:`MAX_CONNECTIONS` at once (one more is
closed at once), and each has :data:`TIMEOUT` seconds to send its request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from .._engine._incident import KILLING, IncidentRecord
from .._engine._shadow import ShadowVerdict
from .._errors import CgoomError
from .._kernel._kmsg import KernelOomKill

Record = IncidentRecord | KernelOomKill | ShadowVerdict

#: Buckets for decision and notification-to-kill times: cgoom decides in milliseconds, and
#: anything beyond a second is the peers' territory (oomd 1.3-1.8 s).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Scrapers served at once; a connection past them is closed at once.
MAX_CONNECTIONS = 16
#: Seconds a connection has to send its request (and for its answer to be taken).
TIMEOUT = 5.0
#: The longest request head read (a scraper's GET is a few hundred bytes).
MAX_REQUEST = 8192

class Metrics:
    """The daemon's metrics. ``watched``: how many cgroups are watched now (read when
    scraped); ``start(address, port)`` serves them."""

    def __init__(self, watched: Callable[[], int] | None = None) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise CgoomError("[metrics] needs prometheus_client: pip install "
                             "'cgoom[metrics]'") from exc
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.incidents = prom.Counter(
            "cgoom_incidents", "Incidents handled, by rule and trigger kind.",
            ["rule", "trigger", "dry_run"], registry=r)
        self.kills = prom.Counter(
            "cgoom_kills", "Victims killed or terminated, by rule, policy and action.",
            ["rule", "policy", "action"], registry=r)
        self.actions = prom.Counter(
            "cgoom_actions", "Actions taken (each outcome), by rule, action and result.",
            ["rule", "action", "result"], registry=r)
        self.kernel_kills = prom.Counter(
            "cgoom_kernel_oom_kills", "OOM kills by the kernel's own OOM killer (from "
            "/dev/kmsg), anywhere on the machine.", registry=r)
        self.shadow = prom.Counter(
            "cgoom_shadow_decisions", "Dry runs' decisions answered by a kernel OOM kill in "
            "their domain, by rule and whether the kernel killed what cgoom would have.",
            ["rule", "agreed"], registry=r)
        self.fallbacks = prom.Counter(
            "cgoom_fallbacks", "Decisions made by the fallback because the rule's policy "
            "failed, hung or lied.", ["rule"], registry=r)
        self.errors = prom.Counter(
            "cgoom_incident_errors", "Incidents that failed (recorded, not lost).", ["rule"],
            registry=r)
        self.decision = prom.Histogram(
            "cgoom_decision_seconds", "Time the policy took to decide.", ["rule"],
            buckets=BUCKETS, registry=r)
        self.to_kill = prom.Histogram(
            "cgoom_notification_to_kill_seconds", "From the kernel's notification read to "
            "the kill syscall.", ["rule"], buckets=BUCKETS, registry=r)
        self.to_gone = prom.Histogram(
            "cgoom_notification_to_gone_seconds", "From the kernel's notification read to "
            "the victim confirmed gone (populated 0 or its pidfd readable).", ["rule"],
            buckets=BUCKETS, registry=r)
        self.reloads = prom.Counter(
            "cgoom_reloads", "Configuration reloads (SIGHUP), by result.", ["result"],
            registry=r)
        self.last_reload = prom.Gauge(
            "cgoom_last_reload_timestamp_seconds", "When the configuration was last "
            "applied (start or reload), seconds since the epoch.", registry=r)
        self.last_reload.set(time.time())
        self.stall_kills = prom.Counter(
            "cgoom_stall_watchdog_actions", "Times the stall watchdog acted because the "
            "event loop had stalled.", registry=r)
        if watched is not None:
            gauge = prom.Gauge("cgoom_watched_cgroups", "Cgroups watched now.", registry=r)
            gauge.set_function(lambda: float(watched()))
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        #: Connections closed at once because MAX_CONNECTIONS were being served.
        self.turned_away = 0

    async def astart(self, address: str, port: int) -> None:
        """Serve ``/metrics`` on ``address:port`` from the running loop."""
        try:
            self._server = await asyncio.start_server(self._serve, address, port,
                                                      limit=MAX_REQUEST)
        except OSError as exc:
            raise CgoomError(f"[metrics] cannot listen on {address}:{port}: "
                             f"{exc.strerror}") from exc

    @property
    def port(self) -> int | None:
        """The port served (the one the system chose, for port 0)."""
        if self._server is None or not self._server.sockets:
            return None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= MAX_CONNECTIONS or task is None:
            self.turned_away += 1
            writer.transport.abort()
            return
        self._connections.add(task)
        try:
            async with asyncio.timeout(TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
                parts = head.split(b"\r\n", 1)[0].split()
                if len(parts) == 3 and parts[0] == b"GET" and parts[1].split(b"?")[0] in (
                        b"/metrics", b"/"):
                    body = self._prom.generate_latest(self.registry)
                    status, kind = b"200 OK", self._prom.CONTENT_TYPE_LATEST.encode()
                else:
                    body, status, kind = b"not found\n", b"404 Not Found", b"text/plain"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind
                             + b"\r\nContent-Length: " + str(len(body)).encode()
                             + b"\r\nConnection: close\r\n\r\n" + body)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass  # a scraper that stalled, went or sent too much: dropped
        finally:
            self._connections.discard(task)
            writer.close()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._connections, return_exceptions=True)

    def record(self, record: Record) -> None:
        """Count one record the handler delivered, as the record counts itself
        (``failed``, ``fell_back``, ``kills``): the handler's statistics read the same."""
        if isinstance(record, KernelOomKill):
            self.kernel_kills.inc()
            return
        if isinstance(record, ShadowVerdict):
            self.shadow.labels(record.rule, str(record.agreed).lower()).inc()
            return
        rule, t = record.rule, record.timings
        self.incidents.labels(rule, record.trigger.kind, str(record.dry_run).lower()).inc()
        if record.failed:
            self.errors.labels(rule).inc()
        elif record.fell_back:
            self.fallbacks.labels(rule).inc()
        self.decision.labels(rule).observe(t.decision_ms / 1000)
        if t.kill_ms is not None:
            self.to_kill.labels(rule).observe(t.kill_ms / 1000)
        if t.confirmed_ms is not None:
            self.to_gone.labels(rule).observe(t.confirmed_ms / 1000)
        for action in record.actions:
            self.actions.labels(rule, action.action, "ok" if action.ok else "failed").inc()
            if action.ok and action.action.startswith(KILLING):
                self.kills.labels(rule, record.decision.policy, action.action).inc()

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("applied" if ok else "refused").inc()
        if ok:
            self.last_reload.set(time.time())
