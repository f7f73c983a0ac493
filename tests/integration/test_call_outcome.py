"""The call_outcome op over real sockets: what counts, what is refused, and limits."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from support import Client, Harness, StartServer

CALLS = "omiro_calls_total"
CONNECT = "omiro_call_connect_seconds"


def connected(match_id: str, ms: int = 1200, path: str = "direct") -> dict[str, Any]:
    return {"match_id": match_id, "outcome": "connected", "connect_ms": ms, "path": path}


async def matched(server: Harness, **join: Any) -> tuple[Client, Client, str]:
    a = await server.connect()
    b = await server.connect()
    await a.send("join_queue", join or None)
    await a.expect("queued")
    await b.send("join_queue", join or None)
    match_id = (await a.expect("match_found"))["match_id"]
    await b.expect("match_found")
    return a, b, match_id


@pytest.mark.rule("protocol/call-outcomes", "protocol/op-call-outcome")
async def test_call_outcome_counts_each_side_once(server: Harness) -> None:
    a, b, match_id = await matched(server)
    await a.send("call_outcome", connected(match_id, 1200, "direct"))
    await b.send("call_outcome", connected(match_id, 300, "relay"))
    # Frames are handled in order: a chat after the report proves it was handled.
    await a.send("chat", {"message": "after"})
    await b.expect("chat")
    await b.send("chat", {"message": "after"})
    await a.expect("chat")
    assert server.metric(CALLS, outcome="connected", path="direct") == 1
    assert server.metric(CALLS, outcome="connected", path="relay") == 1
    assert server.metric(CALLS, outcome="failed", path="none") == 0
    assert server.metric(CONNECT + "_count", path="direct") == 1
    assert server.metric(CONNECT + "_sum", path="direct") == 1.2
    assert server.metric(CONNECT + "_bucket", path="direct", le="1.0") == 0
    assert server.metric(CONNECT + "_bucket", path="direct", le="1.5") == 1
    assert server.metric(CONNECT + "_bucket", path="relay", le="0.5") == 1

    # A second report for the same match is refused and not counted, even
    # when it says something else.
    await a.send("call_outcome", {"match_id": match_id, "outcome": "failed"})
    error = await a.expect("error")
    assert error["code"] == "bad_request"
    assert error["op"] == "call_outcome"
    assert "already reported" in error["message"]
    assert server.metric(CALLS, outcome="failed", path="none") == 0
    assert server.metric(CALLS, outcome="connected", path="direct") == 1


@pytest.mark.rule("protocol/call-outcomes")
async def test_call_outcome_after_the_match_ended(server: Harness) -> None:
    a, b, match_id = await matched(server)
    await a.send("next")
    await b.expect("partner_disconnected")
    await a.expect("queued")
    # A failed call is often skipped before the page gives up on it.
    await a.send("call_outcome", {"match_id": match_id, "outcome": "failed"})
    await b.send("call_outcome", {"match_id": match_id, "outcome": "failed"})
    await a.send("leave_queue")
    await b.send("join_queue")
    await b.expect("queued")
    assert server.metric(CALLS, outcome="failed", path="none") == 2


@pytest.mark.rule("protocol/call-outcomes")
async def test_call_outcome_for_someone_elses_match_is_refused(server: Harness) -> None:
    a, _b, match_id = await matched(server)
    c = await server.connect()
    for wrong in (match_id, "no-such-match"):
        await c.send("call_outcome", connected(wrong))
        error = await c.expect("error")
        assert error["code"] == "not_matched"
        assert error["op"] == "call_outcome"
    await a.send("call_outcome", connected("no-such-match"))
    assert (await a.expect("error"))["code"] == "not_matched"
    assert server.metric(CALLS, outcome="connected", path="direct") == 0


@pytest.mark.rule("protocol/call-outcomes", "protocol/modes")
async def test_a_voice_match_is_a_call_and_meets_only_voice(server: Harness) -> None:
    video = await server.connect()
    await video.send("join_queue", {"mode": "video", "languages": ["pt"]})
    await video.expect("queued")
    a, b, match_id = await matched(server, mode="voice", languages=["pt"])
    await a.send("call_outcome", connected(match_id, 900, "direct"))
    await a.send("chat", {"message": "after"})  # handled in order: the report was too
    await b.expect("chat")
    assert server.metric(CALLS, outcome="connected", path="direct") == 1
    # The video client waits on: a voice-only client never meets a camera.
    await video.send("leave_queue")
    await video.send("join_queue", {"mode": "voice"})
    assert (await video.expect("queued"))["mode"] == "voice"


@pytest.mark.rule("protocol/call-outcomes")
async def test_call_outcome_of_a_text_match_is_refused(server: Harness) -> None:
    a, _b, match_id = await matched(server, mode="text")
    await a.send("call_outcome", connected(match_id))
    error = await a.expect("error")
    assert error == {
        "code": "bad_request",
        "message": "a text match has no call",
        "op": "call_outcome",
    }
    assert server.metric(CALLS, outcome="connected", path="direct") == 0


@pytest.mark.rule("protocol/call-outcomes")
async def test_call_outcome_invalid_frame_gets_a_clear_error(server: Harness) -> None:
    a, b, match_id = await matched(server)
    await a.send("call_outcome", {"match_id": match_id, "outcome": "connected", "path": "direct"})
    error = await a.expect("error")
    assert error["code"] == "bad_request"
    assert "connect_ms" in error["message"]
    # Invalid reports do not use up the one report per match.
    await a.send("call_outcome", connected(match_id))
    await a.send("chat", {"message": "still here"})
    assert (await b.expect("chat"))["message"] == "still here"
    assert server.metric(CALLS, outcome="connected", path="direct") == 1
    assert server.metric("omiro_protocol_errors_total", code="bad_request") == 1


@pytest.mark.rule("protocol/call-outcomes")
async def test_call_outcome_only_the_last_matches_can_be_reported(server: Harness) -> None:
    a = await server.connect()
    b = await server.connect()
    ids = []
    await a.send("join_queue")
    await a.expect("queued")
    for _ in range(9):  # one more than a session remembers
        await b.send("join_queue")
        ids.append((await a.expect("match_found"))["match_id"])
        await b.expect("match_found")
        await b.send("leave_queue")
        await a.expect("partner_disconnected")
        await a.send("join_queue")
        await a.expect("queued")
    await a.send("call_outcome", connected(ids[0]))
    assert (await a.expect("error"))["code"] == "not_matched"
    for match_id in ids[1:]:
        await a.send("call_outcome", {"match_id": match_id, "outcome": "failed"})
    await a.send("leave_queue")
    await a.send("join_queue")
    await a.expect("queued")
    assert server.metric(CALLS, outcome="failed", path="none") == 8


@pytest.mark.rule("protocol/call-outcomes")
async def test_call_outcome_is_rate_limited_like_every_op(start_server: StartServer) -> None:
    server = await start_server(limits__messages_per_second=1, limits__message_burst=2)
    a, _b, match_id = await matched(server)
    # join_queue used one token; one is left.
    await a.send("call_outcome", connected(match_id))
    await a.send("call_outcome", {"match_id": match_id, "outcome": "failed"})
    error = await a.expect("error")
    assert error["code"] == "rate_limited"
    assert error["op"] == "call_outcome"
    assert server.metric(CALLS, outcome="connected", path="direct") == 1
    assert server.metric(CALLS, outcome="failed", path="none") == 0


@pytest.mark.rule("protocol/metrics")
async def test_metrics_endpoint_shows_call_series_from_the_start(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        text = (await http.get("/metrics")).text
    assert 'omiro_calls_total{outcome="connected",path="direct"} 0.0' in text
    assert 'omiro_calls_total{outcome="connected",path="relay"} 0.0' in text
    assert 'omiro_calls_total{outcome="failed",path="none"} 0.0' in text
    assert 'omiro_call_connect_seconds_bucket{le="1.0",path="relay"} 0.0' in text
