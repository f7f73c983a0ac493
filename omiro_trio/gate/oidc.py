"""The ``oidc`` gate: sign in with an OpenID Connect provider (docs/gate.md).

The authorization code flow with PKCE (RFC 7636, S256), through authlib's
httpx client, which runs natively under trio:

1. ``GET /gate/oidc/login``: a fresh ``state``, ``nonce`` and PKCE verifier
   go into a short-lived signed cookie (``omiro_oidc``: ``HttpOnly``,
   ``SameSite=Lax`` so the provider's redirect back brings it, ``Path`` the
   gate's routes, ``LOGIN_TTL_S``), and the browser is sent to the
   provider's authorization endpoint (from its discovery document) with the
   state, the nonce and the S256 challenge.
2. ``GET /gate/oidc/callback``: the cookie's signature and expiry are
   checked and its state compared (constant time) with the one the provider
   sent back; the state is then spent cluster-wide (the backend's rate
   limit with an allowance of one, for the cookie's life), so a replayed
   callback is refused even with its cookie. The code is exchanged, with
   the verifier, at the token endpoint; the ID token's signature (the
   provider's JWKS, asymmetric algorithms only), issuer, audience,
   authorized party, expiry, issue time and nonce are verified
   (joserfc). Then the allow-lists and the age rules (``oidc_rules.py``),
   and the gate pass (``passes.py``) with the account's salted key and its
   age band.

Every request to the provider has a deadline (``PROVIDER_TIMEOUT_S``); a
provider that does not answer gives the person a page saying so (502),
never an exception. The discovery document is kept ``METADATA_TTL_S``,
the keys until a token names a key they do not hold (fetched again at
most once per ``JWKS_REFRESH_S``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final

import httpx
import trio
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from quart import Response, request
from quart_trio import QuartTrio

from omiro_trio.backends.base import Backend
from omiro_trio.gate import (
    Claims,
    EntryRequests,
    GateKind,
    GateRequest,
    RefuseReason,
    Verdict,
)
from omiro_trio.gate.entry import Tries
from omiro_trio.gate.oidc_rules import (
    AgeRules,
    AllowList,
    account_subject,
    age_known,
    band_for,
    claim_allowed,
    email_allowed,
)
from omiro_trio.gate.pages import gate_page
from omiro_trio.gate.passes import COOKIE, GatePasses

__all__ = ["LOGIN_COOKIE", "OidcGate", "OidcSettings"]

LOGIN_PATH: Final = "/gate/oidc/login"
CALLBACK_PATH: Final = "/gate/oidc/callback"
LOGIN_COOKIE: Final = "omiro_oidc"
PAGE_FROM_CALLBACK: Final = "../../"  # the page, relative to the callback
LOGIN_TTL_S: Final = 600  # from the sign-in's start to the provider's answer
PROVIDER_TIMEOUT_S: Final = 10.0  # each request to the provider, whole
METADATA_TTL_S: Final = 3600.0
JWKS_REFRESH_S: Final = 60.0
MAX_PROVIDER_BYTES: Final = 256 * 1024  # a discovery document, a key set or a token answer
MAX_PARAM_CHARS: Final = 2048  # a callback's code or state
LEEWAY_S: Final = 60  # clock difference allowed with the provider
# Asymmetric only: "none" and HS256 (signed with the client secret) are refused.
ID_TOKEN_ALGORITHMS: Final = [
    *("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    *("ES256", "ES384", "ES512", "EdDSA"),
]
_TOKEN_CHARS: Final = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-")


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """The ``[gate]`` keys of the ``oidc`` kind (docs/gate.md).

    Attributes:
        issuer: the provider's issuer URL, exactly as its discovery document says.
        client_id: this service's client id at the provider.
        client_secret: its secret (``client_secret_basic``).
        redirect_url: the callback URL registered at the provider; "" takes
            the request's own origin + ``CALLBACK_PATH``.
        scopes: asked for; ``openid`` always.
        allow: the allow-lists.
        ages: how the age band is read.
    """

    issuer: str
    client_id: str
    client_secret: str
    redirect_url: str = ""
    scopes: tuple[str, ...] = ("openid", "email")
    allow: AllowList = field(default_factory=AllowList)
    ages: AgeRules = field(default_factory=AgeRules)


class ProviderError(Exception):
    """The provider did not answer, or answered something unusable."""


@dataclass(frozen=True, slots=True)
class _Login:
    state: str
    nonce: str
    verifier: str
    expires_at: int


class OidcGate:
    """The ``oidc`` kind of ``EntryGate``.

    Args:
        settings: the provider and the rules.
        passes: signs the gate pass (bound to the issuer and client id).
        secret: the session secret: signs the login cookie and keys the
            account hashes.
        backend: spends each login's state once, cluster-wide.
        tries_per_minute: sign-ins (callbacks) per client per minute: each
            costs a request to the provider.
        wall: the wall clock.
        transport: for tests only: how httpx reaches the provider.
    """

    def __init__(
        self,
        settings: OidcSettings,
        passes: GatePasses,
        secret: bytes,
        backend: Backend,
        *,
        tries_per_minute: int = 5,
        wall: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._tries = Tries(backend, tries_per_minute)
        self._settings = settings
        self._passes = passes
        self._secret = bytes(secret)
        self._keyed = hmac.new(self._secret, b"oidc-login:", hashlib.sha256)
        self._backend = backend
        self._wall = wall
        self._transport = transport
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = -METADATA_TTL_S
        self._keys: KeySet | None = None
        self._keys_at = -JWKS_REFRESH_S

    @property
    def kind(self) -> GateKind:
        return "oidc"

    async def admit(self, request: GateRequest) -> Verdict:
        return self._passes.admit(request, "oidc", "sign in to chat")

    def register(self, app: QuartTrio, entry: EntryRequests) -> None:
        @app.get(LOGIN_PATH)
        async def oidc_login() -> Response:
            return await self._login(secure=entry.secure())

        @app.get(CALLBACK_PATH)
        async def oidc_callback() -> Response:
            refused = await self._tries.refused(entry.client())
            if refused is not None:
                return refused
            return await self._callback(secure=entry.secure())

    # -- the two routes ---------------------------------------------------------------

    async def _login(self, *, secure: bool) -> Response:
        try:
            metadata = await self._discover()
        except ProviderError:
            return _page(HTTPStatus.BAD_GATEWAY, "gate.pageProviderDown", _LATER)
        now = int(self._wall())
        login = _Login(
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(48),
            now + LOGIN_TTL_S,
        )
        url = prepare_grant_uri(  # type: ignore[no-untyped-call]
            metadata["authorization_endpoint"],
            self._settings.client_id,
            "code",
            redirect_uri=self._redirect_url(),
            scope=" ".join(dict.fromkeys(("openid", *self._settings.scopes))),
            state=login.state,
            nonce=login.nonce,
            code_challenge=create_s256_code_challenge(login.verifier),  # type: ignore[no-untyped-call]
            code_challenge_method="S256",
        )
        response = _redirect(url, HTTPStatus.FOUND)
        response.set_cookie(
            LOGIN_COOKIE,
            self._seal(login),
            max_age=LOGIN_TTL_S,
            path="/gate/oidc/",
            httponly=True,
            secure=secure,
            samesite="Lax",
        )
        return response

    async def _callback(self, *, secure: bool) -> Response:
        login = self._unseal(request.cookies.get(LOGIN_COOKIE, ""))
        state = request.args.get("state", "")
        if login is None or not hmac.compare_digest(state.encode(), login.state.encode()):
            return _page(HTTPStatus.BAD_REQUEST, "gate.pageExpired", _AGAIN)
        # RFC 9207: a provider that names itself must be ours (a mix-up defence).
        if request.args.get("iss", self._settings.issuer) != self._settings.issuer:
            return _page(HTTPStatus.BAD_REQUEST, "gate.pageExpired", _AGAIN)
        if request.args.get("error"):
            return _page(HTTPStatus.FORBIDDEN, "gate.pageNotCompleted", _AGAIN)
        code = request.args.get("code", "")
        if not code or len(code) > MAX_PARAM_CHARS:
            return _page(HTTPStatus.BAD_REQUEST, "gate.pageExpired", _AGAIN)
        # One use per state, on every server: a replayed callback is refused.
        if await self._backend.hit_rate_limit(f"oidc-state:{state}", 1, LOGIN_TTL_S) is not None:
            return _page(HTTPStatus.BAD_REQUEST, "gate.pageUsed", _AGAIN)
        try:
            claims = await self._exchange(code, login)
        except ProviderError:
            return _page(HTTPStatus.BAD_GATEWAY, "gate.pageUnchecked", _LATER)
        return self._admit_claims(claims, secure=secure)

    def _admit_claims(self, claims: dict[str, Any], *, secure: bool) -> Response:
        settings = self._settings
        allow = settings.allow
        if not email_allowed(claims, allow.email_domains) or not claim_allowed(
            claims, allow.claim, allow.values
        ):
            return _page(
                HTTPStatus.FORBIDDEN,
                "gate.pageNotAllowedTitle",
                "gate.pageNotAllowedText",
                reason=RefuseReason.NOT_ALLOWED,
            )
        today = datetime.fromtimestamp(self._wall(), UTC).date()
        admitted, band = band_for(claims, settings.ages, today)
        if not admitted and not age_known(claims, settings.ages, today):
            # require_age: the provider did not say; nothing is guessed, nor said of it.
            return _page(
                HTTPStatus.FORBIDDEN,
                "gate.pageRefusedTitle",
                "gate.pageAgeUnknownText",
                reason=RefuseReason.AGE_UNKNOWN,
            )
        if not admitted:
            return _page(
                HTTPStatus.FORBIDDEN,
                "gate.pageRefusedTitle",
                "gate.pageTooYoungText",
                reason=RefuseReason.TOO_YOUNG,
            )
        subject = account_subject(self._secret, settings.issuer, str(claims["sub"]))
        passed = Claims("oidc", subject, band)
        # Relative to /gate/oidc/callback: the page, also under a proxy's path prefix.
        response = _redirect(PAGE_FROM_CALLBACK, HTTPStatus.SEE_OTHER)
        # As every gate pass (gate/entry.py): the page's own requests bring it.
        response.set_cookie(
            COOKIE,
            self._passes.issue(passed, self._wall()),
            max_age=self._passes.ttl_s,
            httponly=True,
            secure=secure,
            samesite="Strict",
            path="/",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/gate/oidc/", httponly=True, samesite="Lax")
        return response

    # -- the provider -----------------------------------------------------------------

    def _redirect_url(self) -> str:
        return self._settings.redirect_url or request.host_url.rstrip("/") + CALLBACK_PATH

    async def _send(
        self,
        method: str,
        url: str,
        *,
        form: str | None = None,
        auth: httpx.Auth | None = None,
    ) -> dict[str, Any]:
        """One request to the provider, within ``PROVIDER_TIMEOUT_S``: its JSON object.

        Raises:
            ProviderError: no answer in time, not 200, too large, or not a JSON object.
        """
        try:
            with trio.fail_after(PROVIDER_TIMEOUT_S):
                async with httpx.AsyncClient(
                    timeout=PROVIDER_TIMEOUT_S,
                    transport=self._transport,
                    follow_redirects=False,
                    trust_env=False,
                ) as client:
                    headers = {"Accept": "application/json"}
                    if form is not None:
                        headers["Content-Type"] = "application/x-www-form-urlencoded"
                    answer = await client.request(
                        method,
                        url,
                        headers=headers,
                        content=None if form is None else form.encode(),
                        auth=auth or httpx.USE_CLIENT_DEFAULT,
                    )
        except (trio.TooSlowError, httpx.HTTPError) as exc:
            raise ProviderError(f"{url}: {exc!r}") from exc
        if answer.status_code != HTTPStatus.OK or len(answer.content) > MAX_PROVIDER_BYTES:
            raise ProviderError(f"{url}: status {answer.status_code}")
        try:
            found = answer.json()
        except ValueError as exc:
            raise ProviderError(f"{url}: not JSON") from exc
        if not isinstance(found, dict):
            raise ProviderError(f"{url}: not a JSON object")
        return found

    async def _get_json(self, url: str) -> dict[str, Any]:
        return await self._send("GET", url)

    async def _discover(self) -> dict[str, Any]:
        now = trio.current_time()
        if self._metadata is not None and now - self._metadata_at < METADATA_TTL_S:
            return self._metadata
        issuer = self._settings.issuer
        found = await self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
        if found.get("issuer") != issuer:
            raise ProviderError("the discovery document names another issuer")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(found.get(key), str):
                raise ProviderError(f"the discovery document has no {key}")
        self._metadata, self._metadata_at = found, now
        return found

    async def _key_set(self, *, refresh: bool) -> KeySet:
        now = trio.current_time()
        if self._keys is not None and not (refresh and now - self._keys_at >= JWKS_REFRESH_S):
            return self._keys
        metadata = await self._discover()
        try:
            keys = KeySet.import_key_set(await self._get_json(metadata["jwks_uri"]))  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise ProviderError("the provider's keys could not be read") from exc
        self._keys, self._keys_at = keys, now
        return keys

    async def _exchange(self, code: str, login: _Login) -> dict[str, Any]:
        """The verified ID token claims for ``code``.

        Raises:
            ProviderError: the exchange failed, or the ID token is not good.
        """
        metadata = await self._discover()
        settings = self._settings
        body = prepare_token_request(  # type: ignore[no-untyped-call]
            "authorization_code",
            code=code,
            redirect_uri=self._redirect_url(),
            code_verifier=login.verifier,
        )
        token = await self._send(
            "POST",
            metadata["token_endpoint"],
            form=body,
            auth=httpx.BasicAuth(settings.client_id, settings.client_secret),
        )
        id_token = token.get("id_token")
        if not isinstance(id_token, str) or len(id_token) > MAX_PROVIDER_BYTES:
            raise ProviderError("no ID token")
        return await self.verify_id_token(id_token, login.nonce)

    async def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The claims of ``id_token`` once its signature and claims check out.

        Raises:
            ProviderError: a bad signature, algorithm, issuer, audience,
                authorized party, expiry, issue time or nonce.
        """
        for refresh in (False, True):
            keys = await self._key_set(refresh=refresh)
            try:
                decoded = jwt.decode(id_token, keys, algorithms=ID_TOKEN_ALGORITHMS)
                break
            except InvalidKeyIdError as exc:
                # A key the set does not hold: the provider may have rotated.
                if refresh:
                    raise ProviderError(f"ID token: {exc!r}") from exc
            except JoseError as exc:
                raise ProviderError(f"ID token: {exc!r}") from exc
            except (ValueError, TypeError) as exc:
                raise ProviderError(f"ID token: {exc!r}") from exc
        claims = dict(decoded.claims)
        settings = self._settings
        registry = jwt.JWTClaimsRegistry(
            now=int(self._wall()),
            leeway=LEEWAY_S,
            iss={"essential": True, "value": settings.issuer},
            aud={"essential": True, "value": settings.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(claims)
        except JoseError as exc:
            raise ProviderError(f"ID token: {exc!r}") from exc
        audience = claims["aud"]
        several = isinstance(audience, list) and len(audience) > 1
        if several and claims.get("azp") != settings.client_id:
            raise ProviderError("ID token: another authorized party")
        if not isinstance(claims["sub"], str) or not 0 < len(claims["sub"]) <= 255:
            raise ProviderError("ID token: a bad subject")
        return claims

    # -- the login cookie -------------------------------------------------------------

    def _sign(self, payload: str) -> str:
        mac = self._keyed.copy()
        mac.update(payload.encode("ascii"))
        return mac.hexdigest()

    def _seal(self, login: _Login) -> str:
        payload = f"{login.state}.{login.nonce}.{login.verifier}.{login.expires_at}"
        return f"{payload}.{self._sign(payload)}"

    def _unseal(self, cookie: str) -> _Login | None:
        """The login of a good cookie, or None: malformed, forged or expired."""
        if not cookie or len(cookie) > 512 or not cookie.isascii():
            return None
        parts = cookie.split(".")
        if len(parts) != 5:
            return None
        state, nonce, verifier, expiry, signature = parts
        if not all(p and _TOKEN_CHARS.issuperset(p) for p in (state, nonce, verifier)):
            return None
        if not expiry.isdigit() or len(expiry) > 12:
            return None
        if not hmac.compare_digest(signature, self._sign(cookie[: -len(signature) - 1])):
            return None
        if self._wall() >= int(expiry):
            return None
        return _Login(state, nonce, verifier, int(expiry))


_AGAIN: Final = "gate.pageAgain"  # the catalogs' keys (pages.py)
_LATER: Final = "gate.pageLater"


def _redirect(location: str, status: HTTPStatus) -> Response:
    return Response("", status=status, headers={"Location": location, "Cache-Control": "no-store"})


def _page(status: HTTPStatus, title_key: str, text_key: str, *, reason: str = "") -> Response:
    """A small page, in the language the browser asks for, for what ended a sign-in."""
    accept = request.headers.get("Accept-Language")
    return gate_page(status, title_key, text_key, reason=reason, accept_language=accept)
