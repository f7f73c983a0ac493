"""The reconciliation table (``omiro_trio/reconcile.py``), row by row.

In the manner of h11's ``test_state.py``: the expected table is written out
here again, in the words of ADR 0003, so that changing a row of the code
fails a test; then each row is driven through a real ``SessionCore`` (its
classification of what it holds and what the backend answered, and what
each step becomes); then two properties that hold for any table we would
accept: acting at once only on what is certain, and ending in agreement.
"""

from __future__ import annotations

import itertools

import pytest

from omiro_trio.backends.base import SharedState, SharedView
from omiro_trio.codes import CloseCode, PartnerReason
from omiro_trio.matchmaking import Match, Preferences, Waiting
from omiro_trio.reconcile import TABLE, Local, Row, Shared, Step, View, When, reconcile
from omiro_trio.session_core import SessionCore
from omiro_trio.session_events import (
    AnnounceMatch,
    Arm,
    Close,
    CountMatch,
    Effects,
    Enqueue,
    Enqueued,
    MakeIdle,
    MatchEnded,
    MatchFormed,
    Synced,
    SyncSoon,
)

S, L, W = Shared, Local, When
END, ADOPT, REQUEUE = Step.END_LOCAL, Step.ADOPT, Step.REQUEUE
LEAVE, QUIET = Step.LEAVE_AND_END, Step.LEAVE_QUIETLY

# shared, local -> when, steps. What each row says:
EXPECTED: dict[tuple[Shared, Local], tuple[When, tuple[Step, ...]]] = {
    # The backend has it idle.
    (S.IDLE, L.IDLE): (W.AGREE, ()),
    (S.IDLE, L.WAITING): (W.CONFIRMED, (REQUEUE,)),  # its wait was lost: wait again
    (S.IDLE, L.OTHER): (W.CONFIRMED, (END,)),  # the end never arrived
    # The backend has it waiting.
    (S.WAITING, L.IDLE): (W.CONFIRMED, (QUIET,)),  # it left here; the leave was lost
    (S.WAITING, L.WAITING): (W.AGREE, ()),
    (S.WAITING, L.OTHER): (W.CONFIRMED, (END, QUIET)),
    # The backend has it in a match this side has not seen end.
    (S.MATCHED, L.IDLE): (W.CONFIRMED, (ADOPT,)),  # match_found was lost
    (S.MATCHED, L.WAITING): (W.CONFIRMED, (ADOPT,)),
    (S.MATCHED, L.SAME): (W.AGREE, ()),
    (S.MATCHED, L.OTHER): (W.CONFIRMED, (END, ADOPT)),
    # ... or in one it saw end (and the backend was never told).
    (S.MATCHED_ENDED_HERE, L.IDLE): (W.CONFIRMED, (LEAVE,)),
    (S.MATCHED_ENDED_HERE, L.WAITING): (W.CONFIRMED, (LEAVE,)),
    (S.MATCHED_ENDED_HERE, L.OTHER): (W.CONFIRMED, (END, LEAVE)),
    # The match this side holds is over, for certain.
    (S.ENDED, L.IDLE): (W.AGREE, ()),
    (S.ENDED, L.WAITING): (W.CONFIRMED, (REQUEUE,)),
    (S.ENDED, L.SAME): (W.NOW, (END,)),
    (S.ENDED, L.OTHER): (W.NOW, (END,)),
    # Another socket holds the session: this one goes, at once.
    **{(S.ELSEWHERE, local): (W.NOW, (Step.CLOSE_ELSEWHERE,)) for local in Local},
    # The resync itself matched it: both sides hear of it at once.
    **{(S.FORMED, local): (W.NOW, (Step.FORM,)) for local in Local},
}

# Pairs the classification cannot produce: a shared state naming no match
# this side could hold as the same one.
IMPOSSIBLE = {(S.IDLE, L.SAME), (S.WAITING, L.SAME), (S.MATCHED_ENDED_HERE, L.SAME)}


def test_reconcile_table_is_the_expected_table() -> None:
    assert {key: (row.when, row.steps) for key, row in TABLE.items()} == EXPECTED


def test_reconcile_table_has_every_pair_that_can_occur() -> None:
    every = set(itertools.product(Shared, Local))
    assert set(TABLE) == every - IMPOSSIBLE


@pytest.mark.parametrize(("shared", "local"), sorted(EXPECTED))
@pytest.mark.parametrize("moved", [False, True])
@pytest.mark.parametrize("seen_before", [False, True])
def test_reconcile_acts_by_the_row(
    shared: Shared, local: Local, moved: bool, seen_before: bool
) -> None:
    when, steps = EXPECTED[shared, local]
    got = reconcile(View(shared, local, moved=moved, seen_before=seen_before))
    if shared is S.FORMED:
        assert got == steps  # formed by this very resync: told whatever moved
    elif moved:
        assert got == ()  # a stale answer: nothing, not even forgetting the difference
    elif when is W.AGREE:
        assert got == (Step.FORGET_DIFFERENCE,)
    elif when is W.CONFIRMED and not seen_before:
        assert got == (Step.LOOK_AGAIN,)
    else:
        assert got == (Step.FORGET_DIFFERENCE, *steps)


def test_reconcile_acts_at_once_only_on_what_is_certain() -> None:
    certain = {(shared, local) for shared, local in TABLE if shared in (S.ELSEWHERE, S.FORMED)}
    certain |= {(S.ENDED, L.SAME), (S.ENDED, L.OTHER)}  # the match held here is over
    assert {key for key, row in TABLE.items() if row.when is W.NOW} == certain
    assert all(row.steps == () for row in TABLE.values() if row.when is W.AGREE)
    assert all(row.steps for row in TABLE.values() if row.when is not W.AGREE)


def _after(shared: Shared, local: Local, row: Row) -> tuple[Shared, Local] | None:
    """What the two sides hold once ``row``'s steps are done (None: this socket closed)."""
    for step in row.steps:
        if step is Step.CLOSE_ELSEWHERE:
            return None
        if step is END:
            local = L.IDLE
        elif step is ADOPT:
            local = L.SAME
        elif step in (LEAVE, QUIET):
            shared = S.IDLE
        elif step is REQUEUE:
            shared = S.WAITING
        elif step is Step.FORM:
            shared, local = S.MATCHED, L.SAME
    return shared, local


@pytest.mark.parametrize(("shared", "local"), sorted(TABLE))
def test_reconcile_ends_in_agreement(shared: Shared, local: Local) -> None:
    """Doing a row's steps, resync after resync, the two sides agree (or this one closes)."""
    state: tuple[Shared, Local] | None = (shared, local)
    for _ in range(3):
        assert state is not None
        row = TABLE[state]
        if row.when is W.AGREE:
            return
        state = _after(*state, row)
        if state is None:
            return
    pytest.fail(f"{shared}, {local}: no agreement after three resyncs")


# -- through a core ----------------------------------------------------------------

M_HERE = Match("m1", "a", "b", "video", ())  # the match the core holds
M_THERE = Match("m2", "a", "c", "video", ())  # another match the backend holds
M_ENDED = Match("m0", "a", "d", "video", ())  # a match the core saw end
PREFS = Preferences("text", ("chess",))


def core_holding(local: Local, shared: Shared) -> SessionCore:
    core = SessionCore("a", 0.0)
    core.handle(MatchFormed(M_ENDED), 0.0)
    core.handle(MatchEnded(M_ENDED.match_id, PartnerReason.LEFT), 0.0)
    if local is L.WAITING:
        core.handle(
            Enqueued(Enqueue(PREFS, None, False, core.matches_applied), Waiting(1, 5.0)), 0.0
        )
    elif local in (L.SAME, L.OTHER):
        core.handle(MatchFormed(M_HERE), 0.0)
    return core


def shared_view(shared: Shared, local: Local) -> SharedView:
    state: SharedState
    match: Match | None = None
    if shared is S.MATCHED:
        state, match = "matched", M_HERE if local is L.SAME else M_THERE
    elif shared is S.MATCHED_ENDED_HERE:
        state, match = "matched", M_ENDED
    elif shared is S.ENDED:
        state, match = "ended", M_HERE if local is L.SAME else None
    elif shared is S.FORMED:
        state, match = "formed", M_THERE
    elif shared is S.ELSEWHERE:
        state, match = "elsewhere", M_HERE if local is L.SAME else None
    else:
        state = shared.value  # type: ignore[assignment]
    return SharedView("a", state, match)


def kinds(effects: Effects) -> list[str]:
    """Effects, named: a frame by its op, anything else by its type."""
    names = []
    for effect in effects:
        if isinstance(effect, str | bytes):
            names.append(effect.split('"op":"', 1)[1].split('"', 1)[0])
        else:
            names.append(type(effect).__name__)
    return names


# Each step, as the core performs it for the rows above.
STEP_EFFECTS = {
    END: ["partner_disconnected"],
    ADOPT: ["Arm", "match_found"],
    LEAVE: ["MakeIdle"],
    QUIET: ["MakeIdle"],
    REQUEUE: ["Arm", "Enqueue"],
    Step.CLOSE_ELSEWHERE: ["Close"],
    Step.FORM: ["Arm", "CountMatch", "AnnounceMatch", "Arm", "match_found"],
}


@pytest.mark.parametrize(("shared", "local"), sorted(TABLE))
def test_reconcile_through_the_core(shared: Shared, local: Local) -> None:
    """The core classifies what it holds and what the backend says as the table's row,
    looks twice before acting when the row asks it, and does each step."""
    when, steps = EXPECTED[shared, local]
    core = core_holding(local, shared)
    view = core.local_view("192.0.2.1")
    assert view is not None
    answer = Synced(view, shared_view(shared, local))
    first = core.handle(answer, 0.0)
    if when is W.AGREE:
        assert first == ()
        return
    if when is W.CONFIRMED:
        assert first == (SyncSoon(),)  # a difference seen once may be news on its way
        view = core.local_view("192.0.2.1")
        assert view is not None
        first = core.handle(Synced(view, shared_view(shared, local)), 0.0)
    assert kinds(first) == [name for step in steps for name in STEP_EFFECTS[step]]
    for effect in first:
        if isinstance(effect, MakeIdle):
            assert effect.op is None  # the server's own: a failure ends the resync's pass
            assert effect.quiet is (QUIET in steps)
        elif isinstance(effect, Enqueue):
            assert (effect.prefs, effect.op, effect.announce) == (PREFS, None, False)
        elif isinstance(effect, Close):
            assert effect.code == CloseCode.GOING_AWAY
        elif isinstance(effect, AnnounceMatch):
            assert effect.match == M_THERE
        elif isinstance(effect, Arm):
            assert effect.widen is None
    assert core.widen is None or REQUEUE not in steps


def test_reconcile_a_moved_session_waits_for_the_next_resync() -> None:
    core = core_holding(L.IDLE, S.MATCHED)
    view = core.local_view("192.0.2.1")
    assert view is not None
    core.handle(MatchFormed(M_HERE), 0.0)  # a match arrived while the backend answered
    assert core.handle(Synced(view, SharedView("a", "idle", None)), 0.0) == ()
    # ... but a match the resync formed is told all the same.
    formed = core.handle(Synced(view, SharedView("a", "formed", M_THERE)), 0.0)
    assert CountMatch() in formed


def test_reconcile_forgets_a_difference_that_went_away() -> None:
    core = core_holding(L.WAITING, S.IDLE)
    view = core.local_view("192.0.2.1")
    assert view is not None
    idle = SharedView("a", "idle", None)
    assert core.handle(Synced(view, idle), 0.0) == (SyncSoon(),)
    assert core.handle(Synced(view, SharedView("a", "waiting", None)), 0.0) == ()  # agrees now
    assert core.handle(Synced(view, idle), 0.0) == (SyncSoon(),)  # seen once again, not twice
