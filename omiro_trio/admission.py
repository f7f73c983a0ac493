"""Before the upgrade: who is asking, and may they open a socket.

The handshake checks of PROTOCOL.md run here, in its order: 403 origin,
403 banned, 429 rate limited, 401 token, 403 banned (the token's account),
409 already connected (plus 503
while draining); a malformed ``Sec-WebSocket-Protocol`` is refused with 400
before them all (``subprotocol_refusal``, before the upgrade is accepted).
The answer is either the claimed session id or the refusal (a
``JsonAnswer``) the connection writes as a plain HTTP response.

``Admission`` is given what the checks need (the backend, the token
signer, the settings, and callables for the hub's two parts in it: whether
the server drains, and undoing a claim whose answer was lost); it knows no
server context and no hub.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress
from http import HTTPStatus
from typing import Final
from urllib.parse import parse_qs

import trio

from omiro_trio.addresses import origin_allowed
from omiro_trio.backends.base import Backend
from omiro_trio.errors import BackendUnavailable, InvalidToken
from omiro_trio.http.answers import HttpError, JsonAnswer, error
from omiro_trio.http.heads import RequestHead, header_tokens
from omiro_trio.tokens import SessionClaims, TokenSigner

CONCURRENT_LIMIT_RETRY_S: Final = 5

SUBPROTOCOL: Final = "omiro"
"""The WebSocket subprotocol the server speaks, echoed when the client offers it."""

TOKEN_SUBPROTOCOL: Final = "omiro.token."
"""What starts the offered subprotocol that carries the session token, its colons
written as dots (a subprotocol is an HTTP token: no colons)."""

_RETRY_CONCURRENT: Final = (("Retry-After", str(CONCURRENT_LIMIT_RETRY_S)),)


def subprotocol_token(head: RequestHead) -> str | None:
    """The session token offered as a subprotocol (``omiro.token.<token>``), if any.

    The header may name several subprotocols, in one or more
    ``Sec-WebSocket-Protocol`` headers, comma-separated. Linear in the
    header's size.

    Raises:
        ValueError: the header is malformed (an empty or non-token entry), offers
            two tokens, or a token without the ``omiro`` subprotocol (which the
            server echoes: the token itself is never echoed); the message says
            which, for a 400.
    """
    values = head.headers.get("sec-websocket-protocol")
    if not values:
        return None
    offered = header_tokens(values)
    if offered is None:
        raise ValueError("Sec-WebSocket-Protocol must be a comma-separated list of tokens")
    tokens = [name for name in offered if name.startswith(TOKEN_SUBPROTOCOL)]
    if not tokens:
        return None
    if len(tokens) > 1:
        raise ValueError("Sec-WebSocket-Protocol offers more than one session token")
    if SUBPROTOCOL not in offered:
        raise ValueError(
            f'Sec-WebSocket-Protocol: a session token must come with the "{SUBPROTOCOL}"'
            " subprotocol"
        )
    return tokens[0][len(TOKEN_SUBPROTOCOL) :].replace(".", ":")


def subprotocol_refusal(head: RequestHead) -> JsonAnswer | None:
    """The 400 for a malformed ``Sec-WebSocket-Protocol`` (``subprotocol_token``), if it is."""
    try:
        subprotocol_token(head)
    except ValueError as exc:
        return error(HTTPStatus.BAD_REQUEST, HttpError.BAD_REQUEST, str(exc))
    return None


class SocketSlot:
    """The ``sockets_per_ip`` slot an upgrade holds, if it took one.

    ``Admission.admit`` takes it; the WebSocket handler gives it back
    (``Admission.release_slot``) when the connection ends, however it ends.
    """

    __slots__ = ("client",)

    def __init__(self) -> None:
        self.client: str | None = None


class Admission:
    """The handshake checks of one server.

    Args:
        backend: bans, the per-client socket count, session claims.
        signer: verifies session tokens.
        allowed_origins: ``server.allowed_origins``.
        sockets_per_ip: ``limits.sockets_per_ip``.
        draining: whether the server is draining (new sockets are refused).
        release_claim: undoes a session claim whose answer was lost.
        wall: the wall clock (tokens expire in wall time).
    """

    __slots__ = (
        "_allowed_origins",
        "_backend",
        "_draining",
        "_release_claim",
        "_signer",
        "_sockets_per_ip",
        "_wall",
    )

    def __init__(
        self,
        backend: Backend,
        signer: TokenSigner,
        *,
        allowed_origins: tuple[str, ...],
        sockets_per_ip: int,
        draining: Callable[[], bool],
        release_claim: Callable[[str], Awaitable[None]],
        wall: Callable[[], float],
    ) -> None:
        self._backend = backend
        self._signer = signer
        self._allowed_origins = allowed_origins
        self._sockets_per_ip = sockets_per_ip
        self._draining = draining
        self._release_claim = release_claim
        self._wall = wall

    async def admit(
        self, head: RequestHead, client: str, slot: SocketSlot
    ) -> SessionClaims | JsonAnswer:
        """Run the handshake checks; return the session (its token's claims) to accept,
        or the refusal.

        An accepted upgrade holds one of ``client``'s ``sockets_per_ip``
        slots in ``slot`` until ``release_slot``. A backend that does not
        answer is a 503 for this client, never an error.
        """
        try:
            return await self._checks(head, client, slot)
        except BackendUnavailable:
            await self.release_slot(slot)
            return error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                HttpError.UNAVAILABLE,
                "the service is briefly unavailable",
                headers=_RETRY_CONCURRENT,
            )

    async def _checks(
        self, head: RequestHead, client: str, slot: SocketSlot
    ) -> SessionClaims | JsonAnswer:
        if not origin_allowed(head.header("origin"), head.header("host"), self._allowed_origins):
            return error(HTTPStatus.FORBIDDEN, HttpError.ORIGIN_NOT_ALLOWED, "origin not allowed")
        ban = await self._backend.ban_for(client)
        if ban is not None:
            return error(
                HTTPStatus.FORBIDDEN, HttpError.BANNED, "this address is banned", until=ban.until
            )
        if self._draining():
            return error(
                HTTPStatus.SERVICE_UNAVAILABLE,
                HttpError.DRAINING,
                "server is shutting down",
                headers=(("Retry-After", "1"),),
            )
        if slot.client is None and not await self._backend.reserve_socket(
            client, self._sockets_per_ip
        ):
            return error(
                HTTPStatus.TOO_MANY_REQUESTS,
                HttpError.RATE_LIMITED,
                "too many open sockets from this address",
                headers=_RETRY_CONCURRENT,
                retry_after=CONCURRENT_LIMIT_RETRY_S,
            )
        if slot.client is None:
            slot.client = client
        verdict = await self._check_token(head, client)
        if isinstance(verdict, JsonAnswer):
            await self.release_slot(slot)
        return verdict

    async def release_slot(self, slot: SocketSlot) -> None:
        """Give back the socket slot ``admit`` took for an upgrade, if it took one.

        Runs shielded (a closing connection is often being cancelled); the
        backend call has its own deadline. A backend that does not answer keeps
        the slot until the server's next ``sync`` repairs it.
        """
        client = slot.client
        if client is None:
            return
        slot.client = None
        with trio.CancelScope(shield=True), suppress(BackendUnavailable):
            await self._backend.release_socket(client)

    async def _check_token(self, head: RequestHead, client: str) -> SessionClaims | JsonAnswer:
        # Where proxies log nothing first: a header, then the subprotocol, then the URL.
        token = head.header("x-session-token")
        if token is None:
            try:
                token = subprotocol_token(head)
            except ValueError as exc:  # (refused before the upgrade was accepted)
                return error(HTTPStatus.BAD_REQUEST, HttpError.BAD_REQUEST, str(exc))
        if token is None:
            tokens = parse_qs(head.query).get("token")
            token = tokens[0] if tokens else None
        if token is None:
            return error(HTTPStatus.UNAUTHORIZED, HttpError.INVALID_TOKEN, "missing session token")
        try:
            claims = self._signer.verify_claims(token, self._wall())
        except InvalidToken as exc:
            return error(
                HTTPStatus.UNAUTHORIZED,
                HttpError.INVALID_TOKEN,
                f"invalid session token: {exc}",
            )
        if claims.subject:
            ban = await self._backend.account_ban(claims.subject)
            if ban is not None:
                return error(
                    HTTPStatus.FORBIDDEN,
                    HttpError.BANNED,
                    "this account is banned",
                    until=ban.until,
                )
        session_id = claims.session_id
        try:
            claimed = await self._backend.claim_session(session_id, client, claims.subject)
        except BackendUnavailable:
            # The claim may have been made and only its answer lost: undo it
            # (later, if the backend is away), or the session stays held.
            await self._release_claim(session_id)
            raise
        if not claimed:
            return error(
                HTTPStatus.CONFLICT,
                HttpError.ALREADY_CONNECTED,
                "this session is already connected",
            )
        return claims
