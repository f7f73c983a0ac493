"""Shared fixtures: real Omiro servers on 127.0.0.1 port 0 (see support.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
from redis_support import RedisServer, running_redis
from support import Harness, StartServer, make_config

from omiro_trio.http.deadlines import DEFAULT_DEADLINES, Deadlines
from omiro_trio.server import Running, serve


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rule",
        action="append",
        default=[],
        metavar="DOC/ANCHOR",
        help="run only the tests marked as holding this rule, e.g. protocol/session-new",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With ``--rule``, keep the tests whose ``rule`` marker names one of the rules given."""
    wanted = set(config.getoption("rule"))
    if not wanted:
        return
    kept, dropped = [], []
    for item in items:
        rules = {name for mark in item.iter_markers("rule") for name in mark.args}
        (kept if rules & wanted else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
async def start_server(nursery: trio.Nursery) -> AsyncIterator[StartServer]:
    """Start servers with config overrides; each is drained and stopped after the test.

    ``deadlines=Deadlines(...)`` passes the HTTP connections' deadlines; every
    other keyword is a config override.

    Servers run in a nursery of their own so that they finish draining while
    the test's clients (in ``nursery``) are still there to answer.
    """
    stops: list[trio.Event] = []
    async with trio.open_nursery() as servers:

        async def start(deadlines: Deadlines = DEFAULT_DEADLINES, **overrides: Any) -> Harness:
            config = make_config(**overrides)
            stop = trio.Event()
            stopped = trio.Event()
            stops.append(stop)

            async def run(*, task_status: trio.TaskStatus[Running]) -> None:
                await serve(config, stop, deadlines=deadlines, task_status=task_status)
                stopped.set()

            running: Running = await servers.start(run)
            return Harness(running, nursery, stop, stopped)

        yield start
        for stop in stops:
            stop.set()


@pytest.fixture
async def server(start_server: StartServer) -> Harness:
    return await start_server()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the test session (each test uses its own key prefix)."""
    with running_redis() as server:
        yield server
