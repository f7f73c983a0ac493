"""Reconciliation: what a session does when the shared state disagrees with it.

Pure: no I/O, no trio. The resync (``resync.py``) asks the backend what it
holds for each session (``Backend.sync``); the session's core classifies
the answer and its own state, and ``reconcile`` says what to do, from one
table. Everything that decides a repair lives here.

Rules the table keeps (ADR 0003):

* The shared state is the truth, but what differs now may be news still on
  its way (a match formed or ended a moment ago, its bus message not here
  yet): a difference is acted on only when the previous resync saw the same
  one (``CONFIRMED``), except where the shared state is certain (``NOW``):
  the match is over (``ENDED``), another socket holds the session
  (``ELSEWHERE``), or the resync itself just matched it (``FORMED``).
* A session that changed between taking its view and the backend's answer
  (``moved``) is left for the next resync; a match the resync formed is
  told at once all the same, or nobody would ever tell it.
* Only this side's copy is repaired, and the shared state only by what a
  client could have asked: leave, or join again with the same wish.

The table's two coordinates:

* ``Local``: what the session holds here: no match and idle, no match and
  waiting, the same match as the shared state, or another match.
* ``Shared``: what the backend answered, with a match this side saw end
  (``MATCHED_ENDED_HERE``: ended here, and the backend was never told)
  told apart from a match it should adopt.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final


class Local(StrEnum):
    """What the session holds on this server."""

    IDLE = "idle"  # no match, not waiting
    WAITING = "waiting"  # no match, waiting
    SAME = "same"  # the match the shared state names
    OTHER = "other"  # a match, not the one the shared state names (or it names none)


class Shared(StrEnum):
    """What the shared state holds for the session (``backends.base.SharedState``)."""

    IDLE = "idle"
    WAITING = "waiting"
    MATCHED = "matched"  # in a match this side has not seen end
    MATCHED_ENDED_HERE = "matched_ended_here"  # in a match this side saw end
    ENDED = "ended"  # the match this side holds is over, for certain
    ELSEWHERE = "elsewhere"  # another socket of the session holds it
    FORMED = "formed"  # the resync itself just matched the waiting session


class When(Enum):
    """When a row's steps are taken."""

    AGREE = "agree"  # nothing differs
    NOW = "now"  # certain: at once
    CONFIRMED = "confirmed"  # once the previous resync saw the same difference


class Step(StrEnum):
    """One thing reconciliation does, in order."""

    FORGET_DIFFERENCE = "forget_difference"  # no difference is remembered any more
    LOOK_AGAIN = "look_again"  # remember this difference; resync again soon
    END_LOCAL = "end_local"  # end the match held here ("left" to the client)
    ADOPT = "adopt"  # take the shared match (the client hears match_found)
    LEAVE_AND_END = "leave_and_end"  # leave in the shared state, telling the partner
    LEAVE_QUIETLY = "leave_quietly"  # leave in the shared state; the answer is not acted on
    REQUEUE = "requeue"  # join again with the same wish (the client hears nothing)
    CLOSE_ELSEWHERE = "close_elsewhere"  # close this socket: 1001, connected elsewhere
    FORM = "form"  # tell both sides of the match the resync formed


@dataclass(frozen=True, slots=True)
class Row:
    when: When
    steps: tuple[Step, ...] = ()


_S, _L, _W = Shared, Local, When
_AGREE: Final = Row(When.AGREE)

TABLE: Final[dict[tuple[Shared, Local], Row]] = {
    # shared                     local           when          steps
    (_S.IDLE, _L.IDLE): _AGREE,
    (_S.IDLE, _L.WAITING): Row(_W.CONFIRMED, (Step.REQUEUE,)),
    (_S.IDLE, _L.OTHER): Row(_W.CONFIRMED, (Step.END_LOCAL,)),
    (_S.WAITING, _L.IDLE): Row(_W.CONFIRMED, (Step.LEAVE_QUIETLY,)),
    (_S.WAITING, _L.WAITING): _AGREE,
    (_S.WAITING, _L.OTHER): Row(_W.CONFIRMED, (Step.END_LOCAL, Step.LEAVE_QUIETLY)),
    (_S.MATCHED, _L.IDLE): Row(_W.CONFIRMED, (Step.ADOPT,)),
    (_S.MATCHED, _L.WAITING): Row(_W.CONFIRMED, (Step.ADOPT,)),
    (_S.MATCHED, _L.SAME): _AGREE,
    (_S.MATCHED, _L.OTHER): Row(_W.CONFIRMED, (Step.END_LOCAL, Step.ADOPT)),
    (_S.MATCHED_ENDED_HERE, _L.IDLE): Row(_W.CONFIRMED, (Step.LEAVE_AND_END,)),
    (_S.MATCHED_ENDED_HERE, _L.WAITING): Row(_W.CONFIRMED, (Step.LEAVE_AND_END,)),
    (_S.MATCHED_ENDED_HERE, _L.OTHER): Row(_W.CONFIRMED, (Step.END_LOCAL, Step.LEAVE_AND_END)),
    (_S.ENDED, _L.IDLE): _AGREE,
    (_S.ENDED, _L.WAITING): Row(_W.CONFIRMED, (Step.REQUEUE,)),
    (_S.ENDED, _L.SAME): Row(_W.NOW, (Step.END_LOCAL,)),
    (_S.ENDED, _L.OTHER): Row(_W.NOW, (Step.END_LOCAL,)),
    (_S.ELSEWHERE, _L.IDLE): Row(_W.NOW, (Step.CLOSE_ELSEWHERE,)),
    (_S.ELSEWHERE, _L.WAITING): Row(_W.NOW, (Step.CLOSE_ELSEWHERE,)),
    (_S.ELSEWHERE, _L.SAME): Row(_W.NOW, (Step.CLOSE_ELSEWHERE,)),
    (_S.ELSEWHERE, _L.OTHER): Row(_W.NOW, (Step.CLOSE_ELSEWHERE,)),
    (_S.FORMED, _L.IDLE): Row(_W.NOW, (Step.FORM,)),
    (_S.FORMED, _L.WAITING): Row(_W.NOW, (Step.FORM,)),
    (_S.FORMED, _L.SAME): Row(_W.NOW, (Step.FORM,)),
    (_S.FORMED, _L.OTHER): Row(_W.NOW, (Step.FORM,)),
}
"""Every pair that can occur. Absent, because the classification cannot
produce them: ``SAME`` with a shared state that names no match this side
could hold (``IDLE``, ``WAITING``) or one it saw end (``MATCHED_ENDED_HERE``:
a core never holds a match it saw end)."""


@dataclass(frozen=True, slots=True)
class View:
    """What ``reconcile`` looks at for one session.

    ``moved``: the session changed while the backend answered (its match or
    whether it waits is not what the view sent held); ``seen_before``: the
    previous resync saw this same difference (state and match id).
    """

    shared: Shared
    local: Local
    moved: bool = False
    seen_before: bool = False


def reconcile(view: View) -> tuple[Step, ...]:
    """What to do about ``view``, in order (empty: nothing, not even forgetting).

    Raises:
        KeyError: a pair the classification cannot produce (a bug).
    """
    row = TABLE[view.shared, view.local]
    if view.shared is Shared.FORMED:
        return row.steps  # formed by this very resync: told whatever moved
    if view.moved:
        return ()  # the answer is stale; the next resync looks again
    if row.when is When.AGREE:
        return (Step.FORGET_DIFFERENCE,)
    if row.when is When.CONFIRMED and not view.seen_before:
        return (Step.LOOK_AGAIN,)
    return (Step.FORGET_DIFFERENCE, *row.steps)
