"""Hostile clients against the real front door, one raw socket at a time.

Each test plays one way a single client took the server down or wedged it
(issue "No client can take Omiro down", items 1-14), over real loopback
sockets and independent of the WebSocket engine behind ``/ws``. Each ends by
checking that the server still answers ``/healthz`` and logged no traceback.
The server runs in process: an exception escaping a connection would reach
the test's nursery and fail the test, which is what "the process exits"
means here (``test_fuzz.py`` and ``test_fd_exhaustion.py`` run real
processes). Deadlines are shortened with ``monkeypatch`` so waits stay short;
every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator

import httpx
import msgspec
import pytest
import trio
from support import Harness, StartServer, wait_until

from omiro_trio import front
from omiro_trio.backends.memory import MemoryBackend

WAIT_S = 5.0
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


# -- raw HTTP and WebSocket helpers ----------------------------------------------


def upgrade_head(target: str = "/ws", *, extra: str = "", host: str = "127.0.0.1") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def ws_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame (mask 0, so the payload goes as is)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", n)
    return bytes([first]) + length + b"\0\0\0\0" + payload


def text(op: str, data: object = None) -> bytes:
    message: dict[str, object] = {"op": op}
    if data is not None:
        message["data"] = data
    return ws_frame(0x1, msgspec.json.encode(message))


async def open_raw(server: Harness) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", server.running.port)


def reset(stream: trio.SocketStream) -> None:
    """Make the next close a TCP reset (RST) instead of a FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def read_response_head(stream: trio.SocketStream) -> tuple[int, bytes]:
    """The status of an HTTP response, and whatever followed its head."""
    buffer = b""
    with trio.fail_after(WAIT_S):
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed before a response head: {buffer!r}"
            buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


async def read_until_closed(stream: trio.SocketStream, wait_s: float = WAIT_S) -> bytes:
    received = b""
    with trio.fail_after(wait_s):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return received
            if not chunk:
                return received
            received += chunk


async def assert_healthy(server: Harness) -> None:
    with trio.fail_after(WAIT_S):
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.get("/healthz")
    assert response.status_code == 200


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.INFO):
        yield


async def open_session(server: Harness) -> tuple[trio.SocketStream, bytes]:
    """A raw socket upgraded to a session; returns it and the bytes after the 101."""
    stream = await open_raw(server)
    await stream.send_all(upgrade_head(f"/ws?token={server.token()}"))
    status, rest = await read_response_head(stream)
    assert status == 101
    return stream, rest


# -- crashes 1-4 -----------------------------------------------------------------


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


async def test_upgrade_then_reset_ends_only_that_connection(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 2: a reset right after the upgrade head (the peer address is gone)."""
    for _ in range(20):
        stream = await open_raw(server)
        await stream.send_all(upgrade_head(f"/ws?token={server.token()}"))
        reset(stream)
        await stream.aclose()
    await assert_healthy(server)
    await wait_until(lambda: _sockets_from(server, "127.0.0.1") == 0)
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


async def test_ping_crossing_the_servers_close(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Item 4: the server closes (here: ``disconnect``) and the client pings before
    answering the close. Only "the process stays up, no traceback" is asserted:
    the clean close handshake is the WebSocket engine's."""
    for _ in range(5):
        stream, _ = await open_session(server)
        await stream.send_all(text("disconnect") + ws_frame(0x9, b"p") * 5)
        with trio.move_on_after(WAIT_S):
            while True:
                try:
                    if not await stream.receive_some(65536):
                        break
                    await stream.send_all(ws_frame(0x9, b"p"))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
        await stream.aclose()
    await wait_until(lambda: not server.ctx.hub.sessions)
    await assert_healthy(server)
    assert tracebacks(caplog) == []


async def test_unexpected_error_ends_one_connection_logged_once_and_counted(
    server: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boundary itself: a bug while serving one socket ends that socket only."""
    hub = server.ctx.hub
    original = hub.report

    async def broken_report(session: object, reason: str) -> None:
        if reason == "boom":
            raise RuntimeError("a bug in report handling")
        await original(session, reason)  # type: ignore[arg-type]

    monkeypatch.setattr(hub, "report", broken_report)
    a, b = await server.pair()
    c, d = await server.pair()
    await a.send("report", {"reason": "boom"})
    await b.expect("partner_disconnected")
    await a.expect_closed()
    await wait_until(lambda: server.metric("omiro_connection_failures_total") == 1)
    # The other pair is untouched.
    await c.send("chat", {"message": "still here"})
    assert (await d.expect("chat"))["message"] == "still here"
    failures = tracebacks(caplog)
    assert len(failures) == 1
    assert "a bug in report handling" in caplog.text
    await assert_healthy(server)


async def test_boundary_lets_a_cancellation_through_mixed_with_an_error(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A group of Cancelled and an error: the error is logged, the cancellation is not
    swallowed (the cancel scope around the handler still catches it)."""
    door = front.FrontDoor.__new__(front.FrontDoor)
    door.__dict__.update(_door_parts(server))
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    accepted = await listener.accept()
    await client.send_all(upgrade_head())

    with trio.CancelScope() as scope:

        async def websocket(stream: trio.abc.Stream, head: object) -> None:
            async def fails_when_cancelled() -> None:
                try:
                    await trio.sleep_forever()
                finally:
                    raise ValueError("failed while being cancelled")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fails_when_cancelled)
                await trio.lowlevel.checkpoint()
                scope.cancel()
                await trio.sleep_forever()

        door._websocket = websocket
        await door.handle(accepted)
        raise AssertionError("the cancellation was swallowed")  # pragma: no cover
    assert scope.cancelled_caught
    assert "failed while being cancelled" in caplog.text
    await client.aclose()
    await listener.aclose()


def _sockets_from(server: Harness, client: str) -> int:
    backend = server.ctx.backend
    assert isinstance(backend, MemoryBackend)
    return backend.sockets_from(client)


def _door_parts(server: Harness) -> dict[str, object]:
    return {
        "_metrics": server.ctx.metrics,
        "_ipv6_prefix": 64,
        "_trusted_proxies": (),
        "_on_websocket_end": None,
        "connections": front.ConnectionCounter(10),
    }


# -- wedges 5, 6: deadlines and per-address connections ---------------------------


async def test_announced_body_never_sent_is_cut_at_the_body_deadline(
    server: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 5: a head announcing a large body, then silence."""
    monkeypatch.setattr(front, "BODY_TIMEOUT_S", 0.5)
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
    server: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, head: bytes
) -> None:
    """Item 6: slowloris heads (and a silent connection) are closed at the deadline."""
    monkeypatch.setattr(front, "HEAD_TIMEOUT_S", 0.5)
    stream = await open_raw(server)
    await stream.send_all(head)
    assert await read_until_closed(stream, WAIT_S) == b""
    await assert_healthy(server)
    assert tracebacks(caplog) == []


async def test_idle_keep_alive_connection_is_closed(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(front, "KEEPALIVE_TIMEOUT_S", 0.5)
    stream = await open_raw(server)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _ = await read_response_head(stream)
    assert status == 200
    await read_until_closed(stream, WAIT_S)


async def test_connections_per_address_are_capped_from_the_first_byte(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(server__connections_per_ip=5)
    held = []
    for _ in range(5):  # each answered once, so each is surely counted before the next
        stream = await open_raw(server)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response_head(stream))[0] == 200
        held.append(stream)
    extra = await open_raw(server)
    assert await read_until_closed(extra) == b""  # closed at once, nothing read
    assert server.metric("omiro_connections_shed_total") == 1
    for stream in held:
        await stream.aclose()
    await wait_until(lambda: server.metric("omiro_connections_shed_total") == 1)
    await assert_healthy(server)  # room again once they are gone
    assert tracebacks(caplog) == []


async def test_a_trusted_proxy_is_not_capped_per_address(start_server: StartServer) -> None:
    server = await start_server(
        server__connections_per_ip=2, server__trusted_proxies=["127.0.0.0/8"]
    )
    held = []
    for _ in range(4):
        stream = await open_raw(server)
        await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response_head(stream))[0] == 200
        held.append(stream)
    assert server.metric("omiro_connections_shed_total") == 0
    for stream in held:
        await stream.aclose()


# -- items 7, 8: client address and socket slots ---------------------------------


async def test_cf_connecting_ip_is_ignored_unless_named(start_server: StartServer) -> None:
    """Item 7: behind a trusted proxy, a forged CF-Connecting-IP is not believed."""
    server = await start_server(
        server__trusted_proxies=["127.0.0.0/8"], limits__sessions_per_ip_per_minute=2
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        codes = [
            (
                await http.get("/session/new", headers={"CF-Connecting-IP": f"198.51.100.{n}"})
            ).status_code
            for n in range(3)
        ]
    assert codes == [200, 200, 429]


async def test_named_client_ip_header_is_believed_from_a_trusted_proxy(
    start_server: StartServer,
) -> None:
    server = await start_server(
        server__trusted_proxies=["127.0.0.0/8"],
        server__client_ip_header="CF-Connecting-IP",
        limits__sessions_per_ip_per_minute=1,
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        codes = [
            (
                await http.get("/session/new", headers={"CF-Connecting-IP": f"198.51.100.{n}"})
            ).status_code
            for n in range(3)
        ]
        again = await http.get("/session/new", headers={"CF-Connecting-IP": "198.51.100.0"})
    assert codes == [200, 200, 200]
    assert again.status_code == 429


async def test_ipv6_addresses_of_one_prefix_share_their_limits(start_server: StartServer) -> None:
    server = await start_server(
        server__trusted_proxies=["127.0.0.0/8"], limits__sessions_per_ip_per_minute=2
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        codes = [
            (
                await http.get("/session/new", headers={"X-Forwarded-For": f"2001:db8:1:2::{n}"})
            ).status_code
            for n in range(1, 4)
        ]
        other = await http.get("/session/new", headers={"X-Forwarded-For": "2001:db8:1:3::1"})
    assert codes == [200, 200, 429]
    assert other.status_code == 200


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
    await wait_until(lambda: _sockets_from(server, "127.0.0.1") == 0)
    assert tracebacks(caplog) == []


# -- item 9: one routing rule per request ----------------------------------------


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


# -- item 11: protocol violations ------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        ws_frame(0x1, b"\xff\xfe{"),  # invalid UTF-8
        b"\x81\x05hello",  # unmasked
        ws_frame(0x3, b"x"),  # reserved opcode
        ws_frame(0x1, b"{}", rsv=4),  # reserved bit
        ws_frame(0x9, b"x" * 200),  # control frame too long
        ws_frame(0x8, b"\x03"),  # close with a 1-byte payload
        ws_frame(0x0, b"x"),  # continuation without a start
        ws_frame(0x1, b"{", fin=False) + ws_frame(0x1, b"}"),  # new message mid-fragment
        b"\x81\xff" + b"\xff" * 8,  # a length of 2**64 - 1
    ],
)
async def test_protocol_violations_end_only_that_socket(
    server: Harness, caplog: pytest.LogCaptureFixture, bad: bytes
) -> None:
    """Item 11 (close codes are the engine's): the process stays up, nothing logged."""
    stream, _ = await open_session(server)
    await stream.send_all(bad)
    await read_until_closed(stream)
    await wait_until(lambda: not server.ctx.hub.sessions)
    await assert_healthy(server)
    assert tracebacks(caplog) == []


# -- item 13: admin authentication -----------------------------------------------

ADMIN_TOKEN = "an-admin-token-that-is-long-enough!"


async def test_failed_admin_authentications_are_limited_per_address(
    start_server: StartServer,
) -> None:
    server = await start_server(admin__token=ADMIN_TOKEN)
    good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        codes = [
            (
                await http.get("/admin/bans", headers={"Authorization": f"Bearer guess{n}"})
            ).status_code
            for n in range(10)
        ]
        assert codes == [401] * 10
        limited = await http.get("/admin/bans", headers={"Authorization": "Bearer guess"})
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        # Even the right token waits: a guess must not be confirmable.
        assert (await http.get("/admin/bans", headers=good)).status_code == 429


# -- item 14: reporters per address group ----------------------------------------


async def test_reporters_of_one_ipv6_prefix_count_once(start_server: StartServer) -> None:
    server = await start_server(
        server__trusted_proxies=["127.0.0.0/8"], reports__autoban_reporters=2
    )
    bad_ip = "203.0.113.66"
    bad = await server.connect(headers=[("X-Forwarded-For", bad_ip)])
    for n in (1, 2):
        reporter = await server.connect(headers=[("X-Forwarded-For", f"2001:db8:1:2::{n}")])
        await reporter.send("join_queue")
        await reporter.expect("queued")
        if n == 1:
            await bad.send("join_queue")
            await bad.expect("match_found")
            await reporter.expect("match_found")
            await reporter.send("report", {"reason": "spam"})
            await bad.expect("partner_disconnected")
        else:
            # The reporter's whole /64 is blocked from the reported address.
            await bad.send("join_queue")
            await bad.expect("queued")
    assert await server.ctx.backend.ban_for(bad_ip) is None
    reports = await server.ctx.backend.reports(10)
    assert [r.reporter_ip for r in reports] == ["2001:db8:1:2::/64"]


# -- issue "a budget for every byte": the smaller items -------------------------------

CLOSED_AT_ONCE_S = 1.0  # the keep-alive timeout (30 s) and the close handshake (2 s) are far


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
async def test_a_version_other_than_http_1_is_refused_505(
    server: Harness, request_head: bytes
) -> None:
    stream = await open_raw(server)
    await stream.send_all(request_head)
    received = await read_until_closed(stream, CLOSED_AT_ONCE_S)
    assert received.startswith(b"HTTP/1.1 505 ")
    assert b'"error":"http_version_not_supported"' in received


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


@pytest.mark.parametrize("how", ["server closes", "client closes"])
async def test_a_closed_socket_gives_back_its_slot_at_once(server: Harness, how: str) -> None:
    """Its sockets_per_ip slot is free as soon as the WebSocket is closed, however long the
    client keeps the TCP connection (this one never ends it)."""
    stream, _ = await open_session(server)
    await wait_until(lambda: _sockets_from(server, "127.0.0.1") == 1)
    if how == "server closes":
        await stream.send_all(text("disconnect"))
    else:
        await stream.send_all(ws_frame(0x8, struct.pack("!H", 1000)))
    await wait_until(lambda: _sockets_from(server, "127.0.0.1") == 0, CLOSED_AT_ONCE_S / 2)
    await stream.aclose()


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
