"""The backend seam: what the hub needs from shared state.

Two implementations satisfy it without inheriting: ``memory.MemoryBackend``
(one process, the default) and, with the Redis backend, one that lets many
servers act as one service. One contract test suite
(``tests/integration/test_backend_contract.py``) runs against each.

Rules every implementation keeps:

* ``join``, ``widen`` and ``leave`` are atomic: "find me a compatible waiting
  partner, or put me in the queue" is one step, and a session is never in
  two matches, nor matched after ``release_session``.
* ``release_session`` also makes the session idle (leaves its queue or ends
  its match) and returns the ended match, so a dying socket can never leave
  a partner waiting on a ghost.
* Every method may raise ``BackendUnavailable``; none raises for a client's
  mistake.
* A *client* is an address group, as made by ``addresses.address_group``: an
  IPv4 address, or the IPv6 network of the configured prefix (``/64`` by
  default), in canonical text form. Sessions are claimed with their client;
  blocks, reporter counts and ban lookups work on clients, so a fresh token
  or another address of the same IPv6 network does not undo them.
* The report store is bounded in bytes (oldest reports dropped first) and
  read a page at a time.
* Lifecycle: ``async with open_backend(config) as backend`` — no tasks are
  started before that, and none outlive it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from omiro_trio.matchmaking import Match, Preferences, Waiting

if TYPE_CHECKING:  # the records here are plain data, importable by the pure cores
    import trio

BusHandler = Callable[[bytes], Awaitable[None]]
"""Receives each bus message addressed to a session on this server."""

Delivery = Literal["delivered", "unheard", "gone"]
"""What ``publish`` made of a message: handed to the server holding the session;
not heard (the session is held, but its server is not listening right now: the
message is lost); or gone (nobody holds the session, or the match it was for is
over)."""


@dataclass(frozen=True, slots=True)
class Stats:
    online: int
    waiting: int


@dataclass(frozen=True, slots=True)
class Ban:
    target: str  # an IP address, a CIDR network, or "account:" and an account key
    reason: str
    until: float | None  # unix time; None: permanent
    created_at: float
    by: str = ""  # who set it: a moderator's name, "admin" (the token) or "auto" (reports)


@dataclass(frozen=True, slots=True)
class ReportRecord:
    reported_ip: str  # the reported session's client (address group); "" if unknown
    reported: str  # session id
    reporter: str  # session id
    reporter_ip: str  # the reporter's client (address group)
    reason: str
    at: float  # unix time
    transcript: tuple[str, ...]
    id: int = 0  # given by the backend when recorded: increasing, unique, > 0
    match_s: float | None = None  # how long the match had lasted; None if unknown
    reported_account: str = ""  # the account key the reported session's token carried, or ""

    def size_bytes(self) -> int:
        """What the record costs the store (its text, UTF-8), for the byte bound."""
        texts = (
            self.reported_ip,
            self.reported,
            self.reporter,
            self.reporter_ip,
            self.reason,
            self.reported_account,
        )
        return REPORT_OVERHEAD_BYTES + sum(
            len(t.encode("utf-8", "replace")) for t in (*texts, *self.transcript)
        )


REPORT_OVERHEAD_BYTES = 64
"""What one report costs the store beyond its text (for the byte bound)."""

ACTIVITY_KEPT_MINUTES = 120
"""How long the per-minute activity counts (the console's live view) are kept."""

ReportState = Literal["open", "claimed", "actioned", "dismissed"]
"""Where a report is in the moderators' queue (``triage.py`` has the rules)."""


@dataclass(frozen=True, slots=True)
class ReportStatus:
    """A report's place in the queue, kept beside the record (which never changes).

    ``by`` and ``at`` (unix time): who claimed or decided it, and when;
    ``action``: what was done (``actioned``); ``autoban``: an automatic ban
    fired on this report.
    """

    state: ReportState = "open"
    by: str = ""
    at: float = 0.0
    action: str = ""
    note: str = ""
    autoban: bool = False


Role = Literal["moderator", "admin"]


@dataclass(frozen=True, slots=True)
class Moderator:
    """A named console account; ``password_hash`` is an argon2id PHC string."""

    name: str
    role: Role
    password_hash: str
    created_at: float


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in console: whose, and the CSRF token its state-changing requests carry."""

    name: str
    csrf: str
    created_at: float


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One moderator action. ``actor``: a moderator's name, or ``admin`` (the bearer token)."""

    at: float
    actor: str
    action: str  # e.g. "ban", "lift_ban", "dismiss", "claim", "add_moderator"
    target: str = ""  # an address group or network, an account name
    report_id: int = 0  # the report it was taken on, else 0
    note: str = ""
    id: int = 0  # given by the backend: increasing, unique, > 0


@dataclass(frozen=True, slots=True)
class Ended:
    """A match the sweep ended because ``gone`` (a session of a dead server) is gone."""

    gone: str
    match: Match


@dataclass(frozen=True, slots=True)
class LocalView:
    """What this server believes about one of its live sessions (for ``sync``).

    ``waiting`` is the session's wish while it waits (else None), with the
    ticket of the widen still to come (``ticket``; None once widened).
    """

    session_id: str
    ip: str
    match: Match | None
    waiting: Preferences | None = None
    ticket: int | None = None


@dataclass(frozen=True, slots=True)
class Invite:
    """An invite code of the entry gate (docs/gate.md), kept without the code itself.

    ``key`` is the code's SHA-256 (hex): what the backend finds it by;
    ``id``, its first ``INVITE_ID_CHARS`` characters, names it in lists and
    to revoke it. ``left`` of ``uses`` entries remain until ``expires_at``
    (unix time).
    """

    id: str
    key: str
    uses: int
    left: int
    expires_at: float
    created_at: float
    by: str = ""
    note: str = ""


INVITE_ID_CHARS = 16
MAX_INVITES = 10_000
"""Invites kept at once (unexpired); ``add_invite`` refuses more."""
INVITE_KEPT_EXPIRED_S = 86_400
"""How long an expired invite is still kept (listed, and answered ``expired``)."""

POW_RATE_STEP_S = 10
"""New sessions are counted for adaptive proof of work in steps of this many
seconds; ``note_new_sessions`` sums the last ``60 // POW_RATE_STEP_S`` steps."""

PowUse = Literal["new", "used", "full"]
"""What ``use_pow_solution`` made of a solved challenge: remembered now (its
first use), already used, or refused because ``limit`` are remembered."""

InviteUse = Literal["admitted", "unknown", "expired", "used_up"]
"""What ``use_invite`` made of a code: one entry taken, or why not. A revoked
invite is gone: ``unknown``."""


@dataclass(frozen=True, slots=True)
class Raid:
    """Raid mode (docs/gate.md): new sessions are paused, service-wide, or
    (``pause`` false) let in only with proof of work at ``[gate]
    pow_raid_max_number``, whatever ``pow_mode`` says.

    ``retry_after_s``: what refused pages are told to wait before they try
    again.
    """

    since: float  # unix time
    by: str
    retry_after_s: int = 300
    pause: bool = True


SharedState = Literal["idle", "waiting", "matched", "elsewhere", "ended", "formed"]
"""What the backend holds for a session, as ``sync`` answers it:

* ``elsewhere``: another socket of the session, on a live server, holds it;
* ``matched``: in ``match`` (the one the server knows, or another);
* ``ended``: the match the server knows is over for certain (its partner
  moved on, or never came back after the shared state was lost);
* ``formed``: ``sync`` itself just matched the waiting session (``match``):
  the server tells both sides, as after a ``join``;
* ``waiting``, ``idle``.
"""


@dataclass(frozen=True, slots=True)
class SharedView:
    """What the backend holds for a session (see ``SharedState``)."""

    session_id: str
    state: SharedState
    match: Match | None


class Backend(Protocol):
    """Shared state for matchmaking, sessions, bans, limits and delivery."""

    @property
    def server_id(self) -> str:
        """This server's id on the bus."""
        ...

    async def ping(self) -> None:
        """Return when the backend answers (readiness); raise ``BackendUnavailable``."""
        ...

    # -- sessions -------------------------------------------------------

    async def claim_session(self, session_id: str, client: str, account: str = "") -> bool:
        """Record that ``session_id`` has a live socket on this server, from ``client``.

        ``client`` is the socket's address group; the backend keeps it while
        the session is live (``client_of``) and uses it for ``block``.
        ``account`` is the account key its token carries ("" none), kept the
        same way (``account_of``: a report names it). Returns False if the
        session already has a socket anywhere (the caller answers 409); the
        first claim's client is kept then.
        """
        ...

    async def client_of(self, session_id: str) -> str | None:
        """The client (address group) a live session was claimed from, else None."""
        ...

    async def account_of(self, session_id: str) -> str:
        """The account key a live session was claimed with; "" if none or not live."""
        ...

    async def release_session(self, session_id: str) -> Match | None:
        """Forget the live socket; make the session idle; return its ended match."""
        ...

    async def reserve_socket(self, client: str, limit: int) -> bool:
        """Take one of ``client``'s ``limit`` open sockets, if one is free.

        Counted service-wide (every server sharing the backend), checked and
        counted in one atomic step, so simultaneous upgrades cannot overshoot
        it. The slot is this server's until ``release_socket``; a dead
        server's slots are freed by the sweep, and a server re-registers its
        own in ``sync`` (after the shared state was lost).
        """
        ...

    async def release_socket(self, client: str) -> None:
        """Give back one socket ``reserve_socket`` gave this server for ``client``."""
        ...

    # -- matching ------------------------------------------------------

    async def join(self, session_id: str, prefs: Preferences) -> Match | Waiting:
        """Match with a compatible waiting session, or wait. The session must be idle."""
        ...

    async def widen(self, session_id: str, ticket: int) -> Match | None:
        """The interest timeout of wait ``ticket`` passed: match anyone in the mode, or wait."""
        ...

    async def leave(self, session_id: str) -> Match | None:
        """Become idle: leave the queue or end the match (returned)."""
        ...

    async def block(self, a: str, b: str) -> None:
        """Never match these two sessions again, nor their clients, for the block TTL.

        The clients are those the sessions were claimed with (a session not
        live blocks only by id). Two sessions of one client block only each
        other: a client is never blocked from itself.
        """
        ...

    # -- abuse control -------------------------------------------------

    async def hit_rate_limit(self, key: str, limit: int, window_s: float) -> float | None:
        """Count one event against ``limit`` per ``window_s`` for ``key``.

        Returns None when allowed, else the seconds until it would be.
        """
        ...

    async def ban_for(self, ip: str) -> Ban | None:
        """The ban in force for ``ip``, if any.

        ``ip`` is an address or a client (an address group such as an IPv6
        ``/64``); a ban applies when its target overlaps it, so a ban of one
        IPv6 address covers its whole group. One lookup by client plus the
        bans of networks wider than one client: the number of bans does not
        slow it (``addresses.ban_key``).
        """
        ...

    async def account_ban(self, account: str) -> Ban | None:
        """The ban in force for the account key ``account`` (a ban of
        ``account:`` + it), if any: one exact lookup."""
        ...

    async def add_ban(self, ban: Ban) -> None:
        """Ban ``ban.target`` (replacing a ban of the same target)."""
        ...

    async def remove_ban(self, target: str) -> bool:
        """Lift the ban of exactly ``target``; False if there was none."""
        ...

    async def bans(self) -> list[Ban]:
        """Every ban in force, newest first."""
        ...

    async def record_report(self, report: ReportRecord) -> int:
        """Keep a report for the operators; return the id it was given.

        The ``id`` of ``report`` is ignored: the backend gives each report a
        new one, greater than every id given before. The store is bounded in
        bytes (``ReportRecord.size_bytes``); the oldest reports go first.
        """
        ...

    async def reports(self, limit: int, before: int | None = None) -> list[ReportRecord]:
        """Up to ``limit`` reports kept, newest first, with ids below ``before`` if given."""
        ...

    async def count_reporter(self, reported_ip: str, reporter_ip: str, window_s: float) -> int:
        """Note that client ``reporter_ip`` reported client ``reported_ip``; return how
        many distinct reporter clients did so within the last ``window_s`` seconds
        (this one included). Both are clients (address groups)."""
        ...

    # -- moderation (the records of ``moderation.py``; time is unix time) ----
    #
    # Reports, their statuses, the per-client report and ban history are kept
    # for the report retention; the audit log for the audit retention (both
    # given when the backend opens); a console session for its idle expiry,
    # renewed on use. Accounts are kept until removed.

    async def report(self, report_id: int) -> ReportRecord | None:
        """The report of that id, if it is still kept."""
        ...

    async def report_statuses(self, ids: Sequence[int]) -> list[ReportStatus | None]:
        """Each report's status (None for one no longer kept), in the order asked."""
        ...

    async def swap_report_status(
        self, report_id: int, expected: ReportStatus, new: ReportStatus
    ) -> bool:
        """Set the status to ``new`` if it is ``expected`` now (False otherwise, or if gone).

        A report that becomes ``actioned`` or ``dismissed`` leaves ``open_reports``.
        """
        ...

    async def open_reports(self, limit: int) -> list[ReportRecord]:
        """Up to ``limit`` reports still open or claimed, oldest first."""
        ...

    async def reports_of(self, client: str, limit: int) -> list[ReportRecord]:
        """Up to ``limit`` reports of ``client`` (the reported side), newest first."""
        ...

    async def count_reports_since(self, at: float) -> int:
        """How many reports kept were filed at or after ``at``."""
        ...

    async def ban_history(self, client: str, limit: int) -> list[Ban]:
        """Up to ``limit`` bans set on exactly ``client`` (an address group), newest first,
        lifted or expired ones included."""
        ...

    async def add_moderator(self, moderator: Moderator) -> bool:
        """Keep a new account; False if the name is taken."""
        ...

    async def moderator(self, name: str) -> Moderator | None: ...

    async def moderators(self) -> list[Moderator]:
        """Every account, by name."""
        ...

    async def remove_moderator(self, name: str) -> bool:
        """Remove the account (its console sessions stop working); False if there was none."""
        ...

    async def open_console_session(self, key: str, session: ConsoleSession, idle_s: float) -> None:
        """Keep ``session`` under ``key`` (a hash of its cookie) until idle for ``idle_s``."""
        ...

    async def console_session(self, key: str, idle_s: float) -> ConsoleSession | None:
        """The session under ``key``, its idle expiry renewed; None if expired or unknown."""
        ...

    async def close_console_session(self, key: str) -> None: ...

    async def add_activity(self, minute: int, counts: Mapping[str, int]) -> None:
        """Add this server's ``counts`` (matches, call outcomes) to unix minute ``minute``
        (kept ``ACTIVITY_KEPT_MINUTES``)."""
        ...

    async def activity(self, since_minute: int) -> dict[str, int]:
        """The counts of every server, summed over the minutes from ``since_minute`` on."""
        ...

    async def append_audit(self, entry: AuditEntry) -> int:
        """Append ``entry`` (its ``id`` is ignored) to the audit log; return the id given."""
        ...

    async def audit(self, limit: int, before: int | None = None) -> list[AuditEntry]:
        """Up to ``limit`` audit entries, newest first, with ids below ``before`` if given."""
        ...

    # -- the entry gate (docs/gate.md; time is unix time) ----------------

    async def add_invite(self, invite: Invite) -> bool:
        """Keep ``invite`` until ``INVITE_KEPT_EXPIRED_S`` past its expiry; False when
        ``MAX_INVITES`` unexpired invites are kept already."""
        ...

    async def invites(self) -> list[Invite]:
        """Every invite kept (expired ones for a while), newest first."""
        ...

    async def revoke_invite(self, invite_id: str) -> bool:
        """Forget the invite of that id (its code stops working); False if there was none."""
        ...

    async def use_invite(self, key: str) -> InviteUse:
        """Take one entry of the invite whose code hashes to ``key``, in one atomic step
        (two servers never take the last entry twice)."""
        ...

    async def raid(self) -> Raid | None:
        """Raid mode as set for the whole service, or None when it is off."""
        ...

    async def set_raid(self, raid: Raid | None) -> None:
        """Turn raid mode on (``raid``) or off (None), for every server."""
        ...

    async def use_pow_solution(self, key: str, expires_at: float, limit: int) -> PowUse:
        """Remember the proof-of-work challenge ``key`` (its signature) as used until
        ``expires_at`` (unix time), in one atomic step: ``"new"`` the first time,
        ``"used"`` after (on every server), ``"full"`` when ``limit`` unexpired ones
        are remembered already (nothing is remembered then)."""
        ...

    async def note_new_sessions(self, added: int, per_minute: int, quiet_s: float) -> bool:
        """Add ``added`` new sessions to the service's count; while the count of the
        last minute (in ``POW_RATE_STEP_S`` steps) exceeds ``per_minute``, adaptive
        proof of work is on, and stays on ``quiet_s`` past the last such call.
        Returns whether it is on now, for every server."""
        ...

    # -- stats and delivery --------------------------------------------

    async def stats(self) -> Stats:
        """Sessions with a live socket, and how many of them wait (service-wide)."""
        ...

    async def publish(
        self,
        session_id: str,
        message: bytes,
        *,
        server: str = "",
        match_id: str = "",
        sender: str = "",
    ) -> Delivery:
        """Deliver ``message`` to the server holding ``session_id``.

        ``server``: where the session was held when its match formed (tried
        first, with no lookup). ``match_id`` and ``sender``: the message is
        for ``sender``'s match ``match_id``, and is ``gone`` if that match is
        over. A message may arrive late, never twice; one that arrives after
        its sender gave up on it is dropped by the receiving backend.
        """
        ...

    async def broadcast(self, message: bytes) -> None:
        """Deliver ``message`` to every other server (bans)."""
        ...

    async def run_bus(
        self,
        handler: BusHandler,
        *,
        on_gap: Callable[[], None] | None = None,
        views: Callable[[], Sequence[LocalView]] | None = None,
        task_status: trio.TaskStatus[None] = ...,
    ) -> None:
        """Feed bus messages for this server (and broadcasts) to ``handler``, until cancelled.

        ``on_gap`` is called whenever messages may have been lost or the
        shared state may have lost this server's records (a reconnect, a
        restarted Redis): the hub then calls ``sync``. ``views`` says what
        this server holds, at once, without waiting: after the shared state
        was lost the backend puts all of it back before any other call of
        this server may act on the shared state.
        """
        ...

    async def sync(self, views: Sequence[LocalView]) -> list[SharedView]:
        """Re-register these live sessions of this server; say what is shared for each.

        Refreshes their records' lifetimes, puts back a match the shared
        state lost (``ended`` if it is over instead), and gives a waiting
        session another chance to be matched (``formed``). The hub compares
        the answers with its own copies and repairs the difference (a lost
        bus message, an answer lost to a timeout).
        """
        ...

    async def sweep(self) -> list[Ended]:
        """Periodic housekeeping: expire cooldowns, blocks, windows; free dead servers.

        Returns the matches it ended because a dead server's session is gone:
        the caller tells each partner.
        """
        ...


SeatVerdict = Literal["hold", "used", "going", "over"]
"""What ``SharedSeats.claim_seat`` answers when it pairs nobody: the seat is held
for the grace; it (or the match's pairing) was taken already; the match still goes
on (a third person); the match is over (``seats.py`` has the rules)."""


@runtime_checkable
class SharedSeats(Protocol):
    """The seats of matches being resumed, shared by every server (the Redis backend).

    A backend without it (memory) leaves them to each server (``seats.Seats``).
    Each call is atomic, and may raise ``BackendUnavailable``.
    """

    async def claim_seat(
        self,
        match_id: str,
        seat: Literal["caller", "callee"],
        session_id: str,
        old: tuple[str, str],
        mode: str,
        *,
        grace_s: float,
        keep_s: float,
    ) -> SeatVerdict | Match:
        """``session_id`` takes back ``seat`` of ``match_id`` (whose caller and callee were
        ``old``); paired with the session holding the other seat, or keeping the match
        for it, on any live server: the new match, already in the shared state."""
        ...

    async def keep_seat(self, match_id: str, keeper: str, *, grace_s: float, keep_s: float) -> None:
        """``keeper``'s partner in ``match_id`` lost its socket: ``keeper`` keeps the match
        for it for ``grace_s``."""
        ...

    async def drop_seat(self, match_id: str, session_id: str, *, keep_s: float) -> None:
        """``session_id`` no longer holds its seat back (nor keeps the match): the match is
        over for its tickets, unless it was paired again."""
        ...
