"""``GET /session/new`` on the front door's own path, without the ASGI stack.

Every new session starts with a token request; through hypercorn and quart
it costs more server CPU than the WebSocket upgrade and the match together
(BENCHMARKS.md). The front door asks ``route`` about each connection's
first request head; ``/session/new`` is answered here with a response built
directly as bytes, then the connection is closed (``Connection: close``: a
browser opens a new connection for the WebSocket anyway).

``session_answer`` is the one place that decides the answer (ban 403, rate
limit 429, else a token): the quart route (``web.py``, used for a
``/session/new`` that arrives later on a kept-alive connection) calls it
too, so both paths give the same JSON, headers, limits and errors.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable
from functools import partial
from http import HTTPStatus
from typing import Any

import msgspec
import trio

from omiro_trio.admission import RequestHead, websocket_client
from omiro_trio.context import ServerContext
from omiro_trio.errors import BackendUnavailable
from omiro_trio.httpstream import ReplayStream

SESSION_PATH = "/session/new"
WRITE_TIMEOUT_S = 10.0

# The headers every HTTP answer carries (web.py adds the same to quart's).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(self), microphone=(self), geolocation=()",
}

_encoder = msgspec.json.Encoder(order="sorted")  # as quart's jsonify: sorted keys, compact

Handler = Callable[[trio.abc.Stream, RequestHead], Awaitable[None]]


async def session_answer(ctx: ServerContext, ip: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The status, JSON body and extra headers answering ``/session/new`` from ``ip``."""
    ban = await ctx.backend.ban_for(ip)
    if ban is not None:
        body = {"error": "banned", "message": "this address is banned", "until": ban.until}
        return 403, body, {}
    retry = await ctx.backend.hit_rate_limit(
        f"sessions:{ip}", ctx.config.limits.sessions_per_ip_per_minute, 60.0
    )
    if retry is not None:
        seconds = max(1, int(retry + 0.999))
        body = {
            "error": "rate_limited",
            "message": "too many new sessions; try again later",
            "retry_after": seconds,
        }
        return 429, body, {"Retry-After": str(seconds)}
    issued = ctx.signer.issue(ctx.wall())
    ctx.metrics.sessions_issued.inc()
    body = {
        "token": issued.token,
        "session_id": issued.session_id,
        "expires_at": issued.expires_at,
    }
    return 200, body, {"Cache-Control": "no-store"}


def route(ctx: ServerContext, head: RequestHead) -> Handler | None:
    """The fast handler for this request head, or None (hypercorn serves it)."""
    if head.method == "GET" and head.target.split("?", 1)[0] == SESSION_PATH:
        return partial(serve_session_new, ctx)
    return None


_SECURITY_LINES = "".join(f"{name}: {value}\r\n" for name, value in SECURITY_HEADERS.items())
_date = (0, "")  # (unix second, its HTTP date): one formatting a second


def _http_date() -> str:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, usegmt=True))
    return _date[1]


def render(status: int, body: dict[str, Any], headers: dict[str, str]) -> bytes:
    """A complete HTTP/1.1 response with a JSON body; the connection closes after it."""
    payload = _encoder.encode(body) + b"\n"
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n"
        f"date: {_http_date()}\r\n"
        f"connection: close\r\n{extra}{_SECURITY_LINES}\r\n"
    )
    return head.encode("latin-1") + payload


async def serve_session_new(ctx: ServerContext, stream: trio.abc.Stream, head: RequestHead) -> None:
    """Answer one ``GET /session/new`` on ``stream`` (the front door closes it)."""
    # The client (address group) by the same rules as the quart route's.
    try:
        status, body, headers = await session_answer(ctx, websocket_client(ctx, stream, head))
    except BackendUnavailable:  # as web.py's error handler answers it
        status, headers = 503, {}
        body = {
            "error": "unavailable",
            "message": "the backend is not answering; try again shortly",
        }
    data = render(status, body, headers)
    if isinstance(stream, ReplayStream):
        data = stream.send_nowait(data)  # usually all of it: no deadline to set
    if not data:
        return
    with trio.move_on_after(WRITE_TIMEOUT_S):
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
