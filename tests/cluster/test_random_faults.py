"""Thousands of matches over three servers while Redis and a server fail under them.

A crowd of clients joins, skips, leaves, chats, reports and vanishes at
random on three real ``omiro serve`` processes sharing one Redis (behind a
TCP proxy the test controls), with the default timers, while the test
breaks things in turn: Redis frozen past ``dead_after_s``, Redis restarted
empty, server C frozen past its sweep and resumed, Redis black-holed (a
fresh one behind the address), server C killed and a new one started.
Three steady pairs (on A and B only: never on a server that fails) chat all
along.

Then the bar of docs/operations.md ("Faults") is checked over everything
the clients received:

* no steady pair was ever ended, nor told it has no partner;
* every match is seen by both sides naming each other with one caller, or
  its one side was told it ended, moved on itself, left, was near the end,
  or one side's server failed;
* a client is relayed to only by its current partner (never after it was
  told its match ended);
* no match is formed with a session already gone (it disconnected, or its
  server was killed) — a frozen server's users may be, until its sweep;
* afterwards the service empties and Redis's own records agree.

``OMIRO_TEST_FAULT_RUN_S`` makes the run longer (the faults repeat);
the default keeps it near a minute.
"""

from __future__ import annotations

import math
import os
import random
import signal
from collections import defaultdict
from contextlib import suppress
from pathlib import Path

import trio
from cluster_support import (
    DEAD_AFTER_S,
    DEATH_BOUND_S,
    HEARTBEAT_S,
    RECOVERY_BOUND_S,
    TIMEOUT_S,
    BlackHole,
    ServeProcess,
    Watched,
    assert_never_ended,
    chats_again,
    chatter,
    cluster_env,
    connect,
    shared_state_faults,
    watched_pair,
)
from redis_support import RedisServer, free_port, new_prefix
from trio_websocket import ConnectionClosed, ConnectionRejected, HandshakeError

RUN_S = float(os.environ.get("OMIRO_TEST_FAULT_RUN_S", "62"))
CROWD = 48
SETTLE_S = 12.0  # a resync period twice over, and a sweep
GONE_GRACE_S = 1.5  # a socket's end reaches the backend within this
CALL_S = 3 * TIMEOUT_S + 1.0  # the most one call to Redis waits
OUTAGE_GRACE_S = CALL_S + GONE_GRACE_S  # ...or a call's bound after Redis is back for a server
PUT_BACK_S = HEARTBEAT_S + CALL_S  # a server has put its state back in a new Redis within this
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
    "OMIRO_MATCHMAKING_INTEREST_TIMEOUT_S": "0.2",
}


class Member:
    """One crowd client: its frames, when it acted, when it left."""

    def __init__(self, watched: Watched, server: str) -> None:
        self.watched = watched
        self.id = watched.id
        self.server = server
        self.acted: list[float] = []  # join, next, leave_queue, report
        self.gone_at = math.inf  # sent disconnect, or vanished


class Cluster:
    """The servers and Redis of the run, and when each of them failed."""

    def __init__(self, env: dict[str, str], redis: RedisServer, proxy: BlackHole) -> None:
        self.env = env
        self.redis = redis
        self.proxy = proxy
        self.servers: dict[str, ServeProcess] = {}
        self.frozen: set[str] = set()
        self.killed: set[str] = set()
        self.faults: dict[str, list[tuple[float, float]]] = defaultdict(list)  # server -> spans
        self.frozen_spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.redis_away: list[tuple[float, float]] = []  # Redis frozen, restarted, replaced
        self.killed_at: dict[str, float] = {}
        self.extra_redis: list[RedisServer] = []
        self.log: list[str] = []
        self.c_name = "c"

    async def start(self, name: str) -> None:
        server = ServeProcess(self.env)
        await trio.to_thread.run_sync(server.start)
        self.servers[name] = server

    def usable(self) -> list[str]:
        return [n for n in self.servers if n not in self.frozen and n not in self.killed]

    async def inject(self, end: float) -> None:
        """The faults, in turn, until ``end``."""
        cycle = 0
        while trio.current_time() + 50 < end or cycle == 0:
            cycle += 1
            await trio.sleep(4)
            self.log.append(f"{trio.current_time():.1f} freeze redis")
            self.redis.pause()
            start = trio.current_time()
            await trio.sleep(DEAD_AFTER_S + 2 * HEARTBEAT_S)
            self.redis.resume()
            self.redis_away.append((start, trio.current_time()))
            await trio.sleep(6)
            self.log.append(f"{trio.current_time():.1f} restart redis empty")
            start = trio.current_time()
            self.redis.stop()
            await trio.sleep(0.5)
            await trio.to_thread.run_sync(self.redis.start)
            # Away for a server until it has put its state back (docs: H + C).
            self.redis_away.append((start, trio.current_time() + PUT_BACK_S))
            await trio.sleep(8)
            victim = self.c_name
            self.log.append(f"{trio.current_time():.1f} freeze {victim}")
            start = trio.current_time()
            self.frozen.add(victim)
            self.servers[victim].signal(signal.SIGSTOP)
            await trio.sleep(DEATH_BOUND_S)
            self.servers[victim].signal(signal.SIGCONT)
            self.faults[victim].append((start, trio.current_time() + SETTLE_S))
            self.frozen_spans[victim].append((start, trio.current_time() + SETTLE_S))
            self.frozen.discard(victim)
            await trio.sleep(6)
            self.log.append(f"{trio.current_time():.1f} black hole redis")
            fresh = RedisServer(free_port())
            await trio.to_thread.run_sync(fresh.start)
            self.extra_redis.append(fresh)
            self.proxy.swallow(fresh.port)
            self.redis = fresh
            self.redis_away.append((trio.current_time(), trio.current_time() + PUT_BACK_S))
            await trio.sleep(8)
            self.log.append(f"{trio.current_time():.1f} kill {victim}")
            self.faults[victim].append((trio.current_time(), math.inf))
            self.killed_at[victim] = trio.current_time()
            self.killed.add(victim)
            self.servers[victim].kill()
            self.c_name = f"c{cycle}"
            await self.start(self.c_name)
            await trio.sleep(6)


async def test_random_clients_keep_the_rules_while_redis_and_a_server_fail(
    nursery: trio.Nursery,
) -> None:
    first = RedisServer(free_port())
    first.start()
    proxy = BlackHole(first.port)
    cluster: Cluster | None = None
    try:
        await nursery.start(proxy.run)
        prefix = new_prefix()
        env = cluster_env(first, prefix, OMIRO_REDIS_URL=proxy.url, **LIMITS)
        cluster = Cluster(env, first, proxy)
        for name in ("a", "b", "c"):
            await cluster.start(name)
        try:
            await _run(nursery, cluster, random.Random(17))
            assert await shared_state_faults(cluster.redis.url, prefix) == []
        except BaseException:
            print("FAULTS", cluster.log)
            keep = os.environ.get("OMIRO_TEST_LOG_DIR")  # for looking into a failure
            for name, server in cluster.servers.items():
                print("LOG", name, server.log()[-3000:])
                if keep:
                    (Path(keep) / f"random-faults-{name}.log").write_text(server.log())
            raise
        for name, server in cluster.servers.items():
            log = server.log()
            at = log.find("Traceback")
            assert at < 0, f"{name}: {log[max(0, at - 300) : at + 1500]}"
    finally:
        if cluster is not None:
            for server in cluster.servers.values():
                with suppress(Exception):
                    server.signal(signal.SIGCONT)
                server.kill()
            for extra in cluster.extra_redis:
                extra.stop()
        first.stop()


async def _run(nursery: trio.Nursery, cluster: Cluster, rng: random.Random) -> None:
    servers = cluster.servers
    steady = [
        await watched_pair(nursery, servers["a"], servers["a"]),
        await watched_pair(nursery, servers["a"], servers["b"]),
        await watched_pair(nursery, servers["b"], servers["b"]),
    ]
    everyone: list[Member] = []
    by_id: dict[str, Member] = {}
    done = trio.Event()
    end = trio.current_time() + RUN_S

    async def crowd_seat() -> None:
        """One seat of the crowd: a client acting until it leaves, then the next one."""
        while not done.is_set():
            name = rng.choice(cluster.usable())
            try:
                # Its own nursery: a refused handshake is raised there.
                async with trio.open_nursery() as own:
                    with trio.fail_after(5):
                        client = await connect(own, servers[name])
                    watched = Watched(client, name)
                    own.start_soon(watched._read)
                    member = Member(watched, name)
                    everyone.append(member)
                    by_id[member.id] = member
                    await act(member, done)
                    await watched.closed.wait()  # (at the end, everyone says disconnect)
            except* (ConnectionRejected, HandshakeError, OSError, trio.TooSlowError):
                await trio.sleep(0.5)  # Redis is away (503) or the server is going: later

    async def act(member: Member, done: trio.Event) -> None:
        send = member.watched.send
        while not done.is_set():
            await trio.sleep(rng.uniform(0.05, 0.35))
            if member.watched.closed.is_set():
                return
            if member.server in cluster.frozen:
                continue
            action = rng.choice(ACTIONS)
            now = trio.current_time()
            try:
                if action == "join":
                    member.acted.append(now)
                    mode = rng.choice(["video", "video", "text"])
                    interests = rng.sample(INTERESTS, rng.randint(0, 2))
                    await send("join_queue", {"mode": mode, "interests": interests})
                elif action in ("next", "leave_queue", "report"):
                    member.acted.append(now)
                    await send(action, {"reason": "random"} if action == "report" else None)
                elif action == "chat":
                    await send("chat", {"message": f"hi from {member.id}"})
                elif action == "ice":
                    await send("ice_candidate", {"candidate": None})
                elif action in ("disconnect", "vanish"):
                    member.gone_at = now
                    if action == "disconnect":
                        await send("disconnect")
                    else:
                        await member.watched.client.ws._stream.aclose()
                    return
            except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                return

    talking = trio.Event()
    await nursery.start(chatter, steady, talking, 0.3)
    with trio.fail_after(RUN_S + 200):
        async with trio.open_nursery() as run:
            for _ in range(CROWD):
                run.start_soon(crowd_seat)
            await cluster.inject(end)
            with trio.move_on_at(end):
                await trio.sleep_forever()
            done.set()
            finished = trio.current_time()
            talking.set()

            # Steady pairs: chatting still (a frame refused while the
            # machine is this loaded is sent again), never ended.
            for first, second in steady:
                try:
                    await chats_again(first, second, RECOVERY_BOUND_S, "after it all")
                except BaseException:
                    _tell(first, second, cluster)
                    raise
            assert_never_ended(*(c for pair in steady for c in pair))

            # Everyone leaves; the service must end empty.
            for member in list(everyone):
                if not member.watched.closed.is_set():
                    with suppress(
                        ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError
                    ):
                        await member.watched.send("disconnect")
            for first, second in steady:
                for client in (first, second):
                    await client.send("disconnect")
    live = [servers[name] for name in cluster.usable()]
    with trio.fail_after(DEATH_BOUND_S + SETTLE_S):
        while True:
            stats = [await server.aget("/stats") for server in live]
            if all(s == (200, {"online": 0, "waiting": 0}) for s in stats):
                break
            await trio.sleep(0.2)  # bounded polling of other processes

    _check(everyone, by_id, cluster, finished)


ACTIONS = (
    ["join"] * 30
    + ["next"] * 22
    + ["chat"] * 20
    + ["ice"] * 5
    + ["leave_queue"] * 8
    + ["report"] * 2
    + ["disconnect"] * 2
    + ["vanish"] * 1
)


def _tell(first: Watched, second: Watched, cluster: Cluster) -> None:
    """What a steady pair that stopped chatting saw, and what the servers said of it."""
    for client in (first, second):
        frames = [(round(at, 1), op, data) for at, op, data in client.log if op != "chat"]
        print("STEADY", client.id, frames[-8:])
        for name, server in cluster.servers.items():
            for line in server.log().splitlines():
                if client.id in line:
                    print("STEADY LOG", name, line[:300])


def cross_count(sides: dict[str, list[tuple[Member, str, bool, float]]]) -> int:
    return sum(1 for seen in sides.values() if len({m.server for m, _, _, _ in seen}) > 1)


def _check(
    everyone: list[Member], by_id: dict[str, Member], cluster: Cluster, finished: float
) -> None:
    def server_failed(name: str, start: float, stop: float) -> bool:
        return any(a <= stop and start <= b for a, b in cluster.faults.get(name, []))

    def frozen(name: str, at: float) -> bool:
        return any(a <= at <= b for a, b in cluster.frozen_spans.get(name, []))

    def left_frozen(member: Member, at: float) -> bool:
        """It left while Redis was away, and the match formed as Redis came back
        (docs/operations.md: its server may be waiting on a call to Redis for up
        to a call's bound before it notices, and then releases it)."""
        return any(
            a <= member.gone_at <= b + OUTAGE_GRACE_S and at <= b + OUTAGE_GRACE_S
            for a, b in cluster.redis_away
        )

    sides: dict[str, list[tuple[Member, str, bool, float]]] = defaultdict(list)
    told_ended: set[tuple[str, str]] = set()
    relays = 0
    for member in everyone:
        partner = match_id = None
        for at, op, data in member.watched.log:
            if op == "match_found":
                partner, match_id = data["partner"], data["match_id"]
                sides[match_id].append((member, partner, data["should_call"], at))
                # Formed only with a live session (a frozen server's users are
                # excused until its sweep, and so is news a frozen server held
                # back from its own users until it resumed).
                other = by_id.get(partner)
                if (
                    other is not None
                    and not frozen(other.server, at)
                    and not frozen(member.server, at)
                    and not left_frozen(other, at)
                ):
                    gone = min(other.gone_at, cluster.killed_at.get(other.server, math.inf))
                    assert gone + GONE_GRACE_S > at, (
                        f"{member.id} (on {member.server}) was matched at {at:.1f} with "
                        f"{partner} (on {other.server}), gone at {gone:.1f}"
                    )
            elif op == "partner_disconnected":
                told_ended.add((member.id, str(match_id)))
                partner = match_id = None
            elif op in ("chat", "ice_candidate"):
                relays += 1
                assert data["from"] == partner, f"{member.id} got {op} from a non-partner"
    print(f"matches {len(sides)}, across servers {cross_count(sides)}, relays {relays}")
    assert len(sides) > 1000, f"only {len(sides)} matches: too few to mean anything"
    assert relays > 1000
    cross = cross_count(sides)
    assert cross > 100, f"only {cross} matches between servers"
    for match_id, seen in sides.items():
        if len(seen) == 2:
            (a, a_partner, a_calls, _), (b, b_partner, b_calls, _) = seen
            assert (a_partner, b_partner) == (b.id, a.id)
            assert a_calls != b_calls, f"{match_id} needs exactly one caller"
            continue
        assert len(seen) == 1, f"{match_id} seen {len(seen)} times"
        who, partner, _, at = seen[0]
        other = by_id.get(partner)
        excused = (
            (who.id, match_id) in told_ended
            or any(t >= at - 1.0 for t in who.acted)
            or finished - at < SETTLE_S
            or who.gone_at < math.inf
            or server_failed(who.server, at - 2, at + SETTLE_S)
            or other is None
            or server_failed(other.server, at - 2, at + SETTLE_S)
        )
        assert excused, f"{match_id}: {who.id} was matched with a ghost"
