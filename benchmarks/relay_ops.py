"""A relayed frame alone: what one chat frame costs the core and the hub, both sides.

Two sessions are matched on the memory backend in this process; one sends
chat frames (and, a quarter of them, typing frames) that the other's
outbox takes, with no sockets or WebSocket engine around them: the work
``omiro bench relay`` measures per frame minus the transport (the engine's
parsing and writing). Prints the CPU time a frame costs (µs; the least and
the median of the rounds).

Runs against a build from before the session machine too (whose read loop
hands a relay to ``Hub.relay``), so that both are measured by one script::

    PYTHONPATH=$BUILD python benchmarks/relay_ops.py --frames 20000

Its instruction count does not depend on what else the machine runs: run
it under callgrind at two sizes, as ``session_ops.py`` says.
"""

from __future__ import annotations

import argparse
import json

import trio
from ops_support import attach_and_join, cpu_per_unit, print_costs

from omiro_trio.backends.memory import MemoryBackend
from omiro_trio.hub import Hub, Session
from omiro_trio.metrics import Metrics
from omiro_trio.session_core import TokenBucket

CHAT = json.dumps({"op": "chat", "data": {"message": "hello there, how are you today?"}})
TYPING = json.dumps({"op": "typing", "data": {"typing": True}})


async def _send(hub: Hub, session: Session, frames: int) -> None:
    core = session.core
    clock = trio.current_time
    if hasattr(hub, "perform"):
        perform = hub.perform
        for n in range(frames):
            now = clock()
            effects = core.receive(TYPING if n % 4 == 0 else CHAT, now)
            if effects:
                await perform(session, effects, now)
    else:  # before: its read loop handed a relay to Hub.relay
        relay = hub.relay  # type: ignore[attr-defined]
        for n in range(frames):
            now = clock()
            action = core.receive(TYPING if n % 4 == 0 else CHAT, now)
            await relay(session, action)


async def _measure(frames: int) -> list[float]:
    backend = MemoryBackend(interest_timeout_s=5, rematch_cooldown_s=0, block_ttl_s=60)
    hub = Hub(backend, Metrics())
    sender = await attach_and_join(hub, "a", "10.0.0.1")
    receiver = await attach_and_join(hub, "b", "10.0.0.2")
    assert sender.core.match is not None
    assert receiver.core.match is not None
    # The sender's message budget out of the way, as omiro bench raises it (still taken).
    sender.core._bucket = TokenBucket(1e9, 10**9, trio.current_time())
    return await cpu_per_unit(lambda _: _send(hub, sender, frames), frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20000, help="frames a round")
    args = parser.parse_args()
    print_costs("cpu_us_per_frame", trio.run(_measure, args.frames), 2)


if __name__ == "__main__":
    main()
