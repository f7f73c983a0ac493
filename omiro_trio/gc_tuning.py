"""Keep CPython's cyclic GC off long-lived objects, and reclaim cycles only when they add up.

Each collection of the oldest generation traverses every object in it; with
thousands of open sockets that is a pause of many milliseconds, often enough
to dominate the relay's tail latency (BENCHMARKS.md). Objects that have lived
a few seconds (the server's own, and each socket's once it is open) are
moved out of the collector's reach with ``gc.freeze()``: reference counting
still frees them as usual; only garbage *cycles* among frozen objects wait.

A closed WebSocket connection leaves no cycle (the engine breaks them at
close; ``tests/integration/test_memory.py``), so what waits is only what
other code leaves (for example, one closure cycle per HTTP request in the
routing library). The reclaim policy is bounded both ways:

* a full collection runs when the frozen heap has grown by more than
  ``growth_ratio`` of its size after the last one (and at least
  ``growth_floor`` objects), but not more often than every
  ``min_full_interval_s``: memory held by waiting cycles stays within a
  fixed share of the live heap, and pauses stay rare;
* and in any case every ``full_collect_interval_s``.
"""

from __future__ import annotations

import gc
import logging

import trio

log = logging.getLogger(__name__)

FREEZE_INTERVAL_S = 2.0
FULL_COLLECT_INTERVAL_S = 600.0
MIN_FULL_INTERVAL_S = 60.0
GROWTH_RATIO = 0.25
GROWTH_FLOOR = 200_000  # objects: about 20-40 MB of small objects


async def run_gc_tuning(
    *,
    freeze_interval_s: float = FREEZE_INTERVAL_S,
    full_collect_interval_s: float = FULL_COLLECT_INTERVAL_S,
    min_full_interval_s: float = MIN_FULL_INTERVAL_S,
    growth_ratio: float = GROWTH_RATIO,
    growth_floor: int = GROWTH_FLOOR,
) -> None:
    """Freeze survivors every ``freeze_interval_s``; collect fully by the policy above.

    Runs until cancelled; on cancellation everything is unfrozen again, so
    the collector sees the whole heap once the server is gone.
    """
    gc.freeze()
    baseline = gc.get_freeze_count()
    last_full = trio.current_time()
    try:
        while True:
            await trio.sleep(freeze_interval_s)
            since = trio.current_time() - last_full
            grown = gc.get_freeze_count() - baseline
            if since >= full_collect_interval_s or (
                since >= min_full_interval_s and grown > max(growth_floor, baseline * growth_ratio)
            ):
                gc.unfreeze()
                found = gc.collect()
                last_full = trio.current_time()
                gc.freeze()
                baseline = gc.get_freeze_count()
                log.debug("full collection: %d unreachable objects (%d grown)", found, grown)
            else:
                gc.freeze()
    finally:
        gc.unfreeze()
