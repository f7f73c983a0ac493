"""``connection._Reading``: whether the client has already left behind the frame being handled.

The hub asks it before a way into the queue (``Session.left_ahead``). It
looks at the frames read and not yet handled, then one step ahead in what
the socket already holds, without waiting (``WsConnection.read_ahead``).
Over a socket pair, with a real engine connection and a real core.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from websockets.protocol import Protocol, Side

from omiro_trio import wsengine
from omiro_trio.connection import _Reading
from omiro_trio.session_core import SessionCore

REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
NEXT = '{"op":"next"}'
CHAT = '{"op":"chat","data":{"message":"disconnect? not yet"}}'
DISCONNECT = '{"op":"disconnect"}'


def client_frames(*texts: str, close: bool = False) -> bytes:
    client = Protocol(Side.CLIENT)
    for payload in texts:
        client.send_text(payload.encode())
    if close:
        client.send_close(1000)
    return b"".join(client.data_to_send())


@pytest.fixture
def pair() -> Iterator[tuple[wsengine.WsConnection, socket.socket]]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    proto = wsengine.new_protocol(65536)
    proto.receive_data(REQUEST)
    request = wsengine.handshake_request(proto)
    assert request is not None
    proto.send_response(proto.accept(request))
    conn = wsengine.WsConnection(
        wsengine.Engine(60.0),
        ours,
        proto,
        send_queue=8,
        send_queue_bytes=1 << 20,
        on_fail=lambda *_: None,
    )
    conn.write_now()
    yield conn, theirs
    conn.release()
    ours.close()
    theirs.close()


def reading(conn: wsengine.WsConnection) -> _Reading:
    return _Reading(conn, SessionCore("a", 0.0))


async def test_a_disconnect_among_the_frames_not_yet_handled(
    pair: tuple[wsengine.WsConnection, socket.socket],
) -> None:
    conn, client = pair
    client.sendall(client_frames(NEXT, CHAT, DISCONNECT))
    left = reading(conn)
    left.frames = await conn.receive()
    assert left.frames == [NEXT, CHAT, DISCONNECT]
    assert left()
    left.frames = [NEXT, CHAT]
    assert not left()  # a chat that only names it is not one, and nothing more came


@pytest.mark.parametrize(
    ("behind", "close", "leaves"),
    [
        ([CHAT, DISCONNECT], False, True),  # in the socket, behind the frames read
        ([CHAT], True, True),  # a close frame
        ([CHAT], False, False),  # more to come: it stays
        ([], False, False),  # nothing at all: no wait for it
    ],
    ids=["disconnect", "close frame", "a chat", "nothing"],
)
async def test_what_the_socket_already_holds_is_read_ahead(
    pair: tuple[wsengine.WsConnection, socket.socket],
    behind: list[str],
    close: bool,
    leaves: bool,
) -> None:
    conn, client = pair
    client.sendall(client_frames(NEXT))
    left = reading(conn)
    left.frames = await conn.receive()
    if behind or close:
        client.sendall(client_frames(*behind, close=close))
    assert left() is leaves  # (a plain call: it cannot wait)
    if behind:  # what was read ahead is handled next, in order, nothing lost
        assert await conn.receive() == behind


async def test_the_end_of_the_socket_read_ahead(
    pair: tuple[wsengine.WsConnection, socket.socket],
) -> None:
    conn, client = pair
    client.sendall(client_frames(NEXT))
    left = reading(conn)
    left.frames = await conn.receive()
    client.shutdown(socket.SHUT_WR)
    assert left()
    left.release()
    assert left()  # a connection gone is a client gone
