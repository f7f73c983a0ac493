"""The ``oidc`` gate's rules: what a verified ID token lets in. Pure: no I/O, no trio.

Given the claims of an ID token whose signature, issuer, audience, expiry
and nonce were already verified (``oidc.py``), these functions decide:

* whether the account is on the allow-lists (``email_allowed``,
  ``claim_allowed``): an email domain, compared exactly and
  case-insensitively, only when the provider says the email is verified;
  one named claim holding one of the allowed values (a string, or a list
  of strings such as group names);
* its age band (``age_of``, ``band_for``): from a ``birthdate`` claim
  (``YYYY-MM-DD``, OpenID Connect Core 5.1; a year alone or a ``0000``
  year is no birthdate) computed against today's date, or from a boolean
  flag claim (true: an adult). A claim that is absent or malformed is an
  unknown age, never a guess;
* the account's stable key (``account_subject``): a keyed hash of the
  issuer and subject, what bans and reports may name instead of the person.

Invariants: nothing here raises on any claims value a provider can send
(JSON of any shape); every string is bounded before it is looked at.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Final, Literal

from omiro_trio.gate import AgeBand

__all__ = [
    "AgeRules",
    "AllowList",
    "account_subject",
    "age_known",
    "age_of",
    "band_for",
    "claim_allowed",
    "email_allowed",
]

MAX_CLAIM_CHARS: Final = 256  # a longer string claim is not looked at
MAX_CLAIM_ITEMS: Final = 256  # a longer list claim is not looked at
SUBJECT_HEX_CHARS: Final = 32  # 128 bits of the account key

AgeClaimKind = Literal["birthdate", "adult_flag"]


@dataclass(frozen=True, slots=True)
class AllowList:
    """Who may come in; empty lists allow everyone.

    Attributes:
        email_domains: lower-case domains; an account needs a verified
            email in one of them.
        claim: a claim's name; with ``values``, the claim must hold one.
        values: the allowed values of ``claim``.
    """

    email_domains: tuple[str, ...] = ()
    claim: str = ""
    values: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgeRules:
    """How the age band is read, and who is too young.

    Attributes:
        claim: the claim's name ("" : ages are not read, every band unknown).
        kind: ``birthdate`` (a date) or ``adult_flag`` (a boolean: adult or not).
        adult_age: the age from which a person is in the ``adult`` band.
        min_age: younger is refused (0: nobody is); with ``adult_flag``,
            any ``min_age`` at or above ``adult_age`` refuses the non-adults.
        require: refuse an account whose age is unknown.
    """

    claim: str = ""
    kind: AgeClaimKind = "birthdate"
    adult_age: int = 18
    min_age: int = 0
    require: bool = False


def email_allowed(claims: Mapping[str, Any], domains: tuple[str, ...]) -> bool:
    """Whether the verified email's domain is one of ``domains`` (all, when empty)."""
    if not domains:
        return True
    email = claims.get("email")
    if claims.get("email_verified") is not True:
        return False
    if not isinstance(email, str) or len(email) > MAX_CLAIM_CHARS:
        return False
    local, at, domain = email.rpartition("@")
    if not at or not local:
        return False
    return domain.lower() in domains


def claim_allowed(claims: Mapping[str, Any], claim: str, values: tuple[str, ...]) -> bool:
    """Whether ``claim`` holds one of ``values`` (all, when no claim is named)."""
    if not claim:
        return True
    held = claims.get(claim)
    if isinstance(held, str):
        return len(held) <= MAX_CLAIM_CHARS and held in values
    if isinstance(held, list) and len(held) <= MAX_CLAIM_ITEMS:
        return any(isinstance(item, str) and item in values for item in held)
    return False


def age_of(birthdate: object, today: date) -> int | None:
    """Whole years from a ``YYYY-MM-DD`` birthdate to ``today``; None if it is none."""
    if not isinstance(birthdate, str) or len(birthdate) != 10:
        return None
    year, month, day = birthdate[:4], birthdate[5:7], birthdate[8:]
    if birthdate[4] != "-" or birthdate[7] != "-":
        return None
    if not (year.isdigit() and month.isdigit() and day.isdigit() and year.isascii()):
        return None
    if not (month.isascii() and day.isascii()) or year == "0000":
        return None
    try:
        born = date(int(year), int(month), int(day))
    except ValueError:
        return None
    if born > today:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def band_for(
    claims: Mapping[str, Any], rules: AgeRules, today: date
) -> tuple[bool, AgeBand | None]:
    """Whether the claims' age lets the person in, and their age band (``None`` unknown).

    Too young (under ``rules.min_age``), or, with ``rules.require``, of
    unknown age: ``(False, None)``.
    """
    if not rules.claim:
        return True, None
    value = claims.get(rules.claim)
    band: AgeBand | None
    if rules.kind == "adult_flag":
        if not isinstance(value, bool):
            band = None
        else:
            band = "adult" if value else "minor"
            if band == "minor" and rules.min_age >= rules.adult_age:
                return False, None
    else:
        age = age_of(value, today)
        if age is None:
            band = None
        elif age < rules.min_age:
            return False, None
        else:
            band = "adult" if age >= rules.adult_age else "minor"
    if band is None and rules.require:
        return False, None
    return True, band


def age_known(claims: Mapping[str, Any], rules: AgeRules, today: date) -> bool:
    """Whether the claims state the person's age the way ``rules`` read it (no claim
    configured: False). What tells a refusal for an unknown age from one for too young."""
    if not rules.claim:
        return False
    value = claims.get(rules.claim)
    if rules.kind == "adult_flag":
        return isinstance(value, bool)
    return age_of(value, today) is not None


def account_subject(secret: bytes, issuer: str, subject: str) -> str:
    """The account's stable key: HMAC-SHA256 of issuer and subject, 32 hex characters.

    Keyed with the session secret, so the key says nothing of the account
    without it, and stays the same for as long as the secret does.
    """
    mac = hmac.new(secret, b"account:", hashlib.sha256)
    mac.update(f"{issuer}\n{subject}".encode())
    return mac.hexdigest()[:SUBJECT_HEX_CHARS]
