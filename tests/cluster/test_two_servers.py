"""Two real ``omiro serve`` processes on one Redis act as one service.

A client on each server is matched with the other; every relayed op crosses
both ways; next, leave_queue, disconnect, report (with an autoban by
reporters spread over both servers) and an admin ban (closing a socket on
the other server) work across servers.
"""

from __future__ import annotations

from typing import Any

import msgspec
import trio
from cluster_support import ADMIN_TOKEN, ServeProcess, connect
from support import Client
from trio_websocket import ConnectionClosed

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
