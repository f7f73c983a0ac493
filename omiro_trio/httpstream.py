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
h11 for the usual ``/session/new``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from http import HTTPStatus

import h11
import msgspec
import trio

from omiro_trio.admission import RequestHead

MAX_HEAD_BYTES = 16384
RECEIVE_BYTES = 65536
WS_PATH = "/ws"


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


_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"  # as h11 (RFC 9110 tchar)
_SIMPLE_GET = re.compile(
    rb"GET (/[!-~]*) HTTP/1\.1\r\n((?:" + _TOKEN + rb":[\t -~\x80-\xff]*\r\n)*)\r\n"
)
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[\t ]*([\t -~\x80-\xff]*?)[\t ]*\r\n")
_NOT_SIMPLE = frozenset({"content-length", "transfer-encoding", "upgrade"})


def simple_get(data: bytes) -> RequestHead | None:
    """A plain ``GET`` head at the start of ``data``, read without h11; else None.

    Reads only a strict subset of what h11 reads the same way: HTTP/1.1,
    CRLF line ends, token header names, values of visible characters, exactly
    one ``Host``, and nothing that announces a body or a protocol switch.
    Anything else (None) is for h11, which accepts or refuses it as ever.
    """
    match = _SIMPLE_GET.match(data)
    if match is None:
        return None
    headers: dict[str, list[str]] = {}
    for name, value in _FIELD.findall(match.group(2)):
        headers.setdefault(name.decode("ascii").lower(), []).append(value.decode("latin-1"))
    if len(headers.get("host", ())) != 1 or not _NOT_SIMPLE.isdisjoint(headers):
        return None
    return RequestHead(match.group(1).decode("ascii"), headers, method="GET")


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


def refusal_for(head: RequestHead) -> bytes | None:
    """The answer to a request the HTTP app must not see, or None to pass it on.

    The app serves plain requests only: ``CONNECT`` and protocol upgrades
    other than ``/ws`` (WebSocket elsewhere, h2c) would leave hypercorn
    waiting on a protocol switch that never comes.
    """
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
    """

    def __init__(
        self, stream: trio.SocketStream, peer: str, timeouts: Timeouts, prefix: bytes = b""
    ) -> None:
        self._stream = stream
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
        when h11 cannot parse the request (then ``refusal`` holds the answer
        to send before closing).
        """
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._parser = parser
        start = trio.current_time()
        head_deadline = start + self._timeouts.head if self._pending else math.inf
        idle_deadline = start + idle_s
        if self._pending:  # (feeding h11 nothing would mean end of file)
            parser.receive_data(bytes(self._pending))
        while True:
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
        async with self._sending:
            if self.handoff is None:
                await self._stream.send_eof()

    async def aclose(self) -> None:
        if self.handoff is None:
            await self._stream.aclose()
        else:
            await trio.lowlevel.checkpoint()
