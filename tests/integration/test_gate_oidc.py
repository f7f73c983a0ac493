"""The ``oidc`` gate against a real OpenID Connect provider, and crafted ID tokens.

The provider is the certified ``oidc-provider`` package on Node, started on
127.0.0.1 by ``oidc_support.running_provider`` (skips without Node unless
``CI`` is set). The gate's routes run in a quart-trio app of their own
(``OidcGate.register``) driven by quart's test client; the gate talks to
the provider over real sockets, and the sign-in itself (the provider's
login form) is driven over HTTP as a browser would.

Crafted tokens: a provider served by ``httpx.MockTransport`` with a key of
the test's own signs tokens that are wrong in one way each; the gate must
refuse every one of them and accept the one that is right.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
import trio
import trio.testing
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey
from oidc_support import CLIENT_ID, CLIENT_SECRET, Provider, running_provider, sign_in
from quart_trio import QuartTrio
from support import StartServer

from omiro_trio.backends.memory import MemoryBackend, open_memory_backend
from omiro_trio.config import GateConfig
from omiro_trio.gate import Admit, EntryRequests, GateRequest, Refuse, RefuseReason
from omiro_trio.gate.oidc import (
    JWKS_REFRESH_S,
    LOGIN_COOKIE,
    OidcGate,
    OidcSettings,
    ProviderError,
)
from omiro_trio.gate.oidc_rules import AgeRules, AllowList
from omiro_trio.gate.passes import COOKIE, GatePasses

SECRET = b"s" * 32
# Where the provider sends the browser back (any loopback port is registered).
REDIRECT = "http://127.0.0.1:9/gate/oidc/callback"


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with running_provider() as running:
        yield running


@asynccontextmanager
async def open_backend() -> AsyncIterator[MemoryBackend]:
    async with open_memory_backend(
        interest_timeout_s=10, rematch_cooldown_s=30, block_ttl_s=60
    ) as backend:
        yield backend


def make_gate(
    issuer: str,
    backend: MemoryBackend,
    *,
    allow: AllowList | None = None,
    ages: AgeRules | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[OidcGate, QuartTrio]:
    settings = OidcSettings(
        issuer=issuer,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        redirect_url=REDIRECT,
        scopes=("openid", "email", "profile", "groups", "age"),
        allow=allow or AllowList(),
        ages=ages or AgeRules(),
    )
    gate = OidcGate(
        settings,
        GatePasses(SECRET, f"oidc:{issuer}", 3600),
        SECRET,
        backend,
        tries_per_minute=100,
        transport=transport,
    )
    app = QuartTrio(__name__)
    gate.register(app, EntryRequests(lambda: "client", lambda: False))
    return gate, app


class Browser:
    """One person's browser: the provider's cookies in ``web``, the server's by hand."""

    def __init__(self, app: QuartTrio) -> None:
        self.app = app
        self.web = httpx.Client(follow_redirects=False, timeout=10)

    async def start(self) -> tuple[str, str]:
        """Open the server's login; returns (the provider URL, the login cookie)."""
        answer = await self.app.test_client().get("/gate/oidc/login")
        assert answer.status_code == 302
        cookie = _set_cookie(answer.headers.getlist("Set-Cookie"), LOGIN_COOKIE)
        assert cookie
        return answer.headers["Location"], cookie

    async def sign_in(self, account: str) -> tuple[str, str]:
        """Through the provider as ``account``; returns (the callback URL, the login cookie)."""
        url, cookie = await self.start()
        # A fresh provider session each time: the provider would otherwise
        # remember the last account and skip its login page.
        self.web.close()
        self.web = httpx.Client(follow_redirects=False, timeout=10)
        callback = await trio.to_thread.run_sync(sign_in, self.web, url, account)
        return callback, cookie

    async def callback(self, callback: str, cookie: str) -> Any:
        parts = urlsplit(callback)
        return await self.app.test_client().get(
            f"{parts.path}?{parts.query}", headers={"Cookie": f"{LOGIN_COOKIE}={cookie}"}
        )


def _set_cookie(headers: list[str], name: str) -> str:
    for header in headers:
        first = header.split(";", 1)[0]
        key, _, value = first.partition("=")
        if key.strip() == name:
            return value
    return ""


async def admitted(gate: OidcGate, answer: Any) -> Admit:
    assert answer.status_code == 303, await answer.get_data(as_text=True)
    assert answer.headers["Location"] == "../../"  # the page, from /gate/oidc/callback
    passed = _set_cookie(answer.headers.getlist("Set-Cookie"), COOKIE)
    verdict = await gate.admit(GateRequest("client", {COOKIE: passed}, time.time()))
    assert isinstance(verdict, Admit), verdict
    return verdict


async def refused_page(answer: Any, status: int, reason: str = "") -> str:
    text: str = await answer.get_data(as_text=True)
    assert answer.status_code == status, text
    assert _set_cookie(answer.headers.getlist("Set-Cookie"), COOKIE) == ""
    assert f'data-reason="{reason}"' in text
    return text


# -- against the real provider -----------------------------------------------------------


@pytest.mark.rule("protocol/gate-oidc")
async def test_oidc_sign_in_admits_with_a_stable_account_key_and_age_band(
    provider: Provider,
) -> None:
    async with open_backend() as backend:
        gate, app = make_gate(provider.issuer, backend, ages=AgeRules(claim="birthdate"))
        assert isinstance(await gate.admit(GateRequest("client", {}, time.time())), Refuse)
        browser = Browser(app)
        first = await admitted(gate, await browser.callback(*await browser.sign_in("adult-1")))
        again = await admitted(gate, await browser.callback(*await browser.sign_in("adult-1")))
        other = await admitted(gate, await browser.callback(*await browser.sign_in("minor-1")))
        assert first.claims.kind == "oidc"
        assert first.claims.age_band == "adult"
        assert len(first.claims.subject) == 32
        assert again.claims.subject == first.claims.subject  # stable per account
        assert "adult-1" not in first.claims.subject  # and says nothing of it
        assert (other.claims.age_band, other.claims.subject != first.claims.subject) == (
            "minor",
            True,
        )


@pytest.mark.rule("protocol/gate-oidc")
async def test_oidc_login_asks_for_pkce_s256_state_and_nonce(provider: Provider) -> None:
    async with open_backend() as backend:
        _, app = make_gate(provider.issuer, backend)
        url, cookie = await Browser(app).start()
        query = parse_qs(urlsplit(url).query)
        assert url.startswith(provider.issuer + "/auth?")
        assert query["code_challenge_method"] == ["S256"]
        assert len(query["code_challenge"][0]) == 43  # base64url of a SHA-256
        assert query["response_type"] == ["code"]
        assert query["redirect_uri"] == [REDIRECT]
        state, nonce, verifier = cookie.split(".")[:3]
        assert query["state"] == [state]
        assert query["nonce"] == [nonce]
        assert verifier not in url  # only its hash leaves the server


@pytest.mark.rule("protocol/gate-oidc")
async def test_oidc_callback_with_another_logins_state_is_refused(provider: Provider) -> None:
    async with open_backend() as backend:
        _, app = make_gate(provider.issuer, backend)
        browser = Browser(app)
        callback, _ = await browser.sign_in("adult-1")
        _, other_cookie = await browser.start()
        await refused_page(await browser.callback(callback, other_cookie), 400)
        # Without any login cookie, too.
        answer = await app.test_client().get(
            urlsplit(callback).path + "?" + urlsplit(callback).query
        )
        await refused_page(answer, 400)


@pytest.mark.rule("protocol/gate-oidc")
@pytest.mark.rule("protocol/gate-oidc")
async def test_oidc_callback_from_another_issuer_is_refused(provider: Provider) -> None:
    async with open_backend() as backend:
        gate, app = make_gate(provider.issuer, backend)
        browser = Browser(app)
        callback, cookie = await browser.sign_in("adult-1")
        assert f"iss={quote(provider.issuer, safe='')}" in callback  # RFC 9207
        mixed = callback.replace(quote(provider.issuer, safe=""), quote("https://evil.example"))
        await refused_page(await browser.callback(mixed, cookie), 400)
        await admitted(gate, await browser.callback(callback, cookie))


async def test_oidc_replayed_callback_is_refused(provider: Provider) -> None:
    async with open_backend() as backend:
        gate, app = make_gate(provider.issuer, backend)
        browser = Browser(app)
        callback, cookie = await browser.sign_in("adult-1")
        await admitted(gate, await browser.callback(callback, cookie))
        text = await refused_page(await browser.callback(callback, cookie), 400)
        assert "already used" in text


async def test_oidc_exchange_needs_the_pkce_verifier(provider: Provider) -> None:
    async with open_backend() as backend:
        gate, app = make_gate(provider.issuer, backend)
        browser = Browser(app)
        callback, cookie = await browser.sign_in("adult-1")
        state, nonce, _, expiry = cookie.split(".")[:4]
        login = type(gate._unseal(cookie))(state, nonce, "x" * 64, int(expiry))  # type: ignore[misc]
        forged_verifier = gate._seal(login)
        text = await refused_page(await browser.callback(callback, forged_verifier), 502)
        assert "could not be checked" in text


async def test_oidc_id_token_nonce_must_be_this_logins(provider: Provider) -> None:
    async with open_backend() as backend:
        gate, app = make_gate(provider.issuer, backend)
        browser = Browser(app)
        callback, cookie = await browser.sign_in("adult-1")
        state, _, verifier, expiry = cookie.split(".")[:4]
        login = type(gate._unseal(cookie))(state, "another-nonce", verifier, int(expiry))  # type: ignore[misc]
        await refused_page(await browser.callback(callback, gate._seal(login)), 502)


@pytest.mark.parametrize(
    ("allow", "account", "allowed"),
    [
        (AllowList(email_domains=("campus.example",)), "adult-1", True),
        (AllowList(email_domains=("campus.example",)), "outsider-1", False),
        (AllowList(claim="groups", values=("students",)), "adult-2", True),
        (AllowList(claim="groups", values=("students",)), "guest-1", False),
        (AllowList(claim="groups", values=("staff",)), "adult-1", False),
    ],
)
async def test_oidc_allow_lists_are_enforced(
    provider: Provider, allow: AllowList, account: str, allowed: bool
) -> None:
    async with open_backend() as backend:
        gate, app = make_gate(provider.issuer, backend, allow=allow)
        browser = Browser(app)
        answer = await browser.callback(*await browser.sign_in(account))
        if allowed:
            await admitted(gate, answer)
        else:
            await refused_page(answer, 403, RefuseReason.NOT_ALLOWED)


@pytest.mark.parametrize(
    ("ages", "account", "band"),
    [
        (AgeRules(claim="birthdate", min_age=13), "child-1", None),
        (AgeRules(claim="birthdate", min_age=13), "minor-2", "minor"),
        (AgeRules(claim="birthdate", min_age=13), "ageless-1", ""),
        (AgeRules(claim="birthdate", min_age=13, require=True), "ageless-1", None),
        (AgeRules(claim="birthdate", min_age=18), "minor-1", None),
        (AgeRules(claim="over_18", kind="adult_flag"), "minor-1", "minor"),
        (AgeRules(claim="over_18", kind="adult_flag"), "adult-2", "adult"),
        (AgeRules(claim="over_18", kind="adult_flag", min_age=18), "minor-1", None),
    ],
)
async def test_oidc_age_bands_and_the_minimum_age(
    provider: Provider, ages: AgeRules, account: str, band: str | None
) -> None:
    """``band``: the band admitted ("" unknown), or None: refused as too young."""
    async with open_backend() as backend:
        gate, app = make_gate(provider.issuer, backend, ages=ages)
        browser = Browser(app)
        answer = await browser.callback(*await browser.sign_in(account))
        if band is None and ages.require and account.startswith("ageless"):
            text = await refused_page(answer, 403, RefuseReason.AGE_UNKNOWN)
            assert "your account does not state it" in text
            assert "not open to people of your age" not in text
        elif band is None:
            text = await refused_page(answer, 403, RefuseReason.TOO_YOUNG)
            assert "not open to people of your age" in text
        else:
            verdict = await admitted(gate, answer)
            assert verdict.claims.age_band == (band or None)


async def test_oidc_provider_not_answering_is_a_page_not_an_error() -> None:
    from redis_support import free_port

    async with open_backend() as backend:
        _, app = make_gate(f"http://127.0.0.1:{free_port()}", backend)
        with trio.fail_after(15):
            answer = await app.test_client().get("/gate/oidc/login")
        text = await refused_page(answer, 502)
        assert "not answering" in text
        assert '<html lang="en" dir="ltr">' in text
        french = await app.test_client().get(
            "/gate/oidc/login", headers={"Accept-Language": "fr-CA,fr;q=0.9,en;q=0.5"}
        )
        text = await refused_page(french, 502)
        assert '<html lang="fr" dir="ltr">' in text
        assert "Le service de connexion ne répond pas" in text
        assert "Retour à la page d\u2019accueil" in text
        assert french.headers["Vary"] == "Accept-Language"


@pytest.mark.rule("protocol/gate-oidc")
async def test_oidc_refusal_pages_follow_the_browsers_language(provider: Provider) -> None:
    """A person too young, signing in from a German and then an Arabic browser, is told
    in that language (the page's own catalogs); a language the page lacks is English."""
    async with open_backend() as backend:
        _, app = make_gate(provider.issuer, backend, ages=AgeRules(claim="birthdate", min_age=13))
        browser = Browser(app)
        for accept, lang, direction, words in (
            ("de-DE,de;q=0.9,en;q=0.8", "de", "ltr", "Du kannst diesen Dienst nicht nutzen"),
            ("ja,ar;q=0.8", "ar", "rtl", "لا يمكنك استخدام هذه الخدمة"),
            ("ja,zh;q=0.5", "en", "ltr", "You cannot use this service"),
        ):
            callback, cookie = await browser.sign_in("child-1")
            parts = urlsplit(callback)
            answer = await app.test_client().get(
                f"{parts.path}?{parts.query}",
                headers={"Cookie": f"{LOGIN_COOKIE}={cookie}", "Accept-Language": accept},
            )
            text = await refused_page(answer, 403, RefuseReason.TOO_YOUNG)
            assert f'<html lang="{lang}" dir="{direction}">' in text
            assert f"<h1>{words}</h1>" in text


# -- crafted ID tokens -------------------------------------------------------------------

ISSUER = "https://id.example"
NONCE = "the-nonce"


class CraftedProvider:
    """Discovery and keys of ``ISSUER`` served in-process; tokens signed by ``key``."""

    def __init__(self) -> None:
        self.key = RSAKey.generate_key(2048, parameters={"kid": "k1", "alg": "RS256"})
        self.fetches = 0

    def transport(self) -> httpx.MockTransport:
        def answer(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/.well-known/openid-configuration":
                return httpx.Response(
                    200,
                    json={
                        "issuer": ISSUER,
                        "authorization_endpoint": ISSUER + "/auth",
                        "token_endpoint": ISSUER + "/token",
                        "jwks_uri": ISSUER + "/jwks",
                    },
                )
            if request.url.path == "/jwks":
                self.fetches += 1
                return httpx.Response(200, json={"keys": [self.key.as_dict(private=False)]})
            return httpx.Response(404)

        return httpx.MockTransport(answer)

    def claims(self, **changes: Any) -> dict[str, Any]:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": CLIENT_ID,
            "sub": "account-1",
            "iat": now,
            "exp": now + 300,
            "nonce": NONCE,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: Any = None, alg: str = "RS256", kid: str = "k1", **changes: Any) -> str:
        return jwt.encode({"alg": alg, "kid": kid}, self.claims(**changes), key or self.key)


@pytest.fixture
def crafted() -> CraftedProvider:
    return CraftedProvider()


async def verify(crafted: CraftedProvider, token: str) -> dict[str, Any]:
    async with open_backend() as backend:
        gate, _ = make_gate(ISSUER, backend, transport=crafted.transport())
        return await gate.verify_id_token(token, NONCE)


async def test_crafted_a_right_token_is_accepted(crafted: CraftedProvider) -> None:
    claims = await verify(crafted, crafted.token())
    assert claims["sub"] == "account-1"


@pytest.mark.parametrize(
    "what",
    [
        "another key",
        "issuer",
        "audience",
        "expired",
        "issued in the future",
        "no expiry",
        "nonce",
        "no nonce",
        "several audiences, no azp",
        "hs256 with the client secret",
        "alg none",
        "tampered payload",
    ],
)
async def test_crafted_a_wrong_token_is_refused(crafted: CraftedProvider, what: str) -> None:
    now = int(time.time())
    token = {
        "another key": lambda: crafted.token(RSAKey.generate_key(2048, parameters={"kid": "k1"})),
        "issuer": lambda: crafted.token(iss="https://evil.example"),
        "audience": lambda: crafted.token(aud="another-client"),
        "expired": lambda: crafted.token(iat=now - 4000, exp=now - 3600),
        "issued in the future": lambda: crafted.token(iat=now + 3600, exp=now + 7200),
        "no expiry": lambda: crafted.token(exp=None),
        "nonce": lambda: crafted.token(nonce="a-replayed-nonce"),
        "no nonce": lambda: crafted.token(nonce=None),
        "several audiences, no azp": lambda: crafted.token(aud=[CLIENT_ID, "another-client"]),
        "hs256 with the client secret": lambda: crafted.token(
            OctKey.import_key(CLIENT_SECRET.encode() * 2), alg="HS256"
        ),
        "alg none": lambda: _unsigned(crafted.claims()),
        "tampered payload": lambda: _tampered(crafted.token()),
    }[what]()
    with pytest.raises(ProviderError):
        await verify(crafted, token)


def _unsigned(claims: dict[str, Any]) -> str:
    import base64
    import json

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'kid': 'k1'})}.{part(claims)}."


def _tampered(token: str) -> str:
    import base64
    import json

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_crafted_keys_are_fetched_again_at_most_once_a_minute(
    crafted: CraftedProvider, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_backend() as backend:
        gate, _ = make_gate(ISSUER, backend, transport=crafted.transport())
        await gate.verify_id_token(crafted.token(), NONCE)
        assert crafted.fetches == 1
        # Tokens under keys the gate does not hold make it fetch the set again
        # at most once per JWKS_REFRESH_S, however many arrive.
        crafted.key = RSAKey.generate_key(2048, parameters={"kid": "k2", "alg": "RS256"})
        for _ in range(5):
            with pytest.raises(ProviderError):
                await gate.verify_id_token(crafted.token(kid="k2"), NONCE)
        assert crafted.fetches == 1
        # A minute on, the provider's new key is fetched and its tokens check out.
        await trio.sleep(JWKS_REFRESH_S)
        claims = await gate.verify_id_token(crafted.token(kid="k2"), NONCE)
        assert claims["sub"] == "account-1"
        assert crafted.fetches == 2


# -- one real server: signed in, given a token, matched by age band ------------------------


def _sign_in_to_server(server_url: str, account: str) -> tuple[int, str]:
    """A browser's whole sign-in against a real server; (the callback's status, a token or "")."""
    with httpx.Client(follow_redirects=False, timeout=10) as web:
        refused = web.get(server_url + "/session/new")
        assert refused.status_code == 401
        assert (refused.json()["gate"], refused.json()["reason"]) == ("oidc", "required")
        callback = sign_in(web, server_url + "/gate/oidc/login", account)
        assert callback.startswith(server_url + "/gate/oidc/callback?")
        answer = web.get(callback)
        if answer.status_code != 303:
            return answer.status_code, ""
        session = web.get(server_url + "/session/new")
        assert session.status_code == 200, session.text
        return 303, str(session.json()["token"])


@pytest.mark.rule("protocol/age-bands", "protocol/gate-oidc", "protocol/session-token")
async def test_oidc_server_signs_in_and_matches_within_age_bands(
    provider: Provider, start_server: StartServer
) -> None:
    server = await start_server(
        **provider.gate_config(
            gate__oidc_scopes=["openid", "email", "profile"],
            gate__age_claim="birthdate",
            gate__min_age=13,
        )
    )
    tokens: dict[str, str] = {}
    for account in ("adult-1", "adult-2", "minor-1"):
        status, tokens[account] = await trio.to_thread.run_sync(
            _sign_in_to_server, server.url, account
        )
        assert status == 303
    assert tokens["adult-1"].split(":")[2] == "adult"
    assert tokens["minor-1"].split(":")[2] == "minor"
    status, _ = await trio.to_thread.run_sync(_sign_in_to_server, server.url, "child-1")
    assert status == 403

    minor = await server.connect(tokens["minor-1"])
    adult = await server.connect(tokens["adult-1"])
    adult2 = await server.connect(tokens["adult-2"])
    await minor.send("join_queue", None)
    await minor.expect("queued")
    await adult.send("join_queue", None)
    await adult.expect("queued")  # the minor waits alone, and is not taken
    await adult2.send("join_queue", None)
    found = await adult.expect("match_found")
    assert found["partner"] == adult2.session_id
    assert (await adult2.expect("match_found"))["partner"] == adult.session_id
    await adult.send("chat", {"message": "hello"})
    assert (await adult2.expect("chat"))["message"] == "hello"
    await minor.expect_nothing()


def _sign_in_banned(server_url: str, account: str) -> httpx.Response:
    """Sign in as ``account``; the answer of ``/session/new`` with the pass it was given."""
    with httpx.Client(follow_redirects=False, timeout=10) as web:
        callback = sign_in(web, server_url + "/gate/oidc/login", account)
        assert web.get(callback).status_code == 303
        return web.get(server_url + "/session/new")


@pytest.mark.rule("protocol/gate-oidc", "protocol/admin-bans", "protocol/admin-reports")
async def test_oidc_account_reported_and_banned_is_refused_at_sign_in_and_others_are_not(
    provider: Provider, start_server: StartServer
) -> None:
    token = "s3cret-admin-token-of-at-least-32-bytes"
    server = await start_server(**provider.gate_config(admin__token=token))
    tokens: dict[str, str] = {}
    for account in ("adult-1", "adult-2"):
        status, tokens[account] = await trio.to_thread.run_sync(
            _sign_in_to_server, server.url, account
        )
        assert status == 303
    key = tokens["adult-1"].split(":")[3]
    assert len(key) == 32
    assert key != tokens["adult-2"].split(":")[3]
    one = await server.connect(tokens["adult-1"])
    two = await server.connect(tokens["adult-2"])
    await one.send("join_queue", None)
    await one.expect("queued")
    await two.send("join_queue", None)
    await two.expect("match_found")
    await one.expect("match_found")
    await two.send("report", {"reason": "spam"})
    await one.expect("partner_disconnected")
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, headers=auth) as http:
        (report,) = (await http.get("/admin/reports")).json()["reports"]
        assert report["reported_account"] == key
        banned = await http.post(
            f"/admin/reports/{report['id']}/ban", json={"duration_s": 3600, "target": "account"}
        )
        assert banned.status_code == 200, banned.text
    assert (await one.expect("error"))["code"] == "banned"
    assert await one.expect_closed() == 1008
    # Signing in again (a new pass, any address) gives no token; the other account does.
    refused = await trio.to_thread.run_sync(_sign_in_banned, server.url, "adult-1")
    assert refused.status_code == 403
    assert (refused.json()["error"], refused.json()["message"]) == (
        "banned",
        "this account is banned",
    )
    again = await trio.to_thread.run_sync(_sign_in_banned, server.url, "adult-2")
    assert again.status_code == 200
    await two.send("join_queue", None)
    await two.expect("queued")


@pytest.mark.rule("protocol/gate-oidc")
async def test_oidc_callback_flood_is_cut_at_the_tries_bound_while_a_pair_chats(
    provider: Provider, start_server: StartServer
) -> None:
    """40 callbacks at once from one client, each of which would cost a request to
    the provider: only ``tries_per_minute`` get past the bound; a pair keeps chatting."""
    server = await start_server(**provider.gate_config())
    a, b = await _signed_in_pair(server)
    statuses: list[int] = []
    round_trips: list[float] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=20) as http:
        login = await http.get("/gate/oidc/login")
        state = parse_qs(urlsplit(login.headers["location"]).query)["state"][0]

        async def callback(n: int) -> None:
            answer = await http.get(f"/gate/oidc/callback?state={state}&code=forged-{n}")
            statuses.append(answer.status_code)

        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(callback, n)
            for n in range(20):
                start = trio.current_time()
                await a.send("chat", {"message": f"ping {n}"})
                assert (await b.expect("chat"))["message"] == f"ping {n}"
                round_trips.append(trio.current_time() - start)
    # The pair's two sign-ins came from the same client: two of its tries.
    tries = GateConfig().tries_per_minute - 2
    assert statuses.count(429) == 40 - tries
    # Past the bound's gate: one spends the state, the others find it spent.
    assert sorted(s for s in statuses if s != 429) == [400] * (tries - 1) + [502]
    assert max(round_trips) < 1.0, round_trips


async def _signed_in_pair(server: Any) -> tuple[Any, Any]:
    tokens = []
    for account in ("adult-1", "adult-2"):
        status, token = await trio.to_thread.run_sync(_sign_in_to_server, server.url, account)
        assert status == 303
        tokens.append(token)
    a = await server.connect(tokens[0])
    b = await server.connect(tokens[1])
    await a.send("join_queue", None)
    await a.expect("queued")
    await b.send("join_queue", None)
    await a.expect("match_found")
    await b.expect("match_found")
    return a, b
