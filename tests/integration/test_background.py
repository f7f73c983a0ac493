"""Background tasks (janitor, bus listener): a failure is logged and retried, never fatal.

Fakes stand in for the backend here (a unit test of the supervision loops);
time is trio's ``autojump_clock``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import pytest
import trio
import trio.testing

from omiro_trio.backends.base import BusHandler, LocalView
from omiro_trio.metrics import Metrics
from omiro_trio.server import JANITOR_INTERVAL_S, _janitor, _run_bus


class FlakyBackend:
    """Fails its first ``failures`` sweeps and bus listeners, then works."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sweeps = 0
        self.listeners = 0
        self.handler: BusHandler | None = None

    async def sweep(self) -> None:
        self.sweeps += 1
        if self.sweeps <= self.failures:
            raise RuntimeError("sweep failed")

    async def run_bus(
        self,
        handler: BusHandler,
        *,
        on_gap: Callable[[], None] | None = None,
        views: Callable[[], Sequence[LocalView]] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.listeners += 1
        if self.listeners <= self.failures:
            raise ConnectionError("bus down")
        self.handler = handler
        task_status.started()
        await trio.sleep_forever()


class BrokenHub:
    async def on_bus(self, raw: bytes) -> None:
        raise ValueError(f"cannot apply {raw!r}")

    def request_sync(self) -> None:
        pass

    def local_views(self) -> list[LocalView]:
        return []


async def test_janitor_logs_a_failed_sweep_and_sweeps_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FlakyBackend(failures=2)
    metrics = Metrics()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_janitor, backend, metrics)
        await trio.sleep(JANITOR_INTERVAL_S * 4 + 1)
        nursery.cancel_scope.cancel()
    assert backend.sweeps == 5  # one at once, then one each interval
    value = metrics.registry.get_sample_value(
        "omiro_background_failures_total", {"task": "janitor"}
    )
    assert value == 2
    assert len([r for r in caplog.records if r.exc_info]) == 2


async def test_bus_listener_restarts_and_a_bad_message_is_dropped(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    backend = FlakyBackend(failures=3)
    metrics = Metrics()
    with caplog.at_level(logging.ERROR):
        async with trio.open_nursery() as nursery:
            with trio.fail_after(60):
                await nursery.start(_run_bus, backend, BrokenHub(), metrics)
            assert backend.listeners == 4
            assert backend.handler is not None
            await backend.handler(b"garbage")  # logged and dropped, listener stays
            await trio.sleep(10)
            assert backend.listeners == 4
            nursery.cancel_scope.cancel()
    sample = metrics.registry.get_sample_value
    assert sample("omiro_background_failures_total", {"task": "bus"}) == 3
    assert sample("omiro_background_failures_total", {"task": "bus_message"}) == 1
    assert "cannot apply" in caplog.text
