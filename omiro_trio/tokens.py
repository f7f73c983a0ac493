"""Session tokens and TURN credentials.

This module is pure: time arrives as a value and the only randomness is the
session id (``uuid.uuid4``) and ``new_secret``. It implements PROTOCOL.md
"Session token":

    token = "<session uuid4>:<expiry unix seconds>:<hex HMAC-SHA256(secret, "<uuid>:<expiry>")>"

and, for a session the entry gate admitted with claims (an age band, a
subject: docs/gate.md),

    token = "<uuid>:<expiry>:<band>:<subject>:<hex HMAC-SHA256(secret, everything before)>"

where ``band`` is ``adult``, ``minor`` or empty (unknown) and ``subject``
0..64 of ``[A-Za-z0-9_-]``. Only ``:`` separates parts and every part is
made of HTTP token characters, so a token still travels as a WebSocket
subprotocol (``:`` written as ``.``).

Invariants:

* ``TokenSigner.verify`` accepts only what ``TokenSigner.issue`` produces with
  the same secret: exactly three ``:``-separated parts, a canonical lower-case
  uuid4, an expiry of 1..``MAX_EXPIRY_DIGITS`` ASCII digits (no sign, no
  spaces, no other Unicode digits), a 64-character lower-case hex signature.
  The shape is checked before any HMAC is computed, and the signature is
  compared in constant time (``hmac.compare_digest``).
* A token is expired when ``now >= expiry``. Expiry is checked only after the
  signature, so a forged token is reported as forged whatever its expiry.
* ``verify`` raises ``InvalidToken`` and nothing else, for any ``str``.
* It does not know which sessions are connected: rejecting a second
  connection for one session is the caller's job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Final

from omiro_trio.codes import ErrorCode
from omiro_trio.errors import InvalidTicket, InvalidToken
from omiro_trio.records import record

__all__ = [
    "PAIR_TAG_CHARS",
    "IssuedToken",
    "SessionClaims",
    "Ticket",
    "TicketSigner",
    "TokenSigner",
    "new_secret",
    "turn_credentials",
]

# 64 bits in hex: two pairs of networks share a tag by chance once in 2**32
# pairs (the birthday bound), far beyond the matches one page ever compares.
PAIR_TAG_CHARS = 16

SECRET_BYTES: Final = 32
# Unix seconds stay below 10**12 for the next 30,000 years.
MAX_EXPIRY_DIGITS: Final = 12
MAX_SUBJECT_CHARS: Final = 64
# uuid (36) + ":" + expiry + [":" + band + ":" + subject] + ":" + signature (64)
_MAX_TOKEN_LENGTH: Final = 36 + 1 + MAX_EXPIRY_DIGITS + 1 + 5 + 1 + MAX_SUBJECT_CHARS + 1 + 64

# [0-9a-f] rather than \d or \w: those also match non-ASCII digits and letters.
_TOKEN_RE: Final = re.compile(
    r"(?P<session>[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})"
    rf":(?P<expiry>[0-9]{{1,{MAX_EXPIRY_DIGITS}}})"
    rf"(?::(?P<band>adult|minor|):(?P<subject>[A-Za-z0-9_-]{{0,{MAX_SUBJECT_CHARS}}}))?"
    r":(?P<signature>[0-9a-f]{64})"
)
_BANDS: Final = frozenset(("", "adult", "minor"))
_SUBJECT_RE: Final = re.compile(rf"[A-Za-z0-9_-]{{0,{MAX_SUBJECT_CHARS}}}")


@record
class SessionClaims:
    """What a verified token says: its session, and what the gate knew of the person.

    ``band``: ``"adult"``, ``"minor"`` or ``""`` (unknown); ``subject``: the
    gate's key of the person (an account's salted hash), ``""`` if none.
    """

    session_id: str
    band: str = ""
    subject: str = ""


@dataclass(frozen=True)
class IssuedToken:
    """A freshly signed token, with the session id and expiry it carries."""

    token: str
    session_id: str
    expires_at: int


class TokenSigner:
    """Issues and verifies session tokens with one HMAC secret.

    Args:
        secret: the HMAC-SHA256 key; non-empty. Every server of a cluster
            must share it.
        ttl_s: lifetime of an issued token, in seconds; positive.
    """

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        if not secret:
            raise ValueError("the token secret must not be empty")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        # Keyed once; each signature copies it (measured the cheapest way:
        # 1.5 µs against 1.8 for hmac.new and 1.7-2.5 for hmac.digest).
        self._keyed = hmac.new(bytes(secret), digestmod=hashlib.sha256)
        self._ttl_s = ttl_s

    def _sign(self, payload: str) -> str:
        mac = self._keyed.copy()
        mac.update(payload.encode("ascii"))
        return mac.hexdigest()

    def pair_tag(self, client_a: str, client_b: str) -> str:
        """A short tag for the pair of clients (address groups), the same either way round.

        What ``match_found`` carries as ``pair`` (PROTOCOL.md): two matches of
        the same two networks have the same tag, so a page can tell that a
        reload brought back the same stranger; without the secret the tag
        says nothing of the addresses. Keyed with the session secret, set
        apart from token signatures by its ``pair:`` prefix (a token's
        payload starts with a uuid).
        """
        mac = self._keyed.copy()
        first, second = sorted((client_a, client_b))
        mac.update(f"pair:{first}\n{second}".encode())
        return mac.hexdigest()[:PAIR_TAG_CHARS]

    def issue(self, now: float, *, band: str = "", subject: str = "") -> IssuedToken:
        """Sign a token for a new session id that expires ``ttl_s`` after ``now``.

        ``band`` and ``subject``: what the entry gate knew (``SessionClaims``).

        Raises:
            ValueError: a band or subject a token cannot carry.
        """
        if band not in _BANDS or _SUBJECT_RE.fullmatch(subject) is None:
            raise ValueError("a token carries a band of adult/minor and a subject of [A-Za-z0-9_-]")
        session_id = str(uuid.uuid4())
        expires_at = int(now) + self._ttl_s
        payload = f"{session_id}:{expires_at}"
        if band or subject:
            payload = f"{payload}:{band}:{subject}"
        return IssuedToken(f"{payload}:{self._sign(payload)}", session_id, expires_at)

    def verify(self, token: str, now: float) -> str:
        """Check a token and return its session id (``verify_claims``)."""
        return self.verify_claims(token, now).session_id

    def verify_claims(self, token: str, now: float) -> SessionClaims:
        """Check a token and return what it says.

        Raises:
            InvalidToken: the token is malformed, not signed with this secret,
                or expired at ``now``. The reason says which, never why the
                signature differs.
        """
        # Bound the work before the regex; also rejects non-str input.
        if not isinstance(token, str) or len(token) > _MAX_TOKEN_LENGTH:
            raise InvalidToken("malformed token")
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            raise InvalidToken("malformed token")
        session_id, expiry, signature = match.group("session", "expiry", "signature")
        expected = self._sign(token[: -len(signature) - 1])
        if not hmac.compare_digest(signature, expected):
            raise InvalidToken("bad token signature")
        if now >= int(expiry):
            raise InvalidToken("token expired")
        return SessionClaims(session_id, match.group("band") or "", match.group("subject") or "")


# -- match tickets ---------------------------------------------------------------------
#
#   ticket = "<match id>.<caller>.<callee>.<holder: c|e>.<mode>.<expiry>.<hex HMAC-SHA256(
#             secret, "ticket:" + everything before the last ".")>"
#
# Signed with the session secret (the same keyed HMAC as tokens; the "ticket:"
# prefix keeps a ticket's signature from ever being a token's), so any server
# of the service, even one started a moment ago, can check it. The same
# invariants as tokens: the shape is checked before any HMAC (linear, with no
# backtracking: every part is one character class of bounded length between
# fixed separators), the signature compared in constant time, the expiry only
# after the signature, and ``verify`` raises ``InvalidTicket`` and nothing else.

MAX_TICKET_ID_LENGTH: Final = 64  # a match id or a session id inside a ticket
_MAX_TICKET_LENGTH: Final = 3 * MAX_TICKET_ID_LENGTH + 1 + 5 + MAX_EXPIRY_DIGITS + 64 + 6
_ID: Final = rf"[0-9A-Za-z_-]{{1,{MAX_TICKET_ID_LENGTH}}}"
_TICKET_RE: Final = re.compile(
    rf"(?P<match>{_ID})\.(?P<caller>{_ID})\.(?P<callee>{_ID})\.(?P<holder>[ce])"
    rf"\.(?P<mode>video|voice|text)\.(?P<expiry>[0-9]{{1,{MAX_EXPIRY_DIGITS}}})"
    r"\.(?P<signature>[0-9a-f]{64})"
)


@record
class Ticket:
    """What a verified match ticket says: one seat (``holder``) of match ``match_id``."""

    match_id: str
    caller: str
    callee: str
    holder: str  # the session this ticket was given to: caller or callee
    mode: str
    expires_at: int

    @property
    def seat(self) -> str:
        """``"caller"`` or ``"callee"``: the role the holder had (and keeps)."""
        return "caller" if self.holder == self.caller else "callee"


class TicketSigner:
    """Issues and verifies match tickets with the session secret.

    Args:
        secret: the HMAC-SHA256 key, the session tokens' (every server shares it).
        ttl_s: how long a ticket may be used after its match formed; positive.
    """

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        if not secret:
            raise ValueError("the ticket secret must not be empty")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._keyed = hmac.new(bytes(secret), digestmod=hashlib.sha256)
        self._ttl_s = ttl_s

    @property
    def ttl_s(self) -> int:
        """How long a ticket lasts from its issue."""
        return self._ttl_s

    def _sign(self, payload: str) -> str:
        mac = self._keyed.copy()
        mac.update(b"ticket:" + payload.encode("ascii"))
        return mac.hexdigest()

    def issue(
        self, match_id: str, caller: str, callee: str, holder: str, mode: str, now: float
    ) -> str:
        """Sign the ticket of ``holder``'s seat (``caller`` or ``callee``) in a match.

        Raises:
            ValueError: an id that a ticket cannot carry, or a holder not in the match.
        """
        if holder not in (caller, callee):
            raise ValueError(f"{holder} is not in match {match_id}")
        side = "c" if holder == caller else "e"
        payload = f"{match_id}.{caller}.{callee}.{side}.{mode}.{int(now) + self._ttl_s}"
        if _TICKET_RE.fullmatch(f"{payload}.{'0' * 64}") is None:
            raise ValueError(f"match {match_id} cannot be put in a ticket")
        return f"{payload}.{self._sign(payload)}"

    def verify(self, ticket: str, now: float) -> Ticket:
        """Check a ticket and say what it holds.

        Raises:
            InvalidTicket: ``bad_ticket`` (malformed, or not signed with this
                secret) or ``ticket_expired`` (signed, but past its expiry).
        """
        if not isinstance(ticket, str) or len(ticket) > _MAX_TICKET_LENGTH:
            raise InvalidTicket(ErrorCode.BAD_TICKET, "malformed ticket")
        found = _TICKET_RE.fullmatch(ticket)
        if found is None:
            raise InvalidTicket(ErrorCode.BAD_TICKET, "malformed ticket")
        payload, signature = ticket.rsplit(".", 1)
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise InvalidTicket(ErrorCode.BAD_TICKET, "bad ticket signature")
        expiry = int(found.group("expiry"))
        if now >= expiry:
            raise InvalidTicket(ErrorCode.TICKET_EXPIRED, "ticket expired")
        caller, callee = found.group("caller", "callee")
        holder = caller if found.group("holder") == "c" else callee
        return Ticket(found.group("match"), caller, callee, holder, found.group("mode"), expiry)


def new_secret() -> bytes:
    """A random secret for a server that was given none (tokens die with it)."""
    return secrets.token_bytes(SECRET_BYTES)


def turn_credentials(secret: str, ttl_s: int, session_id: str, now: float) -> tuple[str, str]:
    """Time-limited TURN credentials for coturn's ``use-auth-secret`` (TURN REST API).

    Returns:
        ``(username, credential)`` where ``username`` is
        ``"<expiry unix seconds>:<session_id>"`` and ``credential`` is the
        base64 of HMAC-SHA1(``secret``, ``username``).
    """
    username = f"{int(now) + ttl_s}:{session_id}"
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")
