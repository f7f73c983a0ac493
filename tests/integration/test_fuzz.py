"""Fuzz the real ``omiro serve`` with hostile sockets while two pairs chat.

Why a subprocess: "the process stays up" then means the process (not a task
in the test's own trio run), its file descriptors can be counted in
``/proc/PID/fd``, and its whole log (stderr, every logger, hypercorn's too)
can be searched for a traceback. The server is a real ``omiro serve``
started with a known ``session.secret``, so the test mints tokens itself.

Seeded: ``OMIRO_FUZZ_SEED`` (default 6), so a failure can be replayed. The
run lasts ``OMIRO_FUZZ_S`` seconds (default 20, CI's budget); set it higher
to fuzz longer. Loopback only, every wait bounded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from support import ServeProcess
from trio_websocket import ConnectionClosed, connect_websocket_url

from omiro_trio.http.deadlines import DEFAULT_DEADLINES
from omiro_trio.tokens import TokenSigner

FUZZ_S = float(os.environ.get("OMIRO_FUZZ_S", "20"))
SEED = int(os.environ.get("OMIRO_FUZZ_SEED", "6"))
FUZZERS = 16
SECRET = "fuzz-secret-that-is-at-least-32-bytes-long"
START_S = 20.0
# For fds and /stats to return to the baseline after the run: a connection the
# fuzzer left mid-request ends at the latest at the front door's stall deadline
# (usually within a second, when the server reads the fuzzer's reset).
SETTLE_S = float(os.environ.get("OMIRO_FUZZ_SETTLE_S", str(DEFAULT_DEADLINES.stall_s + 15)))
OPS = [
    "join_queue",
    "leave_queue",
    "next",
    "disconnect",
    "chat",
    "typing",
    "webrtc_offer",
    "webrtc_answer",
    "ice_candidate",
    "report",
    "nope",
]


# -- the server process ----------------------------------------------------------


class Server(ServeProcess):
    """``omiro serve`` with the fuzz run's limits, and tokens signed with its secret."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(
            tmp_path,
            {
                "OMIRO_SESSION_SECRET": SECRET,
                "OMIRO_LIMITS_SOCKETS_PER_IP": "200",
                "OMIRO_SERVER_CONNECTIONS_PER_IP": "200",
                "OMIRO_LIMITS_MESSAGES_PER_SECOND": "500",
                "OMIRO_LIMITS_MESSAGE_BURST": "1000",
                "OMIRO_MATCHMAKING_INTEREST_TIMEOUT_S": "3600",
                "OMIRO_SERVER_MAX_FRAME_BYTES": "65536",
            },
            start_s=START_S,
        )
        self.signer = TokenSigner(SECRET.encode(), 600)

    def token(self) -> str:
        return self.signer.issue(time.time()).token

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=START_S)


@pytest.fixture
def omiro(tmp_path: Path) -> Any:
    server = Server(tmp_path)
    yield server
    server.kill()


# -- what the fuzzers send ---------------------------------------------------------


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    mask = b"\0\0\0\0"  # masked with zeros: the payload goes as is (cheap to build)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", n)
    return bytes([first]) + length + mask + payload


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63, 2**70, 1.5, -0.0])
    if kind == 3:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(20)))
    if kind == 4:
        return "x" * rng.choice([0, 1, 999, 1000, 1001, 5000])
    if kind == 5:
        return rng.choice(["", "music", "video", "text", "\u0000", "\ud7ff"])
    if kind == 6:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["message", "mode", "interests", "sdp", "candidate", "reason", "typing", "x"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def random_frames(rng: random.Random) -> bytes:
    """One to a few hostile (or harmless) frames."""
    kind = rng.randrange(17)
    if kind == 14:  # a message that never ends: empty continuation frames
        fragments = rng.choice([10, 62, 63, 64, 65, 500, 5000])
        return frame(0x1, b'{"op":', fin=False) + frame(0x0, b"", fin=False) * fragments
    if kind == 15:  # a legal-size message in tiny fragments, ended or not
        fragments = rng.choice([30, 64, 65, 1000])
        return (
            frame(0x1, b" ", fin=False)
            + frame(0x0, b" ", fin=False) * (fragments - 2)
            + frame(0x0, b'{"op":"typing","data":{"typing":true}}', fin=rng.random() < 0.5)
        )
    if kind == 16:  # fragments adding up past the size limit, pings between
        half = b"y" * 40000
        return frame(0x1, half, fin=False) + frame(0x9, b"") + frame(0x0, half)
    if kind <= 3:  # protocol-shaped JSON with random values
        message: dict[str, Any] = {"op": rng.choice(OPS)}
        if rng.random() < 0.8:
            message["data"] = random_value(rng)
        return frame(0x1, json.dumps(message).encode())
    if kind == 4:  # wrong top-level types
        raw = rng.choice([b"[]", b"5", b'"op"', b"null", b'{"op": 5}', b'{"op": null}', b"{"])
        return frame(0x1, raw)
    if kind == 5:  # huge
        return frame(0x1, b'{"op":"chat","data":{"message":"' + b"y" * 70000 + b'"}}')
    if kind == 6:  # deep
        n = rng.choice([100, 1000, 30000])
        return frame(0x1, b"[" * n + b"]" * n)
    if kind == 7:  # numbers JSON cannot hold
        return frame(0x1, rng.choice([b'{"op":"chat","data":1e999}', b"NaN", b"-Infinity"]))
    if kind == 8:  # binary, invalid UTF-8
        return frame(rng.choice([0x1, 0x2]), rng.randbytes(rng.randrange(1, 300)))
    if kind == 9:  # reserved opcodes and bits
        return frame(rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), b"x", rsv=rng.randrange(8))
    if kind == 10:  # pings and pongs, some too long for a control frame
        return frame(rng.choice([0x9, 0xA]), b"p" * rng.choice([0, 5, 125, 126, 300]))
    if kind == 11:  # fragments, with control frames between and bad continuations
        parts = [frame(0x1, b'{"op":', fin=False), frame(0x9, b"")]
        parts.append(frame(rng.choice([0x0, 0x1]), b'"typing"', fin=rng.random() < 0.3))
        parts.append(frame(0x0, b"}"))
        return b"".join(parts)
    if kind == 12:  # close frames, valid and not
        payload = rng.choice([b"", b"\x03", b"\x03\xe8", b"\x03\xe8\xff\xfe", b"\x00\x00"])
        return frame(0x8, payload)
    # a length that lies: announces more than follows
    return bytes([0x81, 0xFE]) + struct.pack("!H", 5000) + b"\0\0\0\0" + b"short"


def random_head(rng: random.Random, token: str) -> bytes:
    """An HTTP request head, valid or broken in one of many ways."""
    method = rng.choice(["GET", "POST", "PUT", "CONNECT", "G\x00T", "get", "GET " * 3])
    target = rng.choice(
        ["/", "/ws", f"/ws?token={token}", "/healthz", "/session/new", "/admin/bans", "*", ""]
    )
    headers = ["Host: 127.0.0.1"]
    if rng.random() < 0.5:
        headers += ["Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13"]
        headers.append("Sec-WebSocket-Key: " + rng.choice(["dGhlIHNhbXBsZSBub25jZQ==", "x", ""]))
    for _ in range(rng.randrange(4)):
        headers.append(
            rng.choice(
                [
                    "Origin: http://[",
                    "Origin: null",
                    "Content-Length: 1000000",
                    "Content-Length: -1",
                    "Transfer-Encoding: chunked",
                    "X-Forwarded-For: 1.2.3.4, junk",
                    "CF-Connecting-IP: 9.9.9.9",
                    "X-Big: " + "z" * rng.choice([10, 9000, 20000]),
                    "Bad Header: x",
                    "\x00: \x01",
                ]
            )
        )
    version = rng.choice(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1", "FOO"])
    head = f"{method} {target} {version}\r\n" + "\r\n".join(headers) + "\r\n\r\n"
    data = head.encode("utf-8", "surrogatepass")
    if rng.random() < 0.2:  # corrupt some bytes
        raw = bytearray(data)
        for _ in range(rng.randrange(1, 5)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        data = bytes(raw)
    if rng.random() < 0.2:
        data = data[: rng.randrange(len(data))]  # truncated
    if rng.random() < 0.2:
        data += b"0\r\n\r\n" + data  # a body, or a second pipelined request
    return data


async def drain(stream: trio.SocketStream, wait_s: float) -> None:
    """Read what the server sends for up to ``wait_s`` (so it never waits on us)."""
    with trio.move_on_after(wait_s):
        while True:
            try:
                if not await stream.receive_some(65536):
                    return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return


async def slow_reader(omiro: Server, rng: random.Random) -> None:
    """A session that reads a little now and then while its partner relays large offers."""
    url_head = (
        "HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    join = frame(
        0x1,
        json.dumps({"op": "join_queue", "data": {"interests": [f"slow{rng.random()}"]}}).encode(),
    )
    streams = []
    try:
        for buffer in (4096, None):
            sock = trio.socket.socket()
            if buffer is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
            await sock.connect(("127.0.0.1", omiro.port))
            stream = trio.SocketStream(sock)
            streams.append(stream)
            await stream.send_all(f"GET /ws?token={omiro.token()} {url_head}".encode() + join)
        reader, sender = streams
        offer = frame(
            0x1, json.dumps({"op": "webrtc_offer", "data": {"sdp": "v" * 60000}}).encode()
        )
        with trio.move_on_after(rng.choice([0.5, 2.0])):
            for _ in range(rng.choice([10, 100])):
                await sender.send_all(offer)
                await drain(sender, 0)
                with trio.move_on_after(0.01):
                    await reader.receive_some(rng.choice([1, 1000]))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        for stream in streams:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await stream.aclose()


async def fuzz_once(omiro: Server, rng: random.Random) -> None:
    if rng.random() < 0.03:
        await slow_reader(omiro, rng)
        return
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", omiro.port)
    except OSError:
        return
    try:
        if rng.random() < 0.6:  # a session, then hostile frames
            await stream.send_all(
                b"GET /ws?token=" + omiro.token().encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await drain(stream, 0.05)
            for _ in range(rng.randrange(1, 8)):
                data = random_frames(rng)
                if rng.random() < 0.2:  # cut mid-frame
                    data = data[: rng.randrange(1, len(data))]
                await stream.send_all(data)
                await drain(stream, rng.choice([0, 0.01, 0.05]))
        else:
            await stream.send_all(random_head(rng, omiro.token()))
            await drain(stream, rng.choice([0.01, 0.1, 0.3]))
        if rng.random() < 0.5:
            stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()


# -- the well-behaved pairs ----------------------------------------------------------


async def chatting_pair(
    omiro: Server, nursery: trio.Nursery, n: int, stop: trio.Event, ready: trio.Event
) -> tuple[list[str], list[str]]:
    """Match two clients on a secret interest; chat until ``stop``; check every line."""
    url = f"ws://127.0.0.1:{omiro.port}/ws?token="
    a = await connect_websocket_url(nursery, url + omiro.token(), message_queue_size=100000)
    b = await connect_websocket_url(nursery, url + omiro.token(), message_queue_size=100000)
    interest = f"pair{n}-{random.Random(n).getrandbits(64):x}"
    join = json.dumps({"op": "join_queue", "data": {"interests": [interest]}})
    for ws in (a, b):
        assert json.loads(await ws.get_message())["op"] == "hello"
    await a.send_message(join)
    assert json.loads(await a.get_message())["op"] == "queued"
    await b.send_message(join)
    for ws in (a, b):
        assert json.loads(await ws.get_message())["op"] == "match_found"
    ready.set()
    sent: list[str] = []
    received: list[str] = []

    async def receive(ws: Any) -> None:
        while True:
            message = msgspec.json.decode(await ws.get_message())
            assert message["op"] == "chat", message
            received.append(message["data"]["message"])

    async with trio.open_nursery() as inner:
        inner.start_soon(receive, b)
        count = 0
        while not stop.is_set():
            line = f"pair {n} line {count}"
            await a.send_message(json.dumps({"op": "chat", "data": {"message": line}}))
            sent.append(line)
            count += 1
            with trio.move_on_after(0.02):
                await stop.wait()
        with trio.fail_after(10):
            while len(received) < len(sent):  # noqa: ASYNC110 - bounded by fail_after
                await trio.sleep(0.01)
        inner.cancel_scope.cancel()
    for ws in (a, b):
        await ws.send_message(json.dumps({"op": "disconnect"}))
        with trio.fail_after(10):
            await closed(ws)
    return sent, received


async def closed(ws: Any) -> None:
    """Read until the server closes the socket."""
    try:
        while True:
            await ws.get_message()
    except ConnectionClosed:
        return


async def stats(omiro: Server) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=omiro.url, timeout=5) as http:
        result: dict[str, int] = (await http.get("/stats")).json()
        return result


@pytest.mark.timeout(FUZZ_S + SETTLE_S + 90)
async def test_fuzz_hostile_sockets_while_pairs_chat(omiro: Server) -> None:
    baseline_fds = omiro.fds()
    baseline_stats = await stats(omiro)
    stop = trio.Event()
    results: list[tuple[list[str], list[str]]] = []

    async def pair(n: int, ready: trio.Event, nursery: trio.Nursery) -> None:
        results.append(await chatting_pair(omiro, nursery, n, stop, ready))

    async def fuzzer(i: int) -> None:
        rng = random.Random(SEED * 1000 + i)
        while not stop.is_set():
            await fuzz_once(omiro, rng)

    with trio.fail_after(FUZZ_S + 120):
        async with trio.open_nursery() as nursery:
            readies = [trio.Event(), trio.Event()]
            for n, ready in enumerate(readies):
                nursery.start_soon(pair, n, ready, nursery)
            for ready in readies:
                await ready.wait()
            async with trio.open_nursery() as fuzzers:
                for i in range(FUZZERS):
                    fuzzers.start_soon(fuzzer, i)
                await trio.sleep(FUZZ_S)
                stop.set()
            # The pairs finish by themselves (each checks its lines, then disconnects).
    assert len(results) == 2
    for sent, received in results:
        assert len(sent) > 10
        assert received == sent  # nothing lost, nothing reordered, nothing foreign

    assert omiro.process.poll() is None, "".join(omiro.log)
    now: tuple[dict[str, int], int] = ({}, 0)
    settling = trio.current_time()
    with trio.move_on_after(SETTLE_S):
        while True:
            now = (await stats(omiro), omiro.fds())
            if now[0] == baseline_stats and now[1] <= baseline_fds:
                print(f"settled in {trio.current_time() - settling:.1f} s")
                break
            await trio.sleep(0.1)
    assert now == (baseline_stats, min(now[1], baseline_fds)), (
        f"baseline {baseline_stats}, {baseline_fds} fds; after the run {now}; "
        + "".join(omiro.log)[-3000:]
    )
    async with httpx.AsyncClient(base_url=omiro.url, timeout=5) as http:
        assert (await http.get("/healthz")).status_code == 200
        metrics = (await http.get("/metrics")).text
    assert "omiro_connection_failures_total 0.0" in metrics, "".join(omiro.log)[-5000:]
    assert omiro.stop() == 0
    log = "".join(omiro.log)
    assert "Traceback" not in log, log[-5000:]
    assert " ERROR " not in log, log[-5000:]
