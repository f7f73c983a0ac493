"""One port, two servers: ``/ws`` upgrades to the WebSocket path, the rest to hypercorn.

The front door is the connection boundary. Its rules, each structural:

* **Crash isolation.** ``FrontDoor.handle`` serves one TCP connection and
  is its boundary: whatever serves the connection (the fast path, hypercorn
  and its task group, the WebSocket session and its nursery) runs inside
  that call, so whatever it raises ends that connection and nothing else.
  Expected network failures (resets, broken pipes, deadlines, the peer
  closing) end it silently; anything else is logged once, with its
  traceback, and counted in ``omiro_connection_failures_total``.
  ``trio.Cancelled`` is never caught: ``except*`` takes only ``Exception``s
  out of a group, so a cancellation mixed with an error still propagates.
* **Limits from the first byte.** The peer address is read once, on accept
  (a socket reset before that has no address, and is just closed); at most
  ``server.connections_per_ip`` connections per client (address group) are
  open at once; more are closed without a byte read. A trusted proxy's
  connections are not capped: they carry many clients.
* **Budgets before parsing.** A head over ``budgets.MAX_HEAD_BYTES`` is
  answered 431 before any parser sees it, whether it is complete or not.
* **Deadlines on every wait.** A request head must arrive whole within
  ``HEAD_TIMEOUT_S`` of the connection (or of its first byte, on a kept-alive
  connection), a request body within ``BODY_TIMEOUT_S`` of its head, the next
  request within ``KEEPALIVE_TIMEOUT_S`` of the last response; a response
  write must finish within ``SEND_TIMEOUT_S``. The WebSocket path has its own
  (``connection.py``: handshake, idle pings, close handshake).
* **One routing rule per request.** A connection's first head is read whole
  (``read_head``: up to its blank line) and routed on its request line: a
  ``GET /ws`` goes, as bytes, to the WebSocket path, whose handshake parser
  (``websockets``) reads it once; a plain ``GET /session/new`` head
  (``httpstream.simple_get``) goes to the fast path (``fastpath.py``);
  everything else is parsed by h11 in ``HttpStream`` (``httpstream.py``),
  which refuses what the HTTP app must not see, sends a ``/session/new``
  h11 had to read to the fast path too, and hands hypercorn the rest one
  request at a time. A ``/ws`` upgrade later on a kept-alive connection
  ends hypercorn's side and goes to the WebSocket path with the bytes
  already read.
* **Accepting.** Connections already waiting are accepted in one wake-up
  (a checkpoint every ``ACCEPT_BATCH``), with the peer address ``accept``
  gives.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from functools import lru_cache, partial

import h11
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState

from omiro_trio.addresses import Network, address_group, in_networks
from omiro_trio.admission import RequestHead
from omiro_trio.budgets import MAX_HEAD_BYTES, Budget
from omiro_trio.httpstream import (
    HEAD_TOO_LARGE,
    RECEIVE_BYTES,
    WS_PATH,
    HttpStream,
    ReplayStream,
    Timeouts,
    discard_unread,
    head_end,
    head_too_large,
    is_websocket_upgrade,
    parse_head,
    refusal_for,
    simple_get,
)
from omiro_trio.metrics import Metrics

log = logging.getLogger(__name__)

HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
KEEPALIVE_TIMEOUT_S = 30.0
SEND_TIMEOUT_S = 30.0
STALL_TIMEOUT_S = 60.0  # an HTTP connection with no read or write this long ends
ACCEPT_RETRY_S = 0.1  # after EMFILE and the like: let connections end, then accept again
ACCEPT_BATCH = 16  # connections accepted in a row before the loop yields
GROUPS_KEPT = 65536  # peer addresses whose address group is remembered

# A pure function of its arguments, asked again for every connection of a client.
_address_group = lru_cache(maxsize=GROUPS_KEPT)(address_group)

# As trio's SocketListener: a closed listener, and a connection that failed
# before accept returned it (nothing to serve, nothing to report).
_CLOSED_ERRNOS = frozenset({errno.EBADF})
_IGNORED_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)

EXPECTED_FAILURES: tuple[type[BaseException], ...] = (
    OSError,  # resets, ENOTCONN, EPIPE
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,  # a deadline of ours
    h11.ProtocolError,  # a client that does not speak HTTP
)
"""What a connection may die of without it being our bug: ended silently."""

WebSocketHandler = Callable[[trio.abc.Stream, RequestHead | None], Awaitable[None]]
"""Serves one ``/ws`` upgrade on a stream whose first reads replay the request
head; the head is given when h11 parsed it already, else None (the handler
parses it). The handler closes the stream and gives back what it reserved."""

FastHandler = Callable[[trio.abc.Stream, RequestHead], Awaitable[None]]
"""Answers one plain request (``fastpath.py``); the front door closes the stream."""

__all__ = [
    "WS_PATH",
    "ConnectionCounter",
    "FrontDoor",
    "ReplayStream",
    "parse_head",
    "read_head",
]

_WS_REQUEST_LINE = (f"GET {WS_PATH} ".encode(), f"GET {WS_PATH}?".encode())


async def read_head(stream: trio.SocketStream, timeout_s: float = HEAD_TIMEOUT_S) -> bytes:
    """The bytes of a connection's first request head, read within ``timeout_s``.

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
            return bytes(data)
    except BlockingIOError:
        pass
    with trio.move_on_after(timeout_s):
        while True:
            chunk = await stream.receive_some(RECEIVE_BYTES)
            if not chunk:
                break
            searched = max(0, len(data) - 2)  # a blank line may straddle two reads
            data += chunk
            if head_end(data, searched) >= 0 or len(data) > MAX_HEAD_BYTES:
                break
    return bytes(data)


async def _refuse(stream: trio.SocketStream, answer: bytes) -> None:
    """Write a refusal (within ``SEND_TIMEOUT_S``); the caller then closes the socket.

    What the client sent that nobody read is dropped first, so that the
    close is a FIN after the answer, not a reset that may make the client
    lose it.
    """
    with trio.move_on_after(SEND_TIMEOUT_S):
        await stream.send_all(answer)
    discard_unread(stream.socket)


def head_complete(data: bytes | bytearray) -> bool:
    """Whether ``data`` holds a whole head (or more than any head may be)."""
    return len(data) > MAX_HEAD_BYTES or head_end(data) >= 0


def _timeouts() -> Timeouts:
    # Read at each connection, so that a changed setting applies to the next one.
    return Timeouts(
        head=HEAD_TIMEOUT_S,
        body=BODY_TIMEOUT_S,
        keepalive=KEEPALIVE_TIMEOUT_S,
        send=SEND_TIMEOUT_S,
        stall=STALL_TIMEOUT_S,
    )


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
        fast_route: the fast handler for a connection's first request
            head, or None to let hypercorn serve it.
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
        fast_route: Callable[[RequestHead], FastHandler | None] | None = None,
    ) -> None:
        self._app = app
        self._hyper_config = hyper_config
        self._lifespan_state = lifespan_state
        self._websocket = websocket
        self._metrics = metrics
        self._ipv6_prefix = ipv6_prefix
        self._trusted_proxies = trusted_proxies
        self._fast_route = fast_route  # a connection's first request, without hypercorn
        self.connections = ConnectionCounter(connections_per_ip)
        self.context = WorkerContext(None)

    async def handle(self, stream: trio.SocketStream, peer: str | None = None) -> None:
        """Serve one accepted connection; never raises anything but cancellation.

        ``peer`` is the remote address, as ``accept`` gave it (read from the
        socket when not given).
        """
        try:
            if peer is None:
                try:
                    peer = str(stream.socket.getpeername()[0])
                except OSError:
                    return  # reset before we looked: nobody to serve
            if self._trusted_proxies and in_networks(peer, self._trusted_proxies):
                # A proxy carries many clients: they are told apart (and
                # limited) by their forwarded address, once a request is read.
                client = None
            else:
                client = _address_group(peer, self._ipv6_prefix)
                if not self.connections.take(client):
                    self._metrics.connections_shed.inc()
                    return
            try:
                await self._serve(stream, peer, client)
            finally:
                if client is not None:
                    self.connections.give_back(client)
        except* EXPECTED_FAILURES:
            pass
        except* Exception as failure:
            self._metrics.connection_failures.inc()
            log.error("a connection failed; it was closed", exc_info=failure)
        finally:
            # What ``stream.aclose()`` does, minus its checkpoint: no shield needed.
            stream.socket.close()

    async def _serve(self, stream: trio.SocketStream, peer: str, client: str | None) -> None:
        """Read the first head and route it (the WebSocket path, the fast path, hypercorn)."""
        data = await read_head(stream, HEAD_TIMEOUT_S)
        end = head_end(data)
        if end < 0 and len(data) <= MAX_HEAD_BYTES:
            return  # ended or stalled before a whole head: nothing to answer
        if head_too_large(data, end):
            # Before any parser sees it, whether it is complete or not.
            self._metrics.exceeded(Budget.HEAD)
            await _refuse(stream, HEAD_TOO_LARGE)
            return
        if data.startswith(_WS_REQUEST_LINE):
            # Parsed once, by the WebSocket handshake (no h11 on this path).
            await self._websocket(ReplayStream(stream, data, peer, client), None)
            return
        simple = self._simple_fast_route(data)
        if simple is not None:  # (fastpath.py: GET /session/new), without h11
            await simple[0](ReplayStream(stream, data, peer, client), simple[1])
            return
        timeouts = _timeouts()
        http = HttpStream(
            stream,
            peer,
            timeouts,
            prefix=data,
            on_budget=self._metrics.exceeded,
            max_requests=self._hyper_config.keep_alive_max_requests,
        )
        head = await http.read_head(timeouts.head)
        if head is None:  # ended, stalled, or not HTTP
            if http.refusal is not None:
                await _refuse(stream, http.refusal)
            return
        if is_websocket_upgrade(head):
            await self._websocket(ReplayStream(stream, http.take_pending(), peer, client), head)
            return
        refusal = refusal_for(head)
        if refusal is not None:
            await _refuse(stream, refusal)
            return
        fast = self._fast_route(head) if self._fast_route else None
        if fast is not None:  # (fastpath.py: GET /session/new)
            await fast(ReplayStream(stream, http.take_pending(), peer, client), head)
            return
        http.hand_on(head)
        await self._serve_http(http, timeouts)
        if http.handoff is not None:
            head, pending = http.handoff
            await self._websocket(ReplayStream(stream, pending, peer, client), head)

    def _simple_fast_route(self, data: bytes) -> tuple[FastHandler, RequestHead] | None:
        """The fast handler for a plain GET head that needs no h11 to read, and the head."""
        if self._fast_route is None:
            return None
        head = simple_get(data)
        handler = self._fast_route(head) if head is not None else None
        return (handler, head) if handler is not None and head is not None else None

    async def _serve_http(self, http: HttpStream, timeouts: Timeouts) -> None:
        """Let hypercorn serve requests from ``http`` until it is done with the connection."""
        server = TCPServer(
            self._app,
            self._hyper_config,
            self.context,
            ConnectionState(self._lifespan_state.copy()),
            http,  # type: ignore[arg-type]  # a SocketStream in all but name
        )
        with trio.CancelScope() as watchdog:
            # Whatever hypercorn waits for, a connection with no I/O at all
            # for the stall timeout ends (every read and write moves this on).
            http.watchdog = watchdog
            watchdog.deadline = trio.current_time() + timeouts.stall
            await server.run()

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
        # The listening descriptor, for non-blocking accepts without trio's
        # wrapper (two scheduler round trips each): every connection already
        # waiting is taken in one wake-up. Detached, never closed: the
        # listener owns the descriptor.
        raw = socket.socket(fileno=listener.socket.fileno())
        try:
            raw.setblocking(False)
            await self._accept_all(raw, handlers)
        finally:
            raw.detach()

    async def _accept_all(self, raw: socket.socket, handlers: trio.Nursery) -> None:
        failing = False  # one warning per episode, not one per retry
        taken = 0
        while True:
            try:
                sock, address = raw.accept()
            except BlockingIOError:
                taken = 0
                await trio.lowlevel.wait_readable(raw)  # (ClosedResourceError once closed)
                continue
            except OSError as exc:
                if exc.errno in _CLOSED_ERRNOS:
                    raise trio.ClosedResourceError from None
                if exc.errno in _IGNORED_ACCEPT_ERRNOS:
                    continue  # that connection failed before it was ours
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
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            peer = str(address[0]) if isinstance(address, tuple) else None
            handlers.start_soon(partial(FrontDoor.handle, self), stream, peer)
            taken += 1
            if taken % ACCEPT_BATCH == 0:
                await trio.lowlevel.checkpoint()  # the connections taken so far start
