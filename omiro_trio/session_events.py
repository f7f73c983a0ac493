"""What a session's core is told, and what it asks for: its events and effects.

``SessionCore`` (``session_core.py``) has two verbs, and both answer a tuple
of effects (``Effects``) for the shell to perform in order:

* ``receive(frame, now)``: a text frame from the client;
* ``handle(event, now)``: everything else that happened (an ``Event``):
  the socket opened or is being closed, the server started draining, pings
  arrived, a timer fired, the partner said something or a match formed or
  ended elsewhere, and every answer from the world to an effect that asked
  a question (a backend call, a delivery) fed back in.

Effects come in two kinds (the hub, ``hub.py``, performs both and ends in
``assert_never``):

* ``Immediate``: done at once, without waiting: a frame for this client
  (a ``str`` or ``bytes`` *is* the effect "send this frame"), the widen timer
  to run, a close, a count for the metrics, a resync request.
* ``Awaited``: they wait on the world, and the ones whose answer matters are
  answered by an event naming the effect (``Answer``): an *operation*
  (``Join``, ``Leave``, ``ReportPartner``: the hub takes the session's lock,
  one operation at a time, and says ``Started``), a backend *call*
  (``CountSkip``, ``MakeIdle``, ``Enqueue``, ``WidenWait``, ``Release``,
  ``BlockPartner``, ``FileReport``) or a *delivery* to the partner
  (``Relay``, ``AnnounceMatch``, ``AnnounceEnd``). A call or delivery that
  fails is answered ``Unavailable``, and nothing more of that operation is
  performed.

An effect that asks a question carries everything the core needs to go on
when the answer comes (what to do next, the count of matches the core had
seen when it asked): the core keeps no table of questions in flight.

Everything here is plain data: no I/O, no trio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from omiro_trio import protocol
from omiro_trio.backends.base import Delivery, LocalView, SharedView
from omiro_trio.budgets import Budget
from omiro_trio.codes import CloseCode, ErrorCode, PartnerReason
from omiro_trio.matchmaking import Match, Preferences, Waiting
from omiro_trio.records import record
from omiro_trio.tokens import Ticket

Frame = str | bytes
"""A frame for this session's client (text, or its UTF-8 bytes): the effect "send it"."""


@record
class Widen:
    """A widen timer: after ``delay_s``, widen the queue entry ``ticket``."""

    ticket: int
    delay_s: float


# -- immediate effects -------------------------------------------------------


@record
class Arm:
    """Run the widen timer ``widen`` (replacing any other); None: run none."""

    widen: Widen | None


@record
class Watch:
    """Run the liveness timer: fire ``WatchFired`` after ``after_s`` (replacing any
    other); None: run none."""

    after_s: float | None


@record
class Close:
    """End the session's socket with ``code``.

    ``graceful``: run the close handshake (not for a client that stopped
    reading or answering, which would only hold it up).
    """

    code: CloseCode
    reason: str
    graceful: bool = True


@record
class CountError:
    """Count one client frame answered with the error ``code``."""

    code: ErrorCode


@record
class CountCall:
    """Count one call outcome (the core checked it is new and for a recent video match)."""

    outcome: str
    path: str | None
    connect_ms: int | None


@record
class CountExceeded:
    """Count one refusal at ``budget``."""

    budget: Budget


@record
class CountMatch:
    """Count one match this server formed."""


@record
class SyncNow:
    """Compare every session with the shared state now: news may have been lost."""


@record
class SyncSoon:
    """Compare again shortly: a difference was seen that may be news on its way."""


@record
class ReleaseLater:
    """The detached session could not be released: the resync releases it later."""


@record
class EndSeats:
    """``match_id`` is over: its tickets resume nothing (``seats.Seats.ended``)."""

    match_id: str


@record
class GiveUpSeat:
    """The session no longer waits to resume ``match_id``: free its seat."""

    match_id: str


Immediate = (
    str
    | bytes
    | Arm
    | Watch
    | Close
    | CountError
    | CountCall
    | CountExceeded
    | CountMatch
    | SyncNow
    | SyncSoon
    | ReleaseLater
    | GiveUpSeat
    | EndSeats
)

# -- operations: one at a time per session, under its lock --------------------


@record
class Join:
    """Enter the queue with ``prefs`` (ending the match first); ``op``: the client's op."""

    prefs: Preferences
    op: str = "join_queue"


@record
class Leave:
    """Become idle: stop searching, or end the match (the partner hears ``reason``).

    ``match_id``: only if this is still the current match (``peer_lost``).
    """

    reason: PartnerReason = PartnerReason.LEFT
    op: str = "leave_queue"
    match_id: str | None = None


@record
class ReportPartner:
    """End the match, block the pair and keep a report."""

    reason: str


@record
class TakeSeat:
    """Take the seat ``ticket`` names: pair with the partner's seat, or hold it."""

    ticket: Ticket


@record
class ClaimSeat:
    """Ask the server's seats (``seats.py``) for the seat ``ticket`` names."""

    ticket: Ticket


Operation = Join | Leave | ReportPartner | TakeSeat

# -- backend calls ------------------------------------------------------------


@record
class CountSkip:
    """Spend one of the session's skips (``nexts_per_minute``, counted by the backend)."""

    then: Join


@record
class FileReport:
    """Keep a report of ``reported`` (whose client is ``reported_ip``, "" if unknown)."""

    reported: str
    reported_ip: str
    reason: str
    transcript: tuple[str, ...]
    match_s: float | None = None  # how long the match had lasted


@record
class Enqueue:
    """Ask the backend to queue the session (it must be idle there).

    ``op``: the client's op (None when the server re-queues it); ``announce``:
    the client hears ``queued``; ``seen``: how many matches the core had
    applied when it asked (a match that arrives before the answer overtook
    the join); ``retried``: asked again after the backend said "not idle".
    """

    prefs: Preferences
    op: str | None
    announce: bool
    seen: int
    retried: bool = False


@record
class MakeIdle:
    """Ask the backend to make the session idle; its match, if any, ends.

    The partner hears ``reason``; ``then`` is what follows once the backend
    answered (a ``Join`` is the client's wish to enter the queue again).
    ``quiet``: the answer is not acted on (the resync takes a session out of
    a queue it should not be in).
    """

    reason: PartnerReason
    op: str | None
    then: Join | Enqueue | FileReport | None = None
    quiet: bool = False


@record
class WidenWait:
    """The interest timeout of wait ``ticket`` passed: match anyone in the mode, or wait."""

    ticket: int


@record
class Release:
    """The socket is gone: forget it in the shared state (ending its match)."""


@record
class BlockPartner:
    """Never match the session and ``partner`` again; answer the partner's client.

    The first step of a report with ``reason``.
    """

    partner: str
    reason: str


Call = CountSkip | MakeIdle | Enqueue | WidenWait | Release | BlockPartner | FileReport

# -- deliveries ---------------------------------------------------------------


@dataclass(slots=True)
class Relay:
    """Deliver ``frame`` (already encoded for the partner) to the partner in ``match``.

    Also the event the partner's core is handed on this server: the partner
    said ``frame``. Not frozen: one is made per relayed frame, and a frozen
    dataclass's ``__init__`` costs several times a plain one.
    """

    op: str
    frame: bytes
    chat: str | None
    match: Match


@record
class AnnounceMatch:
    """Tell the partner of ``match`` that it formed (with the match's ``pair`` tag)."""

    match: Match
    pair: str | None = None


@record
class AnnounceAway:
    """Tell the partner of ``match`` that this side's socket is gone, not its wish:
    it may come back with its ticket."""

    match: Match


@record
class AnnounceEnd:
    """Tell the partner that ``match`` ended, with ``reason``; ``op`` as the call's."""

    match: Match
    reason: PartnerReason
    op: str | None


Awaited = Operation | Call | Relay | AnnounceMatch | AnnounceEnd | AnnounceAway | ClaimSeat

Effect = Immediate | Awaited
Effects = tuple[Effect, ...]
NOTHING: Final[Effects] = ()

# -- events -------------------------------------------------------------------


@record
class Opened:
    """The socket is open: greet the client (and tell it the server drains, if so)."""

    hello: protocol.Hello
    draining: bool


@record
class Draining:
    """The server is shutting down: clients should reconnect elsewhere."""


@record
class Controls:
    """``count`` control frames (pings, pongs) arrived; each costs a message."""

    count: int


@record
class Said:
    """The partner (on another server) said ``frame`` in match ``match_id``.

    On this server the partner's ``Relay`` itself is the event.
    """

    match_id: str
    frame: str | bytes
    chat: str | None


@record
class MatchFormed:
    """Another session's operation, another server or the resync formed ``match``.

    ``pair``: the tag of the two clients' address groups (PROTOCOL.md "Pair
    tag"), None when unknown (the resync does not look it up).
    """

    match: Match
    pair: str | None = None


@record
class MatchEnded:
    """The partner's side ended ``match_id``, with ``reason``."""

    match_id: str
    reason: PartnerReason


@record
class PartnerAway:
    """The partner in ``match_id`` lost its socket; it may resume within the grace."""

    match_id: str


@record
class TimerFired:
    """The widen timer ``widen`` fired (the hub holds the session's lock)."""

    widen: Widen


@record
class WatchFired:
    """The liveness timer fired (the hub holds the session's lock)."""


@record
class SeatHeld:
    """The seat is taken; the partner's is empty: wait ``grace_s`` for it."""

    call: ClaimSeat
    grace_s: float


@record
class SeatRefused:
    """The seat cannot be taken: ``code`` and ``text`` for the client."""

    call: ClaimSeat
    code: ErrorCode
    text: str


@record
class Resumed:
    """Both seats came back: ``match`` (the same roles, a new id) goes on."""

    match: Match
    resumed_from: str


@record
class CloseAsked:
    """Something outside the core ends the session (a ban, the engine, a drain, a bug)."""

    code: CloseCode
    reason: str
    partner_reason: PartnerReason = PartnerReason.LEFT


@record
class Banned:
    """The client's address (or with ``account``, its account) is banned now: tell it,
    and close (1008)."""

    account: bool = False


@record
class Started:
    """The hub holds the session's lock for ``operation``: go ahead."""

    operation: Operation


@record
class Detached:
    """The socket is gone and the hub forgot the session (it holds its lock)."""


@record
class Synced:
    """The resync compared ``local`` (taken before the backend's answer) with ``shared``."""

    local: LocalView
    shared: SharedView


@record
class SkipCounted:
    call: CountSkip
    # The session has spent its skips: seconds until the window lets one
    # through. None: not over.
    retry_after_s: float | None


@record
class MadeIdle:
    call: MakeIdle
    ended: Match | None


@record
class Enqueued:
    call: Enqueue
    result: Match | Waiting
    pair: str | None = None  # a match's pair tag, when its clients are known


@record
class NotIdle:
    """The backend holds the session in a queue or match this server does not know of."""

    call: Enqueue


@record
class Widened:
    call: WidenWait
    match: Match | None
    pair: str | None = None  # the match's pair tag, when its clients are known


@record
class Released:
    call: Release
    ended: Match | None


@record
class Blocked:
    call: BlockPartner
    partner_ip: str  # "" when unknown


@record
class Filed:
    call: FileReport
    recorded: bool  # False: over the reporter's allowance, not kept


@record
class Delivered:
    relay: Relay
    delivery: Delivery


@record
class Unavailable:
    """``effect`` failed: the backend did not answer (``elsewhere``: the session's
    claim is held by another socket now)."""

    effect: Call | Relay | AnnounceEnd
    elsewhere: bool


Answer = (
    SkipCounted
    | MadeIdle
    | Enqueued
    | NotIdle
    | Widened
    | Released
    | Blocked
    | Filed
    | Delivered
    | Unavailable
)

Event = (
    Opened
    | Draining
    | Controls
    | Relay
    | Said
    | MatchFormed
    | MatchEnded
    | PartnerAway
    | TimerFired
    | WatchFired
    | SeatHeld
    | SeatRefused
    | Resumed
    | CloseAsked
    | Banned
    | Started
    | Detached
    | Synced
    | Answer
)
