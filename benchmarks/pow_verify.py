"""The server's own CPU for proof of work, without HTTP: making a challenge, checking a solution.

Times, in this process, ``ProofOfWork.challenge`` (one SHA-256 to fix the
number, canonical JSON, one HMAC) and the pure check of a solution
(``ProofOfWork._check``: decode the payload, canonical JSON, one HMAC, one
SHA-256), each ROUNDS times, best of REPEATS. The whole per-session cost
through the HTTP layer (two requests, the backend's "used" call) is
``omiro bench connect --pow`` (BENCHMARKS.md).

    .venv/bin/python benchmarks/pow_verify.py [--rounds 2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import timeit

import altcha
import trio

from omiro_trio.backends.memory import open_memory_backend
from omiro_trio.config import GateConfig
from omiro_trio.gate.pow import PowSwitch, ProofOfWork


async def measure(rounds: int, repeats: int) -> dict[str, float]:
    config = GateConfig(pow_mode="always", pow_max_number=1000)
    async with open_memory_backend(
        interest_timeout_s=5, rematch_cooldown_s=300, block_ttl_s=3600
    ) as backend:
        pow = ProofOfWork(config, os.urandom(32), backend, PowSwitch(config, backend, None))
        challenge = pow.challenge(config.pow_max_number)
        parsed = altcha.Challenge.from_dict(challenge)
        solution = altcha.solve_challenge(parsed)
        assert solution is not None
        payload = altcha.Payload(parsed, solution).to_base64()
        assert not isinstance(pow._check(payload, config.pow_max_number), tuple)
        make = min(timeit.repeat(lambda: pow.challenge(1000), number=rounds, repeat=repeats))
        check = min(timeit.repeat(lambda: pow._check(payload, 1000), number=rounds, repeat=repeats))
    return {
        "challenge_us": round(make / rounds * 1e6, 1),
        "check_us": round(check / rounds * 1e6, 1),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(trio.run(measure, args.rounds, args.repeats), indent=2))


if __name__ == "__main__":
    main()
