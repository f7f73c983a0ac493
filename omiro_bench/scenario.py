"""What a scenario is, and what it is given in each load-generator process.

A run (run.py) starts the server, then ``procs`` generator processes, each
running the scenario's ``generate`` in its own ``trio.run`` with a
``LoadGenerator``: where the server is, this process's share of the load,
and the barrier at which the generators and the parent meet around each
measured phase::

    generator:  start_phase()  ...the phase's load...  end_phase()
    barrier:    1 ready        (parent samples)        2 over  (parent samples)  3 go on

so the parent samples the server's CPU, RSS and ``/stats`` exactly at the
phase's edges, and the generators reuse nothing the parent measured as
theirs. Every scenario's phases are bounded in count and time; everything
stays on 127.0.0.1.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import trio

from omiro_trio.diagnostics import BatchMonitor

OptionsT = TypeVar("OptionsT")
"""A scenario's options: a frozen dataclass of its knobs (``omiro bench <scenario> --help``)."""

Sample = dict[str, float]
"""What the parent measured of the server during one phase."""

Report = dict[str, Any]
"""What a generator returns, and what a scenario's summary makes of them all (JSON)."""

GENERATOR_STALL_S = 0.002
"""A generator's own event-loop stalls longer than this are counted (they add to the
latencies it measures), so that the report tells them apart from the server's."""


@dataclass(frozen=True)
class Scenario(Generic[OptionsT]):
    """One load scenario, the same shape for all.

    Attributes:
        name: what ``omiro bench`` calls it (and the report's ``scenario``).
        generate: one generator process's work: meets the barrier ``phases(options)``
            times (``start_phase``/``end_phase``), returns its report.
        phases: how many measured phases a run has (the most: the parent may end it sooner).
        summarize: the result, from the options, the parent's samples (one a phase)
            and every generator's report.
        after_phase: the parent's look at the samples so far, after each phase;
            True ends the run after this phase (``omiro bench churn --minutes``).

    The generator processes are spawned and receive the scenario itself, so
    every function here is a module-level one (pickled by name).
    """

    name: str
    generate: Callable[[OptionsT, LoadGenerator], Awaitable[Report]]
    phases: Callable[[OptionsT], int]
    summarize: Callable[[OptionsT, list[Sample], list[Report]], Report]
    after_phase: Callable[[OptionsT, list[Sample]], bool] | None = None


class LoadGenerator:
    """One generator process's side of a run.

    Args:
        host, port: the server.
        index: this generator's number, 0 to ``procs - 1``.
        procs: how many generator processes share the load.
        barrier: a ``multiprocessing`` barrier of ``procs + 1`` parties (the parent's too).
        stop: a ``multiprocessing`` event the parent sets when no phase follows.
    """

    def __init__(
        self, host: str, port: int, index: int, procs: int, barrier: Any, stop: Any
    ) -> None:
        self.host, self.port = host, port
        self.index, self.procs = index, procs
        self._barrier = barrier
        self._stop = stop
        self._marks: list[float] = []  # this process's CPU time at each phase's edges
        self._loops: list[dict[str, float]] = []  # its own loop stalls in each phase
        self._monitor = BatchMonitor(GENERATOR_STALL_S, report=None)

    def share(self, total: int) -> int:
        """This process's share of ``total`` (the shares of all processes add up to it)."""
        return total // self.procs + (1 if self.index < total % self.procs else 0)

    def stopped(self) -> bool:
        """Whether the parent ended the run (ask after a phase's ``end_phase``)."""
        return bool(self._stop.is_set())

    async def start_phase(self) -> None:
        """Start of a measured phase, once every generator is ready.

        The cyclic GC is off during the phase (what exists now is frozen out
        of its reach first): a collection over thousands of client objects
        would stall the generator and show up as server latency.
        """
        await trio.to_thread.run_sync(self._barrier.wait)
        gc.collect()
        gc.freeze()
        gc.disable()
        self._monitor.reset()
        self._marks.append(time.process_time())

    async def end_phase(self) -> None:
        """End of a measured phase; returns once the parent has sampled the server."""
        await trio.to_thread.run_sync(self._barrier.wait)
        self._marks.append(time.process_time())
        self._loops.append(self._monitor.summary())
        gc.enable()
        gc.unfreeze()
        await trio.to_thread.run_sync(self._barrier.wait)

    def run(self, scenario: Scenario[OptionsT], options: OptionsT) -> Report:
        """Run ``scenario.generate`` to its end; its report, with this process's own costs.

        Adds ``cpu_s`` (the whole run), ``phase_cpu_s`` and ``phase_loop`` (one
        entry a phase: CPU seconds, and the loop's stalls and collections).
        """
        start = time.process_time()
        self._monitor.install()
        try:
            report = trio.run(scenario.generate, options, self, instruments=[self._monitor])
        finally:
            self._monitor.uninstall()
        report["cpu_s"] = time.process_time() - start
        marks = self._marks
        report["phase_cpu_s"] = [marks[i + 1] - marks[i] for i in range(0, len(marks) - 1, 2)]
        report["phase_loop"] = self._loops
        return report


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
