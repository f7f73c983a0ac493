"""The backend contract: what every ``Backend`` must do, run against each one.

Every test goes through the ``Backend`` Protocol only, so a new backend runs
the whole suite by adding its name to the ``backend`` fixture's params:

* ``memory``: time passes through trio's ``autojump_clock`` (the backend
  measures durations with ``trio.current_time``). Every call the suite makes
  runs under ``trio.testing.assert_no_checkpoints`` (``NoCheckpoints``): the
  backend's atomicity claim.
* ``redis``: one backend on a real redis-server (``redis_support``).
* ``redis-pair``: two backend instances (two "servers") on one Redis; each
  session's calls go to one of them by its id, so matches, claims and
  leaves cross servers.

The Redis backends take time from Redis's ``TIME`` plus an offset the tests
move (``elapse``): nothing sleeps for real, and ``trio.fail_after`` bounds
every wait.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import random
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from redis_support import RedisServer, new_prefix
from trio.abc import Clock

from omiro_trio.backends.base import (
    INVITE_ID_CHARS,
    Backend,
    Ban,
    Invite,
    LocalView,
    Raid,
    ReportRecord,
    Stats,
)
from omiro_trio.backends.memory import MemoryBackend, open_memory_backend
from omiro_trio.backends.redis import open_redis_backend
from omiro_trio.matchmaking import GENERATIONS, Match, Preferences, Waiting

INTEREST_TIMEOUT_S = 10.0
COOLDOWN_S = 30.0
BLOCK_TTL_S = 60.0
# A cooldown or block may end up to one bucket later than its duration (the
# memory backend's generations; Redis's TTLs are exact): "gone" checks wait this long.
COOLDOWN_LATE_S = COOLDOWN_S / GENERATIONS
BLOCK_LATE_S = BLOCK_TTL_S / GENERATIONS
WAIT_S = 600.0  # virtual seconds under autojump_clock: a hang fails at once
CLIENT = "192.0.2.50"  # the address group sessions are claimed from, unless a test says
BACKENDS = ["memory", "redis", "redis-pair"]

Elapse = Callable[[float], Awaitable[None]]


class _Offset:
    """Seconds the Redis backends add to Redis's clock."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.servers: list[Any] = []  # the Redis backends that read this clock

    def __call__(self) -> float:
        return self.seconds


class Split:
    """Two backends on one Redis: each session's calls go to the server its id picks."""

    def __init__(self, a: Any, b: Any) -> None:
        self.servers = (a, b)
        self._turn = 0
        self._reserved: dict[str, list[Any]] = defaultdict(list)  # client -> holding servers

    def _for(self, key: str) -> Any:
        return self.servers[zlib.crc32(key.encode()) % 2]

    @property
    def server_id(self) -> str:
        return str(self.servers[0].server_id)

    async def ping(self) -> None:
        for server in self.servers:
            await server.ping()

    async def claim_session(self, session_id: str, client: str, account: str = "") -> bool:
        return bool(await self._for(session_id).claim_session(session_id, client, account))

    async def account_of(self, session_id: str) -> str:
        return str(await self._for(session_id).account_of(session_id))

    async def release_session(self, session_id: str) -> Match | None:
        return await self._for(session_id).release_session(session_id)  # type: ignore[no-any-return]

    async def join(self, session_id: str, p: Preferences) -> Match | Waiting:
        return await self._for(session_id).join(session_id, p)  # type: ignore[no-any-return]

    async def widen(self, session_id: str, ticket: int) -> Match | None:
        return await self._for(session_id).widen(session_id, ticket)  # type: ignore[no-any-return]

    async def leave(self, session_id: str) -> Match | None:
        return await self._for(session_id).leave(session_id)  # type: ignore[no-any-return]

    async def reserve_socket(self, client: str, limit: int) -> bool:
        # Reservations alternate between the servers, so the limit is only
        # kept if they share it; each slot is given back by the server holding it.
        self._turn = 1 - self._turn
        server = self.servers[self._turn]
        if not await server.reserve_socket(client, limit):
            return False
        self._reserved[client].append(server)
        return True

    async def release_socket(self, client: str) -> None:
        await self._reserved[client].pop().release_socket(client)

    def __getattr__(self, name: str) -> Any:
        # Everything else alternates between the servers, call by call.
        self._turn = 1 - self._turn
        return getattr(self.servers[self._turn], name)


class NoCheckpoints:
    """The memory backend, each async call checked to finish without a checkpoint.

    That is what makes its every method atomic with respect to every other
    task (``backends/memory.py``). ``run_bus`` is the exception: it runs
    until cancelled. ``checked`` counts the calls that were checked.
    """

    LONG_RUNNING = frozenset({"run_bus"})

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.checked = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._backend, name)
        if name in self.LONG_RUNNING or not inspect.iscoroutinefunction(attr):
            return attr

        async def checked(*args: Any, **kwargs: Any) -> Any:
            self.checked += 1
            with trio.testing.assert_no_checkpoints():
                return await attr(*args, **kwargs)

        return checked


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> Clock | None:
    """The memory backend's virtual clock; Redis runs on the real one."""
    return trio.testing.MockClock(autojump_threshold=0) if kind == "memory" else None


@pytest.fixture
def offset() -> _Offset:
    return _Offset()


@pytest.fixture
def elapse(kind: str, offset: _Offset) -> Elapse:
    """Let ``seconds`` pass for the backend under test."""

    async def elapse(seconds: float) -> None:
        if kind == "memory":
            await trio.sleep(seconds)
        else:
            offset.seconds += seconds
            # Live servers heartbeat as time passes, so none looks dead to the others.
            for server in offset.servers:
                await server.heartbeat()
            await trio.lowlevel.checkpoint()

    return elapse


@pytest.fixture
async def backend(
    kind: str, offset: _Offset, request: pytest.FixtureRequest
) -> AsyncIterator[Backend]:
    """An open backend with the timings above, closed at the end of the test."""
    timings: dict[str, Any] = {
        "interest_timeout_s": INTEREST_TIMEOUT_S,
        "rematch_cooldown_s": COOLDOWN_S,
        "block_ttl_s": BLOCK_TTL_S,
    }
    if kind == "memory":
        async with open_memory_backend(**timings) as opened:
            yield NoCheckpoints(opened)  # type: ignore[misc]
        return
    redis: RedisServer = request.getfixturevalue("redis_server")
    options = dict(
        timings, url=redis.url, key_prefix=new_prefix(), pool_size=20, clock_offset=offset
    )
    if kind == "redis":
        async with open_redis_backend(**options) as opened, listening(opened):
            offset.servers = [opened]
            yield opened
    else:
        async with (
            open_redis_backend(**options) as a,
            open_redis_backend(**options) as b,
            listening(a, b),
        ):
            offset.servers = [a, b]
            yield Split(a, b)  # type: ignore[misc]


@asynccontextmanager
async def listening(*servers: Any) -> AsyncIterator[None]:
    """Each server listens on its bus, as a running server does (only a server
    that listens has its users matched, and its sockets counted)."""

    async def ignore(message: bytes) -> None:
        pass

    async with trio.open_nursery() as nursery:
        for server in servers:
            await nursery.start(server.run_bus, ignore)
        yield
        nursery.cancel_scope.cancel()


def prefs(*interests: str, mode: str = "video") -> Preferences:
    return Preferences(mode=mode, interests=interests)


async def waits(backend: Backend, session_id: str, p: Preferences | None = None) -> Waiting:
    result = await backend.join(session_id, p or prefs())
    assert isinstance(result, Waiting), f"{session_id}: expected to wait, got {result}"
    return result


async def matches(backend: Backend, session_id: str, p: Preferences | None = None) -> Match:
    result = await backend.join(session_id, p or prefs())
    assert isinstance(result, Match), f"{session_id}: expected a match, got {result}"
    return result


async def former_partners(backend: Backend, a: str, b: str) -> None:
    """Match ``a`` with ``b`` and end the match: their cooldown starts now."""
    await waits(backend, a)
    await matches(backend, b)
    assert await backend.leave(a) is not None


# -- liveness and sessions -------------------------------------------------


async def test_ping_answers(backend: Backend) -> None:
    with trio.fail_after(5):
        await backend.ping()
    assert isinstance(backend.server_id, str)
    assert backend.server_id


async def test_claim_session_refuses_a_second_claim(backend: Backend) -> None:
    assert await backend.claim_session("s1", CLIENT) is True
    assert await backend.claim_session("s1", CLIENT) is False
    assert await backend.claim_session("s2", CLIENT) is True


async def test_release_session_makes_it_claimable_again(backend: Backend) -> None:
    assert await backend.claim_session("s1", CLIENT)
    assert await backend.release_session("s1") is None
    assert await backend.claim_session("s1", CLIENT) is True
    assert await backend.claim_session("s1", CLIENT) is False


async def test_release_session_of_a_waiting_session_leaves_the_queue(backend: Backend) -> None:
    assert await backend.claim_session("a", CLIENT)
    await waits(backend, "a")
    assert await backend.release_session("a") is None
    assert (await backend.stats()).waiting == 0
    assert await backend.claim_session("b", CLIENT)
    await waits(backend, "b")


async def test_release_session_of_a_matched_session_returns_the_match(backend: Backend) -> None:
    for sid in ("a", "b"):
        assert await backend.claim_session(sid, CLIENT)
    await waits(backend, "a")
    formed = await matches(backend, "b")
    ended = await backend.release_session("b")
    assert ended == formed
    # The partner is idle: leaving finds nothing, and it can join again.
    assert await backend.leave("a") is None
    await waits(backend, "a")
    assert await backend.claim_session("c", CLIENT)
    assert (await matches(backend, "c")).caller == "a"


async def test_release_session_never_matches_the_released_one_later(backend: Backend) -> None:
    await waits(backend, "a", prefs("music"))
    await backend.release_session("a")
    await waits(backend, "b", prefs("music"))
    await waits(backend, "c")
    assert (await backend.stats()).waiting == 2


# -- join, widen, leave, block -------------------------------------------------


async def test_join_first_session_waits_without_widen_timer(backend: Backend) -> None:
    waiting = await waits(backend, "a")
    assert waiting.widen_after_s is None


async def test_join_matches_the_waiting_session_which_calls(backend: Backend) -> None:
    await waits(backend, "a")
    match = await matches(backend, "b")
    assert (match.caller, match.callee, match.mode) == ("a", "b", "video")
    assert match.common_interests == ()
    assert match.should_call("a")
    assert not match.should_call("b")
    assert match.match_id


async def test_join_match_ids_are_unique(backend: Backend) -> None:
    ids = set()
    for n in range(5):
        await waits(backend, f"a{n}")
        ids.add((await matches(backend, f"b{n}")).match_id)
    assert len(ids) == 5


async def test_join_modes_never_mix(backend: Backend) -> None:
    await waits(backend, "v", prefs(mode="video"))
    await waits(backend, "t", prefs(mode="text"))
    await waits(backend, "vi", prefs("music", mode="video"))
    await waits(backend, "ti", prefs("music", mode="text"))
    assert (await backend.stats()).waiting == 4
    match = await matches(backend, "t2", prefs(mode="text"))
    assert (match.caller, match.mode) == ("t", "text")


async def test_join_takes_the_oldest_waiting_partner(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    await waits(backend, "old", prefs("music"))
    await elapse(1)
    await waits(backend, "young", prefs("books"))
    # The joiner names "books" first; "old" still waited longest.
    match = await matches(backend, "c", prefs("books", "music"))
    assert (match.caller, match.common_interests) == ("old", ("music",))
    assert (await matches(backend, "d", prefs("books"))).caller == "young"


async def test_join_shared_interest_matches_at_once(backend: Backend) -> None:
    waiting = await waits(backend, "a", prefs("music", "books", "films"))
    assert waiting.widen_after_s == INTEREST_TIMEOUT_S
    match = await matches(backend, "b", prefs("films", "games", "music"))
    assert match.caller == "a"
    assert match.common_interests == ("films", "music")


def speaks(*languages: str, interests: tuple[str, ...] = (), mode: str = "video") -> Preferences:
    return Preferences(mode=mode, interests=interests, languages=languages)


@pytest.mark.rule("protocol/languages")
async def test_join_prefers_a_shared_language_and_tells_it(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    await waits(backend, "de", speaks("de"))
    await elapse(1)
    waiting = await waits(backend, "pt", speaks("pt", "es"))
    assert waiting.widen_after_s == INTEREST_TIMEOUT_S
    match = await matches(backend, "me", speaks("en", "es", "pt", interests=("jazz",)))
    # "de" waited longest, but shares no language.
    assert (match.caller, match.common_languages, match.common_interests) == (
        "pt",
        ("es", "pt"),
        (),
    )
    assert (await backend.stats()).waiting == 1


async def test_a_match_formed_carries_its_clients_for_the_pair_tag(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    assert await backend.claim_session("a", "198.51.100.7")
    assert await backend.claim_session("b", "2001:db8:5:6::/64")
    await waits(backend, "a")
    match = await matches(backend, "b")
    assert match.clients == ("198.51.100.7", "2001:db8:5:6::/64")  # caller's, callee's
    # Widened too; a session whose client is unknown gives "".
    assert await backend.claim_session("c", "192.0.2.1")
    first = await waits(backend, "c", prefs("chess"))
    await elapse(1)
    await waits(backend, "d")
    await elapse(INTEREST_TIMEOUT_S)
    widened = await backend.widen("c", first.ticket)
    assert isinstance(widened, Match)
    assert (widened.caller, widened.clients) == ("c", ("192.0.2.1", ""))


async def test_a_language_and_an_interest_of_the_same_name_never_meet(backend: Backend) -> None:
    await waits(backend, "a", prefs("pt"))
    await waits(backend, "b", speaks("pt"))
    assert (await backend.stats()).waiting == 2


@pytest.mark.rule("protocol/languages")
async def test_languages_are_a_preference_not_a_filter(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    first = await waits(backend, "de", speaks("de"))
    await elapse(1)
    second = await waits(backend, "pt", speaks("pt", interests=("jazz",)))
    await elapse(INTEREST_TIMEOUT_S)
    assert await backend.widen("de", first.ticket) is None  # the first to the anyone line
    match = await backend.widen("pt", second.ticket)
    assert isinstance(match, Match)
    assert (match.caller, match.common_languages, match.common_interests) == ("de", (), ())
    # Leaving takes a speaker out of every line: nothing is left behind.
    assert await backend.leave("de") == match
    for n, p in enumerate((speaks("de"), speaks("pt"), prefs("jazz"), prefs())):
        await waits(backend, f"late{n}", p)


@pytest.mark.rule("protocol/modes")
async def test_voice_only_meets_voice_only(backend: Backend) -> None:
    await waits(backend, "v", prefs(mode="video"))
    await waits(backend, "t", prefs(mode="text"))
    await waits(backend, "voice", speaks("pt", mode="voice"))
    match = await matches(backend, "voice2", speaks("pt", mode="voice"))
    assert (match.caller, match.mode, match.common_languages) == ("voice", "voice", ("pt",))


@pytest.mark.rule("protocol/age-bands")
async def test_age_bands_never_meet_and_unknown_meets_only_unknown(backend: Backend) -> None:
    await waits(backend, "adult", Preferences(band="adult"))
    await waits(backend, "minor", Preferences(band="minor"))
    await waits(backend, "unknown", Preferences())
    await waits(backend, "minor-text", Preferences(mode="text", band="minor"))
    adults = await matches(backend, "adult2", Preferences(band="adult"))
    assert (adults.caller, adults.callee, adults.mode) == ("adult", "adult2", "video")
    minors = await matches(backend, "minor2", Preferences(band="minor"))
    assert (minors.caller, minors.callee, minors.mode) == ("minor", "minor2", "video")
    unknown = await matches(backend, "unknown2", Preferences())
    assert (unknown.caller, unknown.callee) == ("unknown", "unknown2")
    # Read back from the backend, the match's mode is the mode alone.
    ended = await backend.leave("adult2")
    assert ended is not None
    assert (ended.match_id, ended.mode) == (adults.match_id, "video")


@pytest.mark.rule("protocol/age-bands")
async def test_age_bands_are_never_widened(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    adult = await waits(backend, "adult", Preferences(interests=("music",), band="adult"))
    minor = await waits(backend, "minor", Preferences(interests=("music",), band="minor"))
    await elapse(INTEREST_TIMEOUT_S)
    assert await backend.widen("adult", adult.ticket) is None
    assert await backend.widen("minor", minor.ticket) is None
    assert (await backend.stats()).waiting == 2


async def test_join_with_interests_does_not_take_a_no_interest_waiter(backend: Backend) -> None:
    await waits(backend, "a")
    waiting = await waits(backend, "b", prefs("music"))
    assert waiting.widen_after_s == INTEREST_TIMEOUT_S
    assert (await backend.stats()).waiting == 2


@pytest.mark.parametrize(("interests_first", "caller"), [(True, "a"), (False, "b")])
async def test_widen_after_the_interest_timeout_takes_anyone(
    backend: Backend,
    clock: Clock | None,
    elapse: Elapse,
    interests_first: bool,
    caller: str,
) -> None:
    if not interests_first:
        await waits(backend, "b")
        await elapse(1)
    waiting = await waits(backend, "a", prefs("music"))
    if interests_first:
        await elapse(1)
        await waits(backend, "b")
    assert waiting.widen_after_s is not None
    await elapse(waiting.widen_after_s)
    match = await backend.widen("a", waiting.ticket)
    assert isinstance(match, Match)
    assert {match.caller, match.callee} == {"a", "b"}
    assert match.caller == caller  # whoever waited longer
    assert match.common_interests == ()
    assert (await backend.stats()).waiting == 0


async def test_widen_with_nobody_available_waits_for_anyone(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    waiting = await waits(backend, "a", prefs("music"))
    await elapse(INTEREST_TIMEOUT_S)
    assert await backend.widen("a", waiting.ticket) is None
    match = await matches(backend, "b")
    assert (match.caller, match.common_interests) == ("a", ())


async def test_widen_with_a_stale_ticket_does_nothing(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    stale = await waits(backend, "a", prefs("music"))
    await backend.leave("a")
    fresh = await waits(backend, "a", prefs("music"))
    await waits(backend, "b")
    await elapse(INTEREST_TIMEOUT_S)
    assert await backend.widen("a", stale.ticket) is None
    assert (await backend.stats()).waiting == 2
    assert isinstance(await backend.widen("a", fresh.ticket), Match)


async def test_widen_of_a_matched_session_does_nothing(backend: Backend) -> None:
    waiting = await waits(backend, "a", prefs("music"))
    formed = await matches(backend, "b", prefs("music"))
    await waits(backend, "c")
    assert await backend.widen("a", waiting.ticket) is None
    assert await backend.leave("a") == formed


async def test_leave_from_the_queue_returns_none(backend: Backend) -> None:
    await waits(backend, "a", prefs("music"))
    assert await backend.leave("a") is None
    assert (await backend.stats()).waiting == 0
    await waits(backend, "b", prefs("music"))


async def test_leave_from_a_match_ends_it_for_both(backend: Backend) -> None:
    await waits(backend, "a")
    formed = await matches(backend, "b")
    assert await backend.leave("a") == formed
    assert await backend.leave("b") is None
    assert await backend.leave("a") is None
    # Both are idle: both can join again (and, former partners with nobody
    # else waiting, meet again).
    await waits(backend, "b")
    assert (await matches(backend, "a")).caller == "b"


async def test_leave_when_idle_returns_none(backend: Backend) -> None:
    assert await backend.leave("nobody") is None


async def test_block_prevents_a_match_even_when_nobody_else_waits(backend: Backend) -> None:
    await backend.block("a", "b")
    await waits(backend, "a")
    await waits(backend, "b")
    await waits(backend, "x", prefs(mode="text"))
    assert (await backend.stats()).waiting == 3
    # Blocks are per pair: a third session meets the oldest waiter.
    assert (await matches(backend, "c")).caller == "a"


async def test_block_works_in_both_directions(backend: Backend) -> None:
    await backend.block("a", "b")
    await waits(backend, "b", prefs("music"))
    await waits(backend, "a", prefs("music"))
    assert (await backend.stats()).waiting == 2


async def test_block_expires_after_block_ttl(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    await backend.block("a", "b")
    await waits(backend, "a")
    await elapse(BLOCK_TTL_S - 1)
    await waits(backend, "b")
    await backend.leave("b")
    await elapse(1 + BLOCK_LATE_S)
    assert (await matches(backend, "b")).caller == "a"


# -- cooldown and interest timeout in time ---------------------------------


async def test_cooldown_skips_a_former_partner_while_someone_else_waits(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    await former_partners(backend, "a", "b")
    # Different interests keep "a" and "c" apart; "a" waited longer.
    await waits(backend, "a", prefs("music"))
    await elapse(1)
    await waits(backend, "c", prefs("books"))
    match = await matches(backend, "b", prefs("music", "books"))
    assert (match.caller, match.common_interests) == ("c", ("books",))


async def test_cooldown_former_partner_matched_when_nobody_else_waits(backend: Backend) -> None:
    await former_partners(backend, "a", "b")
    await waits(backend, "a")
    await waits(backend, "t", prefs(mode="text"))
    assert (await matches(backend, "b")).caller == "a"


async def test_cooldown_former_partner_fresh_again_after_rematch_cooldown(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    await former_partners(backend, "a", "b")
    await waits(backend, "a", prefs("music"))
    await elapse(1)
    await waits(backend, "c", prefs("books"))
    await elapse(COOLDOWN_S - 1 + COOLDOWN_LATE_S)
    # "a" waited longest and is no longer a former partner of "b".
    assert (await matches(backend, "b", prefs("music", "books"))).caller == "a"


# -- rate limits -----------------------------------------------------------


async def test_hit_rate_limit_allows_limit_then_gives_retry_after(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    for _ in range(3):
        assert await backend.hit_rate_limit("ip:1", 3, 10.0) is None
    retry_after = await backend.hit_rate_limit("ip:1", 3, 10.0)
    assert retry_after is not None
    assert 0 < retry_after <= 10.0
    # Other keys have their own window.
    assert await backend.hit_rate_limit("ip:2", 3, 10.0) is None
    await elapse(retry_after)
    assert await backend.hit_rate_limit("ip:1", 3, 10.0) is None


async def test_hit_rate_limit_retry_after_shrinks_with_time(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    assert await backend.hit_rate_limit("k", 1, 10.0) is None
    await elapse(4)
    retry_after = await backend.hit_rate_limit("k", 1, 10.0)
    assert retry_after == pytest.approx(6.0, abs=0.5)


# -- sockets per client ----------------------------------------------------


async def test_reserve_socket_allows_limit_per_client_until_one_is_released(
    backend: Backend,
) -> None:
    for _ in range(3):
        assert await backend.reserve_socket(CLIENT, 3)
    assert not await backend.reserve_socket(CLIENT, 3)
    assert await backend.reserve_socket("192.0.2.51", 3)  # another client: its own count
    await backend.release_socket(CLIENT)
    assert await backend.reserve_socket(CLIENT, 3)
    assert not await backend.reserve_socket(CLIENT, 3)
    for _ in range(3):
        await backend.release_socket(CLIENT)
    for _ in range(3):
        assert await backend.reserve_socket(CLIENT, 3)


async def test_simultaneous_reservations_give_exactly_the_limit(backend: Backend) -> None:
    granted: list[bool] = []

    async def reserve() -> None:
        granted.append(await backend.reserve_socket(CLIENT, 5))

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(reserve)
    assert granted.count(True) == 5
    assert len(granted) == 20


# -- stats, bans, reports, delivery, sweep ---------------------------------


async def test_stats_counts_claimed_and_waiting_sessions(backend: Backend) -> None:
    assert await backend.stats() == Stats(online=0, waiting=0)
    for sid in ("a", "b", "c"):
        assert await backend.claim_session(sid, CLIENT)
    assert await backend.stats() == Stats(online=3, waiting=0)
    await waits(backend, "a")
    await waits(backend, "c", prefs(mode="text"))
    assert await backend.stats() == Stats(online=3, waiting=2)
    await matches(backend, "b")
    assert await backend.stats() == Stats(online=3, waiting=1)
    await backend.release_session("c")
    assert await backend.stats() == Stats(online=2, waiting=0)


def _ban(target: str, until: float | None = None) -> Ban:
    return Ban(target=target, reason="test", until=until, created_at=time.time())


async def test_ban_for_matches_an_address(backend: Backend) -> None:
    add_ban = backend.add_ban
    assert await backend.ban_for("203.0.113.7") is None
    ban = _ban("203.0.113.7", until=time.time() + 3600)
    await add_ban(ban)
    assert await backend.ban_for("203.0.113.7") == ban
    assert await backend.ban_for("203.0.113.8") is None


@pytest.mark.parametrize(
    ("network", "inside", "outside"),
    [
        ("198.51.100.0/24", "198.51.100.42", "198.51.101.1"),
        ("2001:db8::/32", "2001:db8::1", "2001:db9::1"),
    ],
)
async def test_ban_for_matches_a_cidr(
    backend: Backend, network: str, inside: str, outside: str
) -> None:
    add_ban = backend.add_ban
    ban = _ban(network)
    await add_ban(ban)
    assert await backend.ban_for(inside) == ban
    assert await backend.ban_for(outside) is None


async def test_ban_for_ignores_an_expired_ban(backend: Backend) -> None:
    add_ban = backend.add_ban
    await add_ban(_ban("203.0.113.7", until=time.time() - 1))
    await add_ban(_ban("198.51.100.0/24", until=time.time() - 1))
    assert await backend.ban_for("203.0.113.7") is None
    assert await backend.ban_for("198.51.100.9") is None


async def test_ban_for_ignores_a_malformed_address(backend: Backend) -> None:
    add_ban = backend.add_ban
    await add_ban(_ban("0.0.0.0/0"))
    assert await backend.ban_for("not-an-ip") is None
    assert await backend.ban_for("192.0.2.1") is not None


async def test_bans_lists_live_bans_newest_first(backend: Backend) -> None:
    first, second = _ban("203.0.113.7"), _ban("198.51.100.0/24", until=time.time() + 60)
    await backend.add_ban(first)
    await backend.add_ban(second)
    await backend.add_ban(_ban("192.0.2.1", until=time.time() - 1))
    assert await backend.bans() == [second, first]


async def test_add_ban_replaces_a_ban_of_the_same_target(backend: Backend) -> None:
    await backend.add_ban(_ban("203.0.113.7", until=time.time() + 60))
    newer = _ban("203.0.113.7")
    await backend.add_ban(newer)
    assert await backend.bans() == [newer]
    assert await backend.ban_for("203.0.113.7") == newer


async def test_remove_ban_lifts_it_once(backend: Backend) -> None:
    await backend.add_ban(_ban("198.51.100.0/24"))
    assert await backend.remove_ban("198.51.100.0/24") is True
    assert await backend.ban_for("198.51.100.9") is None
    assert await backend.bans() == []
    assert await backend.remove_ban("198.51.100.0/24") is False


async def test_an_account_ban_is_found_by_its_account_only(backend: Backend) -> None:
    assert await backend.account_ban("acct-1") is None
    ban = _ban("account:acct-1", until=time.time() + 3600)
    await backend.add_ban(ban)
    assert await backend.account_ban("acct-1") == ban
    assert await backend.account_ban("acct-2") is None
    assert await backend.ban_for(CLIENT) is None  # no address is banned by it
    assert await backend.ban_for("account:acct-1") is None  # not an address
    await backend.add_ban(_ban("0.0.0.0/0"))  # nor does an address ban name an account
    assert await backend.account_ban("acct-2") is None
    assert [b.target for b in await backend.bans()] == ["0.0.0.0/0", "account:acct-1"]
    assert await backend.ban_history("account:acct-1", 5) == [ban]
    assert await backend.remove_ban("account:acct-1") is True
    assert await backend.account_ban("acct-1") is None
    assert await backend.remove_ban("account:acct-1") is False


async def test_an_expired_account_ban_is_not_in_force(backend: Backend) -> None:
    await backend.add_ban(_ban("account:acct-1", until=time.time() - 1))
    assert await backend.account_ban("acct-1") is None
    assert await backend.bans() == []


async def test_a_claim_keeps_the_sessions_account_while_it_is_live(backend: Backend) -> None:
    assert await backend.claim_session("a", CLIENT, "acct-1")
    assert await backend.claim_session("b", CLIENT)
    assert await backend.account_of("a") == "acct-1"
    assert await backend.account_of("b") == ""
    assert await backend.account_of("nobody") == ""
    assert not await backend.claim_session("a", CLIENT, "acct-2")  # the first claim's is kept
    assert await backend.account_of("a") == "acct-1"
    await backend.release_session("a")
    assert await backend.account_of("a") == ""


REPORTED_AT = time.time()  # reports are kept for a retention counted from when they were filed


def _report(n: int) -> ReportRecord:
    return ReportRecord(
        reported_ip="203.0.113.7",
        reported=f"bad{n}",
        reporter=f"good{n}",
        reporter_ip="198.51.100.1",
        reason="spam",
        at=REPORTED_AT + n,
        transcript=("hi", f"line {n}"),
    )


async def test_record_report_keeps_reports_newest_first(backend: Backend) -> None:
    first = await backend.record_report(_report(1))
    second = await backend.record_report(_report(2))
    assert 0 < first < second
    kept = await backend.reports(10)
    assert [r.reported for r in kept] == ["bad2", "bad1"]
    assert [r.id for r in kept] == [second, first]
    assert kept[1] == dataclasses.replace(_report(1), id=first)


async def test_a_report_keeps_the_reported_account(backend: Backend) -> None:
    report = dataclasses.replace(_report(1), reported_account="acct-1")
    report_id = await backend.record_report(report)
    assert await backend.report(report_id) == dataclasses.replace(report, id=report_id)
    assert report.size_bytes() == _report(1).size_bytes() + len("acct-1")


async def test_reports_are_read_a_page_at_a_time(backend: Backend) -> None:
    ids = [await backend.record_report(_report(n)) for n in range(7)]
    first = await backend.reports(3)
    assert [r.id for r in first] == ids[:3:-1][:3]
    second = await backend.reports(3, before=first[-1].id)
    assert [r.id for r in second] == [ids[3], ids[2], ids[1]]
    last = await backend.reports(3, before=second[-1].id)
    assert [r.id for r in last] == [ids[0]]
    assert await backend.reports(3, before=ids[0]) == []


async def test_ban_of_one_ipv6_address_covers_its_group(backend: Backend) -> None:
    await backend.add_ban(Ban("2001:db8:1:2::5", "spam", None, time.time()))
    assert await backend.ban_for("2001:db8:1:2::/64") is not None
    assert await backend.ban_for("2001:db8:1:2::5") is not None
    assert await backend.ban_for("2001:db8:1:3::/64") is None
    assert await backend.ban_for("192.0.2.1") is None


async def test_block_covers_the_clients_of_the_pair(backend: Backend) -> None:
    """A fresh session from either blocked client does not meet the other."""
    assert await backend.claim_session("a", "203.0.113.1")
    assert await backend.claim_session("b", "2001:db8::/64")
    assert await backend.client_of("a") == "203.0.113.1"
    assert await backend.client_of("b") == "2001:db8::/64"
    await backend.block("a", "b")
    await backend.release_session("a")
    await backend.release_session("b")
    assert await backend.client_of("a") is None
    assert await backend.claim_session("a2", "203.0.113.1")
    assert await backend.claim_session("b2", "2001:db8::/64")
    await waits(backend, "a2")
    await waits(backend, "b2")
    # Someone from a third client still meets them.
    assert await backend.claim_session("c", "198.51.100.1")
    assert (await matches(backend, "c")).caller == "a2"


async def test_block_between_sessions_of_one_client_blocks_only_them(backend: Backend) -> None:
    for sid in ("a", "b", "c"):
        assert await backend.claim_session(sid, CLIENT)
    await backend.block("a", "b")
    await waits(backend, "a")
    await waits(backend, "b")
    assert (await matches(backend, "c")).caller == "a"


async def test_client_block_expires_after_block_ttl(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    assert await backend.claim_session("a", "203.0.113.1")
    assert await backend.claim_session("b", "203.0.113.2")
    await backend.block("a", "b")
    await backend.release_session("a")
    await backend.release_session("b")
    await elapse(BLOCK_TTL_S + BLOCK_LATE_S + 1)
    assert await backend.claim_session("a2", "203.0.113.1")
    assert await backend.claim_session("b2", "203.0.113.2")
    await waits(backend, "a2")
    assert (await matches(backend, "b2")).caller == "a2"


async def test_count_reporter_counts_distinct_addresses_in_the_window(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    assert await backend.count_reporter("203.0.113.7", "198.51.100.1", 60) == 1
    assert await backend.count_reporter("203.0.113.7", "198.51.100.1", 60) == 1
    assert await backend.count_reporter("203.0.113.7", "198.51.100.2", 60) == 2
    assert await backend.count_reporter("192.0.2.1", "198.51.100.1", 60) == 1
    await elapse(61)
    assert await backend.count_reporter("203.0.113.7", "198.51.100.3", 60) == 1


async def test_publish_to_an_unknown_session_is_gone(backend: Backend) -> None:
    assert await backend.publish("nobody", b"{}") == "gone"


async def test_run_bus_starts_and_stops_when_cancelled(backend: Backend) -> None:
    received: list[bytes] = []

    async def handler(message: bytes) -> None:
        received.append(message)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run_bus, handler)
            nursery.cancel_scope.cancel()
    assert received == []


async def test_sweep_keeps_what_is_in_force_and_expires_the_rest(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    await backend.block("a", "b")
    await former_partners(backend, "c", "d")
    assert await backend.hit_rate_limit("k", 1, 10.0) is None
    await elapse(5)
    await backend.sweep()
    assert await backend.hit_rate_limit("k", 1, 10.0) is not None
    await waits(backend, "a")
    await waits(backend, "b")
    assert (await backend.stats()).waiting == 2  # still blocked
    await backend.leave("b")
    await backend.leave("a")
    # After every expiry and a sweep, nothing of it is left in force.
    await elapse(BLOCK_TTL_S)
    await backend.sweep()
    assert await backend.hit_rate_limit("k", 1, 10.0) is None
    await waits(backend, "a")
    assert (await matches(backend, "b")).caller == "a"
    await waits(backend, "c")
    assert (await matches(backend, "d")).caller == "c"


async def test_sweep_leaves_sessions_and_queues_alone(backend: Backend) -> None:
    for sid in ("a", "b", "c"):
        assert await backend.claim_session(sid, CLIENT)
    await waits(backend, "a")
    await waits(backend, "b", prefs(mode="text"))
    before = await backend.stats()
    await backend.sweep()
    assert await backend.stats() == before == Stats(online=3, waiting=2)
    assert await backend.claim_session("a", CLIENT) is False
    assert (await matches(backend, "c")).caller == "a"


# -- concurrency -----------------------------------------------------------

SESSIONS_N = 50
ROUNDS = 6
SEED = 20240611
MODES = ("video", "video", "text")


async def test_concurrent_joins_and_leaves_never_put_a_session_in_two_matches(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    """50 sessions join, widen, leave and reconnect at once, in random order.

    Each call is stamped with a logical clock before it starts and after it
    returns. A match formed during a join/widen call lies within one wait of
    each side (from the start of its join to the end of its leave); no wait
    may hold two matches, no match may involve a session outside a wait, and
    every match ends exactly once.
    """
    rng = random.Random(SEED)
    tick = itertools.count()
    waits_of: dict[str, list[tuple[int, int]]] = defaultdict(list)
    formed: dict[str, tuple[Match, int, int]] = {}
    ended: Counter[str] = Counter()
    ended_in: dict[tuple[str, int], str] = {}

    def record_formed(match: Match | Waiting | None, start: int, end: int) -> None:
        if isinstance(match, Match):
            assert match.match_id not in formed, f"match id {match.match_id} reused"
            formed[match.match_id] = (match, start, end)

    async def session(sid: str, r: random.Random) -> None:
        assert await backend.claim_session(sid, CLIENT)
        for n in range(ROUNDS):
            await elapse(r.random() * 2)
            p = prefs(*r.choice([(), (), ("x",), ("y",), ("x", "y")]), mode=r.choice(MODES))
            start = next(tick)
            result = await backend.join(sid, p)
            record_formed(result, start, next(tick))
            if isinstance(result, Waiting) and result.widen_after_s is not None:
                await elapse(r.random() * 2 * result.widen_after_s)
                widen_start = next(tick)
                widened = await backend.widen(sid, result.ticket)
                record_formed(widened, widen_start, next(tick))
            await elapse(r.random() * 3)
            last = n == ROUNDS - 1
            release = last or r.random() < 0.2
            if release:
                match = await backend.release_session(sid)
            else:
                match = await backend.leave(sid)
            waits_of[sid].append((start, next(tick)))
            if match is not None:
                ended[match.match_id] += 1
                ended_in[(sid, n)] = match.match_id
            if release and not last:
                assert await backend.claim_session(sid, CLIENT)

    sessions = [f"s{n:02d}" for n in range(SESSIONS_N)]
    rng.shuffle(sessions)
    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            for sid in sessions:
                nursery.start_soon(session, sid, random.Random(rng.random()))

    assert len(formed) >= SESSIONS_N, "too few matches to say anything"
    assert set(ended) == set(formed), "a match formed but never ended, or the reverse"
    assert all(count == 1 for count in ended.values()), f"ended twice: {ended}"
    holder: dict[tuple[str, int], str] = {}
    for match_id, (match, start, end) in formed.items():
        for side in (match.caller, match.callee):
            windows = [i for i, (ws, we) in enumerate(waits_of[side]) if ws <= end and we >= start]
            assert windows, f"{match_id} formed with {side} outside any wait of its"
            if len(windows) > 1:
                continue  # the call overlapped two waits: cannot tell which
            key = (side, windows[0])
            assert key not in holder, f"{side} in {holder[key]} and {match_id} in one wait"
            holder[key] = match_id
    for key, match_id in ended_in.items():
        assert holder.get(key, match_id) == match_id, f"{key} ended {match_id}"
    assert await backend.stats() == Stats(online=0, waiting=0)


async def test_memory_report_store_is_bounded_in_bytes() -> None:
    """The in-process store drops its oldest reports once over its byte bound."""
    one = _report(0).size_bytes()
    store = MemoryBackend(
        interest_timeout_s=1, rematch_cooldown_s=1, block_ttl_s=1, max_report_bytes=one * 3
    )
    ids = [await store.record_report(_report(n)) for n in range(10)]
    assert [r.id for r in await store.reports(100)] == ids[:6:-1]


async def test_no_checkpoints_wrapper_catches_a_call_that_checkpoints() -> None:
    """The atomicity check above can fail: a call that yields is caught."""

    class Yields:
        async def join(self) -> None:
            await trio.lowlevel.checkpoint()

    wrapped = NoCheckpoints(Yields())
    with pytest.raises(AssertionError):
        await wrapped.join()
    assert wrapped.checked == 1


async def test_memory_sweep_visits_only_what_expired(autojump_clock: Clock) -> None:
    """The sweep's work is the expired records, capped per call; never a scan of all."""
    from omiro_trio.backends import memory

    backend = MemoryBackend(interest_timeout_s=1, rematch_cooldown_s=30, block_ttl_s=60)
    for n in range(300):
        assert await backend.hit_rate_limit(f"next:{n}", 1, 60.0) is None
        await backend.count_reporter(f"198.51.100.{n % 7}", f"203.0.113.{n}", 60.0)
        await trio.sleep(0.1)
    assert backend.held_entries() == 600
    # 75 s after the first: about half of each have ended, the rest run on.
    await trio.sleep(45.0)
    visited: list[int] = []
    original = backend._expire_windows

    def counting(ends: Any, now: float, budget: int) -> int:
        visited.append(original(ends, now, budget))
        return visited[-1]

    backend._expire_windows = counting  # type: ignore[method-assign]
    await backend.sweep()
    assert 0 < sum(visited) < 300  # only the ended windows were visited
    assert 0 < backend.held_entries() < 600
    assert await backend.hit_rate_limit("next:299", 1, 60.0) is not None  # still in force
    # A budget caps one sweep; the next goes on where it stopped.
    old_budget = memory.SWEEP_BUDGET
    memory.SWEEP_BUDGET = 10
    try:
        await trio.sleep(60.0)
        before = backend.held_entries()
        await backend.sweep()
        assert before - backend.held_entries() == 10
    finally:
        memory.SWEEP_BUDGET = old_budget
    for _ in range(100):
        await backend.sweep()
    assert backend.held_entries() == 0


async def test_memory_ban_check_looks_at_the_address_and_the_network_bans_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exact lookup plus the short list of network bans, never a scan of every ban."""
    from omiro_trio.backends import memory

    backend = MemoryBackend(interest_timeout_s=1, rematch_cooldown_s=30, block_ttl_s=60)
    now = time.time()
    for n in range(3000):
        await backend.add_ban(Ban(f"10.{n // 256}.{n % 256}.1", "spam", now + 600, now))
    await backend.add_ban(Ban("198.51.100.0/24", "a network", None, now))
    await backend.add_ban(Ban("2001:db8:5::/48", "a network", None, now))
    compared = 0
    original = memory._overlaps

    def counting(a: Any, b: Any) -> bool:
        nonlocal compared
        compared += 1
        return original(a, b)

    monkeypatch.setattr(memory, "_overlaps", counting)
    checks = {
        "10.5.7.1": "10.5.7.1",
        "10.11.183.1": "10.11.183.1",
        "192.0.2.1": None,
        "198.51.100.77": "198.51.100.0/24",
        "2001:db8:5:1::/64": "2001:db8:5::/48",
        "2001:db8:6:1::/64": None,
    }
    for ip, target in checks.items():
        ban = await backend.ban_for(ip)
        assert (ban.target if ban else None) == target, ip
    assert compared <= 2 * len(checks)


async def test_sync_puts_back_a_match_both_sides_hold_that_the_shared_state_lacks(
    backend: Backend,
) -> None:
    """A match resumed with its tickets (issue 23): this server holds both sides, idle in
    the shared state, each with the same match; ``sync`` puts it back for both."""
    for sid in ("a", "b", "c"):
        assert await backend.claim_session(sid, CLIENT)
    resumed = Match("r1", "a", "b", "video", (), (backend.server_id, backend.server_id))
    shared = await backend.sync([LocalView("a", CLIENT, resumed), LocalView("b", CLIENT, resumed)])
    assert [(view.state, view.match) for view in shared] == [("matched", resumed)] * 2
    # Matched for real: a third session does not find them, and leaving ends it for both.
    await waits(backend, "c")
    ended = await backend.leave("a")
    assert ended is not None
    assert ended.match_id == "r1"
    assert await backend.leave("b") is None


# -- the entry gate: invites and raid mode ---------------------------------------------


def _invite(code: str, *, uses: int = 1, expires_in_s: float = 3600.0) -> Invite:
    key = hashlib.sha256(code.encode()).hexdigest()
    now = time.time()
    return Invite(
        id=key[:INVITE_ID_CHARS],
        key=key,
        uses=uses,
        left=uses,
        expires_at=now + expires_in_s,
        created_at=now,
        by="admin",
        note="test",
    )


async def test_invite_gives_its_uses_then_is_used_up(backend: Backend) -> None:
    invite = _invite("three-uses", uses=3)
    assert await backend.add_invite(invite)
    # Redis-pair: the calls alternate between the two servers, which share the count.
    assert [await backend.use_invite(invite.key) for _ in range(4)] == [
        "admitted",
        "admitted",
        "admitted",
        "used_up",
    ]
    (listed,) = await backend.invites()
    assert (listed.id, listed.uses, listed.left, listed.note) == (invite.id, 3, 0, "test")


async def test_invite_unknown_expired_and_revoked(backend: Backend) -> None:
    live, old = _invite("live"), _invite("old", expires_in_s=-1)
    assert await backend.add_invite(live)
    assert await backend.add_invite(old)
    assert await backend.use_invite(hashlib.sha256(b"nobody").hexdigest()) == "unknown"
    # Same id (the first characters), another code: not this invite.
    assert await backend.use_invite(live.key[:INVITE_ID_CHARS] + "0" * 48) == "unknown"
    assert await backend.use_invite(old.key) == "expired"
    assert {i.id for i in await backend.invites()} == {live.id, old.id}
    assert await backend.revoke_invite(live.id)
    assert not await backend.revoke_invite(live.id)
    assert await backend.use_invite(live.key) == "unknown"
    assert [i.id for i in await backend.invites()] == [old.id]


async def test_invite_last_use_is_taken_once_by_simultaneous_callers(backend: Backend) -> None:
    invite = _invite("one-use", uses=5)
    assert await backend.add_invite(invite)
    outcomes: list[str] = []

    async def use() -> None:
        outcomes.append(await backend.use_invite(invite.key))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(use)
    assert Counter(outcomes) == {"admitted": 5, "used_up": 7}


async def test_raid_mode_is_set_and_cleared_for_every_server(backend: Backend) -> None:
    assert await backend.raid() is None
    raid = Raid(since=time.time(), by="admin", retry_after_s=120)
    await backend.set_raid(raid)
    # Redis-pair: the reads alternate between the servers.
    assert await backend.raid() == raid
    assert await backend.raid() == raid
    await backend.set_raid(None)
    assert await backend.raid() is None
    assert await backend.raid() is None


# -- proof of work: used challenges and the adaptive switch ----------------------------


async def test_pow_solution_is_used_once_on_every_server(backend: Backend) -> None:
    expires_at = time.time() + 300
    # Redis-pair: the calls alternate between the two servers, which share the memory.
    assert await backend.use_pow_solution("sig-a", expires_at, 2) == "new"
    assert await backend.use_pow_solution("sig-a", expires_at, 2) == "used"
    assert await backend.use_pow_solution("sig-b", expires_at, 2) == "new"
    assert await backend.use_pow_solution("sig-c", expires_at, 2) == "full"
    assert await backend.use_pow_solution("sig-b", expires_at, 2) == "used"


async def test_pow_adaptive_switch_is_shared_and_ends_after_the_quiet_period(
    backend: Backend, clock: Clock | None, elapse: Elapse
) -> None:
    # Redis-pair: each call is another server's; the count is the service's.
    assert not await backend.note_new_sessions(6, 10, 120.0)
    assert not await backend.note_new_sessions(4, 10, 120.0)
    assert await backend.note_new_sessions(1, 10, 120.0)
    assert await backend.note_new_sessions(0, 10, 120.0)
    await elapse(61)  # the minute is over: the count is down, the quiet period runs
    assert await backend.note_new_sessions(0, 10, 120.0)
    await elapse(50)
    assert await backend.note_new_sessions(0, 10, 120.0)
    await elapse(10)  # 121 s after the last call that found the count over
    assert not await backend.note_new_sessions(0, 10, 120.0)
