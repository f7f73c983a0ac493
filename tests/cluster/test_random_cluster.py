"""Hundreds of clients spread over two servers sharing one Redis, in a seeded random order.

They join, next, leave, chat, report and vanish; afterwards what every
client received is checked against PROTOCOL.md's matching rules: nobody in
two matches at once, every ``match_found`` answered by the partner naming
them back with the same ``match_id`` and exactly one caller (or, when one
side left or moved on as it formed, the other side told it ended), and every
relayed message from the receiver's current partner only. A monitor checks
the shared state in Redis itself, atomically, while they act: every match
symmetric, nobody matched or waiting without a live session.
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict
from typing import Any

import coredis
import pytest
import trio
from cluster_support import ServeProcess, cluster_env, connect
from redis_support import RedisServer, new_prefix
from support import Client
from trio_websocket import ConnectionClosed, ConnectionRejected

CLIENTS = 200
ACTIONS = 4000
WORKERS = 16
SETTLE_S = 10.0  # two resyncs (5 s, then 1 s), with room for a loaded machine
INTERESTS = ["music", "chess", "films"]
LIMITS = {
    "OMIRO_LIMITS_MESSAGES_PER_SECOND": "100000",
    "OMIRO_LIMITS_MESSAGE_BURST": "100000",
    "OMIRO_LIMITS_NEXTS_PER_MINUTE": "100000",
    "OMIRO_LIMITS_SOCKETS_PER_IP": "100000",
    "OMIRO_LIMITS_SESSIONS_PER_IP_PER_MINUTE": "100000",
    "OMIRO_LIMITS_REPORTS_PER_HOUR": "100000",
    "OMIRO_REPORTS_AUTOBAN_REPORTERS": "1000",
    "OMIRO_SERVER_CONNECTIONS_PER_IP": "100000",
    "OMIRO_MATCHMAKING_INTEREST_TIMEOUT_S": "0.05",
}


class Tracked:
    """A client whose every received frame is logged by a reader task."""

    def __init__(self, client: Client, server: str) -> None:
        self.client = client
        self.server = server
        self.id = client.session_id
        self.log: list[tuple[str, dict[str, Any]]] = []
        self.times: list[float] = []  # when each entry of log arrived
        self.acted: list[float] = []  # when it sent join, next, leave_queue or report
        self.closed = trio.Event()
        self.left = False  # said disconnect, or vanished

    async def read(self) -> None:
        try:
            while True:
                op, data = await self.client.recv(wait_s=120)
                self.log.append((op, data))
                self.times.append(trio.current_time())
        except ConnectionClosed:
            pass
        finally:
            self.closed.set()


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.rule("protocol/matching-rules")
async def test_random_clients_over_two_servers_keep_the_matching_rules(
    redis_server: RedisServer, nursery: trio.Nursery, seed: int
) -> None:
    prefix = new_prefix()
    env = cluster_env(redis_server, prefix, **LIMITS)
    servers = [await trio.to_thread.run_sync(lambda: ServeProcess(env).start()) for _ in range(2)]
    try:
        try:
            await _run(nursery, servers, random.Random(seed), redis_server.url, prefix)
        except BaseException:
            print("SERVER LOG", servers[0].log()[-3000:], servers[1].log()[-3000:])
            raise
        for server in servers:
            assert "Traceback" not in server.log()
    finally:
        for server in servers:
            server.kill()


INVARIANTS = """
local P, bad = ARGV[1], {}
for _, key in ipairs(redis.call('KEYS', P .. 'm:*')) do
  local sid = string.sub(key, #P + 3)
  local m = redis.call('HMGET', key, 'id', 'caller', 'callee')
  local other = m[2] == sid and m[3] or m[2]
  if redis.call('HGET', P .. 'm:' .. other, 'id') ~= m[1] then
    bad[#bad + 1] = sid .. ' is in ' .. m[1] .. ' but ' .. other .. ' is not'
  end
  if redis.call('EXISTS', P .. 's:' .. sid) == 0 then
    bad[#bad + 1] = sid .. ' is matched but gone'
  end
  if redis.call('EXISTS', P .. 'w:' .. sid) == 1 then
    bad[#bad + 1] = sid .. ' is matched and waiting'
  end
end
for _, key in ipairs(redis.call('KEYS', P .. 'w:*')) do
  if redis.call('EXISTS', P .. 's:' .. string.sub(key, #P + 3)) == 0 then
    bad[#bad + 1] = key .. ' waits but is gone'
  end
end
return bad
"""


async def _run(
    nursery: trio.Nursery,
    servers: list[ServeProcess],
    rng: random.Random,
    redis_url: str,
    prefix: str,
) -> None:
    everyone: list[Tracked] = []
    alive: list[Tracked] = []

    async def client_life(
        index: int, *, task_status: trio.TaskStatus[Tracked] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect (again while a loaded Redis answers 503, as a page does), then read."""
        for _ in range(20):
            try:
                async with trio.open_nursery() as own:  # a refusal is raised here
                    tracked = Tracked(await connect(own, servers[index]), "ab"[index])
                    task_status.started(tracked)
                    await tracked.read()
                    own.cancel_scope.cancel()
                return
            except* ConnectionRejected as refused:
                if any(e.status_code != 503 for e in refused.exceptions):  # type: ignore[attr-defined]
                    raise
            await trio.sleep(0.2)  # the service was briefly unavailable
        raise AssertionError("the service stayed unavailable")

    async def new_client() -> None:
        tracked: Tracked = await nursery.start(client_life, rng.randrange(2))
        everyone.append(tracked)
        alive.append(tracked)

    for _ in range(CLIENTS):
        await new_client()

    async def act(who: Tracked, action: str) -> None:
        send = who.client.send
        if action in ("join", "next", "leave_queue", "report"):
            who.acted.append(trio.current_time())
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
                    who.left = True
            await act(who, action)
            if action in ("disconnect", "vanish"):
                await new_client()
            for _ in range(rng.randint(0, 3)):
                await trio.lowlevel.checkpoint()

    violations: list[str] = []
    checks = 0

    async def monitor(done: trio.Event) -> None:
        """Check the shared state itself, atomically, over and over while they act."""
        nonlocal checks
        client = coredis.Redis.from_url(redis_url, stream_timeout=5)
        async with client:
            check = client.register_script(INVARIANTS)
            while not done.is_set():
                found = await check(args=[prefix])
                checks += 1
                violations.extend(v.decode() for v in found)
                if violations:
                    return
                await trio.sleep(0.01)

    done = trio.Event()
    with trio.fail_after(240):
        async with trio.open_nursery() as workers:
            workers.start_soon(monitor, done)
            async with trio.open_nursery() as acting:
                for i in range(WORKERS):
                    acting.start_soon(worker, plan[i::WORKERS])
            done.set()
    assert violations == []
    assert checks > 10

    # Everyone still here leaves politely; the service must end empty.
    end = trio.current_time()
    for tracked in list(alive):
        with contextlib.suppress(ConnectionClosed):
            await tracked.client.send("disconnect")
    with trio.fail_after(60):
        for tracked in everyone:
            await tracked.closed.wait()
        while True:
            stats = [await server.aget("/stats") for server in servers]
            if all(s == (200, {"online": 0, "waiting": 0}) for s in stats):
                break
            await trio.sleep(0.1)

    # What the clients saw.
    sides: dict[str, list[tuple[str, str, bool]]] = defaultdict(list)
    told_ended: set[tuple[str, str]] = set()  # (who, match_id) ended for who
    crossing = relays = 0
    server_of = {t.id: t.server for t in everyone}
    for tracked in everyone:
        # Frames arrive in order, so a relay must come from the partner of the
        # last match_found, with no partner_disconnected since. (What it sent
        # itself is not in step with what it receives, so it is not used.)
        partner = match_id = None
        for op, data in tracked.log:
            if op == "match_found":
                partner, match_id = data["partner"], data["match_id"]
                sides[match_id].append((tracked.id, partner, data["should_call"]))
            elif op == "partner_disconnected":
                told_ended.add((tracked.id, str(match_id)))
                partner = match_id = None
            elif op in ("chat", "ice_candidate"):
                relays += 1
                assert data["from"] == partner, f"{tracked.id} got {op} from a non-partner"
                crossing += server_of[tracked.id] != server_of[data["from"]]
    left = {t.id for t in everyone if t.left}
    by_id = {t.id: t for t in everyone}
    assert len(sides) > 200, "too few matches to mean anything"
    # Each server tends to take its own clients' frames in bursts, so most
    # matches stay on one server; enough cross to mean something.
    cross = sum(1 for seen in sides.values() if len({server_of[w] for w, _, _ in seen}) > 1)
    assert cross > 40, f"only {cross} matches between the servers"
    assert crossing > 5, f"only {crossing} relays between the servers"
    for match_id, seen in sides.items():
        if len(seen) == 1:
            who, partner, _ = seen[0]
            # Across servers a side can end a match it has not heard of yet
            # (its next reaches Redis before the bus brings the match). The
            # side that knew must then have been told it ended, or have moved
            # on itself, or have heard of it too late for a resync to bring
            # it to the other side before the end: never left with a ghost.
            w = by_id[who]
            at = w.times[[d.get("match_id") for _, d in w.log].index(match_id)]
            told = (who, match_id) in told_ended
            acted = any(t >= at for t in w.acted)
            late = end - at < SETTLE_S
            assert told or acted or late or who in left, f"{match_id}: {who} matched with a ghost"
            continue
        assert len(seen) == 2, f"{match_id} seen {len(seen)} times"
        (a, a_partner, a_calls), (b, b_partner, b_calls) = seen
        assert (a_partner, b_partner) == (b, a)
        assert a_calls != b_calls, f"{match_id} needs exactly one caller"
