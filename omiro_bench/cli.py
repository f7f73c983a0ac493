"""``omiro bench``: measure a real ``omiro serve`` on this machine.

Each command turns its options into its scenario's options type and runs
it (run.py); ``--procs``, ``--server-python`` and ``--json`` are common to
all. The group reaches ``omiro`` through the ``omiro.commands`` entry point
(see ``omiro_trio.cli``), so the server never imports the lab.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click
import msgspec

from omiro_bench.churn import CHURN, CONNECT, ChurnOptions, ConnectOptions
from omiro_bench.find_max import FindMax, find_max_users
from omiro_bench.idle import IDLE, IdleOptions
from omiro_bench.realistic import REALISTIC, RealisticOptions
from omiro_bench.relay import RELAY, RelayOptions
from omiro_bench.run import RunOptions, run_scenario

MAX_CHURN_ROUNDS = 100_000
"""``omiro bench churn --minutes``: the rounds it runs at most unless ``--rounds`` says."""


@click.group()
def bench() -> None:
    """Measure a real `omiro serve` on this machine (loopback only)."""


def _common(function: Callable[..., Any]) -> Callable[..., Any]:
    """The options every scenario has: generator processes and JSON output."""
    function = click.option(
        "--procs",
        type=click.IntRange(min=1, max=64),
        default=RunOptions.procs,
        show_default=True,
        help="Load-generator processes (pinned away from the server's core).",
    )(function)
    function = click.option(
        "--server-python",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="Run the server with this Python (another build, for before/after).",
    )(function)
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")(function)


def _setup(procs: int, server_python: str | None) -> RunOptions:
    server = (server_python, "-m", "omiro_trio", "serve") if server_python else ()
    return RunOptions(procs=procs, server_command=server)


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(result)).decode())
        return
    for key, value in result.items():
        if key not in ("options", "args"):
            click.echo(f"{key}: {msgspec.json.encode(value).decode()}")


@bench.command("relay")
@click.option("--pairs", type=click.IntRange(min=1), default=RelayOptions.pairs, show_default=True)
@click.option(
    "--idle",
    type=click.IntRange(min=0),
    default=RelayOptions.idle,
    show_default=True,
    help="Idle sockets held open during the measurement.",
)
@click.option(
    "--messages",
    type=click.IntRange(min=1),
    default=RelayOptions.messages,
    show_default=True,
    help="Frames per pair and direction in the throughput phase.",
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=RelayOptions.window,
    show_default=True,
    help="Unanswered frames per pair and direction in the throughput phase.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=1),
    default=RelayOptions.rate,
    show_default=True,
    help="Frames per second, in all, in the latency phase.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.1),
    default=RelayOptions.seconds,
    show_default=True,
    help="Length of the latency phase.",
)
@_common
def bench_relay(
    pairs: int,
    idle: int,
    messages: int,
    window: int,
    rate: float,
    seconds: float,
    procs: int,
    as_json: bool,
    server_python: str | None,
) -> None:
    """Relay throughput, latency and memory per socket (see BENCHMARKS.md)."""
    options = RelayOptions(
        pairs=pairs, idle=idle, messages=messages, window=window, rate=rate, seconds=seconds
    )
    result = run_scenario(RELAY, options, _setup(procs, server_python))
    result["args"] = result.pop("options")
    _print(result, as_json)


@bench.command("connect")
@click.option(
    "--sessions", type=click.IntRange(min=2), default=ConnectOptions.sessions, show_default=True
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=ConnectOptions.concurrency,
    show_default=True,
    help="Clients connecting at the same time, in all.",
)
@click.option(
    "--pow",
    "pow",
    is_flag=True,
    help="The server asks for proof of work ([gate] pow_mode = always); each session "
    "fetches a challenge and solves it first (the generator's CPU, not the server's).",
)
@click.option(
    "--pow-max-number",
    type=click.IntRange(min=1000),
    default=ConnectOptions.pow_max_number,
    show_default=True,
    help="With --pow: the difficulty. The server's cost per session does not depend on it.",
)
@_common
def bench_connect(
    sessions: int,
    concurrency: int,
    pow: bool,
    pow_max_number: int,
    procs: int,
    as_json: bool,
    server_python: str | None,
) -> None:
    """New matched pairs a second: token, upgrade, join_queue, match_found, leave."""
    options = ConnectOptions(
        sessions=sessions, concurrency=concurrency, pow=pow, pow_max_number=pow_max_number
    )
    setup = _setup(procs, server_python)
    if pow:
        env = {"OMIRO_GATE_POW_MODE": "always", "OMIRO_GATE_POW_MAX_NUMBER": str(pow_max_number)}
        setup = dataclasses.replace(setup, server_env=env)
    _print(run_scenario(CONNECT, options, setup), as_json)


@bench.command("churn")
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=None,
    help=f"Rounds to run (default {ChurnOptions.rounds}; with --minutes, at most this many).",
)
@click.option(
    "--minutes",
    type=click.FloatRange(min=0),
    default=ChurnOptions.minutes,
    help="Run rounds until this many minutes have passed.",
)
@click.option(
    "--sessions", type=click.IntRange(min=2), default=ChurnOptions.sessions, show_default=True
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=ChurnOptions.concurrency,
    show_default=True,
)
@click.option(
    "--pause",
    type=click.FloatRange(min=0),
    default=ChurnOptions.pause,
    show_default=True,
    help="Seconds between rounds.",
)
@_common
def bench_churn(
    rounds: int | None,
    minutes: float,
    sessions: int,
    concurrency: int,
    pause: float,
    procs: int,
    as_json: bool,
    server_python: str | None,
) -> None:
    """Rounds of connect-and-leave: server RSS and sessions seen after each round.

    Each round is also printed on stderr as it ends (time, sessions seen,
    server RSS, pairs/s).
    """
    if rounds is None:
        rounds = MAX_CHURN_ROUNDS if minutes else ChurnOptions.rounds
    options = ChurnOptions(
        rounds=rounds, minutes=minutes, sessions=sessions, concurrency=concurrency, pause=pause
    )
    _print(run_scenario(CHURN, options, _setup(procs, server_python)), as_json)


@bench.command("idle")
@click.option(
    "--sockets", type=click.IntRange(min=1), default=IdleOptions.sockets, show_default=True
)
@click.option(
    "--deflate/--no-deflate",
    default=IdleOptions.deflate_offer,
    show_default=True,
    help="Offer permessage-deflate, as browsers do.",
)
@_common
def bench_idle(
    sockets: int, deflate: bool, procs: int, as_json: bool, server_python: str | None
) -> None:
    """Server RSS per idle socket."""
    options = IdleOptions(sockets=sockets, deflate_offer=deflate)
    _print(run_scenario(IDLE, options, _setup(procs, server_python)), as_json)


@bench.command("realistic")
@click.option(
    "--users", type=click.IntRange(min=2), default=RealisticOptions.users, show_default=True
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=1),
    default=RealisticOptions.seconds,
    show_default=True,
)
@click.option(
    "--next-after",
    type=(float, float),
    default=RealisticOptions.next_after,
    show_default=True,
    help="Each match lasts a random time in this range (seconds).",
)
@click.option(
    "--find-max",
    is_flag=True,
    help="Step --users up (a fresh server each step of --seconds) until the relay p99 "
    "exceeds --p99-limit-ms or a process saturates; report every step.",
)
@click.option(
    "--p99-limit-ms",
    type=click.FloatRange(min=0),
    default=FindMax.p99_limit_ms,
    show_default=True,
)
@click.option(
    "--step-factor",
    type=click.FloatRange(min=1, min_open=True),
    default=FindMax.factor,
    show_default=True,
    help="With --find-max: users of the next step, times this one's.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1, max=20),
    default=FindMax.max_steps,
    show_default=True,
    help="With --find-max: at most this many steps.",
)
@_common
def bench_realistic(
    users: int,
    seconds: float,
    next_after: tuple[float, float],
    find_max: bool,
    p99_limit_ms: float,
    step_factor: float,
    max_steps: int,
    procs: int,
    as_json: bool,
    server_python: str | None,
) -> None:
    """Users who meet, signal (offer, answer, ICE), chat at human rates and press next."""
    options = RealisticOptions(users=users, seconds=seconds, next_after=next_after)
    setup = _setup(procs, server_python)
    if find_max:
        plan = FindMax(p99_limit_ms=p99_limit_ms, factor=step_factor, max_steps=max_steps)
        _print(find_max_users(options, plan, setup), as_json)
        return
    _print(run_scenario(REALISTIC, options, setup), as_json)
