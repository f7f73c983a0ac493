"""The matching rules of PROTOCOL.md as pure state: no I/O, no trio.

Time arrives as a ``now`` argument and match ids from an injected callable,
so every rule can be tested synchronously and exhaustively. The memory
backend wraps one ``Matchmaker``; the Redis backend implements the same
rules in Lua and runs the same contract tests.

State and invariants:

* A session is in at most one of: idle (unknown here), waiting (in
  ``_waiting``), matched (in ``_matches``). No session is in two matches.
* Every waiting session is in exactly the queues its preferences name
  (``queue_names``): each ``(mode, interest)`` queue of its interests, each
  ``(mode, LANGUAGE_MARK + code)`` queue of its languages, and the
  ``(mode, "")`` general queue if it has neither or its interest timeout
  has passed ("widened"). Queues are insertion-ordered dicts, oldest first.
  A language's queue name starts with a space, which no interest does
  (interests are trimmed), so the two never share a queue.
* "Find a compatible waiting partner, or wait" is one call (``join`` or
  ``widen``) that either forms a match or enqueues: nothing can run between.

Compatibility: same mode and same age band (queues are per pool: the mode,
and the band when the session has one, ``pool_of``), not the same session, not
blocked. The band is a hard constraint like the mode, never widened: a
session whose band is unknown (``""``) waits in its mode's own pool, which
no session with a band ever enters. Before its interest timeout a session
with interests or languages takes only a partner that shares one of them (a language is a preference
like an interest, never a filter: after the timeout anyone in the mode
will do). A partner from the last ``rematch_cooldown_s`` seconds is taken only
when nobody else is available to the joiner at that moment. Two sessions that
are both available to each other are always matched when the later of them
becomes available, so no pair is left waiting side by side.

The partner that was already waiting (waited longest) is the caller.
Within one queue, order is first come, first served by when each session
entered that queue: a session with interests enters its mode's general
queue when its interest timeout passes.

Cooldowns and blocks are ``ExpiringKeys``: a pair is one integer (the XOR of
the two ids' string hashes), kept in time-bucketed generations that expire
whole. A cooldown or block never ends before its full duration; it may end
up to one bucket (a sixteenth of the duration) later. That only makes a
former partner second choice a little longer, and a block (which
PROTOCOL.md states without an end) last a little longer.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from omiro_trio.records import record

GENERAL = ""
"""The interest name of each mode's general queue."""

SCAN_LIMIT = 256
"""How many entries of one queue a lookup may skip (blocked, cooldown).

Keeps a match O(number of my interests) even with pathological queues."""


BAND_MARK = "@"
"""What joins a mode and an age band in a pool's name (``pool_of``): modes are
plain words and bands come from the gate (``gate.AgeBand``), never a client."""

LANGUAGE_MARK = " "
"""What starts a language's queue name (and its name among a match's common
names): a space, which no trimmed interest starts with."""


@dataclass(frozen=True, slots=True)
class Preferences:
    """What a session asked for in ``join_queue``: already validated.

    ``languages``: the languages the client speaks (ISO 639 codes), matched
    like interests. ``band``: the age band the gate verified (the session
    token's, never the client's say), ``""`` when unknown.
    """

    mode: str = "video"
    interests: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    band: str = ""


def pool_of(prefs: Preferences) -> str:
    """The pool a session with ``prefs`` waits in: its mode, and its band if it has one.

    Sessions meet only within one pool, so two bands never meet, and an
    unknown band (``""``) meets only other unknowns.
    """
    return f"{prefs.mode}{BAND_MARK}{prefs.band}" if prefs.band else prefs.mode


def mode_of_pool(pool: str) -> str:
    """The mode of a pool's name (``pool_of``)."""
    return pool.partition(BAND_MARK)[0]


def queue_names(prefs: Preferences) -> tuple[str, ...]:
    """The queues a session with ``prefs`` waits in before its interest timeout:
    its interests, then its languages (marked with ``LANGUAGE_MARK``)."""
    if not prefs.languages:
        return prefs.interests
    return prefs.interests + tuple(LANGUAGE_MARK + code for code in prefs.languages)


def split_common(names: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Common queue names, as (common interests, common languages)."""
    interests: list[str] = []
    languages: list[str] = []
    for name in names:
        if name.startswith(LANGUAGE_MARK):
            languages.append(name[len(LANGUAGE_MARK) :])
        else:
            interests.append(name)
    return tuple(interests), tuple(languages)


@record
class Match:
    """A formed match. ``caller`` waited longest and sends the offer."""

    match_id: str
    caller: str
    callee: str
    mode: str
    common_interests: tuple[str, ...]
    # The servers holding caller and callee when it formed ("" when one
    # server holds everything): where a relay to the partner goes.
    servers: tuple[str, str] = ("", "")
    common_languages: tuple[str, ...] = ()
    # The clients (address groups) of caller and callee as the backend that
    # formed it knew them ("" unknown; a match read back has none): what the
    # pair tag is made of. Not part of what a match is.
    clients: tuple[str, str] = field(default=("", ""), compare=False)

    @property
    def common_names(self) -> tuple[str, ...]:
        """The common interests and languages as queue names (``queue_names``)."""
        return queue_names(Preferences(self.mode, self.common_interests, self.common_languages))

    def partner_of(self, session_id: str) -> str:
        """The other side of the match."""
        if session_id == self.caller:
            return self.callee
        if session_id == self.callee:
            return self.caller
        raise ValueError(f"{session_id} is not in match {self.match_id}")

    def should_call(self, session_id: str) -> bool:
        return session_id == self.caller

    def server_of(self, session_id: str) -> str:
        """The server that held ``session_id`` when the match formed ("" if unknown)."""
        return self.servers[0] if session_id == self.caller else self.servers[1]


@record
class Waiting:
    """``join`` found nobody: the session waits.

    ``ticket`` identifies this wait; ``widen`` with an older ticket does
    nothing, so a stale interest timer can never act on a newer wait.
    ``widen_after_s`` is when to call ``widen`` (None: already in the general
    queue).
    """

    ticket: int
    widen_after_s: float | None


@dataclass(slots=True)
class _Entry:
    session_id: str
    prefs: Preferences
    since: float
    ticket: int
    widened: bool


GENERATIONS = 16
"""How many time buckets one ``ExpiringKeys`` spans: its lifetime is
``ttl_s * (1 + 1 / GENERATIONS)`` at most."""


def pair_key(a: str, b: str) -> int:
    """One integer for the unordered pair ``a``, ``b``: the same for ``b``, ``a``.

    Built from the strings' own hashes (cached on each string; keyed per
    process), so the key is 64 bits whatever the ids' length and keeps no
    string alive. A lookup mistakes a pair for one that is held with a
    chance of about (keys held) / 2**64; the cost of that would be a pair
    kept apart (or made second choice) that could have met.
    """
    return hash(a) ^ hash(b)


class ExpiringKeys:
    """Integer keys that expire ``ttl_s`` after they were last added, or a little later.

    Keys live in generations, one per ``bucket_s`` of adding time (oldest
    first), with the time the whole generation expires: ``ttl_s`` after its
    bucket ends. So a key added at ``t`` is held from ``t`` until
    ``expires_at(t)``, which is at least ``t + ttl_s`` and less than
    ``t + ttl_s + bucket_s``; no per-key time is stored, and ``prune``
    drops whole generations: its cost is the number of generations that
    expired, not the number of keys. ``add`` prunes too when it opens a
    generation, so at most ``generations + 1`` are kept.

    The newest generation is a set; once its bucket is over it is sealed
    into a sorted ``array`` of 64-bit integers (8 bytes a key instead of
    about 100 for a set entry and its int), searched by bisection. Sealing
    sorts the keys of one bucket: about 5 ms of CPU for 18,750 keys (a
    bucket of 300 s cooldowns at 1,000 new pairs a second), once a bucket.

    Args:
        ttl_s: the shortest time a key is held.
        generations: buckets per ``ttl_s`` (the bucket is ``ttl_s / generations``).
    """

    __slots__ = ("_bucket_s", "_generations", "_ttl_s")

    def __init__(self, ttl_s: float, generations: int = GENERATIONS) -> None:
        self._ttl_s = ttl_s
        self._bucket_s = ttl_s / generations if ttl_s > 0 else 1.0
        # (expires at, keys): the newest a set, the older ones sealed.
        self._generations: deque[tuple[float, set[int] | array[int]]] = deque()

    @property
    def bucket_s(self) -> float:
        """How much later than ``ttl_s`` a key may expire."""
        return self._bucket_s

    def expires_at(self, now: float) -> float:
        """When a key added at ``now`` stops being held."""
        bucket_ends = (math.floor(now / self._bucket_s) + 1) * self._bucket_s
        return max(bucket_ends + self._ttl_s, now + self._ttl_s)

    def add(self, key: int, now: float) -> None:
        """Hold ``key`` from ``now`` (renewing it if already held)."""
        if self._ttl_s <= 0:
            return
        expires = self.expires_at(now)
        if self._generations:
            newest_expires, newest = self._generations[-1]
            if newest_expires >= expires and isinstance(newest, set):
                newest.add(key)  # the current bucket
                return
            if isinstance(newest, set):  # its bucket is over: seal it
                self._generations[-1] = (newest_expires, array("q", sorted(newest)))
            self.prune(now)
        self._generations.append((expires, {key}))

    def holds(self, key: int, now: float) -> bool:
        """Whether ``key`` is held at ``now`` (whether or not ``prune`` ran)."""
        for expires, keys in reversed(self._generations):
            if expires <= now:
                return False  # this one and every older one are over
            if isinstance(keys, set):
                if key in keys:
                    return True
                continue
            at = bisect_left(keys, key)
            if at < len(keys) and keys[at] == key:
                return True
        return False

    def prune(self, now: float) -> int:
        """Drop the generations that expired; returns how many."""
        dropped = 0
        while self._generations and self._generations[0][0] <= now:
            self._generations.popleft()
            dropped += 1
        return dropped

    def generation_count(self) -> int:
        return len(self._generations)

    def __len__(self) -> int:
        """Keys kept, counting a renewed key once per generation it is in."""
        return sum(len(keys) for _, keys in self._generations)


class Matchmaker:
    """All matching state of one service.

    Args:
        interest_timeout_s: how long a session with interests waits for a
            partner sharing one before it takes anyone in its mode.
        rematch_cooldown_s: how long two former partners avoid each other
            (at least; up to ``cooldown_bucket_s`` longer).
        block_ttl_s: how long a block (from a report) is remembered, at
            least (up to ``block_bucket_s`` longer); at least the life of the
            sessions involved.
        new_match_id: makes a fresh, unique match id.
    """

    def __init__(
        self,
        *,
        interest_timeout_s: float,
        rematch_cooldown_s: float,
        block_ttl_s: float,
        new_match_id: Callable[[], str],
    ) -> None:
        self._interest_timeout_s = interest_timeout_s
        self._new_match_id = new_match_id
        self._queues: dict[tuple[str, str], dict[str, None]] = {}
        self._waiting: dict[str, _Entry] = {}
        self._matches: dict[str, Match] = {}
        self._recent = ExpiringKeys(rematch_cooldown_s)  # pair_key of former partners
        self._blocks = ExpiringKeys(block_ttl_s)  # pair_key of blocked sessions
        self._client_blocks = ExpiringKeys(block_ttl_s)  # pair_key of blocked clients
        self._clients: dict[str, str] = {}  # session -> client (address group), if known
        self._tickets = 0

    # -- queries -------------------------------------------------------

    def state_of(self, session_id: str) -> str:
        """``"idle"``, ``"waiting"`` or ``"matched"``."""
        if session_id in self._waiting:
            return "waiting"
        if session_id in self._matches:
            return "matched"
        return "idle"

    def match_of(self, session_id: str) -> Match | None:
        return self._matches.get(session_id)

    def waiting_count(self) -> int:
        return len(self._waiting)

    def matched_count(self) -> int:
        """Sessions in a match (two per match)."""
        return len(self._matches)

    def waiting_ids(self) -> Iterable[str]:
        return self._waiting.keys()

    def is_blocked(self, a: str, b: str, now: float) -> bool:
        """Whether ``a`` and ``b`` may not meet: the pair, or their clients, are blocked."""
        if self._blocks.holds(pair_key(a, b), now):
            return True
        if not self._client_blocks.generation_count():
            return False
        client_a, client_b = self._clients.get(a), self._clients.get(b)
        if client_a is None or client_b is None:
            return False
        return self._client_blocks.holds(pair_key(client_a, client_b), now)

    def in_cooldown(self, a: str, b: str, now: float) -> bool:
        """Whether ``a`` and ``b`` were partners within the last ``rematch_cooldown_s``.

        Held at least that long after their match ended, and less than one
        bucket (``cooldown_bucket_s``) longer.
        """
        return self._recent.holds(pair_key(a, b), now)

    @property
    def cooldown_bucket_s(self) -> float:
        """How much longer than ``rematch_cooldown_s`` a cooldown may last."""
        return self._recent.bucket_s

    @property
    def block_bucket_s(self) -> float:
        """How much longer than ``block_ttl_s`` a block may last."""
        return self._blocks.bucket_s

    def set_client(self, session_id: str, client: str) -> None:
        """Note the client (address group) of a session, for blocks by client."""
        self._clients[session_id] = client

    def forget_client(self, session_id: str) -> None:
        self._clients.pop(session_id, None)

    # -- operations ----------------------------------------------------

    def join(self, session_id: str, prefs: Preferences, now: float) -> Match | Waiting:
        """Match ``session_id`` with a compatible waiting partner, or enqueue it.

        Raises:
            ValueError: the session is not idle (callers leave first).
        """
        if self.state_of(session_id) != "idle":
            raise ValueError(f"{session_id} is {self.state_of(session_id)}, not idle")
        names = list(queue_names(prefs))
        widen_now = not names or self._interest_timeout_s <= 0
        if widen_now:
            names.append(GENERAL)
        pool = pool_of(prefs)
        partner = self._find(session_id, pool, names, now)
        if partner is not None:
            return self._form(partner, session_id, prefs, now)
        self._tickets += 1
        entry = _Entry(session_id, prefs, now, self._tickets, widened=widen_now)
        self._waiting[session_id] = entry
        for name in names:
            self._queues.setdefault((pool, name), {})[session_id] = None
        return Waiting(entry.ticket, None if widen_now else self._interest_timeout_s)

    def widen(self, session_id: str, ticket: int, now: float) -> Match | None:
        """The interest timeout of wait ``ticket`` passed: take anyone in the mode.

        Returns the match formed, or None (no one available: the session now
        also waits in the general queue; or the ticket is stale).
        """
        entry = self._waiting.get(session_id)
        if entry is None or entry.ticket != ticket or entry.widened:
            return None
        pool = pool_of(entry.prefs)
        partner = self._find(session_id, pool, [GENERAL], now)
        if partner is not None:
            self._unqueue(entry)
            return self._form(partner, session_id, entry.prefs, now, joiner_since=entry.since)
        entry.widened = True
        self._queues.setdefault((pool, GENERAL), {})[session_id] = None
        return None

    def leave(self, session_id: str, now: float) -> Match | None:
        """Make the session idle: leave the queue, or end its match.

        Returns the match that ended (its partner is now idle too), if any.
        """
        entry = self._waiting.get(session_id)
        if entry is not None:
            self._unqueue(entry)
            return None
        match = self._matches.pop(session_id, None)
        if match is None:
            return None
        del self._matches[match.partner_of(session_id)]
        self._recent.add(pair_key(match.caller, match.callee), now)
        return match

    def restore(self, match: Match) -> bool:
        """Put back ``match`` (one that ended, or that another process formed) if both its
        sessions are idle here; False (and nothing changes) otherwise."""
        sides = (match.caller, match.callee)
        if match.caller == match.callee or any(self.state_of(side) != "idle" for side in sides):
            return False
        for side in sides:
            self._matches[side] = match
        return True

    def block(self, a: str, b: str, now: float) -> None:
        """Never match ``a`` and ``b`` again, nor their clients (for ``block_ttl_s``).

        Sessions of one client block only each other: a client is never
        blocked from itself.
        """
        self._blocks.add(pair_key(a, b), now)
        client_a, client_b = self._clients.get(a), self._clients.get(b)
        if client_a is not None and client_b is not None and client_a != client_b:
            self._client_blocks.add(pair_key(client_a, client_b), now)

    def prune(self, now: float) -> int:
        """Forget cooldowns and blocks that have run out; returns how many generations.

        Expired entries already act as absent; this frees their memory. The
        cost is the number of generations dropped (each a whole set), at
        most ``3 * (GENERATIONS + 1)``, however many entries they hold.
        """
        return sum(table.prune(now) for table in (self._recent, self._blocks, self._client_blocks))

    def held_entries(self) -> int:
        """Cooldown and block entries kept (expired ones until ``prune``), for tests."""
        return len(self._recent) + len(self._blocks) + len(self._client_blocks)

    # -- internals -----------------------------------------------------

    def _find(self, session_id: str, pool: str, names: list[str], now: float) -> _Entry | None:
        """The oldest available partner in the named queues of ``pool`` (``pool_of``).

        A recent partner is returned only when no one else is available.
        """
        fresh: _Entry | None = None
        recent: _Entry | None = None
        for name in names:
            queue = self._queues.get((pool, name))
            if not queue:
                continue
            for scanned, other_id in enumerate(queue):
                if scanned >= SCAN_LIMIT:
                    break
                if other_id == session_id:
                    continue
                if self.is_blocked(session_id, other_id, now):
                    continue
                other = self._waiting[other_id]
                if self.in_cooldown(session_id, other_id, now):
                    if recent is None or other.since < recent.since:
                        recent = other
                    continue
                if fresh is None or other.since < fresh.since:
                    fresh = other
                break  # queues are oldest-first: the rest of this one is younger
        return fresh if fresh is not None else recent

    def _form(
        self,
        waiter: _Entry,
        joiner_id: str,
        joiner_prefs: Preferences,
        now: float,
        *,
        joiner_since: float | None = None,
    ) -> Match:
        self._unqueue(waiter)
        theirs = queue_names(waiter.prefs)
        common, languages = split_common(n for n in queue_names(joiner_prefs) if n in theirs)
        waiter_first = joiner_since is None or waiter.since <= joiner_since
        caller, callee = (
            (waiter.session_id, joiner_id) if waiter_first else (joiner_id, waiter.session_id)
        )
        match = Match(
            self._new_match_id(),
            caller,
            callee,
            joiner_prefs.mode,
            common,
            common_languages=languages,
            clients=(self._clients.get(caller, ""), self._clients.get(callee, "")),
        )
        self._matches[caller] = match
        self._matches[callee] = match
        return match

    def _unqueue(self, entry: _Entry) -> None:
        del self._waiting[entry.session_id]
        names = list(queue_names(entry.prefs))
        if entry.widened:
            names.append(GENERAL)
        for name in names:
            key = (pool_of(entry.prefs), name)
            queue = self._queues.get(key)
            if queue is not None:
                queue.pop(entry.session_id, None)
                if not queue:
                    del self._queues[key]
