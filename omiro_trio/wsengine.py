"""The ``/ws`` WebSocket engine: ``websockets``' sans-I/O protocol on trio's socket waits.

Design (numbers in ``docs/decisions/0001-websocket-engine.md``):

* **Parsing** is ``websockets``' ``ServerProtocol``: the opening handshake,
  frame parsing, masking, size limits (1009, counted in bytes before the
  payload is buffered), protocol errors (1002), close-frame handling. Only
  the header of a server's unmasked text frame is built here (three cases
  of one length field).
* **Reading**: one task per connection (the handler's own) calls ``recv`` on
  the non-blocking socket first and waits with ``wait_readable`` only when
  nothing is there; every ``CHECKPOINT_EVERY`` reads it checkpoints so that
  a socket that always has data cannot starve the others.
* **Writing**: ``push`` appends a ready frame to the connection's bounded
  list and marks it dirty; the engine's one flusher task joins
  everything queued for each dirty connection into one ``send``. Frames
  for one destination produced in one scheduling round therefore leave in
  one syscall. What the socket did not take stays in ``pending`` (a view of
  that one buffer, sent before anything queued after it, never copied
  again). Only a socket whose kernel buffer is full gets a task of its own
  (``_drain``) until it is writable again, started by the connection in
  the nursery its owner lends it (``WsConnection.writing_in``), never by
  the engine; if the buffer stays full for ``WRITE_TIMEOUT_S`` the client
  is a slow consumer, and so it is when what waits for it (``out`` and
  ``pending`` together) passes ``send_queue`` frames or
  ``send_queue_bytes`` bytes.
* **Liveness**: one sweeper task for all sockets, a timer wheel: each socket
  is visited every ``idle_timeout_s / 8``, one slot of sockets per step, so
  that sockets opened together are not all pinged in one scheduling round.
  A socket silent for half of ``idle_timeout_s`` gets a ping; one that stays
  silent is dropped within ``idle_timeout_s``.
* **Budgets** (``budgets.py``): the protocol parses what a read brought
  ``PARSE_SLICE_BYTES`` at a time, and ``receive`` returns after each slice
  that completed a message or carried a control frame, so the session's
  rules act before the next slice is parsed (``read_ahead`` takes one such
  step early, without waiting, for a caller about to do something that
  what comes next may make moot; no more while its messages wait). Pings
  are answered once per slice (the latest; RFC 6455, 5.5.3), so a ping
  flood queues one pong, not thousands. A message's fragments are joined
  into one buffer as they come, at most ``MAX_MESSAGE_FRAGMENTS`` of them
  (an empty one counts) within the protocol's size limit; over either,
  close 1009.
* **Text** is decoded (strict UTF-8, 1007 otherwise) here.
* **Failures** are the engine's own words (``Failure``): the peer broke
  the protocol, sent text that is not UTF-8 or a message too big, stopped
  reading or answering pings, or a write failed in a way that is our bug.
  The engine sends the RFC 6455 close codes of the protocol's own failures
  (1002, 1007, 1009, 1011); what a failure means for the application
  (its close code, what the partner is told) is the connection's to say
  (``connection.py``). Nothing here knows of sessions or chat.

``websockets``' private state this module relies on (``parser``,
``events``, ``writes``, ``parser_exc``, ``handshake_exc``, ``reader``,
``send_frame``, ``Protocol.parse``) is pinned with the major version in
``pyproject.toml`` and checked by ``tests/unit/test_websockets_internals.py``.

Invariants:

* Nothing here raises out of a connection for anything the peer does: a
  broken socket reads as end of stream and drops further writes.
* After ``release`` the connection holds no reference to its socket,
  protocol or session, so a closed connection is freed by reference
  counting alone (no cycle for the collector to find).
* Pongs are not sent after our close frame (a client ping that crosses our
  close is answered by the close handshake instead).
"""

from __future__ import annotations

import base64
import binascii
import logging
import socket
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import Enum
from typing import Final, TypeVar

import trio
from websockets.datastructures import Headers
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol
from websockets.utils import accept_key

from omiro_trio.budgets import MAX_MESSAGE_FRAGMENTS, PARSE_SLICE_BYTES, Budget
from omiro_trio.http.dates import http_date
from omiro_trio.http.heads import header_tokens

log = logging.getLogger(__name__)

_S = TypeVar("_S", bound=str)  # a subprotocol: websockets' Subprotocol, or a plain str

# websockets logs every open and close at INFO: far too chatty for a server
# holding thousands of sockets. Its warnings and errors still get through.
_PROTOCOL_LOG: Final = logging.getLogger("omiro_trio.wsengine.protocol")
_PROTOCOL_LOG.setLevel(logging.WARNING)

RECEIVE_BYTES: Final = 65536
CHECKPOINT_EVERY: Final = 16  # reads between forced checkpoints, for fairness
WRITE_TIMEOUT_S: Final = 5.0  # a full socket buffer for this long: slow consumer
# Every socket is swept once every idle_timeout_s / SWEEP_TICKS. A socket
# silent for PING_AFTER_TICKS sweeps (half the timeout) gets a ping; one
# silent for DEAD_AFTER_TICKS sweeps has been silent between 7/8 and all of
# the timeout: it is dead.
SWEEP_TICKS: Final = 8
# A timer wheel: sockets are dealt round-robin into slots, and the sweeper
# visits one slot per step, spreading a tick over up to SWEEP_SLOTS steps at
# least SWEEP_SLOT_MIN_S apart. Sockets opened together (a reconnect wave, a
# benchmark) therefore fall silent together but are pinged slot by slot, not
# all in one scheduling round: the pings and their pongs stay a small burst.
SWEEP_SLOTS: Final = 128
SWEEP_SLOT_MIN_S: Final = 0.05
PING_AFTER_TICKS: Final = 4
DEAD_AFTER_TICKS: Final = 7

_CLOSED_SOCKET_ERRORS: Final = (OSError,)
_PONG: Final = Opcode.PONG
_TEXT: Final = Opcode.TEXT
_CONT: Final = Opcode.CONT
_PING: Final = Opcode.PING
_CLOSE: Final = Opcode.CLOSE
_BINARY: Final = Opcode.BINARY
_OPEN: Final = State.OPEN


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame carrying ``payload`` (server to client)."""
    n = len(payload)
    if n < 126:
        return b"\x81" + bytes((n,)) + payload
    if n < 65536:
        return b"\x81\x7e" + struct.pack("!H", n) + payload
    return b"\x81\x7f" + struct.pack("!Q", n) + payload


class EngineProtocol(ServerProtocol):
    """``ServerProtocol`` whose pongs wait for ``take_pong``, and stop once our close is out.

    A ping is answered by the pong of the latest ping parsed since the last
    ``take_pong`` (RFC 6455, 5.5.3 allows it), so that a slice full of pings
    costs one pong, not one each.
    """

    pong: Frame | None = None

    def select_subprotocol(self, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        """The first of the server's subprotocols the client offers; None rather than a
        refusal (websockets' own refuses a client that offers none of them).

        A method of the class, not websockets' ``select_subprotocol`` argument:
        that one is bound to each protocol, a reference cycle that would keep
        every closed connection until the cyclic collector runs.
        """
        return _first_offered(self.available_subprotocols or (), subprotocols)

    def accept(self, request: Request) -> Response:
        """websockets' ``accept``, its ``Date`` formatted once a second, not per handshake.

        A request ``process_request`` refuses goes to websockets' own
        ``accept``, which checks it again and answers the refusal.
        """
        try:
            accept, extensions, subprotocol = self.process_request(request)
        except Exception:
            return super().accept(request)
        self.accept_called = True
        headers = Headers()
        headers["Date"] = http_date()
        headers["Upgrade"] = "websocket"
        headers["Connection"] = "Upgrade"
        headers["Sec-WebSocket-Accept"] = accept
        if extensions is not None:
            headers["Sec-WebSocket-Extensions"] = extensions
        if subprotocol is not None:
            headers["Sec-WebSocket-Protocol"] = subprotocol
        return Response(101, "Switching Protocols", headers)

    def send_frame(self, frame: Frame) -> None:
        if frame.opcode is _PONG:
            if self.close_sent is None:
                self.pong = frame
            return
        super().send_frame(frame)

    def take_pong(self) -> None:
        """Queue the pong owed, if any (none after our close frame)."""
        pong = self.pong
        if pong is not None:
            self.pong = None
            if self.close_sent is None and self.state is _OPEN:
                super().send_frame(pong)


def _forget_handshake(proto: EngineProtocol) -> None:
    """Let the handshake request go once the protocol is open.

    ``ServerProtocol``'s parser is a generator that keeps the parsed request
    (its headers: about 2 KiB) in a local for the connection's whole life.
    With nothing pipelined behind the request, the parser waits at the start
    of a frame, where a fresh frame parser is in the same state.
    """
    if proto.state is _OPEN and not proto.reader.buffer and not proto.reader.eof:
        proto.parser = Protocol.parse(proto)
        next(proto.parser)


def new_protocol(max_frame_bytes: int, subprotocols: Sequence[str] = ()) -> EngineProtocol:
    """A server protocol in the handshake state: no extensions (no deflate).

    ``subprotocols``: the ones the server speaks. The first of them the
    client offers is chosen and echoed in ``Sec-WebSocket-Protocol`` (RFC
    6455, 4.2.2); when it offers none of them (or nothing), none is, and the
    upgrade goes on: whether that is acceptable is the caller's to say.
    """
    return EngineProtocol(
        max_size=max_frame_bytes,
        logger=_PROTOCOL_LOG,
        subprotocols=[Subprotocol(name) for name in subprotocols] or None,
    )


def _first_offered(available: Sequence[_S], offered: Sequence[str]) -> _S | None:
    """The first of the server's subprotocols the client offers (RFC 6455, 4.2.2), or None."""
    chosen = set(offered)
    return next((name for name in available if name in chosen), None)


def plain_upgrade(
    headers: Mapping[str, Sequence[str]], subprotocols: Sequence[str] = ()
) -> tuple[str, str | None] | None:
    """``Sec-WebSocket-Accept`` and the chosen subprotocol for a plain upgrade; else None.

    ``headers``: an upgrade request's (lower-case names; ``http.heads.
    simple_upgrade`` read it). Accepts only a strict subset of what
    ``websockets``' ``ServerProtocol.process_request`` accepts, with the
    same outcome (a property test holds it): a ``Connection`` with the
    ``upgrade`` token, one ``Upgrade: websocket``, one 16-byte
    ``Sec-WebSocket-Key``, one ``Sec-WebSocket-Version: 13``, at most one
    ``Origin``, subprotocols that are all tokens (the first of the server's
    ``subprotocols`` the client offers is chosen, as ``EngineProtocol``
    chooses); extensions are not negotiated. Anything else (None) is for
    ``websockets`` to accept or refuse as ever. Linear in the headers' size.
    """
    connection = header_tokens(headers.get("connection", ()))
    if not connection or not any(token.lower() == "upgrade" for token in connection):
        return None
    upgrade = header_tokens(headers.get("upgrade", ()))
    if upgrade is None or len(upgrade) != 1 or upgrade[0].lower() != "websocket":
        return None
    keys = headers.get("sec-websocket-key", ())
    if len(keys) != 1 or len(keys[0]) != 24 or headers.get("sec-websocket-version") != ["13"]:
        return None
    try:
        if len(base64.b64decode(keys[0].encode(), validate=True)) != 16:
            return None
    except (binascii.Error, UnicodeEncodeError):
        return None
    if len(headers.get("origin", ())) > 1:
        return None
    offered = header_tokens(headers.get("sec-websocket-protocol", ()))
    if offered is None:
        return None
    return accept_key(keys[0]), _first_offered(subprotocols, offered)


def open_protocol(
    max_frame_bytes: int, subprotocol: str | None, origin: str | None = None
) -> EngineProtocol:
    """A server protocol already open: the handshake was ``plain_upgrade``'s."""
    proto = EngineProtocol(max_size=max_frame_bytes, logger=_PROTOCOL_LOG, state=_OPEN)
    proto.subprotocol = None if subprotocol is None else Subprotocol(subprotocol)
    proto.origin = None if origin is None else Origin(origin)
    return proto


def switching_protocols(accept: str, subprotocol: str | None) -> bytes:
    """The 101 answer to a plain upgrade, as ``websockets`` writes it."""
    chosen = "" if subprotocol is None else f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
    return (
        "HTTP/1.1 101 Switching Protocols\r\n"
        f"Date: {http_date()}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n{chosen}\r\n"
    ).encode("latin-1")


class Failure(Enum):
    """Why the engine gave up on a connection."""

    PROTOCOL_ERROR = "protocol_error"  # the peer broke RFC 6455: 1002 sent
    INVALID_DATA = "invalid_data"  # text (or a close reason) not UTF-8: 1007 sent
    TOO_BIG = "too_big"  # a message over the size limit or in too many fragments: 1009 sent
    SLOW_CONSUMER = "slow_consumer"  # the socket took nothing for WRITE_TIMEOUT_S
    NO_PONG = "no_pong"  # silent for the idle timeout, a ping included
    BUG = "bug"  # writing (or the protocol's parser) failed: our bug, 1011 sent by the parser


_FAILURE_OF_CLOSE: Final[dict[int, Failure]] = {
    CloseCode.PROTOCOL_ERROR: Failure.PROTOCOL_ERROR,
    CloseCode.INVALID_DATA: Failure.INVALID_DATA,
    CloseCode.MESSAGE_TOO_BIG: Failure.TOO_BIG,
    CloseCode.INTERNAL_ERROR: Failure.BUG,
}


class WsConnection:
    """One upgraded socket: its protocol state, its outbox, its liveness.

    Args:
        engine: the engine that flushes and sweeps it; the connection joins
            its sweep at once and leaves it on ``release``.
        sock: the connected socket; it stays owned by the caller, who closes
            it after ``release``.
        proto: the protocol, already past the handshake or about to send its
            response (whatever it has queued is sent first).
        send_queue: most frames queued while the socket cannot take them.
        send_queue_bytes: most bytes waiting for the socket, queued frames
            and the unsent rest of a write together.
        on_fail: called once, with the ``Failure``, when the engine gives up
            on the connection for writing (slow consumer, a bug) or liveness
            (no pong): outside the reader, which may be waiting.
        unparsed: bytes the client sent behind its upgrade request, read
            already: parsed first, like any read.
        greeting: the handshake's response when ``proto`` was made open
            (``open_protocol``): sent first.

    The reader (``receive``) finds the protocol's failures itself: then
    ``failure`` says which. ``exceeded`` names the budget the connection
    went over, if it did.
    """

    __slots__ = (
        "__weakref__",
        "_ahead",
        "_closing",
        "_control_frames",
        "_draining",
        "_engine",
        "_eof_wanted",
        "_fragment_count",
        "_fragments",
        "_fragments_text",
        "_heard",
        "_nursery",
        "_on_fail",
        "_queued",
        "_reads",
        "_silent_ticks",
        "_slot",
        "_unparsed",
        "_unparsed_at",
        "_write_broken",
        "exceeded",
        "out",
        "pending",
        "proto",
        "queued_bytes",
        "send_queue",
        "send_queue_bytes",
        "sock",
    )

    def __init__(
        self,
        engine: Engine,
        sock: socket.socket,
        proto: EngineProtocol,
        *,
        send_queue: int,
        send_queue_bytes: int,
        on_fail: Callable[[Failure], None],
        unparsed: bytes = b"",
        greeting: bytes = b"",
    ) -> None:
        self._engine: Engine | None = engine
        self.sock: socket.socket | None = sock
        self.proto: EngineProtocol | None = proto
        self.send_queue = send_queue
        self.send_queue_bytes = send_queue_bytes
        self._on_fail: Callable[[Failure], None] | None = on_fail
        self.exceeded: Budget | None = None
        # A list, not a deque: an empty list holds no block of its own.
        self.out: list[bytes] = [greeting] if greeting else []
        self.queued_bytes = len(greeting)  # waiting for the socket: the frames in out and pending
        self.pending: memoryview | None = None  # the unsent rest of the last send
        self._queued = False  # in the engine's dirty list
        self._draining = False  # a _drain task owns writing
        self._closing = False  # no more tasks may start for it
        self._write_broken = False
        self._nursery: trio.Nursery | None = None  # where a _drain task may run
        self._heard = True
        self._silent_ticks = 0
        self._control_frames = 0  # pings and pongs received, for the rate limit
        self._reads = 0
        self._eof_wanted = False
        self._fragments: bytearray | None = None  # the message being assembled
        self._fragment_count = 0
        self._fragments_text = False
        self._unparsed = unparsed  # the last read, parsed a slice at a time
        self._unparsed_at = 0
        self._ahead: list[str | bytes] = []  # messages parsed by read_ahead, for receive
        _forget_handshake(proto)
        self._slot = engine.add(self)
        self.take_protocol_writes()

    @contextmanager
    def writing_in(self, nursery: trio.Nursery) -> Iterator[None]:
        """Within this block, a socket whose buffer fills gets its writer in ``nursery``.

        ``nursery`` is the owner's (the connection handler's), open for the
        whole block; the writer is this connection's own task in it, started
        by the connection, never by the engine. On leaving the block no
        writer may start any more: what is left is written by ``close``.
        """
        self._nursery = nursery
        try:
            yield
        finally:
            self._nursery = None
            self._closing = True

    # -- writing ----------------------------------------------------------

    def push(self, payload: bytes) -> bool:
        """Queue one text message; False when the outbox is over budget (a slow consumer).

        The budget: ``send_queue`` frames and ``send_queue_bytes`` bytes
        (queued frames and the unsent rest of a write), after writing what
        the socket takes at once.
        """
        if self._write_broken or self.sock is None:
            return True  # the frame has nowhere to go; the reader sees the end
        out = self.out
        frame = text_frame(payload)
        out.append(frame)
        self.queued_bytes += len(frame)
        if not self._queued:
            self._queued = True
            engine = self._engine
            if engine is not None:
                engine.mark_dirty(self)
        if len(out) > self.send_queue or self.queued_bytes > self.send_queue_bytes:
            if not self._draining:
                self.write_now()
            if len(self.out) > self.send_queue or self.queued_bytes > self.send_queue_bytes:
                self.exceeded = Budget.SEND_QUEUE
                return False
        return True

    def _drop_queued(self) -> None:
        self.out.clear()
        self.queued_bytes = 0
        self.pending = None

    def take_protocol_writes(self) -> None:
        """Move what the protocol wants sent (pongs, close frames) into the outbox."""
        proto = self.proto
        if proto is None:
            return
        if proto.pong is not None:
            proto.take_pong()
        for chunk in proto.data_to_send():
            if chunk:
                self.out.append(chunk)
                self.queued_bytes += len(chunk)
            else:
                self._eof_wanted = True
        if self.out and not self._queued and self._engine is not None:
            self._queued = True
            self._engine.mark_dirty(self)

    def write_now(self) -> None:
        """Send what the socket takes without blocking; keep the rest in ``pending``.

        ``pending`` (the rest of an earlier send) leaves first, as it is: a
        view, never copied again however often the socket takes a little.
        Frames queued behind it are joined only once it is all gone.
        """
        sock = self.sock
        if sock is None or self._write_broken:
            self._drop_queued()
            return
        pending = self.pending
        if pending is not None:
            try:
                sent = sock.send(pending)
            except BlockingIOError:
                return
            except _CLOSED_SOCKET_ERRORS:
                self._write_broken = True
                self._drop_queued()
                return
            self.queued_bytes -= sent
            if sent < len(pending):
                self.pending = pending[sent:]
                return
            self.pending = None
        out = self.out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except _CLOSED_SOCKET_ERRORS:
            self._write_broken = True
            self._drop_queued()
            return
        self.queued_bytes -= sent
        if sent < len(data):
            self.pending = memoryview(data)[sent:]

    def write_queued(self) -> None:
        """Write what is queued (the engine's flusher calls it once per round).

        When the socket does not take it all, the connection starts its
        writer (``_drain``) in the nursery ``writing_in`` lent it. A write
        that raises is a bug: the connection fails (``Failure.BUG``), the
        flusher goes on.
        """
        self._queued = False
        if self._draining:
            return
        try:
            self.write_now()
        except Exception:
            log.exception("writing to a socket failed")
            self._write_broken = True
            self._fail(Failure.BUG)
            return
        nursery = self._nursery
        if (
            self.pending is not None
            and nursery is not None
            and not self._closing
            and not self._write_broken
        ):
            self._draining = True
            nursery.start_soon(self._drain)

    async def _drain(self) -> None:
        """Write until nothing is left, waiting for the socket as needed.

        Gives up (``Failure.SLOW_CONSUMER``) when the socket takes nothing
        for ``WRITE_TIMEOUT_S``.
        """
        self._draining = True
        try:
            while (self.pending is not None or self.out) and not self._write_broken:
                sock = self.sock
                if sock is None:
                    return
                with trio.move_on_after(WRITE_TIMEOUT_S) as waited:
                    await trio.lowlevel.wait_writable(sock)
                if waited.cancelled_caught:
                    self._fail(Failure.SLOW_CONSUMER)
                    return
                self.write_now()
        except (trio.ClosedResourceError, OSError):
            self._write_broken = True
        finally:
            self._draining = False

    async def flush(self) -> bool:
        """Write everything queued, waiting as needed; True when all of it left.

        Callers bound it with a deadline.
        """
        self.take_protocol_writes()
        self.write_now()
        while (self.pending is not None or self.out) and not self._write_broken:
            sock = self.sock
            if sock is None:
                return False
            try:
                await trio.lowlevel.wait_writable(sock)
            except (trio.ClosedResourceError, OSError):
                self._write_broken = True
                return False
            self.write_now()
        return not self._write_broken

    def _fail(self, failure: Failure) -> None:
        on_fail = self._on_fail
        if on_fail is not None:
            self._on_fail = None
            on_fail(failure)

    # -- liveness ---------------------------------------------------------

    def tick(self) -> None:
        """One visit of the engine's sweeper, every ``idle_timeout_s / SWEEP_TICKS``.

        Silent for ``PING_AFTER_TICKS`` visits: a ping. Silent for
        ``DEAD_AFTER_TICKS``: ``Failure.NO_PONG``.
        """
        if self._closing:
            return
        if self._heard:
            self._heard = False
            self._silent_ticks = 0
            return
        self._silent_ticks += 1
        if self._silent_ticks >= DEAD_AFTER_TICKS:
            self._fail(Failure.NO_PONG)
        elif self._silent_ticks == PING_AFTER_TICKS:
            proto = self.proto
            if proto is not None and proto.state is _OPEN:
                proto.send_ping(b"")
                self.take_protocol_writes()

    # -- reading ------------------------------------------------------------

    @property
    def control_frames(self) -> int:
        """Pings and pongs received since ``take_control_frames`` last counted them."""
        return self._control_frames

    def take_control_frames(self) -> int:
        """The pings and pongs received since the last call (for the rate limit)."""
        count, self._control_frames = self._control_frames, 0
        return count

    async def receive(self) -> list[str | bytes]:
        """The next complete messages, once there are some or a control frame came.

        Returns an empty list with ``control_frames`` > 0 after pings or
        pongs only; an empty list with no control frames once the peer is
        done: then ``failure`` says why (None: the peer closed or vanished
        with no failure of the engine's to report). Parses at most
        ``PARSE_SLICE_BYTES`` of what was read per step, and returns after
        any step that gave messages or control frames, so the caller's
        rules run before more is parsed. Messages ``read_ahead`` parsed
        come first.
        """
        ahead = self._ahead
        if ahead:
            self._ahead = []
            return ahead
        while True:
            sock, proto = self.sock, self.proto
            if sock is None or proto is None or proto.state is not _OPEN:
                return []
            if proto.events:  # parsed already (pipelined behind the handshake)
                messages = self._messages(proto)
                self.take_protocol_writes()
                if messages:
                    return messages
            unparsed = self._unparsed
            if unparsed:
                self._parse_slice(proto, unparsed)
                messages = self._messages(proto)
                self.take_protocol_writes()
                if messages or self._control_frames or proto.state is not _OPEN:
                    return messages
                continue
            if self._reads >= CHECKPOINT_EVERY:
                self._reads = 0
                await trio.lowlevel.checkpoint()
            try:
                data = sock.recv(RECEIVE_BYTES)
            except BlockingIOError:
                data = None
            except InterruptedError:
                continue
            except _CLOSED_SOCKET_ERRORS:
                data = b""
            if data is None:
                # Waits outside the except clause: inside it, the exception and
                # its traceback would stay alive as long as the socket is idle.
                self._reads = 0
                await trio.lowlevel.wait_readable(sock)
                continue
            self._reads += 1
            self._heard = True
            if len(data) > PARSE_SLICE_BYTES:
                self._unparsed = data
                self._unparsed_at = PARSE_SLICE_BYTES
                proto.receive_data(data[:PARSE_SLICE_BYTES])
            elif data:
                proto.receive_data(data)
            else:
                proto.receive_eof()
            messages = self._messages(proto)
            self.take_protocol_writes()
            if messages or self._control_frames or proto.state is not _OPEN:
                return messages

    def _parse_slice(self, proto: EngineProtocol, unparsed: bytes) -> None:
        """Parse the next ``PARSE_SLICE_BYTES`` of the last read (``unparsed``)."""
        at = self._unparsed_at
        end = at + PARSE_SLICE_BYTES
        if end >= len(unparsed):
            self._unparsed = b""
        else:
            self._unparsed_at = end
        proto.receive_data(unparsed[at:end])

    def read_ahead(self) -> None:
        """Take one step of ``receive`` now if it needs no wait, keeping its messages for it.

        For a caller about to do something that what the peer sent next may
        make moot: the step is a slice of the last read, or else one read
        of what the socket already holds (its end included). The messages
        wait in ``ahead`` and ``receive`` returns them first. Nothing is
        read ahead while messages wait there, so at most one step is ever
        parsed before the caller's rules have seen what came before it.
        Called by the task that calls ``receive``, between two of its calls
        (a ``receive`` waiting for the socket would not see them).
        """
        sock, proto = self.sock, self.proto
        if self._ahead or sock is None or proto is None or proto.state is not _OPEN:
            return
        if not proto.events:
            unparsed = self._unparsed
            if not unparsed:
                try:
                    unparsed = sock.recv(RECEIVE_BYTES)
                except (BlockingIOError, InterruptedError):
                    return
                except _CLOSED_SOCKET_ERRORS:
                    unparsed = b""
                self._heard = True
                if not unparsed:
                    proto.receive_eof()
                self._unparsed, self._unparsed_at = unparsed, 0
            if unparsed:
                self._parse_slice(proto, unparsed)
        self._ahead = self._messages(proto)
        self.take_protocol_writes()

    @property
    def ahead(self) -> Sequence[str | bytes]:
        """The messages ``read_ahead`` parsed, which ``receive`` returns next."""
        return self._ahead

    @property
    def open(self) -> bool:
        """The WebSocket is open: neither side has closed it, and its stream has not ended."""
        proto = self.proto
        return proto is not None and proto.state is _OPEN

    def _messages(self, proto: EngineProtocol) -> list[str | bytes]:
        messages: list[str | bytes] = []
        for frame in proto.events_received():
            if not isinstance(frame, Frame):  # pragma: no cover - only a Request, before
                continue
            opcode = frame.opcode
            if opcode is _TEXT or opcode is _BINARY:
                if frame.fin:
                    message = self._complete(opcode is _TEXT, frame.data)
                    if message is None:
                        return messages
                    messages.append(message)
                else:
                    self._fragments = bytearray(frame.data)
                    self._fragment_count = 1
                    self._fragments_text = opcode is _TEXT
            elif opcode is _CONT:
                fragments = self._fragments
                if fragments is None:  # pragma: no cover - the protocol refuses it
                    continue
                self._fragment_count += 1
                if self._fragment_count > MAX_MESSAGE_FRAGMENTS:
                    # Empty fragments count: no message would ever end.
                    self._fragments = None
                    self.exceeded = Budget.FRAGMENTS
                    if proto.state is _OPEN:
                        proto.fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
                    return messages
                fragments += frame.data
                if frame.fin:
                    self._fragments = None
                    message = self._complete(self._fragments_text, fragments)
                    if message is None:
                        return messages
                    messages.append(message)
            elif opcode is _PING or opcode is _PONG:
                self._control_frames += 1
        return messages

    def _complete(self, text: bool, data: bytes | bytearray | memoryview) -> str | bytes | None:
        if not text:
            return bytes(data)  # binary: the caller answers it (the protocol allows none)
        try:
            return bytes(data).decode() if isinstance(data, memoryview) else data.decode()
        except UnicodeDecodeError:
            proto = self.proto
            if proto is not None and proto.state is _OPEN:
                proto.fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text frame")
            return None

    @property
    def failure(self) -> Failure | None:
        """The failure the reader found (the close frame it sent), if any.

        None when the connection is open, when the peer closed it first, or
        when it vanished (end of stream, a reset) with nothing to report.
        """
        proto = self.proto
        if proto is None or proto.close_sent is None or proto.close_rcvd is not None:
            return None
        return _FAILURE_OF_CLOSE.get(proto.close_sent.code, Failure.PROTOCOL_ERROR)

    @property
    def close_code(self) -> int | None:
        """The close code we sent (for example 1002, 1007, 1009), if any."""
        proto = self.proto
        if proto is None or proto.close_sent is None:
            return None
        return proto.close_sent.code

    @property
    def close_reason(self) -> str:
        """The reason of the close frame we sent ("" if none)."""
        proto = self.proto
        if proto is None or proto.close_sent is None:
            return ""
        return proto.close_sent.reason

    @property
    def peer_closed(self) -> bool:
        proto = self.proto
        return proto is not None and proto.close_rcvd is not None

    # -- closing ----------------------------------------------------------

    async def close(self, code: int, reason: str, *, graceful: bool) -> None:
        """Close the WebSocket: flush, send ``code``, wait for the peer's close.

        Bounded by the caller's deadline. ``graceful=False`` (a dead peer, a
        slow consumer) drops what is queued and sends only what the socket
        takes at once. The socket itself is closed by the caller.
        """
        self._closing = True
        proto = self.proto
        if proto is None or self.sock is None:
            return
        if proto.state is _OPEN:
            proto.send_close(code, reason)
        if not graceful:
            if self.pending is None:
                self._drop_queued()
                self.take_protocol_writes()
                self.write_now()
            return
        if not await self.flush():
            return
        # Wait for the peer's close frame (unless the protocol already gave
        # up on it), then end our side.
        while not self._eof_wanted and proto.close_rcvd is None:
            if not await self._receive_closing():
                break
            self.take_protocol_writes()
        await self.flush()
        sock = self.sock
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return  # already gone
        if proto.close_rcvd is not None:
            # The handshake is complete and the peer sends nothing more: the
            # server ends the TCP connection first (RFC 6455, 7.1.1), at
            # once. What already arrived is read first, so that closing does
            # not turn into a reset that could lose our close frame.
            self._read_what_arrived()
            return
        while await self._receive_closing():
            pass

    def _read_what_arrived(self) -> None:
        """Read, without waiting, what the socket holds (at most ``CHECKPOINT_EVERY`` reads)."""
        sock = self.sock
        if sock is None:
            return
        self._unparsed = b""
        for _ in range(CHECKPOINT_EVERY):
            try:
                if not sock.recv(RECEIVE_BYTES):
                    return
            except (BlockingIOError, InterruptedError):
                return
            except _CLOSED_SOCKET_ERRORS:
                return

    async def _receive_closing(self) -> bool:
        """Read during the closing handshake; False at end of stream."""
        sock, proto = self.sock, self.proto
        if sock is None or proto is None:
            return False
        data: bytes | None
        if self._unparsed:  # read already (the peer's close frame may be in it)
            data = self._unparsed[self._unparsed_at :]
            self._unparsed = b""
        else:
            try:
                data = sock.recv(RECEIVE_BYTES)
            except BlockingIOError:
                data = None
            except _CLOSED_SOCKET_ERRORS:
                data = b""
        if data is None:
            await trio.lowlevel.wait_readable(sock)
            return True
        if not proto.reader.eof:
            if data:
                proto.receive_data(data)
            else:
                proto.receive_eof()
            proto.events_received()
        return bool(data)

    def release(self) -> None:
        """Forget the socket, protocol and callbacks (breaks every reference cycle)."""
        self._closing = True
        engine = self._engine
        if engine is not None:
            engine.forget(self, self._slot)
        proto = self.proto
        if proto is not None:
            # The parser is a generator whose frame refers back to the protocol.
            proto.parser = None  # type: ignore[assignment]
            # An EOFError or ProtocolError kept here holds the parser's frame.
            proto.parser_exc = None
            proto.handshake_exc = None
            proto.events = []
            proto.writes = []
        self.proto = None
        self.sock = None
        self._engine = None
        self._on_fail = None
        self._nursery = None
        self._drop_queued()
        self._fragments = None
        self._unparsed = b""


class Engine:
    """What all connections of one server share: the flusher and the sweeper.

    It starts no task for any connection: the flusher calls each dirty
    connection's ``write_queued`` and the sweeper each connection's
    ``tick``; a connection that needs a writer of its own starts it itself.

    Args:
        idle_timeout_s: a socket silent this long is dead (pinged at half).
    """

    def __init__(self, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        tick = idle_timeout_s / SWEEP_TICKS
        self._slots: list[set[WsConnection]] = [
            set() for _ in range(max(1, min(SWEEP_SLOTS, int(tick / SWEEP_SLOT_MIN_S))))
        ]
        self._next_slot = 0
        self._dirty: list[WsConnection] = []
        self._wakeup = trio.lowlevel.ParkingLot()

    def __len__(self) -> int:
        """Open connections."""
        return sum(len(slot) for slot in self._slots)

    def add(self, conn: WsConnection) -> int:
        """Sweep ``conn`` from now on; returns its slot of the wheel (for ``forget``)."""
        slot = self._next_slot
        self._next_slot = (slot + 1) % len(self._slots)
        self._slots[slot].add(conn)
        return slot

    def forget(self, conn: WsConnection, slot: int) -> None:
        """Sweep ``conn`` no more."""
        self._slots[slot].discard(conn)

    def mark_dirty(self, conn: WsConnection) -> None:
        """Have the flusher write ``conn``'s queue in its next round."""
        self._dirty.append(conn)
        if len(self._dirty) == 1:
            self._wakeup.unpark()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The flusher and the sweeper; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flusher)
            nursery.start_soon(self._sweeper)
            task_status.started()

    async def _flusher(self) -> None:
        while True:
            if not self._dirty:
                await self._wakeup.park()
            else:
                await trio.lowlevel.checkpoint()
            self._flush_dirty()

    def _flush_dirty(self) -> None:
        # A function of its own: no local outlives it to keep a closed
        # connection alive while the flusher waits.
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.write_queued()

    async def _sweeper(self) -> None:
        slots = self._slots
        step = self.idle_timeout_s / SWEEP_TICKS / len(slots)
        deadline = trio.current_time()
        while True:
            for slot in slots:
                # Deadlines, not sleeps: a late step does not shift the next;
                # but after a long stall the wheel does not race to catch up
                # (that would count silent ticks nobody had a chance to answer).
                deadline = max(deadline + step, trio.current_time() - step)
                await trio.sleep_until(deadline)
                try:
                    for conn in list(slot):
                        conn.tick()
                except Exception:  # pragma: no cover - a bug: log it, keep sweeping
                    log.exception("keepalive sweep failed")


def handshake_request(proto: EngineProtocol) -> Request | None:
    """The handshake request the protocol parsed, if it has one yet."""
    events = proto.events_received()
    for n, event in enumerate(events):
        if isinstance(event, Request):
            # Frames pipelined behind the request wait for the first receive.
            proto.events = events[n + 1 :] + proto.events
            return event
    return None


def response_bytes(proto: EngineProtocol, response: Response) -> bytes:
    """Queue ``response`` in the protocol and return what to write for it."""
    proto.send_response(response)
    return b"".join(proto.data_to_send())
