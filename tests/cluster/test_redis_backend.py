"""The Redis backend's own promises, beyond the contract suite: two servers on
one Redis, the server registry and its sweep, and a Redis that dies, freezes
or comes back empty. Real redis-servers only (``redis_support``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis
import pytest
import trio
from redis_support import RedisServer, new_prefix, running_redis

from omiro_trio.backends.base import Ban, Ended, LocalView, ReportRecord, Stats
from omiro_trio.backends.redis import OP_TIMEOUT_S, RedisBackend, open_redis_backend
from omiro_trio.errors import BackendUnavailable
from omiro_trio.matchmaking import Match, Preferences, Waiting

DEAD_AFTER_S = 6.0
CLIENT = "192.0.2.7"
WAIT_S = 10.0


class Offset:
    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


def options(url: str, prefix: str, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "url": url,
        "key_prefix": prefix,
        "pool_size": 10,
        "interest_timeout_s": 5.0,
        "rematch_cooldown_s": 30.0,
        "block_ttl_s": 60.0,
        "dead_after_s": DEAD_AFTER_S,
    }
    base.update(overrides)
    return base


@asynccontextmanager
async def two_servers(
    redis: RedisServer, **overrides: Any
) -> AsyncIterator[tuple[RedisBackend, RedisBackend]]:
    prefix = new_prefix()
    async with (
        open_redis_backend(**options(redis.url, prefix, **overrides)) as a,
        open_redis_backend(**options(redis.url, prefix, **overrides)) as b,
    ):
        yield a, b


async def test_servers_have_unique_ids_and_share_claims(redis_server: RedisServer) -> None:
    async with two_servers(redis_server) as (a, b):
        assert a.server_id != b.server_id
        assert await a.claim_session("s1", CLIENT)
        assert not await b.claim_session("s1", CLIENT)  # held by the other server
        assert await b.claim_session("s2", CLIENT)
        assert await a.stats() == await b.stats() == Stats(online=2, waiting=0)
        await a.release_session("s1")
        assert await b.claim_session("s1", CLIENT)


async def test_a_match_forms_across_servers(redis_server: RedisServer) -> None:
    async with two_servers(redis_server) as (a, b):
        for backend, sid in ((a, "x"), (b, "y")):
            assert await backend.claim_session(sid, CLIENT)
        assert isinstance(await a.join("x", Preferences("video", ("music",))), Waiting)
        match = await b.join("y", Preferences("video", ("art", "music")))
        assert isinstance(match, Match)
        assert (match.caller, match.callee, match.common_interests) == ("x", "y", ("music",))
        assert await a.leave("x") == match
        assert await b.leave("y") is None


async def test_publish_reaches_the_server_holding_the_session(redis_server: RedisServer) -> None:
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    async with two_servers(redis_server) as (a, b), trio.open_nursery() as nursery:
        for name, backend in (("a", a), ("b", b)):

            async def handler(message: bytes, name: str = name) -> None:
                got[name].append(message)

            await nursery.start(backend.run_bus, handler)
        assert await b.claim_session("on-b", CLIENT)
        assert await a.publish("on-b", b"for b") is True
        assert await a.publish("nobody", b"lost") is False
        await a.broadcast(b"to all")
        with trio.fail_after(WAIT_S):
            while len(got["b"]) < 2 or not got["a"]:  # noqa: ASYNC110 -- bounded polling
                await trio.sleep(0.01)
        assert got["b"] == [b"for b", b"to all"]
        assert got["a"] == [b"to all"]
        nursery.cancel_scope.cancel()


async def test_sweep_frees_the_sessions_of_a_server_that_stopped_beating(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    later = Offset()
    async with (
        open_redis_backend(**options(redis_server.url, prefix, heartbeat_s=3600)) as dead,
        open_redis_backend(**options(redis_server.url, prefix, clock_offset=later)) as alive,
    ):
        for backend, sid in ((dead, "d1"), (dead, "d2"), (alive, "a1")):
            assert await backend.claim_session(sid, CLIENT)
        await dead.join("d1", Preferences())
        match = await alive.join("a1", Preferences())
        assert isinstance(match, Match)
        await dead.join("d2", Preferences("text"))
        assert await alive.sweep() == []  # its heartbeat is fresh
        assert not await alive.claim_session("d2", CLIENT)
        later.seconds = DEAD_AFTER_S + 1  # for "alive", "dead" has been silent that long
        await alive.heartbeat()
        assert await alive.sweep() == [Ended("d1", match)]
        assert await alive.stats() == Stats(online=1, waiting=0)
        assert await alive.sweep() == []  # swept once
        # Its sessions can come back, and its waiting one is never matched.
        assert await alive.claim_session("d1", CLIENT)
        assert isinstance(await alive.join("t", Preferences("text")), Waiting)
        # The swept server, if it was only slow, may not act until it beats again.
        with pytest.raises(BackendUnavailable, match="SWEPT"):
            await dead.join("d3", Preferences("text"))
        dead_offset = later.seconds  # it beats "now", as seen by the live one
        dead._offset = lambda: dead_offset
        await dead.heartbeat()
        assert isinstance(await dead.join("d3", Preferences("text")), Match)


async def test_a_clean_stop_is_swept_at_once(redis_server: RedisServer) -> None:
    prefix = new_prefix()
    async with open_redis_backend(**options(redis_server.url, prefix)) as alive:
        async with open_redis_backend(**options(redis_server.url, prefix)) as leaving:
            assert await leaving.claim_session("l", CLIENT)
            await leaving.join("l", Preferences())
        assert await alive.sweep() == []
        assert await alive.stats() == Stats(online=0, waiting=0)
        assert await alive.claim_session("l", CLIENT)


async def test_sync_restores_sessions_after_redis_restarts_empty() -> None:
    with running_redis() as redis:
        async with two_servers(redis, heartbeat_s=3600) as (a, b):
            gaps: list[str] = []
            a._on_gap = lambda: gaps.append("a")
            for backend, sid in ((a, "x"), (b, "y"), (a, "w")):
                assert await backend.claim_session(sid, CLIENT)
            await a.join("x", Preferences())
            match = await b.join("y", Preferences())
            assert isinstance(match, Match)
            await a.join("w", Preferences("text"))
            redis.stop()
            with trio.fail_after(WAIT_S), pytest.raises(BackendUnavailable):
                await a.ping()
            with trio.fail_after(WAIT_S), pytest.raises(BackendUnavailable):
                await a.stats()
            redis.start()  # empty: no persistence
            with trio.fail_after(WAIT_S):
                await a.heartbeat()
                await b.heartbeat()
            assert gaps == ["a"]
            shared = await a.sync([LocalView("x", "", match), LocalView("w", "", None)])
            assert [(v.state, v.match) for v in shared] == [("matched", match), ("idle", None)]
            await b.sync([LocalView("y", "", match)])
            assert await a.stats() == Stats(online=3, waiting=0)
            assert await b.leave("y") == match  # the restored match ends for both
            assert await a.leave("x") is None


async def test_a_frozen_redis_is_unavailable_within_the_deadline() -> None:
    with running_redis() as redis:
        async with open_redis_backend(**options(redis.url, new_prefix())) as backend:
            redis.pause()
            try:
                with trio.fail_after(OP_TIMEOUT_S + 2), pytest.raises(BackendUnavailable):
                    await backend.ping()
                with trio.fail_after(OP_TIMEOUT_S + 2), pytest.raises(BackendUnavailable):
                    await backend.join("s", Preferences())
            finally:
                redis.resume()
            with trio.fail_after(WAIT_S):
                await backend.ping()


async def test_open_fails_clearly_without_redis() -> None:
    with running_redis() as redis:
        url = redis.url
    with trio.fail_after(WAIT_S), pytest.raises(BackendUnavailable):
        async with open_redis_backend(**options(url, new_prefix())):
            pass  # pragma: no cover


async def test_sockets_per_client_are_shared_and_a_swept_server_frees_its_own(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    later = Offset()
    async with (
        open_redis_backend(**options(redis_server.url, prefix, heartbeat_s=3600)) as dead,
        open_redis_backend(**options(redis_server.url, prefix, clock_offset=later)) as alive,
    ):
        assert await dead.reserve_socket(CLIENT, 3)
        assert await dead.reserve_socket(CLIENT, 3)
        assert await alive.reserve_socket(CLIENT, 3)
        # Two here and one there: the client's three are taken on both servers.
        assert not await alive.reserve_socket(CLIENT, 3)
        assert not await dead.reserve_socket(CLIENT, 3)
        assert await alive.sweep() == []  # its heartbeat is fresh: its sockets stay
        assert not await alive.reserve_socket(CLIENT, 3)
        later.seconds = DEAD_AFTER_S + 1
        await alive.heartbeat()
        await alive.sweep()
        assert await alive.reserve_socket(CLIENT, 3)
        assert await alive.reserve_socket(CLIENT, 3)
        assert not await alive.reserve_socket(CLIENT, 3)


async def test_sync_restores_socket_reservations_after_redis_restarts_empty() -> None:
    with running_redis() as redis:
        async with two_servers(redis, heartbeat_s=3600) as (a, b):
            assert await a.reserve_socket(CLIENT, 3)
            assert await a.reserve_socket(CLIENT, 3)
            assert await b.reserve_socket(CLIENT, 3)
            redis.stop()
            with trio.fail_after(WAIT_S), pytest.raises(BackendUnavailable):
                await a.ping()
            redis.start()  # empty: no persistence
            with trio.fail_after(WAIT_S):
                await a.heartbeat()
                await b.heartbeat()
            await a.sync([])
            await b.sync([])
            assert not await a.reserve_socket(CLIENT, 3)
            await b.release_socket(CLIENT)
            assert await a.reserve_socket(CLIENT, 3)
            assert not await b.reserve_socket(CLIENT, 3)


async def test_every_key_written_has_a_ttl_but_permanent_bans(redis_server: RedisServer) -> None:
    prefix = new_prefix()
    later = Offset()
    async with (
        open_redis_backend(**options(redis_server.url, prefix, heartbeat_s=3600)) as gone,
        open_redis_backend(**options(redis_server.url, prefix, clock_offset=later)) as a,
        open_redis_backend(**options(redis_server.url, prefix, clock_offset=later)) as b,
    ):
        # A busy moment: every kind of record each operation writes.
        held = [(a, "a1"), (a, "a2"), (a, "a3"), (a, "a4"), (gone, "g1")]
        held += [(b, "b1"), (b, "b2"), (b, "b3"), (b, "b4")]
        for n, (backend, sid) in enumerate(held):
            assert await backend.claim_session(sid, f"192.0.2.{n}")
            assert await backend.reserve_socket(f"192.0.2.{n}", 5)
        await a.join("a1", Preferences("video", ("music",)))
        assert isinstance(await b.join("b1", Preferences("video", ("music", "art"))), Match)
        await a.join("a2", Preferences("text", ("books",)))
        await a.widen("a2", 0)
        await b.join("b2", Preferences("text"))  # takes a2 if it widened, else waits
        await gone.join("g1", Preferences("video"))
        assert isinstance(await b.join("b3", Preferences("video")), Match)  # with g1
        await a.block("a3", "b3")
        assert await a.leave("a1") is not None
        await a.release_session("a1")
        await a.release_socket("192.0.2.0")
        await a.join("a3", Preferences("video", ("films",)))
        for key in ("sessions:192.0.2.1", "next:b1"):
            await b.hit_rate_limit(key, 2, 60.0)
        await a.count_reporter("192.0.2.4", "192.0.2.5", 3600.0)
        await b.record_report(
            ReportRecord("192.0.2.4", "b2", "a3", "192.0.2.5", "abuse", 0.0, ("x: hi",))
        )
        await a.reports(10)
        await a.add_ban(Ban("198.51.100.1", "spam", time.time() + 600, time.time()))
        await a.add_ban(Ban("198.51.100.0/24", "spam", None, time.time()))  # permanent
        await a.add_ban(Ban("198.51.100.9", "spam", None, time.time()))
        assert await b.remove_ban("198.51.100.9")
        assert await b.ban_for("198.51.100.1") is not None
        await a.publish("b1", b"hello")
        await a.stats()
        await a.sync([LocalView("a2", "192.0.2.1", None), LocalView("a3", "192.0.2.2", None)])
        later.seconds = DEAD_AFTER_S + 1  # "gone" stops beating and is swept
        await a.heartbeat()
        await b.heartbeat()
        assert len(await a.sweep()) == 1  # b3's match with g1
        await a.leave("b3")
        await a.join("a4", Preferences("video", ("pets",)))
        assert isinstance(await b.join("b4", Preferences("video", ("pets",))), Match)
        redis: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
        async with redis:
            keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
            ttls = {_name(k, prefix): await redis.pttl(k) for k in keys}
    kinds = {name.split(":")[0] for name in ttls}
    assert {"s", "srv", "sk", "servers", "dead", "w", "q", "waiting", "m", "le", "cd"} <= kinds
    assert {"bl", "blc", "rl", "rep", "reports", "seq", "boot", "bans", "ban"} <= kinds
    forever = sorted(name for name, ttl in ttls.items() if ttl < 0)
    assert forever == ["ban:198.51.100.0/24", "bans"]


def _name(key: bytes, prefix: str) -> str:
    return key.decode().removeprefix(prefix)
