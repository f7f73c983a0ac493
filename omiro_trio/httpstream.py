"""The streams the front door hands on: hypercorn's (``HttpStream``) and the replay one.

``HttpStream`` is the stream hypercorn reads from: it parses each request's
boundaries with h11 and hands hypercorn one request at a time. hypercorn
reads again only once its response to the previous request is complete (h11
pauses until then), so when the next head is a ``/ws`` upgrade the stream
ends hypercorn's side (end of file, and ``aclose`` becomes a no-op) and the
front door gives the socket, with the bytes already read, to the WebSocket
path. Every wait is bounded by the ``Timeouts`` the front door passes in.

``ReplayStream`` is a socket stream whose first reads return bytes the front
door already read from it (for the fast path and the WebSocket path).

The heads: ``parse_head`` and ``HttpStream`` read them with h11;
``simple_get`` reads, without h11, only a plain ``GET`` head that h11 would
read the same way (a property test holds it), so that the fast path needs no
h11 for the usual ``/session/new``. Every head is held to
``budgets.MAX_HEAD_BYTES`` before anything parses it (``head_too_large``),
and every parser here costs time linear in the head's size: ``simple_get``
scans with ``bytes`` methods only (no regular expression on client bytes),
and h11's own reader is linear (a property test holds both).
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

import h11
import msgspec
import trio

from omiro_trio.admission import RequestHead
from omiro_trio.budgets import MAX_HEAD_BYTES, Budget

RECEIVE_BYTES = 65536
WS_PATH = "/ws"

__all__ = ["MAX_HEAD_BYTES", "RECEIVE_BYTES", "WS_PATH", "HttpStream", "ReplayStream"]


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The deadlines of one HTTP connection, in seconds (``front.py`` sets them).

    Attributes:
        head: for a request head, from its first byte.
        body: for a request body, from its head.
        keepalive: for the next request, from the last response.
        send: for a response write.
        stall: for any read or write at all, whatever hypercorn waits for.
    """

    head: float
    body: float
    keepalive: float
    send: float
    stall: float


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
        """What the front door read and no one has read from here yet (then none)."""
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


def to_head(event: h11.Request) -> RequestHead:
    headers: dict[str, list[str]] = {}
    for name, value in event.headers:
        headers.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return RequestHead(
        event.target.decode("latin-1"),
        headers,
        method=event.method.decode(),
        version=event.http_version.decode(),
    )


def head_end(data: bytes | bytearray, start: int = 0) -> int:
    """Where the head at the start of ``data`` ends (just past its blank line), or -1.

    The blank line is found as h11 finds it (``\\n\\n`` or ``\\n\\r\\n``),
    searching from ``start`` (a search resumed after more bytes came should
    start two bytes before the old end, where a blank line may straddle them).
    Two scans of the bytes, whatever they hold.
    """
    bare = data.find(b"\n\n", start)
    crlf = data.find(b"\n\r\n", start, bare + 1 if bare >= 0 else len(data))
    if crlf >= 0:
        return crlf + 3
    return bare + 2 if bare >= 0 else -1


def head_too_large(data: bytes | bytearray, end: int) -> bool:
    """Whether the head starting ``data`` and ending at ``end`` (-1: not yet) is over budget."""
    return end > MAX_HEAD_BYTES or (end < 0 and len(data) > MAX_HEAD_BYTES)


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


_TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TARGET_CHARS = bytes(range(0x21, 0x7F))  # visible ASCII, as h11's request target
_VALUE_CHARS = b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100))
_SIMPLE_START = b"GET /"
_SIMPLE_VERSION = b" HTTP/1.1"
_NOT_SIMPLE = frozenset({"content-length", "transfer-encoding", "upgrade"})


def simple_get(data: bytes) -> RequestHead | None:
    """A plain ``GET`` head at the start of ``data``, read without h11; else None.

    Reads only a strict subset of what h11 reads the same way: HTTP/1.1,
    CRLF line ends, token header names, values of visible characters, exactly
    one ``Host``, and nothing that announces a body or a protocol switch.
    Anything else (None) is for h11, which accepts or refuses it as ever.

    Linear in the head's size: ``bytes`` scans (``find``, ``count``,
    ``split``, ``partition``, ``translate``, ``strip``) and one pass over
    its lines; nothing backtracks. A head over ``MAX_HEAD_BYTES`` is None.
    """
    if not data.startswith(_SIMPLE_START):
        return None
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0:
        return None
    head = data[:end]
    crlf = head.count(b"\r\n")
    if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
        return None  # a bare CR or LF: h11's to read (or refuse)
    request_line, *lines = head.split(b"\r\n")
    if not request_line.endswith(_SIMPLE_VERSION):
        return None
    target = request_line[4 : -len(_SIMPLE_VERSION)]
    if target.translate(None, _TARGET_CHARS):
        return None
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if (
            not colon
            or not name
            or name.translate(None, _TOKEN_CHARS)
            or value.translate(None, _VALUE_CHARS)
        ):
            return None
        values = headers.setdefault(name.decode("ascii").lower(), [])
        values.append(value.strip(b" \t").decode("latin-1"))
    if len(headers.get("host", ())) != 1 or not _NOT_SIMPLE.isdisjoint(headers):
        return None
    return RequestHead(target.decode("ascii"), headers, method="GET")


def _ends_connection(head: RequestHead) -> bool:
    """Whether the answer to ``head`` ends the connection (h11's rule: HTTP/1.0, or
    ``close`` among the ``Connection`` tokens)."""
    if head.version == "1.0":
        return True
    tokens = ",".join(head.headers.get("connection", ())).lower().split(",")
    return any(token.strip() == "close" for token in tokens)


def is_websocket_upgrade(head: RequestHead) -> bool:
    path = head.target.split("?", 1)[0]
    upgrade = ",".join(head.headers.get("upgrade", [])).lower()
    return head.method == "GET" and path == WS_PATH and "websocket" in upgrade


def plain_response(status: int, code: str, message: str) -> bytes:
    body = msgspec.json.encode({"error": code, "message": message})
    reason = HTTPStatus(status).phrase
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


HEAD_TOO_LARGE = plain_response(
    431, "request_head_too_large", f"the request head is over {MAX_HEAD_BYTES} bytes"
)


def refusal_for(head: RequestHead) -> bytes | None:
    """The answer to a request the HTTP app must not see, or None to pass it on.

    The app serves plain HTTP/1 requests only (1.1, and 1.0 too): ``CONNECT``
    and protocol upgrades other than ``/ws`` (WebSocket elsewhere, h2c)
    would leave hypercorn waiting on a protocol switch that never comes, and
    another version (HTTP/2 with prior knowledge) would have hypercorn speak
    a protocol whose budgets are not ours.
    """
    if not head.version.startswith("1."):
        # h11 reads any "HTTP/x.y". A later HTTP/1 minor version is read as
        # HTTP/1.1 (RFC 9110, 2.5); another major version (HTTP/2 with prior
        # knowledge, "PRI * HTTP/2.0", among them) is not served.
        return plain_response(505, "http_version_not_supported", "only HTTP/1 is served")
    if head.method == "CONNECT":
        return plain_response(405, "method_not_allowed", "CONNECT is not served")
    if head.headers.get("upgrade"):
        return plain_response(400, "bad_request", f"only {WS_PATH} accepts an upgrade (GET)")
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
        timeouts: the deadlines of every wait.
        prefix: bytes already read from the socket (the start of the first request).
        on_budget: told when a request is refused for being over a budget.
        max_requests: hypercorn's ``keep_alive_max_requests``: it closes the
            connection after answering that many.

    hypercorn reads the next request while it still answers one. After a
    request whose answer ends the connection (``Connection: close``,
    HTTP/1.0, the last of ``max_requests``), the next one must not reach
    it: h11 would call it a protocol error and hypercorn would close the
    connection before its answer was out. So nothing more is handed on, and
    hypercorn reads the end of file once it closes the connection itself.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        peer: str,
        timeouts: Timeouts,
        prefix: bytes = b"",
        on_budget: Callable[[Budget], None] | None = None,
        max_requests: int = 1000,
    ) -> None:
        self._stream = stream
        self._on_budget = on_budget
        self._max_requests = max_requests
        self._requests = 0  # handed on so far
        self._last = False  # the request handed on last ends the connection
        self._closed = trio.Event()  # hypercorn ended the connection
        self.peer = peer
        self.socket = stream.socket  # hypercorn reads the peer from it
        self._timeouts = timeouts
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
        self.watchdog: trio.CancelScope | None = None  # moved on by every read and write

    # -- reading requests ----------------------------------------------

    def _progress(self) -> None:
        # Moving a deadline costs a heap update: do it at most once a second.
        if self.watchdog is not None:
            deadline = trio.current_time() + self._timeouts.stall
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

        Waits at most ``idle_s`` for the first byte, then ``timeouts.head``
        for the rest. Returns None when the connection ended or stalled, or
        when the head is over ``MAX_HEAD_BYTES`` (complete or not) or h11
        cannot parse it (then ``refusal`` holds the answer to send before
        closing). The size is checked before h11 sees the head.
        """
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._parser = parser
        start = trio.current_time()
        head_deadline = start + self._timeouts.head if self._pending else math.inf
        idle_deadline = start + idle_s
        if self._pending:  # (feeding h11 nothing would mean end of file)
            parser.receive_data(bytes(self._pending))
        searched = 0  # the head's end is not before this
        while True:
            end = head_end(self._pending, searched)
            if head_too_large(self._pending, end):
                self.refusal = HEAD_TOO_LARGE
                if self._on_budget is not None:
                    self._on_budget(Budget.HEAD)
                return None
            if end < 0:
                searched = max(0, len(self._pending) - 2)
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                self.refusal = plain_response(status, "bad_request", str(exc))
                return None
            if isinstance(event, h11.Request):
                self._complete = False
                self._body_deadline = trio.current_time() + self._timeouts.body
                return to_head(event)
            if event is not h11.NEED_DATA:  # ConnectionClosed or PAUSED: nothing more
                return None
            data = await self._receive(min(idle_deadline, head_deadline))
            if not data:
                return None
            if math.isinf(head_deadline):
                head_deadline = trio.current_time() + self._timeouts.head
            self._pending += data
            parser.receive_data(data)

    def take_pending(self) -> bytes:
        """Everything read and not handed on (for the WebSocket path)."""
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def hand_on(self, head: RequestHead) -> None:
        """Hand the request just read to hypercorn (as far as it has arrived)."""
        self._requests += 1
        if self._requests >= self._max_requests or _ends_connection(head):
            self._last = True
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
                if self._last:  # hypercorn closes once it has answered
                    await self._closed.wait()
                    return b""
                # Route the next request (hypercorn reads it while it still
                # answers the last; h11 holds it until the answer is out).
                head = await self.read_head(self._timeouts.keepalive)
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
            with trio.move_on_after(self._timeouts.send):
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
        # Shielded: hypercorn ends a "Connection: close" (or HTTP/1.0)
        # connection from the request's task, which quart-trio has already
        # cancelled once the response was sent. Unshielded, the first
        # checkpoint here would raise Cancelled, hypercorn would never reach
        # ``aclose``, and the socket would stay open until the keep-alive
        # timeout. ``aclose`` then closes the socket before its checkpoint.
        self._closed.set()
        with trio.CancelScope(shield=True):
            async with self._sending:
                if self.handoff is None:
                    await self._stream.send_eof()

    async def aclose(self) -> None:
        self._closed.set()
        if self.handoff is None:
            discard_unread(self.socket)  # (hypercorn closes after its last answer)
            await self._stream.aclose()
        else:
            await trio.lowlevel.checkpoint()
