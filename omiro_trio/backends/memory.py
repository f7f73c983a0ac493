"""In-process backend: the default, for one server.

Every method finishes without a checkpoint, so each is atomic with respect
to every other task of the process: that is what makes ``join`` "one
lock-free step". Durations use trio's clock (so tests can use
``autojump_clock``); ban and report times are unix time.

Everything timed is kept in order of expiry, so ``sweep`` visits only what
expired, never every entry: cooldowns and blocks in the matchmaker's
generations (dropped whole); rate-limit windows and reporter marks in
deques in the order they end, checked against the entry still in force when
they come up (an entry renewed since is left alone); timed bans in a heap.
The sweep visits at most ``SWEEP_BUDGET`` of those records per call and
leaves the rest to the next one; an expired entry acts as absent whether
or not a sweep removed it.
"""

from __future__ import annotations

import dataclasses
import heapq
import ipaddress
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import trio

from omiro_trio.addresses import Network, account_target, ban_key, banned_account
from omiro_trio.backends.base import (
    Ban,
    BusHandler,
    Delivery,
    Ended,
    LocalView,
    SharedView,
    Stats,
)
from omiro_trio.backends.memory_records import MAX_REPORT_BYTES, MemoryRecords
from omiro_trio.matchmaking import Match, Matchmaker, Preferences, Waiting

DAY_S = 86400.0

SWEEP_BUDGET = 100_000
"""The most expiry records (windows, reporter marks, bans) one ``sweep`` visits."""


class MemoryBackend(MemoryRecords):
    """Shared state kept in this process. See ``backends.base.Backend``.

    The moderation records (reports, accounts, the audit log) are its base
    class's, ``memory_records.MemoryRecords``.

    Args:
        interest_timeout_s, rematch_cooldown_s: the matching rules' timings.
        block_ttl_s: how long a block from a report lasts.
        monotonic: the clock for durations (default: trio's).
        wall: unix time, for bans and reports.
        new_match_id: makes a fresh, unique match id.
        max_report_bytes: the report store's bound (oldest dropped first).
        ipv6_prefix: the size of an IPv6 client (``addresses.address_group``),
            for the exact ban lookup.
        report_retention_s, audit_retention_s: how long reports (with their
            transcripts) and the audit log are kept.
    """

    def __init__(
        self,
        *,
        interest_timeout_s: float,
        rematch_cooldown_s: float,
        block_ttl_s: float,
        monotonic: Callable[[], float] = trio.current_time,
        wall: Callable[[], float] = time.time,
        new_match_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        max_report_bytes: int = MAX_REPORT_BYTES,
        ipv6_prefix: int = 64,
        report_retention_s: float = 30 * DAY_S,
        audit_retention_s: float = 365 * DAY_S,
    ) -> None:
        super().__init__(
            wall=wall,
            max_report_bytes=max_report_bytes,
            report_retention_s=report_retention_s,
            audit_retention_s=audit_retention_s,
        )
        self._now = monotonic
        self._ipv6_prefix = ipv6_prefix
        self._mm = Matchmaker(
            interest_timeout_s=interest_timeout_s,
            rematch_cooldown_s=rematch_cooldown_s,
            block_ttl_s=block_ttl_s,
            new_match_id=new_match_id,
        )
        self._live: dict[str, str] = {}  # session -> client
        self._accounts: dict[str, str] = {}  # live session -> account key (if it has one)
        self._sockets: dict[str, int] = {}  # client -> open sockets reserved
        self._windows: dict[str, _Window] = {}  # key -> its current window
        # Per window length, the windows in the order they started: so in order of ending.
        self._window_ends: dict[float, deque[_Window]] = {}
        # target -> ban, its network (None: a ban of an account, found by its target)
        self._bans: dict[str, tuple[Ban, Network | None]] = {}
        # How a check finds them: by the client a ban covers whole (one
        # lookup), and the short list of wider networks (compared one by one).
        self._ban_index: dict[str, set[str]] = {}  # client -> targets covering it whole
        self._network_bans: dict[str, Network] = {}  # target -> network
        self._reporters: dict[str, dict[str, float]] = {}  # reported ip -> reporter ip -> when
        self._reporter_marks: deque[tuple[float, str, str]] = deque()  # (when, reported, reporter)
        self._reporter_window_s = 0.0
        self._ban_ends: list[tuple[float, str]] = []  # heap of (until, target) of timed bans
        self._server_id = "local"

    @property
    def server_id(self) -> str:
        return self._server_id

    @property
    def matchmaker(self) -> Matchmaker:
        """The matching state, for tests and stats."""
        return self._mm

    async def ping(self) -> None:
        return None

    async def claim_session(self, session_id: str, client: str, account: str = "") -> bool:
        if session_id in self._live:
            return False
        self._live[session_id] = client
        if account:
            self._accounts[session_id] = account
        self._mm.set_client(session_id, client)
        return True

    async def client_of(self, session_id: str) -> str | None:
        return self._live.get(session_id)

    async def account_of(self, session_id: str) -> str:
        return self._accounts.get(session_id, "")

    async def release_session(self, session_id: str) -> Match | None:
        self._live.pop(session_id, None)
        self._accounts.pop(session_id, None)
        ended = self._mm.leave(session_id, self._now())
        self._mm.forget_client(session_id)
        return ended

    async def reserve_socket(self, client: str, limit: int) -> bool:
        taken = self._sockets.get(client, 0)
        if taken >= limit:
            return False
        self._sockets[client] = taken + 1
        return True

    async def release_socket(self, client: str) -> None:
        left = self._sockets.get(client, 0) - 1
        if left > 0:
            self._sockets[client] = left
        else:
            self._sockets.pop(client, None)

    def sockets_from(self, client: str) -> int:
        """Sockets reserved for ``client`` (being upgraded, or open), for tests."""
        return self._sockets.get(client, 0)

    async def join(self, session_id: str, prefs: Preferences) -> Match | Waiting:
        return self._mm.join(session_id, prefs, self._now())

    async def widen(self, session_id: str, ticket: int) -> Match | None:
        return self._mm.widen(session_id, ticket, self._now())

    async def leave(self, session_id: str) -> Match | None:
        return self._mm.leave(session_id, self._now())

    async def block(self, a: str, b: str) -> None:
        self._mm.block(a, b, self._now())

    async def hit_rate_limit(self, key: str, limit: int, window_s: float) -> float | None:
        now = self._now()
        window = self._windows.get(key)
        if window is None or now - window.start >= window.length:
            window = _Window(key, now, 0, window_s)
            self._windows[key] = window
            ends = self._window_ends.get(window_s)
            if ends is None:  # (not setdefault: that would build a deque per call)
                ends = self._window_ends[window_s] = deque()
            ends.append(window)
        if window.count >= limit:
            return max(0.0, window.start + window.length - now)
        window.count += 1
        return None

    async def ban_for(self, ip: str) -> Ban | None:
        if not self._bans:
            return None
        try:
            asked = ipaddress.ip_network(ip.strip(), strict=False)
            key = ban_key(ip, self._ipv6_prefix)
        except ValueError:
            return None
        now = self._wall()
        for target in self._ban_index.get(key, ()) if key is not None else ():
            ban = self._bans[target][0]
            if ban.until is None or ban.until > now:
                return ban
        for target, network in self._network_bans.items():
            ban = self._bans[target][0]
            if (ban.until is None or ban.until > now) and _overlaps(asked, network):
                return ban
        return None

    async def account_ban(self, account: str) -> Ban | None:
        kept = self._bans.get(account_target(account))
        if kept is None or (kept[0].until is not None and kept[0].until <= self._wall()):
            return None
        return kept[0]

    async def add_ban(self, ban: Ban) -> None:
        self._forget_ban(ban.target)  # re-adding moves it to the newest
        key = ban_key(ban.target, self._ipv6_prefix)
        if banned_account(ban.target) is not None:
            self._bans[ban.target] = (ban, None)  # looked up by its target: no index
            if ban.until is not None:
                heapq.heappush(self._ban_ends, (ban.until, ban.target))
            self._note_ban(ban.target, ban)
            return
        network = ipaddress.ip_network(ban.target, strict=False)
        self._bans[ban.target] = (ban, network)
        if key is None:
            self._network_bans[ban.target] = network
        else:
            self._ban_index.setdefault(key, set()).add(ban.target)
        if ban.until is not None:
            heapq.heappush(self._ban_ends, (ban.until, ban.target))
        self._note_ban(key if key is not None else ban.target, ban)

    async def remove_ban(self, target: str) -> bool:
        return self._forget_ban(target)

    def _forget_ban(self, target: str) -> bool:
        if self._bans.pop(target, None) is None:
            return False
        self._network_bans.pop(target, None)
        key = ban_key(target, self._ipv6_prefix)
        if key is not None:
            targets = self._ban_index.get(key)
            if targets is not None:
                targets.discard(target)
                if not targets:
                    del self._ban_index[key]
        return True

    async def bans(self) -> list[Ban]:
        now = self._wall()
        live = [b for b, _ in self._bans.values() if b.until is None or b.until > now]
        return live[::-1]

    async def count_reporter(self, reported_ip: str, reporter_ip: str, window_s: float) -> int:
        now = self._now()
        self._reporter_window_s = max(self._reporter_window_s, window_s)
        seen = self._reporters.setdefault(reported_ip, {})
        seen[reporter_ip] = now
        self._reporter_marks.append((now, reported_ip, reporter_ip))
        return sum(1 for at in seen.values() if now - at < window_s)

    async def stats(self) -> Stats:
        return Stats(online=len(self._live), waiting=self._mm.waiting_count())

    async def publish(
        self,
        session_id: str,
        message: bytes,
        *,
        server: str = "",
        match_id: str = "",
        sender: str = "",
    ) -> Delivery:
        # One server: every live session is local, and the hub delivers to
        # local sessions itself. A session not there is gone.
        return "gone"

    async def broadcast(self, message: bytes) -> None:
        return None  # no other server

    async def run_bus(
        self,
        handler: BusHandler,
        *,
        on_gap: Callable[[], None] | None = None,
        views: Callable[[], Sequence[LocalView]] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def sync(self, views: Sequence[LocalView]) -> list[SharedView]:
        shared: list[SharedView] = []
        # A match both of whose sides this server holds, that the shared state does
        # not (a match resumed with its tickets after a restart): put back.
        held = {view.session_id: view.match for view in views if view.match is not None}
        for view in views:
            match = view.match
            if match is None or self._mm.match_of(view.session_id) == match:
                continue
            if held.get(match.partner_of(view.session_id)) == match:
                self._mm.restore(match)  # (both are re-registered as live below)
        for view in views:
            state = self._mm.state_of(view.session_id)
            self._live[view.session_id] = view.ip
            if state == "matched":
                match = self._mm.match_of(view.session_id)
                shared.append(SharedView(view.session_id, "matched", match))
            elif state == "waiting":
                shared.append(SharedView(view.session_id, "waiting", None))
            else:
                shared.append(SharedView(view.session_id, "idle", None))
        return shared

    async def sweep(self) -> list[Ended]:
        now = self._now()
        self._mm.prune(now)
        budget = SWEEP_BUDGET
        for ends in self._window_ends.values():
            budget -= self._expire_windows(ends, now, budget)
        budget -= self._expire_reporter_marks(now, budget)
        wall = self._wall()
        self._expire_bans(wall, budget)
        self._expire_records(wall)
        return []  # one server: none dies while this one runs

    def held_entries(self) -> int:
        """Timed entries kept (cooldowns, blocks, windows, reporter marks, bans), for tests."""
        marks = sum(len(seen) for seen in self._reporters.values())
        return self._mm.held_entries() + len(self._windows) + marks + len(self._bans)

    def _expire_windows(self, ends: deque[_Window], now: float, budget: int) -> int:
        """Forget the windows that ended, from the head of ``ends``; returns records visited."""
        visited = 0
        while ends and visited < budget and now - ends[0].start >= ends[0].length:
            window = ends.popleft()
            visited += 1
            if self._windows.get(window.key) is window:  # else a newer window of the key runs
                del self._windows[window.key]
        return visited

    def _expire_reporter_marks(self, now: float, budget: int) -> int:
        visited = 0
        marks = self._reporter_marks
        while marks and visited < budget and now - marks[0][0] >= self._reporter_window_s:
            at, reported, reporter = marks.popleft()
            visited += 1
            seen = self._reporters.get(reported)
            if seen is not None and seen.get(reporter) == at:  # not renewed since
                del seen[reporter]
                if not seen:
                    del self._reporters[reported]
        return visited

    def _expire_bans(self, wall: float, budget: int) -> int:
        visited = 0
        heap = self._ban_ends
        while heap and visited < budget and heap[0][0] <= wall:
            until, target = heapq.heappop(heap)
            visited += 1
            kept = self._bans.get(target)
            if kept is not None and kept[0].until == until:  # not replaced since
                self._forget_ban(target)
        return visited


@dataclasses.dataclass(slots=True)
class _Window:
    """One rate-limit window of ``key``: ``count`` events since ``start``, for ``length`` s."""

    key: str
    start: float
    count: int
    length: float


def _overlaps(a: Network, b: Network) -> bool:
    return a.version == b.version and a.overlaps(b)


@asynccontextmanager
async def open_memory_backend(
    *,
    interest_timeout_s: float,
    rematch_cooldown_s: float,
    block_ttl_s: float,
    ipv6_prefix: int = 64,
    report_retention_s: float = 30 * DAY_S,
    audit_retention_s: float = 365 * DAY_S,
    wall: Callable[[], float] = time.time,
) -> AsyncIterator[MemoryBackend]:
    """Open the in-process backend; nothing to close."""
    yield MemoryBackend(
        interest_timeout_s=interest_timeout_s,
        rematch_cooldown_s=rematch_cooldown_s,
        block_ttl_s=block_ttl_s,
        ipv6_prefix=ipv6_prefix,
        report_retention_s=report_retention_s,
        audit_retention_s=audit_retention_s,
        wall=wall,
    )
