"""The hub's order of telling: the partner's server hears of a match first.

A match formed on this server for a session whose partner is on another
server is announced to the partner's server before this session's client
gets ``match_found``: the client (the caller, when its interest timeout
formed the match) sends its offer at once, and that first relayed frame
must find the match known on the other side. A fake backend (the memory
backend with another server's session as the partner) records when the
partner's server is told.
"""

from __future__ import annotations

from typing import Any

from omiro_trio.backends.memory import MemoryBackend
from omiro_trio.hub import Hub, Session
from omiro_trio.matchmaking import Match, Preferences, Waiting
from omiro_trio.metrics import Metrics
from omiro_trio.session_events import Enqueue, Enqueued, Widen


class Outlet:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def push(self, payload: bytes) -> bool:
        self.frames.append(payload)
        return True

    def ops(self) -> list[str]:
        return [frame.split(b'"op":"', 1)[1].split(b'"', 1)[0].decode() for frame in self.frames]


class RemotePartner(MemoryBackend):
    """Widening forms a match with ``y``, a session held by another server."""

    def __init__(self, outlet: Outlet) -> None:
        super().__init__(interest_timeout_s=5, rematch_cooldown_s=30, block_ttl_s=60)
        self.outlet = outlet
        self.told: list[tuple[str, list[str]]] = []  # (to, what x had been sent by then)

    async def widen(self, session_id: str, ticket: int) -> Match | None:
        return Match("m1", session_id, "y", "video", ())

    async def publish(self, session_id: str, message: bytes, *args: Any, **kwargs: Any) -> Any:
        self.told.append((session_id, self.outlet.ops()))
        return True


async def test_a_match_formed_by_widening_reaches_the_partners_server_first() -> None:
    outlet = Outlet()
    backend = RemotePartner(outlet)
    hub = Hub(backend, Metrics())
    x = Session("x", "192.0.2.1", outlet=outlet)
    hub.attach(x)
    waiting = Enqueue(Preferences("video", ("chess",)), None, announce=False, seen=0)
    x.core.handle(Enqueued(waiting, Waiting(1, 5.0)), 0.0)
    widen = x.core.widen
    assert widen == Widen(1, 5.0)
    await hub.widen(x, widen)
    assert outlet.ops() == ["match_found"]
    assert backend.told == [("y", [])], "match_found went out before the partner's server knew"
