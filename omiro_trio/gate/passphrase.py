"""``kind = "passphrase"``: one shared phrase, typed once, remembered by the gate pass.

The phrase is configured only as its argon2id hash (``[gate]
passphrase_hash``, made by ``omiro gate hash-passphrase``). ``POST
/gate/passphrase`` with ``{"passphrase": "..."}`` checks a try: each try
of a client is counted first (``[gate] tries_per_minute``, service-wide on
Redis), so a guesser gets that many hashes a minute and no more; the hash
runs in a worker thread, at most ``accounts.HASHES_AT_ONCE`` at a time in
the process. A right phrase gets the gate pass (204, ``Set-Cookie``); a
wrong one 403 ``{"error": "gate", "gate": "passphrase", "reason": "wrong"}``.

The passes are bound to the phrase (their epoch is a hash of its hash):
a new phrase ends every pass given under the old one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import msgspec
from quart import Response, request

from omiro_trio import accounts
from omiro_trio.backends.base import Backend
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

__all__ = ["MAX_PASSPHRASE_CHARS", "PATH", "PassphraseGate", "epoch_of"]

PATH: Final = "/gate/passphrase"
MAX_PASSPHRASE_CHARS: Final = 256


class _Entry(msgspec.Struct, forbid_unknown_fields=False):
    passphrase: str


_decode = msgspec.json.Decoder(_Entry).decode


def epoch_of(passphrase_hash: str) -> str:
    """What the passes are bound to: a short hash of the phrase's hash."""
    return hashlib.sha256(passphrase_hash.encode()).hexdigest()[:16]


class PassphraseGate:
    """The passphrase gate.

    Args:
        passphrase_hash: the phrase's argon2id hash (a PHC string).
        secret: the session secret (signs the passes).
        backend: counts the tries.
        remember_s: how long a pass is good for.
        tries_per_minute: a client's tries of the phrase per minute.
        wall: unix time.
    """

    def __init__(
        self,
        passphrase_hash: str,
        secret: bytes,
        backend: Backend,
        *,
        remember_s: int,
        tries_per_minute: int,
        wall: Callable[[], float],
    ) -> None:
        self._hash = passphrase_hash
        self._passes = GatePasses(secret, epoch_of(passphrase_hash), remember_s)
        self._tries = Tries(backend, tries_per_minute)
        self._wall = wall

    @property
    def kind(self) -> GateKind:
        return "passphrase"

    async def admit(self, request: GateRequest) -> Verdict:
        return self._passes.admit(request, "passphrase", "this service asks for its passphrase")

    async def enter(self, body: bytes | str, client: str, *, secure: bool) -> Response:
        """The answer to one try of the phrase (``POST /gate/passphrase``)."""
        try:
            phrase = _decode(body).passphrase
        except msgspec.DecodeError as exc:
            return bad_body(f'expected {{"passphrase": "..."}}: {exc}')
        if not phrase or len(phrase) > MAX_PASSPHRASE_CHARS:
            return bad_body(f"a passphrase has 1 to {MAX_PASSPHRASE_CHARS} characters")
        if (limited := await self._tries.refused(client)) is not None:
            return limited
        if not await accounts.check_password(self._hash, phrase):
            return refused(Refuse("passphrase", RefuseReason.WRONG, "that is not the passphrase"))
        return admitted(self._passes, Claims("passphrase"), self._wall(), secure=secure)

    def register(self, app: QuartTrio, entry: EntryRequests) -> None:
        @app.post(PATH)
        async def enter_passphrase() -> Response:
            body = await request.get_data(as_text=False)
            return await self.enter(body, entry.client(), secure=entry.secure())
