"""``kind = "invite"``: invite codes made by the operator, opened by a link.

A code is ``secrets.token_urlsafe(16)`` (128 random bits), shown once when
it is made (``omiro invite create``, ``POST /admin/invites``); the backend
keeps only its SHA-256 and finds the invite by that, so what Redis holds
cannot be turned back into a code. ``https://host/?invite=CODE`` opens the
page, which sends the code to ``POST /gate/invite`` (``{"code": "..."}``):
each try of a client is counted first (``[gate] tries_per_minute``), then
one entry of the invite is taken in one atomic step of the backend (two
servers never hand out the last entry twice). A good code gets the gate
pass (its subject: the invite's id); else 403 with the reason: ``unknown``
(never made, or revoked), ``expired``, ``used_up``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import msgspec
from quart import Response, request

from omiro_trio.backends.base import INVITE_ID_CHARS, Backend, Invite
from omiro_trio.gate import (
    Claims,
    EntryRequests,
    GateKind,
    GateRequest,
    Refuse,
    RefuseReason,
    Verdict,
)
from omiro_trio.gate.entry import Tries, admitted, bad_body, refused
from omiro_trio.gate.passes import GatePasses

if TYPE_CHECKING:
    from quart_trio import QuartTrio

__all__ = ["CODE_BYTES", "MAX_CODE_CHARS", "PATH", "InviteGate", "invite_key", "new_invite"]

PATH: Final = "/gate/invite"
CODE_BYTES: Final = 16
MAX_CODE_CHARS: Final = 100  # far above a code's 22; longer is not looked up
EPOCH: Final = "invite"

_REASONS: Final = {
    "unknown": (RefuseReason.UNKNOWN, "this invite code is not valid"),
    "expired": (RefuseReason.EXPIRED, "this invite has expired"),
    "used_up": (RefuseReason.USED_UP, "this invite has been used up"),
}


class _Entry(msgspec.Struct, forbid_unknown_fields=False):
    code: str


_decode = msgspec.json.Decoder(_Entry).decode


def invite_key(code: str) -> str:
    """What the backend finds an invite by: the code's SHA-256, in hex."""
    return hashlib.sha256(code.encode("utf-8", "replace")).hexdigest()


def new_invite(
    *, uses: int, expires_at: float, now: float, by: str, note: str = ""
) -> tuple[str, Invite]:
    """A fresh code and its record (the code is in the record only as its hash)."""
    code = secrets.token_urlsafe(CODE_BYTES)
    key = invite_key(code)
    invite = Invite(
        id=key[:INVITE_ID_CHARS],
        key=key,
        uses=uses,
        left=uses,
        expires_at=expires_at,
        created_at=now,
        by=by,
        note=note,
    )
    return code, invite


class InviteGate:
    """The invite gate.

    Args:
        secret: the session secret (signs the passes).
        backend: keeps the invites and counts the tries.
        remember_s: how long a pass is good for.
        tries_per_minute: a client's tries of a code per minute.
        wall: unix time.
    """

    def __init__(
        self,
        secret: bytes,
        backend: Backend,
        *,
        remember_s: int,
        tries_per_minute: int,
        wall: Callable[[], float],
    ) -> None:
        self._backend = backend
        self._passes = GatePasses(secret, EPOCH, remember_s)
        self._tries = Tries(backend, tries_per_minute)
        self._wall = wall

    @property
    def kind(self) -> GateKind:
        return "invite"

    async def admit(self, request: GateRequest) -> Verdict:
        return self._passes.admit(request, "invite", "this service is open by invitation")

    async def enter(self, body: bytes | str, client: str, *, secure: bool) -> Response:
        """The answer to one try of a code (``POST /gate/invite``)."""
        try:
            code = _decode(body).code.strip()
        except msgspec.DecodeError as exc:
            return bad_body(f'expected {{"code": "..."}}: {exc}')
        if not code or len(code) > MAX_CODE_CHARS:
            return bad_body(f"an invite code has 1 to {MAX_CODE_CHARS} characters")
        if (limited := await self._tries.refused(client)) is not None:
            return limited
        key = invite_key(code)
        used = await self._backend.use_invite(key)
        if used == "admitted":
            claims = Claims("invite", subject=key[:INVITE_ID_CHARS])
            return admitted(self._passes, claims, self._wall(), secure=secure)
        reason, message = _REASONS[used]
        return refused(Refuse("invite", reason, message))

    def register(self, app: QuartTrio, entry: EntryRequests) -> None:
        @app.post(PATH)
        async def enter_invite() -> Response:
            body = await request.get_data(as_text=False)
            return await self.enter(body, entry.client(), secure=entry.secure())
