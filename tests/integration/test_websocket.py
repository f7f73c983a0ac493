"""The /ws protocol over real sockets: handshake, matching, relays, endings."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
from support import WAIT_S, Client, Harness, StartServer, wait_until
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from omiro_trio.backends.base import Ban


@pytest.mark.rule(
    "protocol/hello-data",
    "protocol/msg-hello",
    "protocol/msg-match-found",
    "protocol/msg-queued",
    "protocol/op-join-queue",
    "protocol/ws-upgrade",
)
async def test_pair_hello_queued_match_found(server: Harness) -> None:
    a = await server.connect()
    b = await server.connect()
    assert a.hello["ice_servers"] == []
    assert a.hello["limits"] == {"max_chat_length": 1000, "max_frame_bytes": 65536}
    await a.send("join_queue", {"mode": "video"})
    assert await a.expect("queued") == {"mode": "video", "interests": []}
    await b.send("join_queue")
    found_a = await a.expect("match_found")
    found_b = await b.expect("match_found")
    assert found_a["partner"] == b.session_id
    assert found_b["partner"] == a.session_id
    assert found_a["match_id"] == found_b["match_id"]
    assert (found_a["should_call"], found_b["should_call"]) == (True, False)  # a waited
    assert found_a["mode"] == found_b["mode"] == "video"
    assert found_a["common_interests"] == found_b["common_interests"] == []


@pytest.mark.parametrize(
    ("op", "data"),
    [
        ("chat", {"message": "hello there"}),
        ("typing", {"typing": True}),
        ("typing", {"typing": False}),
        ("webrtc_offer", {"sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}),
        ("webrtc_answer", {"sdp": "v=0\r\n"}),
        (
            "ice_candidate",
            {
                "candidate": {
                    "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
                    "sdpMid": "0",
                    "sdpMLineIndex": 0,
                    "usernameFragment": "abcd",
                }
            },
        ),
        ("ice_candidate", {"candidate": None}),
        ("camera_kind", {"kind": "virtual"}),
        ("camera_kind", {"kind": "camera"}),
        ("camera_kind", {"kind": "none"}),
    ],
)
@pytest.mark.rule(
    "protocol/msg-camera-kind",
    "protocol/msg-chat",
    "protocol/msg-ice-candidate",
    "protocol/msg-typing",
    "protocol/msg-webrtc",
    "protocol/op-chat",
    "protocol/op-ice-candidate",
    "protocol/op-typing",
    "protocol/op-webrtc-answer",
    "protocol/op-webrtc-offer",
)
async def test_relay_reaches_partner_with_from(
    server: Harness, op: str, data: dict[str, object]
) -> None:
    a, b = await server.pair()
    await a.send(op, data)
    assert await b.expect(op) == {**data, "from": a.session_id}
    await b.send(op, data)
    assert await a.expect(op) == {**data, "from": b.session_id}


@pytest.mark.rule("protocol/op-chat")
async def test_chat_is_trimmed_and_never_echoed(server: Harness) -> None:
    a, b = await server.pair()
    await a.send("chat", {"message": "  hi  "})
    assert (await b.expect("chat"))["message"] == "hi"
    await a.expect_nothing()


@pytest.mark.rule("protocol/msg-partner-disconnected", "protocol/op-next")
async def test_next_ends_match_for_both_and_requeues_sender(server: Harness) -> None:
    a, b = await server.pair()
    await b.send("next")
    assert await a.expect("partner_disconnected") == {"reason": "next"}
    assert (await b.expect("queued"))["mode"] == "video"
    # a is idle now (the client decides whether to rejoin): c meets b, not a
    c = await server.connect()
    await c.send("join_queue")
    found_c = await c.expect("match_found")
    assert found_c["partner"] == b.session_id
    assert (await b.expect("match_found"))["partner"] == c.session_id
    await a.expect_nothing()


@pytest.mark.rule("protocol/join-while-matched", "protocol/op-next")
async def test_next_keeps_preferences(server: Harness) -> None:
    a, b = await server.pair(mode="text", interests=["Music"])
    await b.send("next")
    await a.expect("partner_disconnected")
    assert await b.expect("queued") == {"mode": "text", "interests": ["music"]}


@pytest.mark.rule("protocol/join-while-matched", "protocol/op-join-queue")
async def test_join_while_matched_ends_match_first(server: Harness) -> None:
    a, b = await server.pair()
    await a.send("join_queue", {"mode": "text"})
    assert await b.expect("partner_disconnected") == {"reason": "next"}
    assert (await a.expect("queued"))["mode"] == "text"


@pytest.mark.rule("protocol/leave-queue", "protocol/op-leave-queue")
async def test_leave_queue_ends_match_and_stops_searching(server: Harness) -> None:
    a, b = await server.pair()
    await a.send("leave_queue")
    assert await b.expect("partner_disconnected") == {"reason": "left"}
    await a.send("chat", {"message": "anyone?"})
    assert (await a.expect("error"))["code"] == "not_matched"
    c = await server.connect()
    await c.send("join_queue")
    await c.expect("queued")
    await a.expect_nothing()
    assert (await server.ctx.backend.stats()).waiting == 1


@pytest.mark.rule("protocol/close-codes", "protocol/op-disconnect")
async def test_disconnect_closes_1000_and_tells_partner(server: Harness) -> None:
    a, b = await server.pair()
    await a.send("disconnect")
    assert await a.expect_closed() == 1000
    assert await b.expect("partner_disconnected") == {"reason": "left"}


@pytest.mark.rule("protocol/msg-partner-disconnected", "protocol/partner-reasons")
async def test_socket_death_tells_partner(server: Harness) -> None:
    """A socket that dies may come back with its ticket: its partner is told it is away,
    and that it left once the grace (``server.resume_grace_s``, 30 s) has passed."""
    a, b = await server.pair()
    await a.ws._stream.aclose()  # the TCP connection drops without a close frame
    assert await b.expect("partner_away") == {"grace_ms": 30000}
    away_at = trio.current_time()
    await wait_until(lambda: len(server.ctx.hub.sessions) == 1)
    assert await b.expect("partner_disconnected", wait_s=35) == {"reason": "left"}
    assert 30 - 0.5 <= trio.current_time() - away_at <= 30 + 2


@pytest.mark.rule("protocol/relay-current-partner")
async def test_relay_after_match_ended_reaches_nobody(server: Harness) -> None:
    a, b = await server.pair()
    c = await server.connect()
    await b.send("next")
    await a.expect("partner_disconnected")
    await b.expect("queued")
    await a.send("chat", {"message": "still there?"})
    error = await a.expect("error")
    assert error == {"code": "not_matched", "message": error["message"], "op": "chat"}
    await b.expect_nothing()
    await c.expect_nothing()


@pytest.mark.rule("protocol/msg-error", "protocol/relay-current-partner")
async def test_relay_without_match_is_not_matched(server: Harness) -> None:
    a = await server.connect()
    for op, data in [("chat", {"message": "x"}), ("webrtc_offer", {"sdp": "v=0"})]:
        await a.send(op, data)
        assert (await a.expect("error"))["code"] == "not_matched"


@pytest.mark.rule("protocol/op-report", "protocol/report-records", "protocol/reports")
async def test_report_ends_match_and_blocks_the_pair(server: Harness) -> None:
    a, b = await server.pair()
    await a.send("chat", {"message": "hi"})
    await b.expect("chat")
    await b.send("chat", {"message": "rude words"})
    await a.expect("chat")
    await a.send("report", {"reason": "abuse"})
    assert await b.expect("partner_disconnected") == {"reason": "reported"}
    # Both look again and are alone: still never matched with each other.
    await a.send("join_queue")
    await a.expect("queued")
    await b.send("join_queue")
    await b.expect("queued")
    await a.expect_nothing()
    c = await server.connect()
    await c.send("join_queue")
    assert (await c.expect("match_found"))["partner"] == a.session_id
    reports = await server.ctx.backend.reports(100)  # type: ignore[attr-defined]
    assert reports[0].reporter == a.session_id
    assert reports[0].reported == b.session_id
    assert reports[0].reason == "abuse"
    assert reports[0].transcript == ("reporter: hi", "reported: rude words")


async def test_report_without_match_is_not_matched(server: Harness) -> None:
    a = await server.connect()
    await a.send("report", {"reason": "x"})
    assert (await a.expect("error"))["code"] == "not_matched"


@pytest.mark.rule("protocol/matching-rules")
async def test_modes_never_mix(server: Harness) -> None:
    video = await server.connect()
    text = await server.connect()
    await video.send("join_queue", {"mode": "video"})
    await video.expect("queued")
    await text.send("join_queue", {"mode": "text"})
    await text.expect("queued")
    await video.expect_nothing()
    text2 = await server.connect()
    await text2.send("join_queue", {"mode": "text"})
    found = await text2.expect("match_found")
    assert found["partner"] == text.session_id
    assert found["mode"] == "text"


@pytest.mark.rule("protocol/anyone-line", "protocol/interests", "protocol/matching-rules")
async def test_interests_match_then_fall_back_to_anyone(start_server: StartServer) -> None:
    server = await start_server(matchmaking__interest_timeout_s=0.3)
    a = await server.connect()
    b = await server.connect()
    await a.send("join_queue", {"interests": ["Music", "chess"]})
    await a.expect("queued")
    await b.send("join_queue", {"interests": ["CHESS"]})
    assert (await b.expect("match_found"))["common_interests"] == ["chess"]
    assert (await a.expect("match_found"))["common_interests"] == ["chess"]
    c = await server.connect()
    d = await server.connect()
    await c.send("join_queue", {"interests": ["go"]})
    await c.expect("queued")
    await d.send("join_queue")  # no interests: c is not available to d yet
    await d.expect("queued")
    with trio.fail_after(WAIT_S):
        found_c = await c.expect("match_found")
    found_d = await d.expect("match_found")
    assert found_c["partner"] == d.session_id
    assert found_c["common_interests"] == found_d["common_interests"] == []
    assert found_c["should_call"] != found_d["should_call"]
    assert found_c["should_call"]  # c waited longest


@pytest.mark.rule("protocol/matching-rules")
async def test_rematch_cooldown_prefers_someone_new(server: Harness) -> None:
    a, b = await server.pair()
    c = await server.connect()
    await b.send("next")
    await a.expect("partner_disconnected")
    await b.expect("queued")
    await c.send("join_queue")
    assert (await c.expect("match_found"))["partner"] == b.session_id
    await b.expect("match_found")
    await c.send("next")  # c waits; b is idle; a rejoins: a and c never met
    await b.expect("partner_disconnected")
    await c.expect("queued")
    await a.send("join_queue")
    assert (await a.expect("match_found"))["partner"] == c.session_id


@pytest.mark.rule("protocol/nobody-else-waiting")
async def test_former_partners_rematch_when_alone(server: Harness) -> None:
    a, b = await server.pair()
    await b.send("next")
    await a.expect("partner_disconnected")
    await b.expect("queued")
    await a.send("join_queue")
    assert (await a.expect("match_found"))["partner"] == b.session_id


# -- handshake ------------------------------------------------------------


async def _rejected(server: Harness, token: str | None, **kw: object) -> ConnectionRejected:
    url = server.ws_url if token is None else f"{server.ws_url}?token={token}"
    with pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(url, **kw):  # type: ignore[arg-type]
            pass
    return info.value


@pytest.mark.rule(
    "protocol/handshake-errors",
    "protocol/handshake-rejections",
    "protocol/session-token",
    "protocol/token-reuse",
)
async def test_handshake_second_socket_same_session_409(server: Harness) -> None:
    token = server.token()
    first = await server.connect(token)
    rejected = await _rejected(server, token)
    assert rejected.status_code == 409
    assert b'"already_connected"' in (rejected.body or b"")
    await first.send("disconnect")
    await first.expect_closed()
    await wait_until(lambda: not server.ctx.hub.sessions)
    again = await server.connect(token)  # the session may reconnect once its socket is gone
    assert again.session_id == first.session_id


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "garbage",
        "a:b",
        "a:b:c:d",
        "00000000-0000-4000-8000-000000000000:9999999999:" + "0" * 64,
    ],
)
@pytest.mark.rule("protocol/handshake-errors", "protocol/handshake-rejections")
async def test_handshake_bad_token_401(
    server: Harness, token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        rejected = await _rejected(server, token)
    assert rejected.status_code == 401
    assert b'"invalid_token"' in (rejected.body or b"")
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []


@pytest.mark.rule("protocol/session-token")
async def test_handshake_expired_and_tampered_tokens_401(server: Harness) -> None:
    issued = server.ctx.signer.issue(server.ctx.wall() - 3600)
    assert (await _rejected(server, issued.token)).status_code == 401
    good = server.token()
    tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
    assert (await _rejected(server, tampered)).status_code == 401


@pytest.mark.rule("protocol/ws-upgrade")
async def test_handshake_token_in_header(server: Harness) -> None:
    ws = await server.raw_connect(None, headers=[("X-Session-Token", server.token())])
    client = Client(ws)
    assert (await client.expect("hello"))["session_id"]


@pytest.mark.rule("protocol/handshake-rejections")
async def test_handshake_foreign_origin_403(server: Harness) -> None:
    rejected = await _rejected(
        server, server.token(), extra_headers=[("Origin", "https://evil.example")]
    )
    assert rejected.status_code == 403
    host = server.url.removeprefix("http://")
    ws = await server.raw_connect(server.token(), headers=[("Origin", f"http://{host}")])
    assert (await Client(ws).expect("hello"))["session_id"]


@pytest.mark.rule("protocol/handshake-errors", "protocol/handshake-rejections")
async def test_handshake_banned_ip_403(server: Harness) -> None:
    await server.ctx.backend.add_ban(  # type: ignore[attr-defined]
        Ban("127.0.0.0/8", "test", None, 0.0)
    )
    rejected = await _rejected(server, server.token())
    assert rejected.status_code == 403
    assert b'"banned"' in (rejected.body or b"")


@pytest.mark.rule("protocol/handshake-errors", "protocol/handshake-rejections")
async def test_handshake_sockets_per_ip_429(start_server: StartServer) -> None:
    server = await start_server(limits__sockets_per_ip=2)
    await server.connect()
    await server.connect()
    rejected = await _rejected(server, server.token())
    assert rejected.status_code == 429
    assert dict(rejected.headers).get(b"retry-after") is not None


# -- abuse of the socket ----------------------------------------------------


@pytest.mark.rule("protocol/binary-and-bad-json", "protocol/envelope", "protocol/msg-error")
async def test_bad_frames_get_errors_and_the_socket_survives(server: Harness) -> None:
    a, b = await server.pair()
    await a.ws.send_message("{not json")
    assert (await a.expect("error"))["code"] == "bad_json"
    await a.send("fly")
    error = await a.expect("error")
    assert (error["code"], error["op"]) == ("unknown_op", "fly")
    assert "fly" in error["message"]
    await a.send("chat", {"message": 5})
    assert (await a.expect("error"))["code"] == "bad_request"
    await a.ws.send_message(b"\x00\x01")
    assert (await a.expect("error"))["code"] == "bad_request"
    await a.send("chat", {"message": "x" * 1001})
    assert (await a.expect("error"))["code"] == "message_too_long"
    await a.send("chat", {"message": "still fine"})
    assert (await b.expect("chat"))["message"] == "still fine"
    await b.expect_nothing()  # none of the bad frames reached the partner


@pytest.mark.rule("protocol/camera-kind", "protocol/op-camera-kind")
async def test_camera_kind_checked_and_only_the_kind_relayed(server: Harness) -> None:
    a, b = await server.pair()
    for bad in ({"kind": "OBS Virtual Camera"}, {"kind": 1}, {}, {"label": "x"}):
        await a.send("camera_kind", bad)
        error = await a.expect("error")
        assert (error["code"], error["op"]) == ("bad_request", "camera_kind")
    await a.send("camera_kind", {"kind": "virtual", "label": "ManyCam", "extra": [1]})
    assert await b.expect("camera_kind") == {"kind": "virtual", "from": a.session_id}
    await b.expect_nothing()  # none of the bad ones reached the partner


async def _send_until_closed(client: Client, frames: list[str]) -> None:
    """Send frames; the server may close the socket before the last ones."""
    for frame in frames:
        try:
            await client.ws.send_message(frame)
        except ConnectionClosed:
            return


@pytest.mark.rule("protocol/close-codes", "protocol/rate-limits")
async def test_too_many_protocol_errors_close_4000(server: Harness) -> None:
    a, b = await server.pair()
    await _send_until_closed(a, ["nope"] * 25)
    assert await a.expect_closed() == 4000
    assert await b.expect("partner_disconnected") == {"reason": "left"}


async def test_oversized_frame_closes_1009(server: Harness) -> None:
    a, b = await server.pair()
    await a.ws.send_message('{"op":"chat","data":{"message":"' + "x" * 70000 + '"}}')
    assert await a.expect_closed() == 1009
    assert await b.expect("partner_disconnected") == {"reason": "left"}


async def test_oversized_multibyte_frame_closes_1009(server: Harness) -> None:
    # 40,000 characters (under the limit counted in characters) but 80,000 bytes.
    a, b = await server.pair()
    await a.ws.send_message('{"op":"chat","data":{"message":"' + "é" * 40000 + '"}}')
    assert await a.expect_closed() == 1009
    assert await b.expect("partner_disconnected") == {"reason": "left"}


@pytest.mark.rule("protocol/close-codes", "protocol/rate-limits")
async def test_message_rate_limit_then_4029(start_server: StartServer) -> None:
    server = await start_server(limits__messages_per_second=1, limits__message_burst=4)
    a, b = await server.pair()  # join_queue takes one of a's four
    for i in range(3):
        await a.send("typing", {"typing": bool(i % 2)})
    for _ in range(3):
        await b.expect("typing")
    await a.send("typing", {"typing": True})
    assert await a.expect("error") == {
        "code": "rate_limited",
        "message": "slow down",
        "op": "typing",
    }
    await b.expect_nothing()
    await _send_until_closed(a, ['{"op":"typing","data":{"typing":true}}'] * 15)
    assert await a.expect_closed() == 4029


@pytest.mark.rule("protocol/rate-limits")
async def test_nexts_per_minute_limit(start_server: StartServer) -> None:
    server = await start_server(limits__nexts_per_minute=2)
    a = await server.connect()
    for _ in range(2):
        await a.send("next")
        await a.expect("queued")
    await a.send("next")
    assert (await a.expect("error"))["code"] == "rate_limited"


@pytest.mark.rule("protocol/rate-limits")
async def test_nexts_per_minute_is_per_session_not_per_socket(start_server: StartServer) -> None:
    server = await start_server(limits__nexts_per_minute=2)
    token = server.token()
    a = await server.connect(token)
    for _ in range(2):
        await a.send("next")
        await a.expect("queued")
    await a.send("disconnect")
    await a.expect_closed()
    await wait_until(lambda: a.session_id not in server.ctx.hub.sessions)
    again = await server.connect(token)  # the same session, on a new socket
    assert again.session_id == a.session_id
    await again.send("next")
    assert (await again.expect("error"))["code"] == "rate_limited"
    await _send_until_closed(again, ['{"op":"next"}'] * 12)  # violations still count
    assert await again.expect_closed() == 4029
    other = await server.connect()  # another session has its own allowance
    await other.send("next")
    await other.expect("queued")


async def _spend_skips(server: Harness, skipper: Client, partner: Client, skips: int) -> None:
    """``skips`` times: ``skipper`` leaves its match with ``join_queue`` and meets ``partner``
    again (the partner's rejoin after being left is free)."""
    for _ in range(skips):
        await skipper.send("join_queue")
        await skipper.expect("queued")
        assert await partner.expect("partner_disconnected") == {"reason": "next"}
        await partner.send("join_queue")
        await partner.expect("match_found")
        await skipper.expect("match_found")


@pytest.mark.rule("protocol/rate-limits")
async def test_join_queue_while_matched_spends_a_skip(
    start_server: StartServer, backend: dict[str, Any]
) -> None:
    server = await start_server(limits__nexts_per_minute=3, **backend)
    a, b = await server.pair()  # a's join spent one
    await _spend_skips(server, a, b, 2)
    await a.send("join_queue")
    refusal = await a.expect("error")
    assert 1 <= refusal.pop("retry_after") <= 60  # when the window lets one through
    assert refusal == {
        "code": "rate_limited",
        "message": "slow down",
        "op": "join_queue",
    }
    await a.send("chat", {"message": "the match went on"})  # nothing ended
    assert (await b.expect("chat"))["message"] == "the match went on"
    await a.send("next")
    assert (await a.expect("error"))["op"] == "next"
    assert server.metric("omiro_budget_exceeded_total", budget="skips") == 2


@pytest.mark.parametrize("leave_by", ["leave_queue", "report"])
@pytest.mark.rule("protocol/rate-limits")
async def test_leaving_then_joining_spends_a_skip(
    start_server: StartServer, backend: dict[str, Any], leave_by: str
) -> None:
    server = await start_server(limits__nexts_per_minute=2, **backend)
    a, partner = await server.pair()  # a's join spent one
    data = {"reason": "spam"} if leave_by == "report" else None
    await a.send(leave_by, data)
    await partner.expect("partner_disconnected")
    await a.send("join_queue")  # the second
    await a.expect("queued")
    another = await server.connect()
    await another.send("join_queue")
    await a.expect("match_found")
    await another.expect("match_found")
    await a.send(leave_by, data)
    await another.expect("partner_disconnected")
    await a.send("join_queue")  # a third: one too many
    refusal = await a.expect("error")
    assert 1 <= refusal.pop("retry_after") <= 60  # when the window lets one through
    assert refusal == {
        "code": "rate_limited",
        "message": "slow down",
        "op": "join_queue",
    }


@pytest.mark.rule("protocol/rate-limits")
async def test_a_new_socket_of_the_session_spends_a_skip_to_join(
    start_server: StartServer, backend: dict[str, Any]
) -> None:
    server = await start_server(limits__nexts_per_minute=2, **backend)
    token = server.token()
    partner = await server.connect()
    await partner.send("join_queue")
    await partner.expect("queued")
    for _ in range(2):
        a = await server.connect(token)
        await a.send("join_queue")
        await a.expect("match_found")
        await partner.expect("match_found")
        await a.send("disconnect")  # leaves the match (as the page does), then comes back
        await a.ws.aclose()
        assert await partner.expect("partner_disconnected") == {"reason": "left"}
        gone = a.session_id
        await wait_until(lambda: gone not in server.ctx.hub.sessions)  # noqa: B023
        await partner.send("join_queue")
        await partner.expect("queued")
    again = await server.connect(token)
    await again.send("join_queue")
    assert (await again.expect("error"))["code"] == "rate_limited"


@pytest.mark.rule("protocol/rate-limits")
async def test_rejoining_after_the_partner_left_spends_nothing(
    start_server: StartServer, backend: dict[str, Any]
) -> None:
    server = await start_server(limits__nexts_per_minute=1, **backend)
    a, b = await server.pair()  # each spent its one
    await a.send("next")
    assert (await a.expect("error"))["code"] == "rate_limited"  # the match goes on
    await b.send("leave_queue")  # b leaves: a did not choose to
    assert await a.expect("partner_disconnected") == {"reason": "left"}
    await a.send("join_queue")  # free
    await a.expect("queued")
    await a.send("join_queue")  # but only the first
    assert (await a.expect("error"))["code"] == "rate_limited"
    await b.send("join_queue")  # b left by itself: its way back is a skip
    assert (await b.expect("error"))["code"] == "rate_limited"


@pytest.mark.rule("protocol/pair-tag", "protocol/msg-match-found")
async def test_match_found_pair_tag_is_the_same_for_the_same_two_networks(
    start_server: StartServer,
) -> None:
    """``pair`` in ``match_found``: equal on both sides, equal again after one side
    reconnects with a new session from the same network (a reload), different for
    another network, and made of no address."""
    server = await start_server(server__trusted_proxies=["127.0.0.0/8"])

    def via(ip: str) -> list[tuple[str, str]]:
        return [("X-Forwarded-For", ip)]

    async def match(x: Client, y: Client) -> tuple[dict[str, Any], dict[str, Any]]:
        await x.send("join_queue")
        await x.expect("queued")
        await y.send("join_queue")
        return await x.expect("match_found"), await y.expect("match_found")

    a = await server.connect(headers=via("198.51.100.7"))
    b = await server.connect(headers=via("2001:db8:5:6::1"))
    found_a, found_b = await match(a, b)
    tag = found_a["pair"]
    assert found_b["pair"] == tag
    assert len(tag) == 16
    assert int(tag, 16) >= 0  # hex: no address in it
    assert "198.51.100" not in tag

    # A "reload": the page leaves (`disconnect`, as it does on pagehide), a new
    # session comes from the same address.
    await a.send("disconnect")
    assert (await b.expect("partner_disconnected"))["reason"] == "left"
    # Its IPv6 neighbour in the same /64 counts as the same network.
    b2 = await server.connect(headers=via("2001:db8:5:6::99"))
    a2 = await server.connect(headers=via("198.51.100.7"))
    await b.ws.aclose()
    found_a2, found_b2 = await match(a2, b2)
    assert found_a2["partner"] == b2.session_id
    assert found_a2["pair"] == found_b2["pair"] == tag

    # Someone from another network: another tag.
    await b2.send("disconnect")
    assert (await a2.expect("partner_disconnected"))["reason"] == "left"
    c = await server.connect(headers=via("192.0.2.1"))
    found_c, found_a3 = await match(c, a2)
    assert found_c["pair"] == found_a3["pair"] != tag
