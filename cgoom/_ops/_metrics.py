"""Prometheus metrics for ``cgoom run`` (``[metrics]`` in the configuration): counters and
histograms fed from the handler's records, served over HTTP by prometheus_client (the
``metrics`` extra) from its own thread, bound to localhost unless configured otherwise.

Owns nothing of the engine: it only reads the records the handler delivers (on the loop, a
few microseconds each) and the handler's and watcher's statistics when scraped. Its own
registry, not prometheus_client's global one, so an application importing cgoom keeps its
own metrics apart. Names follow the Prometheus conventions: ``cgoom_..._total`` for
counters, ``_seconds`` for durations (https://prometheus.io/docs/practices/naming/).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .._engine._incident import KILLING, IncidentRecord
from .._errors import CgoomError
from .._kernel._kmsg import KernelOomKill

Record = IncidentRecord | KernelOomKill

#: Buckets for decision and notification-to-kill times: cgoom decides in milliseconds, and
#: anything beyond a second is the peers' territory (oomd 1.3-1.8 s).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

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
        self._server: Any = None

    def start(self, address: str, port: int) -> None:
        """Serve ``/metrics`` on ``address:port`` from prometheus_client's thread."""
        try:
            self._server, _thread = self._prom.start_http_server(
                port, addr=address, registry=self.registry)
        except OSError as exc:
            raise CgoomError(f"[metrics] cannot listen on {address}:{port}: "
                             f"{exc.strerror}") from exc

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def record(self, record: Record) -> None:
        """Count one record the handler delivered, as the record counts itself
        (``failed``, ``fell_back``, ``kills``): the handler's statistics read the same."""
        if isinstance(record, KernelOomKill):
            self.kernel_kills.inc()
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
