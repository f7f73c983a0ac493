"""Unit tests for omiro_trio.session_core: each session's rules without sockets.

h11-style: ``World`` holds real session cores and the real hub (the one
interpreter of their effects) on the memory backend, with time passed in as
``now``. It holds no rule of its own, like h11's ``ConnectionPair``: it
hands a client's frame to its core and the effects to the hub, keeps what
each client was sent, fires the widen timers the hub armed when their time
comes, and detaches a session whose socket the hub closed. The backend
only records what it formed and ended. Plain synchronous pytest covers
every op in every state, the stale-event rules and the rate and error
thresholds; a hypothesis state machine then drives random op sequences
through several cores and checks the invariants after every step.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any, get_args

import pytest
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from omiro_trio import protocol
from omiro_trio.backends.base import LocalView
from omiro_trio.backends.memory import MemoryBackend
from omiro_trio.budgets import Budget
from omiro_trio.codes import CloseCode, ErrorCode, PartnerReason
from omiro_trio.hub import Hub, Session
from omiro_trio.matchmaking import Match, Preferences, Waiting
from omiro_trio.metrics import Metrics
from omiro_trio.session_core import (
    CALLS_REMEMBERED,
    ENDED_REMEMBERED,
    ERROR_WINDOW_S,
    PROTOCOL_ERRORS_ALLOWED,
    RATE_VIOLATIONS_ALLOWED,
    TRANSCRIPT_LINES,
    Rates,
    SessionCore,
    SessionRules,
    State,
)
from omiro_trio.session_events import (
    AnnounceMatch,
    Arm,
    BlockPartner,
    Close,
    CloseAsked,
    Controls,
    CountCall,
    CountError,
    CountExceeded,
    CountSkip,
    Draining,
    Effects,
    Enqueue,
    Enqueued,
    Join,
    Leave,
    MatchEnded,
    MatchFormed,
    Opened,
    Relay,
    ReportPartner,
    Resumed,
    Said,
    SkipCounted,
    Started,
    SyncNow,
    TimerFired,
    Watch,
    WatchFired,
    Widen,
    WidenWait,
)
from omiro_trio.tokens import Ticket, TicketSigner

INTEREST_TIMEOUT_S = 10.0
RATES = Rates(messages_per_second=10.0, message_burst=20)
RULES = SessionRules(rates=RATES)


def frame(op: str, data: dict[str, Any] | None = None) -> str:
    return json.dumps({"op": op, "data": data or {}})


def decoded(raw: str | bytes | object) -> dict[str, Any]:
    assert isinstance(raw, str | bytes), f"not a frame: {raw!r}"
    value: dict[str, Any] = json.loads(raw)
    return value


# One valid frame per client op.
OPS: dict[str, str] = {
    "join_queue": frame("join_queue", {"mode": "video", "interests": []}),
    "leave_queue": frame("leave_queue"),
    "next": frame("next"),
    "disconnect": frame("disconnect"),
    "chat": frame("chat", {"message": "hello"}),
    "typing": frame("typing", {"typing": True}),
    "webrtc_offer": frame("webrtc_offer", {"sdp": "v=0"}),
    "webrtc_answer": frame("webrtc_answer", {"sdp": "v=0"}),
    "ice_candidate": frame("ice_candidate", {"candidate": {"candidate": "c"}}),
    "report": frame("report", {"reason": "spam"}),
    "call_outcome": frame("call_outcome", {"match_id": "m1", "outcome": "failed"}),
    "camera_kind": frame("camera_kind", {"kind": "virtual"}),
    "alive": frame("alive"),
    "peer_lost": frame("peer_lost", {"match_id": "m1"}),
    "resume": frame("resume", {"ticket": "m1.a.b.c.video.1.0"}),
}
RELAYED_OPS = ("chat", "typing", "webrtc_offer", "webrtc_answer", "ice_candidate", "camera_kind")


class RecordingBackend(MemoryBackend):
    """The memory backend, noting every match it formed and every match it ended."""

    def __init__(self, clock: Callable[[], float]) -> None:
        ids = itertools.count(1)
        super().__init__(
            interest_timeout_s=INTEREST_TIMEOUT_S,
            rematch_cooldown_s=0.0,
            block_ttl_s=3600.0,
            monotonic=clock,
            new_match_id=lambda: f"m{next(ids)}",
        )
        self.formed: dict[str, Match] = {}
        self.ended: set[str] = set()

    async def join(self, session_id: str, prefs: Preferences) -> Match | Waiting:
        result = await super().join(session_id, prefs)
        if isinstance(result, Match):
            self.formed[result.match_id] = result
        return result

    async def widen(self, session_id: str, ticket: int) -> Match | None:
        match = await super().widen(session_id, ticket)
        if match is not None:
            self.formed[match.match_id] = match
        return match

    async def leave(self, session_id: str) -> Match | None:
        return self._ended(await super().leave(session_id))

    async def release_session(self, session_id: str) -> Match | None:
        return self._ended(await super().release_session(session_id))

    def _ended(self, match: Match | None) -> Match | None:
        if match is not None:
            self.ended.add(match.match_id)
        return match


class Client:
    """The client's end of a socket: what it was sent, decoded (the hub's ``Outlet``)."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def push(self, payload: bytes) -> bool:
        self.frames.append(json.loads(payload))
        return True


class Timers:
    """The connection's side of the widen timer: the world fires it when it is due."""

    def __init__(self, world: World, session_id: str) -> None:
        self._world = world
        self._id = session_id

    def want(self, widen: Widen | None) -> None:
        if widen is None:
            self._world.timers.pop(self._id, None)
        else:
            self._world.timers[self._id] = (self._world.now + widen.delay_s, widen)

    def watch(self, after_s: float | None) -> None:
        if after_s is None:
            self._world.watches.pop(self._id, None)
        else:
            self._world.watches[self._id] = self._world.now + after_s


class World:
    """Session cores, the hub and the memory backend, pumped the way connections pump them."""

    def __init__(
        self,
        rules: SessionRules | None = None,
        pair_tag: Callable[[str, str], str] | None = None,
    ) -> None:
        self.rules = rules or RULES
        self.now = 0.0
        self.backend = RecordingBackend(lambda: self.now)
        self.mm = self.backend.matchmaker
        self.hub = Hub(self.backend, Metrics(), pair_tag=pair_tag)
        self.sessions: dict[str, Session] = {}
        self.clients: dict[str, Client] = {}
        self.timers: dict[str, tuple[float, Widen]] = {}
        self.watches: dict[str, float] = {}  # the liveness timers: when each is due
        self.gone: set[str] = set()  # detached: closed and told the partner
        self.delivered: list[tuple[str, str]] = []  # (receiver, match_id)

    @property
    def cores(self) -> dict[str, SessionCore]:
        return {session_id: session.core for session_id, session in self.sessions.items()}

    @property
    def ended_matches(self) -> set[str]:
        return self.backend.ended

    @property
    def formed(self) -> dict[str, Match]:
        return self.backend.formed

    def connect(self, session_id: str) -> SessionCore:
        client = Client()
        session = Session(
            session_id,
            "192.0.2.1",
            outlet=client,
            core=SessionCore(session_id, self.now, self.rules),
        )
        session.timers = Timers(self, session_id)
        self.sessions[session_id] = session
        self.clients[session_id] = client
        self.hub.attach(session)
        return session.core

    def sent(self, session_id: str) -> list[dict[str, Any]]:
        return self.clients[session_id].frames

    def ops(self, session_id: str) -> list[str]:
        return [item["op"] for item in self.sent(session_id)]

    def last(self, session_id: str) -> dict[str, Any]:
        return self.sent(session_id)[-1]

    def metric(self, name: str, labels: dict[str, str]) -> float:
        return self.hub.metrics.registry.get_sample_value(name, labels) or 0.0

    # -- the pump ---------------------------------------------------------

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` in trio, whose clock (which the hub reads) shows the world's time."""
        clock = trio.testing.MockClock()
        clock.jump(self.now)
        trio.run(fn, *args, clock=clock)

    def client(self, session_id: str, raw: str) -> Effects:
        """The client sends ``raw``: its core answers, the hub performs; the answer."""
        session = self.sessions[session_id]
        effects = session.core.receive(raw, self.now)
        for effect in effects:
            if isinstance(effect, Relay):
                partner = effect.match.partner_of(session_id)
                before = len(self.sent(partner))
                self.run(self.hub.perform, session, effects, self.now)
                if len(self.sent(partner)) > before:
                    assert effect.match.match_id not in self.ended_matches
                    self.delivered.append((partner, effect.match.match_id))
                break
        else:
            if effects:
                self.run(self.hub.perform, session, effects, self.now)
        self.reap()
        return effects

    def op(self, session_id: str, op: str, data: dict[str, Any] | None = None) -> Effects:
        return self.client(session_id, frame(op, data) if data is not None else OPS[op])

    def close(self, session_id: str, code: CloseCode, reason: str) -> None:
        """The server closes the socket (a slow consumer, say)."""

        async def close() -> None:
            self.hub.close(self.sessions[session_id], code, reason)

        self.run(close)
        self.reap()

    def reap(self) -> None:
        """Detach every session whose socket the hub closed, as its connection would."""
        for session_id, session in self.sessions.items():
            if session.closed is not None and session_id not in self.gone:
                assert session.core.state == "closing"
                self.gone.add(session_id)
                self.run(self.hub.detach, session)

    def advance(self, seconds: float) -> None:
        """Let time pass; fire the widen timers that are due."""
        self.now += seconds
        for session_id, (due, widen) in sorted(self.timers.items()):
            if due <= self.now and self.timers.get(session_id) == (due, widen):
                del self.timers[session_id]
                self.run(self.hub.widen, self.sessions[session_id], widen)
        for session_id, due in sorted(self.watches.items()):
            if due <= self.now and self.watches.get(session_id) == due:
                del self.watches[session_id]
                self.run(self.hub.watch_fired, self.sessions[session_id])
        self.reap()


def pair(world: World) -> Match:
    """Match "a" (the caller) with "b"."""
    world.connect("a")
    world.connect("b")
    world.op("a", "join_queue")
    world.op("b", "join_queue")
    match = world.cores["a"].match
    assert match is not None
    return match


def in_state(state: State) -> tuple[World, SessionCore]:
    """A world where core "a" is in ``state`` ("b" is its partner when matched)."""
    world = World(TICKET_RULES)
    if state == "matched":
        pair(world)
    elif state == "resuming":
        old = World(TICKET_RULES)
        _, ticket, _ = ticketed_pair(old)
        world.connect("a")
        resume(world, "a", ticket)
    else:
        world.connect("a")
        if state == "waiting":
            world.op("a", "join_queue")
        elif state == "closing":
            world.op("a", "disconnect")
    core = world.cores["a"]
    assert core.state == state
    return world, core


DEFAULTS = Preferences()


def skip(prefs: Preferences = DEFAULTS, op: str = "join_queue") -> Effects:
    """What a counted way into the queue answers first."""
    return (CountSkip(Join(prefs, op)),)


# -- the happy path ------------------------------------------------------------


def test_two_cores_meet_relay_and_part() -> None:
    world = World()
    match = pair(world)
    a, b = world.cores["a"], world.cores["b"]
    assert (a.state, b.state) == ("matched", "matched")
    assert a.match is b.match is match
    assert world.ops("a") == ["queued", "match_found"]
    assert world.ops("b") == ["match_found"]
    assert world.last("a")["data"]["should_call"] is True  # waited longest
    assert world.last("b")["data"] == {
        "partner": "a",
        "match_id": match.match_id,
        "should_call": False,
        "mode": "video",
        "common_interests": [],
    }

    (relay,) = world.op("a", "chat")
    assert isinstance(relay, Relay)
    assert relay.op == "chat"
    assert relay.chat == "hello"
    assert world.last("b") == {"op": "chat", "data": {"message": "hello", "from": "a"}}
    assert list(a.transcript) == list(b.transcript) == [("a", "hello")]
    assert a.transcript_lines() == ("reporter: hello",)
    assert b.transcript_lines() == ("reported: hello",)

    assert world.op("b", "leave_queue") == (Leave(),)
    assert (a.state, b.state) == ("idle", "idle")
    assert a.match is None
    assert not a.transcript
    assert world.last("a") == {"op": "partner_disconnected", "data": {"reason": "left"}}
    assert match.match_id in a.ended_ids
    assert match.match_id in b.ended_ids


def test_next_ends_the_match_for_the_partner_and_queues_again() -> None:
    world = World()
    match = pair(world)
    assert world.op("a", "next") == skip(Preferences("video", ()), "next")
    assert world.last("b") == {"op": "partner_disconnected", "data": {"reason": "next"}}
    assert world.cores["a"].state == "waiting"
    assert world.cores["b"].state == "idle"
    world.op("b", "join_queue")
    again = world.cores["a"].match
    assert again is not None
    assert again.match_id != match.match_id
    assert world.cores["b"].match is again


def test_report_blocks_the_pair_and_tells_the_partner() -> None:
    world = World()
    pair(world)
    assert world.op("a", "report") == (ReportPartner("spam"),)
    assert world.last("b")["data"] == {"reason": "reported"}
    assert world.mm.is_blocked("a", "b", world.now)


def test_widen_timer_takes_anyone_after_the_interest_timeout() -> None:
    world = World()
    world.connect("a")
    world.connect("b")
    world.op("a", "join_queue", {"mode": "text", "interests": ["chess"]})
    core = world.cores["a"]
    assert core.widen == Widen(1, INTEREST_TIMEOUT_S)
    world.op("b", "join_queue", {"mode": "text", "interests": []})
    assert core.state == world.cores["b"].state == "waiting"
    states = []
    world.advance(INTEREST_TIMEOUT_S - 1)
    states.append(core.state)
    world.advance(1)
    states.append(core.state)
    assert states == ["waiting", "matched"]
    assert core.widen is None
    assert world.cores["b"].match is core.match


def test_a_widen_timer_that_fires_late_does_nothing() -> None:
    world, core = in_state("idle")
    world.op("a", "join_queue", {"mode": "video", "interests": ["chess"]})
    widen = core.widen
    assert widen is not None
    world.op("a", "leave_queue")
    assert core.widen is None
    assert core.handle(TimerFired(widen), world.now) == ()
    world.op("a", "join_queue", {"mode": "video", "interests": ["chess"]})
    again = core.widen
    assert again is not None
    assert core.handle(TimerFired(widen), world.now) == ()
    assert core.handle(TimerFired(again), world.now) == (WidenWait(again.ticket),)


def test_join_while_matched_ends_the_match_first() -> None:
    world = World()
    pair(world)
    world.op("b", "join_queue", {"mode": "text", "interests": []})
    assert world.last("a")["data"] == {"reason": "next"}
    assert world.cores["b"].state == "waiting"
    assert world.cores["b"].prefs == Preferences("text", ())


# -- the rules that lived in the shells ------------------------------------------


def test_a_way_into_the_queue_while_draining_hears_server_draining() -> None:
    world = World()
    match = pair(world)
    trio.run(_drain, world.hub)
    assert world.ops("a")[-1] == world.ops("b")[-1] == "server_draining"
    assert world.last("a")["data"] == {"reconnect_after_ms": 1000}
    world.op("a", "next")
    assert world.ops("a")[-1] == "server_draining"
    assert world.cores["a"].match is match  # nothing ended: the client reconnects elsewhere
    assert world.mm.match_of("a") is match


async def _drain(hub: Hub) -> None:
    hub.start_drain()


def test_over_the_skips_a_way_in_is_refused_and_the_match_goes_on() -> None:
    world = World()
    match = pair(world)
    core = world.cores["a"]
    for _ in range(30):  # nexts_per_minute, spent by the backend's window
        trio.run(world.backend.hit_rate_limit, "next:a", 30, 60.0)
    assert world.op("a", "next") == skip(Preferences("video", ()), "next")
    # The window began at 0 and the clock has not moved: a whole minute to wait.
    assert world.last("a")["data"] == {
        "code": "rate_limited",
        "message": "slow down",
        "op": "next",
        "retry_after": 60,
    }
    assert core.match is match
    assert world.mm.match_of("a") is match
    assert world.metric("omiro_budget_exceeded_total", {"budget": Budget.SKIPS.value}) == 1


def test_the_first_way_in_after_the_partner_left_spends_no_skip() -> None:
    world = World()
    pair(world)
    world.op("b", "leave_queue")
    assert world.op("a", "next") == (Join(Preferences("video", ()), "next"),)
    assert world.cores["a"].state == "waiting"
    assert world.op("a", "next") == skip(Preferences("video", ()), "next")


def test_next_without_an_earlier_join_searches_with_the_defaults() -> None:
    world = World()
    world.connect("a")
    assert world.op("a", "next") == skip(Preferences(), "next")
    assert world.ops("a") == ["queued"]
    assert world.last("a")["data"] == {"mode": "video", "interests": []}


def test_a_join_overtaken_by_a_match_is_not_announced() -> None:
    core = SessionCore("a", 0.0, RULES)
    asked = Enqueue(Preferences(), "join_queue", True, core.matches_applied)
    # Before the backend's "waiting" came back, another server matched it.
    assert core.handle(MatchFormed(Match("m1", "z", "a", "video", ())), 0.0)
    assert core.handle(Enqueued(asked, Waiting(1, None)), 0.0) == ()
    assert core.state == "matched"
    # A join not overtaken waits and says so.
    asked = Enqueue(Preferences(), "join_queue", True, core.matches_applied)
    (queued, arm) = core.handle(Enqueued(asked, Waiting(2, None)), 0.0)
    assert decoded(queued)["op"] == "queued"
    assert arm == Arm(None)


# -- every op in every state ---------------------------------------------------

STATES: tuple[State, ...] = get_args(State)


def test_states_are_the_five_of_the_design() -> None:
    assert STATES == ("idle", "waiting", "matched", "resuming", "closing")


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_in_every_state(state: State, op: str) -> None:
    world, core = in_state(state)
    before = core.close_code
    effects = core.receive(OPS[op], world.now)
    if op in RELAYED_OPS:
        if state == "matched":
            (relay,) = effects
            assert isinstance(relay, Relay)
            assert relay.match is core.match
            assert relay.op == op
        else:
            (reply,) = effects  # no CountError: not a protocol error
            assert decoded(reply)["data"]["code"] == ErrorCode.NOT_MATCHED
    elif op == "join_queue":
        assert effects == skip(Preferences("video", ()))
    elif op == "next":
        assert effects == skip(core.prefs or Preferences(), "next")
    elif op == "leave_queue":
        assert effects == (Leave(),)
    elif op == "report":
        assert effects == (ReportPartner("spam"),)
        started = core.handle(Started(ReportPartner("spam")), world.now)
        assert (started == (BlockPartner("b", "spam"),)) == (state == "matched")
    elif op == "alive":
        assert decoded(effects[0]) == {"op": "alive", "data": {}}
        watch = (Watch(RULES.lost_after_s),) if state == "matched" else ()
        assert effects[1:] == watch
    elif op == "peer_lost":  # "m1" is a's match only when it was matched
        if state == "matched":
            assert effects == (Leave(PartnerReason.LOST, "peer_lost", "m1"),)
        else:
            (reply,) = effects
            assert decoded(reply)["data"]["code"] == ErrorCode.NOT_MATCHED
    elif op == "resume":  # only an idle session resumes, and only with a good ticket
        codes = [decoded(effect)["data"]["code"] for effect in effects if isinstance(effect, str)]
        assert codes == (["bad_ticket"] if state == "idle" else ["bad_request"])
    elif op == "call_outcome":  # "m1" is a's match only when it was matched
        if state == "matched":
            assert effects == (CountCall("failed", None, None),)
        else:
            (reply,) = effects
            assert decoded(reply)["data"]["code"] == ErrorCode.NOT_MATCHED
    else:
        assert op == "disconnect"
        # The first close wins: a closing session closes no second time.
        assert effects == ((Close(CloseCode.NORMAL, ""),) if state != "closing" else ())
        assert core.state == "closing"
    if state == "closing":
        assert core.state == "closing"
        assert core.close_code == before
    elif op != "disconnect":
        assert core.state == state  # receive alone decides; the backend's answer moves it


@pytest.mark.parametrize("state", STATES)
def test_every_event_in_every_state(state: State) -> None:
    _, core = in_state(state)
    current = core.match
    other = Match("m99", "a", "z", "video", ())
    # A relay for a match that is not the current one never reaches the client.
    assert core.handle(Said("m99", "said", "hi"), 0.0) == ()
    # An end for another match is remembered but changes nothing else.
    assert core.handle(MatchEnded("m98", PartnerReason.LEFT), 0.0) == ()
    assert "m98" in core.ended_ids
    assert core.match is current
    assert core.state == state
    # A new match replaces whatever there was; closing stays closing.
    assert core.handle(MatchFormed(other), 0.0)
    assert core.match is other
    assert core.state == ("closing" if state == "closing" else "matched")
    assert core.handle(Said("m99", "said", "hi"), 0.0) == ("said",)
    assert core.transcript[-1] == ("z", "hi")
    assert core.handle(MatchEnded("m99", PartnerReason.NEXT), 0.0)
    assert core.match is None
    assert core.state == ("closing" if state == "closing" else "idle")


# -- stale events --------------------------------------------------------------


def test_stale_match_relay_and_duplicate_are_dropped() -> None:
    world = World()
    match = pair(world)
    a = world.cores["a"]
    assert a.handle(MatchFormed(match), 0.0) == ()  # told twice (a resync and the bus)
    assert a.matches_applied == 1
    world.op("a", "leave_queue")
    assert a.handle(MatchFormed(match), 0.0) == ()  # a late "matched" for a match that ended
    assert a.match is None
    assert a.state == "idle"
    late = Said(match.match_id, "late", "late")
    assert a.handle(late, 0.0) == ()  # a late relay from the old partner
    assert not a.transcript


def test_a_relay_from_the_ended_match_reaches_nobody_in_the_next_one() -> None:
    """The old partner's frame, handed over on this server after the next match formed."""
    world = World()
    old = pair(world)
    world.op("a", "leave_queue")
    world.connect("c")
    world.op("a", "join_queue")
    world.op("c", "join_queue")
    a = world.cores["a"]
    assert a.match is not None
    assert a.match.match_id != old.match_id
    late = Relay("chat", b'{"op":"chat","data":{"text":"late"}}', "late", old)
    assert a.handle(late, 0.0) == ()
    assert not a.transcript


def test_only_the_last_ended_matches_are_remembered() -> None:
    core = SessionCore("a", 0.0)
    for n in range(ENDED_REMEMBERED + 1):
        core.handle(MatchEnded(f"m{n}", PartnerReason.LEFT), 0.0)
    assert list(core.ended_ids) == [f"m{n}" for n in range(1, ENDED_REMEMBERED + 1)]
    assert core.handle(MatchFormed(Match("m0", "a", "b", "video", ())), 0.0)  # forgotten


def test_queued_after_a_match_overtook_the_join_is_not_announced_twice() -> None:
    core = SessionCore("a", 0.0)
    requeued = Enqueue(Preferences(), None, announce=False, seen=core.matches_applied)
    assert core.handle(Enqueued(requeued, Waiting(1, None)), 0.0) == (Arm(None),)
    assert core.state == "waiting"
    assert core.prefs == Preferences()


# -- call outcomes -------------------------------------------------------------


def test_call_outcome_once_per_recent_video_match() -> None:
    world = World()
    match = pair(world)
    outcome: dict[str, Any] = {
        "match_id": match.match_id,
        "outcome": "connected",
        "path": "direct",
        "connect_ms": 120,
    }
    assert world.op("a", "call_outcome", outcome) == (CountCall("connected", "direct", 120),)
    world.op("a", "call_outcome", outcome)
    assert world.last("a")["data"]["code"] == ErrorCode.BAD_REQUEST
    calls = {"outcome": "connected", "path": "direct"}
    assert world.metric("omiro_calls_total", calls) == 1
    world.op("a", "leave_queue")  # the match has ended: the outcome may still come
    (counted,) = world.op("b", "call_outcome", outcome)
    assert isinstance(counted, CountCall)


def test_call_outcome_for_a_text_match_or_a_forgotten_one_is_refused() -> None:
    core = SessionCore("a", 0.0, SessionRules(rates=Rates(1000.0, 1000)))
    core.handle(MatchFormed(Match("t1", "a", "b", "text", ())), 0.0)
    (reply,) = core.receive(frame("call_outcome", {"match_id": "t1", "outcome": "failed"}), 0.0)
    assert decoded(reply)["data"]["code"] == ErrorCode.BAD_REQUEST
    for n in range(CALLS_REMEMBERED):
        core.handle(MatchFormed(Match(f"v{n}", "a", "b", "video", ())), 0.0)
    assert "t1" not in core.recent_matches
    assert len(core.recent_matches) == CALLS_REMEMBERED
    (reply,) = core.receive(frame("call_outcome", {"match_id": "t1", "outcome": "failed"}), 0.0)
    assert decoded(reply)["data"]["code"] == ErrorCode.NOT_MATCHED


# -- rate and error thresholds -------------------------------------------------


# -- liveness (issue 23) -------------------------------------------------------

LOST_S = RULES.lost_after_s


def beating_pair(world: World) -> Match:
    """Match "a" with "b", both beating (they sent ``alive``)."""
    world.connect("a")
    world.connect("b")
    world.op("a", "alive")
    world.op("b", "alive")
    assert world.watches == {}  # not matched yet: nothing to watch
    world.op("a", "join_queue")
    world.op("b", "join_queue")
    match = world.cores["a"].match
    assert match is not None
    assert set(world.watches) == {"a", "b"}
    return match


@pytest.mark.rule("protocol/liveness-op")
def test_alive_is_answered_and_arms_the_watch_only_while_matched() -> None:
    world = World()
    world.connect("a")
    world.op("a", "alive")
    assert world.last("a") == {"op": "alive", "data": {}}
    assert world.watches == {}
    world.connect("b")
    world.op("a", "join_queue")
    world.op("b", "join_queue")
    assert world.watches == {"a": LOST_S}  # b never beat: its silence is not watched
    # A second beat while watched does not restart the timer.
    world.advance(1.0)
    assert world.op("a", "alive")[1:] == ()


@pytest.mark.rule("protocol/liveness-op")
def test_a_silent_beating_client_loses_its_match_at_the_bound_not_before() -> None:
    world = World()
    match = beating_pair(world)
    # b keeps beating, a goes silent.
    while world.now + 2.5 < LOST_S:
        world.advance(2.5)
        world.op("b", "alive")
    world.advance(LOST_S - world.now - 0.001)
    assert world.cores["a"].match is match  # 15 s have not passed since a's last frame
    world.advance(0.001)
    assert world.cores["a"].match is None
    assert world.cores["b"].match is None
    assert match.match_id in world.ended_matches
    lost = {"op": "partner_disconnected", "data": {"reason": "lost"}}
    assert world.last("b") == lost  # told within the bound, not after the idle timeout
    assert world.last("a") == lost  # the silent side hears it when its network comes back
    # Nobody chose this end: each side's next way in spends no skip.
    assert world.op("a", "join_queue") == (Join(DEFAULTS, "join_queue"),)
    assert world.op("b", "join_queue") == (Join(DEFAULTS, "join_queue"),)


@pytest.mark.rule("protocol/liveness-op")
def test_every_frame_counts_as_life_and_the_watch_waits_for_the_rest() -> None:
    world = World()
    match = beating_pair(world)
    world.advance(LOST_S - 1.0)
    world.op("a", "chat")  # not a beat, but life all the same
    world.op("b", "alive")
    world.advance(1.0)  # the timer fires: a spoke 1 s ago
    assert world.watches == {"a": world.now + LOST_S - 1.0, "b": world.now + LOST_S - 1.0}
    assert world.cores["a"].match is match
    world.advance(LOST_S - 1.0)
    assert world.cores["a"].match is None
    assert world.last("b")["data"] == {"reason": "lost"}


def test_pings_and_pongs_count_as_life() -> None:
    world = World()
    match = beating_pair(world)
    world.advance(LOST_S - 1.0)
    core = world.cores["a"]
    assert core.handle(Controls(1), world.now) == ()
    world.op("b", "alive")
    world.advance(1.0)
    assert core.match is match


def test_a_client_that_never_beats_is_never_lost() -> None:
    world = World()
    match = pair(world)
    world.advance(10 * LOST_S)
    assert world.watches == {}
    assert world.cores["a"].match is match


def test_a_watch_after_the_match_ended_does_nothing() -> None:
    world = World()
    beating_pair(world)
    world.op("a", "leave_queue")
    assert world.last("b")["data"] == {"reason": "left"}
    world.advance(LOST_S)  # both timers fire; nobody is matched
    assert world.ops("b")[-1] == "partner_disconnected"
    assert world.cores["a"].handle(WatchFired(), world.now) == ()


@pytest.mark.rule("protocol/liveness-op")
def test_peer_lost_ends_the_match_as_lost_and_the_next_way_in_is_free() -> None:
    world = World()
    match = pair(world)
    sent = len(world.sent("a"))
    assert world.op("a", "peer_lost", {"match_id": match.match_id}) == (
        Leave(PartnerReason.LOST, "peer_lost", match.match_id),
    )
    assert world.last("b") == {"op": "partner_disconnected", "data": {"reason": "lost"}}
    assert len(world.sent("a")) == sent  # it asked: it is told nothing more
    assert world.cores["a"].state == "idle"
    assert world.op("a", "join_queue") == (Join(DEFAULTS, "join_queue"),)
    assert world.op("b", "join_queue") == (Join(DEFAULTS, "join_queue"),)


@pytest.mark.rule("protocol/liveness-op")
def test_peer_lost_for_another_match_is_refused_and_ends_nothing() -> None:
    world = World()
    match = pair(world)
    (reply,) = world.op("a", "peer_lost", {"match_id": "m-old"})
    assert decoded(reply)["data"] == {
        "code": "not_matched",
        "message": "that is not your current match",
        "op": "peer_lost",
    }
    assert world.cores["b"].match is match
    # A peer_lost that waited for its turn while the match ended and another formed.
    core = world.cores["a"]
    stale = Leave(PartnerReason.LOST, "peer_lost", "m-old")
    assert core.handle(Started(stale), world.now) == ()
    assert core.match is match


# -- resuming with match tickets (issue 23) --------------------------------------

WALL = 1_700_000_000.0
SIGNER = TicketSigner(b"k" * 32, 7200)
TICKET_RULES = SessionRules(rates=RATES, tickets=SIGNER, wall=lambda: WALL)
GRACE_S = TICKET_RULES.resume_grace_s


def ticketed_pair(world: World) -> tuple[Match, str, str]:
    """Match "a" (the caller) with "b"; their tickets, from match_found."""
    match = pair(world)
    (found_a,) = [f for f in world.sent("a") if f["op"] == "match_found"]
    (found_b,) = [f for f in world.sent("b") if f["op"] == "match_found"]
    return match, found_a["data"]["ticket"], found_b["data"]["ticket"]


def resume(world: World, session_id: str, ticket: str) -> dict[str, Any]:
    world.op(session_id, "resume", {"ticket": ticket})
    return world.last(session_id)


@pytest.mark.rule("protocol/match-tickets", "protocol/msg-match-found")
def test_match_found_gives_each_side_its_own_ticket() -> None:
    world = World(TICKET_RULES)
    match, ticket_a, ticket_b = ticketed_pair(world)
    assert ticket_a != ticket_b
    assert SIGNER.verify(ticket_a, WALL) == Ticket(
        match.match_id, "a", "b", "a", "video", int(WALL) + 7200
    )
    assert SIGNER.verify(ticket_b, WALL).seat == "callee"


@pytest.mark.rule("protocol/match-tickets", "protocol/msg-match-found", "protocol/pair-tag")
def test_a_voice_match_found_carries_its_pair_tag_languages_and_tickets_and_resumes() -> None:
    old = World(TICKET_RULES, pair_tag=lambda x, y: "-".join(sorted((x, y))))
    old.connect("a")
    old.connect("b")
    voice = {"mode": "voice", "interests": [], "languages": ["pt"]}
    old.op("a", "join_queue", voice)
    old.op("b", "join_queue", voice)
    found = {side: old.last(side)["data"] for side in ("a", "b")}
    for side, data in found.items():
        assert data["mode"] == "voice"
        assert data["pair"] == "192.0.2.1-192.0.2.1"
        assert data["common_languages"] == ["pt"]
        assert SIGNER.verify(data["ticket"], WALL).holder == side
    fresh = World(TICKET_RULES)
    fresh.connect("a2")
    fresh.connect("b2")
    assert resume(fresh, "a2", found["a"]["ticket"])["op"] == "resuming"
    resumed = resume(fresh, "b2", found["b"]["ticket"])
    assert resumed["op"] == "resumed"
    assert resumed["data"]["mode"] == "voice"
    assert "pair" not in resumed["data"]  # the page has it from match_found


@pytest.mark.rule(
    "protocol/resume", "protocol/op-resume", "protocol/msg-resumed", "protocol/msg-resuming"
)
def test_both_sides_resume_on_a_fresh_process_with_the_same_roles() -> None:
    old = World(TICKET_RULES)
    match, ticket_a, ticket_b = ticketed_pair(old)
    fresh = World(TICKET_RULES)  # a restarted process: it knows nothing of the match
    fresh.connect("a2")
    fresh.connect("b2")
    assert resume(fresh, "b2", ticket_b) == {"op": "resuming", "data": {"grace_ms": 30000}}
    assert fresh.cores["b2"].state == "resuming"
    fresh.advance(GRACE_S - 1)
    last = resume(fresh, "a2", ticket_a)
    assert last["op"] == "resumed"
    again = fresh.cores["a2"].match
    assert again is not None
    assert (again.caller, again.callee) == ("a2", "b2")  # the roles are kept
    assert again.match_id != match.match_id
    assert last["data"]["partner"] == "b2"
    assert last["data"]["should_call"] is True
    assert last["data"]["resumed_from"] == match.match_id
    told_b = fresh.last("b2")
    assert told_b["op"] == "resumed"
    assert told_b["data"]["partner"] == "a2"
    assert told_b["data"]["should_call"] is False
    assert SIGNER.verify(told_b["data"]["ticket"], WALL).match_id == again.match_id
    assert (fresh.cores["a2"].state, fresh.cores["b2"].state) == ("matched", "matched")
    # The shared state holds the match too: chat flows, and next ends it for both.
    fresh.op("a2", "chat")
    assert fresh.last("b2") == {"op": "chat", "data": {"message": "hello", "from": "a2"}}
    fresh.advance(2.0)  # b2's grace timer, still armed, does nothing now
    assert fresh.cores["b2"].match is again
    fresh.op("b2", "next")
    assert fresh.last("a2") == {"op": "partner_disconnected", "data": {"reason": "next"}}


@pytest.mark.rule("protocol/resume", "protocol/match-tickets")
def test_forged_expired_and_replayed_tickets_are_refused_clearly() -> None:
    old = World(TICKET_RULES)
    _, ticket_a, ticket_b = ticketed_pair(old)
    fresh = World(TICKET_RULES)
    for sid in ("a2", "b2", "c", "d"):
        fresh.connect(sid)
    forged = ticket_a.rsplit(".", 1)[0] + "." + "0" * 64
    assert resume(fresh, "c", forged)["data"] == {
        "code": "bad_ticket",
        "message": "bad ticket signature",
        "op": "resume",
    }
    later = World(SessionRules(rates=RATES, tickets=SIGNER, wall=lambda: WALL + 7200))
    later.connect("a3")
    assert resume(later, "a3", ticket_a)["data"]["code"] == "ticket_expired"
    resume(fresh, "a2", ticket_a)
    # The same seat again, by anyone (a replay, a third person): refused.
    assert resume(fresh, "c", ticket_a)["data"] == {
        "code": "ticket_used",
        "message": "this ticket's seat was taken back already",
        "op": "resume",
    }
    assert resume(fresh, "b2", ticket_b)["op"] == "resumed"
    # Once paired, neither ticket joins a third person to the match.
    for ticket in (ticket_a, ticket_b):
        assert resume(fresh, "d", ticket)["data"]["code"] == "ticket_used"
    assert fresh.cores["d"].state == "idle"
    assert fresh.cores["a2"].match is fresh.cores["b2"].match
    assert fresh.metric("omiro_protocol_errors_total", {"code": "ticket_used"}) == 3


@pytest.mark.rule("protocol/resume")
def test_a_ticket_of_a_match_still_going_on_joins_nobody() -> None:
    world = World(TICKET_RULES)
    _, ticket_a, _ = ticketed_pair(world)
    world.connect("c")
    assert resume(world, "c", ticket_a)["data"] == {
        "code": "ticket_used",
        "message": "that match is still going on",
        "op": "resume",
    }
    assert world.cores["a"].state == "matched"


@pytest.mark.rule("protocol/resume")
def test_one_side_only_within_the_grace_hears_its_partner_left() -> None:
    old = World(TICKET_RULES)
    _, ticket_a, ticket_b = ticketed_pair(old)
    fresh = World(TICKET_RULES)
    fresh.connect("a2")
    resume(fresh, "a2", ticket_a)
    fresh.advance(GRACE_S - 0.001)
    assert fresh.cores["a2"].state == "resuming"
    fresh.advance(0.001)
    assert fresh.last("a2") == {"op": "partner_disconnected", "data": {"reason": "left"}}
    assert fresh.cores["a2"].state == "idle"
    assert fresh.op("a2", "join_queue") == (Join(DEFAULTS, "join_queue"),)  # free: not chosen
    # The partner coming back late finds the match over.
    fresh.connect("b2")
    assert resume(fresh, "b2", ticket_b)["data"]["code"] == "match_over"


@pytest.mark.rule("protocol/resume")
def test_resuming_after_the_partner_moved_on_is_refused_cleanly() -> None:
    world = World(TICKET_RULES)
    _, ticket_a, _ = ticketed_pair(world)
    world.op("b", "next")  # b moved on: the match ended on this server
    world.close("a", CloseCode.GOING_AWAY, "gone")  # a's old socket is gone as well
    world.connect("a2")
    assert resume(world, "a2", ticket_a)["data"] == {
        "code": "match_over",
        "message": "that match is over: your partner left or moved on",
        "op": "resume",
    }
    assert world.cores["a2"].state == "idle"


@pytest.mark.rule("protocol/resume")
def test_a_way_in_or_a_closed_socket_while_resuming_frees_the_seat() -> None:
    old = World(TICKET_RULES)
    _, ticket_a, ticket_b = ticketed_pair(old)
    fresh = World(TICKET_RULES)
    fresh.connect("a2")
    resume(fresh, "a2", ticket_a)
    fresh.op("a2", "join_queue")  # gave up waiting for the partner
    assert fresh.cores["a2"].state == "waiting"
    fresh.connect("b2")
    assert resume(fresh, "b2", ticket_b)["data"]["code"] == "match_over"
    # The same through a socket that closes while resuming.
    old2 = World(TICKET_RULES)
    _, ticket_c, ticket_d = ticketed_pair(old2)
    fresh.connect("c2")
    resume(fresh, "c2", ticket_c)
    fresh.close("c2", CloseCode.GOING_AWAY, "gone")
    fresh.connect("d2")
    assert resume(fresh, "d2", ticket_d)["data"]["code"] == "match_over"


def test_resume_is_only_for_an_idle_session_on_a_server_that_signs() -> None:
    world = World(TICKET_RULES)
    _, ticket_a, _ = ticketed_pair(world)
    (reply,) = world.cores["a"].receive(frame("resume", {"ticket": ticket_a}), 0.0)
    assert decoded(reply)["data"]["code"] == "bad_request"
    plain = World()
    plain.connect("x")
    (reply,) = plain.cores["x"].receive(frame("resume", {"ticket": ticket_a}), 0.0)
    assert decoded(reply)["data"]["message"] == "this server resumes no matches"


def drop(world: World, session_id: str) -> None:
    """The client's socket breaks (no close code of the server's): its connection detaches."""
    world.gone.add(session_id)
    world.run(world.hub.detach, world.sessions[session_id])


@pytest.mark.rule("protocol/msg-partner-away", "protocol/resume")
def test_a_socket_that_breaks_leaves_its_partner_waiting_then_resumes() -> None:
    world = World(TICKET_RULES)
    match, ticket_a, _ = ticketed_pair(world)
    drop(world, "a")
    assert world.last("b") == {"op": "partner_away", "data": {"grace_ms": 30000}}
    core_b = world.cores["b"]
    assert core_b.match is match  # kept for a while here; the shared state ended it
    assert match.match_id in world.ended_matches
    (reply,) = world.op("b", "chat")
    assert decoded(reply)["data"] == {
        "code": "unavailable",
        "message": "your partner is reconnecting: not delivered",
        "op": "chat",
    }
    assert core_b.local_view("192.0.2.1") == LocalView("b", "192.0.2.1", None)
    world.advance(GRACE_S - 1)
    world.connect("a2")
    assert resume(world, "a2", ticket_a)["op"] == "resumed"
    again = core_b.match
    assert again is not None
    assert again.match_id != match.match_id
    assert (again.caller, again.callee) == ("a2", "b")
    assert world.last("b")["data"]["partner"] == "a2"
    world.op("b", "chat")
    assert world.last("a2") == {"op": "chat", "data": {"message": "hello", "from": "b"}}
    world.advance(2.0)  # b's grace timer fires into a match that goes on
    assert core_b.match is again
    # The old ticket once more (a replay): refused.
    world.connect("c")
    assert resume(world, "c", ticket_a)["data"]["code"] == "ticket_used"


@pytest.mark.rule("protocol/msg-partner-away", "protocol/resume")
def test_a_partner_that_never_comes_back_has_left_after_the_grace() -> None:
    world = World(TICKET_RULES)
    _, ticket_a, _ = ticketed_pair(world)
    drop(world, "a")
    world.advance(GRACE_S - 0.001)
    assert world.last("b")["op"] == "partner_away"
    world.advance(0.001)
    assert world.last("b") == {"op": "partner_disconnected", "data": {"reason": "left"}}
    assert world.cores["b"].match is None
    assert world.op("b", "join_queue") == (Join(DEFAULTS, "join_queue"),)  # free
    world.connect("a2")
    assert resume(world, "a2", ticket_a)["data"]["code"] == "match_over"


def test_moving_on_from_an_away_partner_ends_its_ticket() -> None:
    world = World(TICKET_RULES)
    _, ticket_a, _ = ticketed_pair(world)
    drop(world, "a")
    world.op("b", "next")
    assert world.cores["b"].state == "waiting"
    assert world.cores["b"].match is None
    world.connect("a2")
    assert resume(world, "a2", ticket_a)["data"]["code"] == "match_over"


def test_a_chosen_end_is_not_an_absence() -> None:
    world = World(TICKET_RULES)
    pair(world)
    world.op("a", "disconnect")
    assert world.last("b") == {"op": "partner_disconnected", "data": {"reason": "left"}}
    # Without tickets there is nothing to come back with: a broken socket has left.
    plain = World()
    pair(plain)
    drop(plain, "a")
    assert plain.last("b") == {"op": "partner_disconnected", "data": {"reason": "left"}}


def test_a_draining_server_tells_partners_to_wait_not_that_the_socket_left() -> None:
    world = World(TICKET_RULES)
    match = pair(world)

    async def drain() -> None:
        world.hub.start_drain()

    world.run(drain)
    world.close("a", CloseCode.RESTARTING, "server restarting")
    assert world.last("b") == {"op": "partner_away", "data": {"grace_ms": 30000}}
    assert match.match_id in world.ended_matches  # released in the shared state all the same


@pytest.mark.rule("protocol/resume")
def test_a_server_that_drains_under_both_sides_keeps_the_match_for_both_tickets() -> None:
    world = World(TICKET_RULES)
    _, ticket_a, ticket_b = ticketed_pair(world)

    async def drain() -> None:
        world.hub.start_drain()

    world.run(drain)
    world.close("a", CloseCode.RESTARTING, "server restarting")
    assert world.last("b")["op"] == "partner_away"
    # b goes too, not by its wish: the match is not over for either ticket.
    world.close("b", CloseCode.RESTARTING, "server restarting")
    world.connect("a2")
    assert resume(world, "a2", ticket_a)["op"] == "resuming"
    world.connect("b2")
    assert resume(world, "b2", ticket_b)["op"] == "resumed"
    assert world.last("a2")["data"]["partner"] == "b2"


def test_a_resumed_match_told_to_a_session_that_moved_on_only_asks_for_a_resync() -> None:
    core = SessionCore("a", 0.0, TICKET_RULES)
    match = Match("m2", "a", "b", "video", (), ("s1", "s2"))
    assert core.handle(Resumed(match, "m1"), 0.0) == (SyncNow(),)
    assert core.match is None
    assert core.state == "idle"


@pytest.mark.rule(
    "protocol/renew-ticket", "protocol/op-renew-ticket", "protocol/msg-ticket", "protocol/resume"
)
def test_a_call_longer_than_a_ticket_resumes_with_a_renewed_ticket() -> None:
    elapsed = [0.0]  # unix time passing, as the tickets see it
    world = World(SessionRules(rates=RATES, tickets=SIGNER, wall=lambda: WALL + elapsed[0]))
    match, first_ticket, _ = ticketed_pair(world)
    ticket = first_ticket
    # A call three tickets' lives long; the page renews at each half-life.
    for _ in range(6):
        elapsed[0] += SIGNER.ttl_s / 2
        world.op("a", "renew_ticket", {})
        answer = world.last("a")
        assert answer["op"] == "ticket"
        assert answer["data"]["match_id"] == match.match_id
        assert answer["data"]["ticket"] != ticket
        ticket = answer["data"]["ticket"]
    assert SIGNER.verify(ticket, WALL + elapsed[0]).holder == "a"
    drop(world, "a")
    world.connect("a2")
    assert resume(world, "a2", first_ticket)["data"]["code"] == "ticket_expired"
    world.connect("a3")
    assert resume(world, "a3", ticket)["op"] == "resumed"
    assert world.last("b")["data"]["partner"] == "a3"


def test_renew_ticket_needs_a_match_that_goes_on_and_a_server_that_signs() -> None:
    world = World(TICKET_RULES)
    world.connect("x")
    world.op("x", "renew_ticket", {})
    assert world.last("x")["data"]["code"] == "not_matched"
    _, _, _ = ticketed_pair(world)
    drop(world, "a")
    world.op("b", "renew_ticket", {})  # its partner is away: the match may not go on
    assert world.last("b")["data"] == {
        "code": "unavailable",
        "message": "your partner is reconnecting: not delivered",
        "op": "renew_ticket",
    }
    plain = World()
    pair(plain)
    plain.op("a", "renew_ticket", {})
    assert plain.last("a")["data"]["code"] == "bad_request"


def test_the_burst_passes_then_refusals_then_4029() -> None:
    core = SessionCore("a", 0.0, RULES)
    for _ in range(RATES.message_burst):
        (reply,) = core.receive(OPS["typing"], 0.0)  # not matched, not refused
        assert decoded(reply)["data"]["code"] == ErrorCode.NOT_MATCHED
    for _ in range(RATE_VIOLATIONS_ALLOWED):
        counted, reply = core.receive(OPS["typing"], 0.0)
        assert counted == CountError(ErrorCode.RATE_LIMITED)
        assert decoded(reply)["data"] == {
            "code": "rate_limited",
            "message": "slow down",
            "op": "typing",
        }
    counted, reply, close = core.receive(OPS["typing"], 0.0)
    assert isinstance(close, Close)
    assert close.code == CloseCode.RATE_LIMITED
    assert counted == CountError(ErrorCode.RATE_LIMITED)
    assert decoded(reply)["data"]["code"] == "rate_limited"
    assert core.state == "closing"
    assert core.close_code == CloseCode.RATE_LIMITED


def test_a_disconnect_is_never_refused() -> None:
    core = SessionCore("a", 0.0, RULES)
    for _ in range(RATES.message_burst):
        core.receive(OPS["typing"], 0.0)
    assert core.receive(OPS["typing"], 0.0)[0] == CountError(ErrorCode.RATE_LIMITED)
    (close,) = core.receive(OPS["disconnect"], 0.0)  # the bucket is empty: it leaves all the same
    assert close == Close(CloseCode.NORMAL, "")


@pytest.mark.parametrize(
    ("frame", "ends"),
    [
        (OPS["disconnect"], True),
        ('{"op":"disconnect","data":null}', True),
        ('{ "data": {}, "op": "disconnect" }', True),
        (OPS["next"], False),
        (frame("chat", {"message": "I will disconnect now"}), False),
        ('{"op":"disconnect","data":[1]}', False),  # refused as a bad request: nothing ends
        ('{"op":"disconnect"', False),
        (b'{"op":"disconnect"}', False),  # binary: refused
        ("disconnect", False),
    ],
)
def test_would_end_is_what_receiving_the_frame_would_do(frame: str | bytes, ends: bool) -> None:
    core = SessionCore("a", 0.0, RULES)
    assert core.would_end(frame) is ends
    effects = core.receive(frame, 0.0)
    assert (core.close_code is not None) is ends, effects


def test_tokens_come_back_with_time_and_violations_reset_with_the_window() -> None:
    core = SessionCore("a", 0.0, RULES)
    for _ in range(RATES.message_burst + RATE_VIOLATIONS_ALLOWED):
        core.receive(OPS["typing"], 0.0)
    # One token comes back every tenth of a second.
    assert core.receive(OPS["typing"], 0.1) == (
        protocol.error_frame(ErrorCode.NOT_MATCHED, "you have no partner right now", "typing"),
    )
    # A new window: the bucket is full again, and RATE_VIOLATIONS_ALLOWED more are forgiven.
    now = ERROR_WINDOW_S
    for _ in range(RATES.message_burst + RATE_VIOLATIONS_ALLOWED):
        assert not any(isinstance(e, Close) for e in core.receive(OPS["typing"], now))
    assert core.state == "idle"
    assert isinstance(core.receive(OPS["typing"], now)[-1], Close)


def test_the_backends_next_limit_counts_as_a_violation() -> None:
    core = SessionCore("a", 0.0, RULES)
    over = SkipCounted(CountSkip(Join(Preferences(), "next")), retry_after_s=30.0)
    for _ in range(RATE_VIOLATIONS_ALLOWED):
        exceeded, counted, _reply = core.handle(over, 0.0)
        assert exceeded == CountExceeded(Budget.SKIPS)
        assert counted == CountError(ErrorCode.RATE_LIMITED)
    refused = core.handle(over, 0.0)[-1]
    assert isinstance(refused, Close)
    assert refused.code == CloseCode.RATE_LIMITED


def test_pings_cost_a_message_each() -> None:
    core = SessionCore("a", 0.0, RULES)
    assert core.handle(Controls(RATES.message_burst), 0.0) == ()
    # Refused: counted like a refused message, answered with nothing.
    refused = (CountError(ErrorCode.RATE_LIMITED),) * RATE_VIOLATIONS_ALLOWED
    assert core.handle(Controls(RATE_VIOLATIONS_ALLOWED), 0.0) == refused
    counted, close = core.handle(Controls(1), 0.0)
    assert counted == CountError(ErrorCode.RATE_LIMITED)
    assert isinstance(close, Close)
    assert close.code == CloseCode.RATE_LIMITED
    assert core.state == "closing"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", ErrorCode.BAD_JSON),
        (frame("dance"), ErrorCode.UNKNOWN_OP),
        (frame("chat", {"message": "x" * 1001}), ErrorCode.MESSAGE_TOO_LONG),
        (frame("join_queue", {"mode": "radio"}), ErrorCode.BAD_REQUEST),
    ],
)
def test_protocol_errors_are_answered_then_4000(raw: str, code: ErrorCode) -> None:
    core = SessionCore("a", 0.0, RULES)
    for _ in range(PROTOCOL_ERRORS_ALLOWED):
        counted, reply = core.receive(raw, 0.0)
        assert counted == CountError(code)
        assert decoded(reply)["data"]["code"] == code
    counted, reply, close = core.receive(raw, 0.0)
    assert isinstance(close, Close)
    assert close.code == CloseCode.PROTOCOL_ERRORS
    assert counted == CountError(code)
    assert decoded(reply)["data"]["code"] == code
    assert core.close_reason == "too many protocol errors"


def test_protocol_errors_do_not_spend_tokens_and_reset_with_the_window() -> None:
    core = SessionCore("a", 0.0, RULES)
    for _ in range(PROTOCOL_ERRORS_ALLOWED):
        core.receive("not json", 0.0)
    assert core.receive(OPS["leave_queue"], 0.0) == (Leave(),)
    assert len(core.receive("not json", ERROR_WINDOW_S)) == 2  # answered, not closed
    assert core.state == "idle"


def test_the_first_close_wins() -> None:
    core = SessionCore("a", 0.0)
    slow = CloseAsked(CloseCode.SLOW_CONSUMER, "slow consumer", PartnerReason.TIMEOUT)
    assert core.handle(slow, 0.0) == (Close(CloseCode.SLOW_CONSUMER, "slow consumer", False),)
    assert core.handle(CloseAsked(CloseCode.NORMAL, ""), 0.0) == ()
    assert (core.close_code, core.close_reason) == (CloseCode.SLOW_CONSUMER, "slow consumer")
    assert core.partner_reason == "timeout"
    assert core.receive(OPS["disconnect"], 0.0) == ()
    assert core.close_code == CloseCode.SLOW_CONSUMER


@pytest.mark.parametrize(
    ("code", "partner_reason", "graceful"),
    [
        (CloseCode.NORMAL, PartnerReason.LEFT, True),
        (CloseCode.GOING_AWAY, PartnerReason.TIMEOUT, False),  # no pong: nobody to shake hands
        (CloseCode.SLOW_CONSUMER, PartnerReason.LEFT, False),  # a client that does not read
        (CloseCode.RATE_LIMITED, PartnerReason.LEFT, True),
    ],
)
def test_the_close_handshake_is_skipped_for_clients_that_cannot_take_it(
    code: CloseCode, partner_reason: PartnerReason, graceful: bool
) -> None:
    core = SessionCore("a", 0.0)
    (close,) = core.handle(CloseAsked(code, "r", partner_reason), 0.0)
    assert close == Close(code, "r", graceful)


def test_transcript_keeps_the_last_lines() -> None:
    world = World()
    pair(world)
    for n in range(TRANSCRIPT_LINES + 5):
        world.advance(1.0)
        world.op("a", "chat", {"message": f"line {n}"})
    lines = world.cores["b"].transcript_lines()
    assert len(lines) == TRANSCRIPT_LINES
    assert lines[-1] == f"reported: line {TRANSCRIPT_LINES + 4}"


def test_draining_tells_a_socket_opened_afterwards_too() -> None:
    core = SessionCore("a", 0.0, SessionRules(reconnect_after_ms=2500))
    assert decoded(core.handle(Draining(), 0.0)[0])["data"] == {"reconnect_after_ms": 2500}
    late = SessionCore("b", 0.0)
    hello = protocol.Hello("b", [], "all", protocol.HelloLimits(1000, 65536))
    assert [decoded(f)["op"] for f in late.handle(Opened(hello, True), 0.0)] == [
        "hello",
        "server_draining",
    ]


# -- random op sequences -------------------------------------------------------

SESSION_IDS = ("s1", "s2", "s3", "s4")
CLIENT_FRAMES = st.sampled_from(
    [
        *OPS.values(),
        frame("join_queue", {"mode": "text", "interests": []}),
        frame("join_queue", {"mode": "video", "interests": ["chess"]}),
        "not json",
    ]
)


class SessionCores(RuleBasedStateMachine):
    """Random clients, time and late events against cores pumped by ``World``."""

    def __init__(self) -> None:
        super().__init__()
        self.world = World()
        self.closed: set[str] = set()
        for session_id in SESSION_IDS:
            self.world.connect(session_id)

    def _live(self, session_id: str) -> bool:
        return session_id not in self.world.gone

    @rule(session_id=st.sampled_from(SESSION_IDS), raw=CLIENT_FRAMES)
    def client_sends(self, session_id: str, raw: str) -> None:
        if self._live(session_id):
            self.world.client(session_id, raw)

    @rule(session_id=st.sampled_from(SESSION_IDS))
    def client_is_closed_by_the_server(self, session_id: str) -> None:
        if self._live(session_id):
            self.world.close(session_id, CloseCode.SLOW_CONSUMER, "slow consumer")

    @rule(seconds=st.sampled_from([0.0, 0.05, 1.0, INTEREST_TIMEOUT_S, ERROR_WINDOW_S]))
    def time_passes(self, seconds: float) -> None:
        self.world.advance(seconds)

    @precondition(lambda self: bool(self.world.ended_matches))
    @rule(data=st.data())
    def a_late_event_arrives(self, data: st.DataObject) -> None:
        """A ``matched`` or a relay for an ended match comes back (a slow bus, a resync)."""
        ended = sorted(self.world.ended_matches)
        match = self.world.formed[data.draw(st.sampled_from(ended))]
        for side in (match.caller, match.callee):
            core = self.world.cores[side]
            if match.match_id in core.ended_ids:
                assert core.handle(MatchFormed(match), self.world.now) == ()
            assert core.handle(Said(match.match_id, "late", "late"), self.world.now) == ()

    @invariant()
    def each_core_agrees_with_the_matchmaker(self) -> None:
        for session_id, core in self.world.cores.items():
            assert core.state in STATES
            if core.state == "closing":
                assert core.close_code is not None
                continue
            assert core.close_code is None
            assert (core.state == "matched") == (core.match is not None)
            assert self.world.mm.state_of(session_id) == core.state
            assert self.world.mm.match_of(session_id) == core.match

    @invariant()
    def never_matched_with_itself(self) -> None:
        for session_id, core in self.world.cores.items():
            if core.match is not None:
                assert core.match.caller != core.match.callee
                assert session_id in (core.match.caller, core.match.callee)
                assert core.match.match_id not in self.world.ended_matches

    @invariant()
    def closing_is_terminal(self) -> None:
        for session_id in self.closed:
            assert self.world.cores[session_id].state == "closing"
        self.closed = {s for s, core in self.world.cores.items() if core.state == "closing"}
        assert self.closed == self.world.gone

    @invariant()
    def no_relay_after_its_match_ended(self) -> None:
        # World.client asserts it at delivery; here, that every delivery was current then.
        for receiver, match_id in self.world.delivered:
            match = self.world.formed[match_id]
            assert receiver in (match.caller, match.callee)

    @invariant()
    def counters_are_bounded(self) -> None:
        for core in self.world.cores.values():
            assert len(core.ended_ids) <= ENDED_REMEMBERED
            assert len(core.recent_matches) <= CALLS_REMEMBERED
            assert core.outcomes_reported <= set(core.recent_matches)
            assert len(core.transcript) <= TRANSCRIPT_LINES
            assert core._errors.count <= PROTOCOL_ERRORS_ALLOWED + 1
            assert core._violations.count <= RATE_VIOLATIONS_ALLOWED + 1
            assert core.widen is None or core.state == "waiting"


def test_random_op_sequences_keep_the_invariants() -> None:
    run_state_machine_as_test(
        SessionCores, settings=settings(max_examples=150, stateful_step_count=60, deadline=None)
    )


def test_match_found_carries_the_pair_tag_only_when_known() -> None:
    match = Match("m1", "z", "a", "video", ())
    (_, tagged) = SessionCore("a", 0.0, RULES).handle(MatchFormed(match, "0123456789abcdef"), 0.0)
    assert decoded(tagged)["data"]["pair"] == "0123456789abcdef"
    (_, untagged) = SessionCore("a", 0.0, RULES).handle(MatchFormed(match), 0.0)
    assert "pair" not in decoded(untagged)["data"]


def test_a_match_this_session_formed_tells_both_sides_its_pair_tag() -> None:
    core = SessionCore("a", 0.0, RULES)
    asked = Enqueue(Preferences(), "join_queue", True, core.matches_applied)
    match = Match("m1", "z", "a", "video", ())
    effects = core.handle(Enqueued(asked, match, "00ff00ff00ff00ff"), 0.0)
    assert AnnounceMatch(match, "00ff00ff00ff00ff") in effects  # the partner's
    assert decoded(effects[-1])["data"]["pair"] == "00ff00ff00ff00ff"  # this client's


def test_the_hub_tags_a_match_with_its_pair_of_clients() -> None:
    world = World(pair_tag=lambda x, y: "-".join(sorted((x, y))))
    world.connect("a")
    world.connect("b")
    world.op("a", "join_queue")
    world.op("b", "join_queue")
    assert world.last("a")["op"] == world.last("b")["op"] == "match_found"
    assert world.last("a")["data"]["pair"] == world.last("b")["data"]["pair"]
    assert world.last("a")["data"]["pair"] == "192.0.2.1-192.0.2.1"


@pytest.mark.parametrize(("wait_s", "told"), [(0.2, 1), (1.0, 1), (41.3, 42), (60.0, 60)])
def test_a_refused_skip_says_when_to_try_again(wait_s: float, told: int) -> None:
    over = SkipCounted(CountSkip(Join(Preferences(), "next")), retry_after_s=wait_s)
    exceeded, _counted, reply = SessionCore("a", 0.0, RULES).handle(over, 0.0)
    assert exceeded == CountExceeded(Budget.SKIPS)
    assert decoded(reply)["data"] == {
        "code": "rate_limited",
        "message": "slow down",
        "op": "next",
        "retry_after": told,
    }


def test_a_skip_within_the_allowance_is_taken() -> None:
    join = Join(Preferences(), "next")
    assert SessionCore("a", 0.0, RULES).handle(SkipCounted(CountSkip(join), None), 0.0) == (join,)


@pytest.mark.rule("protocol/age-bands")
def test_a_sessions_age_band_goes_with_every_wish() -> None:
    core = SessionCore("s", 0.0, band="minor")
    assert core.receive(frame("next"), 0.0) == skip(Preferences(band="minor"), "next")
    core = SessionCore("t", 0.0, band="adult")
    wish = frame("join_queue", {"mode": "text", "interests": ["chess"]})
    assert core.receive(wish, 0.0) == skip(Preferences("text", ("chess",), (), "adult"))
