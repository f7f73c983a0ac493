"""Unit tests for omiro_trio.tokens: session tokens and TURN credentials.

Plain synchronous pytest; time is passed in as a number.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omiro_trio.errors import InvalidToken
from omiro_trio.tokens import IssuedToken, TokenSigner, new_secret, turn_credentials

SECRET = b"s" * 32
TTL_S = 3600
NOW = 1_700_000_000.75


def signer(secret: bytes = SECRET) -> TokenSigner:
    return TokenSigner(secret, TTL_S)


def sign(payload: str, secret: bytes = SECRET) -> str:
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


def rejects(token: str, now: float = NOW, secret: bytes = SECRET) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        signer(secret).verify(token, now)
    return info.value


def test_token_signer_round_trip() -> None:
    issued = signer().issue(NOW)
    assert isinstance(issued, IssuedToken)
    assert issued.expires_at == int(NOW) + TTL_S
    assert uuid.UUID(issued.session_id).version == 4
    assert str(uuid.UUID(issued.session_id)) == issued.session_id
    assert signer().verify(issued.token, NOW) == issued.session_id


@pytest.mark.rule("protocol/session-token")
def test_token_signer_token_format() -> None:
    issued = signer().issue(NOW)
    session_id, expiry, signature = issued.token.split(":")
    assert session_id == issued.session_id
    assert expiry == str(issued.expires_at)
    assert signature == sign(f"{session_id}:{expiry}")


def test_token_signer_issues_distinct_sessions() -> None:
    ids = {signer().issue(NOW).session_id for _ in range(100)}
    assert len(ids) == 100


def test_token_signer_accepts_hand_made_token() -> None:
    session_id = "0b6c4f1e-3a2d-4c5b-9e8f-7a6b5c4d3e2f"
    payload = f"{session_id}:{int(NOW) + 10}"
    assert signer().verify(f"{payload}:{sign(payload)}", NOW) == session_id


@pytest.mark.rule("protocol/session-token")
def test_token_signer_rejects_expired_token() -> None:
    issued = signer().issue(NOW)
    assert signer().verify(issued.token, issued.expires_at - 0.001) == issued.session_id
    assert "expired" in str(rejects(issued.token, now=issued.expires_at))
    assert "expired" in str(rejects(issued.token, now=issued.expires_at + 1))
    assert "expired" in str(rejects(issued.token, now=issued.expires_at + 10**9))


def _flip(char: str) -> str:
    return "0" if char != "0" else "1"


@pytest.mark.parametrize("part", [0, 1, 2])
@pytest.mark.rule("protocol/session-token")
def test_token_signer_rejects_tampered_part(part: int) -> None:
    token = signer().issue(NOW).token
    parts = token.split(":")
    for index in range(len(parts[part])):
        tampered = list(parts)
        text = tampered[part]
        tampered[part] = text[:index] + _flip(text[index]) + text[index + 1 :]
        with pytest.raises(InvalidToken):
            signer().verify(":".join(tampered), NOW)


def test_token_signer_rejects_later_expiry_with_old_signature() -> None:
    session_id, expiry, signature = signer().issue(NOW).token.split(":")
    assert "signature" in str(rejects(f"{session_id}:{int(expiry) + 1}:{signature}"))


def test_token_signer_rejects_token_for_another_secret() -> None:
    token = signer(b"another secret").issue(NOW).token
    assert "signature" in str(rejects(token))


def test_token_signer_rejects_forged_token_before_checking_expiry() -> None:
    session_id = str(uuid.uuid4())
    assert "signature" in str(rejects(f"{session_id}:1:{'0' * 64}"))


@pytest.mark.parametrize("count", [1, 2, 4, 5])
@pytest.mark.rule("protocol/session-token")
def test_token_signer_rejects_wrong_part_count(count: int) -> None:
    session_id, expiry, signature = signer().issue(NOW).token.split(":")
    parts = {
        1: [session_id],
        2: [session_id, expiry],
        4: [session_id, expiry, signature, signature],
        5: [session_id, expiry, signature, "", ""],
    }[count]
    rejects(":".join(parts))
    if count == 2:
        rejects(f"{session_id}:{signature}")


def test_token_signer_rejects_uppercase_signature() -> None:
    session_id, expiry, signature = signer().issue(NOW).token.split(":")
    assert any(c in "abcdef" for c in signature)
    rejects(f"{session_id}:{expiry}:{signature.upper()}")


def test_token_signer_rejects_uppercase_session_id() -> None:
    session_id = "0B6C4F1E-3A2D-4C5B-9E8F-7A6B5C4D3E2F"
    payload = f"{session_id}:{int(NOW) + 10}"
    rejects(f"{payload}:{sign(payload)}")


@pytest.mark.parametrize(
    "session_id",
    [
        "0b6c4f1e-3a2d-1c5b-9e8f-7a6b5c4d3e2f",  # version 1
        "0b6c4f1e-3a2d-5c5b-9e8f-7a6b5c4d3e2f",  # version 5
        "0b6c4f1e-3a2d-4c5b-7e8f-7a6b5c4d3e2f",  # not the RFC 4122 variant
        "0b6c4f1e3a2d4c5b9e8f7a6b5c4d3e2f",  # no dashes
        "{0b6c4f1e-3a2d-4c5b-9e8f-7a6b5c4d3e2f}",
        "0b6c4f1e-3a2d-4c5b-9e8f-7a6b5c4d3e2",  # short
        "0b6c4f1e-3a2d-4c5b-9e8f-7a6b5c4d3e2ff",  # long
        "session",
        "",
        "0b6c4f1e-3a2d-4c5b-9e8f-7a6b5c4d3e2\uff46",  # fullwidth f
    ],
)
def test_token_signer_rejects_non_uuid4_session(session_id: str) -> None:
    # Correctly signed, so only the shape check can reject it.
    payload = f"{session_id}:{int(NOW) + 10}"
    signature = hmac.new(SECRET, payload.encode("utf-8"), hashlib.sha256).hexdigest()
    assert "malformed" in str(rejects(f"{payload}:{signature}"))


@pytest.mark.parametrize(
    "expiry",
    [
        "+1800003600",
        "-1800003600",
        " 1800003600",
        "1800003600 ",
        "1_800_003_600",
        "1800003600.0",
        "1e10",
        "",
        "\u0661\u0668\u0660\u0660\u0660\u0660\u0663\u0666\u0660\u0660",  # Arabic-Indic digits
        "9" * 13,
    ],
)
def test_token_signer_rejects_malformed_expiry(expiry: str) -> None:
    session_id = str(uuid.uuid4())
    payload = f"{session_id}:{expiry}"
    signature = hmac.new(SECRET, payload.encode("utf-8"), hashlib.sha256).hexdigest()
    assert "malformed" in str(rejects(f"{payload}:{signature}"))


@pytest.mark.parametrize(
    "token",
    [
        "",
        ":",
        "::",
        "a:b:c",
        "x" * 10_000_000,
        ":" * 100_000,
        "\x00",
        "\udcff",
        "\U0001f600:\U0001f600:\U0001f600",
    ],
)
def test_token_signer_rejects_garbage(token: str) -> None:
    rejects(token)


def test_token_signer_rejects_newline_after_valid_token() -> None:
    token = signer().issue(NOW).token
    rejects(token + "\n")
    rejects(" " + token)


@given(st.text())
def test_token_signer_verify_only_raises_invalid_token(token: str) -> None:
    with pytest.raises(InvalidToken):
        signer().verify(token, NOW)


@given(st.text(alphabet="0123456789abcdef-:", max_size=120))
def test_token_signer_verify_only_raises_invalid_token_near_the_format(token: str) -> None:
    with pytest.raises(InvalidToken):
        signer().verify(token, NOW)


def test_token_signer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="secret"):
        TokenSigner(b"", TTL_S)
    with pytest.raises(ValueError, match="ttl_s"):
        TokenSigner(SECRET, 0)


def test_new_secret_is_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert isinstance(first, bytes)
    assert len(first) == 32
    assert first != second


def test_turn_credentials_known_vector() -> None:
    secret = "north"
    session_id = "0b6c4f1e-3a2d-4c5b-9e8f-7a6b5c4d3e2f"
    username, credential = turn_credentials(secret, 86400, session_id, 1_700_000_000.9)
    assert username == "1700086400:0b6c4f1e-3a2d-4c5b-9e8f-7a6b5c4d3e2f"
    expected = base64.b64encode(
        hmac.new(b"north", username.encode(), hashlib.sha1).digest()
    ).decode()
    assert credential == expected
    assert len(base64.b64decode(credential)) == 20


def test_pair_tag_is_symmetric_short_keyed_and_distinct() -> None:
    signer = TokenSigner(b"secret-one", 60)
    tag = signer.pair_tag("198.51.100.7", "2001:db8:5:6::/64")
    assert tag == signer.pair_tag("2001:db8:5:6::/64", "198.51.100.7")  # either way round
    assert len(tag) == 16
    assert all(ch in "0123456789abcdef" for ch in tag)
    assert tag != signer.pair_tag("198.51.100.7", "198.51.100.8")
    # Without the secret the tag cannot be made (or checked against a guess).
    assert tag != TokenSigner(b"secret-two", 60).pair_tag("198.51.100.7", "2001:db8:5:6::/64")
    # Not a token signature of some payload: the "pair:" prefix sets it apart.
    mac = hmac.new(b"secret-one", b"198.51.100.7\n2001:db8:5:6::/64", hashlib.sha256)
    assert not mac.hexdigest().startswith(tag)


# -- what the entry gate knew ------------------------------------------------------------


def test_token_carries_the_gates_band_and_subject() -> None:
    signer = TokenSigner(b"k" * 32, 600)
    issued = signer.issue(1000.0, band="adult", subject="a" * 32)
    assert issued.token.count(":") == 4
    claims = signer.verify_claims(issued.token, 1001.0)
    assert (claims.session_id, claims.band, claims.subject) == (
        issued.session_id,
        "adult",
        "a" * 32,
    )
    plain = signer.issue(1000.0)
    assert plain.token.count(":") == 2  # an open gate's token is as before
    assert signer.verify_claims(plain.token, 1001.0).band == ""


def test_token_band_cannot_be_changed_without_the_secret() -> None:
    signer = TokenSigner(b"k" * 32, 600)
    minor = signer.issue(1000.0, band="minor", subject="s").token
    for forged in (
        minor.replace(":minor:", ":adult:"),
        minor.replace(":minor:", "::"),
        minor.replace(":minor:s:", ":"),  # the claims dropped
    ):
        with pytest.raises(InvalidToken, match="signature"):
            signer.verify_claims(forged, 1001.0)


@pytest.mark.parametrize(
    ("band", "subject"), [("teen", ""), ("adult", "a.b"), ("", "x" * 65), ("", "a:b")]
)
def test_token_refuses_claims_it_cannot_carry(band: str, subject: str) -> None:
    with pytest.raises(ValueError, match="band"):
        TokenSigner(b"k" * 32, 600).issue(0.0, band=band, subject=subject)
