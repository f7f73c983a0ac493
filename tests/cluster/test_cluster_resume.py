"""Resuming a match on any server of a Redis cluster (issue 23).

Two real ``omiro serve`` processes share one real Redis. The seats of the
matches being taken back live in the shared state: the two sides of a match
coming back on two different servers are paired at once, a side that left
its partner comes back on another server than the partner's, a ticket
replayed on another server is refused, and a seat held on a server that dies
does not leave its partner hanging. Default timers throughout
(``resume_grace_s`` 30 s).
"""

from __future__ import annotations

import trio
from cluster_support import (
    DEATH_BOUND_S,
    RECOVERY_BOUND_S,
    SLACK_S,
    ServeProcess,
    Watched,
    chat_both_ways,
    shared_state_faults,
    until,
)
from redis_support import RedisServer

Servers = tuple[ServeProcess, ServeProcess]
WAIT_S = 10.0
GRACE_S = 30.0  # server.resume_grace_s, the default


async def matched(
    nursery: trio.Nursery, first_on: ServeProcess, second_on: ServeProcess
) -> tuple[Watched, Watched, dict[str, str], str]:
    """A pair (the first calls); both sides' tickets by session id, and the match id."""
    first = await Watched.open(nursery, first_on)
    second = await Watched.open(nursery, second_on)
    await first.send("join_queue")
    await first.next("queued")
    await second.send("join_queue")
    found = {c.id: await c.next("match_found") for c in (first, second)}
    assert found[first.id]["partner"] == second.id
    tickets = {sid: data["ticket"] for sid, data in found.items()}
    return first, second, tickets, found[first.id]["match_id"]


async def answer_to_resume(client: Watched, ticket: str) -> str:
    """Send ``resume``: the op of the answer, or the error's code."""
    start = len(client.log)
    await client.send("resume", {"ticket": ticket})
    with trio.fail_after(WAIT_S):
        while True:  # bounded polling of the reader task's log
            for _, op, data in client.log[start:]:
                if op in ("resumed", "resuming"):
                    return op
                if op == "error":
                    return str(data["code"])
            await trio.sleep(0.05)


async def gone(client: Watched) -> None:
    """The client's socket ends without ``disconnect`` (a network that broke)."""
    await client.client.ws.aclose()
    with trio.fail_after(WAIT_S):
        await client.closed.wait()


async def test_both_sides_come_back_on_two_different_servers_and_are_paired(
    two_servers: Servers, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    a, b = two_servers
    first, second, tickets, old_id = await matched(nursery, a, b)
    await gone(first)
    await second.next("partner_away")
    await gone(second)
    # Each comes back on the other server than before.
    first2 = await Watched.open(nursery, b)
    second2 = await Watched.open(nursery, a)
    await first2.send("resume", {"ticket": tickets[first.id]})
    assert await first2.next("resuming") == {"grace_ms": 30000}
    await second2.send("resume", {"ticket": tickets[second.id]})
    got_first = await first2.next("resumed")
    got_second = await second2.next("resumed")
    assert got_first["partner"] == second2.id
    assert got_second["partner"] == first2.id
    assert (got_first["should_call"], got_second["should_call"]) == (True, False)
    assert got_first["match_id"] == got_second["match_id"] != old_id
    assert got_first["resumed_from"] == got_second["resumed_from"] == old_id
    await chat_both_ways(first2, second2, "after")
    # The old tickets are spent on every server: a replay is refused on both.
    for server in (a, b):
        thief = await Watched.open(nursery, server)
        await thief.send("resume", {"ticket": tickets[first.id]})
        error = await thief.next("error")
        assert (error["code"], error["op"]) == ("ticket_used", "resume")
    await chat_both_ways(first2, second2, "still us")
    assert not first2.seen("partner_disconnected")
    assert not second2.seen("partner_disconnected")
    assert await shared_state_faults(redis_server.url, a.env["OMIRO_REDIS_KEY_PREFIX"]) == []


async def test_a_side_that_left_comes_back_on_another_server_than_its_partner(
    two_servers: Servers, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    a, b = two_servers
    stays, leaves, tickets, old_id = await matched(nursery, a, a)
    # A third person with the staying side's ticket, while the match goes on: refused.
    thief = await Watched.open(nursery, b)
    await thief.send("resume", {"ticket": tickets[stays.id]})
    assert (await thief.next("error"))["code"] == "ticket_used"
    await gone(leaves)
    assert await stays.next("partner_away") == {"grace_ms": 30000}
    back = await Watched.open(nursery, b)
    await back.send("resume", {"ticket": tickets[leaves.id]})
    got_back = await back.next("resumed")
    got_stays = await stays.next("resumed")
    assert got_back["partner"] == stays.id
    assert got_stays["partner"] == back.id
    assert got_back["resumed_from"] == old_id
    assert (got_stays["should_call"], got_back["should_call"]) == (True, False)
    await chat_both_ways(stays, back, "across")
    # The seat was taken back: the same ticket on the partner's server is refused.
    replay = await Watched.open(nursery, a)
    await replay.send("resume", {"ticket": tickets[leaves.id]})
    assert (await replay.next("error"))["code"] == "ticket_used"
    # And the new tickets do not join a third person to the match going on.
    await replay.send("resume", {"ticket": got_back["ticket"]})
    assert (await replay.next("error"))["code"] == "ticket_used"
    await chat_both_ways(stays, back, "still")
    assert not stays.seen("partner_disconnected")
    assert await shared_state_faults(redis_server.url, a.env["OMIRO_REDIS_KEY_PREFIX"]) == []


async def test_a_partner_that_moved_on_is_refused_on_another_server(
    two_servers: Servers, nursery: trio.Nursery
) -> None:
    a, b = two_servers
    stays, leaves, tickets, _ = await matched(nursery, a, a)
    await gone(leaves)
    await stays.next("partner_away")
    await stays.send("next")  # it moves on: the match is over for the ticket
    await stays.next("queued")
    back = await Watched.open(nursery, b)
    await back.send("resume", {"ticket": tickets[leaves.id]})
    error = await back.next("error")
    assert (error["code"], error["op"]) == ("match_over", "resume")
    assert not back.seen("resumed")


async def a_seat_held_on(a: ServeProcess, b: ServeProcess, nursery: trio.Nursery) -> str:
    """A pair on A and B whose sides both went; the first is back on A and its seat
    held there (``resuming``): the second's ticket, not yet used."""
    first, second, tickets, _ = await matched(nursery, a, b)
    await gone(first)
    await second.next("partner_away")
    await gone(second)
    first2 = await Watched.open(nursery, a)
    await first2.send("resume", {"ticket": tickets[first.id]})
    await first2.next("resuming")
    return tickets[second.id]


async def test_a_seat_held_on_a_server_that_dies_does_not_leave_its_partner_hanging(
    two_servers: Servers, nursery: trio.Nursery
) -> None:
    a, b = two_servers
    ticket = await a_seat_held_on(a, b, nursery)
    a.kill()
    second2 = await Watched.open(nursery, b)
    claimed_at = trio.current_time()
    await second2.send("resume", {"ticket": ticket})
    # Paired with the dead server's session (not yet known dead) and then told it left
    # by the sweep, or held and told at the grace's end: either way, within the grace.
    left = await second2.next("partner_disconnected", GRACE_S + SLACK_S)
    assert left == {"reason": "left"}
    assert trio.current_time() - claimed_at < max(GRACE_S, DEATH_BOUND_S) + SLACK_S
    assert second2.seen("resumed") or second2.seen("resuming")
    # It is idle and may look for someone else.
    await second2.send("join_queue")
    await second2.next("queued")


async def test_a_seat_held_on_a_server_swept_as_dead_is_free_and_its_partner_waits_the_grace(
    two_servers: Servers, nursery: trio.Nursery
) -> None:
    a, b = two_servers
    ticket = await a_seat_held_on(a, b, nursery)
    a.kill()
    # B sweeps A: the held seat's session is gone from the shared state.
    await until(lambda: stats_are(b, 0), DEATH_BOUND_S)
    second2 = await Watched.open(nursery, b)
    await second2.send("resume", {"ticket": ticket})
    held_at = trio.current_time()
    assert await second2.next("resuming") == {"grace_ms": 30000}
    left = await second2.next("partner_disconnected", GRACE_S + SLACK_S)
    assert left == {"reason": "left"}
    assert GRACE_S - 1.0 <= trio.current_time() - held_at <= GRACE_S + SLACK_S
    assert not second2.seen("resumed")


async def stats_are(server: ServeProcess, online: int) -> bool:
    """``server`` counts ``online`` sockets over the whole service, none waiting."""
    return await server.aget("/stats") == (200, {"online": online, "waiting": 0})


async def test_a_resume_while_redis_is_frozen_is_refused_unavailable_then_works(
    two_servers: Servers, redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    a, b = two_servers
    stays, leaves, tickets, _ = await matched(nursery, a, a)
    await gone(leaves)
    await stays.next("partner_away")
    back = await Watched.open(nursery, b)
    redis_server.pause()
    try:
        await back.send("resume", {"ticket": tickets[leaves.id]})
        error = await back.next("error", WAIT_S)
        assert (error["code"], error["op"]) == ("unavailable", "resume")
    finally:
        redis_server.resume()
    # Nothing was taken: the same session tries again once Redis answers.
    with trio.fail_after(RECOVERY_BOUND_S):
        while (answer := await answer_to_resume(back, tickets[leaves.id])) != "resumed":
            assert answer == "unavailable", answer
    assert (await stays.next("resumed"))["partner"] == back.id
    await chat_both_ways(stays, back, "after the freeze")
