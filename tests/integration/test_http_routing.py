"""The HTTP layer's routing of later requests (``http/streams.py``): a ``/ws`` upgrade as
any request of a kept-alive connection, request boundaries found for every body.

Hostile clients, one raw socket at a time (``hostile.py`` says how).
"""

from __future__ import annotations

import httpx
import pytest
import trio
from hostile import (
    ADMIN_TOKEN,
    WAIT_S,
    assert_healthy,
    capture_logs,  # noqa: F401  (an autouse fixture)
    open_raw,
    read_response_head,
    read_until_closed,
    text,
    tracebacks,
    upgrade_head,
)
from support import Harness, StartServer, wait_until


@pytest.mark.rule("protocol/front-door")
async def test_websocket_upgrade_as_second_request_of_a_kept_alive_connection(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    stream = await open_raw(server)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    status, rest = await read_response_head(stream)
    assert status == 200
    length = 0
    # The body of /healthz is small: read it whole before the next request.
    while b"ok" not in rest and length < 3:
        rest += await stream.receive_some(65536)
        length += 1
    await stream.send_all(upgrade_head(f"/ws?token={server.token()}"))
    status, rest = await read_response_head(stream)
    assert status == 101
    await wait_until(lambda: len(server.ctx.hub.sessions) == 1)
    await stream.send_all(text("disconnect"))
    await read_until_closed(stream)
    await wait_until(lambda: not server.ctx.hub.sessions)
    await assert_healthy(server)
    assert tracebacks(caplog) == []


@pytest.mark.rule("protocol/front-door")
async def test_pipelined_upgrade_waits_for_the_previous_response(server: Harness) -> None:
    """An upgrade sent right behind a request is served after that request's answer."""
    stream = await open_raw(server)
    await stream.send_all(
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        + upgrade_head(f"/ws?token={server.token()}")
    )
    received = b""
    with trio.fail_after(WAIT_S):
        while received.count(b"\r\n\r\n") < 2:
            received += await stream.receive_some(65536)
    first, _, second = received.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 101" in second
    await stream.aclose()


async def test_upgrade_after_a_chunked_body_on_the_same_connection(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Request boundaries are found for chunked bodies too: the upgrade after one works."""
    server = await start_server(admin__token=ADMIN_TOKEN)
    stream = await open_raw(server)
    body = b'{"target": "192.0.2.77", "duration_s": 60}'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:]))
    await stream.send_all(
        b"POST /admin/bans HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked
        + b"0\r\n\r\n"
    )
    status, rest = await read_response_head(stream)
    assert status == 201
    with trio.fail_after(WAIT_S):
        while b"192.0.2.77" not in rest:
            chunk = await stream.receive_some(65536)
            assert chunk, rest
            rest += chunk
    assert await server.ctx.backend.ban_for("192.0.2.77") is not None
    await stream.send_all(upgrade_head(f"/ws?token={server.token()}"))
    status, _ = await read_response_head(stream)
    assert status == 101
    await stream.aclose()
    await assert_healthy(server)
    assert tracebacks(caplog) == []


async def test_kept_alive_http_requests_still_work(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        for _ in range(5):
            assert (await http.get("/healthz")).status_code == 200
        posted = await http.post("/admin/bans", content=b"x" * 5000)
        assert posted.status_code == 404  # no admin token configured
        assert (await http.get("/stats")).status_code == 200
