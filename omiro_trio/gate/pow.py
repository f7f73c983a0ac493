"""Proof of work against bots on ``GET /session/new`` (docs/gate.md, "Proof of work").

The scheme is ALTCHA's (the ``altcha`` package; the page runs the vendored
``altcha`` solver): ``GET /gate/challenge`` hands out a challenge signed
with a key derived from the session secret (HMAC-SHA-256) that expires
after ``[gate] pow_expiry_s``; ``/session/new`` then wants the solution in
the ``X-Omiro-Pow`` header (the payload as ALTCHA encodes it: base64 of its
JSON) and answers ``{"error": "pow", "reason": ...}`` without it. A
challenge is the deterministic kind: the server picks a number up to the
difficulty (``pow_max_number``) and signs the first half of
SHA-256(salt, nonce, number); the solver tries numbers from 0 until it finds
it (half the difficulty on average). Checking a solution costs the server
one HMAC (the signature) and one SHA-256 (the number), then one backend call
that remembers the challenge as used (``Backend.use_pow_solution``, so a
solution is good once, on every server).

When it is asked for (``PowSwitch.max_number``):

* ``pow_mode = "always"``: every new session;
* ``"adaptive"``: while the service's new sessions of the last minute exceed
  ``pow_adaptive_per_minute``, and ``pow_quiet_s`` after (the backend keeps
  the count and the switch, so every server agrees within ``REFRESH_S``);
* raid mode on without pausing (``Raid.pause`` false): every new session, at
  ``pow_raid_max_number``, whatever the mode.

Each server counts the tokens it issues and adds them to the backend's
count once per ``REFRESH_S`` (``PowSwitch.run``): no round trip on the hot
path, and a backend that does not answer leaves the switch as it was.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable
from enum import StrEnum
from http import HTTPStatus
from typing import Any, Final

import altcha
import trio

from omiro_trio.backends.base import Backend
from omiro_trio.config import GateConfig
from omiro_trio.errors import BackendUnavailable
from omiro_trio.gate.raid import RaidSwitch
from omiro_trio.http.answers import HttpError, JsonAnswer, error

__all__ = [
    "ALGORITHM",
    "CHALLENGE_PATH",
    "HEADER",
    "MAX_PAYLOAD_CHARS",
    "MAX_REMEMBERED",
    "REFRESH_S",
    "PowReason",
    "PowSwitch",
    "ProofOfWork",
    "pow_key",
]

log = logging.getLogger(__name__)

CHALLENGE_PATH: Final = "/gate/challenge"
HEADER: Final = "x-omiro-pow"
ALGORITHM: Final = "SHA-256"  # one SHA-256 per number tried (cost 1)
MAX_PAYLOAD_CHARS: Final = 2048  # a real payload is about 600; longer is refused unread
MAX_REMEMBERED: Final = 100_000  # used challenges remembered at once (docs/security.md)
REFRESH_S: Final = 1.0  # how often a server adds its count and reads the adaptive switch
_KEY_LABEL: Final = b"omiro proof of work v1"
_PARSE_ERRORS = (ValueError, KeyError, TypeError, AttributeError, RecursionError)


class PowReason(StrEnum):
    """Why ``/session/new`` wants (other) proof of work (docs/protocol.md)."""

    REQUIRED = "required"  # 401: none brought
    INVALID = "invalid"  # 403: not a payload, not our signature, or a wrong number
    EXPIRED = "expired"  # 403: too old, or easier than asked for now (raid mode)
    USED = "used"  # 403: that challenge was used already


def pow_key(secret: bytes) -> bytes:
    """The challenges' HMAC key: derived from the session secret, so every
    server of a service (which shares the secret) checks the others'."""
    return hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()


class PowSwitch:
    """Whether proof of work is asked for now, and how hard (see the module doc).

    Args:
        config: the ``[gate]`` table (``pow_*`` keys).
        backend: keeps the service's count of new sessions and the adaptive switch.
        raid: raid mode's switch (None: no raid mode).
    """

    __slots__ = ("_adaptive_on", "_backend", "_config", "_pending", "_raid")

    def __init__(self, config: GateConfig, backend: Backend, raid: RaidSwitch | None) -> None:
        self._config = config
        self._backend = backend
        self._raid = raid
        self._pending = 0  # tokens issued here, not yet added to the backend's count
        self._adaptive_on = False

    @property
    def adaptive_on(self) -> bool:
        """The adaptive switch as this server last read it."""
        return self._adaptive_on

    async def max_number(self) -> int | None:
        """The difficulty asked for now, or None when no proof of work is.

        Raises:
            BackendUnavailable: raid mode could not be read.
        """
        config = self._config
        raid = None if self._raid is None else await self._raid.current()
        if raid is not None and not raid.pause:
            return max(config.pow_raid_max_number, config.pow_max_number)
        if config.pow_mode == "always" or (config.pow_mode == "adaptive" and self._adaptive_on):
            return config.pow_max_number
        return None

    def issued(self) -> None:
        """One token was issued here (counted for ``adaptive``)."""
        self._pending += 1

    async def refresh(self) -> None:
        """Add this server's new tokens to the service's count; read the switch.

        Raises:
            BackendUnavailable: nothing changed (the count is kept for the next try).
        """
        added, self._pending = self._pending, 0
        config = self._config
        try:
            self._adaptive_on = await self._backend.note_new_sessions(
                added, config.pow_adaptive_per_minute, float(config.pow_quiet_s)
            )
        except BackendUnavailable:
            self._pending += added
            raise

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """``refresh`` every ``REFRESH_S`` (``pow_mode = "adaptive"`` only), until cancelled."""
        task_status.started()
        if self._config.pow_mode != "adaptive":
            return
        while True:
            was = self._adaptive_on
            try:
                await self.refresh()
            except BackendUnavailable as exc:
                log.warning("adaptive proof of work: the backend did not answer (%s)", exc)
            if self._adaptive_on != was:
                log.warning(
                    "adaptive proof of work switched %s", "on" if self._adaptive_on else "off"
                )
            await trio.sleep(REFRESH_S)


class ProofOfWork:
    """Hands out challenges and checks solutions (see the module doc).

    Args:
        config: the ``[gate]`` table.
        secret: the session secret (the challenges' key is derived from it).
        backend: remembers the used challenges (service-wide on Redis).
        switch: whether proof of work is asked for now, and how hard.
        wall: unix time (challenges expire in it).
        randbelow: picks each challenge's number (``secrets.randbelow``).
    """

    __slots__ = ("_backend", "_expiry_s", "_key", "_randbelow", "_switch", "_wall")

    def __init__(
        self,
        config: GateConfig,
        secret: bytes,
        backend: Backend,
        switch: PowSwitch,
        *,
        wall: Callable[[], float] = time.time,
        randbelow: Callable[[int], int] = secrets.randbelow,
    ) -> None:
        self._key = pow_key(secret)
        self._backend = backend
        self._switch = switch
        self._expiry_s = config.pow_expiry_s
        self._wall = wall
        self._randbelow = randbelow

    @property
    def switch(self) -> PowSwitch:
        return self._switch

    def challenge(self, max_number: int) -> dict[str, Any]:
        """A new signed challenge of difficulty ``max_number`` (ALTCHA's JSON form)."""
        expires_at = math.ceil(self._wall() + self._expiry_s)
        made = altcha.create_challenge(
            ALGORITHM,
            1,
            counter=self._randbelow(max_number + 1),
            expires_at=expires_at,
            data={"max": max_number},
            hmac_secret=self._key,
        )
        return dict(made.to_dict())

    async def challenge_answer(self) -> JsonAnswer:
        """``GET /gate/challenge``: ``{"required": false}``, or a challenge to solve."""
        try:
            max_number = await self._switch.max_number()
        except BackendUnavailable:
            return error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                HttpError.UNAVAILABLE,
                "the backend is not answering; try again shortly",
            )
        body: dict[str, Any] = {"required": max_number is not None}
        if max_number is not None:
            body["challenge"] = self.challenge(max_number)
        return JsonAnswer(HTTPStatus.OK, body, (("Cache-Control", "no-store"),))

    async def refused(self, payload: str | None) -> JsonAnswer | None:
        """None if ``payload`` (the ``X-Omiro-Pow`` header) may have a token, or
        none is asked for now; else the ``pow`` error. A good payload is used up.

        Raises:
            BackendUnavailable: the endpoint answers 503.
        """
        max_number = await self._switch.max_number()
        if max_number is None:
            return None
        if not payload:
            return _refusal(PowReason.REQUIRED, "solve a challenge from GET /gate/challenge")
        if len(payload) > MAX_PAYLOAD_CHARS:
            return _refusal(PowReason.INVALID, "not a proof-of-work payload")
        solved = self._check(payload, max_number)
        if isinstance(solved, tuple):
            return _refusal(*solved)
        used = await self._backend.use_pow_solution(
            str(solved.signature), float(solved.parameters.expires_at or 0), MAX_REMEMBERED
        )
        if used == "used":
            return _refusal(PowReason.USED, "that challenge was used already; solve a new one")
        if used == "full":
            return error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                HttpError.UNAVAILABLE,
                "too many new sessions at once; try again shortly",
                headers=(("Retry-After", "10"), ("Cache-Control", "no-store")),
                retry_after=10,
            )
        return None

    def _check(self, payload: str, max_number: int) -> altcha.Challenge | tuple[PowReason, str]:
        """The pure part: a signed, unexpired, hard enough, solved challenge (or why not)."""
        try:
            parsed = altcha.Payload.from_base64(payload)
            expires_at = parsed.challenge.parameters.expires_at
            data = parsed.challenge.parameters.data
        except _PARSE_ERRORS:
            return PowReason.INVALID, "not a proof-of-work payload"
        if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
            return PowReason.INVALID, "not a challenge of this server"
        if expires_at <= self._wall():
            return PowReason.EXPIRED, "the challenge expired; solve a new one"
        try:
            result = altcha.verify_solution(parsed, self._key)
        except _PARSE_ERRORS:
            return PowReason.INVALID, "not a proof-of-work payload"
        if result.expired:
            return PowReason.EXPIRED, "the challenge expired; solve a new one"
        if not result.verified:
            return PowReason.INVALID, "not a solution of a challenge of this server"
        signed_max = data.get("max") if isinstance(data, dict) else None
        if not isinstance(signed_max, int) or signed_max < max_number:
            return PowReason.EXPIRED, "a harder challenge is asked for now; solve a new one"
        return parsed.challenge


def _refusal(reason: PowReason, message: str) -> JsonAnswer:
    status = HTTPStatus.UNAUTHORIZED if reason is PowReason.REQUIRED else HTTPStatus.FORBIDDEN
    return error(
        status,
        HttpError.POW,
        message,
        headers=(("Cache-Control", "no-store"),),
        reason=reason.value,
        challenge=CHALLENGE_PATH,
    )
