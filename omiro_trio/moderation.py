"""The moderators' desk: the queue, a report's evidence, actions, accounts, the audit log.

What the console, the admin API and the CLI do goes through here, so each
action is checked against the actor's role (``triage.py`` has the rules)
and written to the audit log the same way whoever asks. Everything is kept
in the backend, so any server answers for the whole service, and a ban
from any of them is put in force everywhere (``bus.put_ban_in_force``).

A report's status changes by compare-and-set (``Backend.swap_report_status``):
two moderators acting on one report at once cannot both succeed; the second
hears who was first.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import msgspec
import trio

from omiro_trio import accounts
from omiro_trio.addresses import account_target
from omiro_trio.backends.base import (
    AuditEntry,
    Backend,
    Ban,
    Moderator,
    ReportRecord,
    ReportStatus,
    Role,
)
from omiro_trio.errors import BackendUnavailable
from omiro_trio.metrics import Metrics
from omiro_trio.triage import (
    Actor,
    Change,
    QueueEntry,
    Refused,
    change_status,
    may_ban,
    may_lift,
    order_queue,
)

log = logging.getLogger(__name__)

QUEUE_READ = 500
"""Open reports read to build the queue (the oldest first): its bound."""
HISTORY_SHOWN = 20
"""Earlier reports and bans of a client shown with a report."""
MAX_NOTE_LENGTH = 500
SWAP_ATTEMPTS = 3
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")  # an account name (no backtracking)
HOUR_S = 3600.0
ACTIVITY_EVERY_S = 10.0
"""How often each server adds its matches and call outcomes to the shared counts."""
LIVE_MINUTES = 5
"""The live view's matches per minute and call success rate are over this many minutes."""


class NoSuchReport(LookupError):
    """No report of that id is kept (never was, or expired)."""


@dataclass(frozen=True, slots=True)
class ModerationPolicy:
    """Config ``[moderation]``: the longest ban a moderator sets, how long a claim holds."""

    moderator_max_ban_s: int = 7 * 86400
    claim_s: float = 900.0


@dataclass(frozen=True, slots=True)
class Evidence:
    """One report and what a moderator weighs with it."""

    report: ReportRecord
    status: ReportStatus
    earlier_reports: list[ReportRecord]  # other reports of the same client, newest first
    bans: list[Ban]  # bans set on that client within the retention, newest first
    ban_now: Ban | None  # the ban in force on it, if any
    # The same for the reported account, when the report names one.
    account_bans: list[Ban] = dataclasses.field(default_factory=list)
    account_ban_now: Ban | None = None


@dataclass(frozen=True, slots=True)
class Live:
    """What the console's live view shows, service-wide."""

    online: int
    waiting: int
    reports_last_hour: int
    open_reports: int
    active_bans: int
    matches_per_minute: float  # over the last LIVE_MINUTES minutes
    calls: int  # call outcomes the pages reported over those minutes
    call_success: float | None  # the share of them that connected (None: no calls)


def check_note(note: str) -> str:
    """A moderator's note, trimmed; raises ``ValueError`` past ``MAX_NOTE_LENGTH``."""
    if len(note) > MAX_NOTE_LENGTH:
        raise ValueError(f"note is longer than {MAX_NOTE_LENGTH}")
    return note.strip()


class ModerationDesk:
    """The moderators' work on one backend.

    Args:
        backend: where reports, bans, accounts and the audit log are kept.
        policy: role limits and claims.
        put_ban: puts a ban in force service-wide and closes the sockets it
            covers (``Hub.ban``); returns how many were closed here.
        wall: unix time.
    """

    def __init__(
        self,
        backend: Backend,
        policy: ModerationPolicy,
        *,
        put_ban: Callable[[Ban], Awaitable[int]],
        wall: Callable[[], float],
    ) -> None:
        self.policy = policy
        self._backend = backend
        self._put_ban = put_ban
        self._wall = wall

    # -- reading ---------------------------------------------------------

    async def queue(self) -> list[QueueEntry]:
        """The open reports, most urgent first (``triage.order_queue``)."""
        reports = await self._backend.open_reports(QUEUE_READ)
        statuses = await self._backend.report_statuses([r.id for r in reports])
        kept = [(r, s) for r, s in zip(reports, statuses, strict=True) if s is not None]
        return order_queue(kept)

    async def evidence(self, report_id: int) -> Evidence:
        """A report with its status and its client's history.

        Raises:
            NoSuchReport: it is not kept.
        """
        backend = self._backend
        report = await backend.report(report_id)
        status = (await backend.report_statuses([report_id]))[0]
        if report is None or status is None:
            raise NoSuchReport(report_id)
        client = report.reported_ip
        earlier = [] if not client else await backend.reports_of(client, HISTORY_SHOWN + 1)
        bans = [] if not client else await backend.ban_history(client, HISTORY_SHOWN)
        ban_now = None if not client else await backend.ban_for(client)
        account = report.reported_account
        account_bans = (
            await backend.ban_history(account_target(account), HISTORY_SHOWN) if account else []
        )
        account_ban_now = await backend.account_ban(account) if account else None
        return Evidence(
            report,
            status,
            [r for r in earlier if r.id != report_id][:HISTORY_SHOWN],
            bans,
            ban_now,
            account_bans,
            account_ban_now,
        )

    async def live(self) -> Live:
        backend = self._backend
        stats = await backend.stats()
        now = self._wall()
        recent = await backend.activity(int(now // 60) - LIVE_MINUTES + 1)
        connected, failed = recent.get("calls_connected", 0), recent.get("calls_failed", 0)
        calls = connected + failed
        return Live(
            online=stats.online,
            waiting=stats.waiting,
            reports_last_hour=await backend.count_reports_since(now - HOUR_S),
            open_reports=len(await backend.open_reports(QUEUE_READ)),
            active_bans=len(await backend.bans()),
            matches_per_minute=round(recent.get("matches", 0) / LIVE_MINUTES, 1),
            calls=calls,
            call_success=round(connected / calls, 3) if calls else None,
        )

    async def bans(self, search: str = "") -> list[Ban]:
        """Bans in force, newest first; ``search`` keeps those whose target, reason or
        setter contains it (case-insensitive)."""
        bans = await self._backend.bans()
        needle = search.strip().lower()
        if not needle:
            return bans
        return [b for b in bans if needle in f"{b.target}\n{b.reason}\n{b.by}".lower()]

    # -- acting on reports ---------------------------------------------------

    async def _change(
        self, actor: Actor, report_id: int, change: Change, *, action: str = "", note: str = ""
    ) -> tuple[ReportStatus, ReportStatus]:
        """Change a report's status; returns (before, after).

        Raises:
            NoSuchReport: it is not kept.
            Refused: the rules do not allow it (``conflict``: someone else acted first).
        """
        for _ in range(SWAP_ATTEMPTS):
            status = (await self._backend.report_statuses([report_id]))[0]
            if status is None:
                raise NoSuchReport(report_id)
            new = change_status(
                status,
                change,
                actor,
                self._wall(),
                claim_s=self.policy.claim_s,
                action=action,
                note=note,
            )
            if await self._backend.swap_report_status(report_id, status, new):
                return status, new
        raise Refused("the report changed while you acted on it: reload it", conflict=True)

    async def claim(self, actor: Actor, report_id: int) -> ReportStatus:
        _, status = await self._change(actor, report_id, "claim")
        await self._audit(actor, "claim", report_id=report_id)
        return status

    async def release(self, actor: Actor, report_id: int) -> ReportStatus:
        _, status = await self._change(actor, report_id, "release")
        await self._audit(actor, "release", report_id=report_id)
        return status

    async def dismiss(self, actor: Actor, report_id: int, note: str) -> ReportStatus:
        note = check_note(note)
        _, status = await self._change(actor, report_id, "dismiss", note=note)
        await self._audit(actor, "dismiss", report_id=report_id, note=note)
        return status

    async def ban_from_report(
        self,
        actor: Actor,
        report_id: int,
        duration_s: int | None,
        note: str,
        *,
        account: bool = False,
    ) -> tuple[Ban, ReportStatus]:
        """Ban the reported client (or with ``account``, the reported account) for
        ``duration_s`` (None: permanent) and mark the report actioned, in that
        order of checks: role, then the report's status.

        Raises:
            NoSuchReport, Refused; BackendUnavailable (then the report is as it was).
        """
        note = check_note(note)
        self._check_ban(actor, duration_s)
        report = await self._backend.report(report_id)
        if report is None:
            raise NoSuchReport(report_id)
        if account:
            if not report.reported_account:
                raise Refused("the report names no account: ban the address")
            target = account_target(report.reported_account)
        elif not report.reported_ip:
            raise Refused("the reported client is not known: ban its address by hand")
        else:
            target = report.reported_ip
        action = "ban " + ("permanent" if duration_s is None else f"{duration_s} s")
        if account:
            action += " (account)"
        before, status = await self._change(actor, report_id, "action", action=action, note=note)
        try:
            ban = await self._ban(actor, target, duration_s, note, report_id)
        except BaseException:
            # Put the report back as it was, so someone can act on it again.
            await self._backend.swap_report_status(report_id, status, before)
            raise
        return ban, status

    async def lift_from_report(self, actor: Actor, report_id: int, note: str) -> ReportStatus:
        """Lift the ban in force on the reported client (an automatic ban, usually) and
        dismiss the report.

        Raises:
            NoSuchReport, Refused (no ban, or one the actor may not lift).
        """
        note = check_note(note)
        report = await self._backend.report(report_id)
        if report is None:
            raise NoSuchReport(report_id)
        ban = await self._backend.ban_for(report.reported_ip) if report.reported_ip else None
        if ban is None and report.reported_account:
            ban = await self._backend.account_ban(report.reported_account)
        if ban is None:
            raise Refused("no ban is in force on the reported client", conflict=True)
        if not may_lift(actor, ban, self.policy.moderator_max_ban_s):
            raise Refused("only an admin can lift this ban")
        _, status = await self._change(
            actor, report_id, "dismiss", action=f"lifted the ban of {ban.target}", note=note
        )
        await self._backend.remove_ban(ban.target)
        await self._audit(actor, "lift_ban", ban.target, report_id, note)
        return status

    # -- bans ------------------------------------------------------------

    def _check_ban(self, actor: Actor, duration_s: int | None) -> None:
        if duration_s is not None and duration_s <= 0:
            raise ValueError("duration_s must be a positive number or null")
        if not may_ban(actor, duration_s, self.policy.moderator_max_ban_s):
            limit = self.policy.moderator_max_ban_s
            raise Refused(f"a moderator bans for at most {limit} s, never permanently")

    async def ban(self, actor: Actor, target: str, duration_s: int | None, note: str) -> Ban:
        """Ban ``target`` (canonical address or network, or ``account:KEY``), as ``actor`` may.

        Raises:
            ValueError: a bad duration or note. Refused: over the actor's limit.
        """
        note = check_note(note)
        self._check_ban(actor, duration_s)
        return await self._ban(actor, target, duration_s, note, 0)

    async def _ban(
        self, actor: Actor, target: str, duration_s: int | None, note: str, report_id: int
    ) -> Ban:
        now = self._wall()
        until = None if duration_s is None else now + duration_s
        ban = Ban(target=target, reason=note, until=until, created_at=now, by=actor.name)
        closed = await self._put_ban(ban)
        log.info("%s banned %s (%d sockets closed here)", actor.name, target, closed)
        length = "permanent" if duration_s is None else f"{duration_s} s"
        await self._audit(actor, "ban", target, report_id, f"{length}; {note}" if note else length)
        return ban

    async def lift(self, actor: Actor, target: str, note: str = "") -> bool:
        """Lift the ban of exactly ``target``; False if there is none.

        Raises:
            Refused: the actor may not lift that ban.
        """
        note = check_note(note)
        ban = next((b for b in await self._backend.bans() if b.target == target), None)
        if ban is None:
            return False
        if not may_lift(actor, ban, self.policy.moderator_max_ban_s):
            raise Refused("only an admin can lift this ban")
        if not await self._backend.remove_ban(target):
            return False
        log.info("%s lifted the ban of %s", actor.name, target)
        await self._audit(actor, "lift_ban", target, 0, note)
        return True

    # -- accounts --------------------------------------------------------

    async def add_moderator(self, actor: Actor, name: str, role: Role) -> str:
        """Make an account; return its password (shown once, kept only as a hash).

        Raises:
            ValueError: a bad name. Refused: not an admin, or the name is taken.
        """
        _admin_only(actor)
        if NAME_RE.fullmatch(name) is None:
            raise ValueError(
                "name: 1-32 of a-z, 0-9, '_', '.', '-', starting with a letter or digit"
            )
        password = accounts.new_password()
        hashed = await accounts.hash_password(password)
        if not await self._backend.add_moderator(Moderator(name, role, hashed, self._wall())):
            raise Refused(f"there is already an account named {name}", conflict=True)
        await self._audit(actor, "add_moderator", name, note=role)
        return password

    async def remove_moderator(self, actor: Actor, name: str) -> bool:
        _admin_only(actor)
        if not await self._backend.remove_moderator(name):
            return False
        await self._audit(actor, "remove_moderator", name)
        return True

    async def moderators(self, actor: Actor) -> list[Moderator]:
        _admin_only(actor)
        return await self._backend.moderators()

    # -- the audit log ---------------------------------------------------

    async def audit(self, actor: Actor, limit: int, before: int | None) -> list[AuditEntry]:
        _admin_only(actor)
        return await self._backend.audit(limit, before)

    async def _audit(
        self,
        actor: Actor,
        action: str,
        target: str = "",
        report_id: int = 0,
        note: str = "",
    ) -> None:
        entry = AuditEntry(self._wall(), actor.name, action, target, report_id, note)
        await self._backend.append_audit(entry)


def _admin_only(actor: Actor) -> None:
    if not actor.is_admin:
        raise Refused("only an admin can do this")


# -- activity ------------------------------------------------------------------


def _activity_now(metrics: Metrics) -> dict[str, float]:
    """This server's counts so far: matches formed, call outcomes the pages reported."""
    value = metrics.registry.get_sample_value

    def sample(name: str, **labels: str) -> float:
        return value(name, labels) or 0.0

    return {
        "matches": sample("omiro_matches_total"),
        "calls_connected": sample("omiro_calls_total", outcome="connected", path="direct")
        + sample("omiro_calls_total", outcome="connected", path="relay"),
        "calls_failed": sample("omiro_calls_total", outcome="failed", path="none"),
    }


async def run_activity(
    backend: Backend,
    metrics: Metrics,
    wall: Callable[[], float],
    interval_s: float = ACTIVITY_EVERY_S,
) -> None:
    """Every ``interval_s``, add what this server counted since to the shared per-minute
    counts (the live view's matches per minute and call success rate), until cancelled.

    Off the chat's path: one backend call per interval at most. What could not be
    added (the backend away) is added with the next interval's.
    """
    added = _activity_now(metrics)
    while True:
        await trio.sleep(interval_s)
        now = _activity_now(metrics)
        delta = {name: int(now[name] - added[name]) for name in now}
        delta = {name: count for name, count in delta.items() if count > 0}
        if not delta:
            continue
        try:
            await backend.add_activity(int(wall() // 60), delta)
        except BackendUnavailable:
            continue  # added next time
        except Exception:
            metrics.background_failures.labels("activity").inc()
            log.exception("could not add this server's activity counts")
        added = now


# -- exports -----------------------------------------------------------------

AUDIT_FIELDS = ("id", "at", "actor", "action", "target", "report_id", "note")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def audit_jsonl(entries: Iterable[AuditEntry]) -> bytes:
    """The entries as JSON Lines: one object per line, fields ``AUDIT_FIELDS``."""
    encoder = msgspec.json.Encoder()
    return b"".join(
        encoder.encode({f: getattr(e, f) for f in AUDIT_FIELDS}) + b"\n" for e in entries
    )


def audit_csv(entries: Iterable[AuditEntry]) -> bytes:
    """The entries as CSV with a header row; a cell a spreadsheet would take for a
    formula starts with ``'`` (notes are typed by people)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(AUDIT_FIELDS)
    for entry in entries:
        row = []
        for field in AUDIT_FIELDS:
            value = getattr(entry, field)
            text = str(value)
            if isinstance(value, str) and text.startswith(_FORMULA_START):
                text = "'" + text
            row.append(text)
        writer.writerow(row)
    return out.getvalue().encode("utf-8")
