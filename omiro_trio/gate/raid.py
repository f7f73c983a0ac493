"""Raid mode: new sessions paused service-wide, people already chatting left alone.

An admin turns it on or off (``omiro raid on|off``, ``PUT /admin/raid``);
the backend keeps the switch (one key on Redis, so every server of the
service sees it). ``GET /session/new`` asks ``RaidSwitch.current`` on
every request; the switch reads the backend at most once per
``REFRESH_S`` per server, so a new session costs no extra round trip, and
another server's change is seen within ``REFRESH_S`` (the server that
changes it sees it at once). While it is on, ``/session/new`` answers 503
``{"error": "paused", "retry_after": N}`` with ``Retry-After``; sockets
already open, matches, calls and reconnects with a match ticket are not
touched.

Proof of work is not built yet: when it is, raid mode also raises its
difficulty (a field of ``Raid``), as docs/gate.md says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import trio

from omiro_trio.backends.base import Backend, Raid

__all__ = ["MAX_RETRY_AFTER_S", "REFRESH_S", "RaidSwitch"]

REFRESH_S: Final = 1.0
MAX_RETRY_AFTER_S: Final = 3600


class RaidSwitch:
    """This server's view of raid mode.

    Args:
        backend: keeps the switch for the service.
        clock: a monotonic clock (trio's by default).
    """

    __slots__ = ("_backend", "_clock", "_fresh_until", "_raid")

    def __init__(self, backend: Backend, clock: Callable[[], float] = trio.current_time) -> None:
        self._backend = backend
        self._clock = clock
        self._raid: Raid | None = None
        self._fresh_until = float("-inf")

    async def current(self) -> Raid | None:
        """Raid mode as the service has it, at most ``REFRESH_S`` old.

        Raises:
            BackendUnavailable: the backend did not answer.
        """
        now = self._clock()
        if now < self._fresh_until:
            return self._raid
        raid = await self._backend.raid()
        self._raid, self._fresh_until = raid, self._clock() + REFRESH_S
        return raid

    async def set(self, raid: Raid | None) -> None:
        """Turn raid mode on (``raid``) or off (None) for the service."""
        await self._backend.set_raid(raid)
        self._raid, self._fresh_until = raid, self._clock() + REFRESH_S
