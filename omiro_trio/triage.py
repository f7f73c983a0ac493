"""The moderators' rules: how urgent a report is, what happens to its status, who may do what.

Pure: no I/O, time passed in. ``moderation.py`` performs what these decide.

Severity: a report's reason is free text, but the page sends one word
(docs/protocol.md, "Report reasons"); that word, or the first word of the
text, makes its category. The queue shows reports of someone who may be a
minor first, then nudity, harassment, spam and the rest; within one
category, reports of a client more distinct people reported come first,
then the oldest.

Status (``ReportStatus``), as a table; anything else is refused:

    open      --claim-->    claimed (by A)
    claimed   --claim-->    claimed (by B)   only by A, or once A's claim lapsed
    claimed   --release-->  open             only by A (or an admin)
    open, claimed --action/dismiss--> actioned / dismissed
                                     (not while another's claim is fresh, unless admin)
    actioned, dismissed: final.

Roles: a *moderator* works the queue and bans for at most the configured
longest ban (never permanently), and lifts bans no longer than that
(automatic ones included). An *admin* (an admin account, or the bearer
token) does everything: any ban, accounts, the audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Literal

from omiro_trio.backends.base import Ban, ReportRecord, ReportStatus, Role


class Category(IntEnum):
    """A report's category; the lower, the more urgent."""

    MINOR = 0
    NUDITY = 1
    HARASSMENT = 2
    SPAM = 3
    OTHER = 4

    @property
    def label(self) -> str:
        return self.name.lower()


_WORDS = {c.label: c for c in Category}


def category(reason: str) -> Category:
    """The category a report's reason names (its first word); ``OTHER`` for any other text."""
    first = reason.strip().split(maxsplit=1)[:1]
    return _WORDS.get(first[0].lower().rstrip(".,:;!"), Category.OTHER) if first else Category.OTHER


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One report in the queue, with how many distinct clients reported its client."""

    report: ReportRecord
    status: ReportStatus
    reporters: int


def order_queue(
    reports: Sequence[tuple[ReportRecord, ReportStatus]],
) -> list[QueueEntry]:
    """The open reports in the order the queue shows them (see the module's header).

    ``reporters`` counts the distinct reporting clients among ``reports``
    against the same reported client.
    """
    reporters: dict[str, set[str]] = {}
    for report, _ in reports:
        reporters.setdefault(report.reported_ip, set()).add(report.reporter_ip)
    entries = [
        QueueEntry(report, status, len(reporters[report.reported_ip])) for report, status in reports
    ]
    entries.sort(key=lambda e: (category(e.report.reason), -e.reporters, e.report.id))
    return entries


Change = Literal["claim", "release", "action", "dismiss"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: a moderator account's name and role, or ``admin`` (the bearer token)."""

    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


TOKEN_ACTOR = Actor("admin", "admin")
"""The bearer token acts as this admin."""


class Refused(Exception):
    """A change the rules do not allow; ``conflict``: because of someone else's doing."""

    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


def change_status(
    status: ReportStatus,
    change: Change,
    actor: Actor,
    now: float,
    *,
    claim_s: float,
    action: str = "",
    note: str = "",
) -> ReportStatus:
    """The status after ``actor`` makes ``change`` at ``now`` (unix time).

    Raises:
        Refused: the table in the module's header does not allow it.
    """
    if status.state in ("actioned", "dismissed"):
        raise Refused(f"the report was already {status.state} by {status.by}", conflict=True)
    claimed_by_other = (
        status.state == "claimed" and status.by != actor.name and now < status.at + claim_s
    )
    if change == "claim":
        if claimed_by_other:
            raise Refused(f"{status.by} is working on this report", conflict=True)
        return replace(status, state="claimed", by=actor.name, at=now)
    if change == "release":
        if status.state != "claimed" or (status.by != actor.name and not actor.is_admin):
            raise Refused("only whoever claimed the report can release it", conflict=True)
        return replace(status, state="open", by="", at=now)
    if claimed_by_other and not actor.is_admin:
        raise Refused(f"{status.by} is working on this report", conflict=True)
    state: Literal["actioned", "dismissed"] = "actioned" if change == "action" else "dismissed"
    return replace(status, state=state, by=actor.name, at=now, action=action, note=note)


def may_ban(actor: Actor, duration_s: int | None, max_ban_s: int) -> bool:
    """Whether ``actor`` may set a ban of ``duration_s`` seconds (None: permanent)."""
    if actor.is_admin:
        return True
    return duration_s is not None and duration_s <= max_ban_s


def may_lift(actor: Actor, ban: Ban, max_ban_s: int) -> bool:
    """Whether ``actor`` may lift ``ban``: a moderator only bans no longer than their own limit."""
    if actor.is_admin:
        return True
    return ban.until is not None and ban.until - ban.created_at <= max_ban_s + 1
