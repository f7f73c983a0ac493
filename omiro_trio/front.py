"""The front door: accepting connections, and the boundary each one is served within.

Its rules, each structural:

* **Crash isolation.** ``FrontDoor.handle`` serves one TCP connection and
  is its boundary: whatever serves the connection (the HTTP layer,
  hypercorn and its task group, the WebSocket session and its nursery)
  runs inside that call, so whatever it raises ends that connection and
  nothing else. Expected network failures (resets, broken pipes,
  deadlines, the peer closing) end it silently; anything else is logged
  once, with its traceback, and counted in
  ``omiro_connection_failures_total``. ``trio.Cancelled`` is never caught:
  ``except*`` takes only ``Exception``s out of a group, so a cancellation
  mixed with an error still propagates.
* **Limits from the first byte.** The peer address is read once, on accept
  (a socket reset before that has no address, and is just closed); at most
  ``server.connections_per_ip`` connections per client (address group) are
  open at once; more are closed without a byte read. A trusted proxy's
  connections are not capped: they carry many clients.
* **Accepting.** Connections already waiting are accepted in one wake-up
  (a checkpoint every ``ACCEPT_BATCH``), with the peer address ``accept``
  gives. Running out of file descriptors does not end the accept loop.

What a connection's bytes mean is the HTTP layer's (``omiro_trio/http/``,
``docs/decisions/0004-http-layer.md``): the door hands it each accepted
stream, with the peer's address and address group.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from functools import lru_cache, partial

import h11
import trio

from omiro_trio.addresses import Network, address_group, in_networks
from omiro_trio.metrics import Metrics

log = logging.getLogger(__name__)

ACCEPT_RETRY_S = 0.1  # after EMFILE and the like: let connections end, then accept again
ACCEPT_BATCH = 16  # connections accepted in a row before the loop yields
GROUPS_KEPT = 65536  # peer addresses whose address group is remembered

# A pure function of its arguments, asked again for every connection of a client.
_address_group = lru_cache(maxsize=GROUPS_KEPT)(address_group)

# As trio's SocketListener: a closed listener, and a connection that failed
# before accept returned it (nothing to serve, nothing to report).
_CLOSED_ERRNOS = frozenset({errno.EBADF})
_IGNORED_ACCEPT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EPERM",
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "ENOSR",
        "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT",
        "ETIMEDOUT",
        "ECONNRESET",
    )
    if hasattr(errno, name)
)

EXPECTED_FAILURES: tuple[type[BaseException], ...] = (
    OSError,  # resets, ENOTCONN, EPIPE
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,  # a deadline of ours
    h11.ProtocolError,  # a client that does not speak HTTP
)
"""What a connection may die of without it being our bug: ended silently."""

ConnectionServer = Callable[[trio.SocketStream, str, str | None], Awaitable[None]]
"""Serves one accepted connection (``HttpServer.serve``): the stream, the peer's
address, and its address group (None for a trusted proxy's). The door closes
the socket once it returns."""

__all__ = ["ConnectionCounter", "FrontDoor"]


class ConnectionCounter:
    """Open TCP connections per client (address group), capped."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._open: dict[str, int] = {}

    def take(self, client: str) -> bool:
        count = self._open.get(client, 0)
        if count >= self._limit:
            return False
        self._open[client] = count + 1
        return True

    def give_back(self, client: str) -> None:
        count = self._open.get(client, 0) - 1
        if count > 0:
            self._open[client] = count
        else:
            self._open.pop(client, None)


class FrontDoor:
    """Accepts connections on the public listeners; serves each within its boundary.

    Args:
        serve: serves one accepted connection (the HTTP layer's ``HttpServer.serve``).
        metrics: where connection failures and shed connections are counted.
        connections_per_ip: ``server.connections_per_ip``.
        ipv6_prefix: ``server.ipv6_prefix``.
        trusted_proxies: connections from these are not capped per address.
    """

    def __init__(
        self,
        serve: ConnectionServer,
        *,
        metrics: Metrics,
        connections_per_ip: int,
        ipv6_prefix: int,
        trusted_proxies: tuple[Network, ...] = (),
    ) -> None:
        self._serve = serve
        self._metrics = metrics
        self._ipv6_prefix = ipv6_prefix
        self._trusted_proxies = trusted_proxies
        self.connections = ConnectionCounter(connections_per_ip)

    async def handle(self, stream: trio.SocketStream, peer: str | None = None) -> None:
        """Serve one accepted connection; never raises anything but cancellation.

        ``peer`` is the remote address, as ``accept`` gave it (read from the
        socket when not given).
        """
        try:
            if peer is None:
                try:
                    peer = str(stream.socket.getpeername()[0])
                except OSError:
                    return  # reset before we looked: nobody to serve
            if self._trusted_proxies and in_networks(peer, self._trusted_proxies):
                # A proxy carries many clients: they are told apart (and
                # limited) by their forwarded address, once a request is read.
                client = None
            else:
                client = _address_group(peer, self._ipv6_prefix)
                if not self.connections.take(client):
                    self._metrics.connections_shed.inc()
                    return
            try:
                await self._serve(stream, peer, client)
            finally:
                if client is not None:
                    self.connections.give_back(client)
        except* EXPECTED_FAILURES:
            pass
        except* Exception as failure:
            self._metrics.connection_failures.inc()
            log.error("a connection failed; it was closed", exc_info=failure)
        finally:
            # What ``stream.aclose()`` does, minus its checkpoint: no shield needed.
            stream.socket.close()

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        handler_nursery: trio.Nursery,
    ) -> None:
        """Accept connections until cancelled; handlers run in ``handler_nursery``.

        Running out of file descriptors (or memory for a socket) does not end
        the accept loop: it waits a moment, while connections end, and
        accepts again.
        """
        async with trio.open_nursery() as nursery:
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener, handler_nursery)

    async def _accept_loop(self, listener: trio.SocketListener, handlers: trio.Nursery) -> None:
        # The listening descriptor, for non-blocking accepts without trio's
        # wrapper (two scheduler round trips each): every connection already
        # waiting is taken in one wake-up. Detached, never closed: the
        # listener owns the descriptor.
        raw = socket.socket(fileno=listener.socket.fileno())
        try:
            raw.setblocking(False)
            await self._accept_all(raw, handlers)
        finally:
            raw.detach()

    async def _accept_all(self, raw: socket.socket, handlers: trio.Nursery) -> None:
        failing = False  # one warning per episode, not one per retry
        taken = 0
        while True:
            try:
                sock, address = raw.accept()
            except BlockingIOError:
                taken = 0
                await trio.lowlevel.wait_readable(raw)  # (ClosedResourceError once closed)
                continue
            except OSError as exc:
                if exc.errno in _CLOSED_ERRNOS:
                    raise trio.ClosedResourceError from None
                if exc.errno in _IGNORED_ACCEPT_ERRNOS:
                    continue  # that connection failed before it was ours
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                self._metrics.accept_errors.inc()
                if not failing:
                    log.warning(
                        "cannot accept connections (%s); retrying every %.1f s",
                        exc.strerror,
                        ACCEPT_RETRY_S,
                    )
                    failing = True
                await trio.sleep(ACCEPT_RETRY_S)
                continue
            if failing:
                log.info("accepting connections again")
                failing = False
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            peer = str(address[0]) if isinstance(address, tuple) else None
            handlers.start_soon(partial(FrontDoor.handle, self), stream, peer)
            taken += 1
            if taken % ACCEPT_BATCH == 0:
                await trio.lowlevel.checkpoint()  # the connections taken so far start
