"""The GC tuning task freezes survivors, collects fully now and then, and undoes itself."""

from __future__ import annotations

import gc

import pytest
import trio
import trio.testing

from omiro_trio.gc_tuning import resident_bytes, run_gc_tuning


async def test_gc_tuning_freezes_then_collects_then_unfreezes(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_collect = gc.collect

    def counting_collect(*args: int) -> int:
        calls.append("collect")
        return real_collect(*args)

    monkeypatch.setattr(gc, "collect", counting_collect)
    gc.unfreeze()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_gc_tuning(freeze_interval_s=1, full_collect_interval_s=10))
        await trio.sleep(0.5)
        assert gc.get_freeze_count() > 0  # frozen at start
        survivor = [object() for _ in range(1000)]  # young objects...
        gc.collect(0)
        await trio.sleep(1)
        frozen = gc.get_freeze_count()
        assert frozen >= len(survivor)  # ...frozen at the next tick
        assert calls.count("collect") == 1  # the test's own: the task has not collected yet
        await trio.sleep(10)
        assert calls.count("collect") == 2  # one full collection within the interval
        nursery.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0  # nothing left frozen once it stops


async def test_gc_tuning_collects_early_when_memory_grows(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real_collect = gc.collect
    resident = [100_000_000]

    def counting_collect(*args: int) -> int:
        calls.append("collect")
        return real_collect(*args)

    gc.unfreeze()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: run_gc_tuning(
                freeze_interval_s=1,
                full_collect_interval_s=10_000,
                min_full_interval_s=5,
                growth_ratio=0.25,
                growth_floor_bytes=1_000_000,
                rss=lambda: resident[0],
            )
        )
        await trio.sleep(0.5)
        monkeypatch.setattr(gc, "collect", counting_collect)
        resident[0] += 20_000_000  # grown by a fifth: under the ratio
        await trio.sleep(10)
        assert calls == []  # no full collection, however long
        resident[0] += 10_000_000  # now by more than a quarter
        await trio.sleep(1)
        assert calls == ["collect"]  # long before the interval
        await trio.sleep(3)
        assert calls == ["collect"]  # the baseline moved with it
        nursery.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0


def test_resident_bytes_reads_this_process() -> None:
    resident = resident_bytes()
    assert resident is not None
    assert resident > 1_000_000
