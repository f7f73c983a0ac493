"""What an open engine connection keeps: not the handshake request, and a parser that works."""

from __future__ import annotations

import contextlib
import os
import socket
import weakref
from collections.abc import Iterator

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from omiro_trio import wsengine
from omiro_trio.budgets import Budget

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


_PEERS: dict[socket.socket, socket.socket] = {}


@pytest.fixture
def sock() -> Iterator[socket.socket]:
    """Our end of a socket pair (non-blocking); ``_PEERS[ours]`` is the client's."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    _PEERS[ours] = theirs
    yield ours
    del _PEERS[ours]
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
        wsengine.Engine(60.0),
        sock,
        proto,
        send_queue=8,
        send_queue_bytes=1 << 20,
        on_fail=lambda *_: None,
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


# -- budgets ------------------------------------------------------------------------


def _client_frames(*frames: tuple[Opcode, bytes, bool]) -> bytes:
    client = Protocol(Side.CLIENT)
    for opcode, data, fin in frames:
        client.send_frame(Frame(opcode, data, fin))
    return b"".join(client.data_to_send())


def _fill_socket(sock: socket.socket) -> None:
    """Fill the socket's send buffer: whatever is written next waits for the peer."""
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.send(b"\0" * 65536)


def test_unsent_rest_is_never_copied_again(sock: socket.socket) -> None:
    conn, _ = _open(sock)
    conn.write_now()  # the handshake's answer
    peer = socket.socket(fileno=os.dup(_PEERS[sock].fileno()))
    peer.setblocking(False)
    conn.send_queue = 1000  # frames: not the limit here
    for _ in range(4):
        assert conn.push(b"x" * 60000)
    conn.write_now()
    first = conn.pending
    assert first is not None
    buffer = first.obj  # the one joined buffer
    for _ in range(20):  # the reader takes a little at a time
        with contextlib.suppress(BlockingIOError):
            peer.recv(1000)
        assert conn.push(b"y" * 10)  # and more is queued behind
        conn.write_now()
        if conn.pending is None:
            break
        assert conn.pending.obj is buffer  # a view of the same bytes, not a copy
    peer.close()
    conn.release()


def test_bytes_queued_for_a_reader_that_does_not_read_are_bounded(sock: socket.socket) -> None:
    conn, _ = _open(sock)
    conn.write_now()
    _fill_socket(sock)
    conn.send_queue = 1000  # frames: not the limit here
    conn.send_queue_bytes = 200_000
    pushed = 0
    while conn.push(b"z" * 50_000):
        pushed += 1
        assert pushed < 10
    assert pushed == 3  # a fourth would be 200 KB and more
    assert conn.exceeded is Budget.SEND_QUEUE
    assert conn.queued_bytes > conn.send_queue_bytes
    conn.release()


def test_a_partial_write_counts_toward_the_bytes_queued(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn, _ = _open(sock)
    conn.write_now()
    conn.send_queue_bytes = 200_000
    assert conn.push(b"p" * 150_000)
    conn.write_now()  # the socket takes part; the rest waits in pending
    assert conn.pending is not None
    _fill_socket(sock)
    waiting = conn.queued_bytes
    assert waiting == len(conn.pending)
    assert conn.push(b"q" * (200_000 - waiting - 10))
    assert not conn.push(b"r" * 100)
    conn.release()


@pytest.mark.rule("protocol/fragments-and-pings")
def test_a_slice_of_pings_gets_one_pong(sock: socket.socket) -> None:
    conn, _ = _open(sock)
    conn.write_now()
    assert conn.proto is not None
    conn.proto.receive_data(
        _client_frames(*[(Opcode.PING, str(n).encode(), True) for n in range(500)])
    )
    assert conn._messages(conn.proto) == []
    assert conn.control_frames == 500
    conn.take_protocol_writes()
    assert conn.out == [b"\x8a\x03499"]  # the latest ping's answer only


@pytest.mark.parametrize(
    ("fragments", "closed"),
    [(wsengine.MAX_MESSAGE_FRAGMENTS, False), (wsengine.MAX_MESSAGE_FRAGMENTS + 1, True)],
)
def test_fragments_per_message_are_bounded(
    sock: socket.socket, fragments: int, closed: bool
) -> None:
    conn, _ = _open(sock)
    proto = conn.proto
    assert proto is not None
    parts = [(Opcode.TEXT, b"{", False)]
    parts += [(Opcode.CONT, b"", False)] * (fragments - 2)  # empty ones count too
    parts.append((Opcode.CONT, b"}", True))
    proto.receive_data(_client_frames(*parts))
    messages = conn._messages(proto)
    if closed:
        assert messages == []
        assert conn.close_code == 1009
        assert conn.exceeded is Budget.FRAGMENTS
    else:
        assert messages == ["{}"]
        assert conn.close_code is None
    conn.release()


async def test_a_read_is_parsed_a_slice_at_a_time(sock: socket.socket) -> None:
    conn, _ = _open(sock)
    conn.write_now()
    frame = _client_text(b'{"op":"typing","data":{"typing":true}}')
    _PEERS[sock].sendall(frame * 1000)
    first = await conn.receive()
    assert 0 < len(first) <= wsengine.PARSE_SLICE_BYTES // len(frame) + 1
    total = len(first)
    while total < 1000:
        total += len(await conn.receive())
    assert total == 1000
    conn.release()


async def test_frames_read_behind_the_upgrade_are_parsed_a_slice_at_a_time(
    sock: socket.socket,
) -> None:
    proto = wsengine.new_protocol(65536)
    proto.receive_data(REQUEST)
    request = wsengine.handshake_request(proto)
    assert request is not None
    proto.send_response(proto.accept(request))
    frame = _client_text(b'{"op":"typing","data":{"typing":true}}')
    conn = wsengine.WsConnection(
        wsengine.Engine(60.0),
        sock,
        proto,
        send_queue=8,
        send_queue_bytes=1 << 20,
        on_fail=lambda *_: None,
        unparsed=frame * 1000,
    )
    first = await conn.receive()
    assert 0 < len(first) <= wsengine.PARSE_SLICE_BYTES // len(frame) + 1
    total = len(first)
    while total < 1000:
        total += len(await conn.receive())
    assert total == 1000
    conn.release()


# -- reading ahead --------------------------------------------------------------------


async def test_read_ahead_takes_one_step_without_waiting(sock: socket.socket) -> None:
    conn, _ = _open(sock)
    conn.write_now()
    conn.read_ahead()  # nothing there: it returns at once, having read nothing
    assert list(conn.ahead) == []
    assert conn.open
    frame = _client_text(b'{"op":"typing","data":{"typing":true}}')
    _PEERS[sock].sendall(frame * 1000)
    conn.read_ahead()
    ahead = list(conn.ahead)
    assert 0 < len(ahead) <= wsengine.PARSE_SLICE_BYTES // len(frame) + 1  # one slice
    conn.read_ahead()  # nothing more while those wait
    assert list(conn.ahead) == ahead
    assert await conn.receive() == ahead  # they come first, in order
    assert list(conn.ahead) == []
    total = len(ahead)
    while total < 1000:  # and the rest after them: nothing lost, nothing twice
        total += len(await conn.receive())
    assert total == 1000
    conn.release()


async def test_read_ahead_sees_the_end_behind_the_last_messages(sock: socket.socket) -> None:
    conn, _ = _open(sock)
    conn.write_now()
    peer = _PEERS[sock]
    peer.sendall(_client_text(b"first") + _client_text(b"last"))
    peer.shutdown(socket.SHUT_WR)  # the stream ends behind them, without a close frame
    assert await conn.receive() == ["first", "last"]
    assert conn.open
    conn.read_ahead()
    assert not conn.open  # the end, read ahead
    assert list(conn.ahead) == []
    assert await conn.receive() == []
    assert conn.failure is None  # the peer went; nothing of the engine's to report
    conn.release()


async def test_read_ahead_keeps_messages_before_a_close_frame(sock: socket.socket) -> None:
    conn, _ = _open(sock)
    conn.write_now()
    closing = Protocol(Side.CLIENT)
    closing.send_text(b"bye")
    closing.send_close(1000)
    _PEERS[sock].sendall(b"".join(closing.data_to_send()))
    conn.read_ahead()
    assert list(conn.ahead) == ["bye"]
    assert not conn.open  # the peer's close frame came with it
    assert await conn.receive() == ["bye"]  # handled all the same
    assert await conn.receive() == []
    conn.release()
