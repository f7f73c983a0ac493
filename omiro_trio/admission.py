"""Before the upgrade: who is asking, and may they open a socket.

The handshake checks of PROTOCOL.md run here, in its order: 403 origin,
403 banned, 429 rate limited, 401 token, 409 already connected (plus 503
while draining). The answer is either the claimed session id or a
``Rejection`` the connection writes as a plain HTTP response.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trio

from omiro_trio.addresses import address_group, client_ip, origin_allowed
from omiro_trio.context import ServerContext
from omiro_trio.errors import BackendUnavailable, InvalidToken

CONCURRENT_LIMIT_RETRY_S = 5


class SocketSlot:
    """The ``sockets_per_ip`` slot an upgrade holds, if it took one.

    ``admit`` takes it; the WebSocket handler gives it back
    (``release_slot``) when the connection ends, however it ends.
    """

    __slots__ = ("client",)

    def __init__(self) -> None:
        self.client: str | None = None


@dataclass(slots=True)  # (not frozen: a frozen dataclass costs more to build, per request)
class RequestHead:
    """The parts of a request head the checks need; nothing changes them once read."""

    target: str
    headers: dict[str, list[str]]  # lower-case name -> values in order
    method: str = "GET"
    version: str = "1.1"  # the request line's HTTP version
    slot: SocketSlot = field(default_factory=SocketSlot, compare=False)

    def header(self, name: str) -> str | None:
        values = self.headers.get(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    body: dict[str, Any]
    retry_after_s: int | None = None


def peer_ip(stream: trio.abc.Stream) -> str:
    """The socket peer's address, as the front door read it when it accepted.

    Never raises: a socket reset before anyone asked has no peer to read
    (``ENOTCONN``), so the front door reads it once, up front.
    """
    peer = getattr(stream, "peer", None)
    if isinstance(peer, str):
        return peer
    socket = getattr(stream, "socket", None)
    if socket is None:
        return "unknown"
    try:
        return str(socket.getpeername()[0])
    except OSError:
        return "unknown"


def websocket_client(ctx: ServerContext, stream: trio.abc.Stream, head: RequestHead) -> str:
    """The client (address group) of a request: see ``addresses.client_ip``.

    A stream from a peer that is not a trusted proxy carries its client as
    the front door computed it on accept (``client``): the same answer.
    """
    known = getattr(stream, "client", None)
    if isinstance(known, str):
        return known
    server = ctx.config.server
    named = head.header(server.client_ip_header.lower()) if server.client_ip_header else None
    ip = client_ip(
        peer_ip(stream), head.headers.get("x-forwarded-for", []), ctx.trusted_proxies, named
    )
    return address_group(ip, server.ipv6_prefix)


async def admit(ctx: ServerContext, head: RequestHead, ip: str) -> str | Rejection:
    """Run the handshake checks; return the session id to accept, or why not.

    ``ip`` is the client (address group). An accepted upgrade holds one of
    its ``sockets_per_ip`` slots in ``head.slot`` until ``release_slot``.
    A backend that does not answer is a 503 for this client, never an error.
    """
    try:
        return await _checks(ctx, head, ip)
    except BackendUnavailable:
        await release_slot(ctx, head.slot)
        return Rejection(
            503,
            {"error": "unavailable", "message": "the service is briefly unavailable"},
            retry_after_s=CONCURRENT_LIMIT_RETRY_S,
        )


async def _checks(ctx: ServerContext, head: RequestHead, ip: str) -> str | Rejection:
    config = ctx.config
    if not origin_allowed(
        head.header("origin"), head.header("host"), config.server.allowed_origins
    ):
        return Rejection(403, {"error": "origin_not_allowed", "message": "origin not allowed"})
    ban = await ctx.backend.ban_for(ip)
    if ban is not None:
        return Rejection(
            403, {"error": "banned", "message": "this address is banned", "until": ban.until}
        )
    if ctx.hub.draining:
        return Rejection(
            503, {"error": "draining", "message": "server is shutting down"}, retry_after_s=1
        )
    if head.slot.client is None and not await ctx.backend.reserve_socket(
        ip, config.limits.sockets_per_ip
    ):
        return Rejection(
            429,
            {
                "error": "rate_limited",
                "message": "too many open sockets from this address",
                "retry_after": CONCURRENT_LIMIT_RETRY_S,
            },
            retry_after_s=CONCURRENT_LIMIT_RETRY_S,
        )
    if head.slot.client is None:
        head.slot.client = ip
    verdict = await _check_token(ctx, head, ip)
    if isinstance(verdict, Rejection):
        await release_slot(ctx, head.slot)
    return verdict


async def release_slot(ctx: ServerContext, slot: SocketSlot) -> None:
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
        await ctx.backend.release_socket(client)


async def _check_token(ctx: ServerContext, head: RequestHead, ip: str) -> str | Rejection:
    token = head.header("x-session-token")
    if token is None:
        tokens = parse_qs(urlsplit(head.target).query).get("token")
        token = tokens[0] if tokens else None
    if token is None:
        return Rejection(401, {"error": "invalid_token", "message": "missing session token"})
    try:
        session_id = ctx.signer.verify(token, ctx.wall())
    except InvalidToken as exc:
        return Rejection(
            401, {"error": "invalid_token", "message": f"invalid session token: {exc}"}
        )
    try:
        claimed = await ctx.backend.claim_session(session_id, ip)
    except BackendUnavailable:
        # The claim may have been made and only its answer lost: undo it
        # (later, if the backend is away), or the session stays held.
        await ctx.hub.release_claim(session_id)
        raise
    if not claimed:
        return Rejection(
            409, {"error": "already_connected", "message": "this session is already connected"}
        )
    return session_id
