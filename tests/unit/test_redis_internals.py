"""The coredis internals the Redis backend relies on are still there.

``backends/redis.py`` reaches below coredis's documented surface in three
places; pyproject.toml pins coredis's major version for that reason. If a
release changes any of them, these fail loudly (before a Redis outage finds
out): what the backend would silently lose is named in each assertion.
"""

from __future__ import annotations

import inspect
import socket

import coredis
from coredis.connection import BaseConnection, TCPConnection, UnixDomainSocketConnection
from coredis.pool import ConnectionPool

from omiro_trio.backends.redis import (
    _Connection,
    _Pool,
    _UnixConnection,
    new_pool,
)


def test_coredis_is_the_major_version_the_backend_was_checked_on() -> None:
    assert coredis.__version__.split(".")[0] == "6"


def test_a_request_can_still_be_told_to_close_its_connection_when_cancelled() -> None:
    parameters = inspect.signature(BaseConnection.create_request).parameters
    assert "disconnect_on_cancellation" in parameters, (
        "without it, a request that times out leaves its connection in the pool, "
        "and a frozen or black-holed Redis wedges every later call"
    )
    assert issubclass(_Connection, TCPConnection)
    assert issubclass(_UnixConnection, UnixDomainSocketConnection)


def test_the_pool_still_keeps_its_free_slots_where_the_backend_returns_them() -> None:
    pool = new_pool("redis://127.0.0.1:6379/0", max_connections=3, timeout_s=1.0, name="x")
    assert isinstance(pool, _Pool)
    assert isinstance(pool, ConnectionPool)
    assert hasattr(pool, "_available_connections"), (
        "without it, a dropped connection's slot is lost, and after pool-size "
        "drops every call waits for a connection forever"
    )
    assert len(pool._available_connections) == 3  # every slot free, as None


def test_the_pool_still_builds_connections_from_its_class_and_keyword_arguments() -> None:
    pool = new_pool("redis://127.0.0.1:6379/0", max_connections=3, timeout_s=1.0, name="x")
    assert pool.connection_class is _Connection
    kwargs = pool.connection_kwargs
    assert kwargs.get("socket_keepalive") is True
    options = kwargs.get("socket_keepalive_options")
    assert isinstance(options, dict)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert options[socket.TCP_USER_TIMEOUT] > 0
    parameters = inspect.signature(TCPConnection.__init__).parameters
    assert {"socket_keepalive", "socket_keepalive_options"} <= set(parameters)
    unix = new_pool("unix:///tmp/redis.sock", max_connections=3, timeout_s=1.0, name="x")
    assert unix.connection_class is _UnixConnection
