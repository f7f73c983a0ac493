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
import trio
import trio.testing
from coredis.connection import BaseConnection, TCPConnection, UnixDomainSocketConnection
from coredis.pool import ConnectionPool

from omiro_trio.backends.redis import (
    _Connection,
    _Pool,
    _SlotQueue,
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
    assert isinstance(pool._available_connections, _SlotQueue)
    assert len(pool._available_connections) == 3  # every slot free, as None
    queue = pool._available_connections
    assert {"_queue", "_getters", "_putters"} <= set(vars(queue)), (
        "coredis's slot queue changed: _SlotQueue.get relies on its fields"
    )


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


def test_the_pool_still_opens_connections_the_way_get_connection_copies() -> None:
    """``_Pool.get_connection`` is coredis's, reordered so no slot is lost: it
    calls the same private pieces."""
    assert callable(getattr(ConnectionPool, "_ConnectionPool__wrap_connection", None))
    assert callable(getattr(ConnectionPool, "_construct_connection", None))
    source = inspect.getsource(ConnectionPool.get_connection)
    for piece in ("_available_connections", "_construct_connection", "__wrap_connection"):
        assert piece in source, f"coredis's get_connection no longer uses {piece}"
    pool = new_pool("redis://127.0.0.1:6379/0", max_connections=3, timeout_s=1.0, name="x")
    assert hasattr(pool, "_online_connections")


async def test_a_pool_wait_that_gives_up_leaves_no_stale_wakeup_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The pool's free-slot queue: after a wait timed out, the next waiter is
    still woken by the next slot given back (coredis 6.9's queue wakes the
    one that gave up instead, and the pool stops handing out connections)."""
    queue = _SlotQueue(1)
    assert await queue.get() is None  # the one slot is taken
    with trio.move_on_after(1.0) as gave_up:
        await queue.get()
    assert gave_up.cancelled_caught
    got: list[object] = []
    done = trio.Event()

    async def wait_for_a_slot() -> None:
        got.append(await queue.get())
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait_for_a_slot)
        await trio.sleep(0.1)
        queue.append_nowait("slot")
        with trio.move_on_after(1.0):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert got == ["slot"], "the waiter was never woken for the slot given back"
