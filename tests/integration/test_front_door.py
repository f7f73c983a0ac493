"""The front door (``front.py``): the per-connection boundary, connections per client.

Hostile clients, one raw socket at a time (``hostile.py`` says how).
"""

from __future__ import annotations

import pytest
import trio
from hostile import (
    assert_healthy,
    capture_logs,  # noqa: F401  (an autouse fixture)
    open_raw,
    read_response_head,
    read_until_closed,
    reset,
    sockets_from,
    tracebacks,
    upgrade_head,
)
from support import Harness, StartServer, wait_until

from omiro_trio import front


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
    await wait_until(lambda: sockets_from(server, "127.0.0.1") == 0)
    assert tracebacks(caplog) == []


@pytest.mark.rule("protocol/close-codes")
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
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    accepted = await listener.accept()
    await client.send_all(upgrade_head())

    with trio.CancelScope() as scope:

        async def serve(stream: trio.SocketStream, peer: str, client: str | None) -> None:
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

        door = front.FrontDoor(
            serve, metrics=server.ctx.metrics, connections_per_ip=10, ipv6_prefix=64
        )
        await door.handle(accepted)
        raise AssertionError("the cancellation was swallowed")  # pragma: no cover
    assert scope.cancelled_caught
    assert "failed while being cancelled" in caplog.text
    await client.aclose()
    await listener.aclose()


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
