"""The HTTP layer's limits (``http/``): deadlines, versions, the head budget, requests
that end their connection.

Hostile clients, one raw socket at a time (``hostile.py`` says how).
"""

from __future__ import annotations

import pytest
from hostile import (
    CLOSED_AT_ONCE_S,
    WAIT_S,
    assert_healthy,
    capture_logs,  # noqa: F401  (an autouse fixture)
    open_raw,
    read_response_head,
    read_until_closed,
    tracebacks,
    upgrade_head,
)
from support import Harness, StartServer

from omiro_trio.http.deadlines import Deadlines


async def test_announced_body_never_sent_is_cut_at_the_body_deadline(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 5: a head announcing a large body, then silence."""
    server = await start_server(deadlines=Deadlines(body_s=0.5))
    stream = await open_raw(server)
    await stream.send_all(
        b"POST /admin/bans HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    )
    await read_until_closed(stream, WAIT_S)
    await assert_healthy(server)
    assert tracebacks(caplog) == []


@pytest.mark.parametrize(
    "head",
    [b"GET / HTTP/1.1\r\nHost: x\r\nX-a: ", upgrade_head()[:40], b""],
    ids=["http", "upgrade", "silent"],
)
async def test_slow_head_is_cut_at_the_head_deadline(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, head: bytes
) -> None:
    """Item 6: slowloris heads (and a silent connection) are closed at the deadline; a head
    begun and not whole is counted as a pending handshake past its budget."""
    server = await start_server(deadlines=Deadlines(head_s=0.5))
    stream = await open_raw(server)
    await stream.send_all(head)
    assert await read_until_closed(stream, WAIT_S) == b""
    await assert_healthy(server)
    assert tracebacks(caplog) == []
    counted = server.metric("omiro_budget_exceeded_total", budget="handshake")
    assert counted == (1 if head else 0)


async def test_a_later_head_not_whole_by_the_deadline_is_counted(
    start_server: StartServer,
) -> None:
    """On a kept-alive connection too: idle between requests is not counted, a head begun
    and left unfinished is."""
    server = await start_server(deadlines=Deadlines(head_s=0.5))
    stream = await open_raw(server)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _ = await read_response_head(stream)
    assert status == 200
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: ")
    await read_until_closed(stream, WAIT_S)
    assert server.metric("omiro_budget_exceeded_total", budget="handshake") == 1
    assert server.metric("omiro_budget_exceeded_total", budget="head") == 0


async def test_idle_keep_alive_connection_is_closed(start_server: StartServer) -> None:
    server = await start_server(deadlines=Deadlines(keepalive_s=0.5))
    stream = await open_raw(server)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _ = await read_response_head(stream)
    assert status == 200
    await read_until_closed(stream, WAIT_S)


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /healthz HTTP/1.0\r\n\r\n",  # HTTP/1.0 is answered, then closed
        b"GET /stats HTTP/1.0\r\nHost: x\r\n\r\n",
        b"GET /session/new HTTP/1.0\r\nHost: x\r\n\r\n",
    ],
    ids=["connection close", "http/1.0", "http/1.0 with host", "http/1.0 session"],
)
@pytest.mark.rule("protocol/front-door")
async def test_a_request_that_ends_its_connection_is_answered_and_closed_at_once(
    server: Harness, caplog: pytest.LogCaptureFixture, request_head: bytes
) -> None:
    stream = await open_raw(server)
    await stream.send_all(request_head)
    received = await read_until_closed(stream, CLOSED_AT_ONCE_S)
    assert received.startswith(b"HTTP/1.1 200")
    await assert_healthy(server)
    assert tracebacks(caplog) == []


@pytest.mark.parametrize(
    "request_head",
    [
        b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # HTTP/2 with prior knowledge
        b"GET /session/new HTTP/0.9\r\nHost: x\r\n\r\n",
    ],
    ids=["http/2.0", "h2 prior knowledge", "http/0.9"],
)
@pytest.mark.rule("protocol/front-door", "protocol/http-errors")
async def test_a_version_other_than_http_1_is_refused_505(
    server: Harness, request_head: bytes
) -> None:
    stream = await open_raw(server)
    await stream.send_all(request_head)
    received = await read_until_closed(stream, CLOSED_AT_ONCE_S)
    assert received.startswith(b"HTTP/1.1 505 ")
    assert b'"error":"http_version_not_supported"' in received


@pytest.mark.rule("protocol/front-door")
async def test_a_head_over_the_budget_later_on_a_kept_alive_connection_is_431(
    server: Harness,
) -> None:
    """The budget holds for every request of a connection, complete or not."""
    for tail in (b"\r\n\r\n", b""):
        stream = await open_raw(server)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _ = await read_response_head(stream)
        assert status == 200
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + tail)
        received = await read_until_closed(stream)
        assert b"HTTP/1.1 431 " in received
    assert server.metric("omiro_budget_exceeded_total", budget="head") == 2


@pytest.mark.rule("protocol/front-door")
async def test_requests_pipelined_behind_the_last_one_are_not_answered(server: Harness) -> None:
    """After a request whose answer ends the connection, what follows is dropped, and that
    answer is whole."""
    stream = await open_raw(server)
    await stream.send_all(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 50
    )
    received = await read_until_closed(stream, CLOSED_AT_ONCE_S)
    assert received.count(b"HTTP/1.1 200") == 2
    assert received.endswith(b"}\n")  # /stats answered whole
