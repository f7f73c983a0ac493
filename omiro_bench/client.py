"""A lean load-generating client: ``websockets``' client protocol on a trio socket stream.

The generator must outrun the server it measures, so it avoids per-frame
tasks and channels: frames to send are joined into one ``send_all``, and
one ``receive_some`` yields every frame that arrived. Tokens come from
``/session/new`` over a kept-alive HTTP/1.1 connection (h11).

``LeanSession`` is the connect scenario's client, leaner still: one whole
session (token, upgrade, ``join_queue``, ``match_found``) in pre-built bytes
on raw trio sockets, checking only what proves each answer.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import sys
from collections.abc import Sequence

import altcha
import h11
import msgspec
import trio
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

IO_TIMEOUT_S = 30.0
# Linux: the kernel stamps each received segment with its arrival time
# (CLOCK_REALTIME), so a frame's latency can be measured without the
# generator's own delay in getting round to reading it.
SO_TIMESTAMPNS = 35 if sys.platform.startswith("linux") else None
ANCILLARY_BYTES = socket.CMSG_SPACE(16)
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"


class HttpClient:
    """One kept-alive HTTP/1.1 connection for ``GET /session/new``."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._stream: trio.SocketStream | None = None
        self._h11 = h11.Connection(h11.CLIENT)

    async def token(self) -> str:
        """A fresh session token (raises on any status but 200)."""
        with trio.fail_after(IO_TIMEOUT_S):
            if self._stream is None or self._h11.our_state is not h11.IDLE:
                await self.aclose()
                self._stream = await trio.open_tcp_stream(self.host, self.port)
                self._h11 = h11.Connection(h11.CLIENT)
            stream, conn = self._stream, self._h11
            request = h11.Request(
                method="GET", target="/session/new", headers=[("Host", f"{self.host}")]
            )
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            status, body = 0, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise RuntimeError("/session/new: connection closed")
            if status != 200:
                raise RuntimeError(f"/session/new answered {status}: {body[:200]!r}")
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            token: str = msgspec.json.decode(body)["token"]
            return token

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None


class WsClient:
    """A WebSocket client for load: batched writes, every frame of a read at once."""

    __slots__ = ("_protocol", "_sending", "closed", "stamped", "stream")

    def __init__(self, stream: trio.SocketStream, protocol: Protocol) -> None:
        self.stream = stream
        self._protocol = protocol
        self._sending = trio.StrictFIFOLock()  # pongs and frames may be sent by two tasks
        self.closed = False
        self.stamped = False  # the kernel stamps arrivals (stamp_arrivals)

    @classmethod
    async def connect(
        cls, host: str, port: int, token: str, *, deflate_offer: bool = False
    ) -> tuple[WsClient, list[bytes]]:
        """Upgrade a new connection; returns the client and the frames already read."""
        with trio.fail_after(IO_TIMEOUT_S):
            stream = await trio.open_tcp_stream(host, port)
            key = base64.b64encode(os.urandom(16)).decode()
            extra = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if deflate_offer else ""
            head = (
                f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
            )
            await stream.send_all(head.encode())
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                data = await stream.receive_some(65536)
                if not data:
                    raise RuntimeError("the server closed the connection during the upgrade")
                buffer += data
            response, rest = buffer.split(b"\r\n\r\n", 1)
            if not response.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"upgrade refused: {response[:200]!r}")
            if b"permessage-deflate" in response.lower():
                raise RuntimeError("the server negotiated permessage-deflate")
            client = cls(stream, Protocol(Side.CLIENT, max_size=None))
            return client, client._feed(rest) if rest else []

    def _feed(self, data: bytes) -> list[bytes]:
        protocol = self._protocol
        if data:
            protocol.receive_data(data)
        else:
            protocol.receive_eof()
            self.closed = True
        texts: list[bytes] = []
        for event in protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                texts.append(bytes(event.data))
            elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                self.closed = True
        return texts

    async def receive(self) -> list[bytes]:
        """The text frames of the next read (waits for at least one read); [] when closed.

        No deadline of its own (a cancel scope per call costs more than the
        read): callers bound whole phases.
        """
        while not self.closed:
            texts = self._feed(await self.stream.receive_some(65536))
            pongs = self._protocol.data_to_send()
            if pongs and not self.closed:
                await self._write(b"".join(pongs))
            if texts:
                return texts
        return []

    def stamp_arrivals(self) -> None:
        """Ask the kernel for arrival timestamps (``receive_stamped``), where it can.

        Call it well before the frames to be stamped: the kernel turns
        timestamping on asynchronously, so the first segments after this may
        carry none.
        """
        if SO_TIMESTAMPNS is None:
            return
        try:
            self.stream.socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            return
        self.stamped = True

    async def receive_stamped(self) -> tuple[list[bytes], float | None]:
        """Like ``receive``, plus when the kernel received the read's last segment.

        The time is ``time.time()``'s clock; None when the kernel gave none
        (``stamp_arrivals`` not called, or not Linux).
        """
        sock = self.stream.socket
        while not self.closed:
            data, ancillary, _, _ = await sock.recvmsg(65536, ANCILLARY_BYTES)
            stamp = None
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    seconds, nanoseconds = struct.unpack("qq", value[:16])
                    stamp = seconds + nanoseconds / 1e9
            texts = self._feed(data)
            pongs = self._protocol.data_to_send()
            if pongs and not self.closed:
                await self._write(b"".join(pongs))
            if texts:
                return texts, stamp
        return [], None

    async def send(self, texts: Sequence[bytes]) -> None:
        """Send text frames in one write."""
        protocol = self._protocol
        for text in texts:
            protocol.send_text(text)
        await self._write(b"".join(protocol.data_to_send()))

    async def _write(self, data: bytes) -> None:
        # Pongs (from the reading task) and frames may be sent by two tasks;
        # the lock is taken without a scheduling round trip when it is free.
        lock = self._sending
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            await self.stream.send_all(data)
        finally:
            lock.release()

    async def aclose(self) -> None:
        """Close the stream at once (no closing handshake: the server must cope)."""
        self.closed = True
        await self.stream.aclose()

    async def close_cleanly(self) -> None:
        """Send a close frame, then wait (bounded) for the server to end the stream."""
        try:
            if self._protocol.state is self._protocol.state.OPEN:
                self._protocol.send_close(1000)
                await self.stream.send_all(b"".join(self._protocol.data_to_send()))
            with trio.move_on_after(5):
                while await self.stream.receive_some(65536):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.stream.aclose()


def op_of(frame: bytes) -> str:
    op: str = msgspec.json.decode(frame)["op"]
    return op


# -- the connect scenario's client: pre-built bytes on raw trio sockets -------------------


class LeanSession:
    """One user of the connect scenario: token, upgrade, ``join_queue``, ``match_found``.

    Everything sent is built once per generator (only the token changes);
    the answers are checked with the least parsing that still proves them:
    the status line of each response, the ``op`` of each server frame (the
    server writes ``{"op":...`` first), and no close frame. Raises
    ``RuntimeError`` for a wrong answer and ``OSError`` for a network failure.

    Args:
        host, port: the server.
        deflate_offer: offer permessage-deflate, as browsers do.
    """

    __slots__ = (
        "_address",
        "_challenge_request",
        "_join",
        "_pow",
        "_token_request",
        "_upgrade_head",
        "_upgrade_tail",
    )

    def __init__(
        self, host: str, port: int, *, deflate_offer: bool = True, pow: bool = False
    ) -> None:
        self._address = (host, port)
        self._pow = pow
        self._token_request = f"GET /session/new HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        self._challenge_request = (
            f"GET /gate/challenge HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        )
        key = base64.b64encode(os.urandom(16)).decode()
        extra = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if deflate_offer else ""
        self._upgrade_head = b"GET /ws?token="
        self._upgrade_tail = (
            f" HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
        join = msgspec.json.encode({"op": "join_queue", "data": {"mode": "text"}})
        self._join = _masked_text_frame(join)

    async def run(self) -> None:
        """One whole session; the socket is closed at once after ``match_found``."""
        token = await self._token()
        sock = await self._open()
        try:
            await sock.send(self._upgrade_head + token + self._upgrade_tail)
            buffer = await _receive_head(sock)
            if not buffer.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"upgrade refused: {buffer[:200]!r}")
            if b"permessage-deflate" in buffer.split(b"\r\n\r\n", 1)[0].lower():
                raise RuntimeError("the server negotiated permessage-deflate")
            buffer = buffer.split(b"\r\n\r\n", 1)[1]
            buffer = await _until_op(sock, buffer, b"hello")
            await sock.send(self._join)
            await _until_op(sock, buffer, b"match_found")
        finally:
            sock.close()

    async def _open(self) -> trio.socket.SocketType:
        sock = trio.socket.socket()
        try:
            await sock.connect(self._address)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _ask(self, request: bytes) -> bytes:
        sock = await self._open()
        try:
            await sock.send(request)
            response = b""
            while chunk := await sock.recv(65536):  # the server closes after answering
                response += chunk
        finally:
            sock.close()
        return response

    async def _solved_request(self) -> bytes:
        """``GET /session/new`` with a solved challenge (``X-Omiro-Pow``)."""
        response = await self._ask(self._challenge_request)
        if not response.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/gate/challenge answered {response[:200]!r}")
        answer = msgspec.json.decode(response.split(b"\r\n\r\n", 1)[1])
        if not answer.get("required"):
            raise RuntimeError("the server asks for no proof of work")
        challenge = altcha.Challenge.from_dict(answer["challenge"])
        solution = altcha.solve_challenge(challenge)  # the client's cost: CPU, not I/O
        if solution is None:
            raise RuntimeError("the challenge was not solved in time")
        payload = altcha.Payload(challenge, solution).to_base64()
        head, blank = self._token_request[:-2], b"\r\n"
        return head + b"X-Omiro-Pow: " + payload.encode() + b"\r\n" + blank

    async def _token(self) -> bytes:
        request = await self._solved_request() if self._pow else self._token_request
        response = await self._ask(request)
        if not response.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"/session/new answered {response[:200]!r}")
        start = response.find(b'"token":"')
        if start < 0:
            raise RuntimeError(f"/session/new gave no token: {response[-300:]!r}")
        start += len(b'"token":"')
        return response[start : response.index(b'"', start)]


def _masked_text_frame(payload: bytes) -> bytes:
    """A client text frame (short payloads only) under a fixed random mask."""
    if len(payload) > 125:
        raise ValueError("a short frame only")
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def _receive_head(sock: trio.socket.SocketType) -> bytes:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = await sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the connection during the upgrade")
        buffer += chunk
    return buffer


async def _until_op(sock: trio.socket.SocketType, buffer: bytes, op: bytes) -> bytes:
    """Read server frames until one whose op is ``op``; returns the bytes after it."""
    wanted = b'{"op":"' + op + b'"'
    while True:
        while len(buffer) >= 2:
            opcode, size = buffer[0] & 0x0F, buffer[1] & 0x7F
            start = 2
            if size == 126:
                size, start = int.from_bytes(buffer[2:4], "big"), 4
            elif size == 127:
                size, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + size:
                break
            payload, buffer = buffer[start : start + size], buffer[start + size :]
            if opcode == 0x8:
                raise RuntimeError(f"closed while waiting for {op.decode()}: {payload[:100]!r}")
            if opcode == 0x1 and payload.startswith(wanted):
                return buffer
        chunk = await sock.recv(65536)
        if not chunk:
            raise RuntimeError(f"closed while waiting for {op.decode()}")
        buffer += chunk
