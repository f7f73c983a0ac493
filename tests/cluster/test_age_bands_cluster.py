"""Age bands on two real ``omiro serve`` processes sharing one Redis.

The tokens carry the band the entry gate verified (signed with the secret
the servers share, as ``/session/new`` signs them after an ``oidc`` sign-in:
``tests/integration/test_gate_oidc.py`` goes through the real provider).
Whichever server each session is on, an adult is never matched with a minor,
and an unknown age only with another unknown one; the same bands meet across
the two servers.
"""

from __future__ import annotations

import random
import time

import pytest
import trio
from cluster_support import SECRET, ServeProcess, connect
from support import Client

from omiro_trio.tokens import TokenSigner

pytestmark = pytest.mark.rule("protocol/age-bands")

WAIT_S = 10.0


def banded_token(band: str) -> str:
    return TokenSigner(SECRET.encode(), 600).issue(time.time(), band=band, subject="s").token


async def test_age_bands_two_servers_keep_adults_and_minors_apart(
    nursery: trio.Nursery, two_servers: tuple[ServeProcess, ServeProcess]
) -> None:
    a, b = two_servers
    minor = await connect(nursery, a, token_=banded_token("minor"))
    adult = await connect(nursery, b, token_=banded_token("adult"))
    await minor.send("join_queue", {"mode": "text"})
    await minor.expect("queued", WAIT_S)
    await adult.send("join_queue", {"mode": "text"})
    await adult.expect("queued", WAIT_S)  # the minor on the other server is not taken
    adult2 = await connect(nursery, a, token_=banded_token("adult"))
    await adult2.send("join_queue", {"mode": "text"})
    found = await adult.expect("match_found", WAIT_S)
    assert found["partner"] == adult2.session_id
    minor2 = await connect(nursery, b, token_=banded_token("minor"))
    await minor2.send("join_queue", {"mode": "text"})
    assert (await minor.expect("match_found", WAIT_S))["partner"] == minor2.session_id


async def test_age_bands_two_servers_randomized_never_cross(
    nursery: trio.Nursery, two_servers: tuple[ServeProcess, ServeProcess]
) -> None:
    """Sessions of random bands join in turn on either server; every match any of
    them is told of pairs two sessions of one band."""
    rng = random.Random(20)
    band_of: dict[str, str] = {}
    clients: list[Client] = []
    for n in range(16):
        band = rng.choice(("adult", "minor", ""))
        server = rng.choice(two_servers)
        # Each its own client (a socket allowance is per client), told by the header.
        client = await connect(nursery, server, ip=f"198.51.100.{n + 1}", token_=banded_token(band))
        band_of[client.session_id] = band
        clients.append(client)
        await client.send("join_queue", {"mode": "text"})
    matched = 0
    for client in clients:
        op, data = await client.recv(WAIT_S)
        assert op in ("queued", "match_found"), (op, data)
        if op == "queued":
            with trio.move_on_after(WAIT_S if matched < 5 else 0.5):
                op, data = await client.recv(WAIT_S)
        if op == "match_found":
            assert band_of[data["partner"]] == band_of[client.session_id], data
            matched += 1
    assert matched >= 10  # the seed's sequence makes pairs in every band (14 sides)
