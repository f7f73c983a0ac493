"""Sessions on this server, their operations, and delivery between partners.

The hub performs what each session's ``SessionCore`` decides: it is the one
interpreter of effects (``session_events.py``), and it decides nothing of a
session's rules itself. Its jobs:

* **The registry** (``sessions``): who is connected here; attach, detach
  (the partner is told), drain.
* **Operations**: a client's ``join_queue``, ``next``, ``leave_queue`` and
  ``report`` (``join``, ``leave``, ``report``), a widen timer that fired
  (``widen``) and a detach run one at a time per session, under
  ``Session.lock``: the hub takes the lock, tells the core ``Started``,
  then performs the backend calls the core asks for, feeding every answer
  back. (The resync, ``resync.py``, takes the same locks.)
* **Delivery**: a relay, or news that a match formed or ended, goes to the
  partner's core directly when the partner is on this server, else through
  the backend's bus (``bus.py`` encodes it) to the server the match names.

Rules of performing:

* Effects are performed in order; an answer's effects are performed where
  the question was, before the rest.
* A backend call or a delivery that fails with ``BackendUnavailable`` is
  told to the core (``Unavailable``), its answer performed, and the rest of
  the operation dropped: ``BackendUnavailable`` never leaves the hub. (The
  resync alone lets it through: a failed pass is retried whole.)
* Backend calls are shielded from cancellation inside the backend, and a
  widen timer's operation runs shielded once it started, so a match the
  backend formed is always delivered: nothing between "formed" and "told"
  can be cancelled.
* News for a session (its partner's relay, a match formed or ended, a
  drain, a close) needs no lock and never waits: its effects are all
  immediate.
* The hub never starts a task and never blocks delivering: a frame is
  queued on the socket's outbox (a full outbox closes the session with
  4008), and a widen timer is run by the connection that owns the session
  (``Session.timers``), which calls ``Hub.widen`` when it fires.

With the memory backend no backend call has a checkpoint, so each
operation is atomic. With a shared backend the cores' ``match_id`` checks
keep every interleaving correct (ADR 0003).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time
import uuid
from collections.abc import Callable
from typing import Final, Protocol, assert_never

import trio

from omiro_trio import bus
from omiro_trio.addresses import banned_account, group_in_networks
from omiro_trio.backends.base import (
    Backend,
    Ban,
    Ended,
    LocalView,
    ReportRecord,
    SharedSeats,
)
from omiro_trio.codes import CloseCode, ErrorCode, PartnerReason
from omiro_trio.errors import BackendUnavailable, SessionElsewhere
from omiro_trio.matchmaking import Match, Preferences
from omiro_trio.metrics import Metrics
from omiro_trio.protocol import OP_NAMES, Hello
from omiro_trio.reports import ReportDesk, ReportPolicy, ReportWatcher
from omiro_trio.resync import SYNC_INTERVAL_S as SYNC_INTERVAL_S  # the cluster tests plan by it
from omiro_trio.resync import SYNC_RETRY_S as SYNC_RETRY_S
from omiro_trio.resync import SyncRequests
from omiro_trio.seats import Hold, Pair, Seats
from omiro_trio.session_core import SessionCore
from omiro_trio.session_events import (
    AnnounceAway,
    AnnounceEnd,
    AnnounceMatch,
    Arm,
    Banned,
    Blocked,
    BlockPartner,
    ClaimSeat,
    Close,
    CloseAsked,
    CountCall,
    CountError,
    CountExceeded,
    CountMatch,
    CountSkip,
    Delivered,
    Detached,
    Draining,
    Effect,
    Effects,
    EndSeats,
    Enqueue,
    Enqueued,
    Event,
    Filed,
    FileReport,
    GiveUpSeat,
    Immediate,
    Join,
    Leave,
    MadeIdle,
    MakeIdle,
    MatchEnded,
    MatchFormed,
    NotIdle,
    Opened,
    Operation,
    PartnerAway,
    Relay,
    Release,
    Released,
    ReleaseLater,
    ReportPartner,
    Resumed,
    SeatHeld,
    SeatRefused,
    SkipCounted,
    Started,
    SyncNow,
    SyncSoon,
    TakeSeat,
    TimerFired,
    Unavailable,
    Watch,
    WatchFired,
    Widen,
    Widened,
    WidenWait,
)

__all__ = ["SYNC_INTERVAL_S", "SYNC_RETRY_S", "Hub", "Outlet", "Session", "Timers"]

log = logging.getLogger(__name__)

SKIP_WINDOW_S: Final = 60.0  # nexts_per_minute


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

    def watch(self, after_s: float | None) -> None:
        """Run the liveness timer, to fire after ``after_s`` (cancelling any other); None
        cancels it."""
        ...


class Session:
    """One live socket's session on this server: its core and what the hub performs on.

    ``outlet`` is the socket's bounded outbox, ``timers`` the connection
    that runs the session's widen timer, ``cancel_scope`` the connection's
    (cancelled by a ``Close``, whose code and reason ``closed`` keeps for the
    close handshake). Once detached (``close_outbox``) it holds no reference
    to the connection.
    """

    __slots__ = (
        "__weakref__",
        "account",
        "cancel_scope",
        "closed",
        "core",
        "id",
        "ip",
        "left_ahead",
        "lock",
        "outlet",
        "timers",
    )

    def __init__(
        self,
        session_id: str,
        ip: str,
        *,
        outlet: Outlet | None = None,
        core: SessionCore | None = None,
        account: str = "",
    ) -> None:
        self.id = session_id
        self.ip = ip
        # The account key its token carries ("" none): server-side only, never
        # sent to anyone; reports name it and account bans close its socket.
        self.account = account
        self.outlet = outlet
        self.core = core or SessionCore(session_id, 0.0)
        self.lock = trio.Lock()  # one operation at a time
        self.cancel_scope = trio.CancelScope()
        self.closed: Close | None = None  # the close the core decided, if it did
        self.timers: Timers | None = None  # set by the connection that owns it
        # Set by the connection too: whether the client has already left behind
        # what is being performed (read, or read ahead, and not yet handled).
        self.left_ahead: Callable[[], bool] | None = None

    @property
    def match(self) -> Match | None:
        """The current match, as this server knows it (for reports and tests)."""
        return self.core.match

    def close_outbox(self) -> None:
        """Drop whatever is sent from now on (the socket is going away)."""
        self.outlet = None


class _Abandoned(Exception):
    """The rest of an operation is dropped (a call failed; the core was told)."""


_LEAVE: Final = Leave()
_DETACHED: Final = Detached()
_WATCH_FIRED: Final = WatchFired()
_DRAINING: Final = Draining()
_BANNED: Final = Banned()
_ACCOUNT_BANNED: Final = Banned(account=True)
_SLOW_CONSUMER: Final = CloseAsked(CloseCode.SLOW_CONSUMER, "slow consumer")


class Hub:
    """Local sessions, their operations and delivery (see the module's docstring).

    Args:
        backend: the shared state.
        metrics: counters to update.
        reports: how reports are limited and when they ban.
        watcher: told of each report kept and each automatic ban (the alerts).
        nexts_per_minute: the skips a session may spend a minute.
        pair_tag: the tag of two clients' address groups (``TokenSigner.pair_tag``),
            told in ``match_found``; None: matches are not tagged.
        wall: unix time, for reports and bans.
        seats: the seats of matches being resumed (``seats.py``).
    """

    def __init__(
        self,
        backend: Backend,
        metrics: Metrics,
        *,
        reports: ReportPolicy | None = None,
        watcher: ReportWatcher | None = None,
        nexts_per_minute: int = 30,
        pair_tag: Callable[[str, str], str] | None = None,
        wall: Callable[[], float] = time.time,
        seats: Seats | None = None,
    ):
        self.backend = backend
        self.metrics = metrics
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self.sync = SyncRequests()
        self.reports = ReportDesk(
            backend,
            metrics,
            reports or ReportPolicy(),
            close_banned=self.close_banned,
            watcher=watcher,
        )
        self._nexts_per_minute = nexts_per_minute
        self._pair_tag = pair_tag
        self.seats = seats or Seats(grace_s=30.0, keep_s=7200.0)
        # With a shared backend (Redis) the seats are every server's: any of them pairs
        # the two sides. ``seats`` then only answers for this server's own sockets.
        self._shared: SharedSeats | None = backend if isinstance(backend, SharedSeats) else None
        self._seat_drops: list[tuple[str, str]] = []  # (match, session) for run_seat_drops
        self._seat_drops_ready = trio.Event()
        self._wall = wall
        # Metric children looked up once, not per relayed frame.
        self._relayed = {op: metrics.relayed.labels(op) for op in OP_NAMES.values()}
        self._no_sessions = trio.Event()
        self._no_sessions.set()

    # -- the registry ----------------------------------------------------

    def attach(self, session: Session, hello: Hello | None = None) -> None:
        """Register a session whose socket was just accepted (already claimed).

        With ``hello``, the client is greeted (and told the server drains, if so).
        """
        self.sessions[session.id] = session
        if self._no_sessions.is_set():
            self._no_sessions = trio.Event()
        self.metrics.connections.inc()
        if hello is not None:
            self.tell(session, Opened(hello, self.draining))

    async def detach(self, session: Session) -> None:
        """Forget a session whose socket is gone; tell its partner.

        Call shielded: it must finish even while the server is cancelling.
        """
        if self.sessions.get(session.id) is not session:
            return
        await _take(session.lock)  # first, so nothing runs between forgetting and releasing
        try:
            if self.sessions.get(session.id) is not session:
                return
            del self.sessions[session.id]
            session.close_outbox()
            self.metrics.connections.dec()
            try:
                now = trio.current_time()
                await self._chain(session, session.core.handle(_DETACHED, now), now)
            finally:
                if not self.sessions:
                    self._no_sessions.set()
        finally:
            session.lock.release()

    async def release_claim(self, session_id: str) -> None:
        """Give back a claim whose socket never opened; retried later if the backend is down."""
        try:
            await self.backend.release_session(session_id)
        except BackendUnavailable:
            self.sync.release_later(session_id)

    async def wait_empty(self) -> None:
        """Return when no session is attached."""
        await self._no_sessions.wait()

    def start_drain(self) -> None:
        """Tell every client to go elsewhere; the server closes sockets after a grace period."""
        self.draining = True
        for session in list(self.sessions.values()):
            self.tell(session, _DRAINING)

    def close(
        self,
        session: Session,
        code: CloseCode,
        reason: str,
        partner_reason: PartnerReason = PartnerReason.LEFT,
    ) -> None:
        """End ``session`` from outside its rules (the engine, a bug); the first close wins."""
        self.tell(session, CloseAsked(code, reason, partner_reason))

    def close_all(self, code: CloseCode, reason: str) -> None:
        for session in list(self.sessions.values()):
            self.close(session, code, reason)

    async def ban(self, ban: Ban) -> int:
        """Put ``ban`` in force and close the local sockets it covers with 1008.

        Returns how many sockets were closed.
        """
        return await bus.put_ban_in_force(self.backend, ban, self.close_banned)

    def close_banned(self, target: str) -> int:
        """Close the local sockets ``target`` covers: those whose client it covers (an
        address or network), or whose token carries its account (``account:KEY``).

        Returns how many there were.

        Raises:
            ValueError: ``target`` is not an address, network or account.
        """
        account = banned_account(target)
        if account is not None:
            banned = [s for s in self.sessions.values() if s.account == account]
        else:
            networks = (ipaddress.ip_network(target, strict=False),)
            banned = [s for s in self.sessions.values() if group_in_networks(s.ip, networks)]
        for session in banned:
            self.tell(session, _BANNED if account is None else _ACCOUNT_BANNED)
        return len(banned)

    # -- what arrives from outside the session ---------------------------

    def tell(self, session: Session, event: Event, now: float | None = None) -> None:
        """News for ``session`` that needs no lock (its effects are all immediate).

        ``now``: the clock's time, when the caller has it already.
        """
        if now is None:
            now = trio.current_time()
        self._apply(session, session.core.handle(event, now), now)

    def tell_partner(self, session_id: str, event: Event, now: float | None = None) -> bool:
        """News for the session ``session_id`` if it is here; False when it is not."""
        session = self.sessions.get(session_id)
        if session is None:
            return False
        self.tell(session, event, now)
        return True

    async def on_bus(self, raw: bytes) -> None:
        """Apply a message another server sent (``bus.py``)."""
        bus.dispatch(self, raw)

    def request_sync(self) -> None:
        """Messages may have been lost, or the backend lost our records: resync soon."""
        self.sync.now()

    def local_views(self) -> list[LocalView]:
        """What this server holds, for the backend to put back after it lost its state.

        Taken at once, without a checkpoint (and without the sessions' locks:
        the backend runs no other call of this server until it is put back).
        """
        views = (s.core.local_view(s.ip) for s in self.sessions.values())
        return [view for view in views if view is not None]

    async def partners_gone(self, ended: list[Ended]) -> None:
        """The backend ended these matches because one side is gone: tell the other."""
        for item in ended:
            await self._announce_end(item.gone, item.match, PartnerReason.LEFT)

    # -- operations ------------------------------------------------------

    async def perform(self, session: Session, effects: Effects, now: float) -> None:
        """Perform what ``session``'s core answered a client frame (or pings), in order.

        Operations among them take the session's lock (``join``, ``leave``,
        ``report``). A relay (always alone) takes the short path: no lock, no
        backend round trip for a partner on this server.
        """
        if not effects:
            return
        relay = effects[0]
        if type(relay) is not Relay:
            await self._chain(session, effects, now)
            return
        match = relay.match
        partner_id = match.partner_of(session.id)
        self._relayed[relay.op].inc()
        partner = self.sessions.get(partner_id)
        if partner is not None:
            self._apply(partner, partner.core.handle(relay, now), now)
            return
        message = bus.relay(partner_id, match.match_id, relay.frame, relay.chat)
        try:
            delivery = await self.backend.publish(
                partner_id,
                message,
                server=match.server_of(partner_id),
                match_id=match.match_id,
                sender=session.id,
            )
        except BackendUnavailable as exc:
            with contextlib.suppress(_Abandoned):
                await self._failed(session, relay, exc, now)
            return
        if delivery == "unheard":
            log.warning("%s for %s failed: the partner's server is away", relay.op, session.id)
        self._apply(session, session.core.handle(Delivered(relay, delivery), now), now)

    async def join(self, session: Session, prefs: Preferences, *, op: str = "join_queue") -> None:
        """Enter the waiting pool with ``prefs`` (ending a current match first)."""
        await self._operate(session, Join(prefs, op))

    async def leave(self, session: Session) -> None:
        """Become idle: stop searching, or end the current match."""
        await self._operate(session, _LEAVE)

    async def report(self, session: Session, reason: str) -> None:
        """End the match, block the pair, keep the report with the transcript."""
        await self._operate(session, ReportPartner(reason))

    async def widen(self, session: Session, widen: Widen) -> None:
        """The connection's timer for ``widen`` fired: widen the session's queue entry.

        Past the core's check the backend may form a match: the delivery
        finishes even if the session is being torn down, so nobody is left
        matched with a partner that never heard of it.
        """
        async with session.lock:
            now = trio.current_time()
            effects = session.core.handle(TimerFired(widen), now)
            with trio.CancelScope(shield=True):
                await self._chain(session, effects, now)

    async def watch_fired(self, session: Session) -> None:
        """The connection's liveness timer fired: a silent client's match may end as lost.

        Shielded once started, like a widen: the end is told to both sides.
        """
        async with session.lock:
            now = trio.current_time()
            effects = session.core.handle(_WATCH_FIRED, now)
            with trio.CancelScope(shield=True):
                await self._chain(session, effects, now)

    async def repair(self, session: Session, effects: Effects, now: float) -> None:
        """Perform what the core made of a resync's answer (the resync holds the lock).

        Raises:
            BackendUnavailable: a call failed; the resync tries again later.
        """
        await self._chain(session, effects, now, strict=True)

    async def _operate(self, session: Session, operation: Operation) -> None:
        await _take(session.lock)
        try:
            now = trio.current_time()
            await self._chain(session, session.core.handle(Started(operation), now), now)
        finally:
            session.lock.release()

    # -- the interpreter -------------------------------------------------

    async def _chain(
        self, session: Session, effects: Effects, now: float, *, strict: bool = False
    ) -> None:
        """Perform ``effects`` in order; each answer's effects at once, where it came.

        One loop over a stack of the effects still to perform (an answer's
        on top, the rest of the effects that asked beneath), not a call per
        answer: a join's three answers cost no coroutine each.

        ``strict``: a failure raises ``BackendUnavailable`` instead of being
        told to the core (which, told, ends the chain).
        """
        core = session.core
        stack = [iter(effects)]
        try:
            while stack:
                for effect in stack[-1]:
                    if type(effect) not in _AWAITED_TYPES:  # most effects: skip the cases below
                        self._do(session, effect, now)  # type: ignore[arg-type]  # (not awaited)
                        continue
                    answer: Event | None = None
                    match effect:  # the cases in the order a join and a detach meet them
                        case (
                            CountSkip()
                            | MakeIdle()
                            | Enqueue()
                            | Release()
                            | WidenWait()
                            | BlockPartner()
                            | FileReport()
                        ):
                            try:
                                answer = await self._ask(session, effect, now)
                            except BackendUnavailable as exc:
                                await self._failed(session, effect, exc, now, strict=strict)
                        case Join():
                            left_ahead = session.left_ahead
                            if left_ahead is not None and left_ahead():
                                # Its client left behind it: in the queue it could only
                                # be matched as a ghost. Its leaving ends the rest.
                                continue
                            await self.join(session, effect.prefs, op=effect.op)
                        case AnnounceMatch():
                            match = effect.match
                            await self._announce_match(session.id, match, effect.pair, now)
                        case AnnounceEnd():
                            try:
                                match, reason = effect.match, effect.reason
                                await self._announce_end(session.id, match, reason, now)
                            except BackendUnavailable as exc:
                                await self._failed(session, effect, exc, now, strict=strict)
                        case Relay():
                            await self.perform(session, (effect,), now)
                        case Leave():
                            await self._operate(session, effect)
                        case ReportPartner():
                            await self.report(session, effect.reason)
                        case TakeSeat():
                            await self._operate(session, effect)
                        case ClaimSeat():
                            answer = await self._claim_seat(session, effect, now)
                        case AnnounceAway():
                            await self._announce_away(session.id, effect.match)
                        case (
                            str()
                            | bytes()
                            | Arm()
                            | Watch()
                            | Close()
                            | CountError()
                            | CountCall()
                            | CountExceeded()
                            | CountMatch()
                            | SyncNow()
                            | SyncSoon()
                            | ReleaseLater()
                            | GiveUpSeat()
                            | EndSeats()
                        ):
                            self._do(session, effect, now)
                        case _:
                            assert_never(effect)
                    if answer is not None:
                        # The answer's effects first; the rest of these after them.
                        stack.append(iter(core.handle(answer, now)))
                        break
                else:
                    stack.pop()
        except _Abandoned:  # a failure the core was told of ended it
            return

    async def _ask(
        self,
        session: Session,
        call: CountSkip | MakeIdle | Enqueue | WidenWait | Release | BlockPartner | FileReport,
        now: float,
    ) -> Event:
        """Make the backend call ``call`` asks for; the answer, as the core's event."""
        backend = self.backend
        match call:
            case CountSkip():
                key = f"next:{session.id}"  # the session's, on every server it connects to
                wait_s = await backend.hit_rate_limit(key, self._nexts_per_minute, SKIP_WINDOW_S)
                return SkipCounted(call, wait_s)
            case MakeIdle():
                return MadeIdle(call, await backend.leave(session.id))
            case Enqueue():
                try:
                    result = await backend.join(session.id, call.prefs)
                except ValueError:
                    # The backend holds it in a queue or a match this server
                    # does not know of (an answer lost to a fault).
                    log.info("join: %s was not idle in the backend; leaving first", session.id)
                    return NotIdle(call)
                if isinstance(result, Match):
                    return Enqueued(call, result, self._pair_tag_of(session, result))
                return Enqueued(call, result)
            case WidenWait():
                match = await backend.widen(session.id, call.ticket)
                if match is None:
                    return Widened(call, None)
                return Widened(call, match, self._pair_tag_of(session, match))
            case Release():
                return Released(call, await backend.release_session(session.id))
            case BlockPartner():
                await backend.block(session.id, call.partner)
                partner = self.sessions.get(call.partner)
                if partner is not None:
                    partner_ip = partner.ip
                else:  # on another server: the backend knows its client
                    partner_ip = await backend.client_of(call.partner) or ""
                return Blocked(call, partner_ip)
            case FileReport():
                reported = self.sessions.get(call.reported)
                if reported is not None:
                    account = reported.account
                else:  # on another server: the backend knows its account
                    account = await backend.account_of(call.reported)
                at = self._wall()
                record = ReportRecord(
                    reported_ip=call.reported_ip,
                    reported=call.reported,
                    reporter=session.id,
                    reporter_ip=session.ip,
                    reason=call.reason,
                    at=at,
                    transcript=call.transcript,
                    match_s=call.match_s,
                    reported_account=account,
                )
                return Filed(call, await self.reports.file(record, now=at))
            case _:
                assert_never(call)

    async def _failed(
        self,
        session: Session,
        effect: CountSkip
        | MakeIdle
        | Enqueue
        | WidenWait
        | Release
        | BlockPartner
        | FileReport
        | Relay
        | AnnounceEnd,
        exc: BackendUnavailable,
        now: float,
        *,
        strict: bool = False,
    ) -> None:
        """Tell the core ``effect`` failed, perform its answer, and drop the rest.

        Raises:
            _Abandoned: always, unless ``strict``, when ``exc`` is raised.
        """
        if strict:
            raise exc
        elsewhere = isinstance(exc, SessionElsewhere)
        what = _what(effect)
        if elsewhere:
            log.info("%s for %s: the session is held elsewhere now; closing", what, session.id)
        elif not isinstance(effect, CountSkip):  # a skip not counted limits nothing
            log.warning("%s for %s failed: %s", what, session.id, exc)
        await self._chain(session, session.core.handle(Unavailable(effect, elsewhere), now), now)
        raise _Abandoned

    def _do(self, session: Session, effect: Immediate, now: float) -> None:
        """Perform an effect that needs no await."""
        match effect:
            case str() | bytes():
                self._send(session, effect, now)
            case Arm():
                timers = session.timers
                if timers is not None:
                    timers.want(effect.widen)
            case Watch():
                timers = session.timers
                if timers is not None:
                    timers.watch(effect.after_s)
            case Close():
                session.closed = effect
                session.cancel_scope.cancel()
            case CountError():
                self.metrics.protocol_errors.labels(effect.code).inc()
            case CountCall():
                self.metrics.count_call(effect.outcome, effect.path, effect.connect_ms)
            case CountExceeded():
                self.metrics.exceeded(effect.budget)
            case CountMatch():
                self.metrics.matches.inc()
            case SyncNow():
                self.sync.now()
            case SyncSoon():
                self.sync.look_again_soon()
            case ReleaseLater():
                self.sync.release_later(session.id)
            case GiveUpSeat():
                self.seats.give_up(effect.match_id, session.id, now)
                self._drop_shared_seat(effect.match_id, session.id)
            case EndSeats():
                self.seats.ended(effect.match_id, now)
                self._drop_shared_seat(effect.match_id, session.id)
            case _:
                assert_never(effect)

    def _apply(self, session: Session, effects: Effects, now: float) -> None:
        """Perform effects that need no await: news' effects (news never asks the backend).

        A frame is queued on the client's outbox without blocking; a full
        outbox means the client stopped reading, and closes it with 4008.
        """
        for effect in effects:
            if type(effect) is bytes:  # the hot path: a relayed frame (``_send`` inline)
                outlet = session.outlet
                if outlet is not None and not outlet.push(effect):
                    self._apply(session, session.core.handle(_SLOW_CONSUMER, now), now)
            elif isinstance(effect, str):
                self._send(session, effect, now)
            elif isinstance(effect, _AWAITED):
                raise AssertionError(f"news for {session.id} asked for {effect!r}")
            else:
                self._do(session, effect, now)

    def _send(self, session: Session, frame: str | bytes, now: float) -> None:
        """Queue ``frame`` on the client's outbox; a full outbox closes it with 4008."""
        outlet = session.outlet
        if outlet is not None and not outlet.push(
            frame.encode() if isinstance(frame, str) else frame
        ):
            self._apply(session, session.core.handle(_SLOW_CONSUMER, now), now)

    # -- resuming ----------------------------------------------------------

    async def _claim_seat(self, session: Session, call: ClaimSeat, now: float) -> Event:
        """Claim the seat ``call.ticket`` names for ``session`` (whose lock is held).

        The partner's seat held here by another session: the two are paired
        in a new match with the same roles, put in the shared state
        (``Backend.sync`` puts back a match both sides hold), and the partner
        is told at once. Else the seat is held for the grace, or refused.
        """
        if self._shared is not None:
            return await self._claim_shared_seat(session, call, self._shared)
        ticket = call.ticket
        for old in (ticket.caller, ticket.callee):
            held = self.sessions.get(old)
            if held is None or held.match is None or held.match.match_id != ticket.match_id:
                continue
            if old != ticket.holder and held.core.awaits_partner(ticket.match_id):
                # The partner kept the match for this seat: pair with it.
                kept = self.seats.claim_kept(ticket, session.id, held.id, now)
                if isinstance(kept, Pair):
                    async with held.lock:
                        return await self._pair(session, held, call)
                assert not isinstance(kept, Hold)
                return SeatRefused(call, kept.code, kept.text)
            return SeatRefused(call, ErrorCode.TICKET_USED, "that match is still going on")
        verdict = self.seats.claim(ticket, session.id, now)
        if isinstance(verdict, Hold):
            return SeatHeld(call, verdict.grace_s)
        if not isinstance(verdict, Pair):
            return SeatRefused(call, verdict.code, verdict.text)
        partner = self.sessions.get(verdict.partner)
        if partner is None:  # (its socket's end gave the seat up; never here)
            self.seats.unpair(ticket.match_id, session.id)
            return SeatRefused(call, ErrorCode.MATCH_OVER, "your partner is gone")
        async with partner.lock:
            return await self._pair(session, partner, call)

    async def _claim_shared_seat(
        self, session: Session, call: ClaimSeat, shared: SharedSeats
    ) -> Event:
        """Claim the seat in the shared state: the partner, held (or kept) on any server,
        is paired there at once, and told here or through the bus."""
        ticket = call.ticket
        try:
            answer = await shared.claim_seat(
                ticket.match_id,
                "caller" if ticket.seat == "caller" else "callee",
                session.id,
                (ticket.caller, ticket.callee),
                ticket.mode,
                grace_s=self.seats.grace_s,
                keep_s=self.seats.keep_s,
            )
        except BackendUnavailable as exc:
            log.warning("resume for %s failed: %s", session.id, exc)
            text = "the service is briefly unavailable; try again"
            return SeatRefused(call, ErrorCode.UNAVAILABLE, text)
        if answer == "hold":
            return SeatHeld(call, self.seats.grace_s)
        if isinstance(answer, str):
            code, text = _SHARED_REFUSALS[answer]
            return SeatRefused(call, code, text)
        resumed = Resumed(answer, ticket.match_id)
        partner_id = answer.partner_of(session.id)
        if self.tell_partner(partner_id, resumed):
            return resumed
        try:
            message = bus.resumed(partner_id, answer, ticket.match_id)
            await self.backend.publish(partner_id, message, server=answer.server_of(partner_id))
        except BackendUnavailable as exc:  # its server finds the match at its resync
            log.warning("could not tell %s its match resumed: %s", partner_id, exc)
        return resumed

    def _drop_shared_seat(self, match_id: str, session_id: str) -> None:
        """Tell the shared state (soon, in order) that ``session_id`` gave up its seat."""
        if self._shared is None:
            return
        if len(self._seat_drops) >= MAX_SEAT_DROPS:
            log.warning("too many seat drops owed: forgetting the oldest")
            del self._seat_drops[0]
        self._seat_drops.append((match_id, session_id))
        self._seat_drops_ready.set()

    async def run_seat_drops(self) -> None:
        """Write the seats given up to the shared state, until cancelled.

        A drop the backend fails is tried once more a second later, then
        forgotten: the shared record still ends with its grace.
        """
        shared = self._shared
        if shared is None:
            return
        while True:
            await self._seat_drops_ready.wait()
            self._seat_drops_ready = trio.Event()
            drops, self._seat_drops = self._seat_drops, []
            for match_id, session_id in drops:
                for attempt in (1, 2):
                    try:
                        await shared.drop_seat(match_id, session_id, keep_s=self.seats.keep_s)
                        break
                    except BackendUnavailable as exc:
                        if attempt == 2:
                            log.warning("could not give up a seat of %s: %s", session_id, exc)
                        else:
                            await trio.sleep(1.0)

    async def _pair(self, session: Session, partner: Session, call: ClaimSeat) -> Event:
        """Pair ``session`` (claiming ``call``'s seat) with ``partner`` (holding the other
        seat, or keeping the match for it) in a new match; tell the partner.

        The caller holds both sessions' locks, or ``partner`` needs none.
        """
        ticket = call.ticket
        caller, callee = (session, partner) if ticket.seat == "caller" else (partner, session)
        server = self.backend.server_id
        match = Match(uuid.uuid4().hex, caller.id, callee.id, ticket.mode, (), (server, server))
        views = [LocalView(s.id, s.ip, match) for s in (caller, callee)]
        try:
            shared = await self.backend.sync(views)
        except BackendUnavailable:
            self.seats.unpair(ticket.match_id, session.id)
            text = "the service is briefly unavailable; try again"
            return SeatRefused(call, ErrorCode.UNAVAILABLE, text)
        if (
            any(view.match != match for view in shared)
            or self.sessions.get(partner.id) is not partner
        ):
            self.seats.unpair(ticket.match_id, session.id)
            return SeatRefused(call, ErrorCode.MATCH_OVER, "your partner moved on")
        self.tell(partner, Resumed(match, ticket.match_id))
        return Resumed(match, ticket.match_id)

    # -- delivery --------------------------------------------------------

    def _pair_tag_of(self, session: Session, match: Match) -> str | None:
        """The pair tag of ``session`` and its partner in ``match``; None when a client
        is unknown.

        No backend call: nothing may wait between a match formed and told. A
        partner on another server is known by the client the backend gave
        with the match it formed.
        """
        if self._pair_tag is None or not session.ip:
            return None
        partner_id = match.partner_of(session.id)
        partner = self.sessions.get(partner_id)
        if partner is not None:
            theirs = partner.ip
        else:
            theirs = match.clients[0] if partner_id == match.caller else match.clients[1]
        return self._pair_tag(session.ip, theirs) if theirs else None

    async def _announce_match(
        self, session_id: str, match: Match, pair: str | None, now: float
    ) -> None:
        """Tell the partner of ``session_id`` that ``match`` formed (at ``now``).

        A partner on another server hears of it before this session's client
        does (the core orders it so): its client must know the match before
        the caller's first relayed frame reaches its server. Formed all the
        same if that fails: the partner's server finds it at its resync.
        """
        partner_id = match.partner_of(session_id)
        if self.tell_partner(partner_id, MatchFormed(match, pair), now):
            return
        try:
            await self.backend.publish(
                partner_id,
                bus.matched(partner_id, match, pair),
                server=match.server_of(partner_id),
            )
        except BackendUnavailable as exc:
            log.warning("could not tell %s of match %s: %s", partner_id, match.match_id, exc)

    async def _announce_away(self, session_id: str, match: Match) -> None:
        """Tell the partner of ``session_id`` that its socket is gone (not its wish).

        Not told (its server is away): the partner's next relay finds the match
        over, as before tickets.
        """
        partner_id = match.partner_of(session_id)
        if self._shared is not None:  # any server may pair the partner with this side
            try:
                grace_s, keep_s = self.seats.grace_s, self.seats.keep_s
                await self._shared.keep_seat(
                    match.match_id, partner_id, grace_s=grace_s, keep_s=keep_s
                )
            except BackendUnavailable as exc:
                log.warning("could not keep %s's match for its partner: %s", partner_id, exc)
        if self.tell_partner(partner_id, PartnerAway(match.match_id)):
            return
        try:
            message = bus.away(partner_id, match.match_id)
            await self.backend.publish(partner_id, message, server=match.server_of(partner_id))
        except BackendUnavailable as exc:
            log.warning("could not tell %s its partner is away: %s", partner_id, exc)

    async def _announce_end(
        self, session_id: str, match: Match, reason: PartnerReason, now: float | None = None
    ) -> None:
        """Tell the partner of ``session_id`` that ``match`` ended (at ``now``, if known).

        Raises:
            BackendUnavailable: the partner's server could not be told.
        """
        if now is None:
            now = trio.current_time()
        self.seats.ended(match.match_id, now)
        partner_id = match.partner_of(session_id)
        if self.tell_partner(partner_id, MatchEnded(match.match_id, reason), now):
            return
        message = bus.ended(partner_id, match.match_id, reason)
        await self.backend.publish(partner_id, message, server=match.server_of(partner_id))


MAX_SEAT_DROPS: Final = 10_000  # seats given up, owed to the shared state (an outage)
_SHARED_REFUSALS: Final = {
    "used": (ErrorCode.TICKET_USED, "this ticket's seat was taken back already"),
    "going": (ErrorCode.TICKET_USED, "that match is still going on"),
    "over": (ErrorCode.MATCH_OVER, "that match is over: your partner left or moved on"),
}
_AWAITED: Final = (
    Relay,
    AnnounceAway,
    TakeSeat,
    ClaimSeat,
    Join,
    Leave,
    ReportPartner,
    AnnounceMatch,
    AnnounceEnd,
    CountSkip,
    MakeIdle,
    Enqueue,
    WidenWait,
    Release,
    BlockPartner,
    FileReport,
)
_AWAITED_TYPES: Final = frozenset(_AWAITED)


async def _take(lock: trio.Lock) -> None:
    """Take ``lock`` as ``trio.Lock.acquire`` does, less its schedule point when the
    lock is free: a session's operation and its detach take their session's
    lock, and the yield would cost each a pass of the scheduler. Still a
    cancel point; a lock held or waited for is waited for in turn.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


def _what(effect: Effect) -> str:
    """A failed effect, as the log names it: the client's op, or what the server did."""
    if isinstance(effect, Relay):
        return effect.op
    if isinstance(effect, WidenWait):
        return "widen"
    if isinstance(effect, Release):
        return "release"
    if isinstance(effect, BlockPartner | FileReport):
        return "report"
    if isinstance(effect, CountSkip):
        return effect.then.op
    if isinstance(effect, MakeIdle | Enqueue | AnnounceEnd):
        return effect.op or "resync"
    return type(effect).__name__
