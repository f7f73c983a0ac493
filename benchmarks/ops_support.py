"""What ``session_ops.py`` and ``relay_ops.py`` share: a session attached to a hub in this
process, with stand-ins for its socket and timers, joined as its read loop would join it.

Works with a build from before the session machine too (run the scripts with
``PYTHONPATH=$BUILD``): there the read loop handed a join to ``Hub.join``.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from omiro_trio.hub import Hub, Session
from omiro_trio.session_core import SessionCore

JOIN = json.dumps({"op": "join_queue", "data": {}})
ROUNDS = 7  # measured, after one round to warm up


class _Outlet:
    """A socket's outbox that takes every frame."""

    def push(self, payload: bytes) -> bool:
        return True


class _Timers:
    """A connection's timers that never fire."""

    def want(self, widen: object) -> None:
        pass

    def watch(self, after_s: float | None) -> None:
        pass


async def attach_and_join(hub: Hub, session_id: str, ip: str) -> Session:
    """Attach a new session to ``hub`` and have it send ``join_queue``."""
    core = SessionCore(session_id, trio.current_time())
    session = Session(session_id, ip, outlet=_Outlet(), core=core)
    session.timers = _Timers()  # type: ignore[assignment]  # (a stand-in)
    hub.attach(session)
    now = trio.current_time()
    if hasattr(hub, "perform"):
        await hub.perform(session, core.receive(JOIN, now), now)
    else:  # before the session machine: the join as its read loop made it
        action: Any = core.receive(JOIN, now)
        await hub.join(session, action.prefs, ended_reason="next")
    return session


async def cpu_per_unit(run: Callable[[int], Awaitable[None]], units: int) -> list[float]:
    """The CPU µs a unit of ``run(n)`` costs (``units`` a round), round by round.

    One round (``n`` = 0) warms up; then ``ROUNDS`` (``n`` = 1, 2 …) are
    measured with the cyclic collector off.
    """
    await run(0)
    gc.collect()
    gc.disable()
    costs = []
    try:
        for n in range(1, ROUNDS + 1):
            started = time.process_time()
            await run(n)
            costs.append((time.process_time() - started) / units * 1e6)
    finally:
        gc.enable()
    return costs


def print_costs(name: str, costs: list[float], digits: int) -> None:
    """Print the least and the median of ``costs`` as one JSON object named ``name``."""
    least, median = min(costs), statistics.median(costs)
    print(json.dumps({name: {"least": round(least, digits), "median": round(median, digits)}}))
