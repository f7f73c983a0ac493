"""``omiro bench connect`` and ``omiro bench churn``: whole sessions, one after another.

A session is a token, the upgrade, ``join_queue`` and ``match_found``, then
the socket closes at once (``client.LeanSession``). ``connect`` measures
one round of ``sessions`` sessions, ``concurrency`` at a time: new matched
pairs a second. ``churn`` runs rounds of them, with a pause between rounds,
and watches the server's RSS round after round.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass

import trio

from omiro_bench.client import IO_TIMEOUT_S, LeanSession
from omiro_bench.scenario import LoadGenerator, Report, Sample, Scenario

CONNECT_SETTLE_S = 1.0
"""``connect``: the wait after its round, in the phase, while the sockets close."""


@dataclass(frozen=True)
class ChurnOptions:
    """``omiro bench churn``'s knobs.

    Attributes:
        rounds: rounds to run (with ``minutes``, at most this many).
        minutes: when not 0, no round starts after this many minutes.
        sessions: sessions a round, in all.
        concurrency: users connecting at the same time, in all.
        pause: seconds between rounds (in the round's phase, after its sessions).
        pow: each session first solves a proof-of-work challenge (the server
            asks for it: ``omiro bench connect --pow``).
    """

    rounds: int = 10
    minutes: float = 0.0
    sessions: int = 2000
    concurrency: int = 100
    pause: float = 1.0
    pow: bool = False


@dataclass(frozen=True)
class ConnectOptions:
    """``omiro bench connect``'s knobs: one round of ``sessions``, ``concurrency`` at a time."""

    sessions: int = 2000
    concurrency: int = 100
    pow: bool = False  # each session solves a proof-of-work challenge first
    pow_max_number: int = 1000  # its difficulty (the server's cost does not depend on it)

    def as_churn(self) -> ChurnOptions:
        return ChurnOptions(
            rounds=1,
            sessions=self.sessions,
            concurrency=self.concurrency,
            pause=CONNECT_SETTLE_S,
            pow=self.pow,
        )


async def _round(
    sessions: int, concurrency: int, generator: LoadGenerator, *, pow: bool = False
) -> Report:
    """``sessions`` sessions, ``concurrency`` users at a time, each user's one after another.

    The lean client is used (``LeanSession``): the generator must cost less
    per session than the server it measures.
    """
    matched = 0
    failures = 0
    todo = sessions
    session = LeanSession(generator.host, generator.port, pow=pow)

    async def one_user() -> None:
        nonlocal matched, failures, todo
        while todo > 0:
            todo -= 1
            try:
                with trio.fail_after(IO_TIMEOUT_S):
                    await session.run()
                matched += 1
            except (RuntimeError, OSError, trio.TooSlowError):
                failures += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(max(1, concurrency)):
            nursery.start_soon(one_user)
    return {"matched": matched, "failures": failures, "seconds": time.perf_counter() - start}


async def generate(options: ChurnOptions, generator: LoadGenerator) -> Report:
    rounds = []
    for _ in range(options.rounds):
        await generator.start_phase()
        sessions = generator.share(options.sessions)
        concurrency = generator.share(options.concurrency)
        rounds.append(await _round(sessions, concurrency, generator, pow=options.pow))
        await trio.sleep(options.pause)  # sockets close; the server settles
        await generator.end_phase()
        if generator.stopped():
            break
    return {"rounds": rounds}


def summarize(options: ChurnOptions, samples: list[Sample], workers: list[Report]) -> Report:
    rows = []
    seen = 0
    for n, sample in enumerate(samples):
        matched = sum(w["rounds"][n]["matched"] for w in workers)
        failures = sum(w["rounds"][n]["failures"] for w in workers)
        busy = max(w["rounds"][n]["seconds"] for w in workers)
        seen += matched + failures
        rows.append(
            {
                "round": n + 1,
                "at_s": round(sample["at_s"], 1),
                "sessions_matched": matched,
                "failures": failures,
                "sessions_seen": seen,
                "pairs_per_s": round(matched / 2 / busy, 1),
                "server_cpu_s": round(sample["server_cpu_s"], 2),
                # CPU per session (token, upgrade, join, match, leave) on each side:
                # the generator must cost less than the server to measure it.
                "server_cpu_ms_per_session": _per_session(sample["server_cpu_s"], matched),
                "generator_cpu_ms_per_session": _per_session(sample["generator_cpu_s"], matched),
                "server_rss_kib": sample["server_rss_after_kib"],
                "online_after": sample.get("stats_online", -1),
            }
        )
    return {"rounds": rows, "pairs_per_s_median": statistics.median(r["pairs_per_s"] for r in rows)}


def _per_session(cpu_s: float, sessions: int) -> float:
    return round(cpu_s / sessions * 1000, 3) if sessions else 0.0


def _rounds(options: ChurnOptions) -> int:
    return options.rounds


def after_round(options: ChurnOptions, samples: list[Sample]) -> bool:
    """Print the round that ended on stderr; True once ``minutes`` have passed."""
    sample = samples[-1]
    busy = max(sample["seconds"] - options.pause, 1e-9)
    print(
        f"round {len(samples)}: {sample['at_s']:.0f} s, "
        f"sessions seen {len(samples) * options.sessions}, "
        f"server RSS {sample['server_rss_after_kib'] / 1024:.1f} MiB, "
        f"about {options.sessions / 2 / busy:.0f} pairs/s, "
        f"server CPU {sample['server_cpu_s']:.2f} s, "
        f"online after {sample.get('stats_online', -1):.0f}",
        file=sys.stderr,
        flush=True,
    )
    return bool(options.minutes) and sample["at_s"] >= options.minutes * 60


async def _generate_connect(options: ConnectOptions, generator: LoadGenerator) -> Report:
    return await generate(options.as_churn(), generator)


def _summarize_connect(
    options: ConnectOptions, samples: list[Sample], workers: list[Report]
) -> Report:
    return summarize(options.as_churn(), samples, workers)


def _one_round(options: ConnectOptions) -> int:
    return 1


CHURN = Scenario(
    name="churn", generate=generate, phases=_rounds, summarize=summarize, after_phase=after_round
)
CONNECT = Scenario(
    name="connect", generate=_generate_connect, phases=_one_round, summarize=_summarize_connect
)
