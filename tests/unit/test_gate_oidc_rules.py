"""Unit tests for omiro_trio.gate.oidc_rules: allow-lists, ages and account keys."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omiro_trio.gate.oidc_rules import (
    AgeRules,
    account_subject,
    age_known,
    age_of,
    band_for,
    claim_allowed,
    email_allowed,
)

TODAY = date(2026, 3, 1)


@pytest.mark.parametrize(
    ("birthdate", "age"),
    [
        ("2008-03-01", 18),  # the birthday itself
        ("2008-03-02", 17),  # the day before it
        ("2008-02-29", 18),  # a leap day, in a year without one
        ("2026-03-01", 0),
        ("2026-03-02", None),  # not born yet
        ("2008-13-01", None),
        ("2008-02-30", None),
        ("0000-03-01", None),  # a year withheld (OpenID Connect Core 5.1)
        ("2008", None),
        ("--03-01", None),
        ("\uff12\uff10\uff10\uff18-03-01", None),  # full-width digits are no birthdate
        ("2008-03-01T00:00", None),
        (20080301, None),
        (None, None),
    ],
)
def test_age_of_whole_years_or_none(birthdate: Any, age: int | None) -> None:
    assert age_of(birthdate, TODAY) == age


@pytest.mark.parametrize(
    ("claims", "rules", "expected"),
    [
        ({"birthdate": "1990-01-01"}, AgeRules(claim="birthdate"), (True, "adult")),
        ({"birthdate": "2010-01-01"}, AgeRules(claim="birthdate"), (True, "minor")),
        ({"birthdate": "2010-01-01"}, AgeRules(claim="birthdate", min_age=18), (False, None)),
        ({"birthdate": "2016-01-01"}, AgeRules(claim="birthdate", min_age=13), (False, None)),
        ({}, AgeRules(claim="birthdate"), (True, None)),
        ({}, AgeRules(claim="birthdate", require=True), (False, None)),
        ({"birthdate": "1990-01-01"}, AgeRules(), (True, None)),  # bands not used
        ({"over_18": True}, AgeRules(claim="over_18", kind="adult_flag"), (True, "adult")),
        ({"over_18": False}, AgeRules(claim="over_18", kind="adult_flag"), (True, "minor")),
        ({"over_18": "true"}, AgeRules(claim="over_18", kind="adult_flag"), (True, None)),
        (
            {"over_18": False},
            AgeRules(claim="over_18", kind="adult_flag", min_age=18),
            (False, None),
        ),
        (
            {"birthdate": "2000-01-01"},
            AgeRules(claim="birthdate", adult_age=30),
            (True, "minor"),
        ),
    ],
)
def test_band_for(claims: dict[str, Any], rules: AgeRules, expected: tuple[bool, Any]) -> None:
    assert band_for(claims, rules, TODAY) == expected


@pytest.mark.parametrize(
    ("claims", "rules", "known"),
    [
        ({"birthdate": "2016-01-01"}, AgeRules(claim="birthdate", min_age=13), True),
        ({}, AgeRules(claim="birthdate", require=True), False),
        ({"birthdate": "2016"}, AgeRules(claim="birthdate", require=True), False),
        ({"over_18": False}, AgeRules(claim="over_18", kind="adult_flag"), True),
        ({"over_18": "no"}, AgeRules(claim="over_18", kind="adult_flag"), False),
        ({"birthdate": "1990-01-01"}, AgeRules(), False),  # no claim read: nothing known
    ],
)
def test_age_known_tells_an_unknown_age_from_a_young_one(
    claims: dict[str, Any], rules: AgeRules, known: bool
) -> None:
    assert age_known(claims, rules, TODAY) is known


@pytest.mark.parametrize(
    ("claims", "allowed"),
    [
        ({"email": "ada@campus.example", "email_verified": True}, True),
        ({"email": "ada@CAMPUS.example", "email_verified": True}, True),
        ({"email": "ada@campus.example", "email_verified": False}, False),
        ({"email": "ada@campus.example"}, False),  # unverified: anyone could claim it
        ({"email": "ada@mail.campus.example", "email_verified": True}, False),
        ({"email": "ada@campus.example.evil", "email_verified": True}, False),
        ({"email": "campus.example", "email_verified": True}, False),
        ({"email": "@campus.example", "email_verified": True}, False),
        ({"email": ["ada@campus.example"], "email_verified": True}, False),
    ],
)
def test_email_allowed(claims: dict[str, Any], allowed: bool) -> None:
    assert email_allowed(claims, ("campus.example",)) is allowed
    assert email_allowed(claims, ()) is True


@pytest.mark.parametrize(
    ("held", "allowed"),
    [
        ("students", True),
        (["guests", "students"], True),
        (["guests"], False),
        ("Students", False),
        ([["students"]], False),
        (["students"] * 1000, False),  # too long a list is not looked at
        (None, False),
        (True, False),
    ],
)
def test_claim_allowed(held: Any, allowed: bool) -> None:
    assert claim_allowed({"groups": held}, "groups", ("students",)) is allowed
    assert claim_allowed({"groups": held}, "", ()) is True


def test_account_subject_is_stable_keyed_and_apart_per_issuer() -> None:
    key = account_subject(b"k" * 32, "https://id.example", "user-1")
    assert key == account_subject(b"k" * 32, "https://id.example", "user-1")
    assert len(key) == 32
    assert set(key) <= set("0123456789abcdef")
    assert key != account_subject(b"j" * 32, "https://id.example", "user-1")
    assert key != account_subject(b"k" * 32, "https://other.example", "user-1")
    assert key != account_subject(b"k" * 32, "https://id.example", "user-2")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["email", "email_verified", "groups", "birthdate"]), JSON))
def test_rules_never_raise_on_any_claims(claims: dict[str, Any]) -> None:
    email_allowed(claims, ("campus.example",))
    claim_allowed(claims, "groups", ("students",))
    band_for(claims, AgeRules(claim="birthdate", min_age=13), TODAY)
    band_for(claims, AgeRules(claim="email_verified", kind="adult_flag"), TODAY)
