"""The ASGI app's routes (quart-trio): the page, health, stats, metrics, admin.

What the HTTP layer serves itself is not here (``http/routes.py``): ``/ws``
upgrades go to ``connection.py`` and ``/session/new`` is answered by
``sessions.py`` before a request reaches this app. Every error answer is
JSON ``{"error": CODE, "message": TEXT}`` (PROTOCOL.md), built like the
HTTP layer's own (``responses.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from http import HTTPStatus

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from omiro_trio.addresses import Clients
from omiro_trio.admin import Gate, register_admin
from omiro_trio.backends.base import Stats
from omiro_trio.budgets import MAX_BODY_BYTES, Budget
from omiro_trio.console_api import register_console_api
from omiro_trio.context import ServerContext
from omiro_trio.errors import BackendUnavailable
from omiro_trio.gate import EntryRequests
from omiro_trio.gate.admin import register_gate_admin
from omiro_trio.http.answers import SECURITY_HEADERS, HttpError, foreign_error
from omiro_trio.metrics import CONTENT_TYPE, Metrics
from omiro_trio.responses import json_error, json_response, not_found
from omiro_trio.static import Frontend, frontend_dir, load_assets

log = logging.getLogger(__name__)

PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob: mediastream:; "
    "connect-src 'self' ws: wss:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def create_app(ctx: ServerContext, clients: Clients) -> QuartTrio:
    """The quart-trio app of one server; ``clients`` finds a request's client."""
    app = QuartTrio("omiro_trio", static_folder=None)
    # Nothing here takes a body larger than a ban request (budgets.py).
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    frontend = load_assets(frontend_dir(), ctx.config.page, relayed=ctx.config.ice.relayed)
    _add_headers_and_errors(app, ctx.metrics)
    gate = Gate(ctx, _remote_ip_of(clients))
    register_admin(app, ctx, gate)
    register_console_api(app, ctx, gate)
    register_gate_admin(app, ctx, gate)
    ctx.gate.register(app, EntryRequests(gate.client, gate.secure))
    _add_page(app, frontend)
    _add_health_and_stats(app, ctx)
    return app


def _remote_ip_of(clients: Clients) -> Callable[[], str]:
    """A function giving the client (address group) of the current request."""
    header = clients.ip_header

    def remote_ip() -> str:
        """The client (address group) of this request: see ``addresses.client_ip``."""
        return clients.client(
            request.remote_addr or "unknown",
            request.headers.getlist("X-Forwarded-For"),
            request.headers.get(header) if header else None,
        )

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
        return json_response(foreign_error(exc.code or 500, code, exc.description or code))

    @app.errorhandler(BackendUnavailable)
    async def backend_down(exc: BackendUnavailable) -> Response:
        return json_error(
            HTTPStatus.SERVICE_UNAVAILABLE,
            HttpError.UNAVAILABLE,
            "the backend is not answering; try again shortly",
        )


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


def _add_health_and_stats(app: QuartTrio, ctx: ServerContext) -> None:
    """``/healthz``, ``/readyz``, ``/stats`` and ``/metrics``."""

    @app.get("/healthz")
    async def healthz() -> Response:
        return jsonify({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if ctx.hub.draining:
            return json_error(
                HTTPStatus.SERVICE_UNAVAILABLE, HttpError.DRAINING, "the server is shutting down"
            )
        try:
            await ctx.backend.ping()
        except BackendUnavailable:
            return json_error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                HttpError.UNAVAILABLE,
                "the backend is not answering",
            )
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
