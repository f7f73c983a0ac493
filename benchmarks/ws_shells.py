"""Two trio shells around ``websockets``' sans-I/O protocol, as plain relays, side by side.

* ``websockets-trio``: ``websockets.trio.server.serve`` (websockets 17's own
  trio shell), a handler per connection doing ``async for message in ws``
  and ``await partner.send(message)``.
* ``engine``: Omiro's engine (``omiro_trio/wsengine.py``): the handler's
  task reads with ``WsConnection.receive`` and relays with ``push``; the
  engine's one flusher writes, its one sweeper pings.

Both speak just enough of the protocol for ``omiro bench``'s generator (as
``trio_websocket_relay.py`` does): ``GET /session/new`` returns a token,
``/ws`` sends ``hello``, ``join_queue`` pairs sockets in arrival order, and
every other text frame goes verbatim to the partner. Same settings where
they have one: keepalive pings (every 30 s), a 1 MiB message limit, no
permessage-deflate. Three measurements (ADR 0001 has the results)::

    .venv/bin/python benchmarks/ws_shells.py tasks --sockets 1000
    .venv/bin/python benchmarks/ws_shells.py idle --sockets 3000 [--rounds 2]
    .venv/bin/python benchmarks/ws_shells.py relay [--rounds 2]

``tasks`` runs a shell in this process and counts its trio tasks with that
many idle sockets open; ``idle`` and ``relay`` start each shell as a
server process (``--serve SHELL --host H --port P``, pinned to core 0) and
run the ``idle`` and ``relay`` scenarios of ``omiro bench`` against it,
the shells alternating, and print one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from http import HTTPStatus
from typing import Any

import trio
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.trio.server import ServerConnection
from websockets.trio.server import serve as websockets_serve

from omiro_trio import wsengine
from omiro_trio.http.serve import read_head
from omiro_trio.http.streams import ReplayStream

SHELLS = ("websockets-trio", "engine")
MAX_SIZE = 1 << 20
PING_INTERVAL_S = 30.0
HELLO = '{"op":"hello","data":{"session_id":"s"}}'
JOINED = '{"op":"queued","data":{}}'
MATCH = '{"op":"match_found","data":{"partner":"x","match_id":"m","should_call":%s}}'
TOKEN = b'{"token":"t"}'


class Pairs:
    """Who waits, who is whose partner: the same for both shells."""

    def __init__(self) -> None:
        self.waiting: deque[Any] = deque()
        self.partner: dict[Any, Any] = {}

    def join(self, conn: Any) -> Any | None:
        """Pair ``conn`` with the one waiting longest; None when it waits."""
        if not self.waiting:
            self.waiting.append(conn)
            return None
        other = self.waiting.popleft()
        self.partner[conn], self.partner[other] = other, conn
        return other

    def leave(self, conn: Any) -> None:
        other = self.partner.pop(conn, None)
        if other is not None:
            self.partner.pop(other, None)
        if conn in self.waiting:
            self.waiting.remove(conn)


# -- websockets' own trio shell ----------------------------------------------------------


def _session_new(connection: ServerConnection, request: Request) -> Response | None:
    if not request.path.startswith("/session/new"):
        return None
    headers = Headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(TOKEN))),
            ("Connection", "close"),  # websockets closes the connection after it
        ]
    )
    return Response(HTTPStatus.OK.value, "OK", headers, TOKEN)


async def serve_websockets_trio(
    host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    pairs = Pairs()

    async def handler(ws: ServerConnection) -> None:
        await ws.send(HELLO)
        try:
            async for message in ws:
                if isinstance(message, str) and message.startswith('{"op":"join_queue"'):
                    other = pairs.join(ws)
                    if other is None:
                        await ws.send(JOINED)
                    else:
                        await other.send(MATCH % "true")
                        await ws.send(MATCH % "false")
                elif ws in pairs.partner:
                    await pairs.partner[ws].send(message)
        except ConnectionClosed:
            pass
        finally:
            pairs.leave(ws)

    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(
                websockets_serve,
                handler,
                listeners=listeners,
                compression=None,
                process_request=_session_new,
                ping_interval=PING_INTERVAL_S,
                ping_timeout=PING_INTERVAL_S,
                max_size=MAX_SIZE,
            )
        )
        task_status.started(listeners[0].socket.getsockname()[1])


# -- Omiro's engine ----------------------------------------------------------------------


async def serve_engine(
    host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    pairs = Pairs()
    engine = wsengine.Engine(idle_timeout_s=2 * PING_INTERVAL_S)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            data = await read_head(stream)
            if data.startswith(b"GET /session/new"):
                await stream.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(TOKEN)}\r\nconnection: close\r\n\r\n".encode()
                    + TOKEN
                )
                return
            await serve_socket(ReplayStream(stream, data))
        except OSError:
            pass
        finally:
            stream.socket.close()

    async def serve_socket(stream: ReplayStream) -> None:
        proto = wsengine.new_protocol(MAX_SIZE)
        proto.receive_data(stream.take_prefix())
        request = wsengine.handshake_request(proto)
        if request is None:
            return
        proto.send_response(proto.accept(request))
        raw = socket.socket(fileno=stream.socket.fileno())
        raw.setblocking(False)
        scope = trio.CancelScope()
        conn = wsengine.WsConnection(
            engine,
            raw,
            proto,
            send_queue=256,
            send_queue_bytes=1 << 20,
            on_fail=lambda failure: scope.cancel(),
        )
        try:
            conn.push(HELLO.encode())
            with scope:
                async with trio.open_nursery() as nursery:
                    with conn.writing_in(nursery):
                        await relay(conn)
                        nursery.cancel_scope.cancel()
            with trio.move_on_after(2):
                await conn.close(1000, "", graceful=True)
        finally:
            pairs.leave(conn)
            conn.release()
            raw.detach()

    async def relay(conn: wsengine.WsConnection) -> None:
        while True:
            messages = await conn.receive()
            if not messages and not conn.take_control_frames():
                return  # the peer closed, vanished or broke the protocol
            for message in messages:
                text = message if isinstance(message, str) else ""
                if text.startswith('{"op":"join_queue"'):
                    other = pairs.join(conn)
                    if other is None:
                        conn.push(JOINED.encode())
                    else:
                        other.push((MATCH % "true").encode())
                        conn.push((MATCH % "false").encode())
                elif conn in pairs.partner:
                    pairs.partner[conn].push(text.encode())

    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(engine.run)
        nursery.start_soon(partial(trio.serve_listeners, handle, listeners))
        task_status.started(listeners[0].socket.getsockname()[1])


SERVERS: dict[str, Callable[..., Awaitable[None]]] = {
    "websockets-trio": serve_websockets_trio,
    "engine": serve_engine,
}


# -- tasks per idle socket, in this process -------------------------------------------


def _tasks_under(task: trio.lowlevel.Task) -> int:
    return sum(1 + _tasks_under(child) for n in task.child_nurseries for child in n.child_tasks)


async def _idle_client(port: int) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    received = b""
    with trio.fail_after(10):
        while b"hello" not in received:
            received += await stream.receive_some(65536)
    return stream


async def count_tasks(shell: str, sockets: int) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:

        async def host(*, task_status: trio.TaskStatus[tuple[trio.lowlevel.Task, int]]) -> None:
            me = trio.lowlevel.current_task()
            async with trio.open_nursery() as inner:
                port = await inner.start(SERVERS[shell], "127.0.0.1", 0)
                task_status.started((me, port))

        server, port = await nursery.start(host)
        before = _tasks_under(server)
        clients = [await _idle_client(port) for _ in range(sockets)]
        await trio.sleep(0.2)  # every handler has reached its idle wait
        during = _tasks_under(server)
        for client in clients:
            await client.aclose()
        nursery.cancel_scope.cancel()
    return {
        "shell": shell,
        "sockets": sockets,
        "server_tasks_before": before,
        "server_tasks_with_sockets": during,
        "tasks_per_socket": round((during - before) / sockets, 2),
    }


# -- the scenarios of omiro bench, against each shell as a server process ------------


def run_bench(scenario: str, shell: str, args: argparse.Namespace) -> dict[str, Any]:
    from omiro_bench.idle import IDLE, IdleOptions
    from omiro_bench.relay import RELAY, RelayOptions
    from omiro_bench.run import RunOptions, run_scenario

    setup = RunOptions(server_command=(sys.executable, os.path.abspath(__file__), "--serve", shell))
    if scenario == "idle":
        result = run_scenario(IDLE, IdleOptions(sockets=args.sockets), setup)
    else:
        options = RelayOptions(
            pairs=args.pairs,
            idle=0,
            messages=args.messages,
            window=args.window,
            rate=args.rate,
            seconds=args.seconds,
        )
        result = run_scenario(RELAY, options, setup)
    keep = (
        ("sockets", "kib_per_socket", "server_rss_before_kib", "server_rss_after_kib")
        if scenario == "idle"
        else ("throughput_msgs_per_s", "server_cpu_per_msg_us", "latency_p50_ms", "latency_p99_ms")
    )
    return {"shell": shell, "scenario": scenario, **{k: result.get(k) for k in keep}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", nargs="?", choices=("tasks", "idle", "relay"))
    parser.add_argument("--serve", choices=SHELLS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--rate", type=float, default=4000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.serve:

        async def serve() -> None:
            async with trio.open_nursery() as nursery:
                port = await nursery.start(SERVERS[args.serve], args.host, args.port)
                print(f"listening on http://{args.host}:{port}", file=sys.stderr, flush=True)

        trio.run(serve)
        return
    for _ in range(args.rounds):
        for shell in SHELLS:
            if args.what == "tasks":
                result = trio.run(count_tasks, shell, args.sockets)
            else:
                result = run_bench(args.what, shell, args)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
