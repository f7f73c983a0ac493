"""What one server tells another through the backend's bus: the format, and its dispatch.

A bus message is about one session another server holds (its partner
relayed a frame, or a match of it formed or ended), or about every server
(a ban). The format is the cluster's wire contract between servers of
different versions during a rolling upgrade: fields are only ever added.

Dispatch hands each message to the session it names as news (``Said``,
``MatchFormed``, ``MatchEnded``, ``PartnerAway``, ``Resumed``): the session's core decides what its
client hears. A message that cannot be read is logged and dropped; one for
a session no longer here is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Literal, Protocol

import msgspec

from omiro_trio.backends.base import Backend, Ban
from omiro_trio.codes import PartnerReason
from omiro_trio.errors import BackendUnavailable
from omiro_trio.matchmaking import Match
from omiro_trio.session_events import (
    Event,
    MatchEnded,
    MatchFormed,
    PartnerAway,
    Resumed,
    Said,
)

log = logging.getLogger(__name__)

BusKind = Literal["matched", "resumed", "ended", "away", "relay", "ban"]
"""What a bus message says: ``ban`` goes to every server, the others to one session."""


class BusMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """What one server tells another about a session it holds."""

    to: str
    kind: BusKind
    match_id: str
    match: tuple[str, str, str, tuple[str, ...]] | None = None  # caller, callee, mode, common
    servers: tuple[str, str] = ("", "")  # "matched": the servers holding caller and callee
    reason: str = ""  # "ended": a PartnerReason
    pair: str = ""  # "matched": the match's pair tag (match_found's "pair"), if known
    languages: tuple[str, ...] = ()  # "matched": the languages the two share
    frame: str = ""
    chat: str | None = None
    target: str = ""  # "ban": the banned address or network
    origin: str = ""  # "ban": the server that sent it
    resumed: str = ""  # "resumed": the match it takes back (its tickets' match id)


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(BusMessage)


def relay(to: str, match_id: str, frame: bytes, chat: str | None) -> bytes:
    """``to``'s partner said ``frame`` (already encoded for ``to``) in ``match_id``."""
    message = BusMessage(to=to, kind="relay", match_id=match_id, frame=frame.decode(), chat=chat)
    return _encoder.encode(message)


def matched(to: str, match: Match, pair: str | None = None) -> bytes:
    """``match`` formed, with ``to`` in it (``pair``: its pair tag, if known)."""
    common = match.common_interests
    message = BusMessage(
        to=to,
        kind="matched",
        match_id=match.match_id,
        match=(match.caller, match.callee, match.mode, common),
        servers=match.servers,
        pair=pair or "",
        languages=match.common_languages,
    )
    return _encoder.encode(message)


def resumed(to: str, match: Match, resumed_from: str) -> bytes:
    """``match`` took back ``resumed_from``, with ``to`` in it (the seats of the two sides
    were taken back on two servers)."""
    message = BusMessage(
        to=to,
        kind="resumed",
        match_id=match.match_id,
        match=(match.caller, match.callee, match.mode, match.common_interests),
        servers=match.servers,
        resumed=resumed_from,
    )
    return _encoder.encode(message)


def away(to: str, match_id: str) -> bytes:
    """``to``'s partner in ``match_id`` lost its socket and may come back with its ticket."""
    return _encoder.encode(BusMessage(to=to, kind="away", match_id=match_id))


def ended(to: str, match_id: str, reason: PartnerReason) -> bytes:
    """``to``'s match ``match_id`` ended on its partner's side."""
    return _encoder.encode(BusMessage(to=to, kind="ended", match_id=match_id, reason=reason))


class Receiver(Protocol):
    """What dispatch hands messages to (the hub)."""

    @property
    def backend(self) -> Backend: ...

    def close_banned(self, target: str) -> int:
        """Close the local sockets ``target`` covers; raise ``ValueError`` for a bad target."""
        ...

    def tell_partner(self, session_id: str, event: Event) -> bool:
        """News for ``session_id`` if it is here; False when it is not."""
        ...


def dispatch(receiver: Receiver, raw: bytes) -> None:
    """Apply one message another server sent."""
    try:
        message = _decoder.decode(raw)
    except msgspec.DecodeError:
        log.warning("dropped a malformed bus message")
        return
    if message.kind == "ban":
        if message.origin != receiver.backend.server_id:
            try:
                receiver.close_banned(message.target)
            except ValueError:
                log.warning("dropped a ban message with a bad target")
        return
    event: Event
    if message.kind == "relay":
        event = Said(message.match_id, message.frame, message.chat)
    elif message.kind == "away":
        event = PartnerAway(message.match_id)
    elif message.kind == "ended":
        try:
            event = MatchEnded(message.match_id, PartnerReason(message.reason))
        except ValueError:
            log.warning("dropped an ended message with an unknown reason")
            return
    elif message.match is not None:
        caller, callee, mode, common = message.match
        match = Match(
            message.match_id, caller, callee, mode, common, message.servers, message.languages
        )
        if message.kind == "resumed":
            event = Resumed(match, message.resumed)
        else:
            event = MatchFormed(match, message.pair or None)
    else:
        return
    receiver.tell_partner(message.to, event)


async def put_ban_in_force(backend: Backend, ban: Ban, close_banned: Callable[[str], int]) -> int:
    """Keep ``ban``, close the local sockets it covers, and tell every other server.

    Returns how many local sockets were closed.

    Raises:
        BackendUnavailable: the ban could not be kept (nothing was closed).
    """
    await backend.add_ban(ban)
    closed = close_banned(ban.target)
    message = BusMessage(
        to="", kind="ban", match_id="", target=ban.target, origin=backend.server_id
    )
    try:
        await backend.broadcast(_encoder.encode(message))
    except BackendUnavailable as exc:
        # The ban is in force; other servers apply it to new sockets only.
        log.warning("could not tell other servers about the ban of %s: %s", ban.target, exc)
    return closed
