"""Keep CPython's cyclic GC off long-lived objects.

Each collection of the oldest generation traverses every object in it; with
thousands of open sockets that is a pause of many milliseconds, often enough
to dominate the relay's tail latency (BENCHMARKS.md). Objects that have lived
a few seconds (the server's own, and each socket's once it is open) are
moved out of the collector's reach with ``gc.freeze()``: reference counting
still frees them as usual; only garbage *cycles* among frozen objects wait.
Those are reclaimed by a full collection every ``full_collect_interval_s``
(one pause, instead of many).
"""

from __future__ import annotations

import gc
import logging

import trio

log = logging.getLogger(__name__)

FREEZE_INTERVAL_S = 2.0
FULL_COLLECT_INTERVAL_S = 600.0


async def run_gc_tuning(
    *,
    freeze_interval_s: float = FREEZE_INTERVAL_S,
    full_collect_interval_s: float = FULL_COLLECT_INTERVAL_S,
) -> None:
    """Freeze survivors every ``freeze_interval_s``; run until cancelled.

    On cancellation everything is unfrozen again, so the collector sees the
    whole heap once the server is gone.
    """
    gc.freeze()
    last_full = trio.current_time()
    try:
        while True:
            await trio.sleep(freeze_interval_s)
            if trio.current_time() - last_full >= full_collect_interval_s:
                gc.unfreeze()
                found = gc.collect()
                last_full = trio.current_time()
                log.debug("full collection: %d unreachable objects", found)
            gc.freeze()
    finally:
        gc.unfreeze()
