"""The session's operations alone: what a new session costs the hub and its core.

Each session is attached, sends ``join_queue`` (half of them are matched
with the one waiting) and is detached, on the memory backend in this
process, with no sockets, HTTP or WebSocket engine around it: the work
`omiro bench connect` measures minus the transport. Prints the CPU time a
session costs (µs; the least and the median of the rounds).

Runs against a build from before the session machine too (whose read loop
handed a join to ``Hub.join``): ``PYTHONPATH=$BUILD python
benchmarks/session_ops.py``.

Its instruction count is the same whatever else the machine runs: run it
under callgrind at two sizes and divide the difference by the sessions
between them (``BENCHMARKS.md``, "The house, finished")::

    cg="valgrind --tool=callgrind"
    $cg --callgrind-out-file=small.out python benchmarks/session_ops.py --sessions 150
    $cg --callgrind-out-file=large.out python benchmarks/session_ops.py --sessions 450
    # (instructions of large.out - those of small.out) / (8 * 300)
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from typing import Any

import trio

from omiro_trio.backends.memory import MemoryBackend
from omiro_trio.hub import Hub, Session
from omiro_trio.metrics import Metrics
from omiro_trio.session_core import SessionCore

JOIN = json.dumps({"op": "join_queue", "data": {}})
ROUNDS = 7  # measured, after one round to warm up: 8 rounds of sessions in all


class _Outlet:
    def push(self, payload: bytes) -> bool:
        return True


class _Timers:
    def want(self, widen: object) -> None:
        pass

    def watch(self, after_s: float | None) -> None:
        pass


async def _round(hub: Hub, sessions: int, first: int) -> None:
    attached = []
    for n in range(first, first + sessions):
        session_id = f"s{n}"
        ip = f"10.0.{n // 250 % 250}.{n % 250}"
        core = SessionCore(session_id, trio.current_time())
        session = Session(session_id, ip, outlet=_Outlet(), core=core)
        session.timers = _Timers()
        hub.attach(session)
        attached.append(session)
        now = trio.current_time()
        if hasattr(hub, "perform"):
            await hub.perform(session, core.receive(JOIN, now), now)
        else:  # before the session machine: the join as its read loop made it
            action: Any = core.receive(JOIN, now)
            await hub.join(session, action.prefs, ended_reason="next")
    for session in attached:
        await hub.detach(session)


async def _measure(sessions: int) -> list[float]:
    backend = MemoryBackend(interest_timeout_s=5, rematch_cooldown_s=0, block_ttl_s=60)
    hub = Hub(backend, Metrics())
    await _round(hub, sessions, 0)  # warm up
    gc.collect()
    gc.disable()
    costs = []
    try:
        for n in range(1, ROUNDS + 1):
            started = time.process_time()
            await _round(hub, sessions, n * sessions)
            costs.append((time.process_time() - started) / sessions * 1e6)
    finally:
        gc.enable()
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4000, help="sessions a round")
    args = parser.parse_args()
    costs = trio.run(_measure, args.sessions)
    least, median = min(costs), statistics.median(costs)
    cost = {"least": round(least, 1), "median": round(median, 1)}
    print(json.dumps({"cpu_us_per_session": cost}))


if __name__ == "__main__":
    main()
