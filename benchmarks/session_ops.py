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

import trio
from ops_support import attach_and_join, cpu_per_unit, print_costs

from omiro_trio.backends.memory import MemoryBackend
from omiro_trio.hub import Hub
from omiro_trio.metrics import Metrics


async def _round(hub: Hub, sessions: int, first: int) -> None:
    attached = []
    for n in range(first, first + sessions):
        ip = f"10.0.{n // 250 % 250}.{n % 250}"
        attached.append(await attach_and_join(hub, f"s{n}", ip))
    for session in attached:
        await hub.detach(session)


async def _measure(sessions: int) -> list[float]:
    backend = MemoryBackend(interest_timeout_s=5, rematch_cooldown_s=0, block_ttl_s=60)
    hub = Hub(backend, Metrics())
    return await cpu_per_unit(lambda n: _round(hub, sessions, n * sessions), sessions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=4000, help="sessions a round")
    args = parser.parse_args()
    print_costs("cpu_us_per_session", trio.run(_measure, args.sessions), 1)


if __name__ == "__main__":
    main()
