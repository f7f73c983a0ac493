"""The session token in ``Sec-WebSocket-Protocol``, where proxies log nothing.

Over real sockets: a trio-websocket client that offers the token as a
subprotocol and checks the echo as RFC 6455 asks, the URL form beside it,
and raw requests for the exact response header and the clear 400s.
"""

from __future__ import annotations

import json

import pytest
import trio
from hostile import open_raw, read_response_head, read_until_closed, upgrade_head
from support import WAIT_S, Client, Harness
from trio_websocket import ConnectionRejected, connect_websocket_url, open_websocket_url


def offered(token: str) -> str:
    """The token as a subprotocol: its colons written as dots."""
    return "omiro.token." + token.replace(":", ".")


async def raw_upgrade(server: Harness, target: str, protocols: list[str]) -> tuple[int, bytes]:
    """Send an upgrade with these ``Sec-WebSocket-Protocol`` headers; the status and head."""
    stream = await open_raw(server)
    extra = "".join(f"Sec-WebSocket-Protocol: {value}\r\n" for value in protocols)
    await stream.send_all(upgrade_head(target, extra=extra))
    buffer = b""
    with trio.fail_after(WAIT_S):
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            assert chunk, buffer
            buffer += chunk
    head, _, _ = buffer.partition(b"\r\n\r\n")
    await stream.aclose()
    return int(head.split(b" ", 2)[1]), head


def header_values(head: bytes, name: bytes) -> list[bytes]:
    lines = head.split(b"\r\n")[1:]
    return [
        line.split(b":", 1)[1].strip()
        for line in lines
        if line.split(b":", 1)[0].strip().lower() == name
    ]


@pytest.mark.rule("protocol/token-subprotocol", "protocol/ws-upgrade")
async def test_the_token_as_a_subprotocol_opens_the_session(server: Harness) -> None:
    token = server.token()
    session_id = token.split(":", 1)[0]
    ws = await connect_websocket_url(
        server.nursery, server.ws_url, subprotocols=["omiro", offered(token)]
    )
    assert ws.subprotocol == "omiro"  # one of the offered, never the token
    hello = await Client(ws).expect("hello")
    assert hello["session_id"] == session_id
    await ws.aclose()


@pytest.mark.rule("protocol/token-subprotocol")
async def test_the_server_echoes_omiro_and_only_when_offered(server: Harness) -> None:
    token = server.token()
    # One header or two, in any order: the echo is exactly "omiro".
    status, head = await raw_upgrade(server, "/ws", [f"{offered(token)}, omiro"])
    assert status == 101
    assert header_values(head, b"sec-websocket-protocol") == [b"omiro"]
    assert token.split(":")[-1].encode() not in head
    status, head = await raw_upgrade(server, "/ws", ["omiro", offered(server.token())])
    assert (status, header_values(head, b"sec-websocket-protocol")) == (101, [b"omiro"])
    # The URL form with no subprotocol: none echoed (RFC 6455: only one offered).
    status, head = await raw_upgrade(server, f"/ws?token={server.token()}", [])
    assert (status, header_values(head, b"sec-websocket-protocol")) == (101, [])
    # The URL form with "omiro" offered: echoed.
    status, head = await raw_upgrade(server, f"/ws?token={server.token()}", ["omiro"])
    assert (status, header_values(head, b"sec-websocket-protocol")) == (101, [b"omiro"])
    # Someone else's subprotocols only: none chosen, the upgrade goes on.
    status, head = await raw_upgrade(server, f"/ws?token={server.token()}", ["chat, v2.x"])
    assert (status, header_values(head, b"sec-websocket-protocol")) == (101, [])


@pytest.mark.rule("protocol/token-subprotocol")
async def test_the_url_form_keeps_working_beside_it(server: Harness) -> None:
    ws = await connect_websocket_url(
        server.nursery, f"{server.ws_url}?token={server.token()}", subprotocols=["omiro"]
    )
    assert ws.subprotocol == "omiro"
    assert (await Client(ws).expect("hello"))["session_id"]
    await ws.aclose()
    plain = await server.connect()  # no subprotocol at all
    assert plain.session_id


@pytest.mark.rule("protocol/token-subprotocol", "protocol/handshake-errors")
@pytest.mark.parametrize(
    ("protocols", "said"),
    [
        (["omiro, , x"], "a comma-separated list of tokens"),
        (["omiro, to:ken"], "a comma-separated list of tokens"),
        (["omiro, é"], "a comma-separated list of tokens"),
        (["omiro", ""], "a comma-separated list of tokens"),
        (["omiro.token.a.1.f"], 'must come with the "omiro" subprotocol'),
        (["omiro, omiro.token.a.1.f, omiro.token.b.2.e"], "more than one session token"),
    ],
    ids=["empty entry", "colon", "not ascii", "empty header", "token alone", "two tokens"],
)
async def test_a_malformed_subprotocol_header_is_a_clear_400(
    server: Harness, protocols: list[str], said: str
) -> None:
    stream = await open_raw(server)
    extra = "".join(f"Sec-WebSocket-Protocol: {value}\r\n" for value in protocols)
    await stream.send_all(upgrade_head(f"/ws?token={server.token()}", extra=extra))
    status, rest = await read_response_head(stream)
    body = rest + await read_until_closed(stream)
    assert status == 400
    answer = json.loads(body)
    assert answer["error"] == "bad_request"
    assert said in answer["message"]
    assert server.metric("omiro_handshake_rejections_total", status="400") >= 1
    assert not server.ctx.hub.sessions


@pytest.mark.rule("protocol/token-subprotocol", "protocol/session-token")
async def test_a_bad_token_as_a_subprotocol_is_401(server: Harness) -> None:
    good = server.token()
    tampered = good[:-1] + ("0" if good[-1] != "0" else "1")
    for token in (tampered, "not-a-token"):
        with pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(server.ws_url, subprotocols=["omiro", offered(token)]):
                pass
        assert info.value.status_code == 401
        assert b'"invalid_token"' in (info.value.body or b"")
