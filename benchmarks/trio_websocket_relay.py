"""Baseline: a plain trio-websocket relay with no Omiro logic, measured by `omiro bench relay`.

The server part speaks just enough of the protocol for the load generator:
``GET /session/new`` returns a token, ``/ws`` sends ``hello``, ``join_queue``
pairs sockets in arrival order (``queued`` then ``match_found``), and every
other text frame is forwarded verbatim to the partner: no validation, no
rate limits, no ``from``. It shows what the WebSocket library alone costs
on this machine, in the same run as Omiro's numbers.

    .venv/bin/python benchmarks/trio_websocket_relay.py [omiro bench relay options]

(With ``--serve --host H --port P`` it is the server; the script starts
itself that way, pinned to core 0, and runs the relay scenario against it.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from functools import partial

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

from omiro_trio.http.heads import parse_head
from omiro_trio.http.serve import read_head
from omiro_trio.http.streams import ReplayStream

MESSAGE_QUEUE = 4
JOINED = '{"op":"queued","data":{}}'
MATCH = '{"op":"match_found","data":{"partner":"x","match_id":"m","should_call":%s}}'


class Relay:
    def __init__(self) -> None:
        self.waiting: deque[WebSocketConnection] = deque()
        self.partner: dict[WebSocketConnection, WebSocketConnection] = {}
        self.count = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            data = await read_head(stream)
            head = parse_head(data)
            if head is None:
                return
            replay = ReplayStream(stream, data)
            if head.target.startswith("/session/new"):
                self.count += 1
                body = json.dumps({"token": f"t{self.count}"}).encode()
                await replay.send_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body
                )
                return
            async with trio.open_nursery() as nursery:
                request = await wrap_server_stream(
                    nursery, replay, message_queue_size=MESSAGE_QUEUE
                )
                ws = await request.accept()
                await self.serve_socket(ws)
                nursery.cancel_scope.cancel()
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def serve_socket(self, ws: WebSocketConnection) -> None:
        await ws.send_message('{"op":"hello","data":{"session_id":"s"}}')
        try:
            while True:
                message = await ws.get_message()
                if isinstance(message, str) and message.startswith('{"op":"join_queue"'):
                    if self.waiting:
                        other = self.waiting.popleft()
                        self.partner[ws], self.partner[other] = other, ws
                        await other.send_message(MATCH % "true")
                        await ws.send_message(MATCH % "false")
                    else:
                        self.waiting.append(ws)
                        await ws.send_message(JOINED)
                elif ws in self.partner:
                    await self.partner[ws].send_message(message)
        except ConnectionClosed:
            pass
        finally:
            other = self.partner.pop(ws, None)
            if other is not None:
                self.partner.pop(other, None)
            if ws in self.waiting:
                self.waiting.remove(ws)


async def serve(host: str, port: int) -> None:
    relay = Relay()
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    print(f"listening on http://{host}:{bound}", file=sys.stderr, flush=True)
    await trio.serve_listeners(partial(Relay.handle, relay), listeners)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--idle", type=int, default=0)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--rate", type=float, default=4000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--procs", type=int, default=1)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.host, args.port)
        return
    from omiro_bench.relay import RELAY, RelayOptions
    from omiro_bench.run import RunOptions, run_scenario

    options = RelayOptions(
        pairs=args.pairs,
        idle=args.idle,
        messages=args.messages,
        window=args.window,
        rate=args.rate,
        seconds=args.seconds,
    )
    setup = RunOptions(
        procs=args.procs, server_command=(sys.executable, os.path.abspath(__file__), "--serve")
    )
    result = run_scenario(RELAY, options, setup)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
