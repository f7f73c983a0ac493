"""``serve(config)``: the whole service in one ``trio.run``.

Task tree::

    serve
     └─ backend (async with)              closed last
         └─ nursery
             ├─ bus listener              backend.run_bus → hub.on_bus (restarted on failure;
             │                            gaps → hub.request_sync)
             ├─ janitor                   backend.sweep → hub.partners_gone (failures logged)
             ├─ resync                    run_resync: local sessions checked against the backend
             ├─ gc tuning                 freezes long-lived objects (gc_tuning.py)
             ├─ WebSocket engine          one flusher and one keepalive sweeper for all sockets
             ├─ hypercorn lifespan        quart-trio startup/shutdown
             └─ front door                accepts; each connection served by the HTTP layer
                 └─ connection handlers   each behind front.py's per-connection boundary:
                                          http/ routes each request (/ws → connection.py,
                                          /session/new → sessions.py, the rest → hypercorn)

Shutdown (``stop`` set, e.g. by SIGINT/SIGTERM): readiness goes 503, every
client gets ``server_draining``, new sockets are refused; sockets still open
after ``drain_grace_s`` are closed with 1012; then the listener, HTTP
connections, lifespan and bus stop, and the backend closes.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.lifespan import Lifespan

from omiro_trio.addresses import Clients, base_url
from omiro_trio.admission import Admission
from omiro_trio.alerts import AlertPolicy, Alerts
from omiro_trio.backends.base import Backend
from omiro_trio.backends.memory import open_memory_backend
from omiro_trio.codes import CloseCode
from omiro_trio.config import Config
from omiro_trio.connection import serve_connection
from omiro_trio.context import ServerContext
from omiro_trio.diagnostics import install_from_env as install_stall_monitor
from omiro_trio.diagnostics import serve_memory_snapshots
from omiro_trio.errors import BackendUnavailable, ConfigError
from omiro_trio.front import FrontDoor
from omiro_trio.gate.gates import build_gate
from omiro_trio.gate.pow import CHALLENGE_PATH, PowSwitch, ProofOfWork
from omiro_trio.gate.raid import RaidSwitch
from omiro_trio.gc_tuning import run_gc_tuning
from omiro_trio.http.answers import JsonAnswer
from omiro_trio.http.deadlines import DEFAULT_DEADLINES, Deadlines
from omiro_trio.http.heads import RequestHead
from omiro_trio.http.routes import Endpoint, Router
from omiro_trio.http.serve import HttpServer
from omiro_trio.hub import Hub
from omiro_trio.metrics import Metrics
from omiro_trio.moderation import ModerationDesk, ModerationPolicy, run_activity
from omiro_trio.protocol import Limits
from omiro_trio.reports import ReportPolicy
from omiro_trio.resync import run_resync
from omiro_trio.seats import Seats
from omiro_trio.session_core import Rates, SessionRules
from omiro_trio.sessions import SESSION_PATH, NewSession
from omiro_trio.tokens import TicketSigner, TokenSigner, new_secret
from omiro_trio.web import create_app
from omiro_trio.wsengine import Engine

log = logging.getLogger(__name__)

JANITOR_INTERVAL_S = 10.0
BUS_RETRY_MIN_S = 0.05
BUS_RETRY_MAX_S = 2.0
CLOSE_WAIT_S = 5.0
HTTP_GRACE_S = 2.0
LISTEN_BACKLOG = 1024
DAY_S = 86400.0


@dataclass(frozen=True, slots=True)
class Running:
    """What ``serve`` reports once it accepts connections."""

    url: str  # e.g. http://127.0.0.1:8080
    port: int
    context: ServerContext


@dataclass(frozen=True, slots=True)
class BackendTimings:
    """What the configuration gives the backend, memory or Redis alike."""

    interest_timeout_s: float  # the matching rules: how long interests are tried alone
    rematch_cooldown_s: float  # the matching rules: how soon a pair may meet again
    block_ttl_s: float  # how long a report keeps a pair apart
    ipv6_prefix: int  # the size of an IPv6 client, for bans
    report_retention_s: float  # how long reports (with their transcripts) are kept
    audit_retention_s: float  # how long the moderators' audit log is kept


@dataclass(frozen=True, slots=True)
class Parts:
    """What the configuration gives each part of the server, worked out once (``parts``)."""

    session: SessionRules  # every session's core (connection.py)
    reports: ReportPolicy  # the hub's report desk
    moderation: ModerationPolicy  # the moderators' desk
    alerts: AlertPolicy | None  # the webhook, if one is configured
    nexts_per_minute: int  # the hub: skips a session may spend a minute
    backend: BackendTimings  # the backend's timings (``open_backend``)
    ticket_ttl_s: float  # the hub's seats: how long a claim is remembered


def parts(config: Config) -> Parts:
    """Turn ``config`` into the parameters of the server's parts: the one place that does."""
    limits = config.limits
    return Parts(
        session=SessionRules(
            limits=Limits(
                max_chat_length=limits.max_chat_length,
                max_frame_bytes=config.server.max_frame_bytes,
            ),
            rates=Rates(limits.messages_per_second, limits.message_burst),
            reconnect_after_ms=config.server.reconnect_after_ms,
            lost_after_s=config.server.lost_after_s,
            resume_grace_s=config.server.resume_grace_s,
        ),
        reports=ReportPolicy(
            per_reporter_per_hour=limits.reports_per_hour,
            autoban_reporters=config.reports.autoban_reporters,
            autoban_window_s=config.reports.autoban_window_s,
            autoban_s=config.reports.autoban_s,
        ),
        moderation=ModerationPolicy(
            moderator_max_ban_s=config.moderation.moderator_max_ban_s,
            claim_s=config.moderation.claim_s,
        ),
        alerts=None
        if not config.alerts.webhook_url
        else AlertPolicy(
            webhook_url=config.alerts.webhook_url,
            secret=config.alerts.secret,
            reports_per_hour=config.alerts.reports_per_hour,
            timeout_s=config.alerts.timeout_s,
            retries=config.alerts.retries,
        ),
        nexts_per_minute=limits.nexts_per_minute,
        backend=BackendTimings(
            interest_timeout_s=config.matchmaking.interest_timeout_s,
            rematch_cooldown_s=config.matchmaking.rematch_cooldown_s,
            # A block outlives both sessions: a session lives at most its
            # token's life plus one connection.
            block_ttl_s=max(config.session.token_ttl_s * 2, DAY_S),
            ipv6_prefix=config.server.ipv6_prefix,
            report_retention_s=config.reports.retention_days * DAY_S,
            audit_retention_s=config.moderation.audit_retention_days * DAY_S,
        ),
        ticket_ttl_s=config.session.ticket_ttl_s,
    )


@asynccontextmanager
async def open_backend(
    config: Config, *, server_id: str | None = None, replaces: str | None = None
) -> AsyncIterator[Backend]:
    """Open the configured backend; it is closed when the block exits.

    With Redis, ``server_id`` names this server in the registry (else a
    random id), and ``replaces`` names a server known to be dead (a worker
    this one replaces): it is swept at once.
    """
    timings = dataclasses.asdict(parts(config).backend)
    if config.backend.kind == "memory":
        async with open_memory_backend(**timings) as backend:
            yield backend
    else:
        from omiro_trio.backends.redis import open_redis_backend  # imports coredis

        redis = config.redis
        opened = False
        try:
            async with open_redis_backend(
                url=redis.url,
                key_prefix=redis.key_prefix,
                pool_size=redis.pool_size,
                heartbeat_s=redis.heartbeat_s,
                dead_after_s=redis.dead_after_s,
                timeout_s=redis.timeout_s,
                **timings,
                server_id=server_id,
                replaces=replaces,
            ) as backend:
                opened = True
                yield backend
        except BackendUnavailable as exc:
            if opened:
                raise
            raise ConfigError(f"redis.url: cannot reach Redis at start ({exc})") from None


def _hyper_config(deadlines: Deadlines) -> HyperConfig:
    hyper = HyperConfig()
    hyper.accesslog = None
    hyper.errorlog = logging.getLogger("omiro.http")
    hyper.keep_alive_timeout = deadlines.keepalive_s
    hyper.graceful_timeout = HTTP_GRACE_S
    hyper.include_server_header = False
    return hyper


async def _janitor(
    backend: Backend,
    metrics: Metrics,
    hub: Hub | None = None,
    interval_s: float = JANITOR_INTERVAL_S,
) -> None:
    """Sweep at once, then every ``interval_s``; tell the partners of a dead server's sessions.

    A failed sweep is logged and tried again.
    """
    first = True
    while True:
        if not first:
            await trio.sleep(interval_s)
        first = False
        try:
            ended = await backend.sweep()
            if hub is not None and ended:
                await hub.partners_gone(ended)
        except BackendUnavailable as exc:
            log.warning("sweep failed: %s", exc)
        except Exception:
            metrics.background_failures.labels("janitor").inc()
            log.exception("the janitor's sweep failed; trying again in %.0f s", interval_s)


async def open_listeners(host: str, port: int, *, reuse_port: bool) -> list[trio.SocketListener]:
    """Listen on ``host:port``; with ``reuse_port``, share the port with sibling workers."""
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host)
    family, kind, proto, _, address = (
        await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    )[0]
    sock = trio.socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        await sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return [trio.SocketListener(sock)]


async def _run_bus(
    backend: Backend,
    hub: Hub,
    metrics: Metrics,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen to the bus until cancelled; restart the listener when it fails.

    One message that cannot be applied is logged and dropped; a listener
    that fails is logged and restarted after a short, capped backoff.
    Reports started once the first listener is.
    """

    async def deliver(message: bytes) -> None:
        try:
            await hub.on_bus(message)
        except Exception:
            metrics.background_failures.labels("bus_message").inc()
            log.exception("a bus message could not be applied; dropped")

    backoff = BUS_RETRY_MIN_S
    started = False
    while True:
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    partial(
                        backend.run_bus, deliver, on_gap=hub.request_sync, views=hub.local_views
                    )
                )
                if not started:
                    started = True
                    task_status.started()
                backoff = BUS_RETRY_MIN_S
        except* Exception as failure:
            metrics.background_failures.labels("bus").inc()
            log.error("the bus listener failed; restarting it", exc_info=failure)
        await trio.sleep(backoff)
        backoff = min(backoff * 2, BUS_RETRY_MAX_S)


def _session_secret(config: Config) -> bytes:
    """The configured session secret, or a random one for this process."""
    if config.session.secret:
        return config.session.secret.encode()
    log.warning(
        "no session.secret configured: using a random one for this process "
        "(tokens and gate passes die with it; a cluster must share one secret)"
    )
    return new_secret()


def _signers(secret: bytes, config: Config) -> tuple[TokenSigner, TicketSigner]:
    """The token and ticket signers, keyed with the session secret."""
    session = config.session
    return TokenSigner(secret, session.token_ttl_s), TicketSigner(secret, session.ticket_ttl_s)


def _new_hub(
    wired: Parts,
    backend: Backend,
    metrics: Metrics,
    signer: TokenSigner,
    alerts: Alerts | None = None,
) -> Hub:
    """The hub, with the report, autoban, skip and resume rules from the config, and the
    pair tags of ``match_found`` keyed with the session secret."""
    seats = Seats(grace_s=wired.session.resume_grace_s, keep_s=wired.ticket_ttl_s)
    return Hub(
        backend,
        metrics,
        reports=wired.reports,
        watcher=alerts,
        nexts_per_minute=wired.nexts_per_minute,
        pair_tag=signer.pair_tag,
        seats=seats,
    )


async def _start_services(services: trio.Nursery, ctx: ServerContext) -> Engine:
    """Start the background services in ``services``; returns the running engine.

    The bus listener, the janitor, the hub's resync, GC tuning, the
    (diagnostic) memory snapshots and the WebSocket engine's flusher and
    keepalive sweeper.
    """
    config, backend, hub, metrics = ctx.config, ctx.backend, ctx.hub, ctx.metrics
    await services.start(_run_bus, backend, hub, metrics)
    # Often enough that a dead server is swept within its dead_after_s plus
    # one heartbeat.
    janitor_s = min(JANITOR_INTERVAL_S, config.redis.heartbeat_s)
    services.start_soon(_janitor, backend, metrics, hub, janitor_s)
    services.start_soon(run_resync, hub)
    if ctx.pow is not None:
        await services.start(ctx.pow.switch.run)
    services.start_soon(hub.run_seat_drops)
    services.start_soon(run_activity, backend, metrics, time.time)
    engine = Engine(config.server.idle_timeout_s)
    services.start_soon(partial(run_gc_tuning, population=engine.__len__))
    services.start_soon(serve_memory_snapshots)  # only with OMIRO_DEBUG_TRACEMALLOC
    await services.start(engine.run)
    return engine


def _admission(ctx: ServerContext) -> Admission:
    """The handshake checks, given what they need of the server (not the server)."""
    config, hub = ctx.config, ctx.hub
    return Admission(
        ctx.backend,
        ctx.signer,
        allowed_origins=config.server.allowed_origins,
        sockets_per_ip=config.limits.sockets_per_ip,
        draining=lambda: hub.draining,
        release_claim=hub.release_claim,
        wall=ctx.wall,
    )


def _router(ctx: ServerContext) -> Router:
    """The HTTP layer's own endpoints: the requests it answers without the ASGI app."""
    new_session = NewSession(
        ctx.backend,
        ctx.signer,
        ctx.metrics,
        per_minute=ctx.config.limits.sessions_per_ip_per_minute,
        wall=ctx.wall,
        gate=ctx.gate,
        raid=ctx.raid,
        pow=ctx.pow,
    )
    endpoints: dict[tuple[str, str], Endpoint] = {("GET", SESSION_PATH): new_session}
    if ctx.pow is not None:
        endpoints["GET", CHALLENGE_PATH] = _challenge_endpoint(ctx.pow)
    return Router(endpoints)


def _challenge_endpoint(pow: ProofOfWork) -> Endpoint:
    """``GET /gate/challenge`` (docs/protocol.md, "Proof of work")."""

    async def challenge(head: RequestHead, client: str) -> JsonAnswer:
        return await pow.challenge_answer()

    return challenge


async def serve(
    config: Config,
    stop: trio.Event,
    *,
    deadlines: Deadlines = DEFAULT_DEADLINES,
    reuse_port: bool = False,
    server_id: str | None = None,
    replaces: str | None = None,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run Omiro until ``stop`` is set, then drain and return.

    Reports a ``Running`` (bound URL and port) through ``task_status`` once
    connections are accepted. With ``reuse_port`` the port is shared
    (``SO_REUSEPORT``) with other workers of ``omiro serve --workers``:
    this worker listens only once it is ready to accept, so the kernel never
    queues a connection for a worker still starting. ``deadlines`` bound
    every wait of an HTTP connection (the defaults are docs/security.md's).
    ``server_id`` and ``replaces``: see ``open_backend``.
    """
    install_stall_monitor()  # only with OMIRO_DEBUG_STALLS_MS (diagnostics.py)
    secret = _session_secret(config)
    signer, tickets = _signers(secret, config)
    metrics = Metrics()
    wired = parts(config)
    wired = dataclasses.replace(wired, session=dataclasses.replace(wired.session, tickets=tickets))
    async with open_backend(config, server_id=server_id, replaces=replaces) as backend:
        alerts = None if wired.alerts is None else Alerts(wired.alerts, backend, metrics)
        hub = _new_hub(wired, backend, metrics, signer, alerts)
        ctx = ServerContext(
            config=config,
            backend=backend,
            hub=hub,
            signer=signer,
            metrics=metrics,
            rules=wired.session,
            moderation=ModerationDesk(backend, wired.moderation, put_ban=hub.ban, wall=time.time),
            gate=build_gate(config.gate, secret, backend),
            raid=(raid := RaidSwitch(backend)),
            pow=ProofOfWork(config.gate, secret, backend, PowSwitch(config.gate, backend, raid)),
        )
        clients = Clients(
            ctx.trusted_proxies, config.server.client_ip_header, config.server.ipv6_prefix
        )
        app = ASGIWrapper(create_app(ctx, clients))
        hyper = _hyper_config(deadlines)
        lifespan_state: dict[str, object] = {}
        lifespan = Lifespan(app, hyper, lifespan_state)
        async with trio.open_nursery() as services:
            engine = await _start_services(services, ctx)
            if alerts is not None:
                await services.start(alerts.run)
            await services.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            listeners = await open_listeners(
                config.server.host, config.server.port, reuse_port=reuse_port
            )
            sockname = listeners[0].socket.getsockname()
            running = Running(base_url(config.server.host, sockname[1]), sockname[1], ctx)
            http = HttpServer(
                _router(ctx),
                app,
                hyper,
                lifespan_state,
                partial(serve_connection, ctx, engine, _admission(ctx), clients),
                clients=clients,
                deadlines=deadlines,
                on_budget=metrics.exceeded,
            )
            door = FrontDoor(
                http.serve,
                metrics=metrics,
                connections_per_ip=config.server.connections_per_ip,
                ipv6_prefix=config.server.ipv6_prefix,
                trusted_proxies=ctx.trusted_proxies,
            )
            async with trio.open_nursery() as connections:
                accepting = trio.CancelScope()

                async def accept() -> None:
                    with accepting:
                        await door.serve(listeners, handler_nursery=connections)

                connections.start_soon(accept)
                log.info("Omiro listening on %s (backend: %s)", running.url, config.backend.kind)
                task_status.started(running)
                await stop.wait()
                await _drain(hub, config.server.drain_grace_s)
                accepting.cancel()
                for listener in listeners:
                    await listener.aclose()
                await http.terminate()
                connections.cancel_scope.deadline = trio.current_time() + HTTP_GRACE_S
            await lifespan.wait_for_shutdown()
            services.cancel_scope.cancel()
    log.info("Omiro stopped")


async def _drain(hub: Hub, grace_s: float) -> None:
    log.info("draining: telling %d clients to reconnect elsewhere", len(hub.sessions))
    hub.start_drain()
    with trio.move_on_after(grace_s):
        await hub.wait_empty()
    if hub.sessions:
        log.info("closing %d sockets that are still open", len(hub.sessions))
        hub.close_all(CloseCode.RESTARTING, "server restarting")
        with trio.move_on_after(CLOSE_WAIT_S):
            await hub.wait_empty()
