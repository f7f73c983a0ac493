"""Answers the HTTP layer writes itself: JSON bodies, one renderer, one set of headers.

Every answer that does not come from the ASGI app (an endpoint's, a
refusal at the door, a refused WebSocket upgrade) is a ``JsonAnswer``
rendered by ``render``; the app's own error answers are built from the same
value (``web.py``), and ``SECURITY_HEADERS`` go on every answer of either.
Bodies are JSON with sorted keys, compact, and a final newline, as quart's
``jsonify`` writes them, so that an answer reads the same whoever sent it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus
from typing import Any, Final

import msgspec

from omiro_trio.budgets import MAX_HEAD_BYTES
from omiro_trio.http.dates import http_date

__all__ = [
    "SECURITY_HEADERS",
    "HttpError",
    "JsonAnswer",
    "error",
    "render",
]

SECURITY_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(self), microphone=(self), geolocation=()",
}
"""The headers every HTTP answer carries."""


class HttpError(StrEnum):
    """The ``error`` of a JSON error answer (docs/protocol.md, "HTTP")."""

    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"  # signed in, but the role (or a missing CSRF token) does not allow it
    CONFLICT = "conflict"  # someone else acted first (a report decided or claimed)
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    REQUEST_HEAD_TOO_LARGE = "request_head_too_large"
    HTTP_VERSION_NOT_SUPPORTED = "http_version_not_supported"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    BANNED = "banned"
    RATE_LIMITED = "rate_limited"
    INVALID_TOKEN = "invalid_token"
    ALREADY_CONNECTED = "already_connected"
    DRAINING = "draining"
    UNAVAILABLE = "unavailable"  # the shared backend (Redis) is not answering: try again
    GATE = "gate"  # the entry gate asks for something (401) or refused what was brought (403)
    PAUSED = "paused"  # raid mode: new sessions are paused for a while (503)
    POW = "pow"  # proof of work asked for (401) or what was brought refused (403)


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """A complete answer: its status, its JSON body and its own headers."""

    status: HTTPStatus
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()

    def encoded_body(self) -> bytes:
        return _encoder.encode(self.body) + b"\n"


def error(
    status: HTTPStatus,
    code: HttpError,
    message: str,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    **fields: Any,
) -> JsonAnswer:
    """An error answer: ``{"error": code, "message": message, **fields}``."""
    return JsonAnswer(status, {"error": code.value, "message": message, **fields}, headers)


def foreign_error(status: int, code: str, message: str) -> JsonAnswer:
    """An error answer whose code another library named (werkzeug's exceptions)."""
    return JsonAnswer(HTTPStatus(status), {"error": code, "message": message})


_encoder = msgspec.json.Encoder(order="sorted")  # as quart's jsonify: sorted keys, compact
_SECURITY_LINES = "".join(f"{name}: {value}\r\n" for name, value in SECURITY_HEADERS.items())


def render(answer: JsonAnswer, *, keep_alive: bool = False) -> bytes:
    """``answer`` as a complete HTTP/1.1 response.

    Unless ``keep_alive``, it says ``connection: close``: the connection
    ends after it.
    """
    payload = answer.encoded_body()
    extra = "".join(f"{name}: {value}\r\n" for name, value in answer.headers)
    status = answer.status
    ending = "" if keep_alive else "connection: close\r\n"
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n"
        f"date: {http_date()}\r\n"
        f"{ending}{extra}{_SECURITY_LINES}\r\n"
    )
    return head.encode("latin-1") + payload


def head_too_large() -> JsonAnswer:
    """The answer to a request head over ``MAX_HEAD_BYTES``."""
    return error(
        HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
        HttpError.REQUEST_HEAD_TOO_LARGE,
        f"the request head is over {MAX_HEAD_BYTES} bytes",
    )
