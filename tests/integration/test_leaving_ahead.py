"""A way into the queue the client has already left behind is not taken.

A client sends ``join_queue`` or ``next`` and then leaves (``disconnect``,
a close frame), all in one write, so that the server reads the way in with
the leaving already behind it: the session never enters the queue, where
someone waiting would be matched with a ghost (docs/protocol.md,
"left-behind"). A real server on each backend, raw sockets for the client
that leaves, someone waiting who must be matched next with a live person.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
import trio
from hostile import (
    capture_logs,  # noqa: F401  (an autouse fixture)
    open_session,
    read_until_closed,
    text,
    tracebacks,
    ws_frame,
)
from support import Client, Harness, StartServer, wait_until

CLOSE_FRAME = ws_frame(0x8, struct.pack("!H", 1000))
JOIN = text("join_queue", {"mode": "video"})

LEAVINGS = {
    "disconnect": JOIN + text("disconnect"),
    "close frame": JOIN + CLOSE_FRAME,
    # A backlog of ways in, the leaving behind them all.
    "backlog": JOIN + text("next") + JOIN + text("next") + text("disconnect"),
}


async def someone_waiting(server: Harness) -> Client:
    waiting = await server.connect()
    await waiting.send("join_queue", {"mode": "video"})
    await waiting.expect("queued")
    return waiting


@pytest.mark.rule("protocol/left-behind")
@pytest.mark.parametrize("leaving", list(LEAVINGS))
async def test_a_client_that_leaves_behind_its_way_in_is_never_matched(
    start_server: StartServer,
    backend: dict[str, Any],
    leaving: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_server(**backend)
    waiting = await someone_waiting(server)

    stream, _ = await open_session(server)
    await stream.send_all(LEAVINGS[leaving])  # read together: the way in, then the leaving
    await read_until_closed(stream)
    await stream.aclose()
    await wait_until(lambda: len(server.ctx.hub.sessions) == 1)

    # The one waiting is still waiting: the next person to come is its match.
    assert (await server.ctx.backend.stats()).waiting == 1
    late = await server.connect()
    await late.send("join_queue", {"mode": "video"})
    found = await waiting.expect("match_found")  # its first word since "queued"
    assert found["partner"] == late.session_id
    assert (await late.expect("match_found"))["partner"] == waiting.session_id
    assert server.metric("omiro_matches_total") == 1
    assert tracebacks(caplog) == []


@pytest.mark.rule("protocol/left-behind")
async def test_a_way_in_with_nothing_behind_it_is_taken(
    start_server: StartServer, backend: dict[str, Any]
) -> None:
    """The look ahead finds nothing to wait for: a join pipelined with a chat goes in."""
    server = await start_server(**backend)
    waiting = await someone_waiting(server)
    stream, _ = await open_session(server)
    await stream.send_all(JOIN + text("chat", {"message": "I will disconnect later"}))
    found = await waiting.expect("match_found")
    assert (await waiting.expect("chat"))["message"] == "I will disconnect later"
    with trio.fail_after(5):
        await stream.send_all(text("disconnect"))
        await read_until_closed(stream)
    assert await waiting.expect("partner_disconnected") == {"reason": "left"}
    assert found["partner"] != waiting.session_id
