"""The ``/ws`` handler: the only translator between a socket and the hub.

One connection, one task and one nursery. The handler's own task reads
(``wsengine.WsConnection.receive``) and hands each frame to the session's
``SessionCore``, which decides (parsing, the rate and error windows, which
op does what); this module and the hub perform its answer. The engine's
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
their refusals are plain HTTP responses.

Nothing a client sends or fails to send raises out of ``serve_connection``:
network failures end the connection quietly. Anything unexpected (a bug)
ends that connection with 1011 and is raised on to the front door's
boundary, which logs it once and counts it.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import msgspec
import trio
from websockets.http11 import Request

from omiro_trio import protocol, wsengine
from omiro_trio.admission import (
    Rejection,
    RequestHead,
    SocketSlot,
    admit,
    release_slot,
    websocket_client,
)
from omiro_trio.budgets import Budget
from omiro_trio.codes import CloseCode
from omiro_trio.context import ServerContext
from omiro_trio.httpstream import ReplayStream, discard_unread, head_end, plain_response
from omiro_trio.hub import Hub, Session
from omiro_trio.session_core import (
    Action,
    Close,
    CountCall,
    Join,
    Leave,
    NextPartner,
    Rates,
    Relay,
    Reply,
    ReportPartner,
    SessionCore,
    Widen,
)
from omiro_trio.wsengine import Engine, EngineProtocol, WsConnection

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
_NOT_HTTP = plain_response(400, "bad_request", "the upgrade request is not valid HTTP/1.1")


async def serve_connection(
    ctx: ServerContext, engine: Engine, stream: trio.abc.Stream, head: RequestHead | None
) -> None:
    """Handle one ``/ws`` upgrade request on ``stream`` until the socket closes.

    ``stream`` is a socket stream (it has ``.socket``) whose first reads
    return the request head the front door already read; ``head`` is that
    head when the front door parsed it already, else None (the handshake
    parses it). The stream is closed, and the ``sockets_per_ip`` slot the
    checks took is given back, before returning, whatever happens.
    """
    raw: socket.socket | None = None
    slot = head.slot if head is not None else SocketSlot()
    try:
        raw = _raw_socket(stream)
        accepted = await _handshake(ctx, stream, raw, head, slot)
        if accepted is not None:
            # The request and response died with the handshake's frame: an
            # idle socket keeps only its session and engine connection.
            await _open_session(ctx, engine, raw, *accepted, slot=slot)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        if raw is not None:
            raw.detach()
        await release_slot(ctx, slot)  # (shielded, when there is one to give back)
        if isinstance(stream, ReplayStream):
            stream.close()
        else:
            with trio.CancelScope(shield=True):
                await stream.aclose()


def _raw_socket(stream: trio.abc.Stream) -> socket.socket:
    """The stream's descriptor, for non-blocking reads and writes without trio's wrappers.

    The caller detaches it (never closes it): trio owns the descriptor.
    """
    trio_socket = getattr(stream, "socket", None)
    if trio_socket is None:
        raise TypeError("the /ws engine needs a socket stream")
    raw = socket.socket(fileno=trio_socket.fileno())
    raw.setblocking(False)
    return raw


async def _handshake(
    ctx: ServerContext,
    stream: trio.abc.Stream,
    raw: socket.socket,
    head: RequestHead | None,
    slot: SocketSlot,
) -> tuple[EngineProtocol, str, str, bytes] | None:
    """Read the upgrade request and run the checks.

    Returns the protocol, the session id, the client and the bytes read
    behind the request (frames the engine parses once the socket is open).
    A refused upgrade is answered here (plain HTTP) and gives None.
    """
    proto = wsengine.new_protocol(ctx.config.server.max_frame_bytes)
    read = await _read_request(stream, raw, proto)
    if read is None:
        return None
    request, behind = read
    if head is None:
        head = head_of(request, slot)
    response = proto.accept(request)
    if response.status_code != 101:
        await _write_refusal(raw, wsengine.response_bytes(proto, response))
        return None
    ip = websocket_client(ctx, stream, head)
    verdict = await admit(ctx, head, ip)
    if isinstance(verdict, Rejection):
        ctx.metrics.rejections.labels(str(verdict.status)).inc()
        await _write_refusal(raw, _rejection_bytes(proto, verdict))
        return None
    proto.send_response(response)  # written by the engine, before hello
    return proto, verdict, ip, behind


async def _read_request(
    stream: trio.abc.Stream, raw: socket.socket, proto: EngineProtocol
) -> tuple[Request, bytes] | None:
    """The upgrade request, parsed by ``proto`` within ``HANDSHAKE_TIMEOUT_S``, or None.

    What the front door already read usually holds the whole request: it is
    parsed first, with no read to wait for, and what came behind it is
    returned unparsed (the engine parses it a slice at a time, under the
    session's budgets). A request the parser refuses is answered here (a
    plain HTTP 4xx).
    """
    prefix = stream.take_prefix() if isinstance(stream, ReplayStream) else b""
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
            await _write_refusal(raw, answer or _NOT_HTTP)
        return None
    # Frames pipelined behind a request read in pieces may have broken the
    # protocol before the upgrade was answered: then the protocol gave up,
    # and no answer can follow.
    return None if proto.eof_sent else (request, behind)


async def _read_more(stream: trio.abc.Stream, proto: EngineProtocol) -> Request | None:
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


def head_of(request: Request, slot: SocketSlot) -> RequestHead:
    """The checks' view of an upgrade request ``websockets`` parsed."""
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.raw_items():
        headers.setdefault(name.lower(), []).append(value)
    return RequestHead(request.path, headers, method="GET", slot=slot)


def _rejection_bytes(proto: EngineProtocol, verdict: Rejection) -> bytes:
    """The plain HTTP response refusing an upgrade: a JSON body, Retry-After when given."""
    refusal = proto.reject(verdict.status, "")
    body = msgspec.json.encode(verdict.body)
    refusal.body = body
    del refusal.headers["Content-Type"]
    del refusal.headers["Content-Length"]
    refusal.headers["Content-Type"] = "application/json"
    refusal.headers["Content-Length"] = str(len(body))
    if verdict.retry_after_s is not None:
        refusal.headers["Retry-After"] = str(verdict.retry_after_s)
    return wsengine.response_bytes(proto, refusal)


async def _open_session(
    ctx: ServerContext,
    engine: Engine,
    raw: socket.socket,
    proto: EngineProtocol,
    session_id: str,
    ip: str,
    behind: bytes,
    *,
    slot: SocketSlot,
) -> None:
    limits = ctx.config.limits
    rates = Rates(limits.messages_per_second, limits.message_burst)
    core = SessionCore(session_id, trio.current_time(), limits=ctx.limits, rates=rates)
    session = Session(session_id, ip, core=core)
    conn = WsConnection(
        engine,
        raw,
        proto,
        send_queue=ctx.config.server.send_queue,
        send_queue_bytes=ctx.config.server.send_queue_bytes,
        on_fail=_closer(session),
        unparsed=behind,
    )
    del proto
    session.outlet = conn
    try:
        await _run_session(ctx, engine, conn, session, slot)
    finally:
        conn.release()
        session.close_outbox()
        session.nursery = None
        session.timers = None


def _closer(session: Session) -> Callable[[int, str, str], None]:
    def close(code: int, reason: str, partner_reason: str) -> None:
        session.close(code, reason, partner_reason=partner_reason)

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


class _Timers:
    """A connection's timers: runs the widen timer its session's core asks for.

    The timer is a task in the connection's own nursery; the hub only says
    which timer the core wants (``Session.sync_timer``), never starts one.
    """

    __slots__ = ("_hub", "_nursery", "_running", "_scope", "_session")

    def __init__(self, hub: Hub, session: Session, nursery: trio.Nursery) -> None:
        self._hub = hub
        self._session = session
        self._nursery = nursery
        self._running: Widen | None = None
        self._scope: trio.CancelScope | None = None

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
    ctx: ServerContext, engine: Engine, conn: WsConnection, session: Session, slot: SocketSlot
) -> None:
    """Attach ``session`` to the hub, read its frames until it ends, then detach and close.

    The connection's nursery holds its tasks: the session's widen timer and,
    while the client's socket buffer is full, a writer.
    """
    hub = ctx.hub
    hub.attach(session)
    engine.add(conn)
    try:
        with session.cancel_scope:
            async with trio.open_nursery() as nursery:
                session.nursery = nursery
                session.timers = _Timers(hub, session, nursery)
                conn.nursery = nursery
                try:
                    session.send(protocol.encode("hello", ctx.hello_data(session.id)))
                    if hub.draining:
                        session.send(hub.draining_frame)
                    await _read_loop(ctx, conn, session)
                    nursery.cancel_scope.cancel()
                finally:
                    conn.closing = True  # no writer may start in a closing nursery
                    conn.nursery = None
    except Exception:
        # A bug: the client hears 1011, its partner is told, and the error
        # goes on to the front door's boundary (logged once, counted).
        session.close(CloseCode.INTERNAL_ERROR, "internal error")
        raise
    finally:
        with trio.CancelScope(shield=True):
            await _end_session(ctx, conn, session, slot)


async def _end_session(
    ctx: ServerContext, conn: WsConnection, session: Session, slot: SocketSlot
) -> None:
    """Detach ``session`` (its partner is told), count its close code, close the socket.

    The socket's ``sockets_per_ip`` slot is given back as soon as the
    session is gone, before the close handshake: the WebSocket is over, and
    however long the client takes to end the TCP connection is bounded by
    ``CLOSE_TIMEOUT_S`` and counted in ``connections_per_ip``.
    """
    await ctx.hub.detach(session)
    await release_slot(ctx, slot)
    core = session.core
    code = core.close_code
    if code is not None:
        ctx.metrics.closes.labels(str(code)).inc()
    if code == CloseCode.SLOW_CONSUMER and conn.exceeded is Budget.SEND_QUEUE:
        ctx.metrics.exceeded(Budget.SEND_QUEUE)
    graceful = code != CloseCode.SLOW_CONSUMER and core.partner_reason != "timeout"
    with trio.move_on_after(CLOSE_TIMEOUT_S):
        await conn.close(code or CloseCode.NORMAL, core.close_reason, graceful=graceful)


async def _read_loop(ctx: ServerContext, conn: WsConnection, session: Session) -> None:
    """Read frames until the client leaves or the session is closed; the core decides.

    A relayed message (chat, typing, signaling) takes the short path: the
    core's ``Relay`` goes straight to the hub. Everything else is performed
    by ``_perform``.
    """
    hub = ctx.hub
    core = session.core
    clock: Callable[[], float] = trio.current_time
    while True:
        frames = await conn.receive()
        now = clock()
        controls = conn.control_frames
        if controls:
            # Pings cost the sender a message each: a ping flood is a flood.
            conn.control_frames = 0
            close = core.controls(controls, now)
            if close is not None:
                session.close(close.code, close.reason)
                return
        if not frames and not controls:
            code = conn.close_code
            if code is not None and not conn.peer_closed:
                # The engine failed the connection: 1002, 1007 or 1009.
                if code == CloseCode.TOO_BIG:
                    ctx.metrics.exceeded(conn.exceeded or Budget.MESSAGE_SIZE)
                session.close(code, conn.close_reason)
            return
        for frame in frames:
            action = core.receive(frame, now)
            if type(action) is Relay:
                await hub.relay(session, action)
            elif action is not None and await _perform(ctx, session, action, now):
                return


async def _perform(
    ctx: ServerContext,
    session: Session,
    action: Action,
    now: float,
) -> bool:
    """Do what the core asked (all but the relay); True when the session is closing."""
    hub = ctx.hub
    if (
        isinstance(action, Join | NextPartner)
        and action.counted
        and (wait_s := await hub.next_limited(session, ctx.config.limits.nexts_per_minute))
        is not None
    ):
        # Every way into the queue spends a skip (session_core.py): over the
        # allowance the op is refused (saying when it would be accepted) and
        # the match, if any, goes on.
        ctx.metrics.exceeded(Budget.SKIPS)
        action = session.core.refuse(
            "next" if isinstance(action, NextPartner) else "join_queue", now, wait_s
        )
    if isinstance(action, Reply):
        if action.error is not None:
            ctx.metrics.protocol_errors.labels(action.error).inc()
        session.send(action.frame)
    elif isinstance(action, Close):
        if action.error is not None:
            ctx.metrics.protocol_errors.labels(action.error).inc()
        if action.frame is not None:
            session.send(action.frame)
        session.close(action.code, action.reason)
        return True
    elif isinstance(action, Join | NextPartner) and hub.draining:
        session.send(hub.draining_frame)
    elif isinstance(action, Join):
        await hub.join(session, action.prefs, ended_reason="next")
    elif isinstance(action, NextPartner):
        await hub.next(session)
    elif isinstance(action, Leave):
        await hub.leave(session)
    elif isinstance(action, ReportPartner):
        await hub.report(session, action.reason)
    elif isinstance(action, CountCall):
        ctx.metrics.count_call(action.outcome, action.path, action.connect_ms)
    elif isinstance(action, Relay):
        await hub.relay(session, action)
    return False
