"""Unit tests for omiro_trio.hub: the registry, operations and delivery, on the memory backend.

The hub performs what the cores decide; these tests drive it as the
connections and background tasks do (``perform`` with a core's answer to a
client frame, ``widen``, ``detach``, the bus, the resync) against the real
memory backend, with a thin subclass where a test needs the backend to
fail, to hold a partner on another server, or to answer ``sync`` its own
way. Clients are fake outlets that keep the frames they were sent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from omiro_trio import bus
from omiro_trio.backends.base import Ban, Delivery, LocalView, SharedView
from omiro_trio.backends.memory import MemoryBackend
from omiro_trio.codes import CloseCode, ErrorCode, PartnerReason
from omiro_trio.errors import BackendUnavailable, SessionElsewhere
from omiro_trio.hub import Hub, Session
from omiro_trio.matchmaking import Match, Preferences
from omiro_trio.metrics import Metrics
from omiro_trio.protocol import Hello, HelloLimits
from omiro_trio.resync import resync
from omiro_trio.session_core import SessionCore
from omiro_trio.session_events import Close, MatchFormed, Widen

NOW = 0.0


class Outlet:
    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []

    def push(self, payload: bytes) -> bool:
        self.frames.append(json.loads(payload))
        return True

    def ops(self) -> list[str]:
        return [frame["op"] for frame in self.frames]

    def last(self) -> dict[str, Any]:
        return self.frames[-1]


class Backend(MemoryBackend):
    """The memory backend; ``failing`` methods raise, ``remote`` sessions live elsewhere."""

    def __init__(self) -> None:
        super().__init__(interest_timeout_s=5, rematch_cooldown_s=0, block_ttl_s=60)
        self.failing: dict[str, BackendUnavailable] = {}
        self.published: list[dict[str, Any]] = []
        self.delivery: Delivery = "delivered"
        self.shared: list[SharedView] | None = None
        self.formed: Match | None = None  # what join answers instead of the matchmaker
        self.ended: Match | None = None  # what leave answers instead of the matchmaker
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.failing:
            raise self.failing[name]

    async def join(self, session_id: str, prefs: Preferences) -> Any:
        self._call("join")
        if self.formed is not None:
            return self.formed
        return await super().join(session_id, prefs)

    async def leave(self, session_id: str) -> Match | None:
        self._call("leave")
        if self.ended is not None:
            return self.ended
        return await super().leave(session_id)

    async def release_session(self, session_id: str) -> Match | None:
        self._call("release_session")
        return await super().release_session(session_id)

    async def add_ban(self, ban: Ban) -> None:
        self._call("add_ban")
        await super().add_ban(ban)

    async def publish(self, session_id: str, message: bytes, **kwargs: Any) -> Delivery:
        self._call("publish")
        self.published.append(json.loads(message))
        return self.delivery

    async def sync(self, views: Any) -> list[SharedView]:
        self._call("sync")
        if self.shared is not None:
            return self.shared
        return await super().sync(views)


class Timers:
    def __init__(self) -> None:
        self.wanted: list[Widen | None] = []

    def want(self, widen: Widen | None) -> None:
        self.wanted.append(widen)


@pytest.fixture
def backend() -> Backend:
    return Backend()


@pytest.fixture
def hub(backend: Backend) -> Hub:
    return Hub(backend, Metrics())


def connect(
    hub: Hub, session_id: str, ip: str = "192.0.2.1", account: str = ""
) -> tuple[Session, Outlet]:
    outlet = Outlet()
    core = SessionCore(session_id, NOW)
    session = Session(session_id, ip, outlet=outlet, core=core, account=account)
    session.timers = Timers()
    hub.attach(session)
    return session, outlet


async def send(hub: Hub, session: Session, op: str, data: dict[str, Any] | None = None) -> None:
    """The client sends ``op``: its core answers, the hub performs."""
    effects = session.core.receive(json.dumps({"op": op, "data": data or {}}), NOW)
    await hub.perform(session, effects, NOW)


async def matched_pair(hub: Hub) -> tuple[Session, Outlet, Session, Outlet]:
    a, out_a = connect(hub, "a")
    b, out_b = connect(hub, "b", "192.0.2.2")
    await send(hub, a, "join_queue")
    await send(hub, b, "join_queue")
    assert a.match is not None
    return a, out_a, b, out_b


def metric(hub: Hub, name: str, labels: dict[str, str] | None = None) -> float:
    return hub.metrics.registry.get_sample_value(name, labels or {}) or 0.0


# -- the registry ---------------------------------------------------------------------


async def test_hub_attach_greets_and_detach_tells_the_partner(hub: Hub) -> None:
    hello = Hello("a", [], "all", HelloLimits(1000, 65536))
    a, out_a = connect(hub, "x")  # (no hello: as a test attaches)
    assert out_a.frames == []
    greeted = Session("g", "192.0.2.9", outlet=(out_g := Outlet()))
    hub.attach(greeted, hello)
    assert out_g.ops() == ["hello"]
    a, out_a, b, out_b = await matched_pair(hub)
    assert metric(hub, "omiro_connections") == 4
    await hub.detach(a)
    assert "a" not in hub.sessions
    assert out_b.last() == {"op": "partner_disconnected", "data": {"reason": "left"}}
    assert b.match is None
    await hub.detach(a)  # twice: nothing more
    assert metric(hub, "omiro_connections") == 3


async def test_hub_detach_tells_the_partner_the_reason_of_the_close(hub: Hub) -> None:
    a, _, _, out_b = await matched_pair(hub)
    hub.close(a, CloseCode.GOING_AWAY, "no pong", PartnerReason.TIMEOUT)
    assert a.closed == Close(CloseCode.GOING_AWAY, "no pong", graceful=False)
    assert a.cancel_scope.cancel_called
    await hub.detach(a)
    assert out_b.last()["data"] == {"reason": "timeout"}


async def test_hub_wait_empty_returns_once_the_last_session_is_gone(hub: Hub) -> None:
    a, _ = connect(hub, "a")
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def wait() -> None:
            await hub.wait_empty()
            done.set()

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        await hub.detach(a)
        with trio.fail_after(1):
            await done.wait()


async def test_hub_drain_tells_everyone_and_joins_hear_it_too(hub: Hub, backend: Backend) -> None:
    a, out_a = connect(hub, "a")
    hub.start_drain()
    assert out_a.ops() == ["server_draining"]
    await send(hub, a, "join_queue")
    assert out_a.ops() == ["server_draining", "server_draining"]
    assert "join" not in backend.calls
    late = Session("late", "192.0.2.3", outlet=(out_late := Outlet()))
    hub.attach(late, Hello("late", [], "all", HelloLimits(1000, 65536)))
    assert out_late.ops() == ["hello", "server_draining"]
    hub.close_all(CloseCode.RESTARTING, "server restarting")
    assert a.closed == Close(CloseCode.RESTARTING, "server restarting")


async def test_hub_a_full_outbox_closes_with_4008(hub: Hub) -> None:
    class Full(Outlet):
        def push(self, payload: bytes) -> bool:
            return False

    a, _, b, _ = await matched_pair(hub)
    b.outlet = Full()
    await send(hub, a, "chat", {"message": "hello?"})
    assert b.closed == Close(CloseCode.SLOW_CONSUMER, "slow consumer", graceful=False)


# -- delivery -------------------------------------------------------------------------


async def test_hub_relays_to_a_partner_here_without_the_backend(hub: Hub, backend: Backend) -> None:
    a, _, _, out_b = await matched_pair(hub)
    backend.calls.clear()
    await send(hub, a, "chat", {"message": "hi"})
    assert out_b.last() == {"op": "chat", "data": {"message": "hi", "from": "a"}}
    assert backend.calls == []
    assert metric(hub, "omiro_relayed_messages_total", {"op": "chat"}) == 1


def remote_match(hub: Hub, session: Session) -> Match:
    """Put ``session`` in a match with "y", a session held by the server "far"."""
    match = Match("m9", session.id, "y", "video", (), ("here", "far"))
    hub.tell(session, MatchFormed(match))
    return match


@pytest.mark.parametrize(
    ("delivery", "heard"),
    [
        ("delivered", None),
        ("unheard", {"code": "unavailable", "op": "chat"}),
        ("gone", {"reason": "left"}),
    ],
)
async def test_hub_relays_to_a_partner_elsewhere_through_the_bus(
    hub: Hub, backend: Backend, delivery: Delivery, heard: dict[str, str] | None
) -> None:
    a, out_a = connect(hub, "a")
    remote_match(hub, a)
    backend.delivery = delivery
    await send(hub, a, "chat", {"message": "hi"})
    (message,) = backend.published
    assert (message["to"], message["kind"], message["match_id"]) == ("y", "relay", "m9")
    assert json.loads(message["frame"]) == {"op": "chat", "data": {"message": "hi", "from": "a"}}
    if heard is None:
        assert out_a.ops() == ["match_found"]
    else:
        assert heard.items() <= out_a.last()["data"].items()
    assert (a.match is None) == (delivery == "gone")  # not heard: the match goes on


async def test_hub_a_match_formed_here_is_announced_to_the_partners_server(
    hub: Hub, backend: Backend
) -> None:
    a, out_a = connect(hub, "a")
    backend.formed = Match("m5", "z", "a", "video", (), ("far", "here"))
    await send(hub, a, "join_queue")
    assert backend.calls == ["leave", "join", "publish"]  # (a join ends any match first)
    assert backend.published[0]["kind"] == "matched"
    assert out_a.ops() == ["match_found"]
    assert metric(hub, "omiro_matches_total") == 1
    # Formed all the same when the partner's server cannot be told: its resync finds it.
    b, out_b = connect(hub, "b")
    backend.formed = Match("m6", "z", "b", "video", (), ("far", "here"))
    backend.failing["publish"] = BackendUnavailable("down")
    await send(hub, b, "join_queue")
    assert out_b.ops() == ["match_found"]


# -- operations and their failures --------------------------------------------------


async def test_hub_a_backend_that_does_not_answer_gets_unavailable_and_a_resync(
    hub: Hub, backend: Backend
) -> None:
    a, out_a = connect(hub, "a")
    backend.failing["join"] = BackendUnavailable("down")
    await send(hub, a, "join_queue")
    assert out_a.last()["data"]["code"] == ErrorCode.UNAVAILABLE
    assert out_a.last()["data"]["op"] == "join_queue"
    assert hub.sync._wanted.is_set()


async def test_hub_a_session_held_elsewhere_is_closed(hub: Hub, backend: Backend) -> None:
    a, out_a = connect(hub, "a")
    backend.failing["leave"] = SessionElsewhere("another socket holds it")
    await send(hub, a, "leave_queue")
    assert a.closed == Close(CloseCode.GOING_AWAY, "connected elsewhere")
    assert out_a.frames == []


async def test_hub_a_failed_call_ends_its_operation(hub: Hub, backend: Backend) -> None:
    a, out_a = connect(hub, "a")
    backend.ended = remote_match(hub, a)
    backend.failing["publish"] = BackendUnavailable("down")
    await send(hub, a, "next")  # the partner cannot be told the end: no join follows
    assert backend.calls == ["leave", "publish"]
    assert out_a.last()["data"] == {
        "code": "unavailable",
        "message": "the service is briefly unavailable; try again",
        "op": "next",
    }


async def test_hub_a_skip_the_backend_cannot_count_limits_nothing(
    hub: Hub, backend: Backend
) -> None:
    class NoWindows(Backend):
        async def hit_rate_limit(self, key: str, limit: int, window_s: float) -> float | None:
            raise BackendUnavailable("down")

    hub = Hub(NoWindows(), Metrics())
    a, out_a = connect(hub, "a")
    await send(hub, a, "join_queue")
    assert out_a.ops() == ["queued"]


async def test_hub_a_way_in_the_client_left_behind_is_not_taken(hub: Hub, backend: Backend) -> None:
    a, out_a, _b, out_b = await matched_pair(hub)
    waiting, out_w = connect(hub, "w", "192.0.2.7")
    await send(hub, waiting, "join_queue")
    asked: list[str] = []

    def left_ahead() -> bool:
        asked.append("asked")
        return True

    a.left_ahead = left_ahead
    backend.calls.clear()
    await send(hub, a, "next")  # a disconnect is behind it
    assert asked == ["asked"]
    assert "join" not in backend.calls
    assert "leave" not in backend.calls
    assert a.match is not None
    assert out_b.ops()[-1] == "match_found"
    assert out_a.ops()[-1] == "match_found"  # no answer: the client has left
    await hub.detach(a)
    assert out_b.last() == {"op": "partner_disconnected", "data": {"reason": "left"}}
    assert out_w.ops() == ["queued"]  # the one waiting was never matched with a ghost
    assert (await backend.stats()).waiting == 1

    # A client that has not left goes in as always.
    c, out_c = connect(hub, "c", "192.0.2.3")
    c.left_ahead = lambda: False
    await send(hub, c, "join_queue")
    assert out_c.ops() == ["match_found"]
    assert out_w.ops() == ["queued", "match_found"]


async def test_hub_report_blocks_keeps_and_ends(hub: Hub, backend: Backend) -> None:
    a, _, _, out_b = await matched_pair(hub)
    await send(hub, a, "chat", {"message": "rude"})
    await send(hub, a, "report", {"reason": "spam"})
    assert out_b.last()["data"] == {"reason": "reported"}
    assert backend.matchmaker.is_blocked("a", "b", NOW)
    (report,) = await backend.reports(10)
    assert (report.reporter, report.reported, report.reported_ip) == ("a", "b", "192.0.2.2")
    assert report.transcript == ("reporter: rude",)
    assert metric(hub, "omiro_reports_total") == 1


async def test_hub_widen_once_asked_is_delivered_even_if_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class SlowWiden(Backend):
        async def widen(self, session_id: str, ticket: int) -> Match | None:
            await trio.sleep(1)  # (Redis: the call is on its way when the socket goes)
            return await super().widen(session_id, ticket)

    hub = Hub(SlowWiden(), Metrics())
    a, out_a = connect(hub, "a")
    b, out_b = connect(hub, "b")
    await send(hub, a, "join_queue", {"mode": "video", "interests": ["chess"]})
    await send(hub, b, "join_queue")
    widen = a.core.widen
    assert widen is not None
    await trio.sleep(5)
    scope = trio.CancelScope()

    async def fire() -> None:
        with scope:
            await hub.widen(a, widen)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fire)
        await trio.sleep(0.5)
        scope.cancel()  # the connection is going away while the backend widens
    assert a.match is not None
    assert a.match is b.match
    assert out_a.ops()[-1] == out_b.ops()[-1] == "match_found"


async def test_hub_a_failed_release_is_left_to_the_resync(hub: Hub, backend: Backend) -> None:
    a, _, b, out_b = await matched_pair(hub)
    backend.failing["release_session"] = BackendUnavailable("down")
    await hub.detach(a)
    assert hub.sync.unreleased == {"a"}
    assert b.match is not None  # not told yet: the backend has not ended it
    del backend.failing["release_session"]
    await resync(hub)
    assert hub.sync.unreleased == set()
    assert out_b.last()["data"] == {"reason": "left"}


# -- the bus and bans ---------------------------------------------------------------


async def test_hub_applies_what_other_servers_say(hub: Hub) -> None:
    _, out_a = connect(hub, "a")
    match = Match("m7", "z", "a", "text", ("chess",), ("far", "here"))
    await hub.on_bus(bus.matched("a", match))
    assert out_a.last()["data"]["partner"] == "z"
    await hub.on_bus(bus.relay("a", "m7", b'{"op":"typing","data":{"typing":true}}', None))
    assert out_a.last()["op"] == "typing"
    await hub.on_bus(bus.relay("a", "m6", b'{"op":"chat","data":{}}', "late"))  # another match
    await hub.on_bus(b"not json")  # dropped
    await hub.on_bus(bus.ended("a", "m7", PartnerReason.NEXT))
    assert out_a.last() == {"op": "partner_disconnected", "data": {"reason": "next"}}
    assert out_a.ops() == ["match_found", "typing", "partner_disconnected"]


async def test_hub_tells_the_pair_tag_and_languages_a_match_brought_over_the_bus(
    hub: Hub,
) -> None:
    _, out_a = connect(hub, "a")
    match = Match("m8", "z", "a", "voice", (), ("far", "here"), ("pt",))
    await hub.on_bus(bus.matched("a", match, "0011223344556677"))
    data = out_a.last()["data"]
    assert (data["mode"], data["common_languages"], data["pair"]) == (
        "voice",
        ["pt"],
        "0011223344556677",
    )


async def test_hub_a_ban_closes_the_sockets_it_covers(hub: Hub, backend: Backend) -> None:
    a, out_a = connect(hub, "a", "192.0.2.7")
    b, _ = connect(hub, "b", "198.51.100.1")
    assert await hub.ban(Ban("192.0.2.0/24", "spam", None, 0.0)) == 1
    assert out_a.last()["data"] == {
        "code": "banned",
        "message": "this address is banned",
        "op": None,
    }
    assert a.closed == Close(CloseCode.POLICY, "banned")
    assert b.closed is None
    # Another server's ban arrives on the bus; this server's own broadcast does not act twice.
    message = bus.BusMessage(to="", kind="ban", match_id="", target="198.51.100.1", origin="far")
    await hub.on_bus(bus._encoder.encode(message))
    assert b.closed == Close(CloseCode.POLICY, "banned")


async def test_hub_an_account_ban_closes_that_accounts_sockets_only(
    hub: Hub, backend: Backend
) -> None:
    a, out_a = connect(hub, "a", "192.0.2.7", account="acct-1")
    b, _ = connect(hub, "b", "192.0.2.7", account="acct-2")  # the same address
    c, _ = connect(hub, "c", "192.0.2.8")  # no account
    d, _ = connect(hub, "d", "192.0.2.9", account="acct-1")  # the same account elsewhere
    assert await hub.ban(Ban("account:acct-1", "spam", None, 0.0)) == 2
    assert out_a.last()["data"] == {
        "code": "banned",
        "message": "this account is banned",
        "op": None,
    }
    assert a.closed == d.closed == Close(CloseCode.POLICY, "banned")
    assert b.closed is None
    assert c.closed is None
    assert await backend.account_ban("acct-1") is not None
    assert await backend.ban_for("192.0.2.7") is None  # the address is not banned
    # Another server's account ban arrives on the bus.
    message = bus.BusMessage(to="", kind="ban", match_id="", target="account:acct-2", origin="far")
    await hub.on_bus(bus._encoder.encode(message))
    assert b.closed == Close(CloseCode.POLICY, "banned")
    assert c.closed is None


async def test_hub_a_report_names_the_reported_account_never_the_reporters_partner(
    hub: Hub, backend: Backend
) -> None:
    a, _ = connect(hub, "a", account="reporter-acct")
    b, out_b = connect(hub, "b", "192.0.2.2", account="reported-acct")
    await send(hub, a, "join_queue")
    await send(hub, b, "join_queue")
    await send(hub, a, "report", {"reason": "spam"})
    (report,) = await backend.reports(10)
    assert (report.reported_ip, report.reported_account) == ("192.0.2.2", "reported-acct")
    # No frame sent to anyone carries an account key.
    assert "acct" not in json.dumps(out_b.frames)


# -- the resync -------------------------------------------------------------------


async def test_hub_resync_repairs_what_the_backend_knows_for_certain(
    hub: Hub, backend: Backend
) -> None:
    a, out_a, b, _ = await matched_pair(hub)
    assert a.match is not None
    backend.shared = [SharedView("a", "ended", a.match), SharedView("b", "elsewhere", None)]
    await resync(hub)
    assert out_a.last()["data"] == {"reason": "left"}
    assert b.closed == Close(CloseCode.GOING_AWAY, "connected elsewhere")


async def test_hub_resync_requeues_a_lost_wait_on_the_second_look(
    hub: Hub, backend: Backend
) -> None:
    a, out_a = connect(hub, "a")
    await send(hub, a, "join_queue")
    await MemoryBackend.leave(backend, "a")  # the backend lost the wait
    backend.calls.clear()
    await resync(hub)
    assert "join" not in backend.calls  # maybe news on its way: look again first
    await resync(hub)
    assert backend.calls == ["sync", "sync", "join"]
    assert out_a.ops() == ["queued"]  # the client heard nothing more


async def test_hub_resync_lets_a_failure_end_the_pass(hub: Hub, backend: Backend) -> None:
    a, _ = connect(hub, "a")
    await send(hub, a, "join_queue")
    backend.shared = [SharedView("a", "idle", None)]
    await resync(hub)
    backend.failing["join"] = BackendUnavailable("down")
    with pytest.raises(BackendUnavailable):
        await resync(hub)
    assert not a.lock.locked()


async def test_hub_local_views_leave_closing_sessions_out(hub: Hub) -> None:
    connect(hub, "a")
    b, _ = connect(hub, "b")
    hub.close(b, CloseCode.NORMAL, "")
    assert hub.local_views() == [LocalView("a", "192.0.2.1", None)]


async def test_hub_performs_no_effect_it_does_not_know(hub: Hub) -> None:
    a, _ = connect(hub, "a")
    with pytest.raises(AssertionError):
        await hub.perform(a, (object(),), NOW)  # type: ignore[arg-type]
