"""Sessions on the lean client, as the scenarios use them.

A session is a ``WsClient`` that has read its ``hello``; a pair is two
sessions that joined the queue with one shared interest and were matched
with each other. Every wait for the server is bounded by the client's
``IO_TIMEOUT_S``.
"""

from __future__ import annotations

import contextlib

import msgspec
import trio

from omiro_bench.client import IO_TIMEOUT_S, HttpClient, WsClient, op_of


async def open_session(http: HttpClient, *, deflate_offer: bool = True) -> WsClient:
    """A new session at ``http``'s server (a token, the upgrade, ``hello``).

    Args:
        deflate_offer: offer permessage-deflate, as browsers do.
    """
    token = await http.token()
    client, early = await WsClient.connect(http.host, http.port, token, deflate_offer=deflate_offer)
    with trio.fail_after(IO_TIMEOUT_S):
        while not early:
            early = await client.receive()
    if op_of(early[0]) != "hello":
        raise RuntimeError(f"expected hello, got {early[0][:100]!r}")
    return client


async def wait_for(client: WsClient, op: str) -> None:
    """Read until a frame whose op is ``op`` (raises when the server closes first)."""
    while True:
        frames = await client.receive()
        if not frames:
            raise RuntimeError(f"closed while waiting for {op}")
        if any(op_of(f) == op for f in frames):
            return


async def matched_pair(http: HttpClient, tag: str) -> tuple[WsClient, WsClient]:
    """Two new sessions matched with each other (their one interest ``tag`` is theirs alone)."""
    join = msgspec.json.encode({"op": "join_queue", "data": {"mode": "text", "interests": [tag]}})
    a = await open_session(http)
    b = await open_session(http)
    with trio.fail_after(IO_TIMEOUT_S):
        await a.send([join])
        await wait_for(a, "queued")
        await b.send([join])
        await wait_for(b, "match_found")
        await wait_for(a, "match_found")
    return a, b


def chat_frame(text: str) -> bytes:
    """A ``chat`` frame; ``text`` must need no JSON escaping."""
    return b'{"op":"chat","data":{"message":"' + text.encode() + b'"}}'


async def keep_reading(client: WsClient) -> None:
    """Read and drop frames (answering pings) until cancelled or closed."""
    with contextlib.suppress(RuntimeError, OSError, trio.BrokenResourceError):
        while await client.receive():
            pass
