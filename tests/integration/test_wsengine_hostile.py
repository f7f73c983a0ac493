"""The WebSocket engine (``wsengine.py``) against hostile frames: each ends only its socket.

Hostile clients, one raw socket at a time (``hostile.py`` says how).
"""

from __future__ import annotations

import pytest
import trio
from hostile import (
    WAIT_S,
    assert_healthy,
    capture_logs,  # noqa: F401  (an autouse fixture)
    open_session,
    read_until_closed,
    text,
    tracebacks,
    ws_frame,
)
from support import Harness, wait_until


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
