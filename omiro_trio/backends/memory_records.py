"""The moderation records of the in-process backend: reports, accounts, the audit log.

A part of ``memory.MemoryBackend`` (its base class), kept apart because it
is a job of its own. Like the rest of that backend, every method finishes
without a checkpoint, so each is atomic. Time is unix time (``wall``): a
report, its status and the client's report and ban history are kept for
``report_retention_s``, the audit log for ``audit_retention_s``, a console
session until it has been idle for the ``idle_s`` it was opened with. What
expired acts as absent at once and is dropped by the next call or sweep;
everything timed is kept in the order it expires, so dropping it visits
nothing else.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence

from omiro_trio.backends.base import (
    ACTIVITY_KEPT_MINUTES,
    INVITE_ID_CHARS,
    INVITE_KEPT_EXPIRED_S,
    MAX_INVITES,
    POW_RATE_STEP_S,
    AuditEntry,
    Ban,
    ConsoleSession,
    Invite,
    InviteUse,
    Moderator,
    PowUse,
    Raid,
    ReportRecord,
    ReportStatus,
)

MAX_REPORT_BYTES = 8 * 1024 * 1024
"""The report store's bound (``ReportRecord.size_bytes`` summed); oldest dropped first."""

BANS_REMEMBERED = 50
"""The bans of one client kept in its history (the newest)."""

MAX_AUDIT_ENTRIES = 1_000_000
"""The audit log's bound in entries, whatever its retention (oldest dropped first)."""

_DECIDED = ("actioned", "dismissed")


class MemoryRecords:
    """Reports, their statuses, accounts, console sessions and the audit log, in memory."""

    _now: Callable[[], float]  # the backend's monotonic clock (durations)

    def __init__(
        self,
        *,
        wall: Callable[[], float],
        max_report_bytes: int,
        report_retention_s: float,
        audit_retention_s: float,
    ) -> None:
        self._wall = wall
        self._report_retention_s = report_retention_s
        self._audit_retention_s = audit_retention_s
        self._reports: deque[ReportRecord] = deque()  # oldest first
        self._report_by_id: dict[int, ReportRecord] = {}
        self._statuses: dict[int, ReportStatus] = {}
        self._open: dict[int, None] = {}  # open or claimed, in id order
        self._by_client: dict[str, deque[int]] = {}  # reported client -> report ids, oldest first
        self._report_bytes = 0
        self._max_report_bytes = max_report_bytes
        self._report_ids = 0
        self._ban_history: dict[str, deque[Ban]] = {}  # client -> bans set on it, oldest first
        self._ban_marks: deque[tuple[float, str]] = deque()  # (created_at, client), in order
        self._moderators: dict[str, Moderator] = {}
        self._console: dict[str, tuple[ConsoleSession, float]] = {}  # key -> session, expiry
        self._audit: deque[AuditEntry] = deque()  # oldest first
        self._audit_ids = 0
        self._activity: dict[int, Counter[str]] = {}  # unix minute -> counts
        self._invites: dict[str, Invite] = {}  # id -> invite, oldest first
        self._raid: Raid | None = None
        # Proof of work: used challenges (key -> expiry, in expiry order: one expiry_s
        # for all), new sessions per POW_RATE_STEP_S step, and adaptive's end.
        self._pow_used: dict[str, float] = {}
        self._pow_steps: dict[int, int] = {}
        self._pow_until = float("-inf")

    # -- reports ---------------------------------------------------------

    async def record_report(self, report: ReportRecord) -> int:
        self._expire_records(self._wall())
        self._report_ids += 1
        kept = dataclasses.replace(report, id=self._report_ids)
        self._reports.append(kept)
        self._report_by_id[kept.id] = kept
        self._statuses[kept.id] = ReportStatus()
        self._open[kept.id] = None
        self._by_client.setdefault(kept.reported_ip, deque()).append(kept.id)
        self._report_bytes += kept.size_bytes()
        while self._report_bytes > self._max_report_bytes and self._reports:
            self._drop_oldest_report()
        return kept.id

    def _drop_oldest_report(self) -> None:
        oldest = self._reports.popleft()
        self._report_bytes -= oldest.size_bytes()
        del self._report_by_id[oldest.id]
        self._statuses.pop(oldest.id, None)
        self._open.pop(oldest.id, None)
        ids = self._by_client.get(oldest.reported_ip)
        if ids is not None:
            while ids and ids[0] <= oldest.id:  # in id order: the oldest is at the head
                ids.popleft()
            if not ids:
                del self._by_client[oldest.reported_ip]

    def _kept(self, report: ReportRecord, now: float) -> bool:
        return report.at > now - self._report_retention_s

    async def reports(self, limit: int, before: int | None = None) -> list[ReportRecord]:
        now = self._wall()
        page: list[ReportRecord] = []
        for report in reversed(self._reports):
            if len(page) >= limit or not self._kept(report, now):
                break
            if before is None or report.id < before:
                page.append(report)
        return page

    async def report(self, report_id: int) -> ReportRecord | None:
        report = self._report_by_id.get(report_id)
        if report is None or not self._kept(report, self._wall()):
            return None
        return report

    async def report_statuses(self, ids: Sequence[int]) -> list[ReportStatus | None]:
        now = self._wall()
        out: list[ReportStatus | None] = []
        for report_id in ids:
            report = self._report_by_id.get(report_id)
            kept = report is not None and self._kept(report, now)
            out.append(self._statuses.get(report_id) if kept else None)
        return out

    async def swap_report_status(
        self, report_id: int, expected: ReportStatus, new: ReportStatus
    ) -> bool:
        if await self.report(report_id) is None or self._statuses.get(report_id) != expected:
            return False
        self._statuses[report_id] = new
        if new.state in _DECIDED:
            self._open.pop(report_id, None)
        else:
            self._open.setdefault(report_id, None)
        return True

    async def open_reports(self, limit: int) -> list[ReportRecord]:
        now = self._wall()
        out: list[ReportRecord] = []
        for report_id in self._open:
            if len(out) >= limit:
                break
            report = self._report_by_id[report_id]
            if self._kept(report, now):
                out.append(report)
        return out

    async def reports_of(self, client: str, limit: int) -> list[ReportRecord]:
        now = self._wall()
        out: list[ReportRecord] = []
        for report_id in reversed(self._by_client.get(client, ())):
            report = self._report_by_id.get(report_id)
            if len(out) >= limit or report is None or not self._kept(report, now):
                break
            out.append(report)
        return out

    async def count_reports_since(self, at: float) -> int:
        now = self._wall()
        count = 0
        for report in reversed(self._reports):
            if report.at < at or not self._kept(report, now):
                break
            count += 1
        return count

    # -- ban history -----------------------------------------------------

    def _note_ban(self, client: str, ban: Ban) -> None:
        """Remember that ``ban`` was set on ``client`` (called by ``add_ban``)."""
        history = self._ban_history.setdefault(client, deque(maxlen=BANS_REMEMBERED))
        history.append(ban)
        self._ban_marks.append((ban.created_at, client))

    async def ban_history(self, client: str, limit: int) -> list[Ban]:
        since = self._wall() - self._report_retention_s
        out: list[Ban] = []
        for ban in reversed(self._ban_history.get(client, ())):
            if len(out) >= limit or ban.created_at <= since:
                break
            out.append(ban)
        return out

    # -- accounts and console sessions ------------------------------------

    async def add_moderator(self, moderator: Moderator) -> bool:
        if moderator.name in self._moderators:
            return False
        self._moderators[moderator.name] = moderator
        return True

    async def moderator(self, name: str) -> Moderator | None:
        return self._moderators.get(name)

    async def moderators(self) -> list[Moderator]:
        return sorted(self._moderators.values(), key=lambda m: m.name)

    async def remove_moderator(self, name: str) -> bool:
        return self._moderators.pop(name, None) is not None

    async def open_console_session(self, key: str, session: ConsoleSession, idle_s: float) -> None:
        self._console[key] = (session, self._wall() + idle_s)

    async def console_session(self, key: str, idle_s: float) -> ConsoleSession | None:
        now = self._wall()
        kept = self._console.get(key)
        if kept is None:
            return None
        session, expires = kept
        if expires <= now:
            del self._console[key]
            return None
        self._console[key] = (session, now + idle_s)
        return session

    async def close_console_session(self, key: str) -> None:
        self._console.pop(key, None)

    # -- activity ----------------------------------------------------------

    async def add_activity(self, minute: int, counts: Mapping[str, int]) -> None:
        self._activity.setdefault(minute, Counter()).update(counts)
        for old in [m for m in self._activity if m <= minute - ACTIVITY_KEPT_MINUTES]:
            del self._activity[old]

    async def activity(self, since_minute: int) -> dict[str, int]:
        total: Counter[str] = Counter()
        for minute, counts in self._activity.items():
            if minute >= since_minute:
                total.update(counts)
        return dict(total)

    # -- the entry gate ------------------------------------------------------

    def _drop_old_invites(self, now: float) -> None:
        old = [i for i, v in self._invites.items() if v.expires_at + INVITE_KEPT_EXPIRED_S <= now]
        for invite_id in old:
            del self._invites[invite_id]

    async def add_invite(self, invite: Invite) -> bool:
        now = self._wall()
        self._drop_old_invites(now)
        if sum(1 for v in self._invites.values() if v.expires_at > now) >= MAX_INVITES:
            return False
        self._invites[invite.id] = invite
        return True

    async def invites(self) -> list[Invite]:
        self._drop_old_invites(self._wall())
        return sorted(self._invites.values(), key=lambda v: v.created_at, reverse=True)

    async def revoke_invite(self, invite_id: str) -> bool:
        return self._invites.pop(invite_id, None) is not None

    async def use_invite(self, key: str) -> InviteUse:
        now = self._wall()
        invite = self._invites.get(key[:INVITE_ID_CHARS])
        if invite is None or invite.key != key:
            return "unknown"
        if invite.expires_at + INVITE_KEPT_EXPIRED_S <= now:
            del self._invites[invite.id]
            return "unknown"
        if invite.expires_at <= now:
            return "expired"
        if invite.left <= 0:
            return "used_up"
        self._invites[invite.id] = dataclasses.replace(invite, left=invite.left - 1)
        return "admitted"

    async def raid(self) -> Raid | None:
        return self._raid

    async def set_raid(self, raid: Raid | None) -> None:
        self._raid = raid

    async def use_pow_solution(self, key: str, expires_at: float, limit: int) -> PowUse:
        used, now = self._pow_used, self._wall()
        # Oldest first (one expiry for all, give or take a changed setting): the
        # expired ones are at the front.
        while used:
            oldest = next(iter(used))
            if used[oldest] > now:
                break
            del used[oldest]
        if key in used:
            return "used"
        if len(used) >= limit:
            return "full"
        used[key] = expires_at
        return "new"

    async def note_new_sessions(self, added: int, per_minute: int, quiet_s: float) -> bool:
        now = self._now()
        step = int(now // POW_RATE_STEP_S)
        steps = self._pow_steps
        if added:
            steps[step] = steps.get(step, 0) + added
        first = step - 60 // POW_RATE_STEP_S + 1
        for old in [s for s in steps if s < first]:
            del steps[old]
        if sum(steps.values()) > per_minute:
            self._pow_until = now + quiet_s
        return now < self._pow_until

    # -- the audit log ---------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> int:
        self._expire_records(self._wall())
        self._audit_ids += 1
        self._audit.append(dataclasses.replace(entry, id=self._audit_ids))
        while len(self._audit) > MAX_AUDIT_ENTRIES:
            self._audit.popleft()
        return self._audit_ids

    async def audit(self, limit: int, before: int | None = None) -> list[AuditEntry]:
        since = self._wall() - self._audit_retention_s
        page: list[AuditEntry] = []
        for entry in reversed(self._audit):
            if len(page) >= limit or entry.at <= since:
                break
            if before is None or entry.id < before:
                page.append(entry)
        return page

    # -- expiry ----------------------------------------------------------

    def _expire_records(self, now: float) -> None:
        """Drop what outlived its retention (each kept in the order it expires)."""
        while self._reports and not self._kept(self._reports[0], now):
            self._drop_oldest_report()
        since = now - self._report_retention_s
        marks = self._ban_marks
        while marks and marks[0][0] <= since:
            _, client = marks.popleft()
            history = self._ban_history.get(client)
            while history and history[0].created_at <= since:
                history.popleft()
            if history is not None and not history:
                del self._ban_history[client]
        audit_since = now - self._audit_retention_s
        while self._audit and self._audit[0].at <= audit_since:
            self._audit.popleft()
        expired = [key for key, (_, expires) in self._console.items() if expires <= now]
        for key in expired:
            del self._console[key]

    def held_records(self) -> int:
        """Records kept (reports, bans remembered, audit entries, console sessions), for tests."""
        bans = sum(len(h) for h in self._ban_history.values())
        return len(self._reports) + bans + len(self._audit) + len(self._console)
