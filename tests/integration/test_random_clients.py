"""Hundreds of clients join, next, leave, chat and vanish in a seeded random order.

While they do, a monitor checks the server's own state at every scheduling
point; afterwards, what every client received is checked against PROTOCOL.md
"Matching rules": nobody in two matches, no match with a gone session, every
``match_found`` answered by the partner's own naming them back with the same
``match_id`` and exactly one caller, and every relayed message from the
receiver's current partner only.
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from typing import Any

import pytest
import trio
from support import Client, Harness, StartServer, wait_until
from trio_websocket import ConnectionClosed

from omiro_trio.backends.memory import MemoryBackend

CLIENTS = 220
ACTIONS = 2500
WORKERS = 16
INTERESTS = ["music", "chess", "films"]


class Tracked:
    """A client whose every received frame is logged by a reader task."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.id = client.session_id
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.closed = trio.Event()
        self.vanished = False  # dropped without a close handshake
        self.leaving = False

    async def read(self) -> None:
        try:
            while True:
                self.log.append(await self.client.recv(wait_s=120))
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()


def check_server_invariants(server: Harness) -> None:
    backend = server.ctx.backend
    assert isinstance(backend, MemoryBackend)
    mm = backend.matchmaker
    sessions = server.ctx.hub.sessions
    for session_id, session in sessions.items():
        match = mm.match_of(session_id)
        if match is not None:
            partner = match.partner_of(session_id)
            assert partner != session_id
            assert mm.match_of(partner) is match, "match is not symmetric"
            assert partner in sessions, "matched with a session that is gone"
            assert mm.state_of(session_id) == "matched"
        local = session.match
        backend_id = None if match is None else match.match_id
        if local is not None and session.core.awaits_partner(local.match_id):
            # Its partner's socket broke: the match is kept here, for the partner's
            # ticket, and ended in the shared state (protocol.md, "Resuming a match").
            assert backend_id is None, "a match kept for an away partner is still shared"
            continue
        assert (None if local is None else local.match_id) == backend_id, "hub and backend disagree"
    for session_id in mm.waiting_ids():
        assert session_id in sessions, "a gone session is still waiting"


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.rule("protocol/matching-rules")
async def test_random_clients_keep_matching_invariants(
    start_server: StartServer, nursery: trio.Nursery, seed: int
) -> None:
    server = await start_server(
        matchmaking__interest_timeout_s=0.05,
        limits__messages_per_second=100000,
        limits__message_burst=100000,
        limits__nexts_per_minute=100000,
        limits__sockets_per_ip=100000,
        limits__sessions_per_ip_per_minute=100000,
        server__connections_per_ip=100000,
    )
    rng = random.Random(seed)
    everyone: list[Tracked] = []
    alive: list[Tracked] = []

    async def new_client() -> Tracked:
        tracked = Tracked(await server.connect())
        nursery.start_soon(tracked.read)
        everyone.append(tracked)
        alive.append(tracked)
        return tracked

    for _ in range(CLIENTS):
        await new_client()

    violations: list[str] = []
    monitor_done = trio.Event()

    async def monitor() -> None:
        try:
            while not monitor_done.is_set():
                try:
                    check_server_invariants(server)
                except AssertionError as exc:
                    violations.append(str(exc))
                    return
                await trio.lowlevel.checkpoint()
        finally:
            monitor_done.set()

    nursery.start_soon(monitor)

    async def act(who: Tracked, action: str) -> None:
        send = who.client.send
        try:
            if action == "join":
                mode = rng.choice(["video", "video", "text"])
                interests = rng.sample(INTERESTS, rng.randint(0, 2))
                await send("join_queue", {"mode": mode, "interests": interests})
            elif action in ("next", "leave_queue"):
                await send(action)
            elif action == "chat":
                await send("chat", {"message": f"hi from {who.id}"})
            elif action == "ice":
                await send("ice_candidate", {"candidate": None})
            elif action == "report":
                await send("report", {"reason": "random"})
            elif action == "disconnect":
                await send("disconnect")
            elif action == "vanish":
                who.vanished = True
                await who.client.ws._stream.aclose()
        except ConnectionClosed:
            pass

    actions = (
        ["join"] * 30
        + ["next"] * 20
        + ["chat"] * 20
        + ["ice"] * 5
        + ["leave_queue"] * 8
        + ["report"] * 2
        + ["disconnect"] * 3
        + ["vanish"] * 2
    )
    plan = [rng.choice(actions) for _ in range(ACTIONS)]
    lock = trio.Lock()

    async def worker(share: list[str]) -> None:
        for action in share:
            async with lock:  # pick a client and mark it atomically
                who = rng.choice(alive)
                if action in ("disconnect", "vanish"):
                    alive.remove(who)
                    who.leaving = True
            await act(who, action)
            if action in ("disconnect", "vanish"):
                await new_client()
            for _ in range(rng.randint(0, 3)):
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as workers:
        for i in range(WORKERS):
            workers.start_soon(worker, plan[i::WORKERS])

    # Everyone still here leaves politely; the server must end empty.
    for tracked in list(alive):
        with contextlib.suppress(ConnectionClosed):
            await tracked.client.send("disconnect")
    with trio.fail_after(30):
        for tracked in everyone:
            if not tracked.vanished:
                await tracked.closed.wait()
    await wait_until(lambda: not server.ctx.hub.sessions, wait_s=10)
    monitor_done.set()
    assert violations == []
    stats = await server.ctx.backend.stats()
    assert (stats.online, stats.waiting) == (0, 0)
    backend = server.ctx.backend
    assert isinstance(backend, MemoryBackend)
    assert backend.matchmaker.matched_count() == 0

    # What the clients saw.
    sides: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
    relays = 0
    for tracked in everyone:
        partner = None
        for op, data in tracked.log:
            if op == "match_found":
                partner = data["partner"]
                sides[data["match_id"]].append((tracked.id, data["partner"], data["should_call"]))
            elif op == "partner_disconnected":
                partner = None
            elif op in ("chat", "ice_candidate"):
                relays += 1
                assert data["from"] == partner, f"{tracked.id} got {op} from a non-partner"
    vanished = {t.id for t in everyone if t.vanished}
    assert len(sides) > 300, "too few matches to mean anything"
    assert relays > 100
    for match_id, seen in sides.items():
        ids = {who for who, _, _ in seen}
        if len(seen) == 1:
            who, partner, _ = seen[0]
            assert partner in vanished or who in vanished, f"{match_id} one-sided"
            continue
        assert len(seen) == 2, f"{match_id} seen {len(seen)} times"
        (a, a_partner, a_calls), (b, b_partner, b_calls) = seen
        assert (a_partner, b_partner) == (b, a)
        assert len(ids) == 2
        assert a_calls != b_calls, f"{match_id} needs exactly one caller"
