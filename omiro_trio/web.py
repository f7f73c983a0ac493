"""HTTP routes (quart-trio): the page, sessions, health, stats, metrics.

The WebSocket endpoint is not here: ``front.py`` hands ``/ws`` upgrades to
``connection.py`` before they reach this app. Every error answer is JSON
``{"error": CODE, "message": TEXT}`` (PROTOCOL.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from omiro_trio.addresses import address_group, client_ip
from omiro_trio.admin import register_admin
from omiro_trio.backends.base import Stats
from omiro_trio.budgets import MAX_BODY_BYTES, Budget
from omiro_trio.context import ServerContext
from omiro_trio.errors import BackendUnavailable
from omiro_trio.fastpath import session_answer
from omiro_trio.metrics import CONTENT_TYPE, Metrics
from omiro_trio.responses import json_error, not_found
from omiro_trio.static import Frontend, frontend_dir, load_assets

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(self), microphone=(self), geolocation=()",
}
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def create_app(ctx: ServerContext) -> QuartTrio:
    """The quart-trio app of one server."""
    app = QuartTrio("omiro_trio", static_folder=None)
    # Nothing here takes a body larger than a ban request (budgets.py).
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    frontend = load_assets(frontend_dir(), ctx.config.page, relayed=ctx.config.ice.relayed)
    remote_ip = _remote_ip_of(ctx)
    _add_headers_and_errors(app, ctx.metrics)
    register_admin(app, ctx, remote_ip)
    _add_page(app, frontend)
    _add_sessions(app, ctx, remote_ip)
    _add_health_and_stats(app, ctx)
    return app


def _remote_ip_of(ctx: ServerContext) -> Callable[[], str]:
    """A function giving the client (address group) of the current request."""
    header = ctx.config.server.client_ip_header

    def remote_ip() -> str:
        """The client (address group) of this request: see ``addresses.client_ip``."""
        ip = client_ip(
            request.remote_addr or "unknown",
            request.headers.getlist("X-Forwarded-For"),
            ctx.trusted_proxies,
            request.headers.get(header) if header else None,
        )
        return address_group(ip, ctx.config.server.ipv6_prefix)

    return remote_ip


def _add_headers_and_errors(app: QuartTrio, metrics: Metrics) -> None:
    """Security headers on every answer; errors answered as JSON."""

    @app.after_request
    async def add_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if response.mimetype == "text/html":
            response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        if exc.code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            metrics.exceeded(Budget.BODY)
        code = (exc.name or "error").lower().replace(" ", "_")
        return json_error(exc.code or 500, code, exc.description or code)

    @app.errorhandler(BackendUnavailable)
    async def backend_down(exc: BackendUnavailable) -> Response:
        return json_error(503, "unavailable", "the backend is not answering; try again shortly")


def _add_page(app: QuartTrio, frontend: Frontend) -> None:
    """The page and its assets, from memory, with ETags and compressed bodies (static.py)."""

    @app.get("/")
    @app.get("/<path:filename>")
    async def asset(filename: str = "") -> Response:
        answer = await frontend.answer(
            "/" + filename,
            request.headers.get("Accept-Encoding"),
            request.headers.get("If-None-Match"),
        )
        if answer is None:
            return not_found()
        return Response(
            answer.body,
            status=answer.status,
            content_type=answer.content_type,
            headers=answer.headers,
        )


def _add_sessions(app: QuartTrio, ctx: ServerContext, remote_ip: Callable[[], str]) -> None:
    @app.get("/session/new")
    async def new_session() -> Response:
        # Usually answered by the front door (fastpath.py); this serves a
        # /session/new that comes later on a kept-alive connection.
        status, body, headers = await session_answer(ctx, remote_ip())
        response = jsonify(body)
        response.status_code = status
        for name, value in headers.items():
            response.headers[name] = value
        return response


def _add_health_and_stats(app: QuartTrio, ctx: ServerContext) -> None:
    """``/healthz``, ``/readyz``, ``/stats`` and ``/metrics``."""

    @app.get("/healthz")
    async def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if ctx.hub.draining:
            return json_error(503, "draining", "the server is shutting down")
        try:
            await ctx.backend.ping()
        except BackendUnavailable:
            return json_error(503, "unavailable", "the backend is not answering")
        return jsonify({"status": "ready"})

    async def current_stats() -> Stats:
        """Service-wide counts, also kept in the gauges for /metrics."""
        current = await ctx.backend.stats()
        ctx.metrics.online.set(current.online)
        ctx.metrics.waiting.set(current.waiting)
        return current

    @app.get("/stats")
    async def stats() -> Response:
        current = await current_stats()
        response = jsonify({"online": current.online, "waiting": current.waiting})
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/metrics")
    async def metrics() -> Response:
        await current_stats()
        return Response(ctx.metrics.render(), content_type=CONTENT_TYPE)
