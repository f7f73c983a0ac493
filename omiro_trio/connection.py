"""The ``/ws`` handler: the only translator between a socket and the hub.

One connection, one task and one nursery. The handler's own task reads
(``wsengine.WsConnection.receive``) and pumps each frame to the session's
``SessionCore``, which decides (parsing, the rate and error windows, which
op does what), and the core's effects to the hub, which performs them;
this module decides nothing of a session's rules. The engine's
shared flusher writes the session's outbox and its shared sweeper pings
idle sockets, so an idle socket costs no task of its own. The nursery holds
only what a connection needs now and then: the session's widen timer
(``_Timers``, armed when the core asks for one), and a writer while the
client's socket buffer is full. Whoever ends the connection (the client,
a close code decided by the core, the hub or the engine, the server
draining) cancels ``session.cancel_scope``; cleanup runs shielded and
bounded: the hub forgets the session and tells its partner, what is
queued is flushed, the close handshake runs, and the connection drops
every reference it held (so reference counting frees it at once).

Handshake checks (``admission.py``) run before the upgrade is accepted;
their refusals are plain HTTP responses (``http/answers.py``).

The engine reports its own failures in its own words (``wsengine.Failure``);
``ENGINE_FAILURES`` says what each means here: the close code the client
hears and the reason its partner is told.

Nothing a client sends or fails to send raises out of ``serve_connection``:
network failures end the connection quietly. Anything unexpected (a bug)
ends that connection with 1011 and is raised on to the front door's
boundary, which logs it once and counts it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Final, NamedTuple

import trio
from websockets.http11 import Request, Response

from omiro_trio import wsengine
from omiro_trio.addresses import Clients
from omiro_trio.admission import SUBPROTOCOL, Admission, SocketSlot, subprotocol_refusal
from omiro_trio.budgets import Budget
from omiro_trio.codes import CloseCode, PartnerReason
from omiro_trio.context import ServerContext
from omiro_trio.http.answers import HttpError, JsonAnswer, error, render
from omiro_trio.http.heads import RequestHead, head_end, simple_upgrade
from omiro_trio.http.streams import ReplayStream, discard_unread
from omiro_trio.hub import Hub, Session
from omiro_trio.session_core import SessionCore
from omiro_trio.session_events import Controls, Widen
from omiro_trio.tokens import SessionClaims
from omiro_trio.wsengine import Engine, EngineProtocol, Failure, WsConnection

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 2.0

ENGINE_FAILURES: Final[dict[Failure, tuple[CloseCode, str | None, PartnerReason]]] = {
    # Found by the reader: the engine sent the close frame already, with a
    # reason of its own (the protocol's), which stands. The code is the one
    # it sent.
    Failure.PROTOCOL_ERROR: (CloseCode.PROTOCOL_ERROR, None, PartnerReason.LEFT),
    Failure.INVALID_DATA: (CloseCode.INVALID_DATA, None, PartnerReason.LEFT),
    Failure.TOO_BIG: (CloseCode.TOO_BIG, None, PartnerReason.LEFT),
    # Found outside the reader: the session closes with these.
    Failure.SLOW_CONSUMER: (CloseCode.SLOW_CONSUMER, "slow consumer", PartnerReason.LEFT),
    Failure.NO_PONG: (CloseCode.GOING_AWAY, "no pong", PartnerReason.TIMEOUT),
    Failure.BUG: (CloseCode.INTERNAL_ERROR, "internal error", PartnerReason.LEFT),
}
"""What each of the engine's failures means here: the close code, its reason, and what
the partner is told."""


async def serve_connection(
    ctx: ServerContext,
    engine: Engine,
    admission: Admission,
    clients: Clients,
    stream: ReplayStream,
    head: RequestHead | None,
) -> None:
    """Handle one ``/ws`` upgrade request on ``stream`` until the socket closes.

    ``stream``'s first reads return the request head the HTTP layer already
    read; ``head`` is that head when the HTTP layer parsed it already, else
    None (the handshake parses it). ``clients`` finds the request's client
    when the front door could not (behind a trusted proxy). The stream is
    closed, and the ``sockets_per_ip`` slot the checks took is given back,
    before returning, whatever happens.
    """
    raw: socket.socket | None = None
    slot = SocketSlot()
    try:
        raw = _raw_socket(stream)
        accepted = await _handshake(ctx, admission, clients, stream, raw, head, slot)
        if accepted is not None:
            # The request and response died with the handshake's frame: an
            # idle socket keeps only its session and engine connection.
            await _open_session(ctx, admission, engine, raw, *accepted, slot=slot)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        if raw is not None:
            raw.detach()
        await admission.release_slot(slot)  # (shielded, when there is one to give back)
        stream.close()


def _raw_socket(stream: ReplayStream) -> socket.socket:
    """The stream's descriptor, for non-blocking reads and writes without trio's wrappers.

    The caller detaches it (never closes it): trio owns the descriptor.
    """
    raw = socket.socket(fileno=stream.socket.fileno())
    raw.setblocking(False)
    return raw


class _Accepted(NamedTuple):
    """An upgrade the checks let through."""

    proto: EngineProtocol
    claims: SessionClaims
    client: str
    behind: bytes  # what the client sent behind the request, not parsed yet
    greeting: bytes  # the 101 answer, when the protocol was made open (else it holds it)


async def _handshake(
    ctx: ServerContext,
    admission: Admission,
    clients: Clients,
    stream: ReplayStream,
    raw: socket.socket,
    head: RequestHead | None,
    slot: SocketSlot,
) -> _Accepted | None:
    """Read the upgrade request and run the checks.

    A plain upgrade already read whole (the usual first request) is read
    once, by ``simple_upgrade``, and accepted by ``wsengine.plain_upgrade``;
    any other is ``websockets``' to read, accept or refuse. The checks run
    in the same order either way. A refused upgrade is answered here (plain
    HTTP) and gives None.
    """
    prefix = stream.take_prefix()
    plain = None if head is not None else simple_upgrade(prefix)
    upgrade = None if plain is None else wsengine.plain_upgrade(plain[0].headers, (SUBPROTOCOL,))
    theirs: tuple[EngineProtocol, Response] | None = None  # websockets' protocol and answer
    if plain is not None and upgrade is not None:
        head, behind = plain[0], prefix[plain[1] :]
    else:
        proto = wsengine.new_protocol(ctx.config.server.max_frame_bytes, (SUBPROTOCOL,))
        read = await _read_request(stream, raw, proto, prefix)
        if read is None:
            return None
        request, behind = read
        head = head or head_of(request)
        theirs = proto, proto.accept(request)  # (nothing written yet)
    refusal = subprotocol_refusal(head)
    if refusal is not None:
        ctx.metrics.rejections.labels(str(int(refusal.status))).inc()
        await _write_refusal(raw, render(refusal))
        return None
    if theirs is not None and theirs[1].status_code != 101:
        await _write_refusal(raw, wsengine.response_bytes(*theirs))
        return None
    client = stream.client or clients.of(stream.peer, head.headers)
    verdict = await admission.admit(head, client, slot)
    if isinstance(verdict, JsonAnswer):
        ctx.metrics.rejections.labels(str(int(verdict.status))).inc()
        await _write_refusal(raw, render(verdict))
        return None
    if theirs is not None:
        proto, response = theirs
        proto.send_response(response)  # written by the engine, before hello
        return _Accepted(proto, verdict, client, behind, b"")
    assert upgrade is not None
    max_frame_bytes = ctx.config.server.max_frame_bytes
    proto = wsengine.open_protocol(max_frame_bytes, upgrade[1], head.header("origin"))
    return _Accepted(proto, verdict, client, behind, wsengine.switching_protocols(*upgrade))


async def _read_request(
    stream: ReplayStream, raw: socket.socket, proto: EngineProtocol, prefix: bytes
) -> tuple[Request, bytes] | None:
    """The upgrade request, parsed by ``proto`` within ``HANDSHAKE_TIMEOUT_S``, or None.

    What the front door already read (``prefix``) usually holds the whole
    request: it is parsed first, with no read to wait for, and what came
    behind it is returned unparsed (the engine parses it a slice at a time,
    under the session's budgets). A request the parser refuses is answered
    here (a plain HTTP 4xx).
    """
    request = None
    behind = b""
    if prefix:
        end = head_end(prefix)
        if end >= 0:
            prefix, behind = prefix[:end], prefix[end:]
        proto.receive_data(prefix)
        request = wsengine.handshake_request(proto)
    if request is None and proto.handshake_exc is None:
        request = await _read_more(stream, proto)
    if request is None:
        if proto.handshake_exc is not None:
            # websockets answers a head too large (413/414/431); a head that
            # is not HTTP it just closes: that one gets h11's answer, 400.
            answer = b"".join(proto.data_to_send())
            await _write_refusal(raw, answer or render(_not_http()))
        return None
    # Frames pipelined behind a request read in pieces may have broken the
    # protocol before the upgrade was answered: then the protocol gave up,
    # and no answer can follow.
    return None if proto.eof_sent else (request, behind)


def _not_http() -> JsonAnswer:
    return error(
        HTTPStatus.BAD_REQUEST, HttpError.BAD_REQUEST, "the upgrade request is not valid HTTP/1.1"
    )


async def _read_more(stream: ReplayStream, proto: EngineProtocol) -> Request | None:
    """Read until ``proto`` has a request or has refused one; None at end of file or deadline."""
    with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
        # The first read takes all a replaying stream holds (``None``: no
        # size cap), so nothing stays behind when the engine takes the socket.
        max_bytes: int | None = None
        while True:
            data = await stream.receive_some(max_bytes)
            max_bytes = wsengine.RECEIVE_BYTES
            if not data:
                return None
            proto.receive_data(data)
            request = wsengine.handshake_request(proto)
            if request is not None or proto.handshake_exc is not None:
                return request
    return None


def head_of(request: Request) -> RequestHead:
    """The checks' view of an upgrade request ``websockets`` parsed."""
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.raw_items():
        headers.setdefault(name.lower(), []).append(value)
    return RequestHead(request.path, headers, method="GET")


async def _open_session(
    ctx: ServerContext,
    admission: Admission,
    engine: Engine,
    raw: socket.socket,
    proto: EngineProtocol,
    claims: SessionClaims,
    ip: str,
    behind: bytes,
    greeting: bytes,
    *,
    slot: SocketSlot,
) -> None:
    session_id = claims.session_id
    core = SessionCore(session_id, trio.current_time(), ctx.rules, band=claims.band)
    session = Session(session_id, ip, core=core, account=claims.subject)
    conn = WsConnection(
        engine,
        raw,
        proto,
        send_queue=ctx.config.server.send_queue,
        send_queue_bytes=ctx.config.server.send_queue_bytes,
        on_fail=_closer(ctx.hub, session),
        unparsed=behind,
        greeting=greeting,
    )
    del proto
    session.outlet = conn
    session.left_ahead = reading = _Reading(conn, core)
    try:
        await _run_session(ctx, admission, conn, session, slot, reading)
    finally:
        conn.release()
        session.close_outbox()
        session.timers = session.left_ahead = None
        reading.release()


def _closer(hub: Hub, session: Session) -> Callable[[Failure], None]:
    """What the engine calls when it gives up on the session's socket."""

    def close(failure: Failure) -> None:
        code, reason, partner_reason = ENGINE_FAILURES[failure]
        hub.close(session, code, reason or "", partner_reason)

    return close


async def _write_refusal(raw: socket.socket, data: bytes) -> None:
    """Write a plain HTTP refusal, bounded; a client that left is not an error."""
    view = memoryview(data)
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        while view:
            try:
                view = view[raw.send(view) :]
            except BlockingIOError:
                await trio.lowlevel.wait_writable(raw)
            except OSError:
                return
        try:
            raw.shutdown(socket.SHUT_WR)
        except OSError:
            return
        discard_unread(raw)  # so that the close does not reset the answer away


class _Reading:
    """Whether the client has already left behind the frame being handled (``Session.left_ahead``).

    The hub asks before a way into the queue: a client already leaving
    would be matched there only as a ghost. It has left when a
    ``disconnect`` is among the frames read and not yet handled, or behind
    them, in what the socket already holds (``WsConnection.read_ahead``:
    one step, without waiting), or when its socket has closed or ended.
    Only ways into the queue ask, and they are bounded (the frame rate and
    the skips), so this costs nothing on the relay's path and little
    elsewhere: one ``recv`` that finds nothing, most of the time. Every way
    in comes of a frame the read loop handed over, so it is asked in the
    read loop's task, between two of its reads.
    """

    __slots__ = ("_conn", "_core", "frames")

    def __init__(self, conn: WsConnection, core: SessionCore) -> None:
        self._conn: WsConnection | None = conn
        self._core = core
        self.frames: Sequence[str | bytes] = ()  # the read loop's frames, not all handled

    def __call__(self) -> bool:
        conn = self._conn
        if conn is None:
            return True
        would_end = self._core.would_end
        for frame in self.frames:
            if would_end(frame):
                return True
        conn.read_ahead()
        return not conn.open or any(would_end(frame) for frame in conn.ahead)

    def release(self) -> None:
        self._conn = None
        self.frames = ()


class _Timers:
    """A connection's timers: runs the widen and liveness timers its session's core asks for.

    Each timer is a task in the connection's own nursery; the hub only says
    which timer the core wants (``Arm``, ``Watch``), never starts one.
    """

    __slots__ = ("_hub", "_nursery", "_running", "_scope", "_session", "_watch_scope")

    def __init__(self, hub: Hub, session: Session, nursery: trio.Nursery) -> None:
        self._hub = hub
        self._session = session
        self._nursery = nursery
        self._running: Widen | None = None
        self._scope: trio.CancelScope | None = None
        self._watch_scope: trio.CancelScope | None = None

    def watch(self, after_s: float | None) -> None:
        if self._watch_scope is not None:
            self._watch_scope.cancel()
        self._watch_scope = None
        if after_s is None:
            return
        scope = trio.CancelScope()
        try:
            self._nursery.start_soon(self._watch_later, after_s, scope)
        except RuntimeError:
            return  # the connection is ending: nothing is left to watch
        self._watch_scope = scope

    async def _watch_later(self, after_s: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(after_s)
        if not scope.cancelled_caught:
            await self._hub.watch_fired(self._session)

    def want(self, widen: Widen | None) -> None:
        if widen is self._running:
            return
        if self._scope is not None:
            self._scope.cancel()
        self._running = self._scope = None
        if widen is None:
            return
        scope = trio.CancelScope()
        try:
            self._nursery.start_soon(self._widen_later, widen, scope)
        except RuntimeError:
            # The connection is ending (a resync re-queued it meanwhile):
            # the detach that follows takes it out of the queue.
            return
        self._running, self._scope = widen, scope

    async def _widen_later(self, widen: Widen, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(widen.delay_s)
        if not scope.cancelled_caught:
            await self._hub.widen(self._session, widen)


async def _run_session(
    ctx: ServerContext,
    admission: Admission,
    conn: WsConnection,
    session: Session,
    slot: SocketSlot,
    reading: _Reading,
) -> None:
    """Attach ``session`` to the hub, read its frames until it ends, then detach and close.

    The connection's nursery holds its tasks: the session's widen timer and,
    while the client's socket buffer is full, the socket's writer (which
    the engine connection starts itself, ``WsConnection.writing_in``).
    """
    hub = ctx.hub
    try:
        with session.cancel_scope:
            async with trio.open_nursery() as nursery:
                session.timers = _Timers(hub, session, nursery)
                with conn.writing_in(nursery):  # no writer may start in a closing nursery
                    hub.attach(session, ctx.hello(session.id))
                    await _read_loop(ctx, conn, session, reading)
                    nursery.cancel_scope.cancel()
    except Exception:
        # A bug: the client hears 1011, its partner is told, and the error
        # goes on to the front door's boundary (logged once, counted).
        hub.close(session, CloseCode.INTERNAL_ERROR, "internal error")
        raise
    finally:
        with trio.CancelScope(shield=True):
            await _end_session(ctx, admission, conn, session, slot)


async def _end_session(
    ctx: ServerContext,
    admission: Admission,
    conn: WsConnection,
    session: Session,
    slot: SocketSlot,
) -> None:
    """Detach ``session`` (its partner is told), count its close code, close the socket.

    The socket's ``sockets_per_ip`` slot is given back as soon as the
    session is gone, before the close handshake: the WebSocket is over, and
    however long the client takes to end the TCP connection is bounded by
    ``CLOSE_TIMEOUT_S`` and counted in ``connections_per_ip``.
    """
    await ctx.hub.detach(session)
    await admission.release_slot(slot)
    close = session.closed  # as the core decided it; None: the client left
    if close is None:
        code, reason, graceful = CloseCode.NORMAL, "", True
    else:
        code, reason, graceful = close.code, close.reason, close.graceful
        ctx.metrics.closes.labels(str(code)).inc()
    if code == CloseCode.SLOW_CONSUMER and conn.exceeded is Budget.SEND_QUEUE:
        ctx.metrics.exceeded(Budget.SEND_QUEUE)
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        await conn.close(code, reason, graceful=graceful)


async def _read_loop(
    ctx: ServerContext, conn: WsConnection, session: Session, reading: _Reading
) -> None:
    """Read frames until the client leaves or the session is closed.

    Each frame goes to the core, and what it answers to the hub; the loop
    stops as soon as a close was performed (the frames behind it are not
    read). ``reading`` shows the hub the frames read and not yet handled.
    """
    hub = ctx.hub
    core = session.core
    clock: Callable[[], float] = trio.current_time
    while True:
        frames = await conn.receive()
        now = clock()
        controls = conn.take_control_frames()
        if controls:
            # Pings cost the sender a message each: a ping flood is a flood.
            effects = core.handle(Controls(controls), now)
            if effects:
                await hub.perform(session, effects, now)
                if session.closed is not None:
                    return
        reading.frames = frames
        if not frames and not controls:
            failure = conn.failure
            if failure is not None:
                # The engine failed the connection while reading: 1002, 1007 or 1009.
                if failure is Failure.TOO_BIG:
                    ctx.metrics.exceeded(conn.exceeded or Budget.MESSAGE_SIZE)
                code, _, partner_reason = ENGINE_FAILURES[failure]
                hub.close(session, code, conn.close_reason, partner_reason)
            return
        for frame in frames:
            effects = core.receive(frame, now)
            if effects:
                await hub.perform(session, effects, now)
                if session.closed is not None:
                    return
