"""Redis backend: many ``omiro serve`` processes sharing one Redis act as one service.

Every atomic step (matching, claims, leaving, the dead-server sweep, the
re-registration after a Redis restart) is one call of one Lua script,
``omiro.lua`` beside this module; its header lists the keys and what the
script refuses. A message to a session on another server is one
``PUBLISH`` to that server's channel: the one a match names (no lookup), or
the one a lookup script finds.

What can go wrong with Redis, and how it is met (docs/operations.md,
"Faults", says what users see):

* **A reply that never comes** (a frozen Redis, a lost host, a failover
  behind the same address): every call runs shielded from cancellation,
  under its own deadline (``op_timeout``), and a request that times out or
  is cancelled closes its connection (``_Connection``), so the pool never
  hands out a connection with a reply still owed; the next call opens a
  new one, which reaches whatever Redis answers at that address now. TCP
  keepalive and ``TCP_USER_TIMEOUT`` close a dead peer's sockets under
  everything else.
* **A command that runs late** (sent before the freeze, run after it): each
  script call carries its deadline in Redis's own time (estimated from the
  ``TIME`` Redis reports), and the script refuses to run after it. Every
  bus message carries the same deadline, and the receiving server drops
  one that arrives after its sender gave up on it.
* **A Redis that lost everything** (restarted empty, or a new one behind
  the address): each call names the incarnation of Redis the server knows;
  one that meets another is refused (``REBOOT``), and this server puts back
  every session, wait and match it holds (``_restore``) before any other
  call of it may run.
* **Liveness without clocks**: a server is dead for another once that other
  has beaten ``dead_beats`` times since the first one's last heartbeat; a
  frozen Redis freezes every count alike.
* **Retries**: a connection error is retried once; every script is
  idempotent (the caller chooses the match id, a leave names its request, a
  claim carries its token); a ``PUBLISH`` is never retried.
* **The pool** gives back the slot of a connection it drops (``_Pool``).
* **The bus listener** has its own small client, rebuilt on failure with a
  small capped backoff; it publishes a probe to itself every second and
  rebuilds when it hears nothing (not even its probe) for a few: a
  subscription left on a Redis that is no longer the one at the address is
  found that way. After each (re)subscribe the hub re-synchronises, since
  pub/sub is at most once.

coredis internals relied on (its major version is pinned in pyproject.toml;
``tests/unit/test_redis_internals.py`` fails loudly if they change): the
``disconnect_on_cancellation`` argument of ``BaseConnection.create_request``;
the pool's ``connection_class`` / ``connection_kwargs``; and, to mend two
ways coredis 6.9's pool loses or strands its free slots (``_Pool``,
``_SlotQueue``), the pool's ``_available_connections`` queue and its fields,
``_construct_connection``, ``__wrap_connection`` and ``_online_connections``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from importlib import resources
from typing import Any, Literal, TypeVar, cast

import anyio
import coredis
import coredis.exceptions
import msgspec
import trio
from coredis._concurrency import Queue, QueueFull
from coredis.connection import TCPConnection, UnixDomainSocketConnection
from coredis.pool import ConnectionPool
from coredis.retry import ConstantRetryPolicy, NoRetryPolicy

from omiro_trio.addresses import account_target, ban_key
from omiro_trio.backends.base import (
    Ban,
    BusHandler,
    Delivery,
    Ended,
    LocalView,
    SeatVerdict,
    SharedView,
    Stats,
)
from omiro_trio.backends.redis_records import RedisRecords
from omiro_trio.errors import BackendUnavailable, SessionElsewhere
from omiro_trio.matchmaking import (
    Match,
    Preferences,
    Waiting,
    mode_of_pool,
    pool_of,
    queue_names,
    split_common,
)

log = logging.getLogger(__name__)

TIMEOUT_S = 1.0  # default for connecting, a reply, and a free pool connection (redis.timeout_s)


def op_timeout(timeout_s: float) -> float:
    """The bound of one backend call: a pool wait, a try and one retry, each ``timeout_s``."""
    return 3 * timeout_s + 1.0


OP_TIMEOUT_S = op_timeout(TIMEOUT_S)
RETRY_DELAY_S = 0.05
DEADLINE_MARGIN_S = 0.05  # a script's deadline is this much before its caller gives up
BUS_BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)
BUS_IDLE_S = 1.0  # coredis pings an idle subscription this often
BUS_PROBE_S = 1.0  # the listener publishes a probe to itself this often...
BUS_SILENCE_PROBES = 3  # ...and rebuilds after this many probe periods without a message
RESTORE_RETRY_S = 0.5
PUBLISH_BATCH = 256  # PUBLISHes sent in one pipeline, at most
BANS_REMEMBERED = 50  # the bans of one client kept in its history (the newest)
DAY_S = 86400.0
SYNC_BATCH = 200
BAN_INDEX_VERSION = "1"
BROADCAST = "all"
PROBE = b"probe"
KEEPALIVE_IDLE_S = 5  # TCP keepalive on Redis sockets: first probe after this idle time,
KEEPALIVE_INTERVAL_S = 2  # then this often,
KEEPALIVE_COUNT = 3  # this many unanswered probes end the connection

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
# Where a reply carries Redis's clock (-1: it is the reply): each one keeps
# this server's estimate of that clock fresh, for the deadlines it sends.
_CLOCK_IN_REPLY = {"ping": -1, "heartbeat": 1, "register": 2, "adopt": 1}
_SCRIPT = resources.files("omiro_trio.backends").joinpath("omiro.lua").read_text()
_T = TypeVar("_T")


class _QuietConnectionLogs(logging.Filter):
    """coredis logs each failed connection attempt with a traceback: while Redis is
    away that is one traceback per attempt. Keep the line, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.getMessage().startswith(
            ("Connection attempt failed", "Connection closed unexpectedly")
        ):
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({exc!r})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("coredis").addFilter(_QuietConnectionLogs())


class _Connection(TCPConnection):
    """coredis's TCP connection, closed as soon as a request on it times out or is cancelled.

    A reply still owed on a connection means the connection cannot be
    trusted (a frozen or lost Redis), and every later request on it would
    wait behind that reply: so the connection goes, and the pool opens a new
    one for the next call.
    """

    def create_request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["disconnect_on_cancellation"] = True
        return super().create_request(*args, **kwargs)


class _UnixConnection(UnixDomainSocketConnection):
    """As ``_Connection``, for ``unix://`` URLs."""

    def create_request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["disconnect_on_cancellation"] = True
        return super().create_request(*args, **kwargs)


class _SlotQueue(Queue[Any]):
    """coredis's queue of free pool slots, with a ``get`` that gives up cleanly.

    coredis 6.9's ``get`` waits while holding the queue's lock and leaves its
    wake-up event behind when it gives up (a pool wait that times out): every
    later slot given back wakes that stale event instead of a live waiter, and
    each waiter holds the lock for its whole timeout. Once the pool has run
    dry once (a Redis outage), calls keep timing out with free slots in the
    queue. Here a waiter that gives up takes its event with it, passes on a
    wake-up it got but did not use, and nobody holds a lock while waiting.
    """

    async def get(self) -> Any:
        while True:
            if self._queue:
                item = self._queue.pop()
                if self._putters and not self.full():
                    self._putters.popleft().set()
                return item
            woken = anyio.Event()
            self._getters.append(woken)
            try:
                await woken.wait()
            except BaseException:
                if woken.is_set():
                    if self._queue and self._getters:
                        self._getters.popleft().set()  # a slot came for us: pass it on
                else:
                    with suppress(ValueError):
                        self._getters.remove(woken)
                raise


class _Pool(ConnectionPool[Any]):
    """coredis's pool, but no way out of it loses a slot.

    In coredis 6.9 a slot is lost (and after ``max_connections`` losses every
    call waits for a connection forever) when a dropped connection is
    released, and when getting a connection is cancelled or times out while
    a new one is being opened; and its queue of free slots stops waking
    waiters once a wait has timed out (``_SlotQueue``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._available_connections = _SlotQueue(self.max_connections)

    async def get_connection(self, **_: Any) -> Any:
        with anyio.fail_after(self.timeout):
            connection = await self._available_connections.get()
        if connection is not None and connection.reusable:
            self.statistics.connection_leased(connection)
            return connection
        # The slot is ours now: whatever happens, it goes back if no
        # connection leaves with it.
        try:
            if connection is not None:
                connection.invalidate()
            connection = await self._construct_connection()
            # Bounded by the connection's own connect and reply deadlines.
            wrap = getattr(self, "_ConnectionPool__wrap_connection")  # noqa: B009 (name-mangled)
            error = await self.task_group.start(wrap, connection)
            if error:
                raise error
        except BaseException:
            if connection is not None:
                connection.invalidate()
            with suppress(QueueFull):
                self._available_connections.append_nowait(None)
            raise
        self.statistics.connection_created(connection)
        self._online_connections.add(connection)
        self.statistics.connection_leased(connection)
        return connection

    def release(self, connection: Any) -> None:
        if connection.usable:
            super().release(connection)
            return
        self.statistics.connection_released(connection)
        with suppress(QueueFull):  # a full pool already has the slot
            self._available_connections.append_nowait(None)


def new_pool(url: str, *, max_connections: int, timeout_s: float, name: str) -> _Pool:
    """A pool of connections that close when a request times out, with TCP keepalive."""
    pool = cast(
        _Pool,
        _Pool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            connect_timeout=timeout_s,
            stream_timeout=timeout_s,
            client_name=name,
        ),
    )
    if issubclass(pool.connection_class, UnixDomainSocketConnection):
        pool.connection_class = _UnixConnection
    else:
        pool.connection_class = _Connection
        kwargs: dict[str, Any] = pool.connection_kwargs  # type: ignore[assignment]
        kwargs["socket_keepalive"] = True
        kwargs["socket_keepalive_options"] = _keepalive_options(timeout_s)
    return pool


def _keepalive_options(timeout_s: float) -> dict[int, int]:
    options = {}
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_S),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        # Data sent and not acknowledged for this long ends the connection.
        ("TCP_USER_TIMEOUT", int(op_timeout(timeout_s) * 1000)),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            options[option] = value
    return options


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
    """``[kind, id, caller, callee, mode, common-json, caller's server, callee's server]``,
    and for a match just formed the two clients."""
    fields = [_text(v) for v in raw]
    _, match_id, caller, callee, mode, common = fields[:6]
    servers = (fields[6], fields[7]) if len(fields) >= 8 else ("", "")
    clients = (fields[8], fields[9]) if len(fields) >= 10 else ("", "")
    # The common queue names (interests, and languages marked as such: matchmaking.py).
    interests, languages = split_common(msgspec.json.decode(common) or ())
    # The script knows a session's pool (its mode and age band) as its mode.
    mode = mode_of_pool(mode)
    return Match(match_id, caller, callee, mode, interests, servers, languages, clients)


def _match_fields(match: Match) -> str:
    common = msgspec.json.encode(list(match.common_names)).decode()
    caller_server, callee_server = match.servers
    return f"{match.caller}|{match.callee}|{match.mode}|{caller_server}|{callee_server}|{common}"


def _wait_fields(view: LocalView) -> str:
    if view.waiting is None:
        return ""
    interests = msgspec.json.encode(list(queue_names(view.waiting))).decode()
    ticket = -1 if view.ticket is None else view.ticket
    return f"{pool_of(view.waiting)}|{ticket}|{interests}"


@dataclasses.dataclass(slots=True)
class _Outgoing:
    """One ``PUBLISH`` waiting for the publisher: its answer, or why there is none."""

    channel: str
    payload: bytes
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    heard: int = 0
    error: BaseException | None = None


class RedisBackend(RedisRecords):
    """Shared state in Redis. See ``backends.base.Backend`` and ``omiro.lua``.

    The moderation records (reports, accounts, the audit log) are its base
    class's, ``redis_records.RedisRecords`` (``records.lua``).

    Build it with ``open_redis_backend``.

    Args:
        client: an open coredis client on ``pool`` (retries a connection error once).
        pool: its pool.
        url: where to open the bus listener's own client.
        key_prefix: every key and channel starts with it.
        interest_timeout_s, rematch_cooldown_s, block_ttl_s: the matching rules' timings.
        heartbeat_s, dead_after_s: the server registry's timings: a server
            silent for ``dead_after_s`` worth of another's heartbeats is dead.
        timeout_s: the bound of connecting, of one reply and of a wait for a free
            pool connection; one call is bounded by ``op_timeout(timeout_s)``.
        ipv6_prefix: the size of an IPv6 client, for the exact ban lookup.
        clock_offset: seconds added to Redis's clock (tests move time with it).
        report_retention_s, audit_retention_s: how long reports (with their
            transcripts) and the audit log are kept.
    """

    def __init__(
        self,
        client: coredis.Redis[bytes],
        pool: _Pool,
        *,
        url: str,
        key_prefix: str,
        interest_timeout_s: float,
        rematch_cooldown_s: float,
        block_ttl_s: float,
        heartbeat_s: float,
        dead_after_s: float,
        timeout_s: float = TIMEOUT_S,
        ipv6_prefix: int = 64,
        clock_offset: Callable[[], float] = lambda: 0.0,
        report_retention_s: float = 30 * DAY_S,
        audit_retention_s: float = 365 * DAY_S,
    ) -> None:
        super().__init__(
            client, report_retention_s=report_retention_s, audit_retention_s=audit_retention_s
        )
        self._client = client
        # The same pool, never retrying: a PUBLISH sent twice would deliver twice.
        self._once: coredis.Redis[bytes] = coredis.Redis(
            connection_pool=pool, retry_policy=NoRetryPolicy()
        )
        self._timeout_s = timeout_s
        self._op_timeout_s = op_timeout(timeout_s)
        self._url = url
        self._prefix = key_prefix
        self._interest_timeout_s = interest_timeout_s
        self._cooldown_s = rematch_cooldown_s
        self._block_ttl_s = block_ttl_s
        self._ipv6_prefix = ipv6_prefix
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.dead_beats = max(2, math.ceil(dead_after_s / heartbeat_s - 1e-9))
        self._offset = clock_offset
        self._script = client.register_script(_SCRIPT)
        self._server_id = uuid.uuid4().hex[:16]
        self._live_s = max(300.0, dead_after_s * 10)
        self._boot = ""
        self._skew: float | None = None  # Redis's time (less the offset) minus time.monotonic()
        self._restored = trio.Event()  # set while this server is in step with this Redis
        self._restore_wanted = trio.Event()
        self._beat_failed = False
        self._on_gap: Callable[[], None] = lambda: None
        self._views: Callable[[], Sequence[LocalView]] = list
        self._claims: dict[str, str] = {}  # session -> the claim token of its socket here
        self._sockets: dict[str, int] = {}  # client -> sockets reserved here (sockets_per_ip)
        self.late_dropped = 0  # bus messages that arrived after their sender gave up
        self._outgoing: list[_Outgoing] = []  # PUBLISHes for run_publisher, in order
        self._outgoing_ready = trio.Event()

    @property
    def server_id(self) -> str:
        return self._server_id

    # -- plumbing --------------------------------------------------------

    def _redis_now(self) -> float | None:
        """Redis's clock now, as last reported by Redis (None before its first answer)."""
        if self._skew is None:
            return None
        return time.monotonic() + self._skew + self._offset()

    def _learn(self, redis_now: Any, offset: float) -> None:
        """Redis said its clock (plus ``offset``) reads ``redis_now``, in a reply just received."""
        with suppress(ValueError):
            self._skew = float(_text(redis_now)) - offset - time.monotonic()

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

    async def _run(self, op: str, *args: str | int | float | bytes, restoring: bool = False) -> Any:
        """One call of the script, within this call's deadline.

        Waits while this server puts its state back after Redis lost it
        (unless ``restoring``: the calls of that work). Refusals for a stale
        estimate of Redis's clock (``LATE``) and for a Redis that lost its
        data (``REBOOT``: the state is put back first) are handled here and
        the call made again, within the same deadline.
        """
        deadline = trio.current_time() + self._op_timeout_s

        async def attempts() -> Any:
            reason = ""
            for _ in range(3):
                while not restoring and not self._restored.is_set():
                    await self._restored.wait()
                offset = self._offset()
                try:
                    reply: Any = await self._script(args=self._argv(op, args, deadline, offset))
                except coredis.exceptions.ResponseError as exc:
                    reason = str(exc)
                    if reason.startswith("LATE "):  # our idea of Redis's clock was off
                        self._learn(reason.split()[1], offset)
                    elif reason.startswith("REBOOT") and not restoring:
                        self._lost(reason)
                    elif reason.startswith("ELSEWHERE"):
                        raise SessionElsewhere(reason) from None
                    else:
                        raise
                else:
                    clock = _CLOCK_IN_REPLY.get(op)
                    if clock is not None:
                        self._learn(reply[clock] if clock >= 0 else reply, offset)
                    return reply
            raise coredis.exceptions.ConnectionError(f"{op}: refused three times ({reason})")

        return await self._guard(attempts)

    def _argv(
        self, op: str, args: Sequence[str | int | float | bytes], deadline: float, offset: float
    ) -> Any:
        redis_now = self._redis_now()
        until = ""
        if redis_now is not None:
            left = deadline - trio.current_time() - DEADLINE_MARGIN_S
            until = repr(redis_now + max(0.0, left))
        argv: list[str | bytes] = [
            op,
            self._prefix,
            repr(offset),
            self._server_id,
            repr(self._live_s),
            self._boot,
            until,
            str(self.dead_beats),
        ]
        argv.extend(a if isinstance(a, bytes) else str(a) for a in args)
        return argv

    def _lost(self, reason: str) -> None:
        """Redis is not the incarnation this server knows: put everything back first."""
        if self._restored.is_set():
            log.warning("redis lost this server's records (%s): putting them back", reason)
            self._restored = trio.Event()
            self._restore_wanted.set()

    async def ping(self) -> None:
        await self._run("ping")

    # -- sessions --------------------------------------------------------

    async def claim_session(self, session_id: str, client: str, account: str = "") -> bool:
        if session_id in self._claims:
            return False  # held here already (or its release is still owed)
        token = uuid.uuid4().hex[:16]
        self._claims[session_id] = token  # kept if the answer is lost: a release can undo it
        if not await self._run("claim", session_id, client, token, account):
            del self._claims[session_id]
            return False
        return True

    async def client_of(self, session_id: str) -> str | None:
        key = f"{self._prefix}s:{session_id}"
        raw = await self._guard(lambda: self._client.hget(key, "client"))
        return _text(raw) if raw else None

    async def account_of(self, session_id: str) -> str:
        key = f"{self._prefix}s:{session_id}"
        raw = await self._guard(lambda: self._client.hget(key, "account"))
        return _text(raw) if raw else ""

    async def release_session(self, session_id: str) -> Match | None:
        token = self._claims.get(session_id, "")
        raw = await self._run("release", session_id, self._cooldown_s, uuid.uuid4().hex, token)
        self._claims.pop(session_id, None)
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
        # The script queues by name: interests and marked languages alike; and
        # by pool as its "mode": the mode and the age band (matchmaking.pool_of).
        interests = msgspec.json.encode(list(queue_names(prefs))).decode()
        try:
            raw = await self._run(
                "join",
                session_id,
                pool_of(prefs),
                interests,
                self._interest_timeout_s,
                uuid.uuid4().hex,
                self._claims.get(session_id, ""),
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
        token = self._claims.get(session_id, "")
        raw = await self._run("widen", session_id, ticket, uuid.uuid4().hex, token)
        return _match(raw) if raw else None

    async def leave(self, session_id: str) -> Match | None:
        token = self._claims.get(session_id, "")
        raw = await self._run("leave", session_id, self._cooldown_s, uuid.uuid4().hex, token)
        return _match(raw) if raw else None

    # -- resuming (base.SharedSeats) -------------------------------------

    async def claim_seat(
        self,
        match_id: str,
        seat: Literal["caller", "callee"],
        session_id: str,
        old: tuple[str, str],
        mode: str,
        *,
        grace_s: float,
        keep_s: float,
    ) -> SeatVerdict | Match:
        raw = await self._run(
            "seat",
            match_id,
            "c" if seat == "caller" else "e",
            session_id,
            grace_s,
            keep_s,
            old[0],
            old[1],
            mode,
            uuid.uuid4().hex,
        )
        kind = _text(raw[0])
        if kind == "match":
            return _match(raw)
        return cast("SeatVerdict", kind)

    async def keep_seat(self, match_id: str, keeper: str, *, grace_s: float, keep_s: float) -> None:
        await self._run("keep_seat", match_id, keeper, grace_s, keep_s)

    async def drop_seat(self, match_id: str, session_id: str, *, keep_s: float) -> None:
        await self._run("drop_seat", match_id, session_id, keep_s)

    async def block(self, a: str, b: str) -> None:
        await self._run("block", a, b, self._block_ttl_s)

    # -- abuse control ---------------------------------------------------

    async def hit_rate_limit(self, key: str, limit: int, window_s: float) -> float | None:
        raw = await self._run("rate", key, limit, window_s)
        return float(_text(raw)) if raw else None

    def _ban_key(self, target: str) -> str:
        try:
            return ban_key(target, self._ipv6_prefix) or ""
        except ValueError:
            return ""

    async def ban_for(self, ip: str) -> Ban | None:
        try:
            asked = ipaddress.ip_network(ip.strip(), strict=False)
        except ValueError:
            return None
        raw = await self._run("ban_for", self._ban_key(ip))
        now = time.time()
        for item in raw:
            ban = msgspec.json.decode(item, type=Ban)
            if ban.until is not None and ban.until <= now:
                continue
            network = ipaddress.ip_network(ban.target, strict=False)
            if network.version == asked.version and network.overlaps(asked):
                return ban
            if self._ban_key(ban.target) and self._ban_key(ban.target) == self._ban_key(ip):
                return ban  # e.g. an IPv4-mapped address's ban, found under its IPv4 client
        return None

    async def account_ban(self, account: str) -> Ban | None:
        key = f"{self._prefix}ban:{account_target(account)}"
        raw = await self._guard(lambda: self._client.get(key))
        if not raw:
            return None
        ban = msgspec.json.decode(raw, type=Ban)
        return ban if ban.until is None or ban.until > time.time() else None

    async def add_ban(self, ban: Ban) -> None:
        until = "" if ban.until is None else str(int(ban.until * 1000))
        encoded = msgspec.json.encode(ban)
        key = self._ban_key(ban.target)
        remembered = self._report_retention_s
        await self._run("add_ban", ban.target, encoded, until, key, remembered, BANS_REMEMBERED)

    async def remove_ban(self, target: str) -> bool:
        return bool(await self._run("remove_ban", target, self._ban_key(target)))

    async def bans(self) -> list[Ban]:
        raw = await self._run("bans")
        now = time.time()
        bans = [msgspec.json.decode(item, type=Ban) for item in raw]
        return [b for b in bans if b.until is None or b.until > now]

    async def index_bans(self) -> None:
        """Index the bans kept for the exact lookup, unless they are already (at start)."""
        version = f"{BAN_INDEX_VERSION}/{self._ipv6_prefix}"
        key = f"{self._prefix}banidx"
        if _text(await self._guard(lambda: self._client.get(key)) or b"") == version:
            return
        args: list[str] = [version]
        for ban in await self.bans():
            args += [ban.target, self._ban_key(ban.target)]
        await self._run("index_bans", *args)

    async def count_reporter(self, reported_ip: str, reporter_ip: str, window_s: float) -> int:
        return int(await self._run("reporter", reported_ip, reporter_ip, window_s))

    # -- stats, delivery, registry --------------------------------------

    async def stats(self) -> Stats:
        online, waiting = await self._run("stats")
        return Stats(online=int(online), waiting=int(waiting))

    def _stamp(self, message: bytes) -> bytes:
        """``message`` with its deadline in Redis's time (0: none), for the receiver."""
        redis_now = self._redis_now()
        until = 0.0 if redis_now is None else redis_now + self._op_timeout_s
        return b"%.3f|" % until + message

    async def _publish_now(self, channel: str, payload: bytes) -> int:
        """``PUBLISH`` through ``run_publisher``; returns how many subscribers heard it."""
        item = _Outgoing(channel, payload)
        self._outgoing.append(item)
        self._outgoing_ready.set()
        await self._guard(item.done.wait)
        if item.error is not None:
            raise BackendUnavailable(f"redis: {item.error!r}") from item.error
        return item.heard

    async def run_publisher(self) -> None:
        """Send the waiting PUBLISHes, in order, many in one pipeline.

        While one pipeline is on its way the next messages gather, so under
        load a relayed frame costs a share of one round trip instead of one
        (coredis spends about 150 µs of CPU on a command sent alone, about
        15 µs on one of 32 in a pipeline). A PUBLISH is never sent twice.
        """
        while True:
            await self._outgoing_ready.wait()
            self._outgoing_ready = trio.Event()
            while self._outgoing:
                batch = self._outgoing[:PUBLISH_BATCH]
                del self._outgoing[:PUBLISH_BATCH]
                try:
                    with trio.fail_after(self._op_timeout_s):
                        async with self._once.pipeline(transaction=False) as pipe:
                            for item in batch:
                                pipe.publish(item.channel, item.payload)
                        heard = pipe.results or ()
                    for item, count in zip(batch, heard, strict=True):
                        item.heard = int(count)
                except BaseException as exc:
                    if not _is_redis_error(exc):
                        raise
                    # Not the exception itself: coredis names each command with
                    # its arguments in it, and those are users' chat lines.
                    failure = coredis.exceptions.ConnectionError(
                        f"PUBLISH failed ({type(exc).__name__})"
                    )
                    for item in batch:
                        item.error = failure
                finally:
                    for item in batch:
                        item.done.set()

    def _late(self, until: float) -> bool:
        """Whether a message whose sender gave up at ``until`` (Redis's time) is too late."""
        redis_now = self._redis_now()
        return until > 0 and redis_now is not None and redis_now > until + self._timeout_s

    async def publish(
        self,
        session_id: str,
        message: bytes,
        *,
        server: str = "",
        match_id: str = "",
        sender: str = "",
    ) -> Delivery:
        payload = self._stamp(message)
        if server and await self._publish_now(f"{self._prefix}bus:{server}", payload):
            return "delivered"
        raw = await self._run("deliver", session_id, payload, sender, match_id)
        if _text(raw[0]) == "gone":
            return "gone"
        return "delivered" if int(raw[1]) else "unheard"

    async def broadcast(self, message: bytes) -> None:
        await self._publish_now(f"{self._prefix}bus:{BROADCAST}", self._stamp(message))

    async def run_bus(
        self,
        handler: BusHandler,
        *,
        on_gap: Callable[[], None] | None = None,
        views: Callable[[], Sequence[LocalView]] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on this server's channel and the broadcast channel, until cancelled.

        Reconnects by itself; ``on_gap`` is called after every (re)subscribe
        but the first, when messages may have been lost.
        """
        if on_gap is not None:
            self._on_gap = on_gap
        if views is not None:
            self._views = views
        own = f"{self._prefix}bus:{self._server_id}"
        channels = [own, f"{self._prefix}bus:{BROADCAST}"]
        failures = 0
        started = False
        while True:
            try:
                pool = new_pool(
                    self._url,
                    max_connections=2,
                    timeout_s=self._timeout_s,  # also the keepalive ping's deadline
                    name=f"{self._prefix}bus:{self._server_id}",
                )
                client: coredis.Redis[bytes] = coredis.Redis(connection_pool=pool)
                async with client:
                    pubsub = client.pubsub(
                        retry_policy=None,
                        ignore_subscribe_messages=True,
                        max_idle_seconds=BUS_IDLE_S,
                    )
                    async with pubsub, trio.open_nursery() as probes:
                        with trio.fail_after(self._op_timeout_s):
                            await pubsub.subscribe(*channels)
                        failures = 0
                        if started:
                            log.info("bus: subscribed again; re-synchronising sessions")
                            self._on_gap()
                        else:
                            started = True
                            task_status.started()
                        probes.start_soon(self._probe, own)
                        await self._listen(pubsub, handler)
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

    async def _listen(self, pubsub: Any, handler: BusHandler) -> None:
        """Hand each message to ``handler``; raise when the subscription falls silent."""
        silence_s = BUS_PROBE_S * BUS_SILENCE_PROBES
        heard = trio.current_time()
        while True:
            message = await pubsub.get_message(timeout=BUS_PROBE_S)
            now = trio.current_time()
            if message is None or message["type"] != "message":
                if now - heard > silence_s:
                    raise coredis.exceptions.ConnectionError(
                        f"bus: nothing heard for {now - heard:.1f} s, not even our own probe"
                    )
                continue
            heard = now
            data = message["data"]
            data = data if isinstance(data, bytes) else str(data).encode()
            if data == PROBE:
                continue
            stamp, _, body = data.partition(b"|")
            try:
                until = float(stamp)
            except ValueError:
                until, body = 0.0, data
            if self._late(until):
                self.late_dropped += 1
                log.info("bus: dropped a message that came after its sender gave up")
                continue
            await handler(body)

    async def _probe(self, channel: str) -> None:
        """Publish a probe to our own channel every ``BUS_PROBE_S``: what the listener hears."""
        while True:
            with suppress(BackendUnavailable):
                await self._publish_now(channel, PROBE)
            await trio.sleep(BUS_PROBE_S)

    async def heartbeat(self) -> None:
        """Say this server is alive; after it was swept, have the hub re-synchronise.

        After a heartbeat that failed (Redis was away from this server), the
        beats before it no longer count towards taking another server for dead.
        """
        try:
            added, _ = await self._run("heartbeat", "1" if self._beat_failed else "0")
        except BackendUnavailable:
            self._beat_failed = True
            raise
        self._beat_failed = False
        if int(added):
            log.warning("this server had been taken for dead: re-registering its sessions")
            self._on_gap()

    async def run_heartbeat(self) -> None:
        while True:
            await trio.sleep(self.heartbeat_s)
            try:
                await self.heartbeat()
            except BackendUnavailable as exc:
                log.warning("heartbeat failed: %s", exc)

    async def run_restorer(self) -> None:
        """Put this server's state back whenever Redis turns out to have lost it."""
        while True:
            await self._restore_wanted.wait()
            self._restore_wanted = trio.Event()
            try:
                await self._restore()
            except BackendUnavailable as exc:
                log.warning("putting this server's records back failed: %s; trying again", exc)
                await trio.sleep(RESTORE_RETRY_S)
                self._restore_wanted.set()

    async def _restore(self) -> None:
        boot, _ = await self._run("adopt", uuid.uuid4().hex, restoring=True)
        self._boot = _text(boot)
        await self._run("heartbeat", "1", restoring=True)
        views = list(self._views())
        for start in range(0, len(views), SYNC_BATCH):
            await self._sync_batch(views[start : start + SYNC_BATCH], restore=True)
        await self._sync_sockets(restoring=True)
        self._restored.set()
        log.warning("redis lost its data: put back %d sessions of this server", len(views))
        self._on_gap()

    async def _sync_sockets(self, *, restoring: bool = False) -> None:
        # This server's socket reservations, as it counts them: restores them
        # after an empty restart, and repairs a reply lost to a timeout.
        held = [str(v) for item in self._sockets.items() for v in item]
        await self._run("sockets", *held, restoring=restoring)

    async def sync(self, views: Sequence[LocalView]) -> list[SharedView]:
        shared: list[SharedView] = []
        for start in range(0, len(views), SYNC_BATCH):
            shared += await self._sync_batch(views[start : start + SYNC_BATCH], restore=False)
        await self._sync_sockets()
        return shared

    async def _sync_batch(self, batch: Sequence[LocalView], *, restore: bool) -> list[SharedView]:
        args: list[str] = ["1" if restore else "0", "0" if restore else "1", str(self._cooldown_s)]
        for view in batch:
            token = self._claims.setdefault(view.session_id, uuid.uuid4().hex[:16])
            match = view.match
            args += [
                view.session_id,
                view.ip,
                token,
                match.match_id if match else "",
                _match_fields(match) if match else "",
                _wait_fields(view),
            ]
        raw = await self._run("sync", *args, restoring=restore)
        shared: list[SharedView] = []
        for view, item in zip(batch, raw, strict=True):
            state = _text(item[0])
            if state == "match":
                shared.append(SharedView(view.session_id, "matched", _match(item)))
            elif state == "formed":
                shared.append(SharedView(view.session_id, "formed", _match(item)))
            elif state == "wait":
                shared.append(SharedView(view.session_id, "waiting", None))
            else:
                shared.append(SharedView(view.session_id, state, None))  # type: ignore[arg-type]
        return shared

    async def sweep(self) -> list[Ended]:
        raw = await self._run("sweep", self._cooldown_s)
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
    ipv6_prefix: int = 64,
    clock_offset: Callable[[], float] = lambda: 0.0,
    server_id: str | None = None,
    replaces: str | None = None,
    report_retention_s: float = 30 * DAY_S,
    audit_retention_s: float = 365 * DAY_S,
) -> AsyncIterator[RedisBackend]:
    """Connect, register this server, heartbeat while open; unregister on exit.

    ``server_id``: this server's id in the registry (default: a random one).
    ``replaces``: a server known to be dead (the worker this one replaces):
    it is marked stopped, so the next sweep frees what it held at once.

    Raises:
        BackendUnavailable: Redis does not answer at start.
    """
    pool = new_pool(url, max_connections=pool_size, timeout_s=timeout_s, name=f"{key_prefix}omiro")
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
                pool,
                url=url,
                key_prefix=key_prefix,
                interest_timeout_s=interest_timeout_s,
                rematch_cooldown_s=rematch_cooldown_s,
                block_ttl_s=block_ttl_s,
                heartbeat_s=heartbeat_s,
                dead_after_s=dead_after_s,
                timeout_s=timeout_s,
                ipv6_prefix=ipv6_prefix,
                clock_offset=clock_offset,
                report_retention_s=report_retention_s,
                audit_retention_s=audit_retention_s,
            )
            if server_id:
                backend._server_id = server_id
            while True:
                added, boot, _ = await backend._run("register", uuid.uuid4().hex, restoring=True)
                if int(added):
                    backend._boot = _text(boot)
                    break
                backend._server_id = uuid.uuid4().hex[:16]  # an id clash: pick another
            backend._restored.set()
            if replaces:
                await backend._run("retire", replaces)
            await backend.index_bans()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(backend.run_heartbeat)
                nursery.start_soon(backend.run_restorer)
                nursery.start_soon(backend.run_publisher)
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
