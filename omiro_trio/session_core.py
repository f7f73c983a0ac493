"""One session's rules as one machine: events in, effects out; no I/O, no trio.

In the spirit of h11's ``Connection``: a ``SessionCore`` is told what
happened, always with ``now``, and answers what to do, as a tuple of effects
(``session_events.py`` names both): ``receive(frame, now)`` for a text frame
from the client, ``handle(event, now)`` for everything else, including the
world's answer to every question an effect asked. The shells (the hub, which
performs every effect, and the connection, which pumps frames in) decide
nothing: they never read the core's state to choose what to do.

State (``state``) and its transitions, all in this module:

* ``idle``: no match, not in the queue. A join answered ``Waiting`` makes
  it ``waiting``; a match makes it ``matched``.
* ``waiting``: in the queue, maybe with a widen timer (``widen``). A match
  makes it ``matched``; starting ``join``, ``next``, ``leave_queue`` or a
  report makes it ``idle`` (the backend is then asked). With a shared
  backend a session can be queued while the end of its last match is still
  on its way (the backend had already ended it): ``match`` stays set until
  the end arrives, and relays for it still reach the client.
* ``matched``: ``match`` is the current match. Its end makes it ``idle``;
  another match replaces it.
* ``resuming``: the client took back its seat in a match with its ticket
  (``resume``) and the partner's seat is still empty: it waits up to
  ``resume_grace_s``. The partner's return makes it ``matched`` (the same
  roles, a new match id); the grace passing, a way into the queue, a leave
  or the socket's end make it ``idle`` (the seat is freed, and the client
  hears ``partner_disconnected`` ``left`` when the grace passed).
* ``matched`` with the partner *away*: the partner's socket ended without
  its wish (it broke, or its server drained) and tickets are on, so it may
  come back (``resume``) within ``resume_grace_s``: the match is kept here
  (and not in the shared state, which ended it), relays are answered
  ``unavailable``, and the grace passing ends it (``left``).
* ``closing``: terminal. Entered by the first close (the client's
  ``disconnect``, a limit, or ``CloseAsked``); the first close code wins. A
  closing session's match is still kept up to date, because the shell tells
  the partner when it detaches, and frames still go out (the connection
  flushes them before its close handshake).

Operations (``join_queue``, ``next``, ``leave_queue``, ``report``) run one
at a time per session: the core answers the client's frame with the
operation, the hub takes the session's lock and says ``Started``, and only
then does the core change state and ask the backend. Each answer is an
event carrying the question it answers (what to do next is written in the
question), so nothing is pending in the core between the two.

Stale events: every match event names its ``match_id``. The core remembers
the last ``ENDED_REMEMBERED`` matches that ended, so a late ``matched`` for
one of them is dropped, a duplicate is dropped, and a relay reaches the
client only when it names the current match. A join whose ``Waiting``
answer comes back after a match reached the session (another server
matched it first) is not announced.

Flood control: one token bucket for every client message and control
frame; a message over it is refused with ``rate_limited``, and more than
``RATE_VIOLATIONS_ALLOWED`` refusals per ``ERROR_WINDOW_S`` close with 4029.
More than ``PROTOCOL_ERRORS_ALLOWED`` bad frames per window close with 4000.

Skips: every way into the queue (``next``, ``join_queue`` while matched,
waiting or idle: after a ``leave_queue`` or a ``report`` too, and on a new
socket of the session) first spends one of the session's skips
(``CountSkip``, the backend's ``nexts_per_minute`` window); over it, the
op is refused like a message over the bucket and the match goes on. The
one exception is the first entry after the partner ended the match, which
the client did not choose. A backend that does not answer limits nothing
(the join itself then answers ``unavailable``). While the server drains, a
way into the queue answers ``server_draining`` instead.

Failures: a call or delivery the backend could not make ends its operation
(``Unavailable``): the client hears ``unavailable`` for its op and the
resync repairs the rest; a claim now held by another socket closes this
one (1001). A dying socket's release is left to the resync; a widen timer
that failed waits for it.

Reconciliation (``Synced``) classifies what the backend holds against what
this session holds and follows ``reconcile.TABLE``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from omiro_trio import protocol
from omiro_trio.backends.base import LocalView, SharedView
from omiro_trio.budgets import Budget
from omiro_trio.codes import CloseCode, ErrorCode, PartnerReason
from omiro_trio.errors import InvalidTicket, ProtocolViolation
from omiro_trio.matchmaking import Match, Preferences, Waiting
from omiro_trio.reconcile import Local, Shared, Step, View, reconcile
from omiro_trio.session_events import (
    NOTHING,
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
    Controls,
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
    Join,
    Leave,
    MadeIdle,
    MakeIdle,
    MatchEnded,
    MatchFormed,
    NotIdle,
    Opened,
    PartnerAway,
    Relay,
    Release,
    Released,
    ReleaseLater,
    ReportPartner,
    Resumed,
    Said,
    SeatHeld,
    SeatRefused,
    SkipCounted,
    Started,
    Synced,
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
from omiro_trio.tokens import TicketSigner

State = Literal["idle", "waiting", "matched", "resuming", "closing"]
"""Where a session is (see the module's docstring for the transitions)."""

TRANSCRIPT_LINES: Final = 20
ENDED_REMEMBERED: Final = 8
CALLS_REMEMBERED: Final = 8  # recent matches whose call outcome may still be reported
PROTOCOL_ERRORS_ALLOWED: Final = 20  # per ERROR_WINDOW_S, then 4000
RATE_VIOLATIONS_ALLOWED: Final = 10  # per ERROR_WINDOW_S, then 4029
ERROR_WINDOW_S: Final = 60.0


class TokenBucket:
    """``rate`` tokens a second, up to ``burst``; one per message."""

    __slots__ = ("_at", "_burst", "_rate", "_tokens")

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

    __slots__ = ("_allowed", "_count", "_start", "_window_s")

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

    @property
    def count(self) -> int:
        """Events counted in the current window."""
        return self._count


@dataclass(frozen=True, slots=True)
class Rates:
    """A client's message allowance (config ``[limits]``; the defaults are its defaults)."""

    messages_per_second: float = 20.0
    message_burst: int = 40


@dataclass(frozen=True, slots=True)
class SessionRules:
    """What every session of one server is held to (built from the config once).

    Args:
        limits: what a client frame may be (announced in ``hello``).
        rates: the client's message allowance.
        reconnect_after_ms: what ``server_draining`` tells clients.
        lost_after_s: how long a matched socket that beats (``alive``) may stay
            silent before its match ends as ``lost``.
    """

    limits: protocol.Limits = field(default_factory=protocol.Limits)
    rates: Rates = field(default_factory=Rates)
    reconnect_after_ms: int = 1000
    lost_after_s: float = 15.0
    tickets: TicketSigner | None = None  # None: no tickets are given, none resumed
    wall: Callable[[], float] = time.time  # unix time, for tickets' expiry (injected)
    resume_grace_s: float = 30.0

    def liveness(self) -> protocol.HelloLiveness:
        """What ``hello`` tells clients of the liveness bounds."""
        lost_ms = round(self.lost_after_s * 1000)
        return protocol.HelloLiveness(lost_ms // 6, lost_ms // 4, lost_ms)

    def ticket_ttl_ms(self) -> int:
        """What ``hello`` tells clients of a ticket's life (0: no tickets)."""
        return 0 if self.tickets is None else self.tickets.ttl_s * 1000


_DEFAULT_RULES: Final = SessionRules()
_LEAVE: Final = Leave()
_RELEASE: Final = Release()
_SYNC_NOW: Final = SyncNow()
_SYNC_SOON: Final = SyncSoon()
_COUNT_MATCH: Final = CountMatch()
_DISARM: Final = Arm(None)
_ALIVE_FRAME: Final = protocol.server_frame(protocol.AliveAnswer())
_AWAY_TEXT: Final = "your partner is reconnecting: not delivered"
# How a socket may end without its client choosing to leave the match: it broke
# or the client closed it without a word (None), or its server drained (1012).
_NOT_CHOSEN: Final = (None, CloseCode.RESTARTING)
_CLAIMING: Final = ("idle", "resuming")  # the states in which a claim may be answered
_UNAVAILABLE_TEXT: Final = "the service is briefly unavailable; try again"
_ELSEWHERE: Final = "connected elsewhere"

# The hot path: for each relayed message type, its op name and what the partner receives.
_RELAYED: Final[dict[type, tuple[str, Callable[[Any, str], protocol.RelayedData]]]] = {
    op.message: (op.name, op.relay) for op in protocol.OPS if op.relay is not None
}
_CHAT: Final = protocol.Chat
_DISCONNECT: Final = protocol.Disconnect
_REFUSED: Final = CountError(ErrorCode.RATE_LIMITED)
_relay_frame: Final = protocol.relay_frame


class SessionCore:
    """The per-session state and rules (see the module's docstring).

    Args:
        session_id: the session's id (what partners see).
        now: the time the session starts (the clock the caller passes to
            ``receive`` and ``handle``).
        rules: the limits every session of the server is held to.

    The attributes are the core's own; the shells never read them to decide
    (tests and reports may look).
    """

    __slots__ = (
        "_away",
        "_band",
        "_beats",
        "_bucket",
        "_claimed",
        "_detached",
        "_draining",
        "_errors",
        "_heard",
        "_now",
        "_rejoin_free",
        "_rules",
        "_seat",
        "_suspect",
        "_violations",
        "_watching",
        "close_code",
        "close_reason",
        "ended_ids",
        "id",
        "match",
        "matched_at",
        "matches_applied",
        "outcomes_reported",
        "partner_reason",
        "prefs",
        "recent_matches",
        "state",
        "transcript",
        "widen",
    )

    def __init__(
        self, session_id: str, now: float, rules: SessionRules = _DEFAULT_RULES, *, band: str = ""
    ) -> None:
        self.id = session_id
        # The age band the gate verified (the session token's), "" unknown:
        # every wish of this session carries it (matchmaking.pool_of).
        self._band = band
        self.state: State = "idle"
        self.match: Match | None = None
        self.matched_at = now  # when ``match`` reached this session (for a report's evidence)
        self._now = now  # the time of the frame or event being handled
        self.prefs: Preferences | None = None  # the last wish the backend took: next reuses it
        self.widen: Widen | None = None  # the timer the shell should be running
        self.matches_applied = 0  # matches this client heard of, to spot one that overtook a join
        self.close_code: CloseCode | None = None
        self.close_reason = ""
        self.partner_reason = PartnerReason.LEFT  # what the partner hears when this socket ends
        self.transcript: deque[tuple[str, str]] = deque(maxlen=TRANSCRIPT_LINES)
        self.ended_ids: deque[str] = deque(maxlen=ENDED_REMEMBERED)
        # The last CALLS_REMEMBERED matches this client heard of, oldest first,
        # and which of them it has already reported a call outcome for.
        self.recent_matches: dict[str, Match] = {}
        self.outcomes_reported: set[str] = set()
        self._rules = rules
        rates = rules.rates
        self._bucket = TokenBucket(rates.messages_per_second, rates.message_burst, now)
        self._errors = WindowCounter(PROTOCOL_ERRORS_ALLOWED, ERROR_WINDOW_S)
        self._violations = WindowCounter(RATE_VIOLATIONS_ALLOWED, ERROR_WINDOW_S)
        self._rejoin_free = False  # the partner ended the match; no entry since
        self._draining = False
        self._detached = False
        self._suspect: tuple[str, str] | None = None  # a difference the last resync saw
        self._heard = now  # when the client last sent anything (a frame, a ping, a pong)
        self._beats = False  # the client sent ``alive``: its silence while matched is noticed
        self._watching = False  # the liveness timer runs
        self._seat: str | None = None  # the match whose seat this session holds, resuming
        self._away: str | None = None  # the current match, whose partner is away
        self._claimed: str | None = None  # the match whose seat this session claimed last

    # -- the two verbs -------------------------------------------------------

    def receive(self, frame: str | bytes, now: float) -> Effects:
        """One text frame from the client: what to do about it."""
        self._now = now
        self._heard = now
        try:
            message = protocol.parse_client_frame(frame, self._rules.limits)
        except ProtocolViolation as exc:
            reply = protocol.error_frame(exc.code, exc.message, exc.op)
            if self._errors.hit(now):
                return (
                    CountError(exc.code),
                    reply,
                    *self._close(CloseCode.PROTOCOL_ERRORS, "too many protocol errors"),
                )
            return (CountError(exc.code), reply)
        kind = type(message)
        if not self._bucket.take(now) and kind is not _DISCONNECT:  # leaving is never refused
            return self._refuse(protocol.OP_NAMES[kind], now)
        relayed = _RELAYED.get(kind)
        if relayed is not None:  # the hot path: chat, typing, signaling
            op, data = relayed
            match = self.match
            if match is None:
                return (
                    protocol.error_frame(
                        ErrorCode.NOT_MATCHED, "you have no partner right now", op
                    ),
                )
            if self._away is not None:
                return (protocol.error_frame(ErrorCode.UNAVAILABLE, _AWAY_TEXT, op),)
            chat = message.message if kind is _CHAT else None  # type: ignore[union-attr]
            if chat is not None:
                self.transcript.append((self.id, chat))
            return (Relay(op, _relay_frame(op, data(message, self.id)), chat, match),)
        return _RULES[kind](self, message, now)

    def would_end(self, frame: str | bytes) -> bool:
        """Whether receiving ``frame`` would end the session: it is a ``disconnect``.

        For a shell that looks at frames read and not yet received (the hub
        then leaves out a way into the queue the client has left behind). A
        ``disconnect`` is never refused, so it is exact; cheap for any other
        frame (only a text naming the op is parsed).
        """
        if type(frame) is not str or "disconnect" not in frame:
            return False
        try:
            message = protocol.parse_client_frame(frame, self._rules.limits)
        except ProtocolViolation:
            return False
        return type(message) is _DISCONNECT

    def handle(self, event: Event, now: float) -> Effects:
        """Anything but a client frame: what to do about it."""
        self._now = now
        if type(event) is Relay:  # the partner, on this server, said something (the hot path)
            current = self.match
            if current is None or current.match_id != event.match.match_id:
                return NOTHING  # a late message from a match that ended: it reaches nobody
            chat = event.chat
            if chat is not None:
                self.transcript.append((current.partner_of(self.id), chat))
            return (event.frame,)
        match event:
            case Said():  # the partner, on another server, said something
                return self._said(event.match_id, event.frame, event.chat)
            case Started():
                return self._start(event)
            case SkipCounted():
                if event.retry_after_s is not None:
                    refused = self._refuse(event.call.then.op, now, event.retry_after_s)
                    return (CountExceeded(Budget.SKIPS), *refused)
                return self._enter(event.call.then)
            case MadeIdle():
                return self._made_idle(event.call, event.ended)
            case Enqueued():
                return self._enqueued(event.call, event.result, event.pair)
            case Opened():
                self._draining = self._draining or event.draining
                hello = protocol.server_frame(event.hello)
                return (hello, self._draining_frame()) if self._draining else (hello,)
            case MatchFormed():
                return self._matched(event.match, event.pair)
            case Detached():
                self._detached = True
                self.widen = None
                if self._seat is not None:
                    seat, self._seat = self._seat, None
                    return (_DISARM, GiveUpSeat(seat), _RELEASE)
                return (_DISARM, _RELEASE)
            case Released():
                if event.ended is None:
                    return NOTHING
                self._forget(event.ended.match_id)
                if self._rules.tickets is not None and self.close_code in _NOT_CHOSEN:
                    # The socket broke, or its server drained: not the client's wish.
                    # The partner keeps the match for a while; this side may resume it.
                    return (AnnounceAway(event.ended),)
                return (AnnounceEnd(event.ended, self.partner_reason, None),)
            case MatchEnded():
                return self._ended(event.match_id, event.reason)
            case PartnerAway():
                return self._partner_away(event.match_id)
            case NotIdle():
                if event.call.retried:
                    raise RuntimeError(f"the backend twice refused to queue {self.id}: not idle")
                retry = replace(event.call, retried=True)
                return (MakeIdle(PartnerReason.LEFT, event.call.op, then=retry),)
            case Blocked():
                return self._blocked(event)
            case Filed():
                if event.recorded:
                    return NOTHING
                # The match still ended and the pair stays apart; the report just does not count.
                text = "too many reports: this one was not recorded"
                return (protocol.error_frame(ErrorCode.RATE_LIMITED, text, "report"),)
            case TimerFired():
                if self.widen is not event.widen:
                    return NOTHING  # the wait ended while the timer fired or waited
                self.widen = None
                return (WidenWait(event.widen.ticket),) if self.state == "waiting" else NOTHING
            case Widened():
                return NOTHING if event.match is None else self._form(event.match, event.pair)
            case Delivered():
                return self._delivered(event)
            case Unavailable():
                return self._unavailable(event)
            case WatchFired():
                return self._watch_fired(now)
            case SeatHeld():
                if self.state != "idle" or self.match is not None:
                    return (GiveUpSeat(event.call.ticket.match_id),)  # moved on meanwhile
                self.state = "resuming"
                self._seat = event.call.ticket.match_id
                self._watching = True
                held = protocol.Resuming(round(event.grace_s * 1000))
                return (protocol.server_frame(held), Watch(event.grace_s))
            case SeatRefused():
                return (
                    CountError(event.code),
                    protocol.error_frame(event.code, event.text, "resume"),
                )
            case Resumed():
                taken = event.resumed_from
                claimed = self._claimed == taken and self.match is None
                if not (self._away == taken or (claimed and self.state in _CLAIMING)):
                    # Paired on another server as this side moved on (its give-up was on
                    # its way): the resync repairs the shared state.
                    return (_SYNC_NOW,)
                self._seat = None
                return self._matched(event.match, resumed_from=event.resumed_from)
            case Controls():
                # Each ping or pong takes a token; one refused is counted like a
                # refused message, but answered with nothing.
                self._heard = now
                over = 0
                for _ in range(event.count):
                    if not self._bucket.take(now):
                        over += 1
                        if self._violations.hit(now):
                            closing = self._close(CloseCode.RATE_LIMITED, "rate limit exceeded")
                            return (*(_REFUSED,) * over, *closing)
                return (_REFUSED,) * over
            case Draining():
                self._draining = True
                return (self._draining_frame(),)
            case CloseAsked():
                return self._close(event.code, event.reason, event.partner_reason)
            case Banned(account=account):
                what = "this account is banned" if account else "this address is banned"
                banned = protocol.error_frame(ErrorCode.BANNED, what, None)
                return (banned, *self._close(CloseCode.POLICY, "banned"))
            case Synced():
                return self._synced(event.local, event.shared)
        raise AssertionError(f"no rule for {type(event).__name__}")  # pragma: no cover

    # -- queries -------------------------------------------------------------

    def local_view(self, ip: str) -> LocalView | None:
        """What this server holds for the session, for ``Backend.sync`` (None: closing)."""
        if self.close_code is not None:
            return None
        if self._away is not None:  # the shared state ended it; only this side keeps it
            return LocalView(self.id, ip, None)
        if self.state != "waiting" or self.prefs is None:
            return LocalView(self.id, ip, self.match)
        ticket = self.widen.ticket if self.widen is not None else None
        return LocalView(self.id, ip, self.match, self.prefs, ticket)

    def transcript_lines(self) -> tuple[str, ...]:
        """The current match's chat, as a report keeps it."""
        return tuple(
            f"{'reporter' if sender == self.id else 'reported'}: {text}"
            for sender, text in self.transcript
        )

    # -- client ops ----------------------------------------------------------

    def _join_queue(self, message: protocol.JoinQueue, now: float) -> Effects:
        prefs = Preferences(message.mode, message.interests, message.languages, self._band)
        return self._way_in(Join(prefs, "join_queue"))

    def _next(self, message: protocol.Next, now: float) -> Effects:
        # Without an earlier join_queue, next searches with the defaults.
        return self._way_in(Join(self.prefs or Preferences(band=self._band), "next"))

    def _leave_queue(self, message: protocol.LeaveQueue, now: float) -> Effects:
        return (_LEAVE,)

    def _report(self, message: protocol.Report, now: float) -> Effects:
        return (ReportPartner(message.reason),)

    def _disconnect(self, message: protocol.Disconnect, now: float) -> Effects:
        return self._close(CloseCode.NORMAL, "")

    def _alive(self, message: protocol.Alive, now: float) -> Effects:
        """A beat: answer it, and from now on notice this socket going silent while matched."""
        self._beats = True
        if self.match is not None and not self._watching:
            self._watching = True
            return (_ALIVE_FRAME, Watch(self._rules.lost_after_s))
        return (_ALIVE_FRAME,)

    def _peer_lost(self, message: protocol.PeerLost, now: float) -> Effects:
        """The client heard nothing of its partner for the bound: end the match as lost."""
        match = self.match
        if match is None or match.match_id != message.match_id:
            text = "that is not your current match"
            return (protocol.error_frame(ErrorCode.NOT_MATCHED, text, "peer_lost"),)
        return (Leave(PartnerReason.LOST, "peer_lost", match.match_id),)

    def _resume(self, message: protocol.Resume, now: float) -> Effects:
        """Take back a seat with a match ticket: only a fresh session, before anything else."""
        tickets = self._rules.tickets
        if self.state != "idle" or self.match is not None or tickets is None:
            text = (
                "this server resumes no matches"
                if tickets is None
                else "resume only a session that is idle (before join_queue)"
            )
            return (protocol.error_frame(ErrorCode.BAD_REQUEST, text, "resume"),)
        try:
            ticket = tickets.verify(message.ticket, self._rules.wall())
        except InvalidTicket as exc:
            # A ticket the service never signed (or long expired) is a bad frame: it
            # counts toward the protocol errors that close the socket with 4000.
            reply = protocol.error_frame(exc.code, exc.message, "resume")
            if self._errors.hit(now):
                return (
                    CountError(exc.code),
                    reply,
                    *self._close(CloseCode.PROTOCOL_ERRORS, "too many protocol errors"),
                )
            return (CountError(exc.code), reply)
        return (TakeSeat(ticket),)

    def _renew_ticket(self, message: protocol.RenewTicket, now: float) -> Effects:
        """A fresh ticket of the current match, expiring a ticket's life from now."""
        op = "renew_ticket"
        match = self.match
        if self._rules.tickets is None:
            return (
                protocol.error_frame(ErrorCode.BAD_REQUEST, "this server signs no tickets", op),
            )
        if match is None:
            text = "you have no partner right now"
            return (protocol.error_frame(ErrorCode.NOT_MATCHED, text, op),)
        if self._away is not None:
            return (protocol.error_frame(ErrorCode.UNAVAILABLE, _AWAY_TEXT, op),)
        ticket = self._ticket_of(match)
        if ticket is None:
            text = "this match cannot be resumed"
            return (protocol.error_frame(ErrorCode.BAD_REQUEST, text, op),)
        return (protocol.server_frame(protocol.TicketMessage(match.match_id, ticket)),)

    def _ticket_of(self, match: Match) -> str | None:
        """This side's ticket of ``match``, issued now; None without tickets."""
        tickets = self._rules.tickets
        if tickets is None:
            return None
        try:
            return tickets.issue(
                match.match_id, match.caller, match.callee, self.id, match.mode, self._rules.wall()
            )
        except ValueError:  # an id no ticket can carry: this match cannot be resumed
            return None

    def _partner_away(self, match_id: str) -> Effects:
        """The partner's socket ended without its wish: wait the grace for its ticket."""
        current = self.match
        if current is None or current.match_id != match_id:
            self.ended_ids.append(match_id)
            return NOTHING
        if self.close_code is not None:  # this side is going too: nobody will come back to it
            return self._ended(match_id, PartnerReason.LEFT)
        self._away = match_id
        self._watching = True
        grace = self._rules.resume_grace_s
        away = protocol.PartnerAwayMessage(round(grace * 1000))
        return (protocol.server_frame(away), Watch(grace))

    def awaits_partner(self, match_id: str) -> bool:
        """Whether this session keeps ``match_id`` for its partner to come back to."""
        return self._away == match_id and self.close_code is None

    def _watch_fired(self, now: float) -> Effects:
        """The liveness timer: a matched client that beats and went silent for the bound has
        lost its partner (and the partner it): the match ends as ``lost`` for both."""
        self._watching = False
        away = self._away
        if away is not None:
            # The grace passed and the partner did not come back: it left.
            return (EndSeats(away), *self._ended(away, PartnerReason.LEFT))
        if self.state == "resuming" and self._seat is not None:
            # The grace passed and the partner's seat stayed empty: the partner left.
            seat, self._seat = self._seat, None
            self.state = "idle"
            self._rejoin_free = True
            left = protocol.PartnerDisconnected(PartnerReason.LEFT)
            return (GiveUpSeat(seat), protocol.server_frame(left))
        if self.match is None or self.close_code is not None or not self._beats:
            return NOTHING
        silent = now - self._heard
        bound = self._rules.lost_after_s
        if silent < bound:
            self._watching = True
            return (Watch(bound - silent),)
        return (MakeIdle(PartnerReason.LOST, None),)

    def _call_outcome(self, message: protocol.CallOutcome, now: float) -> Effects:
        """Count how this side's call of a recent video or voice match went, once per match.

        The match may already have ended (a failed call is often skipped
        before the page gives up on it), but it must be one of the client's
        own last ``CALLS_REMEMBERED`` matches.
        """
        match = self.recent_matches.get(message.match_id)
        if match is None:
            reason, code = "no recent match has this match_id", ErrorCode.NOT_MATCHED
        elif match.mode == "text":
            reason, code = "a text match has no call", ErrorCode.BAD_REQUEST
        elif message.match_id in self.outcomes_reported:
            reason = "this match's call outcome was already reported"
            code = ErrorCode.BAD_REQUEST
        else:
            self.outcomes_reported.add(message.match_id)
            return (CountCall(message.outcome, message.path, message.connect_ms),)
        return (protocol.error_frame(code, reason, "call_outcome"),)

    def _way_in(self, join: Join) -> Effects:
        """A way into the queue: it spends a skip, but for the first after the partner
        ended the match."""
        if self._rejoin_free:
            self._rejoin_free = False
            return self._enter(join)
        return (CountSkip(join),)

    def _enter(self, join: Join) -> Effects:
        if self._draining:
            return (self._draining_frame(),)
        return (join,)

    def _refuse(self, op: str, now: float, retry_after_s: float | None = None) -> Effects:
        """Refuse ``op`` as over the allowance (the bucket, or the backend's skips).

        ``retry_after_s``: when a refused skip would be accepted, told to the
        client in whole seconds (rounded up, at least 1).
        """
        after = None if retry_after_s is None else max(1, math.ceil(retry_after_s))
        reply = protocol.error_frame(ErrorCode.RATE_LIMITED, "slow down", op, retry_after=after)
        counted = CountError(ErrorCode.RATE_LIMITED)
        if self._violations.hit(now):
            return (counted, reply, *self._close(CloseCode.RATE_LIMITED, "rate limit exceeded"))
        return (counted, reply)

    # -- operations, once the hub holds the session's lock -------------------

    def _start(self, started: Started) -> Effects:
        operation = started.operation
        away = self._away
        if away is not None:
            # The client moves on from a partner that is away: over here, and for its ticket.
            self._forget(away)
            return (EndSeats(away), *self._start(started))
        if isinstance(operation, TakeSeat):
            if self.state != "idle" or self.match is not None:
                text = "resume only a session that is idle (before join_queue)"
                return (protocol.error_frame(ErrorCode.BAD_REQUEST, text, "resume"),)
            # Kept after the answer: a claim answered ``unavailable`` may have been
            # made all the same (its answer lost), and paired later elsewhere.
            self._claimed = operation.ticket.match_id
            return (ClaimSeat(operation.ticket),)
        if isinstance(operation, Join):
            return self._make_idle(PartnerReason.NEXT, operation.op, operation)
        if isinstance(operation, Leave):
            wanted = operation.match_id
            if wanted is not None and (self.match is None or self.match.match_id != wanted):
                return NOTHING  # that match ended while the op waited for its turn
            return self._make_idle(operation.reason, operation.op, None)
        match = self.match
        if match is None:
            text = "you have no partner to report"
            return (protocol.error_frame(ErrorCode.NOT_MATCHED, text, "report"),)
        return (BlockPartner(match.partner_of(self.id), operation.reason),)

    def _make_idle(
        self, reason: PartnerReason, op: str | None, then: Join | Enqueue | FileReport | None
    ) -> Effects:
        """Stop waiting here, then have the backend make the session idle."""
        self.widen = None
        if self.state == "waiting":
            self.state = "idle"
        if self._seat is not None:  # it no longer waits for its partner to come back
            seat, self._seat = self._seat, None
            self.state = "idle"
            return (_DISARM, GiveUpSeat(seat), MakeIdle(reason, op, then))
        return (_DISARM, MakeIdle(reason, op, then))

    def _made_idle(self, call: MakeIdle, ended: Match | None) -> Effects:
        if call.quiet:
            return NOTHING
        effects: list[Effect] = []
        if ended is not None:
            self._forget(ended.match_id)
            effects.append(AnnounceEnd(ended, call.reason, call.op))
            if call.reason is PartnerReason.LOST:
                # Nobody chose this end: the next way into the queue is free,
                # and a client that went silent hears why when it comes back.
                self._rejoin_free = True
                if call.op is None:
                    lost = protocol.PartnerDisconnected(PartnerReason.LOST)
                    effects.append(protocol.server_frame(lost))
        then = call.then
        if isinstance(then, Join):
            self.prefs = then.prefs  # next reuses the wish the client last asked for
            effects.append(Enqueue(then.prefs, then.op, True, self.matches_applied))
        elif then is not None:
            effects.append(then)
        return tuple(effects)

    def _enqueued(self, call: Enqueue, result: Match | Waiting, pair: str | None) -> Effects:
        if isinstance(result, Match):
            return self._form(result, pair)
        if self.matches_applied != call.seen:
            # A match reached the session (another server matched it and
            # said so) before this answer came back: it no longer waits,
            # and must not hear "queued".
            return NOTHING
        widen = None
        if result.widen_after_s is not None:
            widen = Widen(result.ticket, result.widen_after_s)
        self.prefs = call.prefs
        self.widen = widen
        if self.state != "closing":
            self.state = "waiting"
        arm = Arm(widen)
        if not call.announce:
            return (arm,)
        prefs = call.prefs
        queued = protocol.Queued(prefs.mode, prefs.interests, prefs.languages)
        return (protocol.server_frame(queued), arm)

    def _blocked(self, blocked: Blocked) -> Effects:
        """The pair is blocked: end the match, then keep the report with its transcript."""
        report = FileReport(
            blocked.call.partner,
            blocked.partner_ip,
            blocked.call.reason,
            self.transcript_lines(),
            max(0.0, self._now - self.matched_at),
        )
        return self._make_idle(PartnerReason.REPORTED, "report", report)

    # -- matches -------------------------------------------------------------

    def _form(self, match: Match, pair: str | None = None) -> Effects:
        """This session's operation formed ``match``: count it, tell the partner, then this
        client (a partner on another server must know the match before the caller's first
        frame reaches it). ``pair``: the match's pair tag, for both."""
        return (_COUNT_MATCH, AnnounceMatch(match, pair), *self._matched(match, pair))

    def _matched(
        self, match: Match, pair: str | None = None, resumed_from: str | None = None
    ) -> Effects:
        """``match`` formed: ``match_found`` for the client, unless it is stale or known
        (``resumed`` when it is a match resumed from ``resumed_from``).

        ``pair``: the tag of the two clients' address groups, told when known.
        """
        if match.match_id in self.ended_ids:
            return NOTHING
        current = self.match
        if current is not None and current.match_id == match.match_id:
            return NOTHING  # told already (a resync and the bus can both bring it)
        self.widen = None
        if self.state != "closing":
            self.state = "matched"
        self._rejoin_free = False
        self.matches_applied += 1
        self.match = match
        self.matched_at = self._now
        self._away = None
        self._remember(match)
        self.transcript.clear()
        ticket = self._ticket_of(match)
        partner = match.partner_of(self.id)
        found: protocol.ServerMessage
        if resumed_from is None:
            found = protocol.MatchFound(
                partner,
                match.match_id,
                match.should_call(self.id),
                match.mode,
                match.common_interests,
                pair,
                match.common_languages,
                ticket,
            )
        else:
            should_call = match.should_call(self.id)
            found = protocol.Resumed(
                partner, match.match_id, should_call, match.mode, resumed_from, ticket
            )
        if self._beats and not self._watching:
            self._watching = True
            watch = Watch(self._rules.lost_after_s)
            return (_DISARM, watch, protocol.server_frame(found))
        return (_DISARM, protocol.server_frame(found))

    def _ended(self, match_id: str, reason: PartnerReason) -> Effects:
        """``match_id`` ended on the partner's side: ``partner_disconnected`` when it was the
        current match. The client's next way into the queue then spends no skip."""
        if self._forget(match_id):
            self._rejoin_free = True
            return (protocol.server_frame(protocol.PartnerDisconnected(reason)),)
        return NOTHING

    def _forget(self, match_id: str) -> bool:
        """Remember ``match_id`` as ended; True when it was the current match."""
        self.ended_ids.append(match_id)
        current = self.match
        if current is None or current.match_id != match_id:
            return False
        self.match = None
        self._away = None
        self.transcript.clear()
        if self.state == "matched":
            self.state = "idle"
        return True

    def _said(self, match_id: str, frame: str | bytes, chat: str | None) -> Effects:
        current = self.match
        if current is None or current.match_id != match_id:
            return NOTHING  # a late message from a match that ended: it reaches nobody
        if chat is not None:
            self.transcript.append((current.partner_of(self.id), chat))
        return (frame,)

    def _delivered(self, delivered: Delivered) -> Effects:
        relay = delivered.relay
        if delivered.delivery == "unheard":
            # The partner is still held, but its server is not listening right
            # now (resubscribing): this frame is lost, the match is not.
            return (self._unavailable_frame(relay.op), _SYNC_NOW)
        if delivered.delivery == "gone":
            # The match is over in the shared state (its end is on its way, or
            # was lost): over for the sender too, and said once.
            return (*self._ended(relay.match.match_id, PartnerReason.LEFT), _SYNC_NOW)
        return NOTHING

    # -- failures and the end --------------------------------------------------

    def _unavailable(self, failed: Unavailable) -> Effects:
        effect = failed.effect
        if self._detached:
            return (ReleaseLater(),)
        if isinstance(effect, CountSkip):
            return self._enter(effect.then)  # a backend that does not answer limits nothing
        op = _op_of(effect)
        if op is None:  # a widen timer's call, or the server's own
            return (_SYNC_NOW,)
        if failed.elsewhere:
            # The session opened a socket on another server since (e.g. while
            # this one was frozen): this socket may no longer act for it.
            return self._close(CloseCode.GOING_AWAY, _ELSEWHERE)
        return (self._unavailable_frame(op), _SYNC_NOW)

    def _close(
        self, code: CloseCode, reason: str, partner_reason: PartnerReason = PartnerReason.LEFT
    ) -> Effects:
        """Enter ``closing`` with ``code``: the first close wins, later ones do nothing."""
        self.widen = None
        if self.close_code is not None:
            return NOTHING
        self.state = "closing"
        self.close_code = code
        self.close_reason = reason
        self.partner_reason = partner_reason
        graceful = code != CloseCode.SLOW_CONSUMER and partner_reason is not PartnerReason.TIMEOUT
        away = self._away
        if away is not None:
            self._forget(away)
            if code in _NOT_CHOSEN:
                # This side goes too, not by its wish (its server restarts): both may
                # come back with their tickets, and be paired by any server.
                return (Close(code, reason, graceful),)
            # Nobody is left to come back to: the match is over.
            return (EndSeats(away), Close(code, reason, graceful))
        return (Close(code, reason, graceful),)

    # -- reconciliation ----------------------------------------------------------

    def _synced(self, local: LocalView, shared: SharedView) -> Effects:
        current = self.match
        waiting = self.state == "waiting"
        theirs = shared.match
        if current is not None and theirs is not None and current.match_id == theirs.match_id:
            mine = Local.SAME
        elif current is not None:
            mine = Local.OTHER
        else:
            mine = Local.WAITING if waiting else Local.IDLE
        state = shared.state
        if state == "matched" and theirs is not None and theirs.match_id in self.ended_ids:
            kind = Shared.MATCHED_ENDED_HERE  # ended here, and the backend was never told
        else:
            kind = Shared(state)
        seen = (state, theirs.match_id if theirs is not None else "")
        view = View(
            kind,
            mine,
            moved=current is not local.match or waiting != (local.waiting is not None),
            seen_before=self._suspect == seen,
        )
        effects: list[Effect] = []
        for step in reconcile(view):
            if step is Step.FORGET_DIFFERENCE:
                self._suspect = None
            elif step is Step.LOOK_AGAIN:
                self._suspect = seen
                effects.append(_SYNC_SOON)
            elif step is Step.END_LOCAL:
                assert current is not None
                effects += self._ended(current.match_id, PartnerReason.LEFT)
            elif step is Step.ADOPT:
                assert theirs is not None
                effects += self._matched(theirs)
            elif step is Step.LEAVE_AND_END:
                effects.append(MakeIdle(PartnerReason.LEFT, None))
            elif step is Step.LEAVE_QUIETLY:
                effects.append(MakeIdle(PartnerReason.LEFT, None, quiet=True))
            elif step is Step.REQUEUE:
                assert self.prefs is not None  # a waiting session has its wish
                self.widen = None
                effects += (_DISARM, Enqueue(self.prefs, None, False, self.matches_applied))
            elif step is Step.CLOSE_ELSEWHERE:
                effects += self._close(CloseCode.GOING_AWAY, _ELSEWHERE)
            else:
                assert step is Step.FORM
                assert theirs is not None
                self.widen = None
                effects += (_DISARM, *self._form(theirs))
        return tuple(effects)

    # -- helpers -------------------------------------------------------------

    def _draining_frame(self) -> str:
        return protocol.server_frame(protocol.ServerDraining(self._rules.reconnect_after_ms))

    @staticmethod
    def _unavailable_frame(op: str) -> str:
        return protocol.error_frame(ErrorCode.UNAVAILABLE, _UNAVAILABLE_TEXT, op)

    def _remember(self, match: Match) -> None:
        self.recent_matches[match.match_id] = match
        while len(self.recent_matches) > CALLS_REMEMBERED:
            oldest = next(iter(self.recent_matches))
            del self.recent_matches[oldest]
            self.outcomes_reported.discard(oldest)


def _op_of(effect: Effect) -> str | None:
    """The client's op a failed call or delivery was made for (None: none of the client's)."""
    if isinstance(effect, Relay):
        return effect.op
    if isinstance(effect, MakeIdle | Enqueue | AnnounceEnd):
        return effect.op
    if isinstance(effect, BlockPartner | FileReport):
        return "report"
    return None


# The rule for each op that is not relayed (a relayed op needs none: the
# partner receives it). Every op of protocol.OPS has one or the other.
_RULES: Final[dict[type, Callable[[SessionCore, Any, float], Effects]]] = {
    protocol.JoinQueue: SessionCore._join_queue,
    protocol.Next: SessionCore._next,
    protocol.LeaveQueue: SessionCore._leave_queue,
    protocol.Report: SessionCore._report,
    protocol.Disconnect: SessionCore._disconnect,
    protocol.CallOutcome: SessionCore._call_outcome,
    protocol.Alive: SessionCore._alive,
    protocol.PeerLost: SessionCore._peer_lost,
    protocol.Resume: SessionCore._resume,
    protocol.RenewTicket: SessionCore._renew_ticket,
}
assert set(_RULES) | set(_RELAYED) == set(protocol.OP_OF), "an op without a rule"
assert not set(_RULES) & set(_RELAYED), "a relayed op with a rule of its own"
