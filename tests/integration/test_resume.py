"""Resuming a match over real sockets: a server drained and another started (issue 23).

Two ``serve`` instances on the memory backend share one session secret and
nothing else; the second knows nothing of the first's matches. Default
timers throughout (``drain_grace_s`` 10 s is not waited out: the clients
leave as soon as they are told to).
"""

from __future__ import annotations

import pytest
import trio
from support import Client, Harness, StartServer

SECRET = "resume-test-secret-" + "x" * 32


async def drain(server: Harness, *clients: Client) -> None:
    """Stop ``server``: each client hears ``server_draining``, nothing else, and leaves."""
    server.stop.set()
    for client in clients:
        assert (await client.expect("server_draining")) == {"reconnect_after_ms": 1000}
    for client in clients:
        await client.ws.aclose()
    with trio.fail_after(5):
        await server.stopped.wait()


@pytest.mark.rule("protocol/resume", "protocol/match-tickets", "protocol/msg-server-draining")
async def test_a_pair_resumes_on_a_fresh_server_with_the_same_secret(
    start_server: StartServer,
) -> None:
    first = await start_server(session__secret=SECRET)
    a = await first.connect()
    b = await first.connect()
    await a.send("join_queue")
    await a.expect("queued")
    await b.send("join_queue")
    found = {client.session_id: await client.expect("match_found") for client in (a, b)}
    tickets = {sid: data["ticket"] for sid, data in found.items()}
    old_match_id = found[a.session_id]["match_id"]
    await a.send("chat", {"message": "before"})
    assert (await b.expect("chat"))["message"] == "before"
    await drain(first, a, b)

    second = await start_server(session__secret=SECRET)
    a2 = await second.connect()
    b2 = await second.connect()
    await b2.send("resume", {"ticket": tickets[b.session_id]})
    assert await b2.expect("resuming") == {"grace_ms": 30000}
    await a2.send("resume", {"ticket": tickets[a.session_id]})
    got_a = await a2.expect("resumed")
    got_b = await b2.expect("resumed")
    assert got_a["partner"] == b2.session_id
    assert got_b["partner"] == a2.session_id
    assert (got_a["should_call"], got_b["should_call"]) == (True, False)  # a called before
    assert got_a["match_id"] == got_b["match_id"] != old_match_id
    assert got_a["resumed_from"] == old_match_id
    await a2.send("chat", {"message": "after"})
    assert (await b2.expect("chat")) == {"message": "after", "from": a2.session_id}
    # A replay by a third person, on the new server: refused, and the pair goes on.
    c = await second.connect()
    await c.send("resume", {"ticket": tickets[a.session_id]})
    error = await c.expect("error")
    assert (error["code"], error["op"]) == ("ticket_used", "resume")
    await b2.send("chat", {"message": "still us"})
    assert (await a2.expect("chat"))["message"] == "still us"


async def test_match_found_carries_a_ticket_the_server_accepts(server: Harness) -> None:
    a = await server.connect()
    b = await server.connect()
    await a.send("join_queue")
    await a.expect("queued")
    await b.send("join_queue")
    found_a = await a.expect("match_found")
    found_b = await b.expect("match_found")
    tickets = server.ctx.rules.tickets
    assert tickets is not None
    wall = server.ctx.wall()
    for found, client in ((found_a, a), (found_b, b)):
        verified = tickets.verify(found["ticket"], wall)
        assert verified.match_id == found["match_id"]
        assert verified.holder == client.session_id


@pytest.mark.rule("protocol/renew-ticket", "protocol/msg-ticket", "protocol/hello-data")
async def test_a_renewed_ticket_resumes_on_a_fresh_server(start_server: StartServer) -> None:
    first = await start_server(session__secret=SECRET)
    a = await first.connect()
    b = await first.connect()
    assert a.hello["ticket_ttl_ms"] == 7_200_000  # session.ticket_ttl_s, the default
    await a.send("join_queue")
    await a.expect("queued")
    await b.send("join_queue")
    found = {client.session_id: await client.expect("match_found") for client in (a, b)}
    renewed = {}
    for client in (a, b):
        await client.send("renew_ticket")
        answer = await client.expect("ticket")
        assert answer["match_id"] == found[client.session_id]["match_id"]
        tickets = first.ctx.rules.tickets
        assert tickets is not None
        assert tickets.verify(answer["ticket"], first.ctx.wall()).holder == client.session_id
        renewed[client.session_id] = answer["ticket"]
    await drain(first, a, b)
    second = await start_server(session__secret=SECRET)
    a2 = await second.connect()
    b2 = await second.connect()
    await a2.send("resume", {"ticket": renewed[a.session_id]})
    await a2.expect("resuming")
    await b2.send("resume", {"ticket": renewed[b.session_id]})
    assert (await b2.expect("resumed"))["partner"] == a2.session_id
    assert (await a2.expect("resumed"))["partner"] == b2.session_id
