"""``GET /session/new``: a token for a new session (docs/protocol.md, "Session token").

Every new session starts with a token request; through hypercorn and quart
it costs more server CPU than the WebSocket upgrade and the match together
(BENCHMARKS.md), so it is one of the HTTP layer's own endpoints
(``http/routes.py``): answered with a response built directly as bytes,
on a connection's first request without h11 at all. This is the one place
that decides the answer: ban 403, raid mode 503 (``gate/raid.py``), rate
limit 429, the entry gate 401/403 (``gate/``, docs/gate.md), proof of work
401/403 (``gate/pow.py``: after the gate, so a solution is used up only by a
request the gate lets in), a backend that does not answer 503, else a token.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Final

from omiro_trio.backends.base import Backend
from omiro_trio.errors import BackendUnavailable
from omiro_trio.gate import EntryGate, GateRequest, OpenGate, Refuse
from omiro_trio.gate.entry import refusal
from omiro_trio.gate.passes import parse_cookies
from omiro_trio.gate.pow import HEADER as POW_HEADER
from omiro_trio.gate.pow import ProofOfWork
from omiro_trio.gate.raid import RaidSwitch
from omiro_trio.http.answers import HttpError, JsonAnswer, error
from omiro_trio.http.heads import RequestHead
from omiro_trio.metrics import Metrics
from omiro_trio.tokens import TokenSigner

SESSION_PATH: Final = "/session/new"
RATE_WINDOW_S: Final = 60.0

__all__ = ["SESSION_PATH", "NewSession"]


class NewSession:
    """The ``GET /session/new`` endpoint.

    Args:
        backend: bans and the per-client rate limit.
        signer: issues the token.
        metrics: counts the tokens issued.
        per_minute: ``limits.sessions_per_ip_per_minute``.
        wall: the wall clock (tokens expire in wall time).
        gate: the entry gate (``OpenGate``, the default, asks nothing and
            costs nothing).
        raid: raid mode's switch (None: never paused).
        pow: proof of work (None: never asked for).
    """

    __slots__ = (
        "_backend",
        "_gate",
        "_metrics",
        "_per_minute",
        "_pow",
        "_raid",
        "_signer",
        "_wall",
    )

    def __init__(
        self,
        backend: Backend,
        signer: TokenSigner,
        metrics: Metrics,
        *,
        per_minute: int,
        wall: Callable[[], float],
        gate: EntryGate | None = None,
        raid: RaidSwitch | None = None,
        pow: ProofOfWork | None = None,
    ) -> None:
        self._backend = backend
        self._pow = pow
        self._gate = None if gate is None or isinstance(gate, OpenGate) else gate
        self._raid = raid
        self._signer = signer
        self._metrics = metrics
        self._per_minute = per_minute
        self._wall = wall

    async def __call__(self, head: RequestHead, client: str) -> JsonAnswer:
        """The answer to ``GET /session/new`` from ``client``."""
        try:
            return await self._answer(head, client)
        except BackendUnavailable:
            return error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                HttpError.UNAVAILABLE,
                "the backend is not answering; try again shortly",
            )

    async def _answer(self, head: RequestHead, client: str) -> JsonAnswer:
        ban = await self._backend.ban_for(client)
        if ban is not None:
            return error(
                HTTPStatus.FORBIDDEN,
                HttpError.BANNED,
                "this address is banned",
                until=ban.until,
            )
        raid = None if self._raid is None else await self._raid.current()
        if raid is not None and raid.pause:
            return error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                HttpError.PAUSED,
                "new chats are paused for a while; please come back soon",
                headers=(("Retry-After", str(raid.retry_after_s)), ("Cache-Control", "no-store")),
                retry_after=raid.retry_after_s,
            )
        retry = await self._backend.hit_rate_limit(
            f"sessions:{client}", self._per_minute, RATE_WINDOW_S
        )
        if retry is not None:
            seconds = max(1, int(retry + 0.999))
            return error(
                HTTPStatus.TOO_MANY_REQUESTS,
                HttpError.RATE_LIMITED,
                "too many new sessions; try again later",
                headers=(("Retry-After", str(seconds)),),
                retry_after=seconds,
            )
        band = subject = ""
        if self._gate is not None:
            cookies = parse_cookies(head.headers.get("cookie", ()))
            verdict = await self._gate.admit(GateRequest(client, cookies, self._wall()))
            if isinstance(verdict, Refuse):
                return refusal(verdict)
            # The token carries what the gate knew: the age band that keeps
            # matching apart, the subject that bans and reports may name.
            band, subject = verdict.claims.age_band or "", verdict.claims.subject
            ban = await self._backend.account_ban(subject) if subject else None
            if ban is not None:
                return error(
                    HTTPStatus.FORBIDDEN,
                    HttpError.BANNED,
                    "this account is banned",
                    until=ban.until,
                )
        if self._pow is not None:
            refused = await self._pow.refused(head.header(POW_HEADER))
            if refused is not None:
                return refused
            self._pow.switch.issued()
        issued = self._signer.issue(self._wall(), band=band, subject=subject)
        self._metrics.sessions_issued.inc()
        body = {
            "token": issued.token,
            "session_id": issued.session_id,
            "expires_at": issued.expires_at,
        }
        return JsonAnswer(HTTPStatus.OK, body, (("Cache-Control", "no-store"),))
