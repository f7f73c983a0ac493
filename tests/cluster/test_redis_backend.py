"""The Redis backend's own promises, beyond the contract suite: two servers on
one Redis, the server registry and its sweep, and a Redis that dies, freezes
or comes back empty. Real redis-servers only (``redis_support``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from functools import partial
from typing import Any

import coredis
import pytest
import trio
from cluster_support import BlackHole
from redis_support import RedisServer, new_prefix, running_redis

from omiro_trio.backends.base import Ban, Ended, LocalView, ReportRecord, Stats
from omiro_trio.backends.redis import OP_TIMEOUT_S, RedisBackend, new_pool, open_redis_backend
from omiro_trio.errors import BackendUnavailable, SessionElsewhere
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
        listening(a, b),
    ):
        yield a, b


@asynccontextmanager
async def listening(
    *servers: RedisBackend, views: dict[RedisBackend, list[LocalView]] | None = None
) -> AsyncIterator[list[str]]:
    """Each server listens on its bus, as a running server does; yields the gaps they saw.

    ``views``: what each server holds, for it to put back if Redis loses it.
    """
    gaps: list[str] = []

    async def ignore(message: bytes) -> None:
        pass

    async with trio.open_nursery() as nursery:
        for server in servers:
            held = (views or {}).get(server, [])
            await nursery.start(
                partial(
                    server.run_bus,
                    ignore,
                    on_gap=partial(gaps.append, server.server_id),
                    views=lambda held=held: held,
                )
            )
        yield gaps
        nursery.cancel_scope.cancel()


async def beat(server: RedisBackend, times: int) -> None:
    for _ in range(times):
        await server.heartbeat()


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
        assert await a.publish("on-b", b"for b") == "delivered"
        assert await a.publish("on-b", b"named", server=b.server_id) == "delivered"
        assert await a.publish("nobody", b"lost") == "gone"
        await a.broadcast(b"to all")
        with trio.fail_after(WAIT_S):
            while len(got["b"]) < 3 or not got["a"]:  # noqa: ASYNC110 -- bounded polling
                await trio.sleep(0.01)
        assert got["b"] == [b"for b", b"named", b"to all"]
        assert got["a"] == [b"to all"]
        nursery.cancel_scope.cancel()


async def test_sweep_frees_the_sessions_of_a_server_that_stopped_beating(
    redis_server: RedisServer,
) -> None:
    prefix = new_prefix()
    async with (
        open_redis_backend(**options(redis_server.url, prefix, heartbeat_s=3600)) as dead,
        open_redis_backend(**options(redis_server.url, prefix)) as alive,
        listening(dead, alive),
    ):
        for backend, sid in ((dead, "d1"), (dead, "d2"), (alive, "a1")):
            assert await backend.claim_session(sid, CLIENT)
        await dead.join("d1", Preferences())
        match = await alive.join("a1", Preferences())
        assert isinstance(match, Match)
        assert match.servers == (dead.server_id, alive.server_id)
        await dead.join("d2", Preferences("text"))
        # However much time passes, a server is dead only once another has
        # beaten dead_beats times since its last heartbeat.
        await dead.heartbeat()
        await beat(alive, alive.dead_beats - 1)
        assert await alive.sweep() == []
        assert not await alive.claim_session("d2", CLIENT)
        await beat(alive, 1)
        assert await alive.sweep() == [Ended("d1", match)]
        assert await alive.stats() == Stats(online=1, waiting=0)
        assert await alive.sweep() == []  # swept once
        # Its sessions can come back, and its waiting one is never matched.
        assert await alive.claim_session("d1", CLIENT)
        assert isinstance(await alive.join("t", Preferences("text")), Waiting)
        assert isinstance(await alive.join("d1", Preferences("text")), Match)  # with t
        # The swept server was only slow: it beats again, and touches nothing
        # that another server holds now.
        await dead.heartbeat()
        assert await dead.release_session("d1") is None
        with pytest.raises(SessionElsewhere):
            await dead.leave("d1")
        assert await alive.leave("t") is not None  # d1's match with t was still on


async def test_a_clean_stop_is_swept_at_once(redis_server: RedisServer) -> None:
    prefix = new_prefix()
    async with open_redis_backend(**options(redis_server.url, prefix)) as alive:
        async with open_redis_backend(**options(redis_server.url, prefix)) as leaving:
            assert await leaving.claim_session("l", CLIENT)
            await leaving.join("l", Preferences())
        assert await alive.sweep() == []
        assert await alive.stats() == Stats(online=0, waiting=0)
        assert await alive.claim_session("l", CLIENT)


async def test_every_server_puts_its_state_back_when_redis_restarts_empty() -> None:
    with running_redis() as redis:
        prefix = new_prefix()
        async with (
            open_redis_backend(**options(redis.url, prefix)) as a,
            open_redis_backend(**options(redis.url, prefix)) as b,
        ):
            for backend, sid in ((a, "x"), (b, "y"), (a, "w")):
                assert await backend.claim_session(sid, CLIENT)
            async with listening(a, b):
                await a.join("x", Preferences())
                match = await b.join("y", Preferences())
                assert isinstance(match, Match)
                waits = await a.join("w", Preferences("text", ("chess",)))
                assert isinstance(waits, Waiting)
            held = {
                a: [
                    LocalView("x", CLIENT, match),
                    LocalView("w", CLIENT, None, Preferences("text", ("chess",)), waits.ticket),
                ],
                b: [LocalView("y", CLIENT, match)],
            }
            async with listening(a, b, views=held) as gaps:
                redis.stop()
                with trio.fail_after(WAIT_S), pytest.raises(BackendUnavailable):
                    await a.ping()
                redis.start()  # empty: no persistence
                # a's next call finds an empty Redis: a puts its sessions, wait
                # and match back first, then the call runs.
                with trio.fail_after(WAIT_S):
                    await a.ping()
                assert a.server_id in gaps
                assert await a.stats() == Stats(online=2, waiting=1)
                # b has not put y back yet: no resync of a may end x's match.
                shared = await a.sync([LocalView("x", CLIENT, match)])
                assert [(v.state, v.match) for v in shared] == [("matched", match)]
                with trio.fail_after(WAIT_S):
                    await b.ping()
                assert await a.stats() == Stats(online=3, waiting=1)
                # The match is whole again (both sides), and the wait still widens.
                assert await b.leave("y") == match
                assert await a.leave("x") is None
                assert await a.widen("w", waits.ticket) is None
                await listening_again(redis.url, a, b)
                assert isinstance(await b.join("v", Preferences("text")), Match)


async def test_a_match_put_back_by_one_side_only_ends_after_dead_beats() -> None:
    """A restored match whose partner's server never puts its side back ends."""
    with running_redis() as redis:
        prefix = new_prefix()
        async with open_redis_backend(**options(redis.url, prefix)) as a:
            match = Match("m1", "x", "gone", "video", (), (a.server_id, "a-server-that-died"))
            held = {a: [LocalView("x", CLIENT, match)]}
            async with listening(a, views=held):
                assert await a.claim_session("x", CLIENT)
                redis.stop()
                redis.start()
                with trio.fail_after(WAIT_S):
                    await a.ping()
                for _ in range(a.dead_beats):
                    shared = await a.sync([LocalView("x", CLIENT, match)])
                    assert shared[0].state == "matched"
                    await a.heartbeat()
                shared = await a.sync([LocalView("x", CLIENT, match)])
                assert shared[0].state == "ended"
                assert await a.leave("x") is None


async def test_a_frozen_redis_is_unavailable_within_the_deadline() -> None:
    with running_redis() as redis:
        prefix = new_prefix()
        async with open_redis_backend(**options(redis.url, prefix)) as backend:
            before = await _connections(redis.url, f"{prefix}omiro")
            assert before
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
            # Every connection a timed-out request was waiting on was closed, so
            # no later call could queue behind a reply that might never come.
            after = await _connections(redis.url, f"{prefix}omiro")
            assert after
            assert not set(before) & set(after)


async def _connections(url: str, name: str) -> list[str]:
    """The ids of the connections to Redis named ``name``."""
    redis: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    async with redis:
        clients = await redis.client_list()
    return [str(c["id"]) for c in clients if c.get("name") == name]


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
    async with (
        open_redis_backend(**options(redis_server.url, prefix, heartbeat_s=3600)) as dead,
        open_redis_backend(**options(redis_server.url, prefix)) as alive,
        listening(alive),
    ):
        async with listening(dead):
            assert await dead.reserve_socket(CLIENT, 3)
            assert await dead.reserve_socket(CLIENT, 3)
            assert await alive.reserve_socket(CLIENT, 3)
            # Two here and one there: the client's three are taken on both servers.
            assert not await alive.reserve_socket(CLIENT, 3)
            assert not await dead.reserve_socket(CLIENT, 3)
        # A server that stopped listening (killed) no longer counts, even
        # before it is swept.
        assert await alive.reserve_socket(CLIENT, 3)
        await alive.release_socket(CLIENT)
        await beat(alive, alive.dead_beats)
        await alive.sweep()
        assert await alive.reserve_socket(CLIENT, 3)
        assert await alive.reserve_socket(CLIENT, 3)
        assert not await alive.reserve_socket(CLIENT, 3)


async def test_sync_restores_socket_reservations_after_redis_restarts_empty() -> None:
    with running_redis() as redis:
        async with two_servers(redis) as (a, b):
            assert await a.reserve_socket(CLIENT, 3)
            assert await a.reserve_socket(CLIENT, 3)
            assert await b.reserve_socket(CLIENT, 3)
            redis.stop()
            with trio.fail_after(WAIT_S), pytest.raises(BackendUnavailable):
                await a.ping()
            redis.start()  # empty: no persistence
            with trio.fail_after(WAIT_S):
                await a.ping()
                await b.ping()
            await listening_again(redis.url, a, b)
            assert not await a.reserve_socket(CLIENT, 3)
            await b.release_socket(CLIENT)
            assert await a.reserve_socket(CLIENT, 3)
            assert not await b.reserve_socket(CLIENT, 3)


async def listening_again(url: str, *servers: RedisBackend) -> None:
    """Wait until every server has subscribed to its channel again."""
    redis: coredis.Redis[bytes] = coredis.Redis.from_url(url)
    async with redis:
        with trio.fail_after(WAIT_S):
            for server in servers:
                channel = f"{server._prefix}bus:{server.server_id}"
                while not (await redis.pubsub_numsub(channel))[channel.encode()]:  # noqa: ASYNC110
                    await trio.sleep(0.05)  # bounded polling of another task's reconnect


async def test_every_key_written_has_a_ttl_but_permanent_bans(redis_server: RedisServer) -> None:
    prefix = new_prefix()
    async with (
        open_redis_backend(**options(redis_server.url, prefix, heartbeat_s=3600)) as gone,
        open_redis_backend(**options(redis_server.url, prefix)) as a,
        open_redis_backend(**options(redis_server.url, prefix)) as b,
        listening(gone, a, b),
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
        await beat(a, a.dead_beats)  # "gone" stops beating and is swept
        await b.heartbeat()
        assert len(await a.sweep()) == 1  # b3's match with g1
        assert await b.leave("b3") is None  # its match ended with "gone"
        await a.join("a4", Preferences("video", ("pets",)))
        assert isinstance(await b.join("b4", Preferences("video", ("pets",))), Match)
        redis: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
        async with redis:
            keys = [k async for k in redis.scan_iter(match=f"{prefix}*")]
            ttls = {_name(k, prefix): await redis.pttl(k) for k in keys}
    kinds = {name.split(":")[0] for name in ttls}
    assert {"s", "srv", "sk", "servers", "hb", "beat", "w", "q", "waiting", "m", "me"} <= kinds
    assert {"le", "cd", "bl", "blc", "rl", "rep", "reports", "seq", "boot"} <= kinds
    assert {"bans", "ban", "bk", "netbans", "banidx"} <= kinds
    forever = sorted(name for name, ttl in ttls.items() if ttl < 0)
    assert forever == ["ban:198.51.100.0/24", "banidx", "bans", "netbans"]


def _name(key: bytes, prefix: str) -> str:
    return key.decode().removeprefix(prefix)


async def _commands_run(redis: coredis.Redis[bytes]) -> int:
    """Every command Redis ran since its stats were reset (those inside scripts too)."""
    stats = await redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))  # type: ignore[index]


async def test_a_ban_check_costs_the_same_with_thousands_of_bans(
    redis_server: RedisServer,
) -> None:
    """An exact-address lookup plus the short list of network bans, never a scan of all."""
    async with open_redis_backend(**options(redis_server.url, new_prefix())) as backend:
        now = time.time()
        for n in range(3000):
            await backend.add_ban(Ban(f"10.{n // 256}.{n % 256}.1", "spam", now + 600, now))
        await backend.add_ban(Ban("198.51.100.0/24", "a network", None, now))
        await backend.add_ban(Ban("2001:db8:5::/48", "a network", None, now))
        redis: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
        async with redis:
            await redis.config_resetstat()
            base = await _commands_run(redis)  # the INFO itself
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
            ran = await _commands_run(redis) - base - 1
    assert ran <= 8 * len(checks), f"{ran} Redis commands for {len(checks)} ban checks"


async def test_connecting_cut_short_gives_the_pool_slot_back() -> None:
    """A call given up while its connection was still being opened (Redis
    accepts and answers nothing) does not take a pool slot with it: after
    more such calls than the pool has slots, the pool still connects."""
    with running_redis() as redis:
        pool = new_pool(redis.url, max_connections=2, timeout_s=1.0, name="t")
        client: coredis.Redis[bytes] = coredis.Redis(connection_pool=pool)
        async with client:
            redis.pause()
            try:
                for _ in range(6):
                    with trio.move_on_after(0.3), suppress(coredis.exceptions.ConnectionError):
                        await pool.get_connection()
                    assert len(pool._available_connections) == 2  # both slots free again
            finally:
                redis.resume()
            with trio.fail_after(WAIT_S):
                assert await client.ping() == b"PONG"


async def test_a_redis_that_accepts_and_never_answers_does_not_use_up_the_pool(
    nursery: trio.Nursery,
) -> None:
    """Connections that never finish their handshake give their pool slot back.

    Behind the address, a Redis that accepts connections and answers nothing
    (frozen); each call gives up. Many more calls than the pool has
    connections, then the Redis answers again: calls work at once.
    """
    with running_redis() as first, running_redis() as second:
        proxy = BlackHole(first.port)
        await nursery.start(proxy.run)
        async with open_redis_backend(**options(proxy.url, new_prefix(), pool_size=2)) as backend:
            second.pause()
            proxy.swallow(second.port)
            try:
                for _ in range(8):
                    with trio.fail_after(OP_TIMEOUT_S + 2), pytest.raises(BackendUnavailable):
                        await backend.stats()
            finally:
                second.resume()
            with trio.fail_after(WAIT_S):
                while True:
                    try:
                        await backend.ping()  # (puts this server back in the empty Redis)
                        break
                    except BackendUnavailable:
                        await trio.sleep(0.1)
            assert await backend.stats() == Stats(online=0, waiting=0)
