"""The entry gate: who may have a session token (docs/gate.md).

``GET /session/new`` (``sessions.py``) asks the configured gate about every
request, after the ban, raid-mode and rate-limit checks and before a token
is signed. A gate is any object with the ``EntryGate`` shape; each kind is
a module of this package (``open``: ``OpenGate`` here; ``passphrase.py``;
``invite.py``; an ``oidc`` kind adds its own module the same way), and
``gates.build_gate`` picks one from ``[gate] kind``.

A gate answers ``Admit`` (with the ``Claims`` it knows of the person) or
``Refuse`` (with the reason the page shows). It may not raise for anything
a client or the environment does, except ``BackendUnavailable`` (the
endpoint answers 503 for it).

How a person passes a gate once and is remembered: the kind's own entry
routes (``register``: quart routes under ``/gate/<kind>``, which may read a
body) check what the person brings (a phrase, a code, a sign-in) and set
the gate pass (``passes.py``), a signed cookie holding the claims. Every
later ``/session/new`` is admitted by the pass alone, with no backend call
and no hashing (``passes.GatePasses.admit``).

This module is pure (no trio, quart or backend): the records and the
protocol only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from quart_trio import QuartTrio

__all__ = [
    "Admit",
    "AgeBand",
    "Claims",
    "EntryGate",
    "EntryRequests",
    "GateKind",
    "GateRequest",
    "OpenGate",
    "Refuse",
    "RefuseReason",
    "Verdict",
]

GateKind = Literal["open", "passphrase", "invite", "oidc"]
"""The values of ``[gate] kind``."""

AgeBand = Literal["adult", "minor"]
"""An age band a gate verified (``None`` in ``Claims``: unknown, never guessed)."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a gate knows of the person it admitted.

    Attributes:
        kind: the gate that admitted (``GateKind``).
        subject: a stable, salted hash of the person's account (a gate that
            knows accounts: ``oidc``), else ``""``; for ``invite``, the id
            of the invite used (so an operator can tell which code let a
            flood in).
        age_band: a verified age band, or ``None`` (unknown).
    """

    kind: GateKind
    subject: str = ""
    age_band: AgeBand | None = None


class RefuseReason(StrEnum):
    """Why a gate refused: what the page shows (docs/protocol.md, "Session token")."""

    REQUIRED = "required"  # 401: nothing brought yet; the page shows the gate's screen
    WRONG = "wrong"  # 403: a wrong phrase
    UNKNOWN = "unknown"  # 403: no such invite code
    EXPIRED = "expired"  # 403: the invite's time is over
    USED_UP = "used_up"  # 403: the invite has no use left
    REVOKED = "revoked"  # 403: the invite was revoked
    NOT_ALLOWED = "not_allowed"  # 403: signed in, but not on the allow-list
    TOO_YOUNG = "too_young"  # 403: under the configured minimum age
    AGE_UNKNOWN = "age_unknown"  # 403: require_age, and the provider did not state it


@dataclass(frozen=True, slots=True)
class Admit:
    """Let the request have a token; ``claims`` go with it."""

    claims: Claims


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer the request with the gate's refusal.

    ``REQUIRED`` becomes a 401, every other reason a 403; both carry
    ``{"error": "gate", "gate": kind, "reason": reason}``.
    """

    kind: GateKind
    reason: RefuseReason
    message: str


Verdict = Admit | Refuse


@dataclass(frozen=True, slots=True)
class GateRequest:
    """What a gate may read of one ``GET /session/new``.

    Attributes:
        client: the request's client (address group, ``addresses.py``).
        cookies: the request's cookies, name to value (the first of a name
            wins), already held to the head's 16 KiB budget.
        now: unix time.
    """

    client: str
    cookies: Mapping[str, str] = field(default_factory=dict)
    now: float = 0.0


@dataclass(frozen=True, slots=True)
class EntryRequests:
    """What an entry route may ask of the app's current request.

    Attributes:
        client: its client (address group, ``addresses.py``): the kind's
            own limits are per client.
        secure: whether it came over HTTPS (itself, or as a trusted proxy
            says): the pass cookie is ``Secure`` then.
    """

    client: Callable[[], str]
    secure: Callable[[], bool]


class EntryGate(Protocol):
    """One kind of gate. Implementations satisfy it without inheriting."""

    @property
    def kind(self) -> GateKind:
        """The ``[gate] kind`` this gate implements."""
        ...

    async def admit(self, request: GateRequest) -> Verdict:
        """Admit or refuse one ``GET /session/new``.

        Called on the hot path of every new session: it should cost a cookie
        check, not a hash or a round trip. May raise ``BackendUnavailable``
        and nothing else.
        """
        ...

    def register(self, app: QuartTrio, entry: EntryRequests) -> None:
        """Add the kind's entry routes (under ``/gate/<kind>``) to the app.

        ``entry`` says who the current request of the app comes from and
        whether it came over HTTPS (for the pass cookie's ``Secure``).
        """
        ...


class OpenGate:
    """``kind = "open"``: everyone is admitted, nothing is asked (the default)."""

    __slots__ = ()

    _ADMIT = Admit(Claims("open"))

    @property
    def kind(self) -> GateKind:
        return "open"

    async def admit(self, request: GateRequest) -> Verdict:
        return self._ADMIT

    def register(self, app: QuartTrio, entry: EntryRequests) -> None:
        """The open gate has no entry routes."""
