"""Sessions on this server and delivery between partners.

Each ``Session`` is a thin shell around a ``session_core.SessionCore``: the
core holds the session's state (idle, waiting, matched, closing), its
current match and the matches it saw end, and decides; the hub performs
what the core cannot: the backend calls (they are awaits), finding the
partner, publishing on the bus. The backend owns the truth (who waits, who
is matched with whom); the core keeps a copy per local session so that
relaying a message costs no backend round trip, and the hub applies what
the backend decided in this order:

* The side whose operation formed or ended a match updates itself, then
  tells the partner: directly when the partner is on this server, through
  the backend's bus when it is on another.
* Every event names its ``match_id``. A session's core remembers the last
  few matches it saw end, so an event that arrives late (a ``matched`` for a
  match already ended, a relay from an old partner) is dropped instead of
  resurrecting a dead match or reaching the wrong person.
* The hub never starts a task and never blocks delivering: ``Session.send``
  queues on the socket's outbox, and a widen timer the core asks for is run
  by the connection that owns the session (``Session.sync_timer``), which
  calls ``Hub.widen`` when it fires.

With the memory backend no backend call has a checkpoint, so each hub
operation is atomic. With a shared backend the ``match_id`` checks above are
what keep every interleaving correct, and:

* Each session's backend operations (join, next, leave, report, widen,
  detach, resync) run one at a time (``Session.lock``). Backend calls are
  shielded from cancellation inside the backend, so a match the backend
  formed is always delivered: nothing between "formed" and "told" can be
  cancelled.
* ``BackendUnavailable`` never leaves the hub: the client gets an ``error``
  (``unavailable``) and the state is repaired by the next ``resync``. Its
  kind ``SessionElsewhere`` (the session has a socket on another server
  now) closes this socket instead.
* A relay to a partner on another server goes to the server the match
  names, with no lookup; the backend says whether it was heard. Not heard
  (that server is away for a moment) is an ``unavailable`` error for that
  frame; only a match the backend says is over ends the sender's match.
* A match formed here is announced to the partner's server before this
  session's client hears of it, so the caller's first frame finds it known.
* ``resync`` (periodic, and at once when the backend says messages may have
  been lost or its records were lost) compares each session's local match
  with the backend's and repairs the difference, acting at once only on what
  the backend knows for certain (``ended``, ``formed``). After the backend
  lost its state, it puts back everything this server holds (``local_views``)
  before any call of this server, a resync included, may act on it.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec
import trio

from omiro_trio import protocol
from omiro_trio.addresses import group_in_networks
from omiro_trio.backends.base import Backend, Ban, Ended, LocalView, ReportRecord, SharedView
from omiro_trio.codes import CloseCode, ErrorCode
from omiro_trio.errors import BackendUnavailable, SessionElsewhere
from omiro_trio.matchmaking import Match, Preferences, Waiting
from omiro_trio.metrics import Metrics
from omiro_trio.session_core import Relay, SessionCore, Widen

log = logging.getLogger(__name__)

SYNC_INTERVAL_S = 5.0
SYNC_RETRY_S = 1.0
RELEASE_RETRY_S = 0.1  # sockets gone while the backend was away: released as soon as it answers
SYNC_SLICE = 256  # sessions compared with the backend between checkpoints

BusKind = Literal["matched", "ended", "relay", "ban"]
"""What a bus message says: ``ban`` goes to every server, the others to one session."""


class BusMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one server tells another about a session it holds."""

    to: str
    kind: BusKind
    match_id: str
    match: tuple[str, str, str, tuple[str, ...]] | None = None  # caller, callee, mode, common
    servers: tuple[str, str] = ("", "")  # "matched": the servers holding caller and callee
    reason: str = ""
    frame: str = ""
    pair: str = ""  # "matched": the match's pair tag (match_found's "pair"), if known
    chat: str | None = None
    target: str = ""  # "ban": the banned address or network
    origin: str = ""  # "ban": the server that sent it


_bus_encoder = msgspec.json.Encoder()
_bus_decoder = msgspec.json.Decoder(BusMessage)


class Outlet(Protocol):
    """Where a session's frames go: the WebSocket connection that owns it."""

    def push(self, payload: bytes) -> bool:
        """Queue one text frame without blocking; False when the queue is full."""
        ...


class Timers(Protocol):
    """Runs a session's timers: the connection that owns the session (its nursery)."""

    def want(self, widen: Widen | None) -> None:
        """Run the widen timer ``widen`` (cancelling any other); None cancels it."""
        ...


class Session:
    """One live socket's session on this server: the shell around its ``SessionCore``.

    The core holds the state and decides; the session performs: ``send``
    queues frames on ``outlet`` (the socket's bounded outbox), ``close``
    cancels ``cancel_scope`` (the connection then closes the socket with
    ``core.close_code``), ``sync_timer`` tells ``timers`` (the connection)
    which widen timer the core wants running. ``send`` never blocks: a full
    outbox means the client stopped reading, and the session is closed with
    4008. Once detached (``close_outbox``) it holds no reference to the
    connection.
    """

    __slots__ = (
        "__weakref__",
        "cancel_scope",
        "core",
        "id",
        "ip",
        "lock",
        "nursery",
        "outlet",
        "suspect",
        "timers",
    )

    def __init__(
        self,
        session_id: str,
        ip: str,
        *,
        outlet: Outlet | None = None,
        core: SessionCore | None = None,
    ) -> None:
        self.id = session_id
        self.ip = ip
        self.outlet = outlet
        self.core = core or SessionCore(session_id, 0.0)
        self.lock = trio.Lock()  # one backend operation at a time
        self.suspect: tuple[str, str] | None = None  # a difference the last resync saw
        self.cancel_scope = trio.CancelScope()
        self.nursery: trio.Nursery | None = None  # the owning connection's, while it runs
        self.timers: Timers | None = None  # set by the connection that owns it

    @property
    def match(self) -> Match | None:
        """The current match, as this server knows it."""
        return self.core.match

    @property
    def waiting(self) -> bool:
        """In the queue, as far as this server knows."""
        return self.core.state == "waiting"

    def send(self, frame: str | bytes) -> None:
        """Queue a frame (text, or its UTF-8 bytes) for the client without blocking."""
        outlet = self.outlet
        if outlet is None:
            return
        if not outlet.push(frame.encode() if isinstance(frame, str) else frame):
            self.close(CloseCode.SLOW_CONSUMER, "slow consumer")

    def close(self, code: int, reason: str = "", *, partner_reason: str = "left") -> None:
        """Ask the connection to close with ``code``; the first call wins."""
        self.core.close(code, reason, partner_reason=partner_reason)
        self.cancel_scope.cancel()

    def close_outbox(self) -> None:
        """Drop whatever is sent from now on (the socket is going away)."""
        self.outlet = None

    def sync_timer(self) -> None:
        """Have the connection run the widen timer the core wants (or none)."""
        timers = self.timers
        if timers is not None:
            timers.want(self.core.widen)

    def stop_widen(self) -> None:
        """No widen timer for this session any more."""
        self.core.cancel_widen()
        self.sync_timer()


@dataclass(frozen=True, slots=True)
class ReportPolicy:
    """How reports are limited and when they ban (config ``[reports]``, ``limits``)."""

    per_reporter_per_hour: int = 10
    autoban_reporters: int = 3
    autoban_window_s: float = 3600.0
    autoban_s: float = 86400.0


class Hub:
    """Local sessions and the operations the WebSocket handler calls.

    Args:
        backend: the shared state.
        metrics: counters to update.
        reports: how reports are limited and when they ban (default ``ReportPolicy()``).
        reconnect_after_ms: what ``server_draining`` tells clients.
    """

    def __init__(
        self,
        backend: Backend,
        metrics: Metrics,
        *,
        reports: ReportPolicy | None = None,
        reconnect_after_ms: int = 1000,
        pair_tag: Callable[[str, str], str] | None = None,
    ):
        self.backend = backend
        self._pair_tag = pair_tag
        self.metrics = metrics
        self.report_policy = reports or ReportPolicy()
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self.draining_frame = protocol.encode(
            "server_draining", {"reconnect_after_ms": reconnect_after_ms}
        )
        # Metric children looked up once, not per relayed frame.
        self._relayed = {op: metrics.relayed.labels(op) for op in protocol.OP_NAMES.values()}
        self._no_sessions = trio.Event()
        self._no_sessions.set()
        self._sync_now = trio.Event()
        self._sync_soon = False  # a resync saw differences: look again shortly
        self._unreleased: set[str] = set()  # claims a failed release left behind

    # -- lifecycle -----------------------------------------------------

    def attach(self, session: Session) -> None:
        """Register a session whose socket was just accepted (already claimed)."""
        self.sessions[session.id] = session
        if self._no_sessions.is_set():
            self._no_sessions = trio.Event()
        self.metrics.connections.inc()

    async def detach(self, session: Session) -> None:
        """Forget a session whose socket is gone; tell its partner.

        Call shielded: it must finish even while the server is cancelling.
        """
        if self.sessions.get(session.id) is not session:
            return
        async with session.lock:  # first, so nothing runs between forgetting and releasing
            if self.sessions.get(session.id) is not session:
                return
            del self.sessions[session.id]
            session.stop_widen()
            session.close_outbox()
            self.metrics.connections.dec()
            try:
                ended = await self.backend.release_session(session.id)
                if ended is not None:
                    await self._end(session, ended, session.core.partner_reason)
            except BackendUnavailable as exc:
                log.warning("could not release session %s now (%s): will retry", session.id, exc)
                self._unreleased.add(session.id)
                self._sync_now.set()
            finally:
                if not self.sessions:
                    self._no_sessions.set()

    async def release_claim(self, session_id: str) -> None:
        """Give back a claim whose socket never opened; retried later if the backend is down."""
        try:
            await self.backend.release_session(session_id)
        except BackendUnavailable:
            self._unreleased.add(session_id)
            self._sync_now.set()

    async def wait_empty(self) -> None:
        """Return when no session is attached."""
        await self._no_sessions.wait()

    def start_drain(self) -> None:
        """Tell every client to go elsewhere; the server closes sockets after a grace period."""
        self.draining = True
        for session in list(self.sessions.values()):
            session.send(self.draining_frame)

    async def ban(self, ban: Ban) -> int:
        """Put ``ban`` in force and close the local sockets it covers with 1008.

        Returns how many sockets were closed.
        """
        await self.backend.add_ban(ban)
        closed = self._close_banned(ban.target)
        message = BusMessage(
            to="", kind="ban", match_id="", target=ban.target, origin=self.backend.server_id
        )
        try:
            await self.backend.broadcast(_bus_encoder.encode(message))
        except BackendUnavailable as exc:
            # The ban is in force; other servers apply it to new sockets only.
            log.warning("could not tell other servers about the ban of %s: %s", ban.target, exc)
        return closed

    def _close_banned(self, target: str) -> int:
        networks = (ipaddress.ip_network(target, strict=False),)
        banned = [s for s in self.sessions.values() if group_in_networks(s.ip, networks)]
        for session in banned:
            session.send(protocol.error_frame(ErrorCode.BANNED, "this address is banned", None))
            session.close(CloseCode.POLICY, "banned")
        return len(banned)

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions.values()):
            session.close(code, reason)

    # -- client operations ---------------------------------------------

    async def join(
        self, session: Session, prefs: Preferences, *, ended_reason: str, op: str = "join_queue"
    ) -> None:
        """Enter the waiting pool (ending a current match first)."""
        async with session.lock:
            try:
                await self._make_idle(session, ended_reason)
                session.core.asked(prefs)
                await self._enter_queue(session, prefs, announce=True)
            except BackendUnavailable as exc:
                self._unavailable(session, op, exc)

    async def _enter_queue(self, session: Session, prefs: Preferences, *, announce: bool) -> None:
        core = session.core
        applied = core.matches_applied
        try:
            result = await self.backend.join(session.id, prefs)
        except ValueError:
            # The backend holds it in a queue or a match this server does not
            # know of (an answer lost to a fault): end that, then join.
            log.info("join: %s was not idle in the backend; leaving first", session.id)
            ended = await self.backend.leave(session.id)
            if ended is not None:
                await self._end(session, ended, "left")
            result = await self.backend.join(session.id, prefs)
        if isinstance(result, Waiting):
            if core.matches_applied != applied:
                # Another server matched it (and told it) before this answer
                # came back: it no longer waits, and must not hear "queued".
                return
            widen = None
            if result.widen_after_s is not None:
                widen = Widen(result.ticket, result.widen_after_s)
            frame = core.queued(prefs, widen, announce=announce)
            if frame is not None:
                session.send(frame)
            session.sync_timer()
        else:
            await self._form(session, result)

    async def next(self, session: Session) -> None:
        prefs = session.core.prefs or Preferences()
        await self.join(session, prefs, ended_reason="next", op="next")

    async def next_limited(self, session: Session, per_minute: int) -> float | None:
        """Count one ``next``; when the session has spent its ``per_minute``, the
        seconds until it may skip again (else None).

        The window is the backend's, keyed by session id: every socket the
        session opens, on any server, spends the same allowance, so
        reconnecting does not reset it. A backend that does not answer limits
        nothing here (the ``next`` itself then answers ``unavailable``).
        """
        try:
            return await self.backend.hit_rate_limit(f"next:{session.id}", per_minute, 60.0)
        except BackendUnavailable:
            return None

    async def leave(self, session: Session) -> None:
        """Become idle: stop searching, or end the current match."""
        async with session.lock:
            try:
                await self._make_idle(session, "left")
            except BackendUnavailable as exc:
                self._unavailable(session, "leave_queue", exc)

    def _unavailable(self, session: Session, op: str, exc: BackendUnavailable) -> None:
        if isinstance(exc, SessionElsewhere):
            # The session opened a socket on another server since (e.g. while
            # this one was frozen): this socket may no longer act for it.
            log.info("%s for %s: the session is held elsewhere now; closing", op, session.id)
            session.close(CloseCode.GOING_AWAY, "connected elsewhere")
            return
        log.warning("%s for %s failed: %s", op, session.id, exc)
        self._sync_now.set()
        session.send(
            protocol.error_frame(
                ErrorCode.UNAVAILABLE, "the service is briefly unavailable; try again", op
            )
        )

    async def relay(self, session: Session, relay: Relay) -> None:
        """Deliver what the core made of a chat, typing or signaling message to the partner."""
        match = relay.match
        frame = relay.frame
        chat = relay.chat
        partner_id = match.partner_of(session.id)
        partner = self.sessions.get(partner_id)
        self._relayed[relay.op].inc()
        if partner is not None:
            if partner.core.relayed(match.match_id, chat):
                partner.send(frame)
            return
        bus = BusMessage(
            to=partner_id, kind="relay", match_id=match.match_id, frame=frame.decode(), chat=chat
        )
        try:
            delivery = await self.backend.publish(
                partner_id,
                _bus_encoder.encode(bus),
                server=match.server_of(partner_id),
                match_id=match.match_id,
                sender=session.id,
            )
        except BackendUnavailable as exc:
            self._unavailable(session, relay.op, exc)
            return
        if delivery == "unheard":
            # The partner is still held, but its server is not listening right
            # now (resubscribing): this frame is lost, the match is not.
            self._unavailable(session, relay.op, BackendUnavailable("the partner's server is away"))
        elif delivery == "gone":
            # The match is over in the shared state (its end is on its way,
            # or was lost): over for the sender too, and said once.
            self._apply_ended(session, match.match_id, "left")
            self._sync_now.set()

    async def report(self, session: Session, reason: str) -> None:
        """End the match, block the pair, keep the report with the transcript."""
        async with session.lock:
            try:
                await self._report(session, reason)
            except BackendUnavailable as exc:
                self._unavailable(session, "report", exc)

    async def _report(self, session: Session, reason: str) -> None:
        core = session.core
        refusal = core.report_check()
        if refusal is not None:
            session.send(refusal)
            return
        match = core.match
        assert match is not None
        partner_id = match.partner_of(session.id)
        await self.backend.block(session.id, partner_id)
        partner = self.sessions.get(partner_id)
        if partner is not None:
            reported_ip = partner.ip
        else:  # on another server: the backend knows its client
            reported_ip = await self.backend.client_of(partner_id) or ""
        transcript = core.transcript_lines()
        await self._make_idle(session, "reported")
        policy = self.report_policy
        over = await self.backend.hit_rate_limit(
            f"reports:{session.ip}", policy.per_reporter_per_hour, 3600.0
        )
        if over is not None:
            # The match still ends and the pair stays apart; the report just does not count.
            session.send(
                protocol.error_frame(
                    ErrorCode.RATE_LIMITED, "too many reports: this one was not recorded", "report"
                )
            )
            return
        await self.backend.record_report(
            ReportRecord(
                reported_ip=reported_ip,
                reported=partner_id,
                reporter=session.id,
                reporter_ip=session.ip,
                reason=reason,
                at=time.time(),
                transcript=transcript,
            )
        )
        self.metrics.reports.inc()
        if reported_ip and reported_ip != session.ip:  # one address cannot report itself away
            reporters = await self.backend.count_reporter(
                reported_ip, session.ip, policy.autoban_window_s
            )
            if reporters >= policy.autoban_reporters:
                await self._autoban(reported_ip, reporters)

    async def _autoban(self, ip: str, reporters: int) -> None:
        if await self.backend.ban_for(ip) is not None:
            return  # never shorten a ban an operator set
        now = time.time()
        closed = await self.ban(
            Ban(ip, f"reported by {reporters} people", now + self.report_policy.autoban_s, now)
        )
        self.metrics.autobans.inc()
        log.info(
            "banned %s for %.0f s after %d reports (%d sockets closed)",
            ip,
            self.report_policy.autoban_s,
            reporters,
            closed,
        )

    # -- bus -----------------------------------------------------------

    async def on_bus(self, raw: bytes) -> None:
        """Apply a message another server sent about one of our sessions."""
        try:
            message = _bus_decoder.decode(raw)
        except msgspec.DecodeError:
            log.warning("dropped a malformed bus message")
            return
        if message.kind == "ban":
            if message.origin != self.backend.server_id:
                try:
                    self._close_banned(message.target)
                except ValueError:
                    log.warning("dropped a ban message with a bad target")
            return
        session = self.sessions.get(message.to)
        if session is None:
            return
        if message.kind == "relay":
            self._apply_relay(session, message.match_id, message.frame, message.chat)
        elif message.kind == "ended":
            self._apply_ended(session, message.match_id, message.reason)
        elif message.kind == "matched" and message.match is not None:
            caller, callee, mode, common = message.match
            match = Match(message.match_id, caller, callee, mode, common, message.servers)
            self._apply_match(session, match, message.pair or None)

    # -- internals -----------------------------------------------------

    async def widen(self, session: Session, widen: Widen) -> None:
        """The connection's timer for ``widen`` fired: widen the session's queue entry.

        Past the core's check the backend may form a match: the delivery
        finishes even if the session is being torn down, so nobody is left
        matched with a partner that never heard of it.
        """
        async with session.lock:
            if not session.core.widen_due(widen):
                return  # the wait ended while the timer fired or waited for the lock
            with trio.CancelScope(shield=True):
                try:
                    match = await self.backend.widen(session.id, widen.ticket)
                except BackendUnavailable as exc:
                    log.warning("widen for %s failed: %s", session.id, exc)
                    self._sync_now.set()
                    return
                if match is not None:
                    await self._form(session, match)

    async def _make_idle(self, session: Session, partner_reason: str) -> None:
        session.core.idle()
        session.sync_timer()
        ended = await self.backend.leave(session.id)
        if ended is not None:
            await self._end(session, ended, partner_reason)

    async def _form(self, session: Session, match: Match) -> None:
        """``session``'s operation formed ``match``: tell both sides.

        A partner on another server hears of it first: its client must know
        the match before this client's first relayed frame (the caller's
        offer) reaches its server.
        """
        self.metrics.matches.inc()
        partner_id = match.partner_of(session.id)
        partner = self.sessions.get(partner_id)
        pair = await self._pair(session, partner_id, partner)
        if partner is None:
            common = match.common_interests
            message = BusMessage(
                to=partner_id,
                kind="matched",
                match_id=match.match_id,
                match=(match.caller, match.callee, match.mode, common),
                servers=match.servers,
                pair=pair or "",
            )
            try:
                await self._publish(message, match.server_of(partner_id))
            except BackendUnavailable as exc:
                # Formed all the same: the partner's server finds it at its resync.
                log.warning("could not tell %s of match %s: %s", partner_id, match.match_id, exc)
        self._apply_match(session, match, pair)
        if partner is not None:
            self._apply_match(partner, match, pair)

    async def _pair(self, session: Session, partner_id: str, partner: Session | None) -> str | None:
        """The pair tag of ``session`` and its new partner, or None when a client is unknown.

        A partner on another server costs one lookup of its client (the
        backend's; None if it does not answer: the match goes on untagged).
        """
        if self._pair_tag is None:
            return None
        theirs: str | None
        if partner is not None:
            theirs = partner.ip
        else:
            try:
                theirs = await self.backend.client_of(partner_id)
            except BackendUnavailable:
                theirs = None
        if not theirs or not session.ip:
            return None
        return self._pair_tag(session.ip, theirs)

    async def _end(self, session: Session, match: Match, partner_reason: str) -> None:
        """``session``'s operation ended ``match``: update it, tell the partner."""
        session.core.forget(match.match_id)
        partner_id = match.partner_of(session.id)
        partner = self.sessions.get(partner_id)
        if partner is not None:
            self._apply_ended(partner, match.match_id, partner_reason)
        else:
            message = BusMessage(
                to=partner_id, kind="ended", match_id=match.match_id, reason=partner_reason
            )
            await self._publish(message, match.server_of(partner_id))

    def _apply_match(self, session: Session, match: Match, pair: str | None = None) -> None:
        frame = session.core.matched(match, pair)
        if frame is not None:
            session.sync_timer()
            session.send(frame)

    def _apply_ended(self, session: Session, match_id: str, reason: str) -> None:
        frame = session.core.ended(match_id, reason)
        if frame is not None:
            session.send(frame)

    def _apply_relay(self, session: Session, match_id: str, frame: str, chat: str | None) -> None:
        if session.core.relayed(match_id, chat):
            session.send(frame)

    async def _publish(self, message: BusMessage, server: str = "") -> None:
        await self.backend.publish(message.to, _bus_encoder.encode(message), server=server)

    # -- cluster upkeep ------------------------------------------------

    def request_sync(self) -> None:
        """Messages may have been lost, or the backend lost our records: resync soon."""
        self._sync_now.set()

    async def run_sync(self, interval_s: float = SYNC_INTERVAL_S) -> None:
        """Resync every ``interval_s`` and whenever asked, until cancelled."""
        while True:
            with trio.move_on_after(SYNC_RETRY_S if self._sync_soon else interval_s):
                await self._sync_now.wait()
            self._sync_now = trio.Event()
            self._sync_soon = False
            try:
                await self.resync()
            except BackendUnavailable as exc:
                log.warning("resync failed: %s", exc)
                # A session whose socket ended while the backend was away still
                # waits there, and could be matched: try again at once.
                await trio.sleep(RELEASE_RETRY_S if self._unreleased else SYNC_RETRY_S)
                self._sync_now.set()
            except Exception:
                # A bug here must not end the process with every socket on it.
                log.exception("resync failed")
                await trio.sleep(SYNC_RETRY_S)

    async def resync(self) -> None:
        """Compare every idle-handed local session with the backend and repair differences.

        Raises:
            BackendUnavailable: the backend did not answer (nothing was lost).
        """
        for session_id in list(self._unreleased):
            if session_id not in self.sessions:
                ended = await self.backend.release_session(session_id)
                if ended is not None:
                    await self.partners_gone([Ended(session_id, ended)])
            self._unreleased.discard(session_id)
        # In slices, each under its sessions' locks: one pass over thousands of
        # sessions would hold every socket up for tens of milliseconds.
        sessions = list(self.sessions.values())
        for start in range(0, len(sessions), SYNC_SLICE):
            if start:
                await trio.lowlevel.checkpoint()
            await self._resync_some(sessions[start : start + SYNC_SLICE])

    def local_views(self) -> list[LocalView]:
        """What this server holds, for the backend to put back after it lost its state.

        Taken at once, without a checkpoint (and without the sessions' locks:
        the backend runs no other call of this server until it is put back).
        """
        return [_view(s) for s in self.sessions.values() if s.core.close_code is None]

    async def _resync_some(self, sessions: list[Session]) -> None:
        held: list[Session] = []
        try:
            for session in sessions:
                if not session.lock.locked() and session.core.close_code is None:
                    session.lock.acquire_nowait()
                    held.append(session)
            views = [_view(s) for s in held]
            waiting = [s.waiting for s in held]
            shared = await self.backend.sync(views)
            for session, local, was_waiting, view in zip(held, views, waiting, shared, strict=True):
                if self.sessions.get(session.id) is not session:
                    continue
                if view.state == "formed" and view.match is not None:
                    # The resync itself matched it (it waited, and a partner
                    # had been passed over): tell both sides now.
                    session.stop_widen()
                    await self._form(session, view.match)
                    continue
                # A partner's operation or a bus message may have changed it
                # meanwhile (they need no lock of its own): then the answer is
                # stale, and the next resync looks again.
                moved = session.match is not local.match or session.waiting != was_waiting
                if not moved:
                    await self._repair(session, view)
        finally:
            for session in held:
                session.lock.release()

    async def _repair(self, session: Session, shared: SharedView) -> None:
        local = session.match
        if shared.state == "ended" and local is not None:
            # Certain, not news on its way: the partner moved on, or never
            # came back after the shared state was lost.
            log.info("resync: match %s of %s is over", local.match_id, session.id)
            session.suspect = None
            self._apply_ended(session, local.match_id, "left")
            return
        # What differs now may be news still on its way (a match formed or
        # ended a moment ago, its bus message not yet here): act only on a
        # difference that the previous resync saw too.
        seen = (shared.state, shared.match.match_id if shared.match else "")
        agrees = (
            (
                shared.state == "matched"
                and local is not None
                and shared.match is not None
                and local.match_id == shared.match.match_id
            )
            or (shared.state == "waiting" and local is None and session.waiting)
            or (shared.state in ("idle", "ended") and local is None and not session.waiting)
        )
        if agrees:
            session.suspect = None
            return
        if shared.state != "elsewhere" and session.suspect != seen:
            session.suspect = seen
            self._sync_soon = True
            return
        session.suspect = None
        if shared.state == "elsewhere":
            session.close(CloseCode.GOING_AWAY, "connected elsewhere")
        elif shared.state == "matched" and shared.match is not None:
            match = shared.match
            if local is not None and local.match_id == match.match_id:
                return
            if local is not None:
                self._apply_ended(session, local.match_id, "left")
            if match.match_id in session.core.ended_ids:  # ended here, never told the backend
                ended = await self.backend.leave(session.id)
                if ended is not None:
                    await self._end(session, ended, "left")
            else:
                log.info("resync: %s missed match %s", session.id, match.match_id)
                self._apply_match(session, match)
        elif local is not None:
            log.info("resync: %s missed the end of match %s", session.id, local.match_id)
            self._apply_ended(session, local.match_id, "left")
            if shared.state == "waiting":
                await self.backend.leave(session.id)
        elif session.waiting and shared.state in ("idle", "ended") and session.core.prefs:
            log.info("resync: %s waits again", session.id)
            session.stop_widen()
            await self._enter_queue(session, session.core.prefs, announce=False)
        elif not session.waiting and shared.state == "waiting":
            await self.backend.leave(session.id)

    async def partners_gone(self, ended: list[Ended]) -> None:
        """The backend ended these matches because one side is gone: tell the other."""
        for item in ended:
            partner_id = item.match.partner_of(item.gone)
            partner = self.sessions.get(partner_id)
            if partner is not None:
                self._apply_ended(partner, item.match.match_id, "left")
            else:
                message = BusMessage(
                    to=partner_id, kind="ended", match_id=item.match.match_id, reason="left"
                )
                await self._publish(message, item.match.server_of(partner_id))


def _view(session: Session) -> LocalView:
    """What this server holds for ``session``, as ``Backend.sync`` takes it."""
    core = session.core
    if core.state != "waiting" or core.prefs is None:
        return LocalView(session.id, session.ip, core.match)
    ticket = core.widen.ticket if core.widen is not None else None
    return LocalView(session.id, session.ip, core.match, core.prefs, ticket)
