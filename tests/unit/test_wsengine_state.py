"""What an open engine connection keeps: not the handshake request, and a parser that works."""

from __future__ import annotations

import socket
import weakref
from collections.abc import Iterator

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from omiro_trio import wsengine

REQUEST = (
    b"GET /ws?token=t HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
)


def _client_text(payload: bytes) -> bytes:
    client = Protocol(Side.CLIENT)
    client.send_text(payload)
    return b"".join(client.data_to_send())


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    yield ours
    ours.close()
    theirs.close()


def _open(sock: socket.socket, pipelined: bytes = b"") -> tuple[wsengine.WsConnection, object]:
    proto = wsengine.new_protocol(65536)
    proto.receive_data(REQUEST + pipelined)
    request = wsengine.handshake_request(proto)
    assert request is not None
    proto.send_response(proto.accept(request))
    ref = weakref.ref(request)
    del request
    conn = wsengine.WsConnection(
        wsengine.Engine(60.0), sock, proto, send_queue=8, on_fail=lambda *_: None
    )
    return conn, ref


def _texts(conn: wsengine.WsConnection) -> list[bytes]:
    proto = conn.proto
    assert proto is not None
    return [
        bytes(e.data)
        for e in proto.events_received()
        if isinstance(e, Frame) and e.opcode is Opcode.TEXT
    ]


def test_open_connection_lets_the_handshake_request_go(sock: socket.socket) -> None:
    conn, request = _open(sock)
    assert request() is None  # no parser frame keeps it (about 2 KiB of headers)
    assert conn.proto is not None
    conn.proto.receive_data(_client_text(b"after the upgrade"))
    assert _texts(conn) == [b"after the upgrade"]
    conn.release()


def test_frames_pipelined_behind_the_request_keep_their_parser(sock: socket.socket) -> None:
    frame = _client_text(b"pipelined")
    conn, _ = _open(sock, pipelined=frame[:3])  # a frame cut short behind the request
    assert conn.proto is not None
    conn.proto.receive_data(frame[3:])
    assert _texts(conn) == [b"pipelined"]
    conn.release()


def test_empty_outbox_holds_no_buffer(sock: socket.socket) -> None:
    conn, _ = _open(sock)
    conn.out.clear()
    assert conn.push(b'{"op":"x"}')
    conn.write_now()  # the socket pair takes it at once
    assert conn.out == []
    assert conn.pending is None
    conn.release()
