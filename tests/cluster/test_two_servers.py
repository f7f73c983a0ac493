"""Two real ``omiro serve`` processes on one Redis act as one service.

A client on each server is matched with the other; every relayed op crosses
both ways; next, leave_queue, disconnect, report (with an autoban by
reporters spread over both servers) and an admin ban (closing a socket on
the other server) work across servers; ``sockets_per_ip`` and
``nexts_per_minute`` are counted service-wide.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import coredis
import httpx
import msgspec
import pytest
import trio
from cluster_support import (
    ADMIN_TOKEN,
    SECRET,
    ServeProcess,
    assert_never_ended,
    chat_both_ways,
    cluster_env,
    connect,
    token,
    watched_pair,
)
from coredis.tokens import PureToken
from redis_support import RedisServer, new_prefix
from support import Client
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from omiro_trio.tokens import TokenSigner

Servers = tuple[ServeProcess, ServeProcess]
WAIT_S = 10.0


async def pair(nursery: trio.Nursery, a: ServeProcess, b: ServeProcess) -> tuple[Client, Client]:
    """A client on ``a`` (waits, so calls) matched with one on ``b``."""
    first = await connect(nursery, a)
    second = await connect(nursery, b)
    await first.send("join_queue")
    await first.expect("queued")
    await second.send("join_queue")
    found = await first.expect("match_found")
    other = await second.expect("match_found")
    assert (found["partner"], other["partner"]) == (second.session_id, first.session_id)
    assert found["match_id"] == other["match_id"]
    assert (found["should_call"], other["should_call"]) == (True, False)
    return first, second


async def frames_until_closed(client: Client) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    frames = []
    with trio.fail_after(WAIT_S):
        while True:
            try:
                frames.append(await client.recv())
            except ConnectionClosed as exc:
                return frames, exc.reason.code if exc.reason is not None else 0


RELAYED = [
    ("chat", {"message": "hello over there"}),
    ("typing", {"typing": True}),
    ("webrtc_offer", {"sdp": "v=0 offer"}),
    ("webrtc_answer", {"sdp": "v=0 answer"}),
    ("ice_candidate", {"candidate": {"candidate": "c", "sdpMid": "0", "sdpMLineIndex": 0}}),
    ("ice_candidate", {"candidate": None}),
]


@pytest.mark.rule("protocol/stats")
async def test_clients_on_two_servers_match_and_relay_every_op_both_ways(
    two_servers: Servers, nursery: trio.Nursery
) -> None:
    a, b = two_servers
    first, second = await pair(nursery, a, b)
    for sender, receiver in ((first, second), (second, first)):
        for op, data in RELAYED:
            await sender.send(op, data)
            got = await receiver.expect(op)
            assert got == {**data, "from": sender.session_id}
    status, stats = await a.aget("/stats")
    assert (status, stats) == (200, {"online": 2, "waiting": 0})
    assert await b.aget("/stats") == (200, {"online": 2, "waiting": 0})


async def test_next_leave_and_disconnect_reach_the_partner_on_the_other_server(
    two_servers: Servers, nursery: trio.Nursery
) -> None:
    a, b = two_servers
    first, second = await pair(nursery, a, b)
    await second.send("next")
    assert await first.expect("partner_disconnected") == {"reason": "next"}
    await second.expect("queued")
    # "first" rejoins: the former partners meet again (nobody else waits).
    await first.send("join_queue")
    await first.expect("match_found")
    await second.expect("match_found")
    await first.send("leave_queue")
    assert await second.expect("partner_disconnected") == {"reason": "left"}
    await first.send("chat", {"message": "anyone?"})
    assert (await first.expect("error"))["code"] == "not_matched"
    await first.send("join_queue")
    await first.expect("queued")
    await second.send("join_queue")
    await second.expect("match_found")
    await first.expect("match_found")
    await first.send("disconnect")
    assert await first.expect_closed() == 1000
    assert await second.expect("partner_disconnected") == {"reason": "left"}
    assert await a.aget("/stats") == (200, {"online": 1, "waiting": 0})


async def test_reports_from_both_servers_autoban_an_address_on_either(
    two_servers: Servers, nursery: trio.Nursery
) -> None:
    a, b = two_servers
    bad_ip = "198.51.100.66"
    for n in range(3):  # autoban_reporters = 3 distinct addresses
        here, there = (a, b) if n % 2 == 0 else (b, a)
        bad = await connect(nursery, here, ip=bad_ip)
        reporter = await connect(nursery, there, ip=f"203.0.113.{n + 1}")
        await bad.send("join_queue")
        await bad.expect("queued")
        await reporter.send("join_queue")
        await reporter.expect("match_found")
        await bad.expect("match_found")
        await reporter.send("chat", {"message": f"rude {n}"})
        await bad.expect("chat")
        await reporter.send("report", {"reason": "abuse"})
        if n < 2:
            assert await bad.expect("partner_disconnected") == {"reason": "reported"}
            await bad.send("disconnect")
            await bad.expect_closed()
        else:
            # The third report bans the address: its socket closes on its server.
            frames, code = await frames_until_closed(bad)
            assert code == 1008
            assert ("error", "banned") in [(op, data.get("code")) for op, data in frames]
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for server in (a, b):
        status, body = await server.aget("/admin/reports", headers=headers)
        assert status == 200
        assert sorted(r["reported_ip"] for r in body["reports"]) == [bad_ip] * 3
        status, body = await server.aget("/admin/bans", headers=headers)
        assert [ban["target"] for ban in body["bans"]] == [bad_ip]
    status, _ = await b.aget("/session/new", headers={"X-Forwarded-For": bad_ip})
    assert status == 403


async def test_an_admin_ban_on_one_server_closes_a_socket_on_the_other(
    two_servers: Servers, nursery: trio.Nursery
) -> None:
    a, b = two_servers
    victim = await connect(nursery, b, ip="192.0.2.44")
    bystander = await connect(nursery, b, ip="192.0.2.45")
    body = msgspec.json.encode({"target": "192.0.2.44", "reason": "abuse"})
    status, answer = await a.aget(
        "/admin/bans",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    assert status in (200, 201), answer
    assert (await victim.expect("error"))["code"] == "banned"
    assert await victim.expect_closed() == 1008
    await bystander.send("join_queue")
    await bystander.expect("queued")


def account_token(account: str) -> str:
    """A token carrying ``account``, as ``/session/new`` signs one after an oidc sign-in."""
    return TokenSigner(SECRET.encode(), 600).issue(time.time(), subject=account).token


@pytest.mark.rule("protocol/admin-bans", "protocol/admin-reports")
async def test_an_account_reported_and_banned_across_servers_is_closed_on_both(
    two_servers: Servers, nursery: trio.Nursery
) -> None:
    """The report is filed on the reporter's server, which asks Redis the account of
    the partner on the other; the account's ban closes its sockets on both servers
    (whatever their addresses) and leaves its address alone."""
    a, b = two_servers
    reporter = await connect(nursery, a, ip="192.0.2.70")
    victim = await connect(nursery, b, ip="192.0.2.71", token_=account_token("acct-v"))
    elsewhere = await connect(nursery, a, ip="198.51.100.71", token_=account_token("acct-v"))
    bystander = await connect(nursery, b, ip="192.0.2.71")
    await reporter.send("join_queue")
    await reporter.expect("queued")
    await victim.send("join_queue")
    await reporter.expect("match_found")
    await victim.expect("match_found")
    await reporter.send("report", {"reason": "spam"})
    await victim.expect("partner_disconnected")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(headers=admin) as http:
        (report,) = (await http.get(f"{b.url}/admin/reports")).json()["reports"]
        assert (report["reported_ip"], report["reported_account"]) == ("192.0.2.71", "acct-v")
        banned = await http.post(
            f"{a.url}/admin/reports/{report['id']}/ban",
            json={"duration_s": 600, "target": "account"},
        )
        assert banned.status_code == 200, banned.text
    for client in (victim, elsewhere):
        error = await client.expect("error")
        assert (error["code"], error["message"]) == ("banned", "this account is banned")
        assert await client.expect_closed() == 1008
    await bystander.send("join_queue")
    await bystander.expect("queued")
    url = f"{b.ws_url}?token={account_token('acct-v')}"
    with pytest.raises(ConnectionRejected) as rejected:
        async with open_websocket_url(url, extra_headers=[("X-Forwarded-For", "203.0.113.9")]):
            pass
    assert rejected.value.status_code == 403


@contextmanager
def servers_with(redis: RedisServer, **settings: str) -> Iterator[Servers]:
    """Two servers on one Redis (and one key prefix), with these settings."""
    env = cluster_env(redis, **settings)
    a = ServeProcess(env).start()
    try:
        b = ServeProcess(env).start()
    except BaseException:
        a.kill()
        raise
    try:
        yield a, b
    finally:
        for server in (a, b):
            server.kill()


@pytest.fixture
def limited_servers(redis_server: RedisServer) -> Iterator[Servers]:
    """Two servers with 3 sockets per address and 2 nexts a minute."""
    settings = {"OMIRO_LIMITS_SOCKETS_PER_IP": "3", "OMIRO_LIMITS_NEXTS_PER_MINUTE": "2"}
    with servers_with(redis_server, **settings) as servers:
        yield servers


async def _refused(server: ServeProcess, ip: str) -> int | None:
    """Open a socket from ``ip`` and close it: None if accepted, else the HTTP status."""
    url = f"{server.ws_url}?token={token()}"
    try:
        async with open_websocket_url(url, extra_headers=[("X-Forwarded-For", ip)]):
            return None
    except ConnectionRejected as exc:
        return int(exc.status_code)


async def test_sockets_per_ip_counts_sockets_on_every_server(
    limited_servers: Servers, nursery: trio.Nursery
) -> None:
    a, b = limited_servers
    ip = "198.51.100.7"
    held = [
        await connect(nursery, a, ip=ip),
        await connect(nursery, b, ip=ip),
        await connect(nursery, a, ip=ip),
    ]
    for server in (a, b):  # the fourth, on either server, is one too many
        assert await _refused(server, ip) == 429
    assert await _refused(b, "198.51.100.8") is None  # another address: its own count
    await held[0].send("disconnect")  # a socket on a ends: b may take one again
    await held[0].expect_closed()
    with trio.fail_after(WAIT_S):
        while (status := await _refused(b, ip)) is not None:
            assert status == 429  # the release is still on its way
            await trio.sleep(0.05)


async def test_nexts_per_minute_follow_the_session_to_another_server(
    limited_servers: Servers, nursery: trio.Nursery
) -> None:
    a, b = limited_servers
    same = token()
    first = await connect(nursery, a, token_=same)
    for _ in range(2):
        await first.send("next")
        await first.expect("queued")
    await first.send("disconnect")
    await first.expect_closed()
    with trio.fail_after(WAIT_S):
        while (await a.aget("/stats"))[1]["online"] != 0:  # noqa: ASYNC110 -- bounded polling
            await trio.sleep(0.05)
    again = await connect(nursery, b, token_=same)
    await again.send("next")
    assert (await again.expect("error"))["code"] == "rate_limited"


@pytest.mark.rule("protocol/unavailable")
async def test_a_relay_that_reaches_no_listener_keeps_the_match(
    nursery: trio.Nursery, redis_server: RedisServer
) -> None:
    """ "Nobody listens on the partner's server right now" is not "the partner left".

    b is frozen (for less than dead_after_s) and its bus connection is cut,
    so a relay to its user reaches no subscriber: the sender is told the
    frame was not delivered (``unavailable``), the match stays, and once b
    listens again the two chat on as before.
    """
    prefix = new_prefix()
    with servers_with(redis_server, OMIRO_REDIS_KEY_PREFIX=prefix) as (a, b):
        first, second = await watched_pair(nursery, a, b)
        redis: coredis.Redis[bytes] = coredis.Redis.from_url(redis_server.url)
        async with redis:
            channels = await redis.pubsub_channels(f"{prefix}bus:*")
            b.signal(signal.SIGSTOP)
            try:
                await redis.client_kill(type_=PureToken.PUBSUB)
                # a subscribes again at once; b, frozen, cannot.
                with trio.fail_after(WAIT_S):
                    while len(await redis.pubsub_channels(f"{prefix}bus:*")) != len(channels) - 1:  # noqa: ASYNC110
                        await trio.sleep(0.05)  # bounded polling of another process
                await first.send("chat", {"message": "anyone there?"})
                error = await first.next("error", WAIT_S)
                assert (error["code"], error["op"]) == ("unavailable", "chat")
            finally:
                b.signal(signal.SIGCONT)
        with trio.fail_after(WAIT_S):
            while True:
                with trio.move_on_after(1.0):
                    await chat_both_ways(first, second, "back", wait_s=1.0)
                    break
        assert_never_ended(first, second)
        assert "anyone there?" not in [c["message"] for c in second.seen("chat")]


@pytest.mark.rule("protocol/console-reports", "protocol/console-auth")
async def test_a_ban_from_the_console_on_one_server_closes_a_socket_on_the_other(
    two_servers: Servers, nursery: trio.Nursery
) -> None:
    """Accounts, sessions, reports and the audit log are shared: any server serves the
    console, and a ban made on one is in force on the other at once."""
    a, b = two_servers
    reporter = await connect(nursery, a, ip="192.0.2.60")
    victim = await connect(nursery, b, ip="192.0.2.61")
    await reporter.send("join_queue")
    await reporter.expect("queued")
    await victim.send("join_queue")
    await reporter.expect("match_found")
    await victim.expect("match_found")
    await victim.send("chat", {"message": "<i>crossing servers</i>"})
    await reporter.expect("chat")
    await reporter.send("report", {"reason": "harassment"})
    await victim.expect("partner_disconnected")

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(headers=admin) as http:
        made = await http.post(f"{b.url}/admin/moderators", json={"name": "ana"})
        assert made.status_code == 201, made.text
        password = made.json()["password"]
    async with httpx.AsyncClient() as console:
        signed = await console.post(
            f"{a.url}/admin/session", json={"name": "ana", "password": password}
        )
        assert signed.status_code == 200, signed.text
        csrf = {"X-CSRF-Token": signed.json()["csrf"]}
        # The session signed in on a is good on b: any server serves the console.
        queue = (await console.get(f"{b.url}/admin/queue")).json()["reports"]
        assert [r["reported_ip"] for r in queue] == ["192.0.2.61"]
        assert queue[0]["transcript"] == ["reported: <i>crossing servers</i>"]
        report_id = queue[0]["id"]
        banned = await console.post(
            f"{a.url}/admin/reports/{report_id}/ban",
            json={"duration_s": 600, "note": "cross-server"},
            headers=csrf,
        )
        assert banned.status_code == 200, banned.text
        assert (await victim.expect("error"))["code"] == "banned"
        assert await victim.expect_closed() == 1008
        seen = (await console.get(f"{b.url}/admin/reports/{report_id}")).json()
        assert seen["status"]["state"] == "actioned"
        again = await console.post(
            f"{b.url}/admin/reports/{report_id}/dismiss", json={}, headers=csrf
        )
        assert again.status_code == 409
        assert (await console.delete(f"{b.url}/admin/session", headers=csrf)).status_code == 204
        assert (await console.get(f"{a.url}/admin/queue")).status_code == 401
    async with httpx.AsyncClient(headers=admin) as http:
        entries = (await http.get(f"{b.url}/admin/audit")).json()["entries"]
    assert [(e["actor"], e["action"], e["report_id"]) for e in entries][:1] == [
        ("ana", "ban", report_id)
    ]
