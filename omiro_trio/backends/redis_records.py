"""The moderation records of the Redis backend: reports, accounts, the audit log.

A part of ``redis.RedisBackend`` (its base class), kept apart because it is
a job of its own: every call is one call of ``records.lua`` (whose header
lists the keys), run shielded under the backend's deadline like every
other Redis call. Records are msgspec JSON, so a status read and written
back compares equal byte for byte (``swap_report_status``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar

import coredis
import msgspec

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

MAX_REPORT_BYTES = 8 * 1024 * 1024  # the report store's bound, as the memory backend's

_SCRIPT = resources.files("omiro_trio.backends").joinpath("records.lua").read_text()
_T = TypeVar("_T")
_DECIDED = ("actioned", "dismissed")
_encode = msgspec.json.Encoder().encode


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(raw: Sequence[Any], kind: type[_T]) -> list[tuple[int, _T]]:
    return [
        (int(ident), msgspec.json.decode(encoded, type=kind))
        for ident, encoded in zip(raw[::2], raw[1::2], strict=True)
    ]


class RedisRecords:
    """Reports, their statuses, accounts, console sessions and the audit log, in Redis."""

    _prefix: str
    _offset: Callable[[], float]

    def __init__(
        self, client: coredis.Redis[bytes], *, report_retention_s: float, audit_retention_s: float
    ) -> None:
        self._records_script = client.register_script(_SCRIPT)
        self._report_retention_s = report_retention_s
        self._audit_retention_s = audit_retention_s

    async def _guard(self, call: Callable[[], Awaitable[_T]]) -> _T:
        raise NotImplementedError  # the backend's own

    async def _records(self, op: str, *args: str | int | float | bytes) -> Any:
        argv: list[str | bytes] = [
            op,
            self._prefix,
            repr(self._offset()),
            repr(self._report_retention_s),
            repr(self._audit_retention_s),
        ]
        argv.extend(a if isinstance(a, bytes) else str(a) for a in args)
        return await self._guard(lambda: self._records_script(args=argv))

    # -- reports ---------------------------------------------------------

    async def record_report(self, report: ReportRecord) -> int:
        return int(
            await self._records(
                "report",
                _encode(report),
                report.size_bytes(),
                MAX_REPORT_BYTES,
                repr(report.at),
                report.reported_ip,
                _encode(ReportStatus()),
            )
        )

    async def reports(self, limit: int, before: int | None = None) -> list[ReportRecord]:
        raw = await self._records("reports", limit, "" if before is None else before)
        return [dataclasses.replace(r, id=i) for i, r in _pairs(raw, ReportRecord)]

    async def report(self, report_id: int) -> ReportRecord | None:
        raw = await self._records("get", report_id)
        if not raw:
            return None
        return dataclasses.replace(msgspec.json.decode(raw, type=ReportRecord), id=report_id)

    async def report_statuses(self, ids: Sequence[int]) -> list[ReportStatus | None]:
        if not ids:
            return []
        raw = await self._records("statuses", *ids)
        return [msgspec.json.decode(r, type=ReportStatus) if r else None for r in raw]

    async def swap_report_status(
        self, report_id: int, expected: ReportStatus, new: ReportStatus
    ) -> bool:
        decided = "1" if new.state in _DECIDED else "0"
        swapped = await self._records("swap", report_id, _encode(expected), _encode(new), decided)
        return bool(int(swapped))

    async def open_reports(self, limit: int) -> list[ReportRecord]:
        raw = await self._records("open", limit)
        return [dataclasses.replace(r, id=i) for i, r in _pairs(raw, ReportRecord)]

    async def reports_of(self, client: str, limit: int) -> list[ReportRecord]:
        raw = await self._records("of", client, limit)
        return [dataclasses.replace(r, id=i) for i, r in _pairs(raw, ReportRecord)]

    async def count_reports_since(self, at: float) -> int:
        return int(await self._records("since", repr(at)))

    async def ban_history(self, client: str, limit: int) -> list[Ban]:
        raw = await self._records("ban_history", client, limit)
        return [msgspec.json.decode(item, type=Ban) for item in raw]

    # -- accounts and console sessions ------------------------------------

    async def add_moderator(self, moderator: Moderator) -> bool:
        return bool(int(await self._records("add_mod", moderator.name, _encode(moderator))))

    async def moderator(self, name: str) -> Moderator | None:
        raw = await self._records("mod", name)
        return msgspec.json.decode(raw, type=Moderator) if raw else None

    async def moderators(self) -> list[Moderator]:
        raw = await self._records("mods")
        return sorted((msgspec.json.decode(r, type=Moderator) for r in raw), key=lambda m: m.name)

    async def remove_moderator(self, name: str) -> bool:
        return bool(int(await self._records("remove_mod", name)))

    async def open_console_session(self, key: str, session: ConsoleSession, idle_s: float) -> None:
        await self._records("open_session", key, _encode(session), repr(idle_s))

    async def console_session(self, key: str, idle_s: float) -> ConsoleSession | None:
        raw = await self._records("session", key, repr(idle_s))
        return msgspec.json.decode(raw, type=ConsoleSession) if raw else None

    async def close_console_session(self, key: str) -> None:
        await self._records("close_session", key)

    # -- activity ----------------------------------------------------------

    async def add_activity(self, minute: int, counts: Mapping[str, int]) -> None:
        args: list[str | int] = [minute, ACTIVITY_KEPT_MINUTES * 60]
        for name, count in counts.items():
            args += [name, count]
        await self._records("act_add", *args)

    async def activity(self, since_minute: int) -> dict[str, int]:
        raw = await self._records("act", since_minute, ACTIVITY_KEPT_MINUTES)
        total: dict[str, int] = {}
        for name, count in zip(raw[::2], raw[1::2], strict=True):
            total[_text(name)] = total.get(_text(name), 0) + int(count)
        return total

    # -- the entry gate ------------------------------------------------------

    async def add_invite(self, invite: Invite) -> bool:
        added = await self._records(
            "inv_add",
            invite.id,
            invite.key,
            invite.left,
            repr(invite.expires_at),
            _encode(invite),
            INVITE_KEPT_EXPIRED_S,
            MAX_INVITES,
        )
        return bool(int(added))

    async def invites(self) -> list[Invite]:
        raw = await self._records("invs", INVITE_KEPT_EXPIRED_S)
        found = [
            dataclasses.replace(msgspec.json.decode(encoded, type=Invite), left=int(left))
            for encoded, left in zip(raw[::2], raw[1::2], strict=True)
        ]
        return sorted(found, key=lambda v: v.created_at, reverse=True)

    async def revoke_invite(self, invite_id: str) -> bool:
        return bool(int(await self._records("inv_revoke", invite_id)))

    async def use_invite(self, key: str) -> InviteUse:
        used = _text(await self._records("inv_use", key[:INVITE_ID_CHARS], key))
        if used not in ("admitted", "unknown", "expired", "used_up"):
            raise AssertionError(f"records.lua inv_use answered {used!r}")
        return used  # type: ignore[return-value]

    async def raid(self) -> Raid | None:
        raw = await self._records("raid")
        return msgspec.json.decode(raw, type=Raid) if raw else None

    async def set_raid(self, raid: Raid | None) -> None:
        await self._records("raid_set", b"" if raid is None else _encode(raid))

    async def use_pow_solution(self, key: str, expires_at: float, limit: int) -> PowUse:
        used = _text(await self._records("pow_use", key, repr(expires_at), limit))
        if used not in ("new", "used", "full"):
            raise AssertionError(f"records.lua pow_use answered {used!r}")
        return used  # type: ignore[return-value]

    async def note_new_sessions(self, added: int, per_minute: int, quiet_s: float) -> bool:
        on = await self._records("pow_note", added, per_minute, repr(quiet_s), POW_RATE_STEP_S)
        return bool(int(on))

    # -- the audit log ---------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> int:
        return int(await self._records("audit_add", _encode(entry), repr(entry.at)))

    async def audit(self, limit: int, before: int | None = None) -> list[AuditEntry]:
        raw = await self._records("audit", limit, "" if before is None else before)
        return [dataclasses.replace(e, id=i) for i, e in _pairs(raw, AuditEntry)]
