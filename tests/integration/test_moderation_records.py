"""The backend contract for the moderation records, run against each backend.

Reports with their statuses, the reports and bans of one client, accounts,
console sessions and the audit log, and how long each is kept. Time is
controlled: the memory backend's unix clock follows trio's ``MockClock``
(``autojump_threshold=0``), the Redis backend's follows Redis's ``TIME``
plus an offset the tests move. Nothing sleeps for real.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
from redis_support import RedisServer, new_prefix
from trio.abc import Clock

from omiro_trio.backends.base import (
    AuditEntry,
    Backend,
    Ban,
    ConsoleSession,
    Moderator,
    ReportRecord,
    ReportStatus,
)
from omiro_trio.backends.memory import open_memory_backend
from omiro_trio.backends.redis import open_redis_backend
from omiro_trio.metrics import Metrics
from omiro_trio.moderation import (
    ACTIVITY_EVERY_S,
    LIVE_MINUTES,
    ModerationDesk,
    ModerationPolicy,
    run_activity,
)

DAY_S = 86400.0
RETENTION_S = 7 * DAY_S
AUDIT_RETENTION_S = 30 * DAY_S
BASE = 1_800_000_000.0  # the memory backend's unix time when its trio clock reads 0
BAD = "203.0.113.7"
GOOD = "198.51.100.1"


class Clocked:
    """The backend under test and its clock: ``now()`` (unix time) and ``elapse``.

    A test that lets time pass also asks for ``clock``: pytest-trio runs it
    on that clock (the memory backend's virtual one).
    """

    def __init__(
        self, backend: Backend, now: Callable[[], float], elapse: Callable[[float], Awaitable[None]]
    ) -> None:
        self.backend = backend
        self.now = now
        self.elapse = elapse


@pytest.fixture(params=["memory", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> Clock | None:
    return trio.testing.MockClock(autojump_threshold=0) if kind == "memory" else None


@pytest.fixture
async def store(kind: str, request: pytest.FixtureRequest) -> AsyncIterator[Clocked]:
    timings: dict[str, Any] = {
        "interest_timeout_s": 5.0,
        "rematch_cooldown_s": 30.0,
        "block_ttl_s": 60.0,
        "report_retention_s": RETENTION_S,
        "audit_retention_s": AUDIT_RETENTION_S,
    }
    if kind == "memory":

        def wall() -> float:
            return BASE + trio.current_time()

        async with open_memory_backend(**timings, wall=wall) as memory:
            yield Clocked(memory, wall, trio.sleep)
        return
    redis: RedisServer = request.getfixturevalue("redis_server")
    shift = [0.0]

    async def elapse(seconds: float) -> None:
        shift[0] += seconds
        await trio.lowlevel.checkpoint()

    async with open_redis_backend(
        **timings,
        url=redis.url,
        key_prefix=new_prefix(),
        pool_size=4,
        clock_offset=lambda: shift[0],
    ) as opened:
        yield Clocked(opened, lambda: time.time() + shift[0], elapse)


def report(
    at: float, n: int = 1, *, reported_ip: str = BAD, reporter_ip: str = GOOD
) -> ReportRecord:
    return ReportRecord(
        reported_ip=reported_ip,
        reported=f"bad{n}",
        reporter=f"good{n}",
        reporter_ip=reporter_ip,
        reason="harassment",
        at=at,
        transcript=("reported: <b>hi</b>", "reporter: stop"),
        match_s=42.5,
    )


# -- reports and their statuses -------------------------------------------------


async def test_a_report_is_kept_open_with_its_evidence(store: Clocked, clock: Clock | None) -> None:
    b = store.backend
    kept = report(store.now())
    report_id = await b.record_report(kept)
    got = await b.report(report_id)
    assert got is not None
    assert got.id == report_id
    assert got.transcript == kept.transcript
    assert got.match_s == 42.5
    assert await b.report_statuses([report_id, report_id + 100]) == [ReportStatus(), None]
    assert [r.id for r in await b.open_reports(10)] == [report_id]
    assert await b.report(report_id + 100) is None


async def test_a_status_changes_only_from_the_status_expected(
    store: Clocked, clock: Clock | None
) -> None:
    b = store.backend
    report_id = await b.record_report(report(store.now()))
    claimed = ReportStatus("claimed", "ana", store.now())
    assert await b.swap_report_status(report_id, ReportStatus(), claimed)
    # A second moderator who still saw it open does not take it over.
    other = ReportStatus("claimed", "bo", store.now())
    assert not await b.swap_report_status(report_id, ReportStatus(), other)
    assert await b.report_statuses([report_id]) == [claimed]
    assert [r.id for r in await b.open_reports(10)] == [report_id]  # claimed is still open
    done = ReportStatus("actioned", "ana", store.now(), action="ban 86400 s", note="slurs")
    assert await b.swap_report_status(report_id, claimed, done)
    assert await b.open_reports(10) == []
    assert not await b.swap_report_status(report_id, claimed, ReportStatus("dismissed", "bo"))
    assert await b.report_statuses([report_id]) == [done]
    assert not await b.swap_report_status(report_id + 100, ReportStatus(), claimed)


async def test_open_reports_come_oldest_first_and_reports_of_a_client_newest_first(
    store: Clocked, clock: Clock | None
) -> None:
    b = store.backend
    ids = []
    for n in range(4):
        ids.append(
            await b.record_report(report(store.now(), n, reported_ip=BAD if n % 2 else GOOD))
        )
        await store.elapse(10)
    assert [r.id for r in await b.open_reports(3)] == ids[:3]
    assert [r.id for r in await b.reports_of(BAD, 10)] == [ids[3], ids[1]]
    assert [r.id for r in await b.reports_of(BAD, 1)] == [ids[3]]
    assert await b.reports_of("192.0.2.99", 10) == []
    assert await b.count_reports_since(store.now() - 25) == 2
    assert await b.count_reports_since(0) == 4


async def test_reports_expire_after_the_retention(store: Clocked, clock: Clock | None) -> None:
    b = store.backend
    old = await b.record_report(report(store.now(), 1))
    await store.elapse(RETENTION_S - 60)
    new = await b.record_report(report(store.now(), 2))
    assert [r.id for r in await b.reports(10)] == [new, old]
    await store.elapse(120)  # the first is past its retention, the second is not
    assert await b.report(old) is None
    assert [r.id for r in await b.reports(10)] == [new]
    assert [r.id for r in await b.open_reports(10)] == [new]
    assert [r.id for r in await b.reports_of(BAD, 10)] == [new]
    assert await b.report_statuses([old, new]) == [None, ReportStatus()]
    assert not await b.swap_report_status(old, ReportStatus(), ReportStatus("dismissed"))
    assert await b.count_reports_since(0) == 1
    await store.elapse(RETENTION_S)
    await b.record_report(report(store.now(), 3))  # a write drops what expired
    assert [r.reported for r in await b.reports(10)] == ["bad3"]


# -- bans remembered -----------------------------------------------------------


async def test_bans_of_a_client_are_remembered_after_they_are_lifted(
    store: Clocked, clock: Clock | None
) -> None:
    b = store.backend
    first = Ban(BAD, "spam", store.now() + 3600, store.now(), by="ana")
    await b.add_ban(first)
    await store.elapse(10)
    second = Ban(BAD, "again", None, store.now(), by="auto")
    await b.add_ban(second)
    assert await b.remove_ban(BAD)
    assert await b.ban_history(BAD, 10) == [second, first]
    assert await b.ban_history(BAD, 1) == [second]
    assert await b.ban_history(GOOD, 10) == []
    await store.elapse(RETENTION_S - 5)
    assert await b.ban_history(BAD, 10) == [second]
    await store.elapse(10)
    assert await b.ban_history(BAD, 10) == []


# -- accounts and console sessions -------------------------------------------


async def test_moderator_accounts_are_added_once_listed_and_removed(
    store: Clocked, clock: Clock | None
) -> None:
    b = store.backend
    ana = Moderator("ana", "admin", "$argon2id$x", store.now())
    assert await b.add_moderator(ana)
    assert not await b.add_moderator(Moderator("ana", "moderator", "$argon2id$y", store.now()))
    assert await b.add_moderator(Moderator("bo", "moderator", "$argon2id$z", store.now()))
    assert await b.moderator("ana") == ana
    assert [m.name for m in await b.moderators()] == ["ana", "bo"]
    assert await b.remove_moderator("ana")
    assert not await b.remove_moderator("ana")
    assert await b.moderator("ana") is None
    await store.elapse(400 * DAY_S)  # accounts do not expire
    assert [m.name for m in await b.moderators()] == ["bo"]


async def test_a_console_session_lasts_while_it_is_used(
    store: Clocked, clock: Clock | None
) -> None:
    b = store.backend
    session = ConsoleSession("ana", "csrf-token", store.now())
    await b.open_console_session("k1", session, 600)
    for _ in range(5):  # used every 500 s: it never idles for 600
        await store.elapse(500)
        assert await b.console_session("k1", 600) == session
    await store.elapse(601)
    assert await b.console_session("k1", 600) is None
    await b.open_console_session("k2", session, 600)
    await b.close_console_session("k2")
    assert await b.console_session("k2", 600) is None


# -- the audit log -------------------------------------------------------------


async def test_the_audit_log_is_read_newest_first_a_page_at_a_time(
    store: Clocked, clock: Clock | None
) -> None:
    b = store.backend
    ids = []
    for n in range(5):
        entry = AuditEntry(store.now(), "ana", "ban", BAD, report_id=n, note=f"note {n}")
        ids.append(await b.append_audit(entry))
        await store.elapse(1)
    assert ids == sorted(ids)
    assert len(set(ids)) == 5
    page = await b.audit(3)
    assert [e.id for e in page] == ids[:1:-1]
    assert page[0].note == "note 4"
    assert page[0].report_id == 4
    assert [e.id for e in await b.audit(3, before=page[-1].id)] == ids[1::-1]


async def test_the_audit_log_expires_after_its_retention(
    store: Clocked, clock: Clock | None
) -> None:
    b = store.backend
    await b.append_audit(AuditEntry(store.now(), "ana", "dismiss", report_id=1))
    await store.elapse(AUDIT_RETENTION_S - 60)
    kept = await b.append_audit(AuditEntry(store.now(), "ana", "dismiss", report_id=2))
    assert len(await b.audit(10)) == 2
    await store.elapse(120)
    assert [e.id for e in await b.audit(10)] == [kept]


async def test_every_redis_key_has_a_ttl_but_the_accounts(kind: str, store: Clocked) -> None:
    if kind != "redis":
        pytest.skip("Redis keys only")
    b: Any = store.backend
    report_id = await b.record_report(report(store.now()))
    await b.swap_report_status(report_id, ReportStatus(), ReportStatus("claimed", "ana"))
    await b.add_ban(Ban(BAD, "spam", store.now() + 60, store.now(), by="ana"))
    await b.add_moderator(Moderator("ana", "admin", "h", store.now()))
    await b.open_console_session("k", ConsoleSession("ana", "c", store.now()), 600)
    await b.append_audit(AuditEntry(store.now(), "ana", "ban", BAD))
    client = b._client
    keys = [k.decode() for k in await client.keys(f"{b._prefix}*")]
    without_ttl = sorted([k.removeprefix(b._prefix) for k in keys if await client.pttl(k) < 0])
    # The server's registry and indexes are omiro.lua's business; the moderation
    # records must all expire except the accounts.
    assert "mods" in without_ttl
    records = {"reports", "report_t", "report_bytes", "report_id", "open", "audit", "audit_id"}
    assert not records & set(without_ttl)
    assert not [k for k in without_ttl if k.startswith(("rs:", "rg:", "bh:", "cs:"))]


# -- activity (the live view) --------------------------------------------------


async def test_activity_counts_add_up_by_minute_over_every_server(
    store: Clocked, clock: Clock | None
) -> None:
    b = store.backend
    minute = int(store.now() // 60)
    await b.add_activity(minute - 10, {"matches": 100})
    await b.add_activity(minute - 1, {"matches": 3, "calls_connected": 2})
    await b.add_activity(minute - 1, {"matches": 1})  # another server, the same minute
    await b.add_activity(minute, {"calls_failed": 1})
    assert await b.activity(minute - 4) == {"matches": 4, "calls_connected": 2, "calls_failed": 1}
    assert await b.activity(minute) == {"calls_failed": 1}
    assert (await b.activity(minute - 10))["matches"] == 104


async def test_the_live_view_has_matches_a_minute_and_the_call_success_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def wall() -> float:
        return BASE + trio.current_time()

    metrics = Metrics()
    async with open_memory_backend(
        interest_timeout_s=5, rematch_cooldown_s=30, block_ttl_s=60, wall=wall
    ) as backend:

        async def put_ban(ban: Ban) -> int:
            return 0

        desk = ModerationDesk(backend, ModerationPolicy(), put_ban=put_ban, wall=wall)
        before = await desk.live()
        assert (before.matches_per_minute, before.calls, before.call_success) == (0, 0, None)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_activity, backend, metrics, wall)
            await trio.sleep(1)
            metrics.matches.inc(10)
            metrics.count_call("connected", "direct", 800)
            metrics.count_call("connected", "relay", 900)
            metrics.count_call("failed", None, None)
            metrics.count_call("connected", "direct", 700)
            await trio.sleep(ACTIVITY_EVERY_S)
            live = await desk.live()
            assert live.matches_per_minute == 2.0  # 10 over the last 5 minutes
            assert (live.calls, live.call_success) == (4, 0.75)
            await trio.sleep(LIVE_MINUTES * 60 + 60)  # they age out of the window
            assert (await desk.live()).matches_per_minute == 0
            nursery.cancel_scope.cancel()
