"""Test support: a config maker, a protocol client, a server harness, bounded waits.

Testing policy (as trio-websocket's own suite): servers listen on loopback
only, on a free port; every wait is bounded by ``trio.fail_after``; nothing
sleeps to wait for something to happen.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import trio
import wsproto
from trio_websocket import ConnectionClosed, WebSocketConnection, connect_websocket_url
from wsproto.events import AcceptConnection, Request, TextMessage

from omiro_trio.config import Config, load_config
from omiro_trio.server import Running

WAIT_S = 5.0

CHROMIUM = Path("/usr/bin/chromium")
# Flags that let headless Chromium call itself on loopback with a fake camera
# (see TESTING.md); shared by the browser and container tests.
LAUNCH_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

# axe-core's rule sets for the pages: WCAG 2.x A/AA and its best practices
# (tests/browser/test_accessibility.py says what its contrast rule can judge).
AXE_OPTIONS = {
    "runOnly": {
        "type": "tag",
        "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"],
    },
    "resultTypes": ["violations"],
}

BASE_ENV = {
    "OMIRO_SERVER_HOST": "127.0.0.1",
    "OMIRO_SERVER_PORT": "0",
    "OMIRO_SERVER_DRAIN_GRACE_S": "0.1",
    "OMIRO_ICE_URLS": "[]",
    "OMIRO_LOG_LEVEL": "warning",
}


def make_config(**overrides: Any) -> Config:
    """A test config; overrides as ``table__key=value`` (e.g. ``limits__message_burst=5``)."""
    env = dict(BASE_ENV)
    for name, value in overrides.items():
        table, key = name.split("__", 1)
        text = (
            msgspec.json.encode(value).decode() if isinstance(value, list | tuple) else str(value)
        )
        env[f"OMIRO_{table.upper()}_{key.upper()}"] = text
    return load_config(None, environ=env)


class Client:
    """One WebSocket client speaking the Omiro protocol, with a bounded inbox."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.session_id = ""
        self.hello: dict[str, Any] = {}

    async def send(self, op: str, data: dict[str, Any] | None = None) -> None:
        frame: dict[str, Any] = {"op": op}
        if data is not None:
            frame["data"] = data
        await self.ws.send_message(msgspec.json.encode(frame).decode())

    async def recv(self, wait_s: float = WAIT_S) -> tuple[str, dict[str, Any]]:
        with trio.fail_after(wait_s):
            raw = await self.ws.get_message()
        message = msgspec.json.decode(raw)
        return message["op"], message.get("data") or {}

    async def expect(self, op: str, wait_s: float = WAIT_S) -> dict[str, Any]:
        got, data = await self.recv(wait_s)
        assert got == op, f"expected {op}, got {got} {data}"
        return data

    async def expect_closed(self, wait_s: float = WAIT_S) -> int | None:
        """Read (and drop) frames until the server closes; return the close code."""
        with trio.fail_after(wait_s):
            while True:
                try:
                    await self.ws.get_message()
                except ConnectionClosed as exc:
                    return exc.reason.code if exc.reason is not None else None

    async def expect_nothing(self, quiet_s: float = 0.2) -> None:
        """Assert that no frame arrives within ``quiet_s``."""
        with trio.move_on_after(quiet_s):
            raw = await self.ws.get_message()
            raise AssertionError(f"unexpected frame {raw!r}")


class Harness:
    """A running server plus helpers to mint sessions and connect clients."""

    def __init__(
        self, running: Running, nursery: trio.Nursery, stop: trio.Event, stopped: trio.Event
    ) -> None:
        self.running = running
        self.stop = stop  # set it to drain and stop the server
        self.stopped = stopped  # set once the server has stopped
        self.ctx = running.context
        self.nursery = nursery
        self.url = running.url
        self.ws_url = running.url.replace("http://", "ws://") + "/ws"

    def token(self) -> str:
        return self.ctx.signer.issue(self.ctx.wall()).token

    async def raw_connect(
        self, token: str | None = None, *, headers: list[tuple[str, str]] | None = None
    ) -> WebSocketConnection:
        url = self.ws_url if token is None else f"{self.ws_url}?token={token}"
        return await connect_websocket_url(
            self.nursery, url, extra_headers=headers, message_queue_size=4096
        )

    async def connect(
        self, token: str | None = None, *, headers: list[tuple[str, str]] | None = None
    ) -> Client:
        client = Client(await self.raw_connect(token or self.token(), headers=headers))
        client.hello = await client.expect("hello")
        client.session_id = client.hello["session_id"]
        return client

    async def pair(self, **join: Any) -> tuple[Client, Client]:
        """Two matched clients; the first waited, so it is the caller."""
        a = await self.connect()
        b = await self.connect()
        await a.send("join_queue", join or None)
        await a.expect("queued")
        await b.send("join_queue", join or None)
        await a.expect("match_found")
        await b.expect("match_found")
        return a, b

    def metric(self, name: str, **labels: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value(name, labels or None)
        return 0.0 if value is None else value


class RawClient:
    """A WebSocket client that only does what it is told: no pongs, no reading."""

    def __init__(self, stream: trio.SocketStream, ws: wsproto.WSConnection) -> None:
        self.stream = stream
        self.ws = ws

    @classmethod
    async def connect(cls, server: Harness, *, receive_buffer: int | None = None) -> RawClient:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", server.running.port))
        stream = trio.SocketStream(sock)
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        target = f"/ws?token={server.token()}"
        await stream.send_all(ws.send(Request(host="127.0.0.1", target=target)))
        head = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in head:
                head += await stream.receive_some(1)  # stop exactly at the head's end
        ws.receive_data(head)
        assert any(isinstance(event, AcceptConnection) for event in ws.events())
        return cls(stream, ws)

    async def send(self, op: str, data: dict[str, object] | None = None) -> None:
        frame = msgspec.json.encode({"op": op, "data": data or {}}).decode()
        await self.stream.send_all(self.ws.send(TextMessage(data=frame)))


async def flood_until_slow_consumer_closed(server: Harness, flooder: Client) -> None:
    """Send large chat frames to a partner that reads nothing until the server closes it (4008).

    The partner's outbox fills and the server closes it with 4008; the
    flooder is then told its partner left. Bounded: 400 frames (~24 MB), 10 s.
    """
    big = "x" * 59000
    with trio.fail_after(10):
        for _ in range(400):  # ~24 MB for a client that reads nothing
            await flooder.send("chat", {"message": big})
            if server.metric("omiro_socket_closes_total", code="4008"):
                break
        assert await flooder.expect("partner_disconnected") == {"reason": "left"}
    assert server.metric("omiro_socket_closes_total", code="4008") == 1


async def wait_until(predicate: Callable[[], bool], wait_s: float = WAIT_S) -> None:
    """Bounded polling: return once ``predicate()`` holds, fail after ``wait_s``."""
    with trio.fail_after(wait_s):
        while not predicate():  # noqa: ASYNC110 - bounded polling of state owned elsewhere
            await trio.sleep(0.01)


StartServer = Callable[..., Awaitable[Harness]]
"""The ``start_server`` fixture: start a server with ``table__key=value`` overrides."""


class ServeProcess:
    """A real ``omiro serve`` subprocess on 127.0.0.1, port 0; its stderr collected by a thread.

    Args:
        workdir: its working directory.
        env: ``OMIRO_*`` settings (the caller's own ``OMIRO_*`` variables are dropped).
        preexec_fn: run in the child before ``exec`` (e.g. to lower its limits).
        start_s: how long it may take to listen.
    """

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        *,
        preexec_fn: Callable[[], Any] | None = None,
        start_s: float = 60.0,
    ) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("OMIRO_")}
        full_env.update(OMIRO_ICE_URLS="[]", OMIRO_LOG_LEVEL="info")
        full_env.update(env)
        self.start_s = start_s
        self.process = subprocess.Popen(
            [sys.executable, "-m", "omiro_trio", "serve", "--host", "127.0.0.1", "--port", "0"],
            cwd=workdir,
            env=full_env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            preexec_fn=preexec_fn,
        )
        self.log: list[str] = []
        self.url = ""
        self._listening = threading.Event()
        threading.Thread(target=self._read_log, daemon=True).start()
        assert self._listening.wait(start_s), "".join(self.log)
        assert self.url, "it ended before listening:\n" + "".join(self.log)
        self.port = int(self.url.rsplit(":", 1)[1])

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            if "listening on " in line and not self.url:
                self.url = line.split("listening on ", 1)[1].split()[0]
                self._listening.set()
        self._listening.set()  # it ended: no need to wait any longer

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def kill(self) -> None:
        """End it at once if it still runs (fixture teardown)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=self.start_s)
