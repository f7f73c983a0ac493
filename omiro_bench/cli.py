"""``omiro bench``: measure a real ``omiro serve`` on this machine.

The command group reaches ``omiro`` through the ``omiro.commands`` entry
point (see ``omiro_trio.cli``), so the server never imports the lab.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
import msgspec

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
        default=1,
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


def _server(server_python: str | None) -> list[str]:
    return [server_python, "-m", "omiro_trio", "serve"] if server_python else []


def _print(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.format(msgspec.json.encode(result)).decode())
        return
    for key, value in result.items():
        if key not in ("options", "args"):
            click.echo(f"{key}: {msgspec.json.encode(value).decode()}")


@bench.command("relay")
@click.option("--pairs", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--idle",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Idle sockets held open during the measurement.",
)
@click.option(
    "--messages",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Frames per pair and direction in the throughput phase.",
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Unanswered frames per pair and direction in the throughput phase.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=1),
    default=1000.0,
    show_default=True,
    help="Frames per second, in all, in the latency phase.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.1),
    default=10.0,
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
    from omiro_bench.scenarios import Options, run_scenario

    options = Options(
        server_command=_server(server_python),
        procs=procs,
        pairs=pairs,
        idle=idle,
        messages=messages,
        window=window,
        rate=rate,
        seconds=seconds,
    )
    result = run_scenario("relay", options)
    result["args"] = result.pop("options")
    _print(result, as_json)


@bench.command("connect")
@click.option("--sessions", type=click.IntRange(min=2), default=2000, show_default=True)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Clients connecting at the same time, in all.",
)
@_common
def bench_connect(
    sessions: int, concurrency: int, procs: int, as_json: bool, server_python: str | None
) -> None:
    """New matched pairs a second: token, upgrade, join_queue, match_found, leave."""
    from omiro_bench.scenarios import Options, run_scenario

    options = Options(
        server_command=_server(server_python),
        procs=procs,
        sessions=sessions,
        concurrency=concurrency,
        rounds=1,
    )
    _print(run_scenario("connect", options), as_json)


@bench.command("churn")
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    default=None,
    help="Rounds to run (default 10; with --minutes, at most this many).",
)
@click.option(
    "--minutes",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Run rounds until this many minutes have passed.",
)
@click.option("--sessions", type=click.IntRange(min=2), default=2000, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--pause",
    type=click.FloatRange(min=0),
    default=1.0,
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
    from omiro_bench.scenarios import Options, run_scenario

    if rounds is None:
        rounds = MAX_CHURN_ROUNDS if minutes else 10
    options = Options(
        server_command=_server(server_python),
        procs=procs,
        sessions=sessions,
        concurrency=concurrency,
        rounds=rounds,
        pause=pause,
        minutes=minutes,
    )
    _print(run_scenario("churn", options), as_json)


@bench.command("idle")
@click.option("--sockets", type=click.IntRange(min=1), default=10000, show_default=True)
@click.option(
    "--deflate/--no-deflate",
    default=True,
    show_default=True,
    help="Offer permessage-deflate, as browsers do.",
)
@_common
def bench_idle(
    sockets: int, deflate: bool, procs: int, as_json: bool, server_python: str | None
) -> None:
    """Server RSS per idle socket."""
    from omiro_bench.scenarios import Options, run_scenario

    options = Options(
        server_command=_server(server_python), procs=procs, idle=sockets, deflate_offer=deflate
    )
    _print(run_scenario("idle", options), as_json)


@bench.command("realistic")
@click.option("--users", type=click.IntRange(min=2), default=200, show_default=True)
@click.option("--seconds", type=click.FloatRange(min=1), default=60.0, show_default=True)
@click.option(
    "--next-after",
    type=(float, float),
    default=(5.0, 60.0),
    show_default=True,
    help="Each match lasts a random time in this range (seconds).",
)
@click.option(
    "--find-max",
    is_flag=True,
    help="Step --users up (a fresh server each step of --seconds) until the relay p99 "
    "exceeds --p99-limit-ms or a process saturates; report every step.",
)
@click.option("--p99-limit-ms", type=click.FloatRange(min=0), default=50.0, show_default=True)
@click.option(
    "--step-factor",
    type=click.FloatRange(min=1, min_open=True),
    default=1.5,
    show_default=True,
    help="With --find-max: users of the next step, times this one's.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1, max=20),
    default=8,
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
    from omiro_bench.scenarios import FindMax, Options, find_max_users, run_scenario

    options = Options(
        server_command=_server(server_python),
        procs=procs,
        users=users,
        seconds=seconds,
        next_after=next_after,
    )
    if find_max:
        plan = FindMax(p99_limit_ms=p99_limit_ms, factor=step_factor, max_steps=max_steps)
        _print(find_max_users(options, plan), as_json)
        return
    _print(run_scenario("realistic", options), as_json)
