"""The entry gate's pure parts and kinds, without sockets: passes, cookies, kinds, raid.

The kinds run on the memory backend (a fake only in the sense that it is the
in-process one); their entry routes are exercised through quart's test
client in ``test_gate_kinds_through_the_app`` and over real sockets in
``tests/integration/test_gate.py``.
"""

from __future__ import annotations

import click
import pytest
import trio
import trio.testing

from omiro_trio import accounts
from omiro_trio.backends.base import Raid
from omiro_trio.backends.memory import open_memory_backend
from omiro_trio.config import GateConfig
from omiro_trio.gate import Admit, Claims, GateRequest, OpenGate, Refuse, RefuseReason
from omiro_trio.gate.commands import parse_duration
from omiro_trio.gate.entry import refusal
from omiro_trio.gate.gates import build_gate
from omiro_trio.gate.invite import InviteGate, invite_key, new_invite
from omiro_trio.gate.pages import LANGUAGES, _catalog, pick_language
from omiro_trio.gate.passes import COOKIE, MAX_COOKIES, GatePasses, parse_cookies
from omiro_trio.gate.passphrase import PassphraseGate, epoch_of
from omiro_trio.gate.raid import REFRESH_S, RaidSwitch

SECRET = b"s" * 32
NOW = 1_800_000_000.0
TIMINGS = {"interest_timeout_s": 5.0, "rematch_cooldown_s": 60.0, "block_ttl_s": 60.0}


# -- the gate pass ----------------------------------------------------------------------


def test_pass_round_trips_its_claims() -> None:
    passes = GatePasses(SECRET, "epoch", 3600)
    for claims in (
        Claims("passphrase"),
        Claims("invite", subject="0123456789abcdef"),
        Claims("oidc", subject="A_b-9" * 12, age_band="adult"),
        Claims("oidc", age_band="minor"),
    ):
        assert passes.check(passes.issue(claims, NOW), NOW) == claims


def test_pass_expires_after_its_ttl() -> None:
    passes = GatePasses(SECRET, "epoch", 3600)
    cookie = passes.issue(Claims("passphrase"), NOW)
    assert passes.check(cookie, NOW + 3599) is not None
    assert passes.check(cookie, NOW + 3600) is None


def test_pass_of_another_secret_or_epoch_is_refused() -> None:
    cookie = GatePasses(SECRET, "epoch", 3600).issue(Claims("passphrase"), NOW)
    assert GatePasses(b"t" * 32, "epoch", 3600).check(cookie, NOW) is None
    assert GatePasses(SECRET, "another phrase", 3600).check(cookie, NOW) is None


def test_pass_any_tampering_is_refused() -> None:
    passes = GatePasses(SECRET, "e", 3600)
    cookie = passes.issue(Claims("invite", subject="abc"), NOW)
    kind, expiry, subject, band, signature = cookie.split(".")
    forged = [
        f"passphrase.{expiry}.{subject}.{band}.{signature}",
        f"{kind}.{int(expiry) + 1}.{subject}.{band}.{signature}",
        f"{kind}.{expiry}.abd.{band}.{signature}",
        f"{kind}.{expiry}.{subject}.adult.{signature}",
        f"{kind}.{expiry}.{subject}.{band}.{signature[:-1]}0",
        f"{kind}.{expiry}.{subject}.{band}.{signature.upper()}",
        cookie + ".x",
        cookie[:-1],
        "",
        "x" * 10_000,
        "open.1.2.3.4",
        f"{kind}.{expiry}.{subject}.child.{signature}",
        f"{kind}.-1.{subject}.{band}.{signature}",
        f"{kind}.{expiry}.{subject}.{band}.{'é' * 64}",
    ]
    for bad in forged:
        if bad != cookie:
            assert passes.check(bad, NOW) is None, bad


def test_pass_refuses_a_subject_it_cannot_carry() -> None:
    passes = GatePasses(SECRET, "e", 60)
    with pytest.raises(ValueError, match="subject"):
        passes.issue(Claims("oidc", subject="has.dot"), NOW)
    with pytest.raises(ValueError, match="subject"):
        passes.issue(Claims("oidc", subject="x" * 65), NOW)


def test_parse_cookies_first_wins_bounded_and_forgiving() -> None:
    assert parse_cookies(["a=1; b=2", "a=3; c"]) == {"a": "1", "b": "2"}
    assert parse_cookies([f'{COOKIE}="quoted" ; =x; ;']) == {COOKIE: "quoted"}
    many = "; ".join(f"k{i}=v" for i in range(1000))
    assert len(parse_cookies([many])) == MAX_COOKIES
    assert parse_cookies([]) == {}


# -- the kinds --------------------------------------------------------------------------


async def test_open_gate_admits_everyone() -> None:
    verdict = await OpenGate().admit(GateRequest("192.0.2.1"))
    assert verdict == Admit(Claims("open"))


async def test_passphrase_gate_wants_its_pass() -> None:
    phrase_hash = await accounts.hash_password("correct horse")
    async with open_memory_backend(**TIMINGS) as backend:
        gate = PassphraseGate(
            phrase_hash, SECRET, backend, remember_s=60, tries_per_minute=5, wall=lambda: NOW
        )
        refused = await gate.admit(GateRequest("192.0.2.1", {}, NOW))
        assert refused == Refuse("passphrase", RefuseReason.REQUIRED, refused.message)  # type: ignore[union-attr]
        good = GatePasses(SECRET, epoch_of(phrase_hash), 60).issue(Claims("passphrase"), NOW)
        assert await gate.admit(GateRequest("192.0.2.1", {COOKIE: good}, NOW)) == Admit(
            Claims("passphrase")
        )
        # An invite's pass is not a passphrase pass, even signed alike.
        other = GatePasses(SECRET, epoch_of(phrase_hash), 60).issue(Claims("invite"), NOW)
        assert isinstance(await gate.admit(GateRequest("192.0.2.1", {COOKIE: other}, NOW)), Refuse)


def test_refusal_answers_401_for_required_and_403_for_the_rest() -> None:
    required = refusal(Refuse("invite", RefuseReason.REQUIRED, "by invitation"))
    assert required.status == 401
    assert required.body == {
        "error": "gate",
        "gate": "invite",
        "reason": "required",
        "message": "by invitation",
    }
    for reason in RefuseReason:
        if reason is not RefuseReason.REQUIRED:
            answer = refusal(Refuse("invite", reason, "no"))
            assert (answer.status, answer.body["reason"]) == (403, reason.value)


def test_new_invite_codes_are_unguessable_and_kept_as_hashes() -> None:
    codes = set()
    for _ in range(200):
        code, invite = new_invite(uses=2, expires_at=NOW + 60, now=NOW, by="admin")
        assert len(code) >= 22
        assert code not in codes
        codes.add(code)
        assert invite.key == invite_key(code)
        assert code not in invite.key
        assert invite.id == invite.key[:16]
        assert (invite.uses, invite.left) == (2, 2)


async def test_invite_gate_wants_its_pass() -> None:
    async with open_memory_backend(**TIMINGS) as backend:
        gate = InviteGate(SECRET, backend, remember_s=60, tries_per_minute=5, wall=lambda: NOW)
        verdict = await gate.admit(GateRequest("192.0.2.1", {}, NOW))
        assert isinstance(verdict, Refuse)
        assert verdict.reason is RefuseReason.REQUIRED
        good = GatePasses(SECRET, "invite", 60).issue(Claims("invite", subject="abc"), NOW)
        assert await gate.admit(GateRequest("192.0.2.1", {COOKIE: good}, NOW)) == Admit(
            Claims("invite", subject="abc")
        )
        expired = await gate.admit(GateRequest("192.0.2.1", {COOKIE: good}, NOW + 60))
        assert isinstance(expired, Refuse)


async def test_build_gate_picks_the_kind() -> None:
    phrase_hash = await accounts.hash_password("p")
    async with open_memory_backend(**TIMINGS) as backend:
        assert build_gate(GateConfig(), SECRET, backend).kind == "open"
        config = GateConfig(kind="passphrase", passphrase_hash=phrase_hash)
        assert build_gate(config, SECRET, backend).kind == "passphrase"
        assert build_gate(GateConfig(kind="invite"), SECRET, backend).kind == "invite"
        config = GateConfig(
            kind="oidc",
            oidc_issuer="https://id.example",
            oidc_client_id="omiro",
            oidc_client_secret="s",
        )
        assert build_gate(config, SECRET, backend).kind == "oidc"


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "15m", "12h", "7d", " 2D ")] == [
        90,
        90,
        900,
        43200,
        604800,
        172800,
    ]
    for bad in ("", "d", "7w", "-1d", "1.5h", "9999999999d"):
        with pytest.raises(click.BadParameter):
            parse_duration(bad)


# -- raid mode ----------------------------------------------------------------------------


async def test_raid_switch_reads_the_backend_at_most_once_per_refresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_memory_backend(**TIMINGS) as backend:
        here, there = RaidSwitch(backend), RaidSwitch(backend)
        assert await here.current() is None
        raid = Raid(NOW, "admin", 60)
        await there.set(raid)  # another server turns it on
        assert await there.current() == raid  # at once where it was set
        assert await here.current() is None  # still the view read a moment ago
        await trio.sleep(REFRESH_S)
        assert await here.current() == raid  # within REFRESH_S everywhere
        await here.set(None)
        assert await here.current() is None


@pytest.mark.parametrize(
    ("header", "language"),
    [
        (None, "en"),
        ("", "en"),
        ("de", "de"),
        ("pt-BR,pt;q=0.9", "pt"),
        ("ja, fr;q=0.4, es;q=0.6", "es"),  # the highest q the page has
        ("fr;q=0.5, de;q=0.5", "fr"),  # equal q: the first
        ("ar;q=0", "en"),  # not acceptable
        ("de;q=nan, es;q=2, fr;q=1e999, pt;q=0.1", "pt"),  # bad q values are skipped
        ("zh-Hant-TW, *;q=0.1", "en"),
        ("x" * 600 + ", de", "en"),  # read bounded: past 512 characters is not looked at
        (",".join(["ja"] * 16 + ["de"]), "en"),  # at most 16 tags
        (";;;,,,==", "en"),
    ],
)
def test_gate_pages_pick_the_language_from_accept_language(
    header: str | None, language: str
) -> None:
    assert pick_language(header) == language


def test_gate_pages_every_language_has_every_page_message() -> None:
    keys = [k for k in _catalog("en") if str(k).startswith("gate.page")]
    assert len(keys) == 13
    for code in LANGUAGES:
        assert all(isinstance(_catalog(code).get(k), str) for k in keys), code
