"""The /ws engine on the wire: RFC 6455 close codes, fragments, pings, the close handshake.

A raw client writes frames byte by byte as a hostile or unusual client
would, and parses the server's frames with ``websockets``' client protocol.
Every test ends by checking that the server still answers and logged no
traceback.
"""

from __future__ import annotations

import base64
import logging
import os
import struct

import httpx
import msgspec
import pytest
import trio
from support import Harness, StartServer, wait_until
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

WAIT_S = 5.0


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """One client frame, built by hand so that it can break the rules."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mask_bit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def text(op: str, data: dict[str, object] | None = None) -> bytes:
    return msgspec.json.encode({"op": op, "data": data or {}})


class RawWs:
    """A WebSocket client that sends exactly the bytes it is given."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.parser = Protocol(Side.CLIENT)
        self.frames: list[Frame] = []
        self.eof = False

    @classmethod
    async def connect(cls, server: Harness, *, then: bytes = b"") -> RawWs:
        stream = await trio.open_tcp_stream("127.0.0.1", server.running.port)
        key = base64.b64encode(os.urandom(16)).decode()
        head = (
            f"GET /ws?token={server.token()} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        await stream.send_all(head + then)
        response = b""
        with trio.fail_after(WAIT_S):
            while b"\r\n\r\n" not in response:
                response += await stream.receive_some(1)  # stop exactly at the head's end
        assert response.startswith(b"HTTP/1.1 101 "), response
        client = cls(stream)
        hello = await client.next_frame()
        assert msgspec.json.decode(hello.data)["op"] == "hello"
        return client

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_frame(self) -> Frame:
        """The next frame from the server (fails at end of stream)."""
        with trio.fail_after(WAIT_S):
            while not self.frames:
                assert not self.eof, "the server closed the stream"
                data = await self.stream.receive_some(65536)
                if data:
                    self.parser.receive_data(data)
                else:
                    self.eof = True
                    self.parser.receive_eof()
                self.frames += [e for e in self.parser.events_received() if isinstance(e, Frame)]
            return self.frames.pop(0)

    async def expect(self, op: str) -> dict[str, object]:
        frame = await self.next_frame()
        assert frame.opcode is Opcode.TEXT
        message = msgspec.json.decode(frame.data)
        assert message["op"] == op, message
        data: dict[str, object] = message["data"]
        return data

    async def expect_close(self) -> int:
        """Skip data frames until the close frame; return its code."""
        while True:
            frame = await self.next_frame()
            if frame.opcode is Opcode.CLOSE:
                return struct.unpack("!H", frame.data[:2])[0] if frame.data else 1005

    async def rest(self) -> list[Frame]:
        """Every frame until the server ends the stream (which must happen)."""
        frames: list[Frame] = []
        with trio.fail_after(WAIT_S):
            while True:
                try:
                    frames.append(await self.next_frame())
                except AssertionError:
                    return frames


async def _still_fine(server: Harness, caplog: pytest.LogCaptureFixture) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


@pytest.mark.rule("protocol/close-codes")
async def test_invalid_utf8_closes_1007_and_partner_hears(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    bad = await RawWs.connect(server)
    await bad.send(client_frame(Opcode.TEXT.value, text("join_queue")))
    await bad.expect("queued")
    partner = await server.connect()
    await partner.send("join_queue")
    await partner.expect("match_found")
    await bad.send(client_frame(Opcode.TEXT.value, b'{"op":"chat","data":{"message":"\xff"}}'))
    assert await bad.expect_close() == 1007
    assert await partner.expect("partner_disconnected") == {"reason": "left"}
    assert server.metric("omiro_socket_closes_total", code="1007") == 1
    await _still_fine(server, caplog)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(
            client_frame(Opcode.TEXT.value, text("leave_queue"), mask=False), id="unmasked"
        ),
        pytest.param(client_frame(0x3, b"x"), id="reserved-opcode"),
        pytest.param(client_frame(Opcode.TEXT.value, text("leave_queue"), rsv=4), id="rsv1-bit"),
        pytest.param(client_frame(Opcode.CONT.value, b"x"), id="stray-continuation"),
        pytest.param(client_frame(Opcode.PING.value, b"x" * 126), id="long-control-frame"),
    ],
)
@pytest.mark.rule("protocol/close-codes")
async def test_protocol_violation_closes_1002(
    server: Harness, caplog: pytest.LogCaptureFixture, frame: bytes
) -> None:
    caplog.set_level(logging.WARNING)
    client = await RawWs.connect(server)
    await client.send(frame)
    assert await client.expect_close() == 1002
    assert await client.rest() == []  # then the stream ends
    await wait_until(lambda: not server.ctx.hub.sessions)
    await _still_fine(server, caplog)


@pytest.mark.rule("protocol/close-codes")
async def test_too_big_announced_length_closes_1009_before_the_payload(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = await start_server(server__max_frame_bytes=1000)
    client = await RawWs.connect(server)
    # Only the header: the server must refuse on the announced length alone.
    await client.send(struct.pack("!BBQ", 0x81, 0x80 | 127, 10**9))
    assert await client.expect_close() == 1009
    await _still_fine(server, caplog)


@pytest.mark.rule("protocol/fragments-and-pings")
async def test_fragmented_message_is_joined(server: Harness) -> None:
    a = await RawWs.connect(server)
    await a.send(client_frame(Opcode.TEXT.value, text("join_queue")))
    await a.expect("queued")
    b = await server.connect()
    await b.send("join_queue")
    await b.expect("match_found")
    await a.expect("match_found")
    whole = text("chat", {"message": "héllo in pieces"})
    # Split inside the two-byte "é" too: fragments are joined before decoding.
    cut = whole.index("é".encode()) + 1
    pieces = [whole[:5], whole[5:cut], whole[cut:]]
    await a.send(
        client_frame(Opcode.TEXT.value, pieces[0], fin=False)
        + client_frame(Opcode.PING.value, b"between")  # control frames may interleave
        + client_frame(Opcode.CONT.value, pieces[1], fin=False)
        + client_frame(Opcode.CONT.value, pieces[2])
    )
    pong = await a.next_frame()
    assert (pong.opcode, pong.data) == (Opcode.PONG, b"between")
    assert (await b.expect("chat"))["message"] == "héllo in pieces"


@pytest.mark.rule("protocol/fragments-and-pings")
async def test_frame_pipelined_behind_the_upgrade_is_read(server: Harness) -> None:
    client = await RawWs.connect(server, then=client_frame(Opcode.TEXT.value, text("join_queue")))
    assert (await client.expect("queued"))["mode"] == "video"


async def test_bad_frame_pipelined_behind_the_upgrade_ends_only_that_connection(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    stream = await trio.open_tcp_stream("127.0.0.1", server.running.port)
    key = base64.b64encode(os.urandom(16)).decode()
    head = (
        f"GET /ws?token={server.token()} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    # An unmasked frame in the same packet as the request: the protocol fails
    # before the upgrade is answered.
    await stream.send_all(head + client_frame(Opcode.TEXT.value, b"{}", mask=False))
    with trio.fail_after(WAIT_S):
        while await stream.receive_some(65536):
            pass  # the server ends the stream
    await stream.aclose()
    assert server.metric("omiro_connection_failures_total") == 0
    await _still_fine(server, caplog)


@pytest.mark.rule("protocol/fragments-and-pings")
async def test_ping_crossing_the_close_gets_a_clean_close_handshake(
    server: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    client = await RawWs.connect(server)
    await client.send(client_frame(Opcode.TEXT.value, text("disconnect")))
    assert await client.expect_close() == 1000
    # As if the client had not read the close yet: a keepalive ping, then its close reply.
    await client.send(
        client_frame(Opcode.PING.value, b"late")
        + client_frame(Opcode.CLOSE.value, struct.pack("!H", 1000))
    )
    assert await client.rest() == []  # no pong after the close; the stream ends cleanly
    await wait_until(lambda: not server.ctx.hub.sessions)
    await _still_fine(server, caplog)


@pytest.mark.rule("protocol/rate-limits")
async def test_ping_flood_is_rate_limited_4029(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = await start_server(limits__messages_per_second=1, limits__message_burst=5)
    client = await RawWs.connect(server)
    await client.send(client_frame(Opcode.PING.value, b"p") * 40)
    assert await client.expect_close() == 4029
    assert server.metric("omiro_socket_closes_total", code="4029") == 1
    await _still_fine(server, caplog)


@pytest.mark.rule("protocol/fragments-and-pings")
async def test_client_close_is_echoed(server: Harness) -> None:
    client = await RawWs.connect(server)
    await client.send(client_frame(Opcode.CLOSE.value, struct.pack("!H", 1000) + b"bye"))
    assert await client.expect_close() == 1000
    assert await client.rest() == []
    await wait_until(lambda: not server.ctx.hub.sessions)


@pytest.mark.rule("protocol/binary-and-bad-json")
async def test_binary_frame_is_answered_not_fatal(server: Harness) -> None:
    client = await RawWs.connect(server)
    await client.send(client_frame(Opcode.BINARY.value, b"\x00\x01"))
    error = await client.expect("error")
    assert error["code"] == "bad_request"
    await client.send(client_frame(Opcode.TEXT.value, text("join_queue")))
    await client.expect("queued")
