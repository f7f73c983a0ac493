"""Relayed messages/s and matches/s: one process on memory, one on Redis, --workers 2 on Redis;
relays and matches between two servers; ``/session/new`` with many bans.

    .venv/bin/python benchmarks/cluster.py memory|redis|workers [--pairs 50] [--messages 2000]
        [--clients 200] [--seconds 10]
    .venv/bin/python benchmarks/cluster.py cross [--pairs 20] [--messages 1000]
        [--clients 200] [--seconds 10]
    .venv/bin/python benchmarks/cluster.py bans [--bans 10000] [--requests 500] [--backend redis]

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
cores), this generator stays on core 1.

``cross`` starts two ``omiro serve`` processes (A and B) on one Redis, all
three on core 0, and this generator on core 1, then:

1. relay: PAIRS pairs, each with its sender on A and its receiver on B, send
   MESSAGES chat frames one way (at most 32 unanswered per pair); every
   frame crosses through Redis. Reports frames/s and the CPU time each
   process spent per frame (A sends, B delivers, Redis publishes);
2. matches: CLIENTS text-mode clients, half on each server, send ``next``
   whenever matched, for SECONDS seconds (matches/s as above, and how many
   of them joined the two servers).

``bans`` starts Redis (with ``--backend redis``) and one server on core 0,
adds BANS bans of single IPv4 addresses through the admin API, then asks
``/session/new`` REQUESTS times, one after another from one client (not
banned), and reports the latency and the server's and Redis's CPU per
request.

Prints JSON. Bounded in time; stops everything it started.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import trio
from trio_websocket import WebSocketConnection
from trio_websocket_client import RelayOptions, open_client, run

from omiro_bench.server import LISTENING, SERVER_ENV

DEADLINE_S = 300
SECRET = "a benchmark secret, 32 bytes or more"
ADMIN_TOKEN = "a benchmark admin token, 32 bytes or more"
WINDOW = 32


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


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_omiro(
    mode: str, redis_url: str, pin: bool, prefix: str = "omiro:"
) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    env.update(
        SERVER_ENV,
        OMIRO_SESSION_SECRET=SECRET,
        OMIRO_ADMIN_TOKEN=ADMIN_TOKEN,
        OMIRO_LIMITS_NEXTS_PER_MINUTE="1000000",
        OMIRO_REDIS_KEY_PREFIX=prefix,
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


async def _pair_across(
    nursery: trio.Nursery, a_url: str, b_url: str
) -> tuple[WebSocketConnection, WebSocketConnection]:
    """A client on A (waits first) matched with a client on B."""
    sender, _ = await open_client(nursery, a_url)
    receiver, _ = await open_client(nursery, b_url)
    await sender.send_message('{"op":"join_queue","data":{"mode":"text"}}')
    assert json.loads(await sender.get_message())["op"] == "queued"
    await receiver.send_message('{"op":"join_queue","data":{"mode":"text"}}')
    assert json.loads(await sender.get_message())["op"] == "match_found"
    assert json.loads(await receiver.get_message())["op"] == "match_found"
    return sender, receiver


async def cross_relay(
    args: argparse.Namespace, a_url: str, b_url: str, pids: dict[str, int]
) -> dict[str, float]:
    """Every pair sends ``args.messages`` frames from A to B, ``WINDOW`` unanswered at most."""
    async with trio.open_nursery() as nursery:
        pairs = [await _pair_across(nursery, a_url, b_url) for _ in range(args.pairs)]

        async def blast(sender: WebSocketConnection, receiver: WebSocketConnection) -> None:
            window = trio.Semaphore(WINDOW)

            async def send() -> None:
                for i in range(args.messages):
                    await window.acquire()
                    await sender.send_message(f'{{"op":"chat","data":{{"message":"m{i}"}}}}')

            async def receive() -> None:
                for _ in range(args.messages):
                    message = json.loads(await receiver.get_message())
                    if message["op"] != "chat":
                        raise RuntimeError(f"the receiver got {message}")
                    window.release()

            async with trio.open_nursery() as inner:
                inner.start_soon(send)
                inner.start_soon(receive)

        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        start = time.perf_counter()
        async with trio.open_nursery() as blasts:
            for sender, receiver in pairs:
                blasts.start_soon(blast, sender, receiver)
        elapsed = time.perf_counter() - start
        frames = args.messages * args.pairs
        results = {"cross_frames_per_s": frames / elapsed, "frames": frames}
        for name, pid in pids.items():
            results[f"{name}_cpu_per_frame_us"] = (cpu_seconds(pid) - before[name]) / frames * 1e6
        nursery.cancel_scope.cancel()
    return results


async def cross_matches(
    args: argparse.Namespace, urls: list[str], sides: dict[str, str], pids: dict[str, int]
) -> dict[str, float]:
    """Clients on both servers churn through ``next``; counts matches and those across."""
    found = across = 0
    async with trio.open_nursery() as nursery:
        sockets = []
        for n in range(args.clients):
            ws, session_id = await open_client(nursery, urls[n % 2])
            sides[session_id] = "ab"[n % 2]
            sockets.append((ws, session_id))
        begin = trio.current_time()
        stop = begin + args.seconds
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}

        async def churn(ws: WebSocketConnection, me: str) -> None:
            nonlocal found, across
            await ws.send_message('{"op":"join_queue","data":{"mode":"text"}}')
            while trio.current_time() < stop:
                with trio.move_on_at(stop):
                    message = json.loads(await ws.get_message())
                    if message["op"] == "match_found":
                        found += 1
                        across += sides[message["data"]["partner"]] != sides[me]
                        await ws.send_message('{"op":"next"}')

        async with trio.open_nursery() as churners:
            for ws, me in sockets:
                churners.start_soon(churn, ws, me)
        elapsed = trio.current_time() - begin
        spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        nursery.cancel_scope.cancel()
    results = {
        "matches_per_s": found / 2 / elapsed,
        "match_found_frames": found,
        "share_across_servers": across / found if found else 0.0,
    }
    for name, seconds in spent.items():
        results[f"{name}_cpu_per_match_us"] = seconds / max(1, found / 2) * 1e6
    return results


def _admin(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    request = urllib.request.Request(
        url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return int(response.status)


def _session_new_ms(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(f"{url}/session/new", timeout=30) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"/session/new answered {response.status}")
    return (time.perf_counter() - start) * 1000


async def bans(args: argparse.Namespace, url: str, pids: dict[str, int]) -> dict[str, float]:
    """Add ``args.bans`` bans through the admin API, then time ``/session/new``."""
    rng = random.Random(1)
    targets = {
        str(ipaddress.IPv4Address(rng.randrange(0x0B000000, 0xDF000000))) for _ in range(args.bans)
    }
    targets.discard("127.0.0.1")
    limiter = trio.CapacityLimiter(8)
    added = 0

    async def add(target: str) -> None:
        nonlocal added
        body = {"target": target, "reason": "benchmark", "duration_s": 86400}
        status = await trio.to_thread.run_sync(
            _admin, url, "POST", "/admin/bans", body, limiter=limiter
        )
        if status != 201:
            raise RuntimeError(f"adding a ban answered {status}")
        added += 1

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            for target in targets:
                nursery.start_soon(add, target)
        for _ in range(20):  # warm up
            await trio.to_thread.run_sync(_session_new_ms, url)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        latencies = [
            await trio.to_thread.run_sync(_session_new_ms, url) for _ in range(args.requests)
        ]
    ordered = sorted(latencies)
    results = {
        "bans": added,
        "session_new_p50_ms": statistics.median(latencies),
        "session_new_p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "session_new_mean_ms": statistics.fmean(latencies),
    }
    for name, pid in pids.items():
        results[f"{name}_cpu_per_request_us"] = (
            (cpu_seconds(pid) - before[name]) / args.requests * 1e6
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("mode", choices=["memory", "redis", "workers", "cross", "bans"])
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--bans", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--backend", choices=["memory", "redis"], default="redis")
    args = parser.parse_args()
    cross = args.mode == "cross"
    if args.pairs is None:
        args.pairs = 20 if cross else 50
    if args.messages is None:
        args.messages = 1000 if cross else 2000
    pin = len(os.sched_getaffinity(0)) >= 2
    started: list[subprocess.Popen[Any]] = []
    try:
        redis_url = ""
        redis_pid = 0
        needs_redis = args.mode in ("redis", "workers", "cross") or (
            args.mode == "bans" and args.backend == "redis"
        )
        if needs_redis:
            redis, redis_url = start_redis(pin and args.mode != "workers")
            started.append(redis)
            redis_pid = redis.pid
        if args.mode == "cross":
            prefix = f"bench{os.getpid()}:"
            a, a_url = start_omiro("redis", redis_url, pin, prefix)
            started.append(a)
            b, b_url = start_omiro("redis", redis_url, pin, prefix)
            started.append(b)
            if pin:
                os.sched_setaffinity(0, {1})
            pids = {"sender_server": a.pid, "receiver_server": b.pid, "redis": redis_pid}

            async def measure_cross() -> dict[str, float]:
                with trio.fail_after(DEADLINE_S):
                    results = await cross_relay(args, a_url, b_url, pids)
                    results.update(await cross_matches(args, [a_url, b_url], {}, pids))
                return results

            results = trio.run(measure_cross)
        elif args.mode == "bans":
            server, url = start_omiro(args.backend, redis_url, pin)
            started.append(server)
            if pin:
                os.sched_setaffinity(0, {1})
            pids = {"server": server.pid}
            if redis_pid:
                pids["redis"] = redis_pid
            results = trio.run(bans, args, url, pids)
        else:
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
