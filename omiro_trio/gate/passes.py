"""The gate pass: a signed cookie that remembers a person passed the gate.

    omiro_gate = "<kind>.<expiry unix s>.<subject>.<age band>.<hex HMAC-SHA256>"

signed with the session secret (every server of a service checks every
other's passes), over ``"gate:" + epoch + ":" + everything before the last
"."``. The ``epoch`` is the gate's setting (``passphrase``: a hash of the
phrase's hash), never sent: changing the phrase ends every pass given
under the old one. The same invariants as session tokens (``tokens.py``):
the shape is checked before any HMAC, by plain string operations with a
length bound first (no regular expression on client bytes); the signature
is compared in constant time; the expiry is checked after the signature.

The cookie is ``HttpOnly`` (the page's script never reads it),
``SameSite=Strict`` (no other site's page sends it), ``Path=/``, and
``Secure`` when the request came over HTTPS.
"""

from __future__ import annotations

import hashlib
import hmac
import string
from collections.abc import Iterable
from typing import Final, get_args

from omiro_trio.gate import (
    Admit,
    AgeBand,
    Claims,
    GateKind,
    GateRequest,
    Refuse,
    RefuseReason,
    Verdict,
)

__all__ = ["COOKIE", "MAX_COOKIE_CHARS", "GatePasses", "parse_cookies"]

COOKIE: Final = "omiro_gate"
MAX_SUBJECT_CHARS: Final = 64
MAX_COOKIE_CHARS: Final = 300  # longer is no pass of ours: not parsed
MAX_COOKIES: Final = 64  # cookies read from one request; the rest are ignored
_SUBJECT_CHARS: Final = frozenset(string.ascii_letters + string.digits + "_-")
_KINDS: Final = frozenset(get_args(GateKind))
_BANDS: Final = frozenset(get_args(AgeBand))
_HEX: Final = frozenset("0123456789abcdef")


def parse_cookies(headers: Iterable[str]) -> dict[str, str]:
    """The cookies of ``Cookie`` header values, name to value (the first of a name wins).

    Linear in the headers' length: splits and strips only. At most
    ``MAX_COOKIES`` are kept.
    """
    found: dict[str, str] = {}
    for header in headers:
        for part in header.split(";"):
            name, sep, value = part.partition("=")
            name = name.strip()
            if sep and name and name not in found:
                if len(found) >= MAX_COOKIES:
                    return found
                found[name] = value.strip().strip('"')
    return found


class GatePasses:
    """Signs and checks gate passes with the session secret.

    Args:
        secret: the session secret (shared by every server of the service).
        epoch: the gate's setting the passes are bound to (see the module).
        ttl_s: how long a pass is good for (``[gate] remember_s``).
    """

    __slots__ = ("_keyed", "_ttl_s")

    def __init__(self, secret: bytes, epoch: str, ttl_s: int) -> None:
        if not secret:
            raise ValueError("the gate pass secret must not be empty")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._keyed = hmac.new(bytes(secret), digestmod=hashlib.sha256)
        self._keyed.update(f"gate:{epoch}:".encode())
        self._ttl_s = ttl_s

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def _sign(self, payload: str) -> str:
        mac = self._keyed.copy()
        mac.update(payload.encode("ascii"))
        return mac.hexdigest()

    def issue(self, claims: Claims, now: float) -> str:
        """The cookie value of a pass for ``claims``, good for ``ttl_s`` from ``now``.

        Raises:
            ValueError: a subject a pass cannot carry.
        """
        subject = claims.subject
        if len(subject) > MAX_SUBJECT_CHARS or not _SUBJECT_CHARS.issuperset(subject):
            raise ValueError("a gate pass subject is at most 64 of [A-Za-z0-9_-]")
        payload = f"{claims.kind}.{int(now) + self._ttl_s}.{subject}.{claims.age_band or ''}"
        return f"{payload}.{self._sign(payload)}"

    def check(self, cookie: str | None, now: float) -> Claims | None:
        """The claims of a good pass, or None (missing, malformed, forged or expired)."""
        if not cookie or len(cookie) > MAX_COOKIE_CHARS or not cookie.isascii():
            return None
        parts = cookie.split(".")
        if len(parts) != 5:
            return None
        kind, expiry, subject, band, signature = parts
        if (
            kind not in _KINDS
            or not expiry.isdigit()
            or len(expiry) > 12
            or len(subject) > MAX_SUBJECT_CHARS
            or not _SUBJECT_CHARS.issuperset(subject)
            or (band and band not in _BANDS)
            or len(signature) != 64
            or not _HEX.issuperset(signature)
        ):
            return None
        payload = cookie[: -len(signature) - 1]
        if not hmac.compare_digest(signature, self._sign(payload)):
            return None
        if now >= int(expiry):
            return None
        return Claims(kind, subject, band or None)  # type: ignore[arg-type]

    def admit(self, request: GateRequest, kind: GateKind, message: str) -> Verdict:
        """A gate's answer to ``GET /session/new``: its own kind's good pass admits.

        Anything else (no pass, a bad one, another kind's) is refused as
        ``REQUIRED`` with ``message``, what the gate's screen says.
        """
        claims = self.check(request.cookies.get(COOKIE), request.now)
        if claims is not None and claims.kind == kind:
            return Admit(claims)
        return Refuse(kind, RefuseReason.REQUIRED, message)
