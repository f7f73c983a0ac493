"""Faults of Redis and of servers, with the default timers, against real processes.

Each test runs real ``omiro serve`` processes on a real redis-server of its
own, breaks something the way production breaks it, and holds the bar of
docs/operations.md ("Faults"):

* a pair whose two members stay connected is never ended by a fault of
  Redis or of a server that is not theirs;
* a client told its match ended is never relayed to again (and a frame its
  sender was told failed never arrives late);
* a match is formed only with a live session;
* after the fault the service converges within the stated bound, and
  Redis's own records agree (every match symmetric, nobody matched or
  waiting without a live session).

A healthy pair is watched for a while after each fault (``HOLD_S``: two of
the hub's resync periods), chatting all along, so that a late repair that
ends it would be seen.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import trio
from cluster_support import (
    DEATH_BOUND_S,
    RECOVERY_BOUND_S,
    BlackHole,
    ServeProcess,
    Watched,
    assert_never_ended,
    chat_both_ways,
    chats_again,
    chatter,
    cluster_env,
    shared_state_faults,
    status_is,
    token,
    until,
    watched_pair,
)
from redis_support import RedisServer, new_prefix, running_redis
from trio_websocket import ConnectionRejected

from omiro_trio.hub import SYNC_INTERVAL_S, SYNC_RETRY_S

HOLD_S = 2 * (SYNC_INTERVAL_S + SYNC_RETRY_S)
OUTAGE_S = 3 * 1.0 + 1.0 + 4.0  # a call's bound (3 timeouts + 1 s), plus the machine's slack


async def start_servers(env: dict[str, str], count: int = 2) -> list[ServeProcess]:
    servers: list[ServeProcess] = []
    try:
        for _ in range(count):
            server = ServeProcess(env)
            await trio.to_thread.run_sync(server.start)
            servers.append(server)
    except BaseException:
        for server in servers:
            server.kill()
        raise
    return servers


def stop_all(servers: list[ServeProcess]) -> None:
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.signal(signal.SIGCONT)  # a frozen one cannot die of SIGKILL's cleanup
        server.kill()
    keep = os.environ.get("OMIRO_TEST_LOG_DIR")  # for looking into a failure
    if keep:
        for n, server in enumerate(servers):
            name = f"{os.environ.get('PYTEST_CURRENT_TEST', 'test').split(' ')[0]}-{n}.log"
            (Path(keep) / name.replace("/", "_").replace("::", "-")).write_text(server.log())


async def hold(pairs: list[tuple[Watched, Watched]], seconds: float) -> None:
    """Keep every pair chatting for ``seconds``; each chat must arrive."""
    end = trio.current_time() + seconds
    round_ = 0
    while trio.current_time() < end:
        round_ += 1
        for first, second in pairs:
            await chat_both_ways(first, second, f"hold {round_}")
        await trio.sleep(0.5)  # pacing the chats, not waiting for anything


def no_traceback(servers: list[ServeProcess]) -> None:
    for server in servers:
        log = server.log()
        at = log.find("Traceback")
        assert at < 0, f"a traceback in a server's log: {log[max(0, at - 300) : at + 1500]}"


async def test_redis_restarted_empty_ends_no_match_and_everything_is_put_back(
    nursery: trio.Nursery,
) -> None:
    with running_redis() as redis:
        prefix = new_prefix()
        servers = await start_servers(cluster_env(redis, prefix))
        a, b = servers
        try:
            across = await watched_pair(nursery, a, b)
            local = await watched_pair(nursery, a, a)
            waiter = await Watched.open(nursery, b)
            await waiter.send("join_queue", {"mode": "video"})
            await waiter.next("queued")
            idle = await Watched.open(nursery, b)
            talking = trio.Event()
            await nursery.start(chatter, [across, local], talking)

            redis.stop()
            for server in servers:
                await until(lambda s=server: status_is(s, "/readyz", 503), OUTAGE_S)
            # A pair on one server keeps chatting; what needs Redis answers an error.
            await chat_both_ways(*local, "no redis")
            await across[0].send("chat", {"message": "lost?"})
            error = await across[0].next("error", OUTAGE_S)
            assert (error["code"], error["op"]) == ("unavailable", "chat")
            await idle.send("join_queue", {"mode": "text"})
            error = await idle.next("error", OUTAGE_S)
            assert (error["code"], error["op"]) == ("unavailable", "join_queue")
            for server in servers:
                assert (await server.aget("/session/new"))[0] == 503

            redis.start()  # empty: no persistence
            for server in servers:
                await until(lambda s=server: status_is(s, "/readyz", 200), RECOVERY_BOUND_S)
            # Every server put back its sessions, waiting entries and matches.
            await until(lambda: stats_are(a, 6, 1), RECOVERY_BOUND_S)
            await chats_again(*across, RECOVERY_BOUND_S)
            talking.set()
            newcomer = await Watched.open(nursery, a)
            await newcomer.send("join_queue", {"mode": "video"})
            assert (await waiter.next("match_found"))["partner"] == newcomer.id
            assert (await newcomer.next("match_found"))["partner"] == waiter.id
            assert await shared_state_faults(redis.url, prefix) == []

            await hold([across, local, (waiter, newcomer)], HOLD_S)
            assert_never_ended(*across, *local, waiter, newcomer)
            assert "lost?" not in [c["message"] for c in across[1].seen("chat")]
            assert await shared_state_faults(redis.url, prefix) == []
            no_traceback(servers)
        finally:
            stop_all(servers)


async def test_redis_frozen_past_dead_after_ends_no_match_and_runs_nothing_late(
    nursery: trio.Nursery,
) -> None:
    with running_redis() as redis:
        prefix = new_prefix()
        servers = await start_servers(cluster_env(redis, prefix))
        a, b = servers
        try:
            across = await watched_pair(nursery, a, b)
            local = await watched_pair(nursery, b, b)
            waiter = await Watched.open(nursery, a)
            await waiter.send("join_queue", {"mode": "video"})
            await waiter.next("queued")
            talking = trio.Event()
            await nursery.start(chatter, [local], talking)

            redis.pause()
            frozen_at = trio.current_time()
            try:
                # Frames sent while Redis is frozen are refused, and stay refused.
                for n in range(3):
                    await across[0].send("chat", {"message": f"frozen {n}"})
                    error = await across[0].next("error", OUTAGE_S)
                    assert (error["code"], error["op"]) == ("unavailable", "chat")
                await chat_both_ways(*local, "frozen redis")
                # Longer than dead_after_s and past a sweep of every server.
                await trio.sleep_until(frozen_at + DEATH_BOUND_S)
            finally:
                redis.resume()
            await chats_again(*across, RECOVERY_BOUND_S)
            talking.set()
            newcomer = await Watched.open(nursery, b)
            await newcomer.send("join_queue", {"mode": "video"})
            assert (await newcomer.next("match_found", RECOVERY_BOUND_S))["partner"] == waiter.id
            assert (await waiter.next("match_found"))["partner"] == newcomer.id

            await hold([across, local, (waiter, newcomer)], HOLD_S)
            assert_never_ended(*across, *local, waiter, newcomer)
            late = [c for c in across[1].seen("chat") if c["message"].startswith("frozen")]
            assert late == [], "a frame its sender was told failed arrived after all"
            for server in servers:  # the chat text is never logged, not even in an error
                assert "frozen 0" not in server.log()
            assert await shared_state_faults(redis.url, prefix) == []
            no_traceback(servers)
        finally:
            stop_all(servers)


async def test_a_black_holed_redis_is_left_for_the_new_one_behind_its_address(
    nursery: trio.Nursery,
) -> None:
    with running_redis() as old, running_redis() as new:
        proxy = BlackHole(old.port)
        await nursery.start(proxy.run)
        prefix = new_prefix()
        servers = await start_servers(cluster_env(old, prefix, OMIRO_REDIS_URL=proxy.url))
        a, b = servers
        try:
            across = await watched_pair(nursery, a, b)
            local = await watched_pair(nursery, a, a)
            waiter = await Watched.open(nursery, b)
            await waiter.send("join_queue", {"mode": "video"})
            await waiter.next("queued")

            talking = trio.Event()
            await nursery.start(chatter, [across, local], talking)
            # The old Redis's host is lost (or failed over): its connections
            # stay open and silent; new ones reach a fresh, empty Redis.
            proxy.swallow(new.port)
            await chats_again(*across, RECOVERY_BOUND_S + OUTAGE_S)
            talking.set()
            for server in servers:
                await until(lambda s=server: status_is(s, "/readyz", 200), RECOVERY_BOUND_S)
            await until(lambda: stats_are(a, 5, 1), RECOVERY_BOUND_S)
            newcomer = await Watched.open(nursery, a)
            await newcomer.send("join_queue", {"mode": "video"})
            assert (await newcomer.next("match_found"))["partner"] == waiter.id
            assert (await waiter.next("match_found"))["partner"] == newcomer.id

            await hold([across, local, (waiter, newcomer)], HOLD_S)
            assert_never_ended(*across, *local, waiter, newcomer)
            assert await shared_state_faults(new.url, prefix) == []
            no_traceback(servers)
        finally:
            stop_all(servers)


async def test_a_server_frozen_past_its_sweep_and_resumed_takes_nothing_back(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    prefix = new_prefix()
    servers = await start_servers(cluster_env(redis_server, prefix))
    a, b = servers
    try:
        x_token = token()
        x = await Watched.open(nursery, a, token_=x_token)
        y = await Watched.open(nursery, b)
        await x.send("join_queue", {"mode": "text"})
        await x.next("queued")
        await y.send("join_queue", {"mode": "text"})
        await x.next("match_found")
        await y.next("match_found")
        bystanders = await watched_pair(nursery, b, b)
        talking = trio.Event()
        await nursery.start(chatter, [bystanders], talking)

        a.signal(signal.SIGSTOP)
        frozen_at = trio.current_time()
        try:
            assert await y.next("partner_disconnected", DEATH_BOUND_S) == {"reason": "left"}
            assert trio.current_time() - frozen_at < DEATH_BOUND_S
            # x's user gives up on the frozen server and comes back on b with
            # its token (the protocol allows it), and is matched there.
            moved = await _reconnect(nursery, b, x_token, DEATH_BOUND_S)
            await moved.send("join_queue", {"mode": "text"})
            await moved.next("queued")
            partner = await Watched.open(nursery, b)
            await partner.send("join_queue", {"mode": "text"})
            assert (await moved.next("match_found"))["partner"] == partner.id
            assert (await partner.next("match_found"))["partner"] == moved.id
            await nursery.start(chatter, [(moved, partner)], talking)
        finally:
            a.signal(signal.SIGCONT)
        # The resumed server lets go of its old socket, and of nothing else.
        with trio.fail_after(RECOVERY_BOUND_S):
            await x.closed.wait()
        talking.set()
        await hold([(moved, partner), bystanders], HOLD_S)
        assert_never_ended(moved, partner, *bystanders)
        assert y.seen("partner_disconnected") == [{"reason": "left"}]
        assert await shared_state_faults(redis_server.url, prefix) == []
        no_traceback(servers)
    finally:
        stop_all(servers)


async def test_a_killed_servers_waiting_users_are_never_matched_with_newcomers(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    prefix = new_prefix()
    servers = await start_servers(cluster_env(redis_server, prefix))
    a, b = servers
    try:
        bystanders = await watched_pair(nursery, b, b)
        doomed = []
        for mode in ("video", "text"):
            waiting = await Watched.open(nursery, a)
            await waiting.send("join_queue", {"mode": mode})
            await waiting.next("queued")
            doomed.append(waiting.id)

        a.kill()
        killed_at = trio.current_time()
        newcomers = []
        for n, mode in enumerate(("video", "video", "text", "text")):
            newcomer = await Watched.open(nursery, b)
            await newcomer.send("join_queue", {"mode": mode})
            newcomers.append(newcomer)
            if n % 2 == 0:  # the first of each pair waits: never with a dead user
                await newcomer.next("queued")
        first, second, third, fourth = newcomers
        for waited, joined in ((first, second), (third, fourth)):
            assert (await waited.next("match_found"))["partner"] == joined.id
            assert (await joined.next("match_found"))["partner"] == waited.id
        for newcomer in newcomers:
            partners = [f["partner"] for f in newcomer.seen("match_found")]
            assert not set(partners) & set(doomed), "matched with a dead server's user"
        await until(lambda: stats_are(b, 6, 0), DEATH_BOUND_S)  # the dead ones swept
        assert trio.current_time() - killed_at < DEATH_BOUND_S
        await chat_both_ways(*bystanders, "still here")
        assert_never_ended(*bystanders, *newcomers)
        assert await shared_state_faults(redis_server.url, prefix) == []
        no_traceback([b])
    finally:
        stop_all(servers)


async def test_kill_9_of_one_server_frees_its_sessions_within_the_bound(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    prefix = new_prefix()
    servers = await start_servers(cluster_env(redis_server, prefix))
    a, b = servers
    try:
        x_token = token()
        x = await Watched.open(nursery, a, token_=x_token)
        y = await Watched.open(nursery, b)
        await x.send("join_queue", {"mode": "text"})
        await x.next("queued")
        await y.send("join_queue", {"mode": "text"})
        await y.next("match_found")
        assert await b.aget("/stats") == (200, {"online": 2, "waiting": 0})

        a.kill()
        start = trio.current_time()
        assert await y.next("partner_disconnected", DEATH_BOUND_S) == {"reason": "left"}
        # Its sessions can come back (to the other server) with their tokens: no 409.
        back = await _reconnect(nursery, b, x_token, DEATH_BOUND_S)
        assert back.id == x.id
        assert trio.current_time() - start < DEATH_BOUND_S
        assert await b.aget("/stats") == (200, {"online": 2, "waiting": 0})
    finally:
        stop_all(servers)


async def _reconnect(
    nursery: trio.Nursery, server: ServeProcess, token_: str, wait_s: float
) -> Watched:
    """Connect with ``token_``, retrying while the session is still held (409)."""
    with trio.fail_after(wait_s):
        while True:
            try:
                return await Watched.open(nursery, server, token_=token_)
            except ConnectionRejected as exc:
                if exc.status_code != 409:
                    raise
            await trio.sleep(0.2)  # the sweep is on its way


async def stats_are(server: ServeProcess, online: int, waiting: int) -> bool:
    return await server.aget("/stats") == (200, {"online": online, "waiting": waiting})
