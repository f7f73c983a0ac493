"""One session's rules as plain state: no I/O, no trio, no awaits.

In the spirit of h11's ``Connection``: a ``SessionCore`` is fed what
happened (a client frame, a count of control frames, a match formed or
ended by the backend, a partner's relay, a widen timer that fired) together
with ``now``, and answers what to do: a frame for this client, a message
for the partner, a backend request, a timer to arm, a close code. The
shells (``hub.Session`` and ``connection.py``) perform those actions; they
never change the state below themselves.

State (``state``) and its transitions, all in this module:

* ``idle``: no match, not in the queue. ``queued`` makes it ``waiting``;
  ``matched`` makes it ``matched``.
* ``waiting``: in the queue, maybe with a widen timer (``widen``).
  ``matched`` makes it ``matched``; ``idle`` makes it ``idle``. With a
  shared backend a session can be queued while the end of its last match
  is still on its way (the backend had already ended it): ``match`` stays
  set until ``ended`` arrives, and relays for it still reach the client.
* ``matched``: ``match`` is the current match. ``ended`` (for that match)
  or ``idle`` makes it ``idle``; ``matched`` with another match replaces it.
* ``closing``: terminal. Entered by ``close`` (the first close code wins).
  A closing session's match is still kept up to date (``match``, the
  ended list), because the shell tells the partner when it detaches, and
  frames still go out (the connection flushes them before its close
  handshake); it never leaves ``closing``.

Stale events: every match event names its ``match_id``. The core remembers
the last ``ENDED_REMEMBERED`` matches that ended, so a late ``matched`` for
one of them is dropped, a duplicate ``matched`` is dropped, and a relay
reaches the client only when it names the current match.

Flood control: one token bucket for every client message and control
frame; a message over it is refused with ``rate_limited``, and more than
``RATE_VIOLATIONS_ALLOWED`` refusals per ``ERROR_WINDOW_S`` close with 4029.
More than ``PROTOCOL_ERRORS_ALLOWED`` bad frames per window close with 4000.

Skips: every way into the queue (``next``, ``join_queue`` while matched,
waiting or idle: after a ``leave_queue`` or a ``report`` too, and on a new
socket of the session) is a ``Join`` or ``NextPartner`` with ``counted``
set, which the shell checks against the session's ``nexts_per_minute``
before the match ends; the one exception is the first entry after the
partner ended the match (``ended``), which the client did not choose.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Final, Literal

from omiro_trio import protocol
from omiro_trio.codes import CloseCode, ErrorCode
from omiro_trio.errors import ProtocolViolation
from omiro_trio.matchmaking import Match, Preferences

State = Literal["idle", "waiting", "matched", "closing"]
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
    """A client's message allowance (config ``[limits]``)."""

    messages_per_second: float = 10.0
    message_burst: int = 20


# -- actions: what the shell does ------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Send the error ``frame`` to the client; count ``error``, when set, as a protocol error."""

    frame: str
    error: str | None = None


@dataclass(slots=True)
class Relay:
    """Deliver ``frame`` (already encoded for the partner) to the partner in ``match``.

    Not frozen: one is made per relayed frame, and a frozen dataclass's
    ``__init__`` costs several times a plain one.
    """

    op: str
    frame: bytes
    chat: str | None
    match: Match


@dataclass(frozen=True, slots=True)
class Join:
    """Ask the backend to queue the session with ``prefs`` (ending its match first).

    ``counted``: it spends one of the session's skips (``nexts_per_minute``),
    checked before anything else happens.
    """

    prefs: Preferences
    counted: bool = True


@dataclass(frozen=True, slots=True)
class NextPartner:
    """Ask the backend for the next partner (ending the match first).

    ``counted`` as ``Join``'s.
    """

    counted: bool = True


@dataclass(frozen=True, slots=True)
class Leave:
    """Ask the backend to make the session idle."""


@dataclass(frozen=True, slots=True)
class ReportPartner:
    """Ask the backend to end the match, block the pair and keep a report."""

    reason: str


@dataclass(frozen=True, slots=True)
class CountCall:
    """Count one call outcome (the core checked it is new and for a recent video match)."""

    outcome: str
    path: str | None
    connect_ms: int | None


@dataclass(frozen=True, slots=True)
class Close:
    """Close the socket with ``code``; send ``frame`` first when set."""

    code: int
    reason: str = ""
    frame: str | None = None
    error: str | None = None  # counted as a protocol error when set


@dataclass(frozen=True, slots=True)
class Widen:
    """A timer the shell runs: after ``delay_s``, widen the queue entry ``ticket``."""

    ticket: int
    delay_s: float


Action = Reply | Relay | Join | NextPartner | Leave | ReportPartner | CountCall | Close
"""What ``SessionCore.receive`` asks of the shell (``None``: nothing)."""

NEXT: Final = NextPartner()
NEXT_UNCOUNTED: Final = NextPartner(counted=False)
LEAVE: Final = Leave()
_BYE: Final = Close(CloseCode.NORMAL)
_RELAYED_OPS: Final = {kind: protocol.OP_NAMES[kind] for kind in protocol.RELAYED}


class SessionCore:
    """The per-session state and rules (see the module's docstring).

    Args:
        session_id: the session's id (what partners see).
        now: the time the session starts (the clock the caller passes to
            every method that takes ``now``).
        limits: what a client frame may be.
        rates: the client's message allowance.
    """

    __slots__ = (
        "_bucket",
        "_errors",
        "_limits",
        "_rejoin_free",
        "_violations",
        "close_code",
        "close_reason",
        "ended_ids",
        "id",
        "match",
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
        self,
        session_id: str,
        now: float,
        *,
        limits: protocol.Limits | None = None,
        rates: Rates | None = None,
    ) -> None:
        rates = rates or Rates()
        self.id = session_id
        self.state: State = "idle"
        self.match: Match | None = None
        self.prefs: Preferences | None = None
        self.widen: Widen | None = None  # the timer the shell should be running
        self.matches_applied = 0  # counts match_found sent, to spot one that overtook a join
        self.close_code: int | None = None
        self.close_reason = ""
        self.partner_reason: str = "left"  # what the partner hears when this socket ends
        self.transcript: deque[tuple[str, str]] = deque(maxlen=TRANSCRIPT_LINES)
        self.ended_ids: deque[str] = deque(maxlen=ENDED_REMEMBERED)
        # The last CALLS_REMEMBERED matches this client heard of, oldest first,
        # and which of them it has already reported a call outcome for.
        self.recent_matches: dict[str, Match] = {}
        self.outcomes_reported: set[str] = set()
        self._limits = limits or protocol.Limits()
        self._bucket = TokenBucket(rates.messages_per_second, rates.message_burst, now)
        self._errors = WindowCounter(PROTOCOL_ERRORS_ALLOWED, ERROR_WINDOW_S)
        self._violations = WindowCounter(RATE_VIOLATIONS_ALLOWED, ERROR_WINDOW_S)
        self._rejoin_free = False  # the partner ended the match; no entry since

    @property
    def waiting(self) -> bool:
        """In the queue, as far as this server knows."""
        return self.state == "waiting"

    # -- from the client -------------------------------------------------

    def receive(self, frame: str | bytes, now: float) -> Action | None:
        """One text frame from the client: what to do about it."""
        try:
            message = protocol.parse_client_frame(frame, self._limits)
        except ProtocolViolation as exc:
            reply = protocol.error_frame(exc.code, exc.message, exc.op)
            if self._errors.hit(now):
                return self._close(
                    CloseCode.PROTOCOL_ERRORS, "too many protocol errors", reply, exc.code
                )
            return Reply(reply, exc.code)
        kind = type(message)
        if not self._bucket.take(now):
            return self.refuse(protocol.OP_NAMES[kind], now)
        op = _RELAYED_OPS.get(kind)
        if op is not None:  # the hot path: chat, typing, signaling
            match = self.match
            if match is None:
                return Reply(
                    protocol.error_frame(ErrorCode.NOT_MATCHED, "you have no partner right now", op)
                )
            frame = protocol.encode_bytes(op, protocol.relay_data(message, self.id))
            chat = message.message if isinstance(message, protocol.Chat) else None
            if chat is not None:
                self.transcript.append((self.id, chat))
            return Relay(op, frame, chat, match)
        if kind is protocol.JoinQueue:
            assert isinstance(message, protocol.JoinQueue)
            return Join(Preferences(message.mode, message.interests), self._skip_counted())
        if kind is protocol.Next:
            return NEXT if self._skip_counted() else NEXT_UNCOUNTED
        if kind is protocol.LeaveQueue:
            return LEAVE
        if kind is protocol.Report:
            assert isinstance(message, protocol.Report)
            return ReportPartner(message.reason)
        if kind is protocol.CallOutcome:
            assert isinstance(message, protocol.CallOutcome)
            return self._call_outcome(message)
        if kind is protocol.Disconnect:
            self.close(CloseCode.NORMAL)
            return _BYE
        raise AssertionError(f"no rule for {kind.__name__}")  # pragma: no cover

    def controls(self, count: int, now: float) -> Close | None:
        """``count`` control frames (pings) arrived: each costs a message."""
        for _ in range(count):
            if not self._bucket.take(now) and self._violations.hit(now):
                return self._close(CloseCode.RATE_LIMITED, "rate limit exceeded")
        return None

    def _skip_counted(self) -> bool:
        """Whether entering the queue now spends a skip: yes, but for the first after
        the partner ended the match."""
        free = self._rejoin_free
        self._rejoin_free = False
        return not free

    def refuse(self, op: str, now: float, retry_after_s: float | None = None) -> Reply | Close:
        """Refuse ``op`` as over the allowance (the bucket, or the backend's ``next`` limit).

        ``retry_after_s``: when the op would be accepted again, told to the
        client in whole seconds (rounded up).
        """
        after = None if retry_after_s is None else max(1, math.ceil(retry_after_s))
        reply = protocol.error_frame(ErrorCode.RATE_LIMITED, "slow down", op, retry_after=after)
        if self._violations.hit(now):
            return self._close(
                CloseCode.RATE_LIMITED, "rate limit exceeded", reply, ErrorCode.RATE_LIMITED
            )
        return Reply(reply, ErrorCode.RATE_LIMITED)

    def _call_outcome(self, message: protocol.CallOutcome) -> Reply | CountCall:
        """Count how this side's call of a recent video match went, once per match.

        The match may already have ended (a failed call is often skipped
        before the page gives up on it), but it must be one of the client's
        own last ``CALLS_REMEMBERED`` matches.
        """
        op = "call_outcome"
        match = self.recent_matches.get(message.match_id)
        if match is None:
            reason, code = "no recent match has this match_id", ErrorCode.NOT_MATCHED
        elif match.mode != "video":
            reason, code = "a text match has no call", ErrorCode.BAD_REQUEST
        elif message.match_id in self.outcomes_reported:
            reason = "this match's call outcome was already reported"
            code = ErrorCode.BAD_REQUEST
        else:
            self.outcomes_reported.add(message.match_id)
            return CountCall(message.outcome, message.path, message.connect_ms)
        return Reply(protocol.error_frame(code, reason, op))

    def asked(self, prefs: Preferences) -> None:
        """The backend took a ``join_queue`` with ``prefs``: ``next`` reuses them."""
        self.prefs = prefs

    def report_check(self) -> str | None:
        """Before a report: the ``error`` frame when there is nobody to report."""
        if self.match is None:
            return protocol.error_frame(
                ErrorCode.NOT_MATCHED, "you have no partner to report", "report"
            )
        return None

    def transcript_lines(self) -> tuple[str, ...]:
        """The current match's chat, as a report keeps it."""
        return tuple(
            f"{'reporter' if sender == self.id else 'reported'}: {text}"
            for sender, text in self.transcript
        )

    # -- from the backend, the partner and timers ------------------------

    def queued(self, prefs: Preferences, widen: Widen | None, *, announce: bool) -> str | None:
        """The backend put the session in the queue; the ``queued`` frame when announced."""
        self.prefs = prefs
        self.widen = widen
        if self.state != "closing":
            self.state = "waiting"
        if not announce:
            return None
        return protocol.encode("queued", {"mode": prefs.mode, "interests": list(prefs.interests)})

    def idle(self) -> None:
        """The session left the queue (its match, if any, ends through ``ended``)."""
        self.widen = None
        if self.state == "waiting":
            self.state = "idle"

    def matched(self, match: Match, pair: str | None = None) -> str | None:
        """The backend formed ``match``: the ``match_found`` frame, or None when stale.

        ``pair``: the tag of the two clients' address groups
        (``TokenSigner.pair_tag``), sent as ``pair`` when known.
        """
        if match.match_id in self.ended_ids:
            return None
        current = self.match
        if current is not None and current.match_id == match.match_id:
            return None  # told already (a resync and the bus can both bring it)
        self.widen = None
        if self.state != "closing":
            self.state = "matched"
        self._rejoin_free = False
        self.matches_applied += 1
        self.match = match
        self._remember(match)
        self.transcript.clear()
        data: dict[str, object] = {
            "partner": match.partner_of(self.id),
            "match_id": match.match_id,
            "should_call": match.should_call(self.id),
            "mode": match.mode,
            "common_interests": list(match.common_interests),
        }
        if pair is not None:
            data["pair"] = pair
        return protocol.encode("match_found", data)

    def ended(self, match_id: str, reason: str) -> str | None:
        """``match_id`` ended: the ``partner_disconnected`` frame when it was the current match.

        Ended by the partner (or for it): the client's next entry into the
        queue spends no skip.
        """
        if self.forget(match_id):
            self._rejoin_free = True
            return protocol.encode("partner_disconnected", {"reason": reason})
        return None

    def forget(self, match_id: str) -> bool:
        """Remember ``match_id`` as ended; True when it was the current match."""
        self.ended_ids.append(match_id)
        current = self.match
        if current is None or current.match_id != match_id:
            return False
        self.match = None
        self.transcript.clear()
        if self.state == "matched":
            self.state = "idle"
        return True

    def relayed(self, match_id: str, chat: str | None) -> bool:
        """The partner sent a message for ``match_id``: True when it reaches this client."""
        current = self.match
        if current is None or current.match_id != match_id:
            return False  # a late message from a match that ended: it reaches nobody
        if chat is not None:
            self.transcript.append((current.partner_of(self.id), chat))
        return True

    def cancel_widen(self) -> None:
        """The session is going away: no widen timer any more."""
        self.widen = None

    def widen_due(self, widen: Widen) -> bool:
        """The shell's timer for ``widen`` fired: True when it is still the one asked for."""
        if self.widen is not widen:
            return False
        self.widen = None
        return self.state == "waiting"

    def close(self, code: int, reason: str = "", *, partner_reason: str = "left") -> bool:
        """Enter ``closing`` with ``code`` (the first close wins); True on the first."""
        self.widen = None
        if self.close_code is not None:
            return False
        self.state = "closing"
        self.close_code = code
        self.close_reason = reason
        self.partner_reason = partner_reason
        return True

    def _close(
        self, code: int, reason: str, frame: str | None = None, error: str | None = None
    ) -> Close:
        self.close(code, reason)
        return Close(code, reason, frame, error)

    def _remember(self, match: Match) -> None:
        self.recent_matches[match.match_id] = match
        while len(self.recent_matches) > CALLS_REMEMBERED:
            oldest = next(iter(self.recent_matches))
            del self.recent_matches[oldest]
            self.outcomes_reported.discard(oldest)
