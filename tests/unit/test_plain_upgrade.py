"""The plain upgrade (``heads.simple_upgrade`` and ``wsengine.plain_upgrade``) reads and
accepts only what ``websockets`` reads and accepts, and answers as it would.

A connection's first request, when it is a plain WebSocket upgrade already
read whole, is read once by ``simple_upgrade`` and accepted by
``plain_upgrade`` instead of ``websockets``' own request parser and
``ServerProtocol.accept``. Both are a strict subset: whatever they take,
``websockets`` takes the same way (the same head, the same
``Sec-WebSocket-Accept`` and subprotocol, the same 101, byte for byte);
whatever they leave (None) goes to ``websockets`` as before. The requests
browsers and clients really send take the plain path.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from websockets.protocol import State

from omiro_trio import wsengine
from omiro_trio.admission import SUBPROTOCOL
from omiro_trio.connection import head_of
from omiro_trio.http.heads import simple_upgrade

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example: its accept is below
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
DATE = "Mon, 07 Dec 2026 04:20:00 GMT"


@pytest.fixture(autouse=True)
def _one_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wsengine, "http_date", lambda: DATE)


def _websockets(data: bytes) -> tuple[wsengine.EngineProtocol, bytes] | None:
    """What ``websockets`` makes of ``data``: the protocol and its 101, or None if refused."""
    proto = wsengine.new_protocol(65536, (SUBPROTOCOL,))
    proto.receive_data(data)
    request = wsengine.handshake_request(proto)
    if request is None:
        return None
    response = proto.accept(request)
    if response.status_code != 101:
        return None
    return proto, wsengine.response_bytes(proto, response)


def _plain(data: bytes) -> tuple[wsengine.EngineProtocol, bytes, int] | None:
    """What the plain path makes of ``data``: the open protocol, its 101, where the head ends."""
    read = simple_upgrade(data)
    if read is None:
        return None
    head, end = read
    upgrade = wsengine.plain_upgrade(head.headers, (SUBPROTOCOL,))
    if upgrade is None:
        return None
    proto = wsengine.open_protocol(65536, upgrade[1], head.header("origin"))
    return proto, wsengine.switching_protocols(*upgrade), end


def _assert_same(data: bytes) -> bool:
    """The plain path's outcome, if it takes ``data``, is websockets'; whether it took it."""
    plain = _plain(data)
    if plain is None:
        return False
    proto, answer, end = plain
    theirs = _websockets(data[:end])
    assert theirs is not None, "the plain path accepted what websockets refuses"
    their_proto, their_answer = theirs
    assert answer == their_answer
    assert proto.state is their_proto.state is State.OPEN
    assert proto.subprotocol == their_proto.subprotocol
    assert proto.origin == their_proto.origin
    read = simple_upgrade(data)
    assert read is not None
    request = wsengine.new_protocol(65536)
    request.receive_data(data[:end])
    parsed = wsengine.handshake_request(request)
    assert parsed is not None
    assert read[0] == head_of(parsed)
    return True


_BASE = [
    b"Host: 127.0.0.1:8080\r\n",
    b"Upgrade: websocket\r\n",
    b"Connection: Upgrade\r\n",
    b"Sec-WebSocket-Key: " + KEY + b"\r\n",
    b"Sec-WebSocket-Version: 13\r\n",
]

# What real clients send, as captured from them (the key is RFC 6455's example).
CHROMIUM = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nConnection: Upgrade\r\n"
    b"Pragma: no-cache\r\nCache-Control: no-cache\r\nUser-Agent: Mozilla/5.0 (X11; Linux "
    b"x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36\r\n"
    b"Upgrade: websocket\r\nOrigin: http://127.0.0.1:8080\r\nSec-WebSocket-Version: 13\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\nAccept-Language: en-US,en;q=0.9\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"Sec-WebSocket-Protocol: omiro, omiro.token.abc.1767000000.0f\r\n\r\n"
)
FIREFOX = (
    b"GET /ws HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: Mozilla/5.0 (X11; Linux "
    b"x86_64; rv:140.0) Gecko/20100101 Firefox/140.0\r\nAccept: */*\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Sec-WebSocket-Version: 13\r\nOrigin: http://localhost:8080\r\n"
    b"Sec-WebSocket-Protocol: omiro,omiro.token.abc.1767000000.0f\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
    b"Connection: keep-alive, Upgrade\r\nSec-Fetch-Dest: empty\r\nSec-Fetch-Mode: websocket\r\n"
    b"Sec-Fetch-Site: same-origin\r\nPragma: no-cache\r\nCache-Control: no-cache\r\n"
    b"Upgrade: websocket\r\n\r\n"
)
WEBSOCKETS_CLIENT = (
    b"GET /ws?token=abc%3A1767000000%3A0f HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"User-Agent: Python/3.11 websockets/17.0\r\n\r\n"
)


@pytest.mark.parametrize("data", [CHROMIUM, FIREFOX, WEBSOCKETS_CLIENT])
def test_what_real_clients_send_takes_the_plain_path(data: bytes) -> None:
    assert _assert_same(data)


def test_the_answer_is_rfc_6455s() -> None:
    plain = _plain(b"GET /ws HTTP/1.1\r\n" + b"".join(_BASE) + b"\r\n")
    assert plain is not None
    _, answer, _ = plain
    assert answer == (
        b"HTTP/1.1 101 Switching Protocols\r\nDate: " + DATE.encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + ACCEPT.encode() + b"\r\n\r\n"
    )


def test_omiro_is_echoed_and_the_token_never() -> None:
    data = b"GET /ws HTTP/1.1\r\n" + b"".join(_BASE)
    plain = _plain(data + b"Sec-WebSocket-Protocol: omiro.token.a.1.f, omiro\r\n\r\n")
    assert plain is not None
    proto, answer, _ = plain
    assert proto.subprotocol == "omiro"
    assert b"Sec-WebSocket-Protocol: omiro\r\n" in answer
    assert b"token" not in answer


def test_what_follows_the_head_is_not_part_of_it() -> None:
    head = b"GET /ws HTTP/1.1\r\n" + b"".join(_BASE) + b"\r\n"
    plain = _plain(head + b"\x81\x85frame")
    assert plain is not None
    assert plain[2] == len(head)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ((b"Upgrade: websocket\r\n", b""), "no Upgrade: websockets answers 426"),
        ((b"Upgrade: websocket\r\n", b"Upgrade: h2c\r\n"), "not websocket"),
        ((b"Upgrade: websocket\r\n", b"Upgrade: websocket/13\r\n"), "a versioned protocol"),
        ((b"Connection: Upgrade\r\n", b"Connection: close\r\n"), "no upgrade token"),
        ((b"Connection: Upgrade\r\n", b"Connection: Upgrade,,\r\n"), "an empty list entry"),
        ((KEY, b"dGhlIHNhbXBsZSBub25jZQ"), "a key without its padding"),
        ((KEY, b"dGhlIHNhbXBsZSBub25jZQ=!"), "not base64"),
        ((KEY, b"dGhlIHNhbXBsZSBub25jZQ==" + b"\r\nSec-WebSocket-Key: " + KEY), "two keys"),
        ((b"Version: 13", b"Version: 8"), "another version"),
        ((b"Host: 127.0.0.1:8080\r\n", b""), "no Host"),
        ((b"Host: 127.0.0.1:8080\r\n", b"Host: a\r\nOrigin: a\r\nOrigin: b\r\n"), "two origins"),
        ((b"Host: 127.0.0.1:8080\r\n", b"Host: a\r\nContent-Length: 0\r\n"), "a body header"),
        ((b"Host: 127.0.0.1:8080\r\n", b"Host: a\r\nSec-WebSocket-Protocol: a:b\r\n"), "a colon"),
        ((b"GET /ws HTTP/1.1", b"GET /ws HTTP/1.0"), "HTTP/1.0"),
        ((b"GET /ws HTTP/1.1", b"POST /ws HTTP/1.1"), "not GET"),
        ((b"\r\nUpgrade", b"\nUpgrade"), "a bare line feed"),
    ],
)
def test_everything_else_is_websockets_to_judge(change: tuple[bytes, bytes], why: str) -> None:
    data = (b"GET /ws HTTP/1.1\r\n" + b"".join(_BASE) + b"\r\n").replace(*change)
    assert _plain(data) is None, why


def test_websockets_limits_are_kept() -> None:
    many = b"GET /ws HTTP/1.1\r\n" + b"".join(_BASE) + b"X: y\r\n" * 123 + b"\r\n"
    assert _assert_same(many)  # 128 headers: websockets' most
    too_many = many.replace(b"X: y\r\n", b"X: y\r\nX: y\r\n", 1)
    assert _plain(too_many) is None
    assert _websockets(too_many) is None
    long = b"GET /ws HTTP/1.1\r\n" + b"".join(_BASE) + b"X: " + b"y" * 8187 + b"\r\n\r\n"
    assert _assert_same(long)  # a line of 8,190 bytes and its CRLF: websockets' longest
    too_long = long.replace(b"X: y", b"X: yy", 1)
    assert _plain(too_long) is None
    assert _websockets(too_long) is None


_LINES = st.sampled_from(
    [
        *_BASE,
        b"Host: a\r\n",
        b"Upgrade: WebSocket\r\n",
        b"Upgrade: websocket, h2c\r\n",
        b"Upgrade:\r\n",
        b"Connection: keep-alive, Upgrade\r\n",
        b"Connection: upgrade ,\tclose\r\n",
        b"Connection: Upgrade,\r\n",
        b"connection: close\r\n",
        b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n",
        b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\n",
        b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n",
        b"Sec-WebSocket-Key: \xe9AAAAAAAAAAAAAAAAAAAAA==\r\n",
        b"Sec-WebSocket-Version: 13 \r\n",
        b"Sec-WebSocket-Version: 8\r\n",
        b"Origin: http://a\r\n",
        b"Origin: null\r\n",
        b"Sec-WebSocket-Protocol: omiro\r\n",
        b"Sec-WebSocket-Protocol: x, omiro.token.a.1.f\r\n",
        b"Sec-WebSocket-Protocol: omiro ,  chat\r\n",
        b"Sec-WebSocket-Protocol: \r\n",
        b"Sec-WebSocket-Protocol: a b\r\n",
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        b"Sec-WebSocket-Extensions: ;;\r\n",
        b"Content-Length: 0\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"X-Forwarded-For: 1.2.3.4\r\n",
        b"X: \xe9t\xe9\r\n",
        b"X : y\r\n",
        b"X: y\r\n z\r\n",
        b"X\r\n",
        b"X: \x7f\r\n",
        b"X: a\nY: b\r\n",
    ]
)


@given(
    st.sampled_from([b"GET ", b"get ", b"POST ", b"GET  "]),
    st.sampled_from([b"/ws", b"/ws?token=a%3Ab", b"/\xff", b"*", b"/ x"]),
    st.sampled_from([b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", b"\r\n"]),
    st.lists(_LINES, max_size=12),
    st.binary(max_size=8),
)
@example(b"GET ", b"/ws", b" HTTP/1.1\r\n", _BASE, b"")
def test_never_accepts_otherwise_than_websockets(
    method: bytes, target: bytes, version: bytes, lines: list[bytes], tail: bytes
) -> None:
    _assert_same(method + target + version + b"".join(lines) + b"\r\n" + tail)


@given(st.lists(_LINES, max_size=6).flatmap(lambda extra: st.permutations(_BASE + extra)))
def test_never_accepts_otherwise_than_websockets_near_a_valid_upgrade(lines: list[bytes]) -> None:
    """An upgrade's lines in any order, with others among them: often taken, never wrongly."""
    _assert_same(b"GET /ws?token=a HTTP/1.1\r\n" + b"".join(lines) + b"\r\n")


def test_the_properties_reach_both_outcomes() -> None:
    """The strategies above make requests the plain path takes and ones it leaves."""
    taken = b"GET /ws HTTP/1.1\r\n" + b"".join(_BASE) + b"\r\n"
    assert _assert_same(taken)
    assert not _assert_same(taken.replace(b"13", b"8"))
    found = []

    @given(st.lists(_LINES, max_size=6).flatmap(lambda extra: st.permutations(_BASE + extra)))
    def outcome(lines: list[bytes]) -> None:
        found.append(_assert_same(b"GET /ws HTTP/1.1\r\n" + b"".join(lines) + b"\r\n"))

    outcome()
    assert True in found
    assert False in found
