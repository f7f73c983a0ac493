"""Where a request goes: one ``Router.route(head)`` for every request of a connection.

The front door asks it about a connection's first request, and
``HttpStream`` about every later one on a kept-alive connection, so "where
is this request handled?" has one answer:

1. A ``GET /ws`` WebSocket upgrade goes to the WebSocket path
   (``Upstream.WEBSOCKET``: ``connection.py``), whose handshake reads it.
2. What the ASGI app must not see is refused at the door (``Refusal``): a
   version other than HTTP/1 (505), ``CONNECT`` (405), an ``Upgrade``
   anywhere else (400).
3. A request for one of the router's endpoints (``Answer``: for example
   ``GET /session/new``, ``sessions.py``) is answered by the HTTP layer
   itself, without the ASGI stack.
4. Everything else is the ASGI app's (``Upstream.APP``: hypercorn, then
   quart, ``web.py``).

A connection whose first request line is ``GET /ws`` (``reads_itself``) is
routed on that line alone: the WebSocket handshake parses its head, once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from typing import Final

from omiro_trio.http.answers import HttpError, JsonAnswer, error
from omiro_trio.http.heads import RequestHead

__all__ = ["WS_PATH", "Answer", "Endpoint", "Refusal", "Route", "Router", "Upstream"]

WS_PATH: Final = "/ws"

Endpoint = Callable[[RequestHead, str], Awaitable[JsonAnswer]]
"""Answers one request, given its head and its client (address group).

Never raises for anything the client or the environment does: a backend
that does not answer is an answer too (503)."""


class Upstream(Enum):
    """Who serves a request the HTTP layer does not answer itself."""

    WEBSOCKET = "websocket"  # the WebSocket handshake (connection.py)
    APP = "app"  # hypercorn and the ASGI app (web.py)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused at the door; the connection closes after the answer."""

    answer: JsonAnswer


@dataclass(frozen=True, slots=True)
class Answer:
    """A request one of the router's endpoints answers."""

    endpoint: Endpoint


Route = Upstream | Refusal | Answer

_VERSION_NOT_SUPPORTED: Final = Refusal(
    error(
        HTTPStatus.HTTP_VERSION_NOT_SUPPORTED,
        HttpError.HTTP_VERSION_NOT_SUPPORTED,
        "only HTTP/1 is served",
    )
)
_CONNECT: Final = Refusal(
    error(HTTPStatus.METHOD_NOT_ALLOWED, HttpError.METHOD_NOT_ALLOWED, "CONNECT is not served")
)
_UPGRADE: Final = Refusal(
    error(
        HTTPStatus.BAD_REQUEST,
        HttpError.BAD_REQUEST,
        f"only {WS_PATH} accepts an upgrade (GET)",
    )
)
_WS_REQUEST_LINE: Final = (f"GET {WS_PATH} ".encode(), f"GET {WS_PATH}?".encode())


class Router:
    """The routing rule of every request.

    Args:
        endpoints: the requests the HTTP layer answers itself, by method
            and path (the target without its query).
    """

    __slots__ = ("_answers",)

    def __init__(self, endpoints: Mapping[tuple[str, str], Endpoint]) -> None:
        self._answers = {key: Answer(endpoint) for key, endpoint in endpoints.items()}

    def route(self, head: RequestHead) -> Route:
        """Where ``head``'s request goes (the module's docstring has the order)."""
        path = head.target.split("?", 1)[0]
        method = head.method
        upgrade = head.headers.get("upgrade")
        if (
            upgrade
            and method == "GET"
            and path == WS_PATH
            and "websocket" in ",".join(upgrade).lower()
        ):
            return Upstream.WEBSOCKET
        if not head.version.startswith("1."):
            # h11 reads any "HTTP/x.y". A later HTTP/1 minor version is read as
            # HTTP/1.1 (RFC 9110, 2.5); another major version (HTTP/2 with prior
            # knowledge, "PRI * HTTP/2.0", among them) would have hypercorn
            # speak a protocol whose budgets are not ours.
            return _VERSION_NOT_SUPPORTED
        if method == "CONNECT":
            # hypercorn would wait for a protocol switch that never comes.
            return _CONNECT
        if upgrade:  # WebSocket elsewhere, h2c: the same
            return _UPGRADE
        return self._answers.get((method, path), Upstream.APP)

    @staticmethod
    def reads_itself(data: bytes) -> bool:
        """Whether a connection's first bytes start a ``GET /ws`` request line.

        Such a head goes, unparsed, to the WebSocket handshake (no h11 on
        that path): it reads the head itself and refuses what is not an
        upgrade.
        """
        return data.startswith(_WS_REQUEST_LINE)
