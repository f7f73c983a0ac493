"""Sockets that die, stop reading, or outlive the server: nobody else suffers."""

from __future__ import annotations

import pytest
import trio
from support import (
    Client,
    RawClient,
    StartServer,
    flood_until_slow_consumer_closed,
    wait_until,
)


@pytest.mark.rule("protocol/close-codes", "protocol/liveness", "protocol/partner-reasons")
async def test_dead_peer_dropped_within_idle_timeout(start_server: StartServer) -> None:
    server = await start_server(server__idle_timeout_s=0.6)
    dead = await RawClient.connect(server)
    await dead.send("join_queue")
    partner = await server.connect()
    await partner.send("join_queue")
    await partner.expect("match_found")
    start = trio.current_time()
    # The dead peer never answers pings: within idle_timeout_s it is gone.
    assert await partner.expect("partner_disconnected", wait_s=3) == {"reason": "timeout"}
    assert trio.current_time() - start <= 0.6 + 0.3
    await wait_until(lambda: len(server.ctx.hub.sessions) == 1)


@pytest.mark.rule("protocol/liveness")
async def test_live_idle_client_is_kept(start_server: StartServer) -> None:
    server = await start_server(server__idle_timeout_s=0.4)
    a, b = await server.pair()
    # Several ping periods pass; both clients answer pings and stay matched.
    with trio.move_on_after(1.2):
        await a.expect("never")
    await a.send("chat", {"message": "still here"})
    assert (await b.expect("chat"))["message"] == "still here"


@pytest.mark.rule("protocol/close-codes", "protocol/slow-consumers")
async def test_slow_consumer_closed_4008_and_others_unaffected(start_server: StartServer) -> None:
    server = await start_server(
        server__send_queue=8,
        limits__max_chat_length=60000,
        limits__messages_per_second=10000,
        limits__message_burst=10000,
    )
    slow = await RawClient.connect(server, receive_buffer=4096)
    await slow.send("join_queue")
    flooder = await server.connect()
    await flooder.send("join_queue")
    await flooder.expect("match_found")
    c, d = await server.pair()
    await flood_until_slow_consumer_closed(server, flooder)
    # The other pair never noticed.
    with trio.fail_after(1):
        await c.send("chat", {"message": "fine?"})
        assert (await d.expect("chat"))["message"] == "fine?"
    await wait_until(lambda: len(server.ctx.hub.sessions) == 3)


@pytest.mark.rule(
    "protocol/close-codes", "protocol/flush-before-close", "protocol/msg-server-draining"
)
async def test_drain_tells_clients_then_closes_1012(start_server: StartServer) -> None:
    server = await start_server(server__drain_grace_s=0.5)
    a, b = await server.pair()
    waiting = await server.connect()
    await waiting.send("join_queue")
    await waiting.expect("queued")
    server.stop.set()
    for client in (a, b, waiting):
        assert await client.expect("server_draining") == {"reconnect_after_ms": 1000}
    await waiting.send("join_queue")  # no new matches while draining
    assert await waiting.expect("server_draining") == {"reconnect_after_ms": 1000}
    for client in (a, b, waiting):
        assert await client.expect_closed() == 1012
    with trio.fail_after(5):
        await server.stopped.wait()


async def test_drain_ends_early_when_clients_leave(start_server: StartServer) -> None:
    server = await start_server(server__drain_grace_s=30)
    client: Client = await server.connect()
    server.stop.set()
    await client.expect("server_draining")
    start = trio.current_time()
    await client.send("disconnect")
    assert await client.expect_closed() == 1000
    with trio.fail_after(5):  # far less than the 30 s grace
        await server.stopped.wait()
    assert trio.current_time() - start < 5
