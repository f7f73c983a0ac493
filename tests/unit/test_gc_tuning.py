"""The GC tuning task freezes survivors, collects fully now and then, and undoes itself."""

from __future__ import annotations

import gc
import weakref

import pytest
import trio
import trio.testing

from omiro_trio.gc_tuning import resident_bytes, run_gc_tuning


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _count_full_collections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A full collection unfreezes first; young ones do not."""
    calls: list[str] = []
    real_unfreeze = gc.unfreeze

    def counting_unfreeze() -> None:
        calls.append("full")
        real_unfreeze()

    monkeypatch.setattr(gc, "unfreeze", counting_unfreeze)
    return calls


async def test_gc_tuning_freezes_then_collects_then_unfreezes(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    gc.unfreeze()
    calls = _count_full_collections(monkeypatch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_gc_tuning(freeze_interval_s=1, full_collect_interval_s=10))
        await trio.sleep(0.5)
        assert gc.get_freeze_count() > 0  # frozen at start
        survivor = [object() for _ in range(1000)]  # young objects...
        gc.collect(0)
        await trio.sleep(1)
        frozen = gc.get_freeze_count()
        assert frozen >= len(survivor)  # ...frozen at the next tick
        assert calls == []  # no full collection yet
        await trio.sleep(10)
        assert calls == ["full"]  # one full collection within the interval
        nursery.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0  # nothing left frozen once it stops


async def test_gc_tuning_frees_young_cycles_instead_of_freezing_them(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gc.unfreeze()
    gc.disable()  # only the task collects
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_gc_tuning(freeze_interval_s=1))
            await trio.sleep(0.5)
            garbage = weakref.ref(_Cycle())  # unreachable at once, but a cycle
            kept = _Cycle()
            assert garbage() is not None
            await trio.sleep(1)
            assert garbage() is None  # collected before the freeze
            assert gc.get_freeze_count() > 0
            assert kept.me is kept
            nursery.cancel_scope.cancel()
    finally:
        gc.enable()


async def test_gc_tuning_collects_early_when_memory_grows(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    resident = [100_000_000]
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
        calls = _count_full_collections(monkeypatch)
        resident[0] += 20_000_000  # grown by a fifth: under the ratio
        await trio.sleep(10)
        assert calls == []  # no full collection, however long
        resident[0] += 10_000_000  # now by more than a quarter
        await trio.sleep(1)
        assert calls == ["full"]  # long before the interval
        await trio.sleep(3)
        assert calls == ["full"]  # the baseline moved with it
        nursery.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0


async def test_gc_tuning_does_not_count_growth_from_more_sockets(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    resident = [100_000_000]
    sockets = [0]
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
                population=lambda: sockets[0],
                bytes_per_member=10_000,
            )
        )
        await trio.sleep(0.5)
        calls = _count_full_collections(monkeypatch)
        sockets[0] += 5_000
        resident[0] += 50_000_000  # half again, all of it the new sockets' share
        await trio.sleep(10)
        assert calls == []
        resident[0] += 30_000_000  # more than a quarter beyond what they explain
        await trio.sleep(1)
        assert calls == ["full"]
        nursery.cancel_scope.cancel()
    assert gc.get_freeze_count() == 0


def test_resident_bytes_reads_this_process() -> None:
    resident = resident_bytes()
    assert resident is not None
    assert resident > 1_000_000
