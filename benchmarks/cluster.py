"""Relayed messages/s and matches/s: one process on memory, one on Redis, --workers 2 on Redis.

    .venv/bin/python benchmarks/cluster.py memory|redis|workers [--pairs 50] [--messages 2000]
        [--clients 200] [--seconds 10]

Starts what the mode needs on 127.0.0.1 (a redis-server without persistence
on a free port; `omiro serve`, or `omiro serve --workers 2`), then:

1. relay: PAIRS matched pairs each send MESSAGES chat frames one way, at most
   32 unanswered per pair (``trio_websocket_client.run``'s throughput phase, with
   its short latency phase after it); with --workers 2 a pair's two sides
   are on different workers about half the time, and cross through Redis;
2. matches: CLIENTS clients in text mode send ``next`` whenever they are
   matched, for SECONDS seconds; matches/s is match_found frames / 2 / time.

With one server process it gets core 0 with Redis, and this generator core
1; with --workers 2 the workers and Redis are not pinned (they need both
cores), this generator stays on core 1. Prints JSON. Bounded in time; stops
everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import trio
from trio_websocket_client import RelayOptions, open_client, run

from omiro_bench.server import LISTENING, SERVER_ENV

DEADLINE_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pin_to(core: int) -> Any:
    return lambda: os.sched_setaffinity(0, {core})


def start_redis(pin: bool) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        preexec_fn=pin_to(0) if pin else None,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise
            time.sleep(0.05)  # bounded wait for the child to listen


def start_omiro(mode: str, redis_url: str, pin: bool) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    env.update(
        SERVER_ENV,
        OMIRO_SESSION_SECRET="a benchmark secret, 32 bytes or more",
        OMIRO_LIMITS_NEXTS_PER_MINUTE="1000000",
    )
    if mode != "memory":
        env.update(OMIRO_BACKEND_KIND="redis", OMIRO_REDIS_URL=redis_url)
    command = [sys.executable, "-m", "omiro_trio", "serve", "--host", "127.0.0.1", "--port", "0"]
    if mode == "workers":
        command += ["--workers", "2"]
    process = subprocess.Popen(
        command,
        env=env,
        cwd="/",
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=pin_to(0) if pin and mode != "workers" else None,
    )
    assert process.stderr is not None
    listening = 2 if mode == "workers" else 1  # every worker says it listens
    url = ""
    for line in process.stderr:
        found = LISTENING.search(line)
        if found:
            url = found.group(1)
            listening -= 1
            if not listening:
                # Keep reading its log so it never blocks on a full pipe.
                threading.Thread(target=process.stderr.read, daemon=True).start()
                return process, url
    raise RuntimeError("the server did not start")


async def matches(url: str, clients: int, seconds: float) -> dict[str, float]:
    found = 0
    async with trio.open_nursery() as nursery:
        sockets = [await open_client(nursery, url) for _ in range(clients)]
        begin = trio.current_time()
        stop = begin + seconds

        async def churn(ws: Any) -> None:
            nonlocal found
            await ws.send_message('{"op":"join_queue","data":{"mode":"text"}}')
            while trio.current_time() < stop:
                with trio.move_on_at(stop):
                    message = json.loads(await ws.get_message())
                    if message["op"] == "match_found":
                        found += 1
                        await ws.send_message('{"op":"next"}')

        async with trio.open_nursery() as churners:
            for ws, _ in sockets:
                churners.start_soon(churn, ws)
        elapsed = trio.current_time() - begin
        nursery.cancel_scope.cancel()
    return {"matches_per_s": found / 2 / elapsed, "match_found_frames": found}


async def measure(args: argparse.Namespace, url: str, pid: int) -> dict[str, float]:
    with trio.fail_after(DEADLINE_S):
        relay = await run(
            RelayOptions(
                pairs=args.pairs, idle=0, messages=args.messages, window=32, rate=500, seconds=2
            ),
            url,
            pid,
        )
        results = {"relayed_msgs_per_s": relay["throughput_msgs_per_s"]}
        results["relay_latency_p50_ms_at_500_per_s"] = relay["latency_p50_ms"]
        results["relay_latency_p99_ms_at_500_per_s"] = relay["latency_p99_ms"]
        results.update(await matches(url, args.clients, args.seconds))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", choices=["memory", "redis", "workers"])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    pin = len(os.sched_getaffinity(0)) >= 2
    started: list[subprocess.Popen[Any]] = []
    try:
        redis_url = ""
        if args.mode != "memory":
            redis, redis_url = start_redis(pin and args.mode == "redis")
            started.append(redis)
        server, url = start_omiro(args.mode, redis_url, pin)
        started.append(server)
        if pin:
            os.sched_setaffinity(0, {1})
        results = trio.run(measure, args, url, server.pid)
    finally:
        for process in reversed(started):
            process.terminate()
            process.wait(timeout=30)
    print(json.dumps({"args": vars(args), "pinned": pin, **results}, indent=2))


if __name__ == "__main__":
    main()
