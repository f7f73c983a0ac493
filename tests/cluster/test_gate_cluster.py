"""The entry gate on two real ``omiro serve`` processes sharing one Redis.

Invites are one store for the service: a code made on one server lets people
in on either, its uses counted once for both (and never past its count when
both take them at once); a gate pass set by one server is good on the
other. Raid mode turned on through one server refuses newcomers on both
within ``raid.REFRESH_S``, while a pair matched across the two keeps
chatting; turned off, both let people in again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio
from cluster_support import (
    ADMIN_TOKEN,
    ServeProcess,
    assert_never_ended,
    chat_both_ways,
    cluster_env,
    status_is,
    until,
    watched_pair,
)
from redis_support import RedisServer

from omiro_trio.gate.passes import COOKIE
from omiro_trio.gate.raid import REFRESH_S

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WAIT_S = 10.0
SLACK_S = 2.0  # a shared machine's scheduling delays


@pytest.fixture
def invite_servers(redis_server: RedisServer) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    env = cluster_env(redis_server, OMIRO_GATE_KIND="invite")
    a = ServeProcess(env).start()
    try:
        b = ServeProcess(env).start()
    except BaseException:
        a.kill()
        raise
    yield a, b
    for server in (a, b):
        server.kill()


async def _enter(
    server: ServeProcess, code: str, ip: str
) -> tuple[int, dict[str, Any], str | None]:
    """One visitor from ``ip`` (told through X-Forwarded-For: the tries are per client)."""
    headers = {"X-Forwarded-For": ip}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=WAIT_S) as http:
        answer = await http.post("/gate/invite", json={"code": code})
        body = answer.json() if answer.status_code != 204 else {}
        return answer.status_code, body, http.cookies.get(COOKIE)


async def test_invite_uses_are_shared_by_both_servers(
    invite_servers: tuple[ServeProcess, ServeProcess],
) -> None:
    a, b = invite_servers
    async with httpx.AsyncClient(base_url=a.url, timeout=WAIT_S) as admin:
        made = await admin.post("/admin/invites", json={"uses": 3}, headers=ADMIN)
        assert made.status_code == 201
        code = made.json()["code"]
    async with httpx.AsyncClient(base_url=b.url, timeout=WAIT_S) as admin:
        listed = (await admin.get("/admin/invites", headers=ADMIN)).json()["invites"]
        assert [i["id"] for i in listed] == [made.json()["invite"]["id"]]
    outcomes: list[tuple[int, str]] = []
    passes: list[str] = []

    async def enter(server: ServeProcess, ip: str) -> None:
        status, body, cookie = await _enter(server, code, ip)
        outcomes.append((status, body.get("reason", "")))
        if cookie:
            passes.append(cookie)

    with trio.fail_after(WAIT_S):
        async with trio.open_nursery() as nursery:
            for n in range(8):  # both servers at once, more tries than uses
                nursery.start_soon(enter, (a, b)[n % 2], f"198.51.100.{n + 1}")
    assert sorted(outcomes) == [(204, "")] * 3 + [(403, "used_up")] * 5
    # A pass set by either server is good on both.
    for cookie in passes:
        for server in (a, b):
            async with httpx.AsyncClient(
                base_url=server.url, cookies={COOKIE: cookie}, timeout=WAIT_S
            ) as http:
                assert (await http.get("/session/new")).status_code == 200
    async with httpx.AsyncClient(base_url=a.url, timeout=WAIT_S) as admin:
        invite_id = made.json()["invite"]["id"]
        assert (await admin.delete(f"/admin/invites/{invite_id}", headers=ADMIN)).status_code == 204
    status, body, _ = await _enter(b, code, "198.51.100.99")
    assert (status, body["reason"]) == (403, "unknown")


async def test_raid_mode_pauses_newcomers_on_every_server_while_a_pair_chats(
    redis_server: RedisServer,
) -> None:
    env = cluster_env(redis_server)
    a = ServeProcess(env).start()
    b = ServeProcess(env).start()
    try:
        async with trio.open_nursery() as nursery:
            first, second = await watched_pair(nursery, a, b)
            async with httpx.AsyncClient(timeout=WAIT_S) as http:
                on = await http.put(
                    f"{a.url}/admin/raid", json={"on": True, "retry_after_s": 60}, headers=ADMIN
                )
                assert on.status_code == 200
                assert (await http.get(f"{a.url}/session/new")).status_code == 503  # at once
                await until(lambda: status_is(b, "/session/new", 503), REFRESH_S + SLACK_S)
                paused = await http.get(f"{b.url}/session/new")
                assert paused.json()["error"] == "paused"
                assert paused.headers["retry-after"] == "60"
                assert (await http.get(f"{b.url}/admin/raid", headers=ADMIN)).json()["on"] is True
                for n in range(3):
                    await chat_both_ways(first, second, f"during the raid {n}")
                await http.put(f"{b.url}/admin/raid", json={"on": False}, headers=ADMIN)
                assert (await http.get(f"{b.url}/session/new")).status_code == 200
                await until(lambda: status_is(a, "/session/new", 200), REFRESH_S + SLACK_S)
            await chat_both_ways(first, second, "after the raid")
            assert_never_ended(first, second)
            nursery.cancel_scope.cancel()
    finally:
        for server in (a, b):
            server.kill()
