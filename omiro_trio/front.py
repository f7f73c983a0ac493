"""One port, two servers: ``/ws`` upgrades to the WebSocket path, the rest to hypercorn.

The front door is the connection boundary. Its rules, each structural:

* **Crash isolation.** Everything that serves one TCP connection runs inside
  that connection's own nursery, opened by ``FrontDoor.handle``; whatever it
  raises ends that connection and nothing else. Expected network failures
  (resets, broken pipes, deadlines, the peer closing) end it silently;
  anything else is logged once, with its traceback, and counted in
  ``omiro_connection_failures_total``. ``trio.Cancelled`` is never caught:
  ``except*`` takes only ``Exception``s out of a group, so a cancellation
  mixed with an error still propagates.
* **Limits from the first byte.** The peer address is read once, on accept
  (a socket reset before that has no address, and is just closed); at most
  ``server.connections_per_ip`` connections per client (address group) are
  open at once; more are closed without a byte read. A trusted proxy's
  connections are not capped: they carry many clients.
* **Deadlines on every wait.** A request head must arrive whole within
  ``HEAD_TIMEOUT_S`` of the connection (or of its first byte, on a kept-alive
  connection), a request body within ``BODY_TIMEOUT_S`` of its head, the next
  request within ``KEEPALIVE_TIMEOUT_S`` of the last response; a response
  write must finish within ``SEND_TIMEOUT_S``. The WebSocket path has its own
  (``connection.py``: handshake, idle pings, close handshake).
* **One routing rule per request.** ``HttpStream`` is the stream hypercorn
  reads from: it parses each request's boundaries with h11 and hands
  hypercorn one request at a time. hypercorn reads again only once its
  response to the previous request is complete (h11 pauses until then), so
  when the next head is a ``/ws`` upgrade the stream ends hypercorn's side
  (end of file, and ``aclose`` becomes a no-op) and the front door gives the
  socket, with the bytes already read, to the WebSocket path.
"""

from __future__ import annotations

import errno
import logging
import math
from collections.abc import Awaitable, Callable
from functools import partial
from http import HTTPStatus

import h11
import msgspec
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from trio_websocket import ConnectionClosed
from wsproto.utilities import LocalProtocolError as WsLocalProtocolError

from omiro_trio.addresses import Network, address_group, in_networks
from omiro_trio.admission import RequestHead
from omiro_trio.metrics import Metrics

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
KEEPALIVE_TIMEOUT_S = 30.0
SEND_TIMEOUT_S = 30.0
STALL_TIMEOUT_S = 60.0  # an HTTP connection with no read or write this long ends
MAX_HEAD_BYTES = 16384
RECEIVE_BYTES = 65536
WS_PATH = "/ws"
ACCEPT_RETRY_S = 0.1  # after EMFILE and the like: let connections end, then accept again

EXPECTED_FAILURES: tuple[type[BaseException], ...] = (
    OSError,  # resets, ENOTCONN, EPIPE
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,  # a deadline of ours
    ConnectionClosed,  # the WebSocket peer left
    h11.ProtocolError,  # a client that does not speak HTTP
    # The WebSocket engine refusing to send on a connection the peer is
    # closing (a pong crossing a close frame): the peer's doing, not ours.
    WsLocalProtocolError,
)
"""What a connection may die of without it being our bug: ended silently."""

WebSocketHandler = Callable[[trio.abc.Stream, RequestHead], Awaitable[None]]


class ReplayStream(trio.abc.HalfCloseableStream):
    """A socket stream that first returns ``prefix``, the bytes already read from it.

    ``peer`` is the remote address read when the connection was accepted.
    """

    def __init__(self, stream: trio.SocketStream, prefix: bytes, peer: str) -> None:
        self._stream = stream
        self._prefix = prefix
        self.peer = peer
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


def to_head(event: h11.Request) -> RequestHead:
    headers: dict[str, list[str]] = {}
    for name, value in event.headers:
        headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return RequestHead(event.target.decode("latin-1"), headers, method=event.method.decode())


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
    return to_head(event)


def is_websocket_upgrade(head: RequestHead) -> bool:
    path = head.target.split("?", 1)[0]
    upgrade = ",".join(head.headers.get("upgrade", [])).lower()
    return head.method == "GET" and path == WS_PATH and "websocket" in upgrade


def _plain_response(status: int, code: str, message: str) -> bytes:
    body = msgspec.json.encode({"error": code, "message": message})
    reason = HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


def refusal_for(head: RequestHead) -> bytes | None:
    """The answer to a request the HTTP app must not see, or None to pass it on.

    The app serves plain requests only: ``CONNECT`` and protocol upgrades
    other than ``/ws`` (WebSocket elsewhere, h2c) would leave hypercorn
    waiting on a protocol switch that never comes.
    """
    if head.method == "CONNECT":
        return _plain_response(405, "method_not_allowed", "CONNECT is not served")
    if head.headers.get("upgrade"):
        return _plain_response(400, "bad_request", f"only {WS_PATH} accepts an upgrade (GET)")
    return None


class HttpStream(trio.abc.HalfCloseableStream):
    """The socket as hypercorn sees it: one request at a time, every wait bounded.

    Reads a request's head whole (``read_head``) before any of it is handed
    on, so each request can be routed; then hands hypercorn that request's
    bytes only. A ``/ws`` upgrade that arrives later on the connection is kept
    back: hypercorn gets end-of-file, ``handoff`` holds the head and the bytes
    read, and closing this stream leaves the socket open for the WebSocket
    path. Requests h11 cannot parse, and anything after a request that asks
    to switch protocols, pass through unparsed (hypercorn answers them).

    Args:
        stream: the accepted socket.
        peer: its remote address.
    """

    def __init__(self, stream: trio.SocketStream, peer: str) -> None:
        self._stream = stream
        self.peer = peer
        self.socket = stream.socket  # hypercorn reads the peer from it
        self._parser: h11.Connection | None = None  # the current request's
        self._pending = bytearray()  # read, fed to the parser, not yet handed on
        self._ready = bytearray()  # hypercorn's next bytes
        self._complete = True  # the current request was handed on whole
        self._broken = False  # a body h11 could not parse: no more bytes for hypercorn
        self.refusal: bytes | None = None  # the answer to a head h11 could not parse
        self._body_deadline = math.inf
        self.handoff: tuple[RequestHead, bytes] | None = None
        # hypercorn may write an error response while another write is under
        # way, and may call send_eof during a write: one writer at a time.
        self._sending = trio.Lock()
        self._reads = 0  # socket reads so far (each one a checkpoint)
        self.watchdog: trio.CancelScope | None = None  # moved on by every read and write

    # -- reading requests ----------------------------------------------

    def _progress(self) -> None:
        # Moving a deadline costs a heap update: do it at most once a second.
        if self.watchdog is not None:
            deadline = trio.current_time() + STALL_TIMEOUT_S
            if deadline - self.watchdog.deadline > 1.0:
                self.watchdog.deadline = deadline

    async def _receive(self, deadline: float) -> bytes:
        """One read from the socket by ``deadline``; b"" at end of file or deadline."""
        self._reads += 1
        with trio.move_on_at(deadline):
            data = await self._stream.receive_some(RECEIVE_BYTES)
            self._progress()
            return data
        return b""

    async def read_head(self, idle_s: float) -> RequestHead | None:
        """Read the next request's head whole, keeping its bytes for later.

        Waits at most ``idle_s`` for the first byte, then ``HEAD_TIMEOUT_S``
        for the rest. Returns None when the connection ended or stalled, or
        when h11 cannot parse the request (then ``refusal`` holds the answer
        to send before closing).
        """
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._parser = parser
        start = trio.current_time()
        head_deadline = start + HEAD_TIMEOUT_S if self._pending else math.inf
        idle_deadline = start + idle_s
        if self._pending:  # (feeding h11 nothing would mean end of file)
            parser.receive_data(bytes(self._pending))
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                self.refusal = _plain_response(status, "bad_request", str(exc))
                return None
            if isinstance(event, h11.Request):
                self._complete = False
                self._body_deadline = trio.current_time() + BODY_TIMEOUT_S
                return to_head(event)
            if event is not h11.NEED_DATA:  # ConnectionClosed or PAUSED: nothing more
                return None
            data = await self._receive(min(idle_deadline, head_deadline))
            if not data:
                return None
            if math.isinf(head_deadline):
                head_deadline = trio.current_time() + HEAD_TIMEOUT_S
            self._pending += data
            parser.receive_data(data)

    def take_pending(self) -> bytes:
        """Everything read and not handed on (for the WebSocket path)."""
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def hand_on(self, head: RequestHead) -> None:
        """Hand the request just read to hypercorn (as far as it has arrived)."""
        self._advance()

    def _advance(self) -> None:
        """Move the current request's bytes to ``_ready``, up to its end."""
        assert self._parser is not None
        while True:
            try:
                event = self._parser.next_event()
            except h11.RemoteProtocolError:
                self._broken = True  # a malformed body: hypercorn gets end of file
                self._pending.clear()
                return
            if event is h11.NEED_DATA:
                self._ready += self._pending
                self._pending.clear()
                return
            if isinstance(event, h11.EndOfMessage):
                trailing = self._parser.trailing_data[0]
                end = len(self._pending) - len(trailing)
                self._ready += self._pending[:end]
                del self._pending[:end]
                self._complete = True
                return
            if not isinstance(event, h11.Data):
                self._ready += self._pending
                self._pending.clear()
                self._complete = True
                return

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        reads = self._reads
        while not self._ready:
            if self._broken:
                await trio.lowlevel.checkpoint()
                return b""
            if self._complete:
                # hypercorn reads again only once it has answered the last
                # request: route the next one.
                head = await self.read_head(KEEPALIVE_TIMEOUT_S)
                if head is None:
                    if self.refusal is not None:
                        await self.send_all(self.refusal)
                    return b""
                if is_websocket_upgrade(head):
                    self.handoff = (head, self.take_pending())
                    return b""
                refusal = refusal_for(head)
                if refusal is not None:
                    await self.send_all(refusal)
                    return b""
                self.hand_on(head)
                continue
            data = await self._receive(self._body_deadline)
            if not data:
                return b""  # the body stalled or the peer left: hypercorn ends it
            self._pending += data
            assert self._parser is not None
            self._parser.receive_data(data)
            self._advance()
        size = len(self._ready) if max_bytes is None else max_bytes
        chunk = bytes(self._ready[:size])
        del self._ready[:size]
        if reads == self._reads:  # no socket read (a checkpoint) in this call
            await trio.lowlevel.checkpoint()
        return chunk

    # -- writing -------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # hypercorn writes under a shield; our own deadline still applies.
        async with self._sending:
            with trio.move_on_after(SEND_TIMEOUT_S):
                await self._stream.send_all(data)
                self._progress()
                return
        await self._stream.aclose()
        raise trio.BrokenResourceError("the client did not read its response in time")

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        # hypercorn may end the connection while it is still writing an
        # error response: wait for the write (itself bounded) to finish.
        async with self._sending:
            if self.handoff is None:
                await self._stream.send_eof()

    async def aclose(self) -> None:
        if self.handoff is None:
            await self._stream.aclose()
        else:
            await trio.lowlevel.checkpoint()


class ConnectionCounter:
    """Open TCP connections per client (address group), capped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: dict[str, int] = {}

    def take(self, client: str) -> bool:
        count = self._open.get(client, 0)
        if count >= self._limit:
            return False
        self._open[client] = count + 1
        return True

    def give_back(self, client: str) -> None:
        count = self._open.get(client, 0) - 1
        if count > 0:
            self._open[client] = count
        else:
            self._open.pop(client, None)


class FrontDoor:
    """Routes each request of the public listener to the right server.

    Args:
        app: the ASGI app (wrapped for hypercorn).
        hyper_config: hypercorn's settings.
        websocket: handles one ``/ws`` upgrade on a stream; it closes the stream.
        metrics: where connection failures and shed connections are counted.
        connections_per_ip: ``server.connections_per_ip``.
        ipv6_prefix: ``server.ipv6_prefix``.
        trusted_proxies: connections from these are not capped per address.
        on_websocket_end: called with the head of every ``/ws`` upgrade once
            its connection has ended (gives back what admission reserved).
    """

    def __init__(
        self,
        app: AppWrapper,
        hyper_config: HyperConfig,
        lifespan_state: LifespanState,
        websocket: WebSocketHandler,
        *,
        metrics: Metrics,
        connections_per_ip: int,
        ipv6_prefix: int,
        trusted_proxies: tuple[Network, ...] = (),
        on_websocket_end: Callable[[RequestHead], Awaitable[None]] | None = None,
        fast_route: Callable[[RequestHead], WebSocketHandler | None] | None = None,
    ) -> None:
        self._app = app
        self._hyper_config = hyper_config
        self._lifespan_state = lifespan_state
        self._websocket = websocket
        self._metrics = metrics
        self._ipv6_prefix = ipv6_prefix
        self._trusted_proxies = trusted_proxies
        self._on_websocket_end = on_websocket_end
        self._fast_route = fast_route  # a connection's first request, without hypercorn
        self.connections = ConnectionCounter(connections_per_ip)
        self.context = WorkerContext(None)

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one accepted connection; never raises anything but cancellation."""
        try:
            try:
                peer = str(stream.socket.getpeername()[0])
            except OSError:
                return  # reset before we looked: nobody to serve
            if in_networks(peer, self._trusted_proxies):
                # A proxy carries many clients: they are told apart (and
                # limited) by their forwarded address, once a request is read.
                client = None
            else:
                client = address_group(peer, self._ipv6_prefix)
                if not self.connections.take(client):
                    self._metrics.connections_shed.inc()
                    return
            try:
                # This connection's own nursery: whatever serves it (hypercorn's
                # tasks, the WebSocket engine's) fails into this group, no further.
                async with trio.open_nursery():
                    await self._serve(stream, peer)
            finally:
                if client is not None:
                    self.connections.give_back(client)
        except* EXPECTED_FAILURES:
            pass
        except* Exception as failure:
            self._metrics.connection_failures.inc()
            log.error("a connection failed; it was closed", exc_info=failure)
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve(self, stream: trio.SocketStream, peer: str) -> None:
        http = HttpStream(stream, peer)
        head = await http.read_head(HEAD_TIMEOUT_S)
        if head is not None and is_websocket_upgrade(head):
            await self._serve_websocket(stream, peer, head, http.take_pending())
            return
        if head is None:  # ended, stalled, or not HTTP
            if http.refusal is not None:
                await http.send_all(http.refusal)
            return
        refusal = refusal_for(head)
        if refusal is not None:
            await http.send_all(refusal)
            return
        fast = self._fast_route(head) if self._fast_route else None
        if fast is not None:  # (fastpath.py: GET /session/new)
            await fast(ReplayStream(stream, http.take_pending(), peer), head)
            return
        http.hand_on(head)
        server = TCPServer(
            self._app,
            self._hyper_config,
            self.context,
            ConnectionState(self._lifespan_state.copy()),
            http,  # type: ignore[arg-type]  # a SocketStream in all but name
        )
        with trio.CancelScope() as watchdog:
            # Whatever hypercorn waits for, a connection with no I/O at all
            # for STALL_TIMEOUT_S ends (every read and write moves this on).
            http.watchdog = watchdog
            watchdog.deadline = trio.current_time() + STALL_TIMEOUT_S
            await server.run()
        if http.handoff is not None:
            head, pending = http.handoff
            await self._serve_websocket(stream, peer, head, pending)

    async def _serve_websocket(
        self, stream: trio.SocketStream, peer: str, head: RequestHead, pending: bytes
    ) -> None:
        try:
            await self._websocket(ReplayStream(stream, pending, peer), head)
        finally:
            if self._on_websocket_end is not None:
                await self._on_websocket_end(head)

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        handler_nursery: trio.Nursery,
    ) -> None:
        """Accept connections until cancelled; handlers run in ``handler_nursery``.

        Running out of file descriptors (or memory for a socket) does not end
        the accept loop: it waits a moment, while connections end, and
        accepts again.
        """
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, handler_nursery)

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        failing = False  # one warning per episode, not one per retry
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                self._metrics.accept_errors.inc()
                if not failing:
                    log.warning(
                        "cannot accept connections (%s); retrying every %.1f s",
                        exc.strerror,
                        ACCEPT_RETRY_S,
                    )
                    failing = True
                await trio.sleep(ACCEPT_RETRY_S)
                continue
            if failing:
                log.info("accepting connections again")
                failing = False
            handlers.start_soon(partial(FrontDoor.handle, self), stream)
