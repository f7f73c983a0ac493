"""The WebSocket handshake (``connection.py``, ``admission.py``): refusals, socket slots
taken and given back.

Hostile clients, one raw socket at a time (``hostile.py`` says how).
"""

from __future__ import annotations

import struct

import msgspec
import pytest
import trio
from hostile import (
    CLOSED_AT_ONCE_S,
    assert_healthy,
    capture_logs,  # noqa: F401  (an autouse fixture)
    open_raw,
    open_session,
    read_response_head,
    read_until_closed,
    reset,
    sockets_from,
    text,
    tracebacks,
    upgrade_head,
    ws_frame,
)
from support import Harness, StartServer, wait_until


@pytest.mark.rule("protocol/handshake-rejections")
async def test_unparseable_origin_is_refused_403(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 1: an Origin that is not a URL is an origin that is not allowed."""
    stream = await open_raw(server)
    await stream.send_all(upgrade_head(f"/ws?token={server.token()}", extra="Origin: http://[\r\n"))
    status, _ = await read_response_head(stream)
    assert status == 403
    await assert_healthy(server)
    assert tracebacks(caplog) == []


@pytest.mark.parametrize("token", ["bad", None])
async def test_refused_upgrade_whose_client_left_at_once(
    server: Harness, caplog: pytest.LogCaptureFixture, token: str | None
) -> None:
    """Item 3: writing the refusal to a client that already closed (or reset)."""
    target = "/ws" if token is None else f"/ws?token={token}"
    for n in range(20):
        stream = await open_raw(server)
        await stream.send_all(upgrade_head(target))
        if n % 2:
            reset(stream)
        await stream.aclose()
    await assert_healthy(server)
    assert tracebacks(caplog) == []


async def test_simultaneous_upgrades_get_exactly_sockets_per_ip(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 8: 30 upgrades at once with a limit of 10: exactly 10 sockets."""
    server = await start_server(limits__sockets_per_ip=10)
    statuses: list[int] = []
    streams: list[trio.SocketStream] = []
    heads = [upgrade_head(f"/ws?token={server.token()}") for _ in range(30)]
    opened = [await open_raw(server) for _ in heads]

    async def upgrade(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(head)
        status, _ = await read_response_head(stream)
        statuses.append(status)
        streams.append(stream)

    async with trio.open_nursery() as nursery:
        for stream, head in zip(opened, heads, strict=True):
            nursery.start_soon(upgrade, stream, head)
    assert sorted(statuses) == [101] * 10 + [429] * 20
    await wait_until(lambda: len(server.ctx.hub.sessions) == 10)
    for stream in streams:
        await stream.aclose()
    await wait_until(lambda: sockets_from(server, "127.0.0.1") == 0)
    assert tracebacks(caplog) == []


@pytest.mark.parametrize("how", ["server closes", "client closes"])
@pytest.mark.rule("protocol/flush-before-close")
async def test_a_closed_socket_gives_back_its_slot_at_once(server: Harness, how: str) -> None:
    """Its sockets_per_ip slot is free as soon as the WebSocket is closed, however long the
    client keeps the TCP connection (this one never ends it)."""
    stream, _ = await open_session(server)
    await wait_until(lambda: sockets_from(server, "127.0.0.1") == 1)
    if how == "server closes":
        await stream.send_all(text("disconnect"))
    else:
        await stream.send_all(ws_frame(0x8, struct.pack("!H", 1000)))
    await wait_until(lambda: sockets_from(server, "127.0.0.1") == 0, CLOSED_AT_ONCE_S / 2)
    await stream.aclose()


@pytest.mark.rule("protocol/handshake-errors")
async def test_an_upgrade_while_draining_is_refused_503(start_server: StartServer) -> None:
    server = await start_server(server__drain_grace_s=30)
    staying = await server.connect()  # keeps the server draining
    server.stop.set()
    await staying.expect("server_draining")
    stream = await open_raw(server)
    await stream.send_all(upgrade_head(f"/ws?token={server.token()}"))
    answer = await read_until_closed(stream)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nRetry-After: 1\r\n" in head
    assert msgspec.json.decode(body)["error"] == "draining"
    await staying.send("disconnect")
    assert await staying.expect_closed() == 1000
