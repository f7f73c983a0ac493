"""The liveness of a call over real sockets, with the default bound (15 s).

A client that beats (``alive``) and then goes silent while matched (a
``RawClient``: its socket stays open, nothing more is sent) loses its match
within ``server.lost_after_s`` of its last frame, and its partner is told
``lost`` then, not after the minute of the idle timeout.
"""

from __future__ import annotations

import pytest
import trio
from support import Client, Harness, RawClient

LOST_AFTER_S = 15.0  # the default of server.lost_after_s: this test shortens nothing
SLACK_S = 1.5  # scheduling on a shared machine; the bound itself is not stretched


async def beat(client: Client, every_s: float, stop: trio.Event) -> None:
    """Send ``alive`` every ``every_s`` as the page does, until ``stop``."""
    while not stop.is_set():
        await client.send("alive")
        with trio.move_on_after(every_s):
            await stop.wait()


@pytest.mark.rule(
    "protocol/liveness-op",
    "protocol/op-alive",
    "protocol/msg-alive",
    "protocol/msg-partner-disconnected",
    "protocol/partner-reasons",
)
async def test_a_silent_beating_client_is_reported_lost_within_the_bound(
    server: Harness,
) -> None:
    assert server.ctx.config.server.lost_after_s == LOST_AFTER_S
    silent = await RawClient.connect(server)
    await silent.send("alive")
    await silent.send("join_queue")
    partner = await server.connect()
    assert partner.hello["liveness"] == {"alive_ms": 2500, "unstable_ms": 3750, "lost_ms": 15000}
    await partner.send("alive")
    assert await partner.expect("alive") == {}
    await partner.send("join_queue")
    await partner.expect("match_found")
    last_frame_at = trio.current_time()  # the silent side's last frame was before this
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(beat, partner, 2.5, stop)
        while True:
            op, data = await partner.recv(wait_s=LOST_AFTER_S + SLACK_S + 5)
            if op != "alive":
                break
        stop.set()
    took = trio.current_time() - last_frame_at
    assert (op, data) == ("partner_disconnected", {"reason": "lost"})
    assert took <= LOST_AFTER_S + SLACK_S, took
    hub = server.ctx.hub
    assert hub.sessions[partner.session_id].match is None
    # The silent socket is still open (the idle timeout governs it); its match is over.
    assert len(hub.sessions) == 2
    # The partner's next way in is free: the end was nobody's choice.
    await partner.send("join_queue")
    op, data = await partner.recv()
    while op == "alive":  # (answers to the last beats may still be on their way)
        op, data = await partner.recv()
    assert (op, data["mode"]) == ("queued", "video")


@pytest.mark.rule("protocol/op-peer-lost", "protocol/liveness-op")
async def test_peer_lost_ends_the_match_for_both_and_is_refused_for_another(
    server: Harness,
) -> None:
    a, b = await server.pair()
    found = server.ctx.hub.sessions[a.session_id].match
    assert found is not None
    await a.send("peer_lost", {"match_id": "not-this-one"})
    error = await a.expect("error")
    assert (error["code"], error["op"]) == ("not_matched", "peer_lost")
    await a.send("chat", {"message": "still matched"})
    assert (await b.expect("chat"))["message"] == "still matched"
    await a.send("peer_lost", {"match_id": found.match_id})
    assert await b.expect("partner_disconnected") == {"reason": "lost"}
    await a.send("join_queue")
    assert await a.expect("queued") == {"mode": "video", "interests": []}
