"""The streams the HTTP layer hands on: hypercorn's (``HttpStream``) and the replay one.

``HttpStream`` is the stream hypercorn reads from: it parses each request's
boundaries with h11 and hands hypercorn one request at a time. Every later
request of a kept-alive connection is routed here, by the same
``Router.route`` as the first (``routes.py``): the app's requests are
handed on; the router's endpoints are answered here; a refusal is answered
and ends the connection; a ``/ws`` upgrade ends hypercorn's side (end of
file, and ``aclose`` becomes a no-op) and the connection goes, with the
bytes already read, to the WebSocket path. Whatever is answered here waits
until hypercorn has answered every request before it, so answers never
interleave. Every wait is bounded by the ``Deadlines`` passed in.

``ReplayStream`` is a socket stream whose first reads return bytes the
HTTP layer already read from it (for the WebSocket path).
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http import HTTPStatus

import h11
import trio

from omiro_trio.budgets import MAX_HEAD_BYTES, Budget
from omiro_trio.http import answers
from omiro_trio.http.answers import HttpError, render
from omiro_trio.http.deadlines import Deadlines
from omiro_trio.http.heads import (
    RequestHead,
    ends_connection,
    head_end,
    head_from_h11,
    head_too_large,
)
from omiro_trio.http.routes import Answer, Refusal, Route, Upstream

RECEIVE_BYTES = 65536

__all__ = ["RECEIVE_BYTES", "HttpStream", "ReplayStream", "discard_unread"]


class ReplayStream(trio.abc.HalfCloseableStream):
    """A socket stream that first returns ``prefix``, the bytes already read from it.

    ``peer`` is the remote address read when the connection was accepted;
    ``client`` its address group, when the front door computed it (the
    WebSocket path reuses it rather than parsing the address again).
    """

    def __init__(
        self, stream: trio.SocketStream, prefix: bytes, peer: str = "", client: str | None = None
    ) -> None:
        self._stream = stream
        self._prefix = prefix
        self.peer = peer or "unknown"
        self.client = client
        self.socket = stream.socket  # hypercorn and trio-websocket read the peer from it

    def take_prefix(self) -> bytes:
        """What the HTTP layer read and no one has read from here yet (then none)."""
        prefix, self._prefix = self._prefix, b""
        return prefix

    def send_nowait(self, data: bytes) -> bytes:
        """Write what the socket takes at once, without waiting; returns the rest."""
        try:
            sent = os.write(self.socket.fileno(), data)
        except BlockingIOError:
            return data
        return data[sent:]

    def close(self) -> None:
        """``aclose`` without its checkpoint: nothing to wait for, nothing to shield."""
        self.socket.close()

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


def discard_unread(sock: trio.socket.SocketType | socket.socket, reads: int = 16) -> None:
    """Read and drop, without waiting, what the client sent that nobody read.

    Closing a socket with unread bytes sends a reset instead of a FIN, and a
    reset may make the client's side drop our last answer (a 431, the
    response that ended a kept-alive connection) before it reads it. At most
    ``reads`` reads: a client still sending when we close is not waited for.
    """
    for _ in range(reads):
        try:
            if not os.read(sock.fileno(), RECEIVE_BYTES):
                return
        except OSError:  # nothing more now (EAGAIN), or closed already
            return


def _not_http(exc: h11.RemoteProtocolError) -> bytes:
    status = HTTPStatus(exc.error_status_hint)
    return render(answers.error(status, HttpError.BAD_REQUEST, str(exc)))


class HttpStream(trio.abc.HalfCloseableStream):
    """The socket as hypercorn sees it: one request at a time, every wait bounded.

    Reads a request's head whole (``read_head``) before any of it is handed
    on, so each request can be routed; then hands hypercorn that request's
    bytes only. Requests h11 cannot parse, and anything after a request that
    asks to switch protocols, pass through unparsed (hypercorn answers them).

    Args:
        stream: the accepted socket.
        peer: its remote address.
        deadlines: the deadlines of every wait.
        route: the router's rule, for every request after the first.
        answer: answers a request one of the router's endpoints serves:
            given the endpoint, the head and whether the connection stays
            open, it returns the bytes to write.
        prefix: bytes already read from the socket (the start of the first request).
        on_budget: told when a request is refused for being over a budget.
        max_requests: hypercorn's ``keep_alive_max_requests``: the
            connection ends after that many requests.

    ``handoff`` holds the head of a ``/ws`` upgrade that came later on the
    connection, and the bytes read, once hypercorn's side has ended for it.

    hypercorn reads the next request while it still answers one. After a
    request whose answer ends the connection (``Connection: close``,
    HTTP/1.0, the last of ``max_requests``), the next one must not reach
    it: h11 would call it a protocol error and hypercorn would close the
    connection before its answer was out. So nothing more is handed on, and
    hypercorn reads the end of file once it has answered.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        peer: str,
        deadlines: Deadlines,
        *,
        route: Callable[[RequestHead], Route],
        answer: Callable[[Answer, RequestHead, bool], Awaitable[bytes]],
        prefix: bytes = b"",
        on_budget: Callable[[Budget], None] | None = None,
        max_requests: int = 1000,
    ) -> None:
        self._stream = stream
        self._route = route
        self._answer = answer
        self._on_budget = on_budget
        self._max_requests = max_requests
        self._requests = 0  # served so far, by hypercorn or here
        self._handed = 0  # handed on to hypercorn so far
        self._answered = 0  # of those, answered whole by the app
        self._answers = trio.lowlevel.ParkingLot()  # woken by each answer, and by the end
        self._last = False  # the request served last ends the connection
        self._closed = trio.Event()  # hypercorn ended the connection
        self.peer = peer
        self.socket = stream.socket  # hypercorn reads the peer from it
        self._deadlines = deadlines
        self._parser: h11.Connection | None = None  # the current request's
        self._pending = bytearray(prefix)  # read, fed to the parser, not yet handed on
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
        self._watchdog: trio.CancelScope | None = None  # moved on by every read and write

    # -- reading requests ----------------------------------------------

    @contextmanager
    def watched(self) -> Iterator[None]:
        """Within this block, whatever hypercorn waits for, a connection with no read
        or write at all for ``deadlines.stall_s`` is cancelled (every read and write
        moves the deadline on)."""
        with trio.CancelScope() as watchdog:
            watchdog.deadline = trio.current_time() + self._deadlines.stall_s
            self._watchdog = watchdog
            try:
                yield
            finally:
                self._watchdog = None

    def _progress(self) -> None:
        # Moving a deadline costs a heap update: do it at most once a second.
        watchdog = self._watchdog
        if watchdog is not None:
            deadline = trio.current_time() + self._deadlines.stall_s
            if deadline - watchdog.deadline > 1.0:
                watchdog.deadline = deadline

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

        Waits at most ``idle_s`` for the first byte, then ``deadlines.head_s``
        for the rest. Returns None when the connection ended or stalled, or
        when the head is over ``MAX_HEAD_BYTES`` (complete or not) or h11
        cannot parse it (then ``refusal`` holds the answer to send before
        closing). The size is checked before h11 sees the head.
        """
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._parser = parser
        start = trio.current_time()
        head_deadline = start + self._deadlines.head_s if self._pending else math.inf
        idle_deadline = start + idle_s
        if self._pending:  # (feeding h11 nothing would mean end of file)
            parser.receive_data(bytes(self._pending))
        searched = 0  # the head's end is not before this
        while True:
            end = head_end(self._pending, searched)
            if head_too_large(self._pending, end):
                self.refusal = render(answers.head_too_large())
                if self._on_budget is not None:
                    self._on_budget(Budget.HEAD)
                return None
            if end < 0:
                searched = max(0, len(self._pending) - 2)
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                self.refusal = _not_http(exc)
                return None
            if isinstance(event, h11.Request):
                self._complete = False
                self._body_deadline = trio.current_time() + self._deadlines.body_s
                return head_from_h11(event)
            if event is not h11.NEED_DATA:  # ConnectionClosed or PAUSED: nothing more
                return None
            data = await self._receive(min(idle_deadline, head_deadline))
            if not data:
                if trio.current_time() >= head_deadline and self._on_budget is not None:
                    self._on_budget(Budget.HANDSHAKE)  # begun, and not whole by the deadline
                return None
            if math.isinf(head_deadline):
                head_deadline = trio.current_time() + self._deadlines.head_s
            self._pending += data
            parser.receive_data(data)

    def take_pending(self) -> bytes:
        """Everything read and not handed on (for the WebSocket path)."""
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def _count(self, head: RequestHead) -> bool:
        """Count a request served; True when its answer is the connection's last."""
        self._requests += 1
        if self._requests >= self._max_requests or ends_connection(head):
            self._last = True
        return self._last

    def hand_on(self, head: RequestHead) -> None:
        """Hand the request just read to hypercorn (as far as it has arrived)."""
        self._count(head)
        self._handed += 1
        self._advance()

    def app_finished(self) -> None:
        """The ASGI app has answered one request handed on (its answer is written)."""
        self._answered += 1
        self._answers.unpark_all()

    async def _wait_answered(self) -> None:
        """Wait until hypercorn has answered every request handed on, or ended."""
        while self._answered < self._handed and not self._closed.is_set():
            await self._answers.park()

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

    def _drop_bodiless(self) -> bool:
        """Drop the current request's bytes when it has no body; False when it has one."""
        assert self._parser is not None
        try:
            event = self._parser.next_event()
        except h11.RemoteProtocolError:
            return False
        if not isinstance(event, h11.EndOfMessage):
            return False
        del self._pending[: len(self._pending) - len(self._parser.trailing_data[0])]
        self._complete = True
        return True

    async def _serve_later(self, head: RequestHead, route: Route) -> bool:
        """Serve a later request that is not the app's, once the app has answered
        every request before it; False when the connection ends (for hypercorn too)."""
        await self._wait_answered()
        if route is Upstream.WEBSOCKET:
            self.handoff = (head, self.take_pending())
            return False
        if isinstance(route, Refusal):
            await self.send_all(render(route.answer))
            return False
        assert isinstance(route, Answer)
        # An endpoint takes no body: one that comes with a body ends the connection.
        keep_alive = not self._count(head) and self._drop_bodiless()
        await self.send_all(await self._answer(route, head, keep_alive))
        return keep_alive

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        reads = self._reads
        while not self._ready:
            if self._broken:
                await trio.lowlevel.checkpoint()
                return b""
            if self._complete:
                if self._last:  # hypercorn closes once it has answered
                    await self._wait_answered()
                    return b""
                # Route the next request (hypercorn reads it while it still
                # answers the last; h11 holds it until the answer is out).
                head = await self.read_head(self._deadlines.keepalive_s)
                if head is None:
                    if self.refusal is not None:
                        await self._wait_answered()
                        await self.send_all(self.refusal)
                    return b""
                route = self._route(head)
                if route is Upstream.APP:
                    self.hand_on(head)
                elif not await self._serve_later(head, route):
                    return b""
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
            with trio.move_on_after(self._deadlines.send_s):
                await self._stream.send_all(data)
                self._progress()
                return
        await self._stream.aclose()
        raise trio.BrokenResourceError("the client did not read its response in time")

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    def _ended(self) -> None:
        self._closed.set()
        self._answers.unpark_all()

    async def send_eof(self) -> None:
        # hypercorn may end the connection while it is still writing an
        # error response: wait for the write (itself bounded) to finish.
        # Shielded: hypercorn ends a "Connection: close" (or HTTP/1.0)
        # connection from the request's task, which quart-trio has already
        # cancelled once the response was sent. Unshielded, the first
        # checkpoint here would raise Cancelled, hypercorn would never reach
        # ``aclose``, and the socket would stay open until the keep-alive
        # timeout. ``aclose`` then closes the socket before its checkpoint.
        self._ended()
        with trio.CancelScope(shield=True):
            async with self._sending:
                if self.handoff is None:
                    await self._stream.send_eof()

    async def aclose(self) -> None:
        self._ended()
        if self.handoff is None:
            discard_unread(self.socket)  # (hypercorn closes after its last answer)
            await self._stream.aclose()
        else:
            await trio.lowlevel.checkpoint()
