"""``omiro bench relay``: chat frames between matched pairs through a real `omiro serve`.

Starts `omiro serve` (memory backend) as its own process on 127.0.0.1, pinned
to one core when the machine has two or more, with the load generator pinned
to another; opens IDLE idle sockets (they are what makes GC pauses show up
in the tail), matches PAIRS pairs, then measures:

1. throughput: every pair sends MESSAGES chat frames one way as fast as the
   server takes them, with at most WINDOW unanswered frames per pair;
2. latency: the same pairs send at a fixed total RATE for SECONDS seconds;
   p50/p99/max from send to receipt (one clock: same process);
3. server memory (VmRSS) before and after the idle sockets.

Everything stays on loopback, every loop is bounded in count and time, and
the server is stopped at the end.

    omiro bench relay [--pairs 50] [--idle 1000] ...

``report`` also serves the scripts in ``benchmarks/``: it starts the server,
pins the cores, runs a measurement and prints JSON.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from trio_websocket import WebSocketConnection, connect_websocket_url

LISTENING = re.compile(r"listening on (http://\S+)")
DEADLINE_S = 300


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SERVER_ENV = {
    "OMIRO_ICE_URLS": "[]",
    "OMIRO_LOG_LEVEL": "info",
    "OMIRO_LIMITS_MESSAGES_PER_SECOND": "10000000",
    "OMIRO_LIMITS_MESSAGE_BURST": "10000000",
    "OMIRO_LIMITS_SOCKETS_PER_IP": "1000000",
    "OMIRO_SERVER_CONNECTIONS_PER_IP": "1000000",
    "OMIRO_LIMITS_SESSIONS_PER_IP_PER_MINUTE": "1000000",
}
"""A benchmark server's settings: no STUN, and limits raised so the load is not refused."""


def start_server(
    pin: bool, extra_env: dict[str, str] | None = None, command: list[str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start ``omiro serve`` (or ``command``) on 127.0.0.1, port 0; returns it and its URL.

    The server must print ``listening on http://HOST:PORT`` on stderr. With
    ``pin`` it runs on core 0 only.
    """
    env = dict(os.environ)
    env.update(SERVER_ENV)
    env.update(extra_env or {})
    if command is None:
        command = [sys.executable, "-m", "omiro_trio", "serve", "--host", "127.0.0.1"]
        command += ["--port", "0"]
    process = subprocess.Popen(
        command,
        env=env,
        cwd="/",
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pin else None,
    )
    assert process.stderr is not None
    for line in process.stderr:
        found = LISTENING.search(line)
        if found:
            # Keep reading its log, or a full pipe would stall the server.
            threading.Thread(target=_drain, args=(process.stderr,), daemon=True).start()
            return process, found.group(1)
    raise RuntimeError("the server did not start")


STALL_LINES: list[str] = []
"""The server's ``loop stall`` log lines (with ``OMIRO_DEBUG_STALLS_MS`` set; diagnostics.py)."""


def _drain(pipe: Any) -> None:
    for line in pipe:
        if "loop stall" in line and len(STALL_LINES) < 10_000:
            STALL_LINES.append(line.rstrip())


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


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


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


@dataclass
class RelayOptions:
    """The relay benchmark's knobs (``omiro bench relay --help``)."""

    pairs: int = 50
    idle: int = 1000
    messages: int = 2000  # per pair, throughput phase
    window: int = 32  # unanswered frames per pair, throughput phase
    rate: float = 1000.0  # frames/s in all, latency phase
    seconds: float = 10.0  # latency phase


def report(options: Any, measure: Callable[[Any, str, int], Awaitable[dict[str, float]]]) -> None:
    """Start a server, run ``measure(args, url, server_pid)`` against it, print JSON.

    With two or more cores the server gets core 0 and this process core 1.
    """
    pin = len(os.sched_getaffinity(0)) >= 2
    process, url = start_server(pin)
    try:
        if pin:
            os.sched_setaffinity(0, {1})
        results = trio.run(measure, options, url, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(json.dumps({"args": vars(options), "pinned": pin, **results}, indent=2))
