"""The connection owns its session's widen timer (``connection._Timers``).

The hub only says which timer the core wants (performing its ``Arm``
effects); the connection's nursery runs it and calls ``Hub.widen`` when it
fires. A fake hub records the calls; trio's ``autojump_clock`` makes the
waits instant and exact.
"""

from __future__ import annotations

import trio
import trio.testing

from omiro_trio.backends.memory import MemoryBackend
from omiro_trio.connection import _Timers
from omiro_trio.hub import Hub, Session
from omiro_trio.matchmaking import Match, Preferences, Waiting
from omiro_trio.metrics import Metrics
from omiro_trio.session_events import Enqueue, Enqueued, MatchFormed, Widen


class FakeHub:
    def __init__(self) -> None:
        self.fired: list[tuple[float, Widen]] = []

    async def widen(self, session: Session, widen: Widen) -> None:
        self.fired.append((trio.current_time(), widen))


async def test_the_wanted_timer_fires_once_and_a_replaced_one_never(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hub = FakeHub()
    session = Session("a", "127.0.0.1")
    async with trio.open_nursery() as nursery:
        timers = _Timers(hub, session, nursery)  # type: ignore[arg-type]
        start = trio.current_time()
        first, second = Widen(1, 10.0), Widen(2, 4.0)
        timers.want(first)
        timers.want(first)  # the same timer again: still one task
        await trio.sleep(1.0)
        timers.want(second)  # replaces the first
        await trio.sleep(20.0)
        assert hub.fired == [(start + 1.0 + 4.0, second)]
        timers.want(Widen(3, 5.0))
        await trio.sleep(1.0)
        timers.want(None)  # cancelled
        await trio.sleep(20.0)
        assert len(hub.fired) == 1
        assert len(nursery.child_tasks) == 0


async def test_a_timer_wanted_while_the_connection_ends_is_not_started() -> None:
    hub = FakeHub()
    session = Session("a", "127.0.0.1")
    async with trio.open_nursery() as nursery:
        timers = _Timers(hub, session, nursery)  # type: ignore[arg-type]
    timers.want(Widen(1, 1.0))  # the nursery is closed: no task, no error
    assert hub.fired == []


async def test_the_hub_arms_the_timer_the_core_asks_for_on_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fake = FakeHub()
    hub = Hub(MemoryBackend(interest_timeout_s=3, rematch_cooldown_s=0, block_ttl_s=60), Metrics())
    session = Session("a", "127.0.0.1")
    hub.attach(session)
    prefs = Preferences("video", ("chess",))

    def waits(ticket: int) -> Enqueued:
        return Enqueued(
            Enqueue(prefs, None, False, session.core.matches_applied), Waiting(ticket, 3.0)
        )

    async with trio.open_nursery() as nursery:
        session.timers = _Timers(fake, session, nursery)  # type: ignore[arg-type]
        hub.tell(session, waits(7))  # the core asks for Widen(7, 3.0)
        await trio.sleep(1.0)
        hub.tell(session, MatchFormed(Match("m1", "a", "b", "video", ())))  # the wait ended
        await trio.sleep(10.0)
        assert fake.fired == []
        assert session.core.widen is None
        hub.tell(session, waits(8))
        again = session.core.widen
        assert again == Widen(8, 3.0)
        # Two wake-ups due at the same instant have no fixed order: look just
        # before and just after the timer's deadline.
        await trio.sleep(2.9)
        assert fake.fired == []
        await trio.sleep(0.2)
        assert [widen for _, widen in fake.fired] == [again]
