"""A rolling upgrade of two servers on Redis: how many calls it drops (issue 23).

    .venv/bin/python benchmarks/rolling_upgrade.py [--pairs 50] [--json]

Starts a redis-server (no persistence, a free port), two ``omiro serve`` on
it with the default settings (but for a shared session secret), and a
balancer in front of them, as an operator's would be: each new WebSocket
upgrade goes to the next server, round robin, whose ``/readyz`` answers
200; other requests to the first ready one. Then:

1. PAIRS pairs of clients connect through the balancer and are matched; each
   client lands on the other server than the one before it, so every pair
   is split over the two servers (the hardest case: its match is told
   across the bus).
2. The first server gets SIGTERM (a drain, default ``drain_grace_s``) and,
   once it exited, a new process starts on its port: the upgrade of one
   replica. Then the same for the second server.
3. Every client does what the page does: on ``server_draining`` or a lost
   socket it opens a new session through the balancer and sends ``resume``
   with its ticket; a client told ``partner_away`` waits for ``resumed``.

A call is *kept* when both sides end each upgrade step in ``resumed``;
*dropped* when either side hears ``partner_disconnected`` or a refused
``resume``, or does not resume within 90 s. Prints, per
step: calls kept and dropped, seconds from SIGTERM to the last call
resumed, the drained server's exit code and how long it took to exit.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import trio
from cluster import free_port, start_redis
from trio_websocket import ConnectionClosed, open_websocket_url

SECRET = "a rolling-upgrade secret, 32 bytes or more"
STEP_DEADLINE_S = 90.0


def start_omiro(redis_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMIRO_")}
    env.update(
        OMIRO_BACKEND_KIND="redis",
        OMIRO_REDIS_URL=redis_url,
        OMIRO_SESSION_SECRET=SECRET,
        OMIRO_ICE_URLS="[]",
        # 2 clients per pair from one address: room for them all.
        OMIRO_LIMITS_SOCKETS_PER_IP="100000",
        OMIRO_LIMITS_SESSIONS_PER_IP_PER_MINUTE="1000000",
        OMIRO_SERVER_CONNECTIONS_PER_IP="100000",
    )
    command = [sys.executable, "-m", "omiro_trio", "serve", "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port)], env=env, cwd="/", stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 20
    while not ready(port):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("omiro serve did not become ready")
        time.sleep(0.05)  # bounded wait for the child to be ready
    return process


def ready(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("GET", "/readyz")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class Balancer:
    """Round robin over the ready servers for upgrades; the first ready one otherwise."""

    def __init__(self, targets: list[int]) -> None:
        self.targets = targets
        self._next = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream: socket.socket) -> None:
        downstream.settimeout(5)
        try:
            first = downstream.recv(8, socket.MSG_PEEK)
        except OSError:
            downstream.close()
            return
        downstream.settimeout(None)
        upgrade = first.startswith(b"GET /ws")
        port = None
        with self._lock:
            start = self._next if upgrade else 0
            for n in range(len(self.targets)):
                candidate = self.targets[(start + n) % len(self.targets)]
                if ready(candidate):
                    port = candidate
                    if upgrade:
                        self._next = start + n + 1
                    break
        if port is None:
            downstream.close()
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            downstream.close()
            return
        upstream.settimeout(None)
        for source, sink in ((downstream, upstream), (upstream, downstream)):
            threading.Thread(target=pump, args=(source, sink), daemon=True).start()


def pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while True:
            select.select([source], [], [], 1.0)
            data = source.recv(65536)
            if not data:
                with contextlib.suppress(OSError):
                    sink.shutdown(socket.SHUT_WR)
                return
            sink.sendall(data)
    except OSError:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_RDWR)


@dataclass
class Side:
    """One client: its ticket, its partner, what happened to it."""

    name: int
    ticket: str = ""
    partner: str = ""
    session: str = ""
    resumed: int = 0  # how many times it was paired again
    dropped: str = ""  # why its call ended, if it did


async def new_session(base: str) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(base + "/session/new", timeout=5) as answer:
            return str(json.load(answer)["token"])

    return await trio.to_thread.run_sync(fetch)


async def run_side(base: str, side: Side, matched: trio.Event, step_done: Any) -> None:
    """Connect, meet, then keep the call through every drain until cancelled (``step_done``
    is called at each resume, and when the call ended)."""
    try:
        await _keep_call(base, side, matched, step_done)
    finally:
        if side.dropped:
            step_done(side)


async def _keep_call(base: str, side: Side, matched: trio.Event, step_done: Any) -> None:
    ws_base = base.replace("http://", "ws://")
    resume = False
    while True:
        deadline = trio.current_time() + STEP_DEADLINE_S
        while True:
            try:
                token = await new_session(base)
                break
            except OSError:
                if trio.current_time() > deadline:
                    side.dropped = "no server"
                    return
                await trio.sleep(0.3)  # the page's backoff, roughly
        try:
            async with open_websocket_url(f"{ws_base}/ws?token={token}") as ws:
                hello = json.loads(await ws.get_message())
                side.session = hello["data"]["session_id"]
                if resume:
                    await ws.send_message(
                        json.dumps({"op": "resume", "data": {"ticket": side.ticket}})
                    )
                else:
                    await ws.send_message(
                        json.dumps({"op": "join_queue", "data": {"mode": "text"}})
                    )
                while True:
                    frame = json.loads(await ws.get_message())
                    op, data = frame["op"], frame.get("data") or {}
                    if op in ("match_found", "resumed"):
                        side.ticket, side.partner = data["ticket"], data["partner"]
                        if op == "resumed":
                            side.resumed += 1
                            step_done(side)
                        matched.set()
                    elif op == "server_draining":
                        break  # reconnect, then resume (as the page does)
                    elif op == "partner_disconnected":
                        side.dropped = f"partner_disconnected {data.get('reason')}"
                        return
                    elif op == "error" and data.get("op") == "resume":
                        side.dropped = f"resume refused: {data.get('code')}"
                        return
        except (ConnectionClosed, OSError, trio.BrokenResourceError):
            pass  # the socket was lost: reconnect and resume
        resume = True


async def main(pairs: int) -> dict[str, Any]:
    redis, redis_url = start_redis(pin=False)
    ports = [free_port(), free_port()]
    servers = [start_omiro(redis_url, port) for port in ports]
    balancer = Balancer(ports)
    base = f"http://127.0.0.1:{balancer.port}"
    sides = [Side(n) for n in range(2 * pairs)]
    results: list[dict[str, Any]] = []
    try:
        async with trio.open_nursery() as nursery:
            resumed_at: dict[int, float] = {}
            changed = trio.Event()  # set whenever a side resumed or its call ended

            def step_done(side: Side) -> None:
                if not side.dropped:
                    resumed_at[side.name] = time.monotonic()
                changed.set()

            for side in sides:  # one at a time: each pair is two neighbours
                matched = trio.Event()
                nursery.start_soon(run_side, base, side, matched, step_done)
                if side.name % 2 == 1:
                    with trio.fail_after(20):
                        await matched.wait()
                else:
                    await trio.sleep(0.05)  # let it queue before its partner joins
            for index in (0, 1):
                before = {side.name: side.resumed for side in sides}
                began = time.monotonic()
                servers[index].send_signal(signal.SIGTERM)
                code = await trio.to_thread.run_sync(servers[index].wait, 30)
                exited = time.monotonic() - began
                servers[index] = await trio.to_thread.run_sync(start_omiro, redis_url, ports[index])
                with trio.move_on_after(STEP_DEADLINE_S):
                    while any(
                        not side.dropped and side.resumed == before[side.name] for side in sides
                    ):
                        await changed.wait()
                        changed = trio.Event()
                kept = sum(
                    1
                    for n in range(pairs)
                    if all(
                        not side.dropped and side.resumed > before[side.name]
                        for side in sides[2 * n : 2 * n + 2]
                    )
                )
                last = max((at for name, at in resumed_at.items() if at >= began), default=began)
                results.append(
                    {
                        "step": f"upgrade server {index + 1}",
                        "calls": pairs,
                        "kept": kept,
                        "dropped": pairs - kept,
                        "drained_exit_code": code,
                        "drained_exit_s": round(exited, 2),
                        "last_resumed_s": round(last - began, 2),
                        "why_dropped": sorted({side.dropped for side in sides if side.dropped}),
                    }
                )
            nursery.cancel_scope.cancel()
    finally:
        for server in servers:
            server.kill()
        redis.kill()
    return {"pairs": pairs, "steps": results}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    outcome = trio.run(main, args.pairs)
    if args.json:
        print(json.dumps(outcome))
    else:
        for step in outcome["steps"]:
            print(
                f"{step['step']}: {step['kept']}/{step['calls']} calls kept, "
                f"{step['dropped']} dropped {step['why_dropped']}; drained server exited "
                f"{step['drained_exit_code']} after {step['drained_exit_s']} s; last call "
                f"resumed {step['last_resumed_s']} s after SIGTERM"
            )
