"""Prometheus metrics of one server, in a registry of its own.

A registry per server (not the global default) keeps tests that start many
servers in one process independent.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from omiro_trio.budgets import Budget

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Time from match_found to the first media: most calls take 0.3-3 s; past
# 30 s the person has usually given up.
CONNECT_BUCKETS_S = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 30.0, 60.0)


class Metrics:
    """The counters and gauges the hub and the web layer update."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge(
            "omiro_connections", "Open WebSocket sessions on this server", registry=r
        )
        self.sessions_issued = Counter(
            "omiro_sessions_issued", "Session tokens issued by /session/new", registry=r
        )
        self.matches = Counter("omiro_matches", "Matches formed by this server", registry=r)
        self.relayed = Counter(
            "omiro_relayed_messages", "Messages relayed to a partner", ["op"], registry=r
        )
        self.protocol_errors = Counter(
            "omiro_protocol_errors", "Client frames answered with an error", ["code"], registry=r
        )
        self.closes = Counter(
            "omiro_socket_closes",
            "Sockets closed by the server, by close code",
            ["code"],
            registry=r,
        )
        self.rejections = Counter(
            "omiro_handshake_rejections",
            "WebSocket upgrades refused, by HTTP status",
            ["status"],
            registry=r,
        )
        self.connection_failures = Counter(
            "omiro_connection_failures",
            "Connections ended by an unexpected error (logged with its traceback)",
            registry=r,
        )
        self.connections_shed = Counter(
            "omiro_connections_shed",
            "TCP connections closed at once: their client had server.connections_per_ip open",
            registry=r,
        )
        self.accept_errors = Counter(
            "omiro_accept_errors",
            "Times accepting a connection failed for lack of file descriptors or memory",
            registry=r,
        )
        self.background_failures = Counter(
            "omiro_background_failures",
            "Failures of background tasks (logged, then retried)",
            ["task"],
            registry=r,
        )
        self.budget_exceeded = Counter(
            "omiro_budget_exceeded",
            "Connections or requests stopped at one of their budgets (docs/security.md)",
            ["budget"],
            registry=r,
        )
        self.reports = Counter("omiro_reports", "Reports received", registry=r)
        self.autobans = Counter("omiro_autobans", "Addresses banned for being reported", registry=r)
        self.alerts = Counter(
            "omiro_alerts",
            "Alerts to the webhook by kind and outcome (sent, failed after retries, dropped)",
            ["kind", "outcome"],
            registry=r,
        )
        self.alert_attempts_failed = Counter(
            "omiro_alert_attempts_failed",
            "Webhook deliveries that failed (each attempt)",
            registry=r,
        )
        self.waiting = Gauge(
            "omiro_waiting", "Sessions waiting for a partner (service-wide)", registry=r
        )
        self.online = Gauge("omiro_online", "Sessions online (service-wide)", registry=r)
        self.calls = Counter(
            "omiro_calls",
            "Call outcomes reported by the pages (one per side per video match)",
            ["outcome", "path"],
            registry=r,
        )
        self.call_connect_seconds = Histogram(
            "omiro_call_connect_seconds",
            "Time from match_found to the first media of connected calls",
            ["path"],
            buckets=CONNECT_BUCKETS_S,
            registry=r,
        )
        # Every series exists from the start, so rates and ratios are defined at once.
        for outcome, path in (("connected", "direct"), ("connected", "relay"), ("failed", "none")):
            self.calls.labels(outcome, path)
        for path in ("direct", "relay"):
            self.call_connect_seconds.labels(path)
        for budget in Budget:
            self.budget_exceeded.labels(budget.value)

    def exceeded(self, budget: Budget) -> None:
        """Count one refusal at ``budget``."""
        self.budget_exceeded.labels(budget.value).inc()

    def count_call(self, outcome: str, path: str | None, connect_ms: int | None) -> None:
        """Count one validated ``call_outcome`` (``path`` is ``None`` for a failed call)."""
        self.calls.labels(outcome, path or "none").inc()
        if path is not None and connect_ms is not None:
            self.call_connect_seconds.labels(path).observe(connect_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
