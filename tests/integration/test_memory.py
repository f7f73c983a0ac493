"""Issue 11: a closed connection is freed by reference counting alone.

With the cyclic collector off, every object a connection made (its session,
its engine connection and protocol, its cancel scope and nursery) must be
gone as soon as the connection's handler has finished: a reference cycle
would keep it until a full collection, which a busy server runs rarely.
That holds for a connection that lived a full life (matched, relayed,
pressed next) and was then closed by the server (4029, 4008), not only for
one that left cleanly.
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
import trio
from support import (
    Client,
    Harness,
    RawClient,
    StartServer,
    flood_until_slow_consumer_closed,
    wait_until,
)
from trio_websocket import ConnectionClosed


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _refs(server: Harness, client: Client | str) -> dict[str, weakref.ref[object]]:
    session_id = client if isinstance(client, str) else client.session_id
    session = server.ctx.hub.sessions[session_id]
    conn = session.outlet
    assert conn is not None
    objects: dict[str, object] = {
        "session": session,
        "connection": conn,
        "protocol": conn.proto,  # type: ignore[attr-defined]
        "cancel scope": session.cancel_scope,
        "nursery": conn._nursery,  # type: ignore[attr-defined]  # the connection's, lent
    }
    return {name: weakref.ref(obj) for name, obj in objects.items()}


async def _dead(refs: dict[str, weakref.ref[object]]) -> None:
    def alive() -> list[str]:
        return [name for name, ref in refs.items() if ref() is not None]

    # Bounded polling: the handler finishes its close handshake first.
    with trio.move_on_after(5):
        while alive():  # noqa: ASYNC110 - polling state owned by the server
            await trio.sleep(0.01)
    assert alive() == [], f"held after close (a reference cycle?): {alive()}"


async def test_closed_connections_are_freed_without_the_collector(
    server: Harness, no_gc: None
) -> None:
    a, b = await server.pair()
    await a.send("chat", {"message": "hello"})
    await b.expect("chat")
    refs_a = _refs(server, a)
    refs_b = _refs(server, b)

    # a leaves with a clean close: the server closes with 1000 (its session is cancelled).
    await a.send("disconnect")
    assert await a.expect_closed() == 1000
    await b.expect("partner_disconnected")
    await wait_until(lambda: a.session_id not in server.ctx.hub.sessions)
    await _dead(refs_a)

    # b's socket just ends: the server reads end of stream.
    await b.ws.aclose()
    await wait_until(lambda: not server.ctx.hub.sessions)
    await _dead(refs_b)


async def test_rate_limited_connection_leaves_nothing(
    start_server: StartServer, no_gc: None
) -> None:
    server = await start_server(limits__message_burst=2, limits__messages_per_second=1)
    client = await server.connect()
    refs = _refs(server, client)
    for _ in range(20):
        try:
            await client.send("typing", {"typing": True})
        except ConnectionClosed:
            break  # the server already closed: what follows reads its code
    assert await client.expect_closed() == 4029
    await wait_until(lambda: not server.ctx.hub.sessions)
    await _dead(refs)


async def test_matched_relayed_next_then_rate_limited_connection_leaves_nothing(
    start_server: StartServer, no_gc: None
) -> None:
    server = await start_server(limits__message_burst=8, limits__messages_per_second=1)
    a, b = await server.pair()
    await a.send("chat", {"message": "hello"})
    assert (await b.expect("chat"))["message"] == "hello"
    await a.send("next")
    assert await b.expect("partner_disconnected") == {"reason": "next"}
    await a.expect("queued")
    c = await server.connect()
    await c.send("join_queue")
    await a.expect("match_found")  # a searched again after next and meets c
    await c.expect("match_found")
    refs = _refs(server, a)
    for _ in range(100):
        try:
            await a.send("typing", {"typing": True})
        except ConnectionClosed:
            break  # the server already closed: what follows reads its code
    assert await a.expect_closed() == 4029
    with trio.fail_after(5):
        op, data = await c.recv()
        while op == "typing":  # what was relayed before the limit bit
            op, data = await c.recv()
    assert (op, data) == ("partner_disconnected", {"reason": "left"})
    await wait_until(lambda: a.session_id not in server.ctx.hub.sessions)
    await _dead(refs)


async def test_matched_relayed_next_then_slow_consumer_leaves_nothing(
    start_server: StartServer, no_gc: None
) -> None:
    server = await start_server(
        server__send_queue=8,
        limits__max_chat_length=60000,
        limits__messages_per_second=10000,
        limits__message_burst=10000,
    )
    slow = await RawClient.connect(server, receive_buffer=4096)  # reads nothing
    await wait_until(lambda: len(server.ctx.hub.sessions) == 1)
    (slow_id,) = server.ctx.hub.sessions
    await slow.send("join_queue")
    first = await server.connect()
    await first.send("join_queue")
    await first.expect("match_found")
    await slow.send("chat", {"message": "hello"})
    assert (await first.expect("chat"))["message"] == "hello"
    await slow.send("next")
    assert await first.expect("partner_disconnected") == {"reason": "next"}
    flooder = await server.connect()
    await flooder.send("join_queue")
    await flooder.expect("match_found")  # slow searched again after next
    refs = _refs(server, slow_id)
    await flood_until_slow_consumer_closed(server, flooder)
    await wait_until(lambda: slow_id not in server.ctx.hub.sessions)
    await _dead(refs)
    await slow.stream.aclose()
