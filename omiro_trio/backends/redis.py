"""Redis backend: many ``omiro serve`` processes sharing one Redis act as one service.

Every atomic step (matching, claims, leaving, the dead-server sweep, the
re-registration after a Redis restart) is one call of one Lua script,
``omiro.lua`` beside this module; its header lists the keys. Delivery to a
session on another server is one ``PUBLISH`` (inside that script) to the
channel of the server holding it.

How the coredis hazards measured for this project are met:

* Every command runs shielded from cancellation, under its own deadline
  (``OP_TIMEOUT_S``) and coredis's stream, connect and pool timeouts, so a
  cancelled caller can never lose the answer of a script that already ran
  (a match formed is always returned to the hub that asked), and a frozen
  Redis can never hang a task. No blocking command is used.
* A connection error is retried once; every script is idempotent (the
  caller chooses the match id, a leave names its request).
* The pool returns the slot of a connection it drops (``_Pool``).
* The bus listener has its own small client, rebuilt on failure with a
  small capped backoff; after each (re)subscribe the hub is asked to
  re-synchronise, since pub/sub is at most once.
* Each server heartbeats into a registry; a server whose heartbeat is older
  than ``dead_after_s`` is swept by any other (its sessions are released and
  their partners told by the sweeping server; its ``sockets_per_ip``
  reservations are dropped). When Redis comes back empty,
  the heartbeat notices the new incarnation and the hub re-registers every
  live session, waiting entry and match (``sync``), and the server its
  socket reservations.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from importlib import resources
from typing import Any, TypeVar

import anyio
import coredis
import coredis.exceptions
import msgspec
import trio
from coredis._concurrency import QueueFull
from coredis.pool import ConnectionPool
from coredis.retry import ConstantRetryPolicy

from omiro_trio.addresses import Network
from omiro_trio.backends.base import (
    Ban,
    BusHandler,
    Ended,
    LocalView,
    ReportRecord,
    SharedView,
    Stats,
)
from omiro_trio.errors import BackendUnavailable
from omiro_trio.matchmaking import Match, Preferences, Waiting

log = logging.getLogger(__name__)

TIMEOUT_S = 1.0  # default for connecting, a reply, and a free pool connection (redis.timeout_s)


def op_timeout(timeout_s: float) -> float:
    """The bound of one backend call: a pool wait, a try and one retry, each ``timeout_s``."""
    return 3 * timeout_s + 1.0


OP_TIMEOUT_S = op_timeout(TIMEOUT_S)
RETRY_DELAY_S = 0.05
BUS_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)
BUS_IDLE_S = 1.0
MAX_REPORT_BYTES = 8 * 1024 * 1024  # the report store's bound, as the memory backend's
REPORTS_KEPT_S = 30 * 86400
SYNC_BATCH = 200
BROADCAST = "all"

# What a lost, frozen or restarted Redis raises through coredis (and anyio under it).
_REDIS_ERRORS = (
    coredis.exceptions.RedisError,
    TimeoutError,
    OSError,
    trio.TooSlowError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
)
_SCRIPT = resources.files("omiro_trio.backends").joinpath("omiro.lua").read_text()
_T = TypeVar("_T")


class _Pool(ConnectionPool[Any]):
    """coredis's pool, but a dropped (unusable) connection gives its slot back."""

    def release(self, connection: Any) -> None:
        if connection.usable:
            super().release(connection)
            return
        self.statistics.connection_released(connection)
        with suppress(QueueFull):  # a full pool already has the slot
            self._available_connections.append_nowait(None)


def _is_redis_error(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_redis_error(e) for e in exc.exceptions)
    return isinstance(exc, _REDIS_ERRORS)


def _only(exc: BaseException, kind: type[BaseException]) -> bool:
    """``exc`` is a ``kind``, or a group of nothing else (coredis's task groups wrap errors)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only(e, kind) for e in exc.exceptions)
    return isinstance(exc, kind)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _match(raw: Sequence[Any]) -> Match:
    """``[b"match", id, caller, callee, mode, common-json]`` from the script."""
    _, match_id, caller, callee, mode, common = (_text(v) for v in raw)
    interests = msgspec.json.decode(common)
    return Match(match_id, caller, callee, mode, tuple(interests) if interests else ())


def _match_fields(match: Match) -> str:
    common = msgspec.json.encode(list(match.common_interests)).decode()
    return f"{match.caller}|{match.callee}|{match.mode}|{common}"


class RedisBackend:
    """Shared state in Redis. See ``backends.base.Backend`` and ``omiro.lua``.

    Build it with ``open_redis_backend``.

    Args:
        client: an open coredis client.
        url: where to open the bus listener's own client.
        key_prefix: every key and channel starts with it.
        interest_timeout_s, rematch_cooldown_s, block_ttl_s: the matching rules' timings.
        heartbeat_s, dead_after_s: the server registry's timings.
        timeout_s: the bound of connecting, of one reply and of a wait for a free
            pool connection; one call is bounded by ``op_timeout(timeout_s)``.
        clock_offset: seconds added to Redis's clock (tests move time with it).
    """

    def __init__(
        self,
        client: coredis.Redis[bytes],
        *,
        url: str,
        key_prefix: str,
        interest_timeout_s: float,
        rematch_cooldown_s: float,
        block_ttl_s: float,
        heartbeat_s: float,
        dead_after_s: float,
        timeout_s: float = TIMEOUT_S,
        clock_offset: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._op_timeout_s = op_timeout(timeout_s)
        self._url = url
        self._prefix = key_prefix
        self._interest_timeout_s = interest_timeout_s
        self._cooldown_s = rematch_cooldown_s
        self._block_ttl_s = block_ttl_s
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self._offset = clock_offset
        self._script = client.register_script(_SCRIPT)
        self._server_id = uuid.uuid4().hex[:16]
        self._live_s = max(300.0, dead_after_s * 10)
        self._boot: str | None = None
        self._restore = False
        self._on_gap: Callable[[], None] = lambda: None
        self._networks: dict[str, Network] = {}
        self._sockets: dict[str, int] = {}  # client -> sockets reserved here (sockets_per_ip)

    @property
    def server_id(self) -> str:
        return self._server_id

    # -- plumbing --------------------------------------------------------

    async def _guard(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """Run one Redis call shielded and bounded; its failures become ``BackendUnavailable``."""
        with trio.CancelScope(shield=True):
            try:
                with trio.fail_after(self._op_timeout_s):
                    return await call()
            except BaseException as exc:
                if _is_redis_error(exc):
                    raise BackendUnavailable(f"redis: {exc!r}") from exc
                raise
        raise AssertionError("unreachable")  # pragma: no cover - mypy: the shield returns

    async def _run(self, op: str, *args: str | int | float | bytes) -> Any:
        argv: list[str | bytes] = [
            op,
            self._prefix,
            repr(self._offset()),
            self._server_id,
            repr(self._live_s),
        ]
        argv.extend(a if isinstance(a, bytes) else str(a) for a in args)
        return await self._guard(lambda: self._script(args=argv))

    async def ping(self) -> None:
        await self._guard(self._client.ping)

    # -- sessions --------------------------------------------------------

    async def claim_session(self, session_id: str, client: str) -> bool:
        return bool(await self._run("claim", session_id, client))

    async def client_of(self, session_id: str) -> str | None:
        key = f"{self._prefix}s:{session_id}"
        raw = await self._guard(lambda: self._client.hget(key, "client"))
        return _text(raw) if raw else None

    async def release_session(self, session_id: str) -> Match | None:
        raw = await self._run("release", session_id, self._cooldown_s, uuid.uuid4().hex)
        return _match(raw) if raw else None

    async def reserve_socket(self, client: str, limit: int) -> bool:
        if not await self._run("reserve", client, limit):
            return False
        self._sockets[client] = self._sockets.get(client, 0) + 1
        return True

    async def release_socket(self, client: str) -> None:
        left = self._sockets.get(client, 0) - 1
        if left > 0:
            self._sockets[client] = left
        else:
            self._sockets.pop(client, None)
        await self._run("unreserve", client)

    # -- matching --------------------------------------------------------

    async def join(self, session_id: str, prefs: Preferences) -> Match | Waiting:
        interests = msgspec.json.encode(list(prefs.interests)).decode()
        try:
            raw = await self._run(
                "join",
                session_id,
                prefs.mode,
                interests,
                self._interest_timeout_s,
                uuid.uuid4().hex,
            )
        except BackendUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, coredis.exceptions.ResponseError) and "NOTIDLE" in str(cause):
                raise ValueError(f"{session_id} is not idle") from None
            raise
        if _text(raw[0]) == "wait":
            widen_after = float(_text(raw[2]))
            return Waiting(int(_text(raw[1])), None if widen_after < 0 else widen_after)
        return _match(raw)

    async def widen(self, session_id: str, ticket: int) -> Match | None:
        raw = await self._run("widen", session_id, ticket, uuid.uuid4().hex)
        return _match(raw) if raw else None

    async def leave(self, session_id: str) -> Match | None:
        raw = await self._run("leave", session_id, self._cooldown_s, uuid.uuid4().hex)
        return _match(raw) if raw else None

    async def block(self, a: str, b: str) -> None:
        await self._run("block", a, b, self._block_ttl_s)

    # -- abuse control ---------------------------------------------------

    async def hit_rate_limit(self, key: str, limit: int, window_s: float) -> float | None:
        raw = await self._run("rate", key, limit, window_s)
        return float(_text(raw)) if raw else None

    async def _bans(self) -> list[Ban]:
        raw = await self._run("bans")
        now = time.time()
        bans = [msgspec.json.decode(item, type=Ban) for item in raw]
        return [b for b in bans if b.until is None or b.until > now]

    async def ban_for(self, ip: str) -> Ban | None:
        bans = await self._bans()
        if not bans:
            return None
        try:
            asked = ipaddress.ip_network(ip.strip(), strict=False)
        except ValueError:
            return None
        for ban in bans:
            network = self._networks.get(ban.target)
            if network is None:
                network = ipaddress.ip_network(ban.target, strict=False)
                if len(self._networks) > 10_000:
                    self._networks.clear()
                self._networks[ban.target] = network
            if network.version == asked.version and network.overlaps(asked):
                return ban
        return None

    async def add_ban(self, ban: Ban) -> None:
        until = "" if ban.until is None else str(int(ban.until * 1000))
        await self._run("add_ban", ban.target, msgspec.json.encode(ban), until)

    async def remove_ban(self, target: str) -> bool:
        return bool(await self._run("remove_ban", target))

    async def bans(self) -> list[Ban]:
        return await self._bans()

    async def record_report(self, report: ReportRecord) -> int:
        encoded = msgspec.json.encode(report)
        size = report.size_bytes()
        return int(await self._run("report", encoded, size, MAX_REPORT_BYTES, REPORTS_KEPT_S))

    async def reports(self, limit: int, before: int | None = None) -> list[ReportRecord]:
        raw = await self._run("reports", limit, "" if before is None else before)
        return [
            dataclasses.replace(msgspec.json.decode(encoded, type=ReportRecord), id=int(ident))
            for ident, encoded in zip(raw[::2], raw[1::2], strict=True)
        ]

    async def count_reporter(self, reported_ip: str, reporter_ip: str, window_s: float) -> int:
        return int(await self._run("reporter", reported_ip, reporter_ip, window_s))

    # -- stats, delivery, registry --------------------------------------

    async def stats(self) -> Stats:
        online, waiting = await self._run("stats", self.dead_after_s)
        return Stats(online=int(online), waiting=int(waiting))

    async def publish(self, session_id: str, message: bytes) -> bool:
        return bool(await self._run("publish", session_id, message))

    async def broadcast(self, message: bytes) -> None:
        channel = f"{self._prefix}bus:{BROADCAST}"
        await self._guard(lambda: self._client.publish(channel, message))

    async def run_bus(
        self,
        handler: BusHandler,
        *,
        on_gap: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on this server's channel and the broadcast channel, until cancelled.

        Reconnects by itself; ``on_gap`` is called after every (re)subscribe
        but the first, when messages may have been lost.
        """
        if on_gap is not None:
            self._on_gap = on_gap
        channels = [f"{self._prefix}bus:{self._server_id}", f"{self._prefix}bus:{BROADCAST}"]
        failures = 0
        started = False
        while True:
            try:
                client = coredis.Redis.from_url(
                    self._url,
                    connect_timeout=self._timeout_s,
                    stream_timeout=None,  # a subscriber waits; the keepalive ping finds a freeze
                    max_connections=2,
                    pool_timeout=self._timeout_s,
                )
                async with client:
                    pubsub = client.pubsub(
                        retry_policy=None,
                        ignore_subscribe_messages=True,
                        max_idle_seconds=BUS_IDLE_S,
                    )
                    async with pubsub:
                        with trio.fail_after(self._op_timeout_s):
                            await pubsub.subscribe(*channels)
                        failures = 0
                        if started:
                            log.info("bus: subscribed again; re-synchronising sessions")
                            self._on_gap()
                        else:
                            started = True
                            task_status.started()
                        async for message in pubsub:
                            if message["type"] == "message":
                                data = message["data"]
                                await handler(
                                    data if isinstance(data, bytes) else str(data).encode()
                                )
                raise coredis.exceptions.ConnectionError("subscription ended")
            except BaseException as exc:
                if isinstance(exc, BaseExceptionGroup):
                    # Cancelled while coredis cleans up: only the cancellation matters.
                    cancelled, _ = exc.split(trio.Cancelled)
                    if cancelled is not None:
                        raise cancelled from None
                if not _is_redis_error(exc):
                    raise
                delay = BUS_BACKOFF_S[min(failures, len(BUS_BACKOFF_S) - 1)]
                failures += 1
                log.warning("bus: %r; listening again in %.2f s", exc, delay)
                await trio.sleep(delay)

    async def heartbeat(self) -> None:
        """Say this server is alive; notice a Redis that lost its data."""
        added, boot = await self._run("heartbeat", uuid.uuid4().hex)
        boot = _text(boot)
        if self._boot is not None and (boot != self._boot or added):
            log.warning("redis lost this server's records: re-registering its sessions")
            self._restore = boot != self._boot
            self._on_gap()
        self._boot = boot

    async def run_heartbeat(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_s)
            try:
                await self.heartbeat()
            except BackendUnavailable as exc:
                log.warning("heartbeat failed: %s", exc)

    async def sync(self, views: Sequence[LocalView]) -> list[SharedView]:
        restore = self._restore
        shared: list[SharedView] = []
        for start in range(0, len(views), SYNC_BATCH):
            batch = views[start : start + SYNC_BATCH]
            args: list[str] = [str(self.dead_after_s), "1" if restore else "0"]
            for view in batch:
                match = view.match
                args += [
                    view.session_id,
                    view.ip,
                    match.match_id if match else "",
                    _match_fields(match) if match else "",
                ]
            raw = await self._run("sync", *args)
            for view, item in zip(batch, raw, strict=True):
                state = _text(item[0])
                if state == "match":
                    shared.append(SharedView(view.session_id, "matched", _match(item)))
                elif state == "wait":
                    shared.append(SharedView(view.session_id, "waiting", None))
                else:
                    shared.append(SharedView(view.session_id, state, None))  # type: ignore[arg-type]
        # This server's socket reservations, as it counts them: restores them
        # after an empty restart, and repairs a reply lost to a timeout.
        held = [str(v) for item in self._sockets.items() for v in item]
        await self._run("sockets", *held)
        if restore:
            self._restore = False
        return shared

    async def sweep(self) -> list[Ended]:
        raw = await self._run("sweep", self.dead_after_s, self._cooldown_s)
        return [Ended(_text(item[0]), _match(["match", *item[1:]])) for item in raw]

    async def unregister(self) -> None:
        """Leave the registry: the next sweep, by any server, frees what is left of ours."""
        await self._run("unregister")


@asynccontextmanager
async def open_redis_backend(
    *,
    url: str,
    key_prefix: str,
    pool_size: int,
    interest_timeout_s: float,
    rematch_cooldown_s: float,
    block_ttl_s: float,
    heartbeat_s: float = 2.0,
    dead_after_s: float = 6.0,
    timeout_s: float = TIMEOUT_S,
    clock_offset: Callable[[], float] = lambda: 0.0,
) -> AsyncIterator[RedisBackend]:
    """Connect, register this server, heartbeat while open; unregister on exit.

    Raises:
        BackendUnavailable: Redis does not answer at start.
    """
    pool = _Pool.from_url(
        url,
        max_connections=pool_size,
        timeout=timeout_s,
        connect_timeout=timeout_s,
        stream_timeout=timeout_s,
    )
    client: coredis.Redis[bytes] = coredis.Redis(
        connection_pool=pool,
        retry_policy=ConstantRetryPolicy(
            (coredis.exceptions.ConnectionError,), retries=1, delay=RETRY_DELAY_S
        ),
    )
    try:
        async with client:
            backend = RedisBackend(
                client,
                url=url,
                key_prefix=key_prefix,
                interest_timeout_s=interest_timeout_s,
                rematch_cooldown_s=rematch_cooldown_s,
                block_ttl_s=block_ttl_s,
                heartbeat_s=heartbeat_s,
                dead_after_s=dead_after_s,
                timeout_s=timeout_s,
                clock_offset=clock_offset,
            )
            while not await backend._run("register"):  # an id clash: pick another
                backend._server_id = uuid.uuid4().hex[:16]
            await backend.heartbeat()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(backend.run_heartbeat)
                try:
                    yield backend
                finally:
                    nursery.cancel_scope.cancel()
                    with trio.move_on_after(op_timeout(timeout_s)) as cleanup:
                        cleanup.shield = True
                        with suppress(BackendUnavailable):
                            await backend.unregister()
    except BaseException as exc:
        if _is_redis_error(exc) or _only(exc, BackendUnavailable):
            raise BackendUnavailable(f"redis: {exc!r}") from exc
        raise
