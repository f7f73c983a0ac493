"""The ``/ws`` handler: the only translator between a socket and the hub.

One connection, one nursery: trio-websocket's reader task, our writer (the
session's bounded outbox to the socket), a keepalive pinger, the session's
interest timer, and the frame loop in the handler's own task. Whoever ends
the connection (the client, a close code decided by the hub, the server
draining) cancels that nursery; cleanup runs shielded and bounded: the hub
forgets the session and tells its partner, then the socket is closed with
the chosen code.

Handshake checks (``admission.py``) run before the upgrade is accepted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import msgspec
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from omiro_trio import protocol
from omiro_trio.admission import Rejection, RequestHead, admit, websocket_client
from omiro_trio.codes import CloseCode, ErrorCode
from omiro_trio.context import ServerContext
from omiro_trio.errors import ProtocolViolation
from omiro_trio.hub import Session
from omiro_trio.matchmaking import Preferences

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0
FRAME_WRITE_TIMEOUT_S = 5.0
INCOMING_QUEUE = 4  # frames trio-websocket buffers before it stops reading the socket
RECEIVE_BYTES = 16384
PROTOCOL_ERRORS_ALLOWED = 20  # per ERROR_WINDOW_S, then 4000
RATE_VIOLATIONS_ALLOWED = 10  # per ERROR_WINDOW_S, then 4029
ERROR_WINDOW_S = 60.0


class TokenBucket:
    """``rate`` tokens a second, up to ``burst``; one per message."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._at = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class WindowCounter:
    """Counts events in fixed windows; ``hit`` says whether the allowance is exceeded."""

    def __init__(self, allowed: int, window_s: float) -> None:
        self._allowed = allowed
        self._window_s = window_s
        self._start = -math.inf
        self._count = 0

    def hit(self, now: float) -> bool:
        if now - self._start >= self._window_s:
            self._start, self._count = now, 0
        self._count += 1
        return self._count > self._allowed


async def serve_connection(ctx: ServerContext, stream: trio.abc.Stream, head: RequestHead) -> None:
    """Handle one ``/ws`` upgrade request on ``stream`` until the socket closes.

    Closes ``stream`` before returning, whatever happens.
    """
    ip = websocket_client(ctx, stream, head)
    try:
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                    request = await wrap_server_stream(
                        nursery,
                        stream,
                        message_queue_size=INCOMING_QUEUE,
                        max_message_size=ctx.config.server.max_frame_bytes,
                        receive_buffer_size=RECEIVE_BYTES,
                    )
            except (trio.TooSlowError, ConnectionClosed):
                nursery.cancel_scope.cancel()
                return
            verdict = await admit(ctx, head, ip)
            if isinstance(verdict, Rejection):
                ctx.metrics.rejections.labels(str(verdict.status)).inc()
                extra = [(b"content-type", b"application/json")]
                if verdict.retry_after_s is not None:
                    extra.append((b"retry-after", str(verdict.retry_after_s).encode()))
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await request.reject(
                        verdict.status, extra_headers=extra, body=msgspec.json.encode(verdict.body)
                    )
                nursery.cancel_scope.cancel()
                return
            session_id = verdict
            try:
                ws = await request.accept()
            except (ConnectionClosed, trio.Cancelled) as exc:
                # The session was claimed: give it back, or its token would
                # answer 409 until the server restarts.
                with trio.CancelScope(shield=True):
                    await ctx.hub.release_claim(session_id)
                nursery.cancel_scope.cancel()
                if isinstance(exc, trio.Cancelled):
                    raise
                return
            try:
                await _run_session(
                    ctx,
                    ws,
                    stream,
                    Session(session_id, ip, send_queue=ctx.config.server.send_queue),
                )
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _run_session(
    ctx: ServerContext, ws: WebSocketConnection, stream: trio.abc.Stream, session: Session
) -> None:
    hub = ctx.hub
    torn = False  # part of a frame may be on the wire: no close frame can follow

    async def write_loop() -> None:
        nonlocal torn
        async for frame in session.outbox:
            # A frame is written whole even while the session is being
            # closed, so the close frame that follows is well-formed; a frame
            # that cannot be written in time means the client stopped reading.
            with trio.CancelScope(shield=True) as writing:
                writing.deadline = trio.current_time() + FRAME_WRITE_TIMEOUT_S
                session.write_scope = writing
                try:
                    await ws.send_message(frame)
                except ConnectionClosed:
                    session.close(CloseCode.GOING_AWAY)
                    return
                finally:
                    session.write_scope = None
            if writing.cancelled_caught:
                torn = True
                session.close(CloseCode.SLOW_CONSUMER, "slow consumer")
                return

    async def keepalive() -> None:
        interval = ctx.config.server.idle_timeout_s / 2
        while True:
            await trio.sleep(interval)
            with trio.move_on_after(interval) as waited:
                try:
                    await ws.ping()
                except ConnectionClosed:
                    return
            if waited.cancelled_caught:
                session.close(CloseCode.GOING_AWAY, "no pong", partner_reason="timeout")
                return

    hub.attach(session)
    try:
        with session.cancel_scope:
            async with trio.open_nursery() as nursery:
                session.nursery = nursery
                nursery.start_soon(write_loop)
                nursery.start_soon(keepalive)
                session.send(protocol.encode("hello", ctx.hello_data(session.id)))
                if hub.draining:
                    session.send(hub.draining_frame)
                await _read_loop(ctx, ws, session)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await hub.detach(session)
            code = session.close_code
            if code is not None:
                ctx.metrics.closes.labels(str(code)).inc()
            if torn or session.partner_reason == "timeout":
                # Mid-frame or a dead peer: a close frame cannot be delivered.
                await stream.aclose()
            else:
                with trio.move_on_after(CLOSE_TIMEOUT_S):
                    await _flush(ws, session)
                    await ws.aclose(code or CloseCode.NORMAL, session.close_reason or None)


async def _flush(ws: WebSocketConnection, session: Session) -> None:
    """Send what is still queued, so a client that leaves hears all that happened first."""
    while True:
        try:
            frame = session.outbox.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
        try:
            await ws.send_message(frame)
        except ConnectionClosed:
            return


async def _read_loop(ctx: ServerContext, ws: WebSocketConnection, session: Session) -> None:
    """Read and dispatch frames until the client leaves or the session is closed."""
    hub = ctx.hub
    limits = ctx.limits
    config = ctx.config.limits
    clock: Callable[[], float] = trio.current_time
    bucket = TokenBucket(config.messages_per_second, config.message_burst, clock())
    nexts = WindowCounter(config.nexts_per_minute, 60.0)
    errors = WindowCounter(PROTOCOL_ERRORS_ALLOWED, ERROR_WINDOW_S)
    violations = WindowCounter(RATE_VIOLATIONS_ALLOWED, ERROR_WINDOW_S)
    while True:
        try:
            frame = await ws.get_message()
        except ConnectionClosed:
            return
        # trio-websocket's own limit (which stops buffering at once) counts the
        # characters of a text frame; multi-byte text can pass it yet be too big.
        if protocol.frame_too_big(frame, limits.max_frame_bytes):
            session.close(CloseCode.TOO_BIG, "frame too large")
            return
        now = clock()
        try:
            message = protocol.parse_client_frame(frame, limits)
        except ProtocolViolation as exc:
            ctx.metrics.protocol_errors.labels(exc.code).inc()
            session.send(protocol.error_frame(exc.code, exc.message, exc.op))
            if errors.hit(now):
                session.close(CloseCode.PROTOCOL_ERRORS, "too many protocol errors")
                return
            continue
        op = protocol.OP_NAMES[type(message)]
        if not bucket.take(now) or (isinstance(message, protocol.Next) and nexts.hit(now)):
            ctx.metrics.protocol_errors.labels("rate_limited").inc()
            session.send(protocol.error_frame(ErrorCode.RATE_LIMITED, "slow down", op))
            if violations.hit(now):
                session.close(CloseCode.RATE_LIMITED, "rate limit exceeded")
                return
            continue
        if isinstance(message, protocol.RELAYED):
            await hub.relay(session, message)
        elif isinstance(message, protocol.JoinQueue | protocol.Next):
            if hub.draining:
                session.send(hub.draining_frame)
            elif isinstance(message, protocol.JoinQueue):
                prefs = Preferences(message.mode, message.interests)
                await hub.join(session, prefs, ended_reason="next")
            else:
                await hub.next(session)
        elif isinstance(message, protocol.LeaveQueue):
            await hub.leave(session)
        elif isinstance(message, protocol.Report):
            await hub.report(session, message.reason)
        elif isinstance(message, protocol.CallOutcome):
            hub.call_outcome(session, message)
        elif isinstance(message, protocol.Disconnect):
            session.close(CloseCode.NORMAL)
            return
