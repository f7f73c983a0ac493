"""The look ahead before a way into the queue, alone: what ``Session.left_ahead`` costs.

Before a ``join_queue`` or ``next`` enters the queue the hub asks the
connection whether the client has already left behind it
(``connection._Reading``): the frames read and not yet handled are looked
through, and one step is read ahead without waiting. Here, as on a join
with nothing behind it: one frame read (the join), and a socket that holds
nothing (one ``recv`` that finds nothing). A real engine connection over a
socket pair and a real core. Prints the CPU time a call costs (µs; the
least and the median of the rounds)::

    python benchmarks/left_ahead.py --calls 200000
"""

from __future__ import annotations

import argparse
import socket

import trio
from ops_support import cpu_per_unit, print_costs

from omiro_trio import wsengine
from omiro_trio.connection import _Reading
from omiro_trio.session_core import SessionCore

REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
JOIN = '{"op":"join_queue","data":{"mode":"video","interests":["music"]}}'


def _connection(ours: socket.socket) -> wsengine.WsConnection:
    proto = wsengine.new_protocol(65536)
    proto.receive_data(REQUEST)
    request = wsengine.handshake_request(proto)
    assert request is not None
    proto.send_response(proto.accept(request))
    conn = wsengine.WsConnection(
        wsengine.Engine(60.0),
        ours,
        proto,
        send_queue=8,
        send_queue_bytes=1 << 20,
        on_fail=lambda *_: None,
    )
    conn.write_now()  # the 101, so that nothing waits to be written
    return conn


async def main(calls: int) -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    conn = _connection(ours)
    left_ahead = _Reading(conn, SessionCore("a", 0.0))
    left_ahead.frames = [JOIN]

    async def run(_: int) -> None:
        for _ in range(calls):
            if left_ahead():
                raise AssertionError("nothing is behind the join")

    print_costs("left_ahead_us", await cpu_per_unit(run, calls), 3)
    conn.release()
    ours.close()
    theirs.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    trio.run(main, parser.parse_args().calls)
