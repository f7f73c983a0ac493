"""The seats of matches being resumed with their tickets, on this server.

A match ticket (``tokens.TicketSigner``) names one seat of one match: the
caller's or the callee's. A client that lost its server (a restart, a
drain, a network that came back) opens a new socket and claims its seat with
``resume``; when both seats of a match are claimed within ``grace_s`` of the
first, the two are paired again (``hub.py`` forms the match). This module
is the bookkeeping, pure and synchronous: no I/O, time passed in.

Invariants:

* A seat is claimed at most once: a second claim of a claimed seat, or any
  claim of a match already paired again, is refused (``ticket_used``).
* A match this server saw end (``ended``), or whose first claimant gave up
  (its grace passed, it left, its socket closed), is over: a claim for it is
  refused (``match_over``).
* At most ``MAX_RECORDS`` records are kept, oldest dropped first, each for
  at most ``keep_s`` (a ticket's life): memory is bounded whatever clients
  claim. Pending claims are bounded by the sockets that hold them (one each).
* A freshly started process knows nothing: the first claim of a seat it is
  shown is taken (tickets expire, and a pair needs both seats within the
  grace).

With a shared backend (``backends.base.SharedSeats``: Redis) the hub asks
the backend instead, which keeps the same rules for every server at once
(``omiro.lua``'s ``seat``); these records then only follow this server's
own sockets.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

from omiro_trio.codes import ErrorCode
from omiro_trio.tokens import Ticket

MAX_RECORDS: Final = 10_000


@dataclass(frozen=True, slots=True)
class Hold:
    """The seat is taken; the partner's is empty: wait ``grace_s``."""

    grace_s: float


@dataclass(frozen=True, slots=True)
class Pair:
    """The partner's seat is held by session ``partner``: pair the two."""

    partner: str


@dataclass(frozen=True, slots=True)
class Refuse:
    code: ErrorCode
    text: str


Verdict = Hold | Pair | Refuse

_USED: Final = Refuse(ErrorCode.TICKET_USED, "this ticket's seat was taken back already")
_OVER: Final = Refuse(ErrorCode.MATCH_OVER, "that match is over: your partner left or moved on")


@dataclass(slots=True)
class _Record:
    holders: dict[str, str] = field(default_factory=dict)  # seat -> session holding it
    paired: bool = False
    over: bool = False
    forget_at: float = 0.0


class Seats:
    """Claims of match seats on this server (see the module's docstring).

    Args:
        grace_s: how long a claimed seat waits for its partner's.
        keep_s: how long a record is kept (the tickets' life).
    """

    def __init__(self, grace_s: float, keep_s: float) -> None:
        self.grace_s = grace_s
        self._keep_s = keep_s
        self._records: OrderedDict[str, _Record] = OrderedDict()

    @property
    def keep_s(self) -> float:
        """How long a record is kept (the tickets' life)."""
        return self._keep_s

    def __len__(self) -> int:
        return len(self._records)

    def claim(self, ticket: Ticket, session_id: str, now: float) -> Verdict:
        """``session_id`` claims the seat ``ticket`` names."""
        self._prune(now)
        record = self._records.get(ticket.match_id)
        if record is None:
            record = self._add(ticket.match_id, now + self.grace_s)
            record.holders[ticket.seat] = session_id
            return Hold(self.grace_s)
        if record.over:
            return _OVER
        if record.paired or ticket.seat in record.holders:
            return _USED
        (partner,) = record.holders.values()
        record.holders[ticket.seat] = session_id
        record.paired = True
        self._renew(ticket.match_id, record, now + self._keep_s)
        return Pair(partner)

    def claim_kept(self, ticket: Ticket, session_id: str, partner: str, now: float) -> Verdict:
        """``session_id`` claims its seat in a match ``partner`` kept for it (the partner's
        socket never ended): paired at once, unless the seat was claimed already."""
        self._prune(now)
        record = self._records.get(ticket.match_id)
        if record is not None and (record.over or record.paired or record.holders):
            return _OVER if record.over else _USED
        record = self._add(ticket.match_id, now + self._keep_s)
        other = "callee" if ticket.seat == "caller" else "caller"
        record.holders.update({ticket.seat: session_id, other: partner})
        record.paired = True
        return Pair(partner)

    def unpair(self, match_id: str, session_id: str) -> None:
        """The pairing of ``session_id`` could not be made: its seat is free again."""
        record = self._records.get(match_id)
        if record is None:
            return
        record.paired = False
        for seat, holder in list(record.holders.items()):
            if holder == session_id:
                del record.holders[seat]

    def give_up(self, match_id: str, session_id: str, now: float) -> None:
        """``session_id`` no longer waits for its partner: the match is over."""
        record = self._records.get(match_id)
        if record is None or record.paired or session_id not in record.holders.values():
            return
        record.holders.clear()
        record.over = True
        self._renew(match_id, record, now + self._keep_s)

    def ended(self, match_id: str, now: float) -> None:
        """A match ended on this server: its tickets no longer resume anything."""
        record = self._records.get(match_id)
        if record is None:
            record = self._add(match_id, now + self._keep_s)
        record.over = True

    def _add(self, match_id: str, forget_at: float) -> _Record:
        record = _Record(forget_at=forget_at)
        self._records[match_id] = record
        while len(self._records) > MAX_RECORDS:
            self._records.popitem(last=False)
        return record

    def _renew(self, match_id: str, record: _Record, forget_at: float) -> None:
        record.forget_at = max(record.forget_at, forget_at)
        self._records.move_to_end(match_id)

    def _prune(self, now: float) -> None:
        """Forget records whose time is up, from the oldest (each visited once)."""
        records = self._records
        while records:
            match_id, record = next(iter(records.items()))
            if record.forget_at > now:
                return
            if record.holders and not record.paired and not record.over:
                # A pending claim whose grace passed: its holder is told by its own timer;
                # keep it as over for a while so the late partner hears "match over".
                record.holders.clear()
                record.over = True
                self._renew(match_id, record, now + self._keep_s)
                continue
            del records[match_id]
