"""Fixtures for the multi-server tests: real servers on one real Redis."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cluster_support import ServeProcess, cluster_env
from redis_support import RedisServer


@pytest.fixture
def two_servers(redis_server: RedisServer) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    """Two ``omiro serve`` processes sharing one Redis (and one key prefix)."""
    env = cluster_env(redis_server)
    a = ServeProcess(env).start()
    try:
        b = ServeProcess(env).start()
    except BaseException:
        a.kill()
        raise
    yield a, b
    for server in (a, b):
        server.kill()
