"""Hostile clients against a real server, one raw socket at a time: the helpers.

The tests using them (``test_front_door.py``, ``test_http_limits.py``,
``test_http_routing.py``, ``test_client_addresses.py``,
``test_ws_handshake.py``, ``test_wsengine_hostile.py``, and the admin
authentication test in ``test_admin.py``) each play one way a single client
took the server down or wedged it (issue "No client can take Omiro down",
items 1-14), over real loopback sockets. Each ends by checking that the
server still answers ``/healthz`` and logged no traceback. The server runs
in process: an exception escaping a connection would reach the test's
nursery and fail the test, which is what "the process exits" means here
(``test_fuzz.py`` and ``test_fd_exhaustion.py`` run real processes).
Deadlines are shortened (a ``Deadlines`` passed to the server) so waits stay
short; every wait is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Iterator

import httpx
import msgspec
import pytest
import trio
from support import Harness

from omiro_trio.backends.memory import MemoryBackend

WAIT_S = 5.0
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ADMIN_TOKEN = "an-admin-token-that-is-long-enough!"
CLOSED_AT_ONCE_S = 1.0  # the keep-alive timeout (30 s) and the close handshake (2 s) are far


def upgrade_head(target: str = "/ws", *, extra: str = "", host: str = "127.0.0.1") -> bytes:
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


def ws_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    """A masked client frame (mask 0, so the payload goes as is)."""
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", n)
    return bytes([first]) + length + b"\0\0\0\0" + payload


def text(op: str, data: object = None) -> bytes:
    message: dict[str, object] = {"op": op}
    if data is not None:
        message["data"] = data
    return ws_frame(0x1, msgspec.json.encode(message))


async def open_raw(server: Harness) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", server.running.port)


def reset(stream: trio.SocketStream) -> None:
    """Make the next close a TCP reset (RST) instead of a FIN."""
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def read_response_head(stream: trio.SocketStream) -> tuple[int, bytes]:
    """The status of an HTTP response, and whatever followed its head."""
    buffer = b""
    with trio.fail_after(WAIT_S):
        while b"\r\n\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed before a response head: {buffer!r}"
            buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


async def read_until_closed(stream: trio.SocketStream, wait_s: float = WAIT_S) -> bytes:
    received = b""
    with trio.fail_after(wait_s):
        while True:
            try:
                chunk = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return received
            if not chunk:
                return received
            received += chunk


async def assert_healthy(server: Harness) -> None:
    with trio.fail_after(WAIT_S):
        async with httpx.AsyncClient(base_url=server.url) as http:
            response = await http.get("/healthz")
    assert response.status_code == 200


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.fixture(autouse=True)  # (imported by the modules that use it)
def capture_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    with caplog.at_level(logging.INFO):
        yield


async def open_session(server: Harness) -> tuple[trio.SocketStream, bytes]:
    """A raw socket upgraded to a session; returns it and the bytes after the 101."""
    stream = await open_raw(server)
    await stream.send_all(upgrade_head(f"/ws?token={server.token()}"))
    status, rest = await read_response_head(stream)
    assert status == 101
    return stream, rest


def sockets_from(server: Harness, client: str) -> int:
    backend = server.ctx.backend
    assert isinstance(backend, MemoryBackend)
    return backend.sockets_from(client)
