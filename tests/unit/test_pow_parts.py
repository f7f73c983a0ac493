"""Proof of work (``gate/pow.py``) on the in-process backend: challenges, checks, the switch.

Real ALTCHA challenges solved by the ``altcha`` package's own solver; time
is a fake wall clock (expiry) and trio's ``autojump_clock`` (the adaptive
switch's minute and quiet period), so the operator's default timers run
in full.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import Any

import altcha
import msgspec
import pytest
import trio
import trio.testing

from omiro_trio.backends.base import Raid
from omiro_trio.backends.memory import MemoryBackend, open_memory_backend
from omiro_trio.config import GateConfig
from omiro_trio.gate.pow import (
    CHALLENGE_PATH,
    MAX_PAYLOAD_CHARS,
    REFRESH_S,
    PowSwitch,
    ProofOfWork,
    pow_key,
)
from omiro_trio.gate.raid import RaidSwitch

SECRET = b"s" * 32
MAX_NUMBER = 2000  # small: the solver here is pure Python


class Wall:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def backend() -> AsyncIterator[MemoryBackend]:
    async with open_memory_backend(
        interest_timeout_s=5, rematch_cooldown_s=300, block_ttl_s=3600
    ) as opened:
        yield opened


def gate_config(**keys: Any) -> GateConfig:
    return msgspec.structs.replace(
        GateConfig(),
        **{"pow_max_number": MAX_NUMBER, "pow_raid_max_number": 4 * MAX_NUMBER, **keys},
    )


def pow_for(
    backend: MemoryBackend, config: GateConfig, wall: Wall, raid: RaidSwitch | None = None
) -> ProofOfWork:
    return ProofOfWork(config, SECRET, backend, PowSwitch(config, backend, raid), wall=wall)


def solve(challenge: dict[str, Any]) -> str:
    """The payload the page sends, as the ALTCHA solver makes it."""
    parsed = altcha.Challenge.from_dict(challenge)
    solution = altcha.solve_challenge(parsed)
    assert solution is not None
    return altcha.Payload(parsed, solution).to_base64()


def reason(answer: Any) -> tuple[int, str, str]:
    assert answer is not None
    return answer.status, answer.body["error"], answer.body["reason"]


async def fresh_payload(pow: ProofOfWork) -> str:
    answer = await pow.challenge_answer()
    assert answer.status == HTTPStatus.OK
    assert answer.body["required"] is True
    return solve(answer.body["challenge"])


async def test_pow_off_asks_nothing(backend: MemoryBackend) -> None:
    pow = pow_for(backend, gate_config(), Wall())
    assert (await pow.challenge_answer()).body == {"required": False}
    assert await pow.refused(None) is None


async def test_pow_always_refuses_without_then_admits_a_solution_once(
    backend: MemoryBackend,
) -> None:
    pow = pow_for(backend, gate_config(pow_mode="always"), Wall())
    missing = await pow.refused(None)
    assert reason(missing) == (401, "pow", "required")
    assert missing is not None
    assert missing.body["challenge"] == CHALLENGE_PATH
    payload = await fresh_payload(pow)
    assert await pow.refused(payload) is None
    assert reason(await pow.refused(payload)) == (403, "pow", "used")


async def test_pow_challenge_is_signed_with_the_secrets_key_and_expires(
    backend: MemoryBackend,
) -> None:
    wall = Wall()
    config = gate_config(pow_mode="always")
    challenge = pow_for(backend, config, wall).challenge(MAX_NUMBER)
    parameters = challenge["parameters"]
    assert parameters["algorithm"] == "SHA-256"
    assert parameters["cost"] == 1
    assert parameters["expiresAt"] == int(wall.now) + config.pow_expiry_s
    assert parameters["data"] == {"max": MAX_NUMBER}
    # Another secret (another service) does not accept it.
    other = ProofOfWork(config, b"t" * 32, backend, PowSwitch(config, backend, None), wall=wall)
    assert reason(await other.refused(solve(challenge))) == (403, "pow", "invalid")
    assert pow_key(SECRET) != pow_key(b"t" * 32)


async def test_pow_expired_solution_is_refused(backend: MemoryBackend) -> None:
    wall = Wall()
    config = gate_config(pow_mode="always")
    pow = pow_for(backend, config, wall)
    payload = await fresh_payload(pow)
    wall.now += config.pow_expiry_s + 1
    assert reason(await pow.refused(payload)) == (403, "pow", "expired")


def _tampered(payload: str, change: Any) -> str:
    document = json.loads(base64.b64decode(payload))
    change(document)
    return base64.b64encode(json.dumps(document).encode()).decode()


async def test_pow_bad_payloads_are_refused_as_invalid(backend: MemoryBackend) -> None:
    pow = pow_for(backend, gate_config(pow_mode="always"), Wall())
    payload = await fresh_payload(pow)

    def wrong_number(d: dict[str, Any]) -> None:
        d["solution"]["counter"] += 1

    def easier(d: dict[str, Any]) -> None:
        d["challenge"]["parameters"]["keyPrefix"] = "00"

    def no_signature(d: dict[str, Any]) -> None:
        del d["challenge"]["signature"]

    def odd_expiry(d: dict[str, Any]) -> None:
        d["challenge"]["parameters"]["expiresAt"] = "soon"

    bad = [
        "not base64 at all!",
        base64.b64encode(b"[1, 2]").decode(),
        base64.b64encode(b"{" * 5000).decode()[:MAX_PAYLOAD_CHARS],
        "A" * (MAX_PAYLOAD_CHARS + 1),
        _tampered(payload, wrong_number),
        _tampered(payload, easier),
        _tampered(payload, no_signature),
        _tampered(payload, odd_expiry),
    ]
    for each in bad:
        assert reason(await pow.refused(each)) == (403, "pow", "invalid"), each[:40]
    # None of them used the real one up.
    assert await pow.refused(payload) is None


async def test_pow_used_challenges_are_bounded_and_forgotten_once_expired() -> None:
    wall = Wall()
    async with open_memory_backend(
        interest_timeout_s=5, rematch_cooldown_s=300, block_ttl_s=3600, wall=wall
    ) as backend:
        assert await backend.use_pow_solution("a", wall.now + 10, 2) == "new"
        assert await backend.use_pow_solution("b", wall.now + 20, 2) == "new"
        assert await backend.use_pow_solution("c", wall.now + 30, 2) == "full"
        assert await backend.use_pow_solution("a", wall.now + 10, 2) == "used"
        wall.now += 11  # "a" expired: forgotten, which makes room
        assert await backend.use_pow_solution("c", wall.now + 30, 2) == "new"
        assert await backend.use_pow_solution("b", wall.now + 20, 2) == "used"


async def test_pow_raid_without_pause_asks_the_raid_difficulty(backend: MemoryBackend) -> None:
    wall = Wall()
    raid = RaidSwitch(backend)
    pow = pow_for(backend, gate_config(pow_mode="always"), wall, raid)
    easy = await fresh_payload(pow)
    await raid.set(Raid(since=wall.now, by="admin", pause=False))
    answer = await pow.challenge_answer()
    assert answer.body["challenge"]["parameters"]["data"] == {"max": 4 * MAX_NUMBER}
    # A solution of the easier challenge is not enough now.
    assert reason(await pow.refused(easy)) == (403, "pow", "expired")
    assert await pow.refused(solve(answer.body["challenge"])) is None
    # Raid mode asks for proof of work even when pow_mode is off.
    off = pow_for(backend, gate_config(), wall, raid)
    assert reason(await off.refused(None)) == (401, "pow", "required")


async def test_pow_adaptive_switches_on_over_the_threshold_and_off_after_the_quiet_period(
    backend: MemoryBackend, autojump_clock: trio.testing.MockClock
) -> None:
    config = gate_config(pow_mode="adaptive")  # the default threshold and quiet period
    switch = PowSwitch(config, backend, None)
    pow = ProofOfWork(config, SECRET, backend, switch, wall=Wall())
    async with trio.open_nursery() as nursery:
        await nursery.start(switch.run)
        assert await pow.refused(None) is None
        # At the threshold within a minute: still off.
        for _ in range(config.pow_adaptive_per_minute):
            switch.issued()
        await trio.sleep(2 * REFRESH_S)
        assert not switch.adaptive_on
        switch.issued()  # one over
        await trio.sleep(2 * REFRESH_S)
        assert switch.adaptive_on
        assert reason(await pow.refused(None)) == (401, "pow", "required")
        # The flood stopped: the last minute's count falls to the threshold within
        # the minute (it is counted in 10 s steps), and the switch stays on for
        # the quiet period after that.
        await trio.sleep(config.pow_quiet_s + 45)
        assert switch.adaptive_on
        await trio.sleep(15 + 2 * REFRESH_S)
        assert not switch.adaptive_on
        assert await pow.refused(None) is None
        nursery.cancel_scope.cancel()


async def test_pow_adaptive_quiet_period_restarts_while_the_flood_goes_on(
    backend: MemoryBackend, autojump_clock: trio.testing.MockClock
) -> None:
    config = gate_config(pow_mode="adaptive", pow_adaptive_per_minute=10, pow_quiet_s=120)
    switch = PowSwitch(config, backend, None)
    async with trio.open_nursery() as nursery:
        await nursery.start(switch.run)
        for _ in range(5):  # five minutes of 20 new sessions a minute
            for _ in range(20):
                switch.issued()
            await trio.sleep(60)
            assert switch.adaptive_on
        await trio.sleep(110)  # quiet, but within the quiet period
        assert switch.adaptive_on
        await trio.sleep(60 + 10 + 2 * REFRESH_S)
        assert not switch.adaptive_on
        nursery.cancel_scope.cancel()
