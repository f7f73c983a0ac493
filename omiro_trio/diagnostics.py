"""Diagnostic switches, off by default: event-loop stalls and memory snapshots.

**Stalls.**
With ``OMIRO_DEBUG_STALLS_MS=N`` in the environment, ``serve`` installs a
trio instrument that times every scheduler batch (from the end of one I/O
wait to the start of the next: the time every socket waits for its turn)
and every task step within it (CPU time), plus every collection of
CPython's cyclic GC. A batch longer than N ms, of which at least N ms on
the CPU, is logged at WARNING with what ran in it: the slowest task steps
by name, and the GC pauses inside it. A batch that was long on the wall
clock only (the process was preempted by other load on its core) is
counted apart, as ``preempted``. The load
generator uses the same instrument to tell its own stalls from the
server's (``omiro bench``).

Cost when on: two ``thread_time`` calls per task step; when off: nothing.

**Memory.** With ``OMIRO_DEBUG_TRACEMALLOC=DIR``, ``serve`` traces every
allocation (``tracemalloc``, 8 frames deep: memory and time both grow a lot)
and writes a snapshot to ``DIR/omiro-PID-N.tracemalloc`` on each SIGUSR2
(``omiro bench`` sends one before and after each phase). ``top_growth``
compares two of them::

    python -c "from omiro_trio.diagnostics import top_growth; top_growth('a', 'b')"
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
import tracemalloc
from typing import Any, Final

import trio

log = logging.getLogger(__name__)

ENV: Final = "OMIRO_DEBUG_STALLS_MS"
TRACEMALLOC_ENV: Final = "OMIRO_DEBUG_TRACEMALLOC"
TRACEMALLOC_FRAMES: Final = 8
TOP_STEPS: Final = 3


def threshold_from_env() -> float | None:
    """The stall threshold in seconds from ``OMIRO_DEBUG_STALLS_MS``, or None when unset or bad."""
    raw = os.environ.get(ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return None
    return value / 1000 if value > 0 else None


class BatchMonitor(trio.abc.Instrument):
    """Times scheduler batches (wall and CPU) and GC pauses; reports batches above a threshold.

    Task steps are not timed (``StallMonitor`` does): trio calls only the
    hooks an instrument defines, so this one costs two clock reads a round.

    Args:
        threshold_s: a batch longer than this is a stall.
        report: called with a one-line description of each stall; None keeps
            only the counters (``stalls``, ``worst_s``, ``gc_pause_s``).
    """

    def __init__(self, threshold_s: float, report: Any = log.warning) -> None:
        self.threshold_s = threshold_s
        self.report = report
        self._steps: list[tuple[float, str]] = []
        self._gc_in_batch: list[tuple[int, float]] = []
        self._step_start = 0.0
        self._gc_start = 0.0
        self.reset()

    def reset(self) -> None:
        """Zero the counters (for example at the start of a measured phase)."""
        self.stalls = 0
        self.preempted = 0
        self.worst_s = 0.0
        self.batches = 0
        self.gc_pauses = 0
        self.gc_pause_s = 0.0
        self._batch_start = time.perf_counter()
        self._batch_cpu = time.thread_time()

    # -- GC ---------------------------------------------------------------

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        else:
            pause = time.perf_counter() - self._gc_start
            self.gc_pauses += 1
            self.gc_pause_s += pause
            if pause >= self.threshold_s / 4:
                self._gc_in_batch.append((info.get("generation", -1), pause))

    def install(self) -> None:
        """Watch the collector too (call once; ``uninstall`` undoes it)."""
        gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    # -- the scheduler ------------------------------------------------------

    def after_io_wait(self, timeout: float) -> None:
        self._batch_start = time.perf_counter()
        self._batch_cpu = time.thread_time()
        self._steps.clear()
        self._gc_in_batch.clear()

    def before_io_wait(self, timeout: float) -> None:
        took = time.perf_counter() - self._batch_start
        self.batches += 1
        if took < self.threshold_s:
            return
        cpu = time.thread_time() - self._batch_cpu
        if cpu < self.threshold_s:
            # Most of it was spent off the CPU: the process was preempted (other
            # load on the core), not stalled by its own work.
            self.preempted += 1
            return
        self.stalls += 1
        self.worst_s = max(self.worst_s, took)
        if self.report is None:
            return
        steps = sorted(self._steps, reverse=True)[:TOP_STEPS]
        slowest = ", ".join(f"{name} {s * 1000:.1f} ms" for s, name in steps)
        pauses = ", ".join(f"gen{g} {s * 1000:.1f} ms" for g, s in self._gc_in_batch)
        self.report(
            f"loop stall {took * 1000:.1f} ms ({cpu * 1000:.1f} ms on the CPU),"
            f" {len(self._steps)} task steps;"
            f" slowest: {slowest or '-'}; gc: {pauses or '-'}"
        )

    def summary(self) -> dict[str, float]:
        return {
            "loop_batches": self.batches,
            "loop_stalls": self.stalls,
            "loop_preempted": self.preempted,
            "loop_worst_stall_ms": round(self.worst_s * 1000, 3),
            "gc_collections": self.gc_pauses,
            "gc_pause_ms": round(self.gc_pause_s * 1000, 3),
        }


class StallMonitor(BatchMonitor):
    """A ``BatchMonitor`` that also names the slowest task steps of each stall."""

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step_start = time.thread_time()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        took = time.thread_time() - self._step_start
        steps = self._steps
        # Keep the batch's slow steps only (bounded by the batch's length).
        if took >= self.threshold_s / 8 or len(steps) < TOP_STEPS:
            steps.append((took, task.name))
        else:
            steps.append((0.0, ""))  # counted, not named


def install_from_env() -> StallMonitor | None:
    """Install a monitor in the running trio loop when ``OMIRO_DEBUG_STALLS_MS`` asks for one."""
    threshold = threshold_from_env()
    if threshold is None:
        return None
    monitor = StallMonitor(threshold)
    monitor.install()
    trio.lowlevel.add_instrument(monitor)
    log.warning("logging event-loop stalls longer than %.1f ms", threshold * 1000)
    return monitor


async def serve_memory_snapshots() -> None:
    """With ``OMIRO_DEBUG_TRACEMALLOC=DIR``: trace allocations, snapshot on SIGUSR2; else return.

    Runs until cancelled (then tracing stops).
    """
    directory = os.environ.get(TRACEMALLOC_ENV, "")
    if not directory:
        return
    tracemalloc.start(TRACEMALLOC_FRAMES)
    log.warning("tracing allocations; a snapshot to %s on each SIGUSR2", directory)
    try:
        with trio.open_signal_receiver(signal.SIGUSR2) as signals:
            count = 0
            async for _ in signals:
                count += 1
                path = os.path.join(directory, f"omiro-{os.getpid()}-{count}.tracemalloc")
                tracemalloc.take_snapshot().dump(path + ".part")
                os.replace(path + ".part", path)  # whole, or not there at all
                log.warning("memory snapshot %s", path)
    finally:
        tracemalloc.stop()


def top_growth(before: str, after: str, limit: int = 25, key: str = "traceback") -> None:
    """Print where memory grew most between two snapshot files (by ``key``: lineno, traceback)."""
    old = tracemalloc.Snapshot.load(before)
    new = tracemalloc.Snapshot.load(after)
    for stat in new.compare_to(old, key)[:limit]:
        print(f"{stat.size_diff / 1024:10.1f} KiB {stat.count_diff:+8d} blocks")
        for line in stat.traceback.format()[-2 * TRACEMALLOC_FRAMES :]:
            print("    " + line)
