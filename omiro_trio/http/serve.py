"""One accepted connection's HTTP: its requests read, routed and served in turn.

``HttpServer.serve`` reads a connection's first head whole (``read_head``:
up to its blank line, within ``Deadlines.head_s``), holds it to its budget
before any parser sees it, and routes it (``Router``, ``routes.py``):

* a first request line ``GET /ws`` goes, as bytes, to the WebSocket path,
  whose handshake parser (``websockets``) reads it once;
* a plain ``GET`` head that needs no h11 (``heads.simple_get``) and that
  one of the router's endpoints answers is answered at once, without h11
  (the usual ``GET /session/new``); the connection then closes;
* everything else is read by h11 (``HttpStream``), routed the same way,
  and, when it is the app's, handed with every later request of the
  connection to hypercorn, one request at a time (``streams.py`` routes
  those). A ``/ws`` upgrade later on the connection ends hypercorn's side
  and goes to the WebSocket path with the bytes already read.

Nothing here knows the application: the endpoints, the WebSocket handler,
the ASGI app and how a request's client is found are passed in.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState

from omiro_trio.addresses import Clients
from omiro_trio.budgets import MAX_HEAD_BYTES, Budget
from omiro_trio.http import answers
from omiro_trio.http.answers import render
from omiro_trio.http.deadlines import DEFAULT_DEADLINES, Deadlines
from omiro_trio.http.heads import RequestHead, head_complete, head_end, head_too_large, simple_get
from omiro_trio.http.routes import Answer, Refusal, Router, Upstream
from omiro_trio.http.streams import RECEIVE_BYTES, HttpStream, ReplayStream, discard_unread

__all__ = ["HttpServer", "WebSocketHandler", "read_head"]

WebSocketHandler = Callable[[ReplayStream, RequestHead | None], Awaitable[None]]
"""Serves one ``/ws`` upgrade on a stream whose first reads replay the request
head; the head is given when h11 parsed it already, else None (the handler
parses it). The handler closes the stream and gives back what it reserved."""


async def read_head(
    stream: trio.SocketStream, timeout_s: float = DEFAULT_DEADLINES.head_s
) -> tuple[bytes, bool]:
    """The bytes of a connection's first request head, read within ``timeout_s``,
    and whether the deadline passed first.

    Reads until the blank line that ends a head, more than
    ``MAX_HEAD_BYTES``, end of file or the deadline, and returns everything
    read (possibly more than the head: pipelined bytes stay with it). A head
    already in the socket's buffer, the usual case, is taken in one
    non-blocking read, without a deadline to set.
    """
    data = bytearray()
    try:
        data += os.read(stream.socket.fileno(), RECEIVE_BYTES)
        if not data or head_complete(data):
            return bytes(data), False
    except BlockingIOError:
        pass
    with trio.move_on_after(timeout_s) as waiting:
        while True:
            chunk = await stream.receive_some(RECEIVE_BYTES)
            if not chunk:
                break
            searched = max(0, len(data) - 2)  # a blank line may straddle two reads
            data += chunk
            if head_end(data, searched) >= 0 or len(data) > MAX_HEAD_BYTES:
                break
    return bytes(data), waiting.cancelled_caught


class _AnsweringApp:
    """The ASGI app of one connection: tells its ``HttpStream`` when an answer is written.

    The app returns once its answer's last byte is written (hypercorn writes
    from within the app's ``send``), so the stream can serve a later request
    itself without its answer overtaking the app's.
    """

    __slots__ = ("_app", "_stream")

    def __init__(self, app: AppWrapper, stream: HttpStream) -> None:
        self._app = app
        self._stream = stream

    async def __call__(
        self,
        scope: Any,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
        sync_spawn: Callable[..., Awaitable[Any]],
        call_soon: Callable[..., Awaitable[Any]],
    ) -> None:
        try:
            await self._app(scope, receive, send, sync_spawn, call_soon)
        finally:
            self._stream.app_finished()


class HttpServer:
    """Serves the HTTP of accepted connections (``serve``), one at a time each.

    Args:
        router: where each request goes.
        app: the ASGI app (wrapped for hypercorn).
        hyper_config: hypercorn's settings.
        lifespan_state: the app's lifespan state, copied into each connection.
        websocket: serves one ``/ws`` upgrade.
        clients: how a request's client (address group) is found, for the
            router's endpoints, when the front door could not tell it.
        deadlines: the deadlines of every wait.
        on_budget: told when a request is refused for being over a budget.
    """

    def __init__(
        self,
        router: Router,
        app: AppWrapper,
        hyper_config: HyperConfig,
        lifespan_state: LifespanState,
        websocket: WebSocketHandler,
        *,
        clients: Clients,
        deadlines: Deadlines,
        on_budget: Callable[[Budget], None],
    ) -> None:
        self._router = router
        self._app = app
        self._hyper_config = hyper_config
        self._lifespan_state = lifespan_state
        self._websocket = websocket
        self._clients = clients
        self._deadlines = deadlines
        self._on_budget = on_budget
        self._context = WorkerContext(None)

    async def terminate(self) -> None:
        """From now on, idle kept-alive connections end and no new request is read."""
        await self._context.terminated.set()

    async def serve(self, stream: trio.SocketStream, peer: str, client: str | None) -> None:
        """Serve ``stream``'s requests until the connection is done with HTTP.

        ``client`` is the peer's address group, when the front door knows it
        (None behind a trusted proxy). Returns once the connection ended, was
        answered for the last time, or went to the WebSocket path (which
        closes it); the caller closes the socket.
        """
        data, stalled = await read_head(stream, self._deadlines.head_s)
        end = head_end(data)
        if end < 0 and len(data) <= MAX_HEAD_BYTES:
            if stalled and data:  # begun, and not whole by the deadline
                self._on_budget(Budget.HANDSHAKE)
            return  # ended or stalled before a whole head: nothing to answer
        if head_too_large(data, end):
            # Before any parser sees it, whether it is complete or not.
            self._on_budget(Budget.HEAD)
            await self._refuse(stream, render(answers.head_too_large()))
            return
        if self._router.reads_itself(data):
            await self._websocket(ReplayStream(stream, data, peer, client), None)
            return
        head = simple_get(data)
        if head is not None:
            route = self._router.route(head)
            if isinstance(route, Answer):  # without h11
                await self._answer_first(stream, route, head, peer, client)
                return
        http = HttpStream(
            stream,
            peer,
            self._deadlines,
            route=self._router.route,
            answer=partial(self._answer, peer, client),
            prefix=data,
            on_budget=self._on_budget,
            max_requests=self._hyper_config.keep_alive_max_requests,
        )
        head = await http.read_head(self._deadlines.head_s)
        if head is None:  # ended, stalled, or not HTTP
            if http.refusal is not None:
                await self._refuse(stream, http.refusal)
            return
        route = self._router.route(head)
        if route is Upstream.WEBSOCKET:
            await self._websocket(ReplayStream(stream, http.take_pending(), peer, client), head)
        elif isinstance(route, Refusal):
            await self._refuse(stream, render(route.answer))
        elif isinstance(route, Answer):
            await self._answer_first(stream, route, head, peer, client)
        else:
            http.hand_on(head)
            await self._serve_app(http)
            if http.handoff is not None:
                head, pending = http.handoff
                await self._websocket(ReplayStream(stream, pending, peer, client), head)

    async def _answer(
        self, peer: str, client: str | None, route: Answer, head: RequestHead, keep_alive: bool
    ) -> bytes:
        """The bytes answering ``head`` by ``route``'s endpoint."""
        if client is None:
            client = self._clients.of(peer, head.headers)
        return render(await route.endpoint(head, client), keep_alive=keep_alive)

    async def _answer_first(
        self,
        stream: trio.SocketStream,
        route: Answer,
        head: RequestHead,
        peer: str,
        client: str | None,
    ) -> None:
        """Answer a connection's first request by an endpoint; the connection then closes."""
        data = await self._answer(peer, client, route, head, False)
        try:
            sent = os.write(stream.socket.fileno(), data)  # usually all of it: no deadline to set
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        with trio.move_on_after(self._deadlines.send_s):
            await stream.send_all(data[sent:])

    async def _refuse(self, stream: trio.SocketStream, answer: bytes) -> None:
        """Write a refusal (within ``send_s``); the caller then closes the socket.

        What the client sent that nobody read is dropped first, so that the
        close is a FIN after the answer, not a reset that may make the client
        lose it.
        """
        with trio.move_on_after(self._deadlines.send_s):
            await stream.send_all(answer)
        discard_unread(stream.socket)

    async def _serve_app(self, http: HttpStream) -> None:
        """Let hypercorn serve requests from ``http`` until it is done with the connection."""
        server = TCPServer(
            _AnsweringApp(self._app, http),
            self._hyper_config,
            self._context,
            ConnectionState(self._lifespan_state.copy()),
            http,  # type: ignore[arg-type]  # a SocketStream in all but name
        )
        with http.watched():
            await server.run()
