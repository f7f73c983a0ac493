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
from websockets.server import ServerProtocol

from omiro_trio import protocol, wsengine
from omiro_trio.admission import Rejection, RequestHead, admit, websocket_client
from omiro_trio.codes import CloseCode
from omiro_trio.context import ServerContext
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
from omiro_trio.wsengine import Engine, WsConnection

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0


async def serve_connection(
    ctx: ServerContext, engine: Engine, stream: trio.abc.Stream, head: RequestHead
) -> None:
    """Handle one ``/ws`` upgrade request on ``stream`` until the socket closes.

    ``stream`` is a socket stream (it has ``.socket``) whose first reads
    return the request head the front door already read. It is closed
    before returning, whatever happens.
    """
    raw: socket.socket | None = None
    try:
        trio_socket = getattr(stream, "socket", None)
        if trio_socket is None:
            raise TypeError("the /ws engine needs a socket stream")
        ip = websocket_client(ctx, stream, head)
        # The same descriptor, for non-blocking reads and writes without
        # trio's wrappers; detached (never closed) below: trio owns the fd.
        raw = socket.socket(fileno=trio_socket.fileno())
        raw.setblocking(False)
        accepted = await _handshake(ctx, stream, raw, head, ip)
        if accepted is not None:
            # The request and response died with the handshake's frame: an
            # idle socket keeps only its session and engine connection.
            await _open_session(ctx, engine, raw, *accepted, ip)
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        if raw is not None:
            raw.detach()
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _handshake(
    ctx: ServerContext,
    stream: trio.abc.Stream,
    raw: socket.socket,
    head: RequestHead,
    ip: str,
) -> tuple[ServerProtocol, str] | None:
    """Read the upgrade request and run the checks; the protocol and session id, or None.

    A refused upgrade is answered here (plain HTTP) and gives None.
    """
    proto = wsengine.new_protocol(ctx.config.server.max_frame_bytes)
    with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
        request = None
        # The first read takes all the front door replays (``None``: no size
        # cap), so nothing it read stays behind when the engine takes over
        # the socket.
        max_bytes: int | None = None
        while request is None:
            data = await stream.receive_some(max_bytes)
            max_bytes = wsengine.RECEIVE_BYTES
            if not data:
                return None
            proto.receive_data(data)
            request = wsengine.handshake_request(proto)
            if request is None and proto.handshake_exc is not None:
                await _write_refusal(raw, b"".join(proto.data_to_send()))
                return None
    if request is None:
        return None
    if proto.eof_sent:
        # Frames pipelined behind the request broke the protocol before the
        # upgrade was answered: the protocol gave up, and no answer can follow.
        return None
    response = proto.accept(request)
    if response.status_code != 101:
        await _write_refusal(raw, wsengine.response_bytes(proto, response))
        return None
    verdict = await admit(ctx, head, ip)
    if isinstance(verdict, Rejection):
        ctx.metrics.rejections.labels(str(verdict.status)).inc()
        refusal = proto.reject(verdict.status, "")
        body = msgspec.json.encode(verdict.body)
        refusal.body = body
        del refusal.headers["Content-Type"]
        del refusal.headers["Content-Length"]
        refusal.headers["Content-Type"] = "application/json"
        refusal.headers["Content-Length"] = str(len(body))
        if verdict.retry_after_s is not None:
            refusal.headers["Retry-After"] = str(verdict.retry_after_s)
        await _write_refusal(raw, wsengine.response_bytes(proto, refusal))
        return None
    proto.send_response(response)  # written by the engine, before hello
    return proto, verdict


async def _open_session(
    ctx: ServerContext,
    engine: Engine,
    raw: socket.socket,
    proto: ServerProtocol,
    session_id: str,
    ip: str,
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
        on_fail=_closer(session),
    )
    del proto
    session.outlet = conn
    try:
        await _run_session(ctx, engine, conn, session)
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
    ctx: ServerContext, engine: Engine, conn: WsConnection, session: Session
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
            await _end_session(ctx, conn, session)


async def _end_session(ctx: ServerContext, conn: WsConnection, session: Session) -> None:
    """Detach ``session`` (its partner is told), count its close code, close the socket."""
    await ctx.hub.detach(session)
    core = session.core
    code = core.close_code
    if code is not None:
        ctx.metrics.closes.labels(str(code)).inc()
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
    if isinstance(action, NextPartner) and await hub.next_limited(
        session, ctx.config.limits.nexts_per_minute
    ):
        action = session.core.refuse("next", now)
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
