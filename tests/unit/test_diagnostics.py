"""The stall monitor names what held the event loop on the CPU, and tells preemption apart."""

from __future__ import annotations

import gc
import time

import pytest
import trio

from omiro_trio.diagnostics import BatchMonitor, StallMonitor, threshold_from_env

THRESHOLD_S = 0.002


def _burn_cpu(seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


async def hog() -> None:
    _burn_cpu(4 * THRESHOLD_S)
    gc.collect()


def test_stall_monitor_names_the_task_and_the_collection() -> None:
    lines: list[str] = []
    monitor = StallMonitor(THRESHOLD_S, report=lines.append)
    monitor.install()
    try:

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hog)

        trio.run(main, instruments=[monitor])
    finally:
        monitor.uninstall()
    assert monitor.stalls >= 1
    assert any("hog" in line and "on the CPU" in line for line in lines)
    assert monitor.gc_pauses >= 1  # the collection was seen
    assert monitor.summary()["loop_stalls"] == monitor.stalls


def _off_the_cpu(seconds: float) -> None:
    time.sleep(seconds)  # the thread is off the CPU, as when preempted


def test_batch_monitor_counts_time_off_the_cpu_as_preempted() -> None:
    monitor = BatchMonitor(THRESHOLD_S, report=None)

    async def blocked() -> None:
        _off_the_cpu(4 * THRESHOLD_S)

    trio.run(blocked, instruments=[monitor])
    assert monitor.stalls == 0
    assert monitor.preempted >= 1


def test_batch_monitor_times_no_task_steps() -> None:
    # trio calls only the hooks an instrument defines: the generator's
    # monitor must cost nothing per task step.
    assert "before_task_step" not in BatchMonitor.__dict__
    assert "before_task_step" in StallMonitor.__dict__


def test_threshold_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMIRO_DEBUG_STALLS_MS", "2.5")
    assert threshold_from_env() == 0.0025
    for off in ("", "0", "-1", "soon"):
        monkeypatch.setenv("OMIRO_DEBUG_STALLS_MS", off)
        assert threshold_from_env() is None
