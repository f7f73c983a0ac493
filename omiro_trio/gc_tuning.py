"""Keep CPython's cyclic GC off long-lived objects, and reclaim cycles only when they add up.

Each collection of the oldest generation traverses every object in it; with
thousands of open sockets that is a pause of many milliseconds, often enough
to dominate the relay's tail latency (BENCHMARKS.md). Objects that have lived
a few seconds (the server's own, and each socket's once it is open) are
moved out of the collector's reach with ``gc.freeze()``: reference counting
still frees them as usual; only garbage *cycles* among frozen objects wait.

Before each freeze the two young generations are collected, so that
cycles which died young (one closure cycle per HTTP request in the routing
library, for example) are freed then and not frozen. That pass costs in
proportion to the few objects allocated since the last automatic young
collection, not to the heap.

A closed WebSocket connection leaves no cycle (the engine breaks them at
close; ``tests/integration/test_memory.py``), so what waits among frozen
objects is only what other code leaves in objects that were still alive
when frozen. A full collection (a pause in proportion to the whole heap:
half a second with 6,000 sockets open on a busy core) reclaims it; the
policy keeps those pauses rare and bounded both ways:

* a full collection runs when the process's resident memory has grown by
  more than ``growth_ratio`` of what it was after the last one (and at
  least ``growth_floor_bytes``), not counting ``bytes_per_member`` for each
  member that ``population`` (the open sockets) has gained meanwhile —
  more sockets is not garbage — and not more often than every
  ``min_full_interval_s``: memory held by waiting cycles stays within a
  fixed share of the footprint;
* and in any case every ``full_collect_interval_s``.

Resident memory is read from ``/proc/self/statm`` (constant time; counting
frozen objects with ``gc.get_freeze_count`` walks all of them, itself a
pause of milliseconds). Where it cannot be read only the interval applies.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)

FREEZE_INTERVAL_S = 2.0
FULL_COLLECT_INTERVAL_S = 600.0
MIN_FULL_INTERVAL_S = 60.0
GROWTH_RATIO = 0.25
GROWTH_FLOOR_BYTES = 32 * 1024 * 1024
BYTES_PER_MEMBER = 64 * 1024  # generous: an idle socket holds about 20 KiB
# Collected before each freeze: generations 0 and 1 only. Collecting the
# unfrozen part of generation 2 as well cost 25 ms of CPU every 2 s while
# relaying 4,000 frames/s on a busy core (BENCHMARKS.md).
YOUNG_GENERATION = 1


def resident_bytes() -> int | None:
    """This process's resident memory, or None where it cannot be read cheaply."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


async def run_gc_tuning(
    *,
    freeze_interval_s: float = FREEZE_INTERVAL_S,
    full_collect_interval_s: float = FULL_COLLECT_INTERVAL_S,
    min_full_interval_s: float = MIN_FULL_INTERVAL_S,
    growth_ratio: float = GROWTH_RATIO,
    growth_floor_bytes: int = GROWTH_FLOOR_BYTES,
    rss: Callable[[], int | None] = resident_bytes,
    population: Callable[[], int] = lambda: 0,
    bytes_per_member: int = BYTES_PER_MEMBER,
) -> None:
    """Freeze survivors every ``freeze_interval_s``; collect fully by the policy above.

    ``population`` counts what is expected to hold memory while alive (the
    open sockets); its growth does not count towards a full collection.

    Runs until cancelled; on cancellation everything is unfrozen again, so
    the collector sees the whole heap once the server is gone.
    """
    gc.freeze()
    baseline = rss()
    members = population()
    last_full = trio.current_time()
    try:
        while True:
            await trio.sleep(freeze_interval_s)
            since = trio.current_time() - last_full
            now_rss = rss()
            grown = 0 if now_rss is None or baseline is None else now_rss - baseline
            grown -= max(0, population() - members) * bytes_per_member
            limit = max(growth_floor_bytes, (baseline or 0) * growth_ratio)
            if since >= full_collect_interval_s or (since >= min_full_interval_s and grown > limit):
                gc.unfreeze()
                found = gc.collect()
                last_full = trio.current_time()
                gc.freeze()
                baseline = rss()
                members = population()
                log.debug("full collection: %d unreachable objects (%d bytes grown)", found, grown)
            else:
                gc.collect(YOUNG_GENERATION)
                gc.freeze()
    finally:
        gc.unfreeze()
