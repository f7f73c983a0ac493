"""Every budget of docs/security.md, driven at by one hostile client against a real ``omiro serve``.

While the hostile client drives at one budget, a watched pair keeps chatting
(round trip after round trip) and newcomer pairs keep arriving and being
matched. Each test asserts that the hostile client is stopped (with the close
code or HTTP status, and the ``omiro_budget_exceeded_total`` label, that the
budget table names), and that while it ran:

* the watched pair's chat round trip stayed under ``WATCHED_MEDIAN_S`` at the
  median and ``WATCHED_MAX_S`` at worst,
* every newcomer pair was matched within ``NEWCOMER_S`` of connecting,
* the server's resident memory grew by at most ``RSS_GROWTH_MB``.

The hostile client connects from 127.0.0.2 and everyone else from 127.0.0.1:
two clients, so that per-address limits (connections, sockets) apply to the
hostile one alone, as they would on the internet. The server runs with the
default settings operators run, but for a known session secret (so the test
mints tokens). Real sockets; every wait has a deadline; sleeps only pace
loops (a round trip every 50 ms, a newcomer every 500 ms).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import statistics
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from support import ServeProcess
from trio_websocket import WebSocketConnection, connect_websocket_url

from omiro_trio.budgets import MAX_HEAD_BYTES, MAX_MESSAGE_FRAGMENTS
from omiro_trio.config import LimitsConfig, ServerConfig
from omiro_trio.http.deadlines import DEFAULT_DEADLINES
from omiro_trio.session_core import RATE_VIOLATIONS_ALLOWED
from omiro_trio.static import frontend_dir
from omiro_trio.tokens import TokenSigner

SECRET = "budget-secret-that-is-at-least-32-bytes-long"
HOSTILE_IP = "127.0.0.2"
DEFAULTS = ServerConfig()
LIMITS = LimitsConfig()

WATCHED_MEDIAN_S = 0.1
WATCHED_MAX_S = 1.0
NEWCOMER_S = 2.0
RSS_GROWTH_MB = 40.0
STOPPED_S = 5.0  # a hostile client is stopped this soon after it crosses its budget
WAIT_S = 10.0
PIPELINED_S = 40.0  # the whole answer to 1,000 pipelined requests, however loaded the machine
READER_BUFFER = 16384  # the slow reader's: the kernel buffers little for it

pytestmark = pytest.mark.timeout(120)


# -- the server ---------------------------------------------------------------------------


class Server(ServeProcess):
    """``omiro serve`` with default settings; tokens signed with its secret."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir, {"OMIRO_SESSION_SECRET": SECRET})
        self.signer = TokenSigner(SECRET.encode(), 600)

    def token(self) -> str:
        return self.signer.issue(time.time()).token

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")  # pragma: no cover

    async def metric(self, name: str, **labels: str) -> float:
        async with httpx.AsyncClient(base_url=self.url, timeout=WAIT_S) as http:
            text = (await http.get("/metrics")).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0


@pytest.fixture(scope="module")
def omiro(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = Server(tmp_path_factory.mktemp("budgets"))
    yield server
    server.kill()
    log = "".join(server.log)
    assert "Traceback" not in log, log[-5000:]


async def exceeded(omiro: Server, budget: str) -> float:
    return await omiro.metric("omiro_budget_exceeded_total", budget=budget)


# -- the watched pair and the newcomers ---------------------------------------------------


@dataclass
class Watch:
    """What the well-behaved clients saw while an attack ran."""

    omiro: Server
    round_trips: list[float] = field(default_factory=list)
    in_flight_since: float | None = None
    matches: list[float] = field(default_factory=list)
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0

    def stop(self) -> None:
        """The attack is over: a round trip still on its way counts for what it took so far."""
        if self.in_flight_since is not None:
            self.round_trips.append(trio.current_time() - self.in_flight_since)
            self.in_flight_since = None

    def check(self) -> None:
        assert len(self.round_trips) >= 3, self.round_trips
        median = statistics.median(self.round_trips)
        assert median <= WATCHED_MEDIAN_S, f"median round trip {median:.3f} s"
        assert max(self.round_trips) <= WATCHED_MAX_S, f"worst round trip {max(self.round_trips)}"
        assert self.matches, "no newcomer was matched"
        assert max(self.matches) <= NEWCOMER_S, f"newcomers matched after {self.matches}"
        growth = self.rss_peak_mb - self.rss_start_mb
        assert growth <= RSS_GROWTH_MB, f"RSS grew {growth:.1f} MB"


def chat(text: str) -> str:
    return json.dumps({"op": "chat", "data": {"message": text}})


async def receive_op(ws: WebSocketConnection, op: str) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await ws.get_message())
    assert message["op"] == op, message
    return message


async def matched_pair(
    nursery: trio.Nursery, omiro: Server, interest: str
) -> tuple[WebSocketConnection, WebSocketConnection]:
    url = f"ws://127.0.0.1:{omiro.port}/ws?token="
    a = await connect_websocket_url(nursery, url + omiro.token())
    b = await connect_websocket_url(nursery, url + omiro.token())
    join = json.dumps({"op": "join_queue", "data": {"interests": [interest]}})
    for ws in (a, b):
        await receive_op(ws, "hello")
    await a.send_message(join)
    await receive_op(a, "queued")
    await b.send_message(join)
    for ws in (a, b):
        await receive_op(ws, "match_found")
    return a, b


async def leave(*clients: WebSocketConnection) -> None:
    for ws in clients:
        with trio.move_on_after(WAIT_S):
            await ws.aclose()


async def _round_trips(watch: Watch, a: WebSocketConnection, b: WebSocketConnection) -> None:
    n = 0
    while True:
        watch.in_flight_since = start = trio.current_time()
        await a.send_message(chat(f"ping {n}"))
        assert (await receive_op(b, "chat"))["data"]["message"] == f"ping {n}"
        await b.send_message(chat(f"pong {n}"))
        assert (await receive_op(a, "chat"))["data"]["message"] == f"pong {n}"
        watch.in_flight_since = None
        watch.round_trips.append(trio.current_time() - start)
        n += 1
        await trio.sleep(0.05)


async def _newcomers(watch: Watch, nursery: trio.Nursery) -> None:
    n = 0
    while True:
        start = trio.current_time()
        with trio.move_on_after(NEWCOMER_S * 3):
            a, b = await matched_pair(nursery, watch.omiro, f"newcomer-{n}-{time.time()}")
            watch.matches.append(trio.current_time() - start)
            await leave(a, b)
            n += 1
            await trio.sleep(0.5)
            continue
        watch.matches.append(math.inf)


async def _rss(watch: Watch) -> None:
    while True:
        watch.rss_peak_mb = max(watch.rss_peak_mb, watch.omiro.rss_mb())
        await trio.sleep(0.05)


@asynccontextmanager
async def watched(omiro: Server) -> AsyncIterator[Watch]:
    """Run the watched pair, the newcomers and the RSS sampler around an attack."""
    watch = Watch(omiro)
    watch.rss_start_mb = watch.rss_peak_mb = omiro.rss_mb()
    async with trio.open_nursery() as connections:
        a, b = await matched_pair(connections, omiro, f"watched-{time.time()}")
        async with trio.open_nursery() as workers:
            workers.start_soon(_round_trips, watch, a, b)
            workers.start_soon(_newcomers, watch, connections)
            workers.start_soon(_rss, watch)
            with trio.fail_after(WAIT_S):
                while len(watch.round_trips) < 3 or not watch.matches:  # noqa: ASYNC110
                    await trio.sleep(0.05)  # the baseline, before the attack
            yield watch
            with trio.fail_after(WAIT_S):  # and a little after it
                seen = len(watch.round_trips)
                while len(watch.round_trips) < seen + 3:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            watch.stop()
            workers.cancel_scope.cancel()
        await leave(a, b)
        connections.cancel_scope.cancel()  # a newcomer cut short, if any


# -- the hostile client's raw sockets -------------------------------------------------


async def hostile_tcp(omiro: Server, *, receive_buffer: int | None = None) -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.bind((HOSTILE_IP, 0))
    await sock.connect(("127.0.0.1", omiro.port))
    return trio.SocketStream(sock)


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A client frame, masked with zeros (so the payload goes as is)."""
    n = len(payload)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        length = bytes([0x80 | 127]) + struct.pack("!Q", n)
    return bytes([(0x80 if fin else 0) | opcode]) + length + b"\0\0\0\0" + payload


TEXT, CONT, PING = 0x1, 0x0, 0x9


def message(op: str, data: dict[str, Any] | None = None) -> bytes:
    return frame(TEXT, json.dumps({"op": op, "data": data or {}}).encode())


class ServerFrames:
    """Reads the server's (unmasked) frames off a raw socket."""

    def __init__(self, stream: trio.SocketStream, buffer: bytes = b"") -> None:
        self.stream = stream
        self.buffer = buffer

    async def _fill(self, n: int) -> bool:
        while len(self.buffer) < n:
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            if not chunk:
                return False
            self.buffer += chunk
        return True

    async def next(self) -> tuple[int, bytes] | None:
        """The next frame's opcode and payload; None at the end of the connection."""
        if not await self._fill(2):
            return None
        n, start = self.buffer[1] & 0x7F, 2
        if n == 126:
            if not await self._fill(4):
                return None
            n, start = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif n == 127:
            if not await self._fill(10):
                return None
            n, start = struct.unpack("!Q", self.buffer[2:10])[0], 10
        if not await self._fill(start + n):
            return None
        opcode, payload = self.buffer[0] & 0x0F, self.buffer[start : start + n]
        self.buffer = self.buffer[start + n :]
        return opcode, payload

    async def op(self) -> dict[str, Any]:
        """The next text message (control frames skipped)."""
        while True:
            got = await self.next()
            assert got is not None, "the server closed the connection"
            if got[0] == TEXT:
                result: dict[str, Any] = json.loads(got[1])
                return result

    async def close_code(self) -> int | None:
        """Read until the server's close frame: its code (None: the connection just ended)."""
        while True:
            got = await self.next()
            if got is None:
                return None
            if got[0] == 0x8:
                return struct.unpack("!H", got[1][:2])[0] if len(got[1]) >= 2 else None


async def hostile_session(
    omiro: Server, *, receive_buffer: int | None = None, behind_the_upgrade: bytes = b""
) -> tuple[trio.SocketStream, ServerFrames]:
    """A hostile WebSocket session, upgraded (and past ``hello`` unless frames were sent
    ``behind_the_upgrade``, in the same write as the request)."""
    stream = await hostile_tcp(omiro, receive_buffer=receive_buffer)
    await stream.send_all(
        f"GET /ws?token={omiro.token()} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        + behind_the_upgrade
    )
    head = b""
    with trio.fail_after(WAIT_S):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(1)  # stop exactly at the head's end
        assert head.startswith(b"HTTP/1.1 101"), head
        frames = ServerFrames(stream)
        if not behind_the_upgrade:
            assert (await frames.op())["op"] == "hello"
    return stream, frames


async def http_status(stream: trio.SocketStream) -> int:
    buffer = b""
    with trio.fail_after(STOPPED_S):
        while b"\r\n" not in buffer:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed before a status line: {buffer!r}"
            buffer += chunk
    return int(buffer.split(b" ", 2)[1])


async def until_stopped(
    attack: Callable[[], Awaitable[None]],
    stopped: Callable[[], Awaitable[Any]],
    wait_s: float = WAIT_S,
) -> Any:
    """Run ``attack`` until ``stopped`` returns (within ``wait_s``); its answer."""
    async with trio.open_nursery() as nursery:

        async def run_attack() -> None:
            # (The server may close the connection under it.)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await attack()

        nursery.start_soon(run_attack)
        with trio.fail_after(wait_s):
            result = await stopped()
        nursery.cancel_scope.cancel()
    return result


def reset(stream: trio.SocketStream) -> None:
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# -- request heads --------------------------------------------------------------------


async def test_request_head_budget(omiro: Server) -> None:
    """A head over MAX_HEAD_BYTES is refused 431 before any parsing, complete or not; one
    just under it, made of what once made the parser backtrack, is read in linear time."""
    before = await exceeded(omiro, "head")
    spaces = b"GET /session/new HTTP/1.1\r\nHost: x\r\nX: a" + b" " * 60000 + b"a\r\n\r\n"
    incomplete = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (MAX_HEAD_BYTES + 1)
    under = b"GET /session/new HTTP/1.1\r\nHost: x\r\nX: a" + b" " * 16000 + b"a\r\n\r\n"
    assert len(under) <= MAX_HEAD_BYTES
    async with watched(omiro) as watch:
        for head, status in [(spaces, 431)] * 5 + [(incomplete, 431), (under, 200)] * 2:
            stream = await hostile_tcp(omiro)
            await stream.send_all(head)
            assert await http_status(stream) == status
            reset(stream)
            await stream.aclose()
    watch.check()
    assert await exceeded(omiro, "head") == before + 7


# -- message assembly -------------------------------------------------------------------


async def _fragment_attack(omiro: Server, fragment: bytes) -> int | None:
    stream, frames = await hostile_session(omiro)
    await stream.send_all(frame(TEXT, b'{"op":', fin=False))
    burst = fragment * 2000

    async def attack() -> None:
        while True:
            await stream.send_all(burst)

    code = await until_stopped(attack, frames.close_code)
    await stream.aclose()
    return code  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "fragment",
    [frame(CONT, b"", fin=False), frame(CONT, b"x", fin=False)],
    ids=["empty", "one byte"],
)
@pytest.mark.rule("protocol/fragments-and-pings")
async def test_message_fragments_budget(omiro: Server, fragment: bytes) -> None:
    """Continuation frames that never end a message: closed 1009 at MAX_MESSAGE_FRAGMENTS."""
    before = await exceeded(omiro, "fragments")
    async with watched(omiro) as watch:
        assert await _fragment_attack(omiro, fragment) == 1009
    watch.check()
    assert await exceeded(omiro, "fragments") == before + 1


async def test_fragments_within_the_budget_make_a_message(omiro: Server) -> None:
    stream, frames = await hostile_session(omiro)
    parts = [b'{"op":"join_queue"', b',"data":{"mode":"text"}}']
    parts[1:1] = [b" "] * (MAX_MESSAGE_FRAGMENTS - 2)
    await stream.send_all(
        frame(TEXT, parts[0], fin=False)
        + b"".join(frame(CONT, part, fin=False) for part in parts[1:-1])
        + frame(PING)  # control frames between fragments are fine
        + frame(CONT, parts[-1])
    )
    with trio.fail_after(WAIT_S):
        assert (await frames.op())["op"] == "queued"
    await stream.aclose()


async def test_message_size_budget(omiro: Server) -> None:
    """A message over max_frame_bytes, in one frame or in fragments: 1009 before it is read."""
    before = await exceeded(omiro, "message_size")
    half = b"x" * (DEFAULTS.max_frame_bytes // 2 + 1)
    async with watched(omiro) as watch:
        for attack in (
            struct.pack("!BBQ", 0x81, 0x80 | 127, 2**40) + b"\0\0\0\0",  # announces a terabyte
            frame(TEXT, half, fin=False) + frame(CONT, half),
        ):
            stream, frames = await hostile_session(omiro)
            await stream.send_all(attack)
            with trio.fail_after(STOPPED_S):
                assert await frames.close_code() == 1009
            await stream.aclose()
    watch.check()
    assert await exceeded(omiro, "message_size") == before + 2


# -- control frames and messages ---------------------------------------------------------


@pytest.mark.parametrize(
    ("burst", "code"),
    [
        (frame(PING) * 5000, 4029),  # pings: each costs a message, one pong per slice
        (frame(0xA, b"p" * 125) * 500, 4029),  # unsolicited pongs cost the same
        (message("typing", {"typing": True}) * 2000, 4029),
        (frame(TEXT, b"{") * 5000, 4000),  # bad JSON: protocol errors
    ],
    ids=["pings", "pongs", "messages", "bad messages"],
)
@pytest.mark.parametrize("behind_the_upgrade", [False, True], ids=["after", "behind the upgrade"])
async def test_frame_rate_budget(
    omiro: Server, burst: bytes, code: int, behind_the_upgrade: bool
) -> None:
    """Floods of small frames: closed by the message bucket (4029) or the error count (4000)
    within the first slices, also when they come in the upgrade request's own packet."""
    closes_before = await omiro.metric("omiro_socket_closes_total", code=str(code))
    refused_before = await omiro.metric("omiro_protocol_errors_total", code="rate_limited")
    async with watched(omiro) as watch:
        stream, frames = await hostile_session(
            omiro, behind_the_upgrade=burst if behind_the_upgrade else b""
        )

        async def attack() -> None:
            while True:
                await stream.send_all(burst)

        assert await until_stopped(attack, frames.close_code) == code
        await stream.aclose()
    watch.check()
    assert await omiro.metric("omiro_socket_closes_total", code=str(code)) == closes_before + 1
    if code == 4029:  # every refusal counted, pings and pongs as much as messages
        refused = await omiro.metric("omiro_protocol_errors_total", code="rate_limited")
        assert refused == refused_before + RATE_VIOLATIONS_ALLOWED + 1


# -- a slow reader ------------------------------------------------------------------------


@pytest.mark.rule("protocol/slow-consumers")
async def test_slow_reader_budget(omiro: Server) -> None:
    """A reader that takes 256 KB every half second while its partner relays legal 60 KB
    offers faster than that: its socket is never full for long, so only the bytes waiting
    for it can tell; closed 4008 once more than send_queue_bytes wait."""
    before = await exceeded(omiro, "send_queue")
    interest = f"slow-{time.time()}"
    join = message("join_queue", {"interests": [interest]})
    async with watched(omiro) as watch:
        reader, _ = await hostile_session(omiro, receive_buffer=READER_BUFFER)
        sender, sender_frames = await hostile_session(omiro)
        await reader.send_all(join)
        await sender.send_all(join)
        with trio.fail_after(WAIT_S):  # ("queued" first, if its join came first)
            while (await sender_frames.op())["op"] != "match_found":
                pass
        offer = message("webrtc_offer", {"sdp": "v" * 60000})
        assert len(offer) <= DEFAULTS.max_frame_bytes
        interval_s = 1.5 / LIMITS.messages_per_second  # within the sender's message rate

        async def attack() -> None:
            async with trio.open_nursery() as both:

                async def read_slowly() -> None:
                    while True:
                        taken = 0
                        with trio.move_on_after(0.1):
                            while taken < 256 * 1024:
                                taken += len(await reader.receive_some(65536))
                        await trio.sleep(0.5)

                both.start_soon(read_slowly)
                await sender.send_all(offer * (LIMITS.message_burst // 2))
                while True:
                    await trio.sleep(interval_s)
                    await sender.send_all(offer)

        async def partner_told() -> dict[str, Any]:
            while True:
                op = await sender_frames.op()
                if op["op"] != "error":  # (not one expected; it would show below)
                    return op

        told = await until_stopped(attack, partner_told)
        assert told == {"op": "partner_disconnected", "data": {"reason": "left"}}
        reset(reader)
        await reader.aclose()
        await sender.aclose()
    watch.check()
    assert await omiro.metric("omiro_socket_closes_total", code="4008") >= 1
    assert await exceeded(omiro, "send_queue") == before + 1


# -- languages ---------------------------------------------------------------------------


async def test_languages_budget(omiro: Server) -> None:
    """Languages are bounded like interests: five codes of two or three letters. One at
    the bound waits in its fifteen lines; more, or a longer code, is bad_request naming
    the field each time, and a client that keeps sending them is closed 4000."""
    five = ["pt", "es", "en", "fr", "de"]
    async with watched(omiro) as watch:
        legal, legal_frames = await hostile_session(omiro)
        interests = [f"lines-{n}-{time.time()}" for n in range(10)]
        await legal.send_all(
            message("join_queue", {"interests": interests, "languages": [*five, "PT"]})
        )
        queued = await legal_frames.op()
        assert queued["op"] == "queued"
        assert queued["data"]["languages"] == five

        stream, frames = await hostile_session(omiro)
        too_many = message("join_queue", {"languages": [*five, "ar"]})
        too_long = message("join_queue", {"languages": ["x" * 60000]})
        for refused in (too_many, too_long):
            await stream.send_all(refused)
            error = (await frames.op())["data"]
            assert (error["code"], error["op"]) == ("bad_request", "join_queue")
            assert "data.languages" in error["message"]

        async def attack() -> None:
            while True:
                await stream.send_all(too_long)

        assert await until_stopped(attack, frames.close_code) == 4000
        await stream.aclose()
        await legal.aclose()
    watch.check()


# -- skips ------------------------------------------------------------------------------


async def test_skip_budget(omiro: Server) -> None:
    """``join_queue`` while matched skips the partner like ``next``: it spends the same
    allowance, and once that is spent the match goes on."""
    before = await exceeded(omiro, "skips")
    interest = f"skips-{time.time()}"
    join = message("join_queue", {"interests": [interest]})
    async with watched(omiro) as watch:
        skipper, skipper_frames = await hostile_session(omiro)
        partner, partner_frames = await hostile_session(omiro)
        await skipper.send_all(join)  # an entry into the queue: one of the allowance
        assert (await skipper_frames.op())["op"] == "queued"
        skips = 0
        with trio.fail_after(WAIT_S * 3):
            while True:
                await partner.send_all(join)  # after its partner left: free
                assert (await partner_frames.op())["op"] == "match_found"
                assert (await skipper_frames.op())["op"] == "match_found"
                await skipper.send_all(join)  # while matched: a skip
                answer = await skipper_frames.op()
                if answer["op"] == "error":
                    break
                assert answer["op"] == "queued"
                assert (await partner_frames.op())["data"] == {"reason": "next"}
                skips += 1
                assert skips < 2 * LIMITS.nexts_per_minute, "never limited"
        refusal = dict(answer["data"])
        # When a skip is allowed again: the rest of the minute's window, in
        # whole seconds (the page says it and queues by itself then).
        retry_after = refusal.pop("retry_after")
        assert isinstance(retry_after, int)
        assert 1 <= retry_after <= 60
        assert refusal == {
            "code": "rate_limited",
            "message": "slow down",
            "op": "join_queue",
        }
        assert skips == LIMITS.nexts_per_minute - 1  # the first join spent one
        await skipper.send_all(message("chat", {"message": "still matched"}))
        assert (await partner_frames.op())["data"]["message"] == "still matched"
        await skipper.aclose()
        await partner.aclose()
    watch.check()
    assert await exceeded(omiro, "skips") == before + 1


# -- match tickets (issue 23) ------------------------------------------------------------


@pytest.mark.rule("protocol/resume")
async def test_forged_tickets_budget(omiro: Server) -> None:
    """Guessing tickets: each forged one costs a message and one HMAC of at most 512
    characters, checked for shape first; it counts as a protocol error, so the guesser
    is closed with 4000 after 20 in a minute."""
    forged = "m1.a.b.c.video.9999999999." + "0" * 64
    async with watched(omiro) as watch:
        stream, frames = await hostile_session(omiro)

        async def attack() -> None:
            for _ in range(100):
                await stream.send_all(message("resume", {"ticket": forged}))

        assert await until_stopped(attack, frames.close_code) == 4000
        await stream.aclose()
    watch.check()


# -- pending handshakes, pipelined requests --------------------------------------------------


async def test_pending_handshakes_budget(omiro: Server) -> None:
    """connections_per_ip half-sent heads (HTTP and /ws), one byte a second: the next
    connection is shed at once, and every one of them is closed at the head deadline
    (and counted there)."""
    shed_before = await omiro.metric("omiro_connections_shed_total")
    pending_before = await exceeded(omiro, "handshake")
    heads = [b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Slow: "]
    async with watched(omiro) as watch:
        held = []
        for n in range(DEFAULTS.connections_per_ip):
            stream = await hostile_tcp(omiro)
            await stream.send_all(heads[n % 2])
            held.append(stream)
        with trio.fail_after(WAIT_S):  # one more is shed (closed at once, nothing read)
            while await omiro.metric("omiro_connections_shed_total") == shed_before:
                held.append(await hostile_tcp(omiro))
        start = trio.current_time()
        closed = 0

        async def trickle(stream: trio.SocketStream) -> None:
            nonlocal closed
            try:
                while True:
                    await stream.send_all(b"a")
                    with trio.move_on_after(1.0):
                        if not await stream.receive_some(65536):
                            break
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            closed += 1

        with trio.fail_after(DEFAULT_DEADLINES.head_s + 5):
            async with trio.open_nursery() as nursery:
                for stream in held:
                    nursery.start_soon(trickle, stream)
        assert closed == len(held)
        assert trio.current_time() - start <= DEFAULT_DEADLINES.head_s + 3
        for stream in held:
            await stream.aclose()
    watch.check()
    # The shed ones were closed before a byte was read: only the held heads count.
    assert await exceeded(omiro, "handshake") == pending_before + DEFAULTS.connections_per_ip


async def test_pipelined_requests_budget(omiro: Server) -> None:
    """1,500 requests sent at once on one connection: 1,000 answers, then the connection ends."""
    async with watched(omiro) as watch:
        stream = await hostile_tcp(omiro)
        received = b""

        async def read_all() -> bytes:
            nonlocal received
            with contextlib.suppress(trio.BrokenResourceError):
                while chunk := await stream.receive_some(65536):
                    received += chunk
            return received

        async def attack() -> None:
            await stream.send_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 1500)
            await trio.sleep_forever()

        # A thousand answers are work, not a wait: on a loaded machine they have
        # taken 13 s (the watched pair's own bound is checked all the while).
        await until_stopped(attack, read_all, wait_s=PIPELINED_S)
        await stream.aclose()
    watch.check()
    assert received.count(b"HTTP/1.1 200") == 1000


# -- vendored files ---------------------------------------------------------------------


async def test_vendored_files_budget(omiro: Server) -> None:
    """Every vendored file in every encoding, three rounds, 32 requests at a time, on a
    server that never made any: each representation is made once, one at a time in a worker
    thread, and kept (the same ETag every round); a later round holds nothing more."""
    root = frontend_dir()
    paths = sorted(
        "/" + path.relative_to(root).as_posix()
        for path in (root / "vendor").rglob("*")
        if path.is_file()
    )
    assert len(paths) >= 15
    transport = httpx.AsyncHTTPTransport(local_address=HOSTILE_IP)
    limits = httpx.Limits(max_connections=32)
    tags: dict[tuple[str, str], set[str]] = {}
    rss_after_round: list[float] = []

    async def fetch(http: httpx.AsyncClient, path: str, accept: str) -> None:
        async with http.stream("GET", path, headers={"Accept-Encoding": accept}) as response:
            assert response.status_code == 200, (path, accept)
            async for _ in response.aiter_raw():
                pass
        tags.setdefault((path, accept), set()).add(response.headers["etag"])

    async with (
        watched(omiro) as watch,
        httpx.AsyncClient(
            base_url=omiro.url, transport=transport, limits=limits, timeout=WAIT_S * 3
        ) as http,
    ):
        for _ in range(3):
            with trio.fail_after(WAIT_S * 6):
                async with trio.open_nursery() as nursery:
                    for path in paths:
                        for accept in ("identity", "gzip", "br"):
                            nursery.start_soon(fetch, http, path, accept)
            rss_after_round.append(omiro.rss_mb())
    watch.check()
    assert len(tags) == 3 * len(paths)
    assert all(len(seen) == 1 for seen in tags.values()), tags  # the same body every round
    # Every representation exists after the first round: later rounds add nothing to hold.
    assert rss_after_round[2] - rss_after_round[0] < 4.0, rss_after_round
