"""Unit tests for omiro_trio.session_core: each session's rules without sockets.

h11-style: ``World`` wires session cores to each other through the real
(pure) ``Matchmaker``, performing each action the way the hub does, with
time passed in as ``now``. Plain synchronous pytest covers every op in
every state, the stale-event rules and the rate and error thresholds; a
hypothesis state machine then drives random op sequences through several
cores and checks the invariants after every step.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, get_args

import pytest
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
from omiro_trio.codes import CloseCode, ErrorCode
from omiro_trio.matchmaking import Match, Matchmaker, Preferences, Waiting
from omiro_trio.session_core import (
    CALLS_REMEMBERED,
    ENDED_REMEMBERED,
    ERROR_WINDOW_S,
    PROTOCOL_ERRORS_ALLOWED,
    RATE_VIOLATIONS_ALLOWED,
    TRANSCRIPT_LINES,
    Action,
    Close,
    CountCall,
    Join,
    Leave,
    NextPartner,
    Rates,
    Relay,
    Reply,
    ReportPartner,
    SessionCore,
    State,
    Widen,
)

INTEREST_TIMEOUT_S = 10.0
RATES = Rates(messages_per_second=10.0, message_burst=20)


def frame(op: str, data: dict[str, Any] | None = None) -> str:
    return json.dumps({"op": op, "data": data or {}})


def decoded(raw: str | bytes) -> dict[str, Any]:
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
}
RELAYED_OPS = ("chat", "typing", "webrtc_offer", "webrtc_answer", "ice_candidate", "camera_kind")


@dataclass
class World:
    """Session cores and a matchmaker, wired as the hub wires them (synchronously)."""

    now: float = 0.0
    mm: Matchmaker = field(init=False)
    cores: dict[str, SessionCore] = field(default_factory=dict)
    sent: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    timers: dict[str, tuple[float, Widen]] = field(default_factory=dict)
    counted: list[CountCall] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)  # detached: closed and told the partner
    ended_matches: set[str] = field(default_factory=set)  # every match that ended
    delivered: list[tuple[str, str]] = field(default_factory=list)  # (receiver, match_id)
    formed: dict[str, Match] = field(default_factory=dict)  # every match formed, by id

    def __post_init__(self) -> None:
        ids = itertools.count(1)
        self.mm = Matchmaker(
            interest_timeout_s=INTEREST_TIMEOUT_S,
            rematch_cooldown_s=0.0,
            block_ttl_s=3600.0,
            new_match_id=lambda: f"m{next(ids)}",
        )

    def connect(self, session_id: str) -> SessionCore:
        core = SessionCore(session_id, self.now, rates=RATES)
        self.cores[session_id] = core
        self.sent[session_id] = []
        return core

    def ops(self, session_id: str) -> list[str]:
        return [item["op"] for item in self.sent[session_id]]

    def last(self, session_id: str) -> dict[str, Any]:
        return self.sent[session_id][-1]

    def send(self, session_id: str, raw: str | bytes) -> None:
        self.sent[session_id].append(decoded(raw))

    # -- the client side -------------------------------------------------

    def client(self, session_id: str, raw: str) -> Action | None:
        """The client sends ``raw``; perform what its core answers; return the action."""
        action = self.cores[session_id].receive(raw, self.now)
        self.perform(session_id, action)
        return action

    def op(self, session_id: str, op: str, data: dict[str, Any] | None = None) -> Action | None:
        return self.client(session_id, frame(op, data) if data is not None else OPS[op])

    # -- the shell: what hub.py and connection.py do ---------------------

    def perform(self, session_id: str, action: Action | None) -> None:
        core = self.cores[session_id]
        if isinstance(action, Reply):
            self.send(session_id, action.frame)
        elif isinstance(action, Close):
            if action.frame is not None:
                self.send(session_id, action.frame)
            self.detach(session_id)
        elif isinstance(action, Relay):
            partner_id = action.match.partner_of(session_id)
            partner = self.cores[partner_id]
            if partner.relayed(action.match.match_id, action.chat):
                assert action.match.match_id not in self.ended_matches
                self.delivered.append((partner_id, action.match.match_id))
                self.send(partner_id, action.frame)
        elif isinstance(action, Join):
            self.make_idle(session_id, "next")
            core.asked(action.prefs)
            self.enter_queue(session_id, action.prefs)
        elif isinstance(action, NextPartner):
            self.make_idle(session_id, "next")
            self.enter_queue(session_id, core.prefs or Preferences())
        elif isinstance(action, Leave):
            self.make_idle(session_id, "left")
        elif isinstance(action, ReportPartner):
            refusal = core.report_check()
            if refusal is not None:
                self.send(session_id, refusal)
                return
            assert core.match is not None
            self.mm.block(session_id, core.match.partner_of(session_id), self.now)
            self.make_idle(session_id, "reported")
        elif isinstance(action, CountCall):
            self.counted.append(action)

    def make_idle(self, session_id: str, reason: str) -> None:
        self.cores[session_id].idle()
        self.timers.pop(session_id, None)
        ended = self.mm.leave(session_id, self.now)
        if ended is not None:
            self.end(session_id, ended, reason)

    def end(self, session_id: str, match: Match, reason: str) -> None:
        self.ended_matches.add(match.match_id)
        self.cores[session_id].forget(match.match_id)
        partner_id = match.partner_of(session_id)
        told = self.cores[partner_id].ended(match.match_id, reason)
        if told is not None:
            self.send(partner_id, told)

    def enter_queue(self, session_id: str, prefs: Preferences) -> None:
        result = self.mm.join(session_id, prefs, self.now)
        if isinstance(result, Waiting):
            widen = None
            if result.widen_after_s is not None:
                widen = Widen(result.ticket, result.widen_after_s)
                self.timers[session_id] = (self.now + widen.delay_s, widen)
            queued = self.cores[session_id].queued(prefs, widen, announce=True)
            assert queued is not None
            self.send(session_id, queued)
        else:
            self.form(result)

    def form(self, match: Match) -> None:
        self.formed[match.match_id] = match
        for side in (match.caller, match.callee):
            self.timers.pop(side, None)
            told = self.cores[side].matched(match)
            if told is not None:
                self.send(side, told)

    def detach(self, session_id: str) -> None:
        core = self.cores[session_id]
        assert core.state == "closing"
        self.gone.add(session_id)
        self.timers.pop(session_id, None)
        ended = self.mm.leave(session_id, self.now)
        if ended is not None:
            self.end(session_id, ended, core.partner_reason)

    def advance(self, seconds: float) -> None:
        """Let time pass; fire the widen timers that are due."""
        self.now += seconds
        for session_id, (due, widen) in sorted(self.timers.items()):
            if due <= self.now:
                del self.timers[session_id]
                if self.cores[session_id].widen_due(widen):
                    match = self.mm.widen(session_id, widen.ticket, self.now)
                    if match is not None:
                        self.form(match)


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
    world = World()
    if state == "matched":
        pair(world)
    else:
        world.connect("a")
        if state == "waiting":
            world.op("a", "join_queue")
        elif state == "closing":
            world.op("a", "disconnect")
    core = world.cores["a"]
    assert core.state == state
    return world, core


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

    action = world.op("a", "chat")
    assert isinstance(action, Relay)
    assert action.op == "chat"
    assert action.chat == "hello"
    assert world.last("b") == {"op": "chat", "data": {"message": "hello", "from": "a"}}
    assert list(a.transcript) == list(b.transcript) == [("a", "hello")]
    assert a.transcript_lines() == ("reporter: hello",)
    assert b.transcript_lines() == ("reported: hello",)

    assert isinstance(world.op("b", "leave_queue"), Leave)
    assert (a.state, b.state) == ("idle", "idle")
    assert a.match is None
    assert not a.transcript
    assert world.last("a") == {"op": "partner_disconnected", "data": {"reason": "left"}}
    assert match.match_id in a.ended_ids
    assert match.match_id in b.ended_ids


def test_next_ends_the_match_for_the_partner_and_queues_again() -> None:
    world = World()
    match = pair(world)
    assert isinstance(world.op("a", "next"), NextPartner)
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
    assert world.op("a", "report") == ReportPartner("spam")
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
    assert not core.widen_due(widen)
    world.op("a", "join_queue", {"mode": "video", "interests": ["chess"]})
    assert core.widen is not None
    assert not core.widen_due(widen)
    assert core.widen_due(core.widen)


def test_join_while_matched_ends_the_match_first() -> None:
    world = World()
    pair(world)
    world.op("b", "join_queue", {"mode": "text", "interests": []})
    assert world.last("a")["data"] == {"reason": "next"}
    assert world.cores["b"].state == "waiting"
    assert world.cores["b"].prefs == Preferences("text", ())


# -- every op in every state ---------------------------------------------------

STATES: tuple[State, ...] = get_args(State)


def test_states_are_the_four_of_the_design() -> None:
    assert STATES == ("idle", "waiting", "matched", "closing")


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_in_every_state(state: State, op: str) -> None:
    world, core = in_state(state)
    before = core.close_code
    action = core.receive(OPS[op], world.now)
    if op in RELAYED_OPS:
        if state == "matched":
            assert isinstance(action, Relay)
            assert action.match is core.match
            assert action.op == op
        else:
            assert isinstance(action, Reply)
            assert action.error is None
            assert decoded(action.frame)["data"]["code"] == ErrorCode.NOT_MATCHED
    elif op == "join_queue":
        assert action == Join(Preferences("video", ()))
    elif op == "next":
        assert isinstance(action, NextPartner)
    elif op == "leave_queue":
        assert isinstance(action, Leave)
    elif op == "report":
        assert action == ReportPartner("spam")
        refusal = core.report_check()
        assert (refusal is None) == (state == "matched")
    elif op == "call_outcome":  # "m1" is a's match only when it was matched
        if state == "matched":
            assert action == CountCall("failed", None, None)
        else:
            assert isinstance(action, Reply)
            assert decoded(action.frame)["data"]["code"] == ErrorCode.NOT_MATCHED
    else:
        assert op == "disconnect"
        assert isinstance(action, Close)
        assert action.code == CloseCode.NORMAL
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
    assert not core.relayed("m99", "hi")
    # An end for another match is remembered but changes nothing else.
    assert core.ended("m98", "left") is None
    assert "m98" in core.ended_ids
    assert core.match is current
    assert core.state == state
    # A new match replaces whatever there was; closing stays closing.
    assert core.matched(other) is not None
    assert core.match is other
    assert core.state == ("closing" if state == "closing" else "matched")
    assert core.relayed("m99", "hi")
    assert core.transcript[-1] == ("z", "hi")
    assert core.ended("m99", "next") is not None
    assert core.match is None
    assert core.state == ("closing" if state == "closing" else "idle")


# -- stale events --------------------------------------------------------------


def test_stale_match_relay_and_duplicate_are_dropped() -> None:
    world = World()
    match = pair(world)
    a = world.cores["a"]
    assert a.matched(match) is None  # told twice (a resync and the bus)
    assert a.matches_applied == 1
    world.op("a", "leave_queue")
    assert a.matched(match) is None  # a late "matched" for a match that ended
    assert a.match is None
    assert a.state == "idle"
    assert not a.relayed(match.match_id, "late")  # a late relay from the old partner
    assert not a.transcript


def test_only_the_last_ended_matches_are_remembered() -> None:
    core = SessionCore("a", 0.0)
    for n in range(ENDED_REMEMBERED + 1):
        core.forget(f"m{n}")
    assert list(core.ended_ids) == [f"m{n}" for n in range(1, ENDED_REMEMBERED + 1)]
    assert core.matched(Match("m0", "a", "b", "video", ())) is not None  # forgotten


def test_queued_after_a_match_overtook_the_join_is_not_announced_twice() -> None:
    core = SessionCore("a", 0.0)
    assert core.queued(Preferences(), None, announce=False) is None
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
    assert world.op("a", "call_outcome", outcome) == CountCall("connected", "direct", 120)
    world.op("a", "call_outcome", outcome)
    assert world.last("a")["data"]["code"] == ErrorCode.BAD_REQUEST
    assert world.counted == [CountCall("connected", "direct", 120)]
    world.op("a", "leave_queue")  # the match has ended: the outcome may still come
    assert isinstance(world.op("b", "call_outcome", outcome), CountCall)


def test_call_outcome_for_a_text_match_or_a_forgotten_one_is_refused() -> None:
    core = SessionCore("a", 0.0, rates=Rates(1000.0, 1000))
    core.matched(Match("t1", "a", "b", "text", ()))
    action = core.receive(frame("call_outcome", {"match_id": "t1", "outcome": "failed"}), 0.0)
    assert isinstance(action, Reply)
    assert decoded(action.frame)["data"]["code"] == ErrorCode.BAD_REQUEST
    for n in range(CALLS_REMEMBERED):
        core.matched(Match(f"v{n}", "a", "b", "video", ()))
    assert "t1" not in core.recent_matches
    assert len(core.recent_matches) == CALLS_REMEMBERED
    action = core.receive(frame("call_outcome", {"match_id": "t1", "outcome": "failed"}), 0.0)
    assert isinstance(action, Reply)
    assert decoded(action.frame)["data"]["code"] == ErrorCode.NOT_MATCHED


# -- rate and error thresholds -------------------------------------------------


def test_the_burst_passes_then_refusals_then_4029() -> None:
    core = SessionCore("a", 0.0, rates=RATES)
    for _ in range(RATES.message_burst):
        assert isinstance(core.receive(OPS["typing"], 0.0), Reply)  # not matched, not refused
    for _ in range(RATE_VIOLATIONS_ALLOWED):
        action = core.receive(OPS["typing"], 0.0)
        assert isinstance(action, Reply)
        assert action.error == ErrorCode.RATE_LIMITED
        assert decoded(action.frame)["data"] == {
            "code": "rate_limited",
            "message": "slow down",
            "op": "typing",
        }
    action = core.receive(OPS["typing"], 0.0)
    assert isinstance(action, Close)
    assert action.code == CloseCode.RATE_LIMITED
    assert action.error == ErrorCode.RATE_LIMITED
    assert action.frame is not None
    assert core.state == "closing"
    assert core.close_code == CloseCode.RATE_LIMITED


def test_tokens_come_back_with_time_and_violations_reset_with_the_window() -> None:
    core = SessionCore("a", 0.0, rates=RATES)
    for _ in range(RATES.message_burst + RATE_VIOLATIONS_ALLOWED):
        core.receive(OPS["typing"], 0.0)
    # One token comes back every tenth of a second.
    assert core.receive(OPS["typing"], 0.1) == Reply(
        protocol.error_frame(ErrorCode.NOT_MATCHED, "you have no partner right now", "typing")
    )
    # A new window: the bucket is full again, and RATE_VIOLATIONS_ALLOWED more are forgiven.
    now = ERROR_WINDOW_S
    for _ in range(RATES.message_burst + RATE_VIOLATIONS_ALLOWED):
        assert isinstance(core.receive(OPS["typing"], now), Reply)
    assert core.state == "idle"
    assert isinstance(core.receive(OPS["typing"], now), Close)


def test_the_backends_next_limit_counts_as_a_violation() -> None:
    core = SessionCore("a", 0.0, rates=RATES)
    for _ in range(RATE_VIOLATIONS_ALLOWED):
        assert isinstance(core.refuse("next", 0.0), Reply)
    refused = core.refuse("next", 0.0)
    assert isinstance(refused, Close)
    assert refused.code == CloseCode.RATE_LIMITED


def test_pings_cost_a_message_each() -> None:
    core = SessionCore("a", 0.0, rates=RATES)
    assert core.controls(RATES.message_burst + RATE_VIOLATIONS_ALLOWED, 0.0) is None
    close = core.controls(1, 0.0)
    assert close is not None
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
    core = SessionCore("a", 0.0, rates=RATES)
    for _ in range(PROTOCOL_ERRORS_ALLOWED):
        action = core.receive(raw, 0.0)
        assert isinstance(action, Reply)
        assert action.error == code
        assert decoded(action.frame)["data"]["code"] == code
    action = core.receive(raw, 0.0)
    assert isinstance(action, Close)
    assert action.code == CloseCode.PROTOCOL_ERRORS
    assert action.error == code
    assert action.frame is not None
    assert core.close_reason == "too many protocol errors"


def test_protocol_errors_do_not_spend_tokens_and_reset_with_the_window() -> None:
    core = SessionCore("a", 0.0, rates=RATES)
    for _ in range(PROTOCOL_ERRORS_ALLOWED):
        core.receive("not json", 0.0)
    assert isinstance(core.receive(OPS["leave_queue"], 0.0), Leave)
    assert isinstance(core.receive("not json", ERROR_WINDOW_S), Reply)
    assert core.state == "idle"


def test_the_first_close_wins() -> None:
    core = SessionCore("a", 0.0)
    assert core.close(CloseCode.SLOW_CONSUMER, "slow consumer", partner_reason="timeout")
    assert not core.close(CloseCode.NORMAL)
    assert (core.close_code, core.close_reason) == (CloseCode.SLOW_CONSUMER, "slow consumer")
    assert core.partner_reason == "timeout"
    assert core.receive(OPS["disconnect"], 0.0) == Close(CloseCode.NORMAL)
    assert core.close_code == CloseCode.SLOW_CONSUMER


def test_transcript_keeps_the_last_lines() -> None:
    world = World()
    pair(world)
    for n in range(TRANSCRIPT_LINES + 5):
        world.advance(1.0)
        world.op("a", "chat", {"message": f"line {n}"})
    lines = world.cores["b"].transcript_lines()
    assert len(lines) == TRANSCRIPT_LINES
    assert lines[-1] == f"reported: line {TRANSCRIPT_LINES + 4}"


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
    """Random clients, time and late events against cores wired by ``World``."""

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
            self.world.cores[session_id].close(CloseCode.SLOW_CONSUMER, "slow consumer")
            self.world.detach(session_id)

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
                assert core.matched(match) is None
            assert not core.relayed(match.match_id, "late")

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
        # World.perform asserts it at delivery; here, that every delivery was current then.
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
    match = Match("m1", "a", "b", "video", ())
    told = json.loads(SessionCore("a", 0.0).matched(match, "0123456789abcdef") or "")
    assert told["data"]["pair"] == "0123456789abcdef"
    untagged = json.loads(SessionCore("a", 0.0).matched(match) or "")
    assert "pair" not in untagged["data"]


@pytest.mark.parametrize(("wait_s", "told"), [(0.2, 1), (1.0, 1), (41.3, 42), (60.0, 60)])
def test_a_refused_skip_says_when_to_try_again(wait_s: float, told: int) -> None:
    refused = SessionCore("a", 0.0, rates=RATES).refuse("next", 0.0, wait_s)
    assert isinstance(refused, Reply)
    data = json.loads(refused.frame)["data"]
    assert data == {
        "code": "rate_limited",
        "message": "slow down",
        "op": "next",
        "retry_after": told,
    }
