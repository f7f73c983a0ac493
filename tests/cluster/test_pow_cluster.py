"""Proof of work on two real ``omiro serve`` processes sharing one Redis.

The used challenges are one memory for the service: a solution used on one
server is refused on the other (and a challenge from one is good on the
other: both derive the key from the shared secret). The adaptive switch is
one switch: a flood from many addresses through one server makes both ask
for proof of work. Its quiet period is the operator's default (ten
minutes), not shortened here: the switch going off again runs on a fake
clock in ``tests/unit/test_pow_parts.py`` and on this Redis's clock (moved by an
offset) in the backend contract suite.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import altcha
import httpx
import pytest
import trio
from cluster_support import ServeProcess, cluster_env, until
from redis_support import RedisServer

from omiro_trio.gate.pow import REFRESH_S

WAIT_S = 10.0
EASY = "1000"  # the smallest difficulty allowed: the solver here is pure Python
THRESHOLD = 20


def _servers(env: dict[str, str]) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    a = ServeProcess(env).start()
    try:
        b = ServeProcess(env).start()
    except BaseException:
        a.kill()
        raise
    yield a, b
    for server in (a, b):
        server.kill()


@pytest.fixture
def always_servers(redis_server: RedisServer) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    env = cluster_env(redis_server, OMIRO_GATE_POW_MODE="always", OMIRO_GATE_POW_MAX_NUMBER=EASY)
    yield from _servers(env)


@pytest.fixture
def adaptive_servers(redis_server: RedisServer) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    env = cluster_env(
        redis_server,
        OMIRO_GATE_POW_MODE="adaptive",
        OMIRO_GATE_POW_MAX_NUMBER=EASY,
        OMIRO_GATE_POW_ADAPTIVE_PER_MINUTE=str(THRESHOLD),
    )
    yield from _servers(env)


def solve(challenge: dict[str, Any]) -> str:
    parsed = altcha.Challenge.from_dict(challenge)
    solution = altcha.solve_challenge(parsed)
    assert solution is not None
    return altcha.Payload(parsed, solution).to_base64()


async def _session(server: ServeProcess, ip: str, payload: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": ip}
    if payload is not None:
        headers["X-Omiro-Pow"] = payload
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        return await http.get("/session/new", headers=headers)


async def _challenge(server: ServeProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=WAIT_S) as http:
        answer = (await http.get("/gate/challenge")).json()
    assert answer["required"] is True
    return dict(answer["challenge"])


@pytest.mark.rule("protocol/pow")
async def test_pow_solution_used_on_one_server_is_refused_on_the_other(
    always_servers: tuple[ServeProcess, ServeProcess],
) -> None:
    a, b = always_servers
    payload = solve(await _challenge(a))
    assert (await _session(b, "198.51.100.1", payload)).status_code == 200  # a's, good on b
    replayed = await _session(a, "198.51.100.2", payload)
    assert replayed.status_code == 403
    assert replayed.json()["reason"] == "used"
    # At once, from two servers: one token, one refusal.
    payload = solve(await _challenge(b))
    statuses: list[int] = []

    async def use(server: ServeProcess, ip: str) -> None:
        statuses.append((await _session(server, ip, payload)).status_code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(use, a, "198.51.100.3")
        nursery.start_soon(use, b, "198.51.100.4")
    assert sorted(statuses) == [200, 403]


@pytest.mark.rule("protocol/pow")
async def test_pow_adaptive_switch_is_one_for_both_servers(
    adaptive_servers: tuple[ServeProcess, ServeProcess],
) -> None:
    a, b = adaptive_servers
    for n in range(THRESHOLD):  # spread over both: the count is the service's
        server = a if n % 2 else b
        assert (await _session(server, f"198.51.100.{n}")).status_code == 200
    assert (await _session(b, "192.0.2.1")).status_code in (200, 401)

    async def asks(server: ServeProcess, ip: str) -> bool:
        answer = await _session(server, ip)
        return answer.status_code == 401 and answer.json()["error"] == "pow"

    # The flood (through a only) made b ask too, within a refresh or two.
    flood = 0

    async def a_flooded_and_b_asks() -> bool:
        nonlocal flood
        flood += 1
        await _session(a, f"203.0.113.{flood % 250}")
        return await asks(b, f"192.0.2.{2 + flood % 250}")

    await until(a_flooded_and_b_asks, WAIT_S, REFRESH_S / 5)
    # a reads the shared switch at its own refresh: within one more.
    await until(lambda: asks(a, "192.0.2.250"), WAIT_S, REFRESH_S / 5)
    # A person solves a challenge of one server and gets in on the other.
    payload = solve(await _challenge(a))
    assert (await _session(b, "192.0.2.251", payload)).status_code == 200
