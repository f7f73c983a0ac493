"""Session tokens and TURN credentials.

This module is pure: time arrives as a value and the only randomness is the
session id (``uuid.uuid4``) and ``new_secret``. It implements PROTOCOL.md
"Session token":

    token = "<session uuid4>:<expiry unix seconds>:<hex HMAC-SHA256(secret, "<uuid>:<expiry>")>"

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

from omiro_trio.errors import InvalidToken

__all__ = ["PAIR_TAG_CHARS", "IssuedToken", "TokenSigner", "new_secret", "turn_credentials"]

# 64 bits in hex: two pairs of networks share a tag by chance once in 2**32
# pairs (the birthday bound), far beyond the matches one page ever compares.
PAIR_TAG_CHARS = 16

SECRET_BYTES: Final = 32
# Unix seconds stay below 10**12 for the next 30,000 years.
MAX_EXPIRY_DIGITS: Final = 12
# uuid (36) + ":" + expiry + ":" + signature (64)
_MAX_TOKEN_LENGTH: Final = 36 + 1 + MAX_EXPIRY_DIGITS + 1 + 64

# [0-9a-f] rather than \d or \w: those also match non-ASCII digits and letters.
_TOKEN_RE: Final = re.compile(
    r"(?P<session>[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12})"
    rf":(?P<expiry>[0-9]{{1,{MAX_EXPIRY_DIGITS}}})"
    r":(?P<signature>[0-9a-f]{64})"
)


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

    def issue(self, now: float) -> IssuedToken:
        """Sign a token for a new session id that expires ``ttl_s`` after ``now``."""
        session_id = str(uuid.uuid4())
        expires_at = int(now) + self._ttl_s
        payload = f"{session_id}:{expires_at}"
        return IssuedToken(f"{payload}:{self._sign(payload)}", session_id, expires_at)

    def verify(self, token: str, now: float) -> str:
        """Check a token and return its session id.

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
        expected = self._sign(f"{session_id}:{expiry}")
        if not hmac.compare_digest(signature, expected):
            raise InvalidToken("bad token signature")
        if now >= int(expiry):
            raise InvalidToken("token expired")
        return session_id


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
