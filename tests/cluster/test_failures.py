"""Two real servers on one Redis, when one server is killed or Redis restarts empty."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
from cluster_support import DEATH_BOUND_S, ServeProcess, cluster_env, connect, token
from redis_support import RedisServer, running_redis
from support import Client
from trio_websocket import ConnectionRejected, open_websocket_url

Servers = tuple[ServeProcess, ServeProcess]
RECOVERY_S = 15.0


async def until(check: Callable[[], Awaitable[bool]], wait_s: float) -> None:
    """Bounded polling of another process's state."""
    with trio.fail_after(wait_s):
        while not await check():  # noqa: ASYNC110 -- another process's state
            await trio.sleep(0.1)


async def test_kill_9_of_one_server_frees_its_sessions_within_the_bound(
    two_servers: Servers, nursery: trio.Nursery
) -> None:
    a, b = two_servers
    x_token = token()
    x = await connect(nursery, a, token_=x_token)
    y = await connect(nursery, b)
    await x.send("join_queue")
    await x.expect("queued")
    await y.send("join_queue")
    await y.expect("match_found")
    waiter = await connect(nursery, a)
    await waiter.send("join_queue", {"mode": "text"})
    await waiter.expect("queued")
    assert await b.aget("/stats") == (200, {"online": 3, "waiting": 1})

    a.kill()
    start = trio.current_time()
    assert await y.expect("partner_disconnected", wait_s=DEATH_BOUND_S) == {"reason": "left"}
    assert trio.current_time() - start < DEATH_BOUND_S
    # Its waiting session is gone from the queue: a newcomer is not matched with it.
    newcomer = await connect(nursery, b)
    await newcomer.send("join_queue", {"mode": "text"})
    await newcomer.expect("queued")
    await newcomer.expect_nothing(0.5)
    assert await b.aget("/stats") == (200, {"online": 2, "waiting": 1})
    # Its sessions can reconnect (to the other server) with their tokens: no 409.
    back = await connect(nursery, b, token_=x_token)
    assert back.session_id == x.session_id
    assert trio.current_time() - start < DEATH_BOUND_S


async def test_redis_restarted_empty_under_two_servers(nursery: trio.Nursery) -> None:
    with running_redis() as redis:
        env = cluster_env(redis)
        a = await trio.to_thread.run_sync(lambda: ServeProcess(env).start())
        b = await trio.to_thread.run_sync(lambda: ServeProcess(env).start())
        try:
            await _restart_scenario(nursery, redis, a, b)
        finally:
            for server in (a, b):
                server.kill()


async def _restart_scenario(
    nursery: trio.Nursery, redis: RedisServer, a: ServeProcess, b: ServeProcess
) -> None:
    async def matched(first_on: ServeProcess, second_on: ServeProcess) -> tuple[Client, Client]:
        first = await connect(nursery, first_on)
        second = await connect(nursery, second_on)
        await first.send("join_queue")
        await first.expect("queued")
        await second.send("join_queue")
        await first.expect("match_found")
        await second.expect("match_found")
        return first, second

    x, y = await matched(a, b)  # across servers
    p, q = await matched(a, a)  # on one server
    waiter = await connect(nursery, b)
    await waiter.send("join_queue", {"mode": "text"})
    await waiter.expect("queued")
    idle = await connect(nursery, b)

    redis.stop()
    for server in (a, b):
        await until(lambda server=server: _status(server, "/readyz", 503), RECOVERY_S)
    # A pair on one server keeps chatting.
    await p.send("chat", {"message": "still here"})
    assert (await q.expect("chat"))["message"] == "still here"
    # Operations that need Redis answer with an error, not silence.
    await x.send("chat", {"message": "lost?"})
    error = await x.expect("error")
    assert (error["code"], error["op"]) == ("unavailable", "chat")
    await idle.send("join_queue")
    error = await idle.expect("error")
    assert (error["code"], error["op"]) == ("unavailable", "join_queue")
    for server in (a, b):
        status, _ = await server.aget("/session/new")
        assert status == 503
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(f"{a.ws_url}?token={token()}"):
            pass  # pragma: no cover
    assert rejected.value.status_code == 503

    redis.start()  # empty: no persistence
    for server in (a, b):
        await until(lambda server=server: _status(server, "/readyz", 200), RECOVERY_S)
    # Every server puts its live sessions, waiting entries and matches back.
    expected = {"online": 6, "waiting": 1}
    await until(lambda: _stats(a, expected), RECOVERY_S)
    await x.send("chat", {"message": "back again"})
    assert (await y.expect("chat"))["message"] == "back again"
    await y.send("chat", {"message": "welcome back"})
    assert (await x.expect("chat"))["message"] == "welcome back"
    # The waiting client is matched without reconnecting.
    newcomer = await connect(nursery, a)
    await newcomer.send("join_queue", {"mode": "text"})
    found = await waiter.expect("match_found")
    assert found["partner"] == newcomer.session_id
    assert (await newcomer.expect("match_found"))["partner"] == waiter.session_id
    # Nothing crashed.
    for server in (a, b):
        assert server.proc is not None
        assert server.proc.poll() is None
        assert "Traceback" not in server.log()


async def _status(server: ServeProcess, path: str, expected: int) -> bool:
    status, _ = await server.aget(path)
    return status == expected


async def _stats(server: ServeProcess, expected: dict[str, int]) -> bool:
    status, body = await server.aget("/stats")
    return status == 200 and body == expected
