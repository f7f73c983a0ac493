"""The front door's routing by request line: what skips h11, and what still goes through it.

A connection's first ``GET /ws`` is parsed only by the WebSocket handshake;
a plain ``GET`` head is read without h11 when it is simple enough
(``http.heads.simple_get``); anything else is h11's to accept or refuse.
"""

from __future__ import annotations

import msgspec
import pytest
import trio
from support import WAIT_S, Harness

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


async def _exchange(server: Harness, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything answered until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.running.port)
    received = b""
    with trio.fail_after(WAIT_S):
        await stream.send_all(request)
        try:
            while chunk := await stream.receive_some(65536):
                received += chunk
        except trio.BrokenResourceError:
            pass  # a reset after the answer: the server closed with our bytes unread
    await stream.aclose()
    return received


@pytest.mark.rule("protocol/front-door")
async def test_a_first_get_ws_that_is_no_upgrade_is_refused_by_the_handshake(
    server: Harness,
) -> None:
    answer = await _exchange(server, b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 426 ")
    assert server.ctx.hub.sessions == {}


@pytest.mark.rule("protocol/front-door")
async def test_a_first_get_ws_the_handshake_cannot_read_is_refused_400(server: Harness) -> None:
    head = (
        f"GET /ws?token={server.token()} HTTP/1.1\r\nHost: 127.0.0.1\r\nBad header: x\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = await _exchange(server, head.encode())
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert server.ctx.hub.sessions == {}


async def test_a_session_head_h11_refuses_gets_no_token(server: Harness) -> None:
    answer = await _exchange(
        server, b"GET /session/new HTTP/1.1\r\nHost: 127.0.0.1\r\nBad header: x\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert server.metric("omiro_sessions_issued_total") == 0


async def test_a_session_head_only_h11_reads_is_still_answered_fast(server: Harness) -> None:
    """Bare line feeds: not read without h11, but h11 reads them (then the fast path answers)."""
    answer = await _exchange(server, b"GET /session/new HTTP/1.1\nHost: 127.0.0.1\n\n")
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"\r\nconnection: close" in head
    token = msgspec.json.decode(body)["token"]
    assert server.ctx.signer.verify(token, server.ctx.wall())
    assert server.metric("omiro_sessions_issued_total") == 1


async def test_a_simple_session_head_is_answered_with_a_token(server: Harness) -> None:
    answer = await _exchange(
        server, b"GET /session/new HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n"
    )
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert server.ctx.signer.verify(msgspec.json.decode(body)["token"], server.ctx.wall())


async def test_a_first_get_ws_head_with_no_end_in_16_kib_is_refused_431(server: Harness) -> None:
    head = f"GET /ws?token={server.token()} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode()
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"a" * 100) for n in range(200))  # ~22 KB
    answer = await _exchange(server, head + padding)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert server.ctx.hub.sessions == {}
