"""One port, two servers: ``/ws`` upgrades to trio-websocket, the rest to hypercorn.

Each accepted connection's request head is read (bounded in size and time)
and parsed with h11. A WebSocket upgrade for ``/ws`` goes to
``connection.serve_connection``; anything else, including what h11 cannot
parse, goes to hypercorn's trio ``TCPServer`` serving the quart-trio app.
Both get a ``ReplayStream`` that hands the bytes already read back first, so
neither knows the head was looked at.

WebSockets bypass hypercorn's ASGI layers (which cost per message, and
negotiate permessage-deflate unconditionally) and get real ping/pong
liveness, per-socket frame limits and plain-HTTP handshake rejections.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import h11
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState

from omiro_trio.admission import RequestHead

log = logging.getLogger(__name__)

Handler = Callable[[trio.abc.Stream, RequestHead], Awaitable[None]]

HEAD_TIMEOUT_S = 10.0
MAX_HEAD_BYTES = 16384
WS_PATH = "/ws"


class ReplayStream(trio.abc.HalfCloseableStream):
    """A socket stream that first returns ``prefix``, the bytes already read from it."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix
        self.socket = stream.socket  # hypercorn and trio-websocket read the peer from it

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, self._prefix = self._prefix[:size], self._prefix[size:]
            return chunk
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def parse_head(data: bytes) -> RequestHead | None:
    """The request line and headers, or None when h11 cannot read them."""
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    try:
        connection.receive_data(data)
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    headers: dict[str, list[str]] = {}
    for name, value in event.headers:
        headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return RequestHead(event.target.decode("latin-1"), headers, method=event.method.decode())


def is_websocket_upgrade(head: RequestHead) -> bool:
    path = head.target.split("?", 1)[0]
    upgrade = ",".join(head.headers.get("upgrade", [])).lower()
    return head.method == "GET" and path == WS_PATH and "websocket" in upgrade


async def read_head(stream: trio.SocketStream) -> bytes:
    """Read until the end of the request head, ``MAX_HEAD_BYTES`` or ``HEAD_TIMEOUT_S``."""
    buffer = bytearray()
    with trio.move_on_after(HEAD_TIMEOUT_S):
        while b"\r\n\r\n" not in buffer and len(buffer) < MAX_HEAD_BYTES:
            try:
                data = await stream.receive_some(MAX_HEAD_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                break
            if not data:
                break
            buffer += data
    return bytes(buffer)


class FrontDoor:
    """Routes each connection of the public listener to the right server.

    Args:
        app: the ASGI app (wrapped for hypercorn).
        hyper_config: hypercorn's settings.
        websocket: handles one ``/ws`` upgrade on a stream.
    """

    def __init__(
        self,
        app: AppWrapper,
        hyper_config: HyperConfig,
        lifespan_state: LifespanState,
        websocket: Callable[[trio.abc.Stream, RequestHead], Awaitable[None]],
        fast_route: Callable[[RequestHead], Handler | None] | None = None,
    ) -> None:
        self._app = app
        self._hyper_config = hyper_config
        self._lifespan_state = lifespan_state
        self._websocket = websocket
        self._fast_route = fast_route  # requests served without hypercorn (fastpath.py)
        self.context = WorkerContext(None)

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            data = await read_head(stream)
            if not data:
                return
            head = parse_head(data)
            replay = ReplayStream(stream, data)
            if head is not None and is_websocket_upgrade(head):
                await self._websocket(replay, head)
                return
            fast = self._fast_route(head) if head is not None and self._fast_route else None
            if fast is not None and head is not None:
                await fast(replay, head)
                return
            http = TCPServer(
                self._app,
                self._hyper_config,
                self.context,
                ConnectionState(self._lifespan_state.copy()),
                replay,  # type: ignore[arg-type]  # a SocketStream in all but name
            )
            await http.run()
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        handler_nursery: trio.Nursery,
    ) -> None:
        """Accept connections until cancelled; handlers run in ``handler_nursery``."""
        await trio.serve_listeners(
            partial(FrontDoor.handle, self),
            listeners,
            handler_nursery=handler_nursery,
        )
