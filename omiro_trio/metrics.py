"""Prometheus metrics of one server, in a registry of its own.

A registry per server (not the global default) keeps tests that start many
servers in one process independent.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


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
        self.reports = Counter("omiro_reports", "Reports received", registry=r)
        self.autobans = Counter("omiro_autobans", "Addresses banned for being reported", registry=r)
        self.waiting = Gauge(
            "omiro_waiting", "Sessions waiting for a partner (service-wide)", registry=r
        )
        self.online = Gauge("omiro_online", "Sessions online (service-wide)", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
