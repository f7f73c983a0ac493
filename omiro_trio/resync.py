"""The periodic resync: every local session compared with the shared state.

Every ``SYNC_INTERVAL_S``, and at once when asked (news may have been lost,
the backend lost our records, a release failed), the resync sends the
backend what this server holds for each live session (``Backend.sync``)
and hands each answer to the session's core (``Synced``), whose
reconciliation table (``reconcile.py``) says what to repair; the hub
performs it. A difference that may be news on its way is looked at again
after ``SYNC_RETRY_S`` before anything is done about it.

Sessions are compared in slices of ``SYNC_SLICE``, each under its sessions'
locks (a session busy with an operation is left for the next pass), with a
checkpoint between slices: one pass over thousands of sessions would hold
every socket up for tens of milliseconds. A pass the backend fails is
retried whole after ``SYNC_RETRY_S`` (after ``RELEASE_RETRY_S`` while
sockets gone during an outage still wait to be released: a session of a
dead socket still waits in the queue, and could be matched).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import trio

from omiro_trio.backends.base import Ended, LocalView
from omiro_trio.errors import BackendUnavailable
from omiro_trio.session_events import Synced, SyncSoon

if TYPE_CHECKING:
    from omiro_trio.hub import Hub, Session

log = logging.getLogger(__name__)

SYNC_INTERVAL_S: Final = 5.0
SYNC_RETRY_S: Final = 1.0
RELEASE_RETRY_S: Final = (
    0.1  # sockets gone while the backend was away: released as soon as it answers
)
SYNC_SLICE: Final = 256  # sessions compared with the backend between checkpoints


class SyncRequests:
    """What the hub asks of the resync: a pass now, a second look soon, releases owed."""

    def __init__(self) -> None:
        self.unreleased: set[str] = set()  # claims a failed release left behind
        self._wanted = trio.Event()
        self._soon = False

    def now(self) -> None:
        """Messages may have been lost, or the backend lost our records: a pass at once."""
        self._wanted.set()

    def look_again_soon(self) -> None:
        """A pass saw a difference that may be news on its way: look again shortly."""
        self._soon = True

    def release_later(self, session_id: str) -> None:
        """``session_id``'s socket is gone but its release failed: release it at the next pass."""
        self.unreleased.add(session_id)
        self._wanted.set()

    async def wait(self, interval_s: float) -> None:
        """Return when a pass is due: asked for, or ``interval_s`` (shorter when asked soon)."""
        with trio.move_on_after(SYNC_RETRY_S if self._soon else interval_s):
            await self._wanted.wait()
        self._wanted = trio.Event()
        self._soon = False


async def run_resync(hub: Hub, interval_s: float = SYNC_INTERVAL_S) -> None:
    """Resync every ``interval_s`` and whenever asked, until cancelled."""
    requests = hub.sync
    while True:
        await requests.wait(interval_s)
        try:
            await resync(hub)
        except BackendUnavailable as exc:
            log.warning("resync failed: %s", exc)
            await trio.sleep(RELEASE_RETRY_S if requests.unreleased else SYNC_RETRY_S)
            requests.now()
        except Exception:
            # A bug here must not end the process with every socket on it.
            log.exception("resync failed")
            await trio.sleep(SYNC_RETRY_S)


async def resync(hub: Hub) -> None:
    """Release what is owed, then compare every local session with the backend.

    Raises:
        BackendUnavailable: the backend did not answer (nothing was lost).
    """
    backend = hub.backend
    unreleased = hub.sync.unreleased
    for session_id in list(unreleased):
        if session_id not in hub.sessions:
            ended = await backend.release_session(session_id)
            if ended is not None:
                await hub.partners_gone([Ended(session_id, ended)])
        unreleased.discard(session_id)
    sessions = list(hub.sessions.values())
    for start in range(0, len(sessions), SYNC_SLICE):
        if start:
            await trio.lowlevel.checkpoint()
        await _resync_some(hub, sessions[start : start + SYNC_SLICE])


async def _resync_some(hub: Hub, sessions: list[Session]) -> None:
    held: list[tuple[Session, LocalView]] = []
    try:
        for session in sessions:
            if session.lock.locked():
                continue  # busy: the next pass looks
            view = session.core.local_view(session.ip)
            if view is None:
                continue  # closing
            session.lock.acquire_nowait()
            held.append((session, view))
        shared = await hub.backend.sync([view for _, view in held])
        for (session, local), answer in zip(held, shared, strict=True):
            if hub.sessions.get(session.id) is not session:
                continue
            now = trio.current_time()
            effects = session.core.handle(Synced(local, answer), now)
            if any(not isinstance(effect, SyncSoon) for effect in effects):
                match_id = answer.match.match_id if answer.match is not None else "-"
                log.info("resync: %s repaired (shared: %s %s)", session.id, answer.state, match_id)
            await hub.repair(session, effects, now)
    finally:
        for session, _ in held:
            session.lock.release()
