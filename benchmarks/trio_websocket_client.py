"""The relay measured with a trio-websocket client, in this process: benchmarks/cluster.py's.

This was the first ``omiro bench relay``: each client is a trio-websocket
connection with its own reader task, so the generator costs more per frame
than the lean client of ``omiro_bench`` and saturates first. It stays for
the cluster benchmark, whose numbers were taken with it (BENCHMARKS.md).

Against a server already started at ``url`` (process ``pid``), ``run``:

1. opens ``idle`` idle sockets and reads the server's RSS before and after;
2. throughput: every pair sends ``messages`` chat frames one way as fast as
   the server takes them, with at most ``window`` unanswered frames per pair;
3. latency: the same pairs send at a fixed total ``rate`` for ``seconds``
   seconds; p50/p99/max from send to receipt (one clock: same process).

Everything stays on loopback and every loop is bounded in count and time.
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from dataclasses import dataclass

import trio
from trio_websocket import WebSocketConnection, connect_websocket_url

from omiro_bench.scenario import percentile
from omiro_bench.server import cpu_seconds, rss_kib

DEADLINE_S = 300


@dataclass
class RelayOptions:
    """What ``run`` measures: how many pairs and idle sockets, how much load in each phase."""

    pairs: int = 50
    idle: int = 1000
    messages: int = 2000  # per pair, throughput phase
    window: int = 32  # unanswered frames per pair, throughput phase
    rate: float = 1000.0  # frames/s in all, latency phase
    seconds: float = 10.0  # latency phase


def _new_token(url: str) -> str:
    with urllib.request.urlopen(f"{url}/session/new", timeout=10) as response:
        token: str = json.load(response)["token"]
    return token


async def open_client(nursery: trio.Nursery, url: str) -> tuple[WebSocketConnection, str]:
    """A connected client that has read its ``hello``; returns it and its session id."""
    token = await trio.to_thread.run_sync(_new_token, url)
    ws_url = url.replace("http://", "ws://") + "/ws"
    ws = await connect_websocket_url(nursery, f"{ws_url}?token={token}", message_queue_size=4096)
    hello = json.loads(await ws.get_message())
    return ws, str(hello["data"]["session_id"])


async def run(args: RelayOptions, url: str, pid: int) -> dict[str, float]:
    """The relay measurement against the server at ``url`` (process ``pid``)."""
    results: dict[str, float] = {}
    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            results["rss_empty_kib"] = rss_kib(pid)
            idle = [await open_client(nursery, url) for _ in range(args.idle)]
            results["rss_idle_kib"] = rss_kib(pid)
            if args.idle:
                per_socket = (results["rss_idle_kib"] - results["rss_empty_kib"]) / args.idle
                results["kib_per_idle_socket"] = per_socket
            pairs = [await _matched_pair(nursery, url) for _ in range(args.pairs)]
            results.update(await _throughput(args, pairs, pid))
            results.update(await _latency(args, pairs))
            results["rss_end_kib"] = rss_kib(pid)
            for ws, _ in idle:
                await ws.aclose()
            nursery.cancel_scope.cancel()
    return results


Pair = tuple[WebSocketConnection, WebSocketConnection]


async def _matched_pair(nursery: trio.Nursery, url: str) -> Pair:
    """Two new clients that joined the queue and were matched with each other."""
    a, _ = await open_client(nursery, url)
    b, _ = await open_client(nursery, url)
    await a.send_message('{"op":"join_queue","data":{"mode":"text"}}')
    assert json.loads(await a.get_message())["op"] == "queued"
    await b.send_message('{"op":"join_queue","data":{"mode":"text"}}')
    assert json.loads(await a.get_message())["op"] == "match_found"
    assert json.loads(await b.get_message())["op"] == "match_found"
    return a, b


async def _throughput(args: RelayOptions, pairs: list[Pair], pid: int) -> dict[str, float]:
    """Phase 1: every pair sends ``args.messages`` frames one way, ``args.window`` in flight."""

    async def blast(a: WebSocketConnection, b: WebSocketConnection) -> None:
        window = trio.Semaphore(args.window)

        async def send() -> None:
            for i in range(args.messages):
                await window.acquire()
                await a.send_message(f'{{"op":"chat","data":{{"message":"m{i}"}}}}')

        async def receive() -> None:
            for _ in range(args.messages):
                await b.get_message()
                window.release()

        async with trio.open_nursery() as inner:
            inner.start_soon(send)
            inner.start_soon(receive)

    cpu_before, start = cpu_seconds(pid), time.perf_counter()
    async with trio.open_nursery() as blasts:
        for a, b in pairs:
            blasts.start_soon(blast, a, b)
    elapsed = time.perf_counter() - start
    total = args.messages * len(pairs)
    return {
        "throughput_msgs_per_s": total / elapsed,
        "server_cpu_per_msg_us": (cpu_seconds(pid) - cpu_before) / total * 1e6,
    }


async def _latency(args: RelayOptions, pairs: list[Pair]) -> dict[str, float]:
    """Phase 2: the pairs send at a fixed total ``args.rate`` for ``args.seconds``."""
    latencies: list[float] = []
    per_pair_interval = len(pairs) / args.rate
    count = int(args.seconds * args.rate / len(pairs))

    async def paced(a: WebSocketConnection, b: WebSocketConnection, offset: float) -> None:
        async def send() -> None:
            await trio.sleep(offset)
            begin = trio.current_time()
            for i in range(count):
                await trio.sleep_until(begin + i * per_pair_interval)
                stamp = f"{time.perf_counter():.9f}"
                await a.send_message(f'{{"op":"chat","data":{{"message":"{stamp}"}}}}')

        async def receive() -> None:
            for _ in range(count):
                message = json.loads(await b.get_message())
                latencies.append(time.perf_counter() - float(message["data"]["message"]))

        async with trio.open_nursery() as inner:
            inner.start_soon(send)
            inner.start_soon(receive)

    async with trio.open_nursery() as pacers:
        for n, (a, b) in enumerate(pairs):
            pacers.start_soon(paced, a, b, n * per_pair_interval / len(pairs))
    return {
        "latency_p50_ms": statistics.median(latencies) * 1000,
        "latency_p99_ms": percentile(latencies, 0.99) * 1000,
        "latency_max_ms": max(latencies) * 1000,
        "latency_samples": len(latencies),
    }
