"""Proof of work over real sockets: one server, requests as the page and a bot send them.

``GET /gate/challenge``, ``GET /session/new`` with and without the
``X-Omiro-Pow`` header, a replayed and an expired solution, the adaptive
switch under a flood from many addresses (believed through a trusted
proxy's ``X-Forwarded-For``), raid mode asking for harder work instead of
pausing, and a hostile client while a pair chats. The adaptive switch's
quiet period runs on a fake clock in ``tests/unit/test_pow_parts.py`` (its
default is ten minutes); two servers on Redis: ``tests/cluster/test_pow_cluster.py``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import altcha
import httpx
import pytest
import trio
from support import Harness, StartServer

from omiro_trio.gate.pow import MAX_PAYLOAD_CHARS, REFRESH_S, pow_key

SECRET = "a-session-secret-that-is-long-enough-for-tests"
ADMIN_TOKEN = "an-admin-token-that-is-long-enough!"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
EASY = 1000  # the smallest difficulty allowed: the solver here is pure Python


def solve(challenge: dict[str, Any]) -> str:
    parsed = altcha.Challenge.from_dict(challenge)
    solution = altcha.solve_challenge(parsed)
    assert solution is not None
    return altcha.Payload(parsed, solution).to_base64()


async def solved(http: httpx.AsyncClient, **headers: str) -> str:
    answer = await http.get("/gate/challenge", headers=headers)
    assert answer.status_code == 200
    assert answer.headers["cache-control"] == "no-store"
    assert answer.json()["required"] is True
    return solve(answer.json()["challenge"])


async def pow_server(start_server: StartServer, **more: Any) -> Harness:
    return await start_server(
        session__secret=SECRET, gate__pow_mode="always", gate__pow_max_number=EASY, **more
    )


@pytest.mark.rule("protocol/pow", "protocol/gate-challenge")
async def test_pow_off_is_the_default_and_asks_nothing(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/gate/challenge")).json() == {"required": False}
        assert (await http.get("/session/new")).status_code == 200


@pytest.mark.rule("protocol/pow", "protocol/gate-challenge")
async def test_pow_without_a_solution_is_refused_then_a_solution_is_good_once(
    start_server: StartServer,
) -> None:
    server = await pow_server(start_server)
    async with httpx.AsyncClient(base_url=server.url) as http:
        missing = await http.get("/session/new")
        assert missing.status_code == 401
        assert missing.json() == {
            "error": "pow",
            "message": missing.json()["message"],
            "reason": "required",
            "challenge": "/gate/challenge",
        }
        payload = await solved(http)
        admitted = await http.get("/session/new", headers={"X-Omiro-Pow": payload})
        assert admitted.status_code == 200
        token = admitted.json()["token"]
        replayed = await http.get("/session/new", headers={"X-Omiro-Pow": payload})
        assert replayed.status_code == 403
        assert replayed.json()["reason"] == "used"
        assert (await http.get("/session/new", headers={"X-Omiro-Pow": "junk"})).json()[
            "reason"
        ] == "invalid"
        too_long = "A" * (MAX_PAYLOAD_CHARS + 1)
        answer = await http.get("/session/new", headers={"X-Omiro-Pow": too_long})
        assert (answer.status_code, answer.json()["reason"]) == (403, "invalid")
    # The token of the solved challenge is a session like any other.
    a = await server.connect(token)
    b = await server.connect()
    await a.send("join_queue")
    await a.expect("queued")
    await b.send("join_queue")
    await a.expect("match_found")
    await b.expect("match_found")
    await a.send("chat", {"message": "solved"})
    assert (await b.expect("chat"))["message"] == "solved"


@pytest.mark.rule("protocol/pow")
async def test_pow_expired_solution_is_refused(start_server: StartServer) -> None:
    server = await pow_server(start_server)
    # A challenge this server signed (its key comes from the shared secret) whose
    # time is over: the operator's expiry is not shortened to make one.
    old = altcha.create_challenge(
        "SHA-256",
        1,
        counter=7,
        expires_at=math.floor(time.time()) - 1,
        data={"max": EASY},
        hmac_secret=pow_key(SECRET.encode()),
    )
    solution = altcha.solve_challenge(old)
    assert solution is not None
    payload = altcha.Payload(old, solution).to_base64()
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.get("/session/new", headers={"X-Omiro-Pow": payload})
    assert answer.status_code == 403
    assert answer.json()["reason"] == "expired"


@pytest.mark.rule("protocol/pow")
async def test_pow_adaptive_switches_on_under_a_flood_from_many_addresses(
    start_server: StartServer,
) -> None:
    threshold = 20
    server = await start_server(
        session__secret=SECRET,
        server__trusted_proxies=["127.0.0.0/8"],
        gate__pow_mode="adaptive",
        gate__pow_max_number=EASY,
        gate__pow_adaptive_per_minute=threshold,
    )
    a, b = await server.pair()
    async with httpx.AsyncClient(base_url=server.url) as http:
        # Under the threshold: no work asked, whoever asks.
        for n in range(threshold):
            bot = {"X-Forwarded-For": f"198.51.100.{n}"}
            assert (await http.get("/session/new", headers=bot)).status_code == 200
        with trio.fail_after(10 * REFRESH_S):
            n = threshold
            while True:  # the flood goes on, each from another address
                n += 1
                bot = {"X-Forwarded-For": f"203.0.113.{n % 250}"}
                answer = await http.get("/session/new", headers=bot)
                if answer.status_code == 401:
                    break
                assert answer.status_code == 200
                await trio.sleep(REFRESH_S / 10)
        assert answer.json()["reason"] == "required"
        assert server.ctx.pow is not None
        assert server.ctx.pow.switch.adaptive_on
        # A person brings the work and gets in; the pair chatting is left alone.
        person = {"X-Forwarded-For": "192.0.2.77"}
        payload = await solved(http, **person)
        assert (
            await http.get("/session/new", headers={**person, "X-Omiro-Pow": payload})
        ).status_code == 200
    await a.send("chat", {"message": "during the flood"})
    assert (await b.expect("chat"))["message"] == "during the flood"


@pytest.mark.rule("protocol/pow", "protocol/raid")
async def test_raid_mode_without_pause_asks_harder_work_instead(start_server: StartServer) -> None:
    server = await start_server(
        session__secret=SECRET,
        admin__token=ADMIN_TOKEN,
        gate__pow_max_number=EASY,
        gate__pow_raid_max_number=2 * EASY,
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        on = await http.put(
            "/admin/raid", json={"on": True, "pause": False, "retry_after_s": 60}, headers=ADMIN
        )
        assert on.status_code == 200
        assert on.json()["pause"] is False
        assert (await http.get("/session/new")).json()["error"] == "pow"
        challenge = (await http.get("/gate/challenge")).json()["challenge"]
        assert challenge["parameters"]["data"] == {"max": 2 * EASY}
        answer = await http.get("/session/new", headers={"X-Omiro-Pow": solve(challenge)})
        assert answer.status_code == 200
        await http.put("/admin/raid", json={"on": False}, headers=ADMIN)
        assert (await http.get("/session/new")).status_code == 200


@pytest.mark.rule("protocol/pow")
async def test_pow_hostile_client_spends_nothing_lasting_while_a_pair_chats(
    start_server: StartServer,
) -> None:
    """Challenges and bad payloads at once from one client: none is remembered
    (only a good solution is, and it takes a session of the client's limit)."""
    server = await pow_server(start_server, limits__sessions_per_ip_per_minute=1000)
    a, b = await server.pair()
    statuses: list[int] = []

    async def hostile() -> None:
        async with httpx.AsyncClient(base_url=server.url) as http:
            for n in range(100):
                statuses.append((await http.get("/gate/challenge")).status_code)
                bad = {"X-Omiro-Pow": "B" * (n * 20)}
                statuses.append((await http.get("/session/new", headers=bad)).status_code)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hostile)
            for n in range(20):
                await a.send("chat", {"message": f"still here {n}"})
                assert (await b.expect("chat"))["message"] == f"still here {n}"
    assert set(statuses[::2]) == {200}
    assert set(statuses[1::2]) <= {401, 403}
    assert not server.ctx.backend._pow_used  # type: ignore[attr-defined]
