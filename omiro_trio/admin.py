"""The ``/admin`` API (PROTOCOL.md "Admin API"): who may call it, bans and reports.

Two ways in, for every route:

* ``Authorization: Bearer <admin.token>``, compared in constant time: scripts
  and the CLI; it acts as an admin named ``admin``.
* A console session: the ``omiro_console`` cookie set by ``POST
  /admin/session`` (``HttpOnly``, ``SameSite=Strict``, ``Path=/admin``,
  ``Secure`` when the request came over HTTPS), expiring once idle for
  ``moderation.session_idle_s``. Every request that changes something
  (any method but ``GET`` and ``HEAD``) must also carry the session's CSRF token in
  ``X-CSRF-Token``, and every request body must be JSON.

With no admin token configured the whole API answers 404, as if it did not
exist. A client (address group) that fails to authenticate (a wrong token,
a wrong sign-in) ``AUTH_FAILURES_ALLOWED`` times within ``AUTH_WINDOW_S`` is
answered 429 with ``Retry-After``, whatever it sends, until the window ends
(counted per server process). Banning an address also closes the sockets
already open from it (close code 1008, after an ``error`` with code
``banned``), on every server.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import unquote

import msgspec
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from omiro_trio import accounts
from omiro_trio.addresses import banned_account, in_networks
from omiro_trio.backends.base import Ban, ReportRecord, ReportStatus
from omiro_trio.context import ServerContext
from omiro_trio.http.answers import HttpError
from omiro_trio.moderation import NoSuchReport
from omiro_trio.responses import json_error, not_found
from omiro_trio.triage import TOKEN_ACTOR, Actor, Refused

MAX_REASON_LENGTH = 500
AUTH_FAILURES_ALLOWED = 10
AUTH_WINDOW_S = 60.0
AUTH_CLIENTS_TRACKED = 10_000  # the failure table's bound; the oldest entries go first
REPORTS_PAGE = 50  # GET /admin/reports without ``limit``
MAX_REPORTS_PAGE = 500
COOKIE = "omiro_console"
CSRF_HEADER = "X-CSRF-Token"
MAX_COOKIE_LENGTH = 100  # longer is no cookie of ours: not looked up


class BanRequest(msgspec.Struct, forbid_unknown_fields=False):
    target: str
    duration_s: int | None = None
    reason: str = ""


_ban_request = msgspec.json.Decoder(BanRequest)


def canonical_target(text: str) -> str | None:
    """An IP address or CIDR network in canonical form (an address stays bare), or an
    account (``account:KEY``) as written; None for anything else."""
    text = text.strip()
    try:
        if banned_account(text) is not None:
            return text
    except ValueError:
        return None
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)


def ban_json(ban: Ban) -> dict[str, Any]:
    return {
        "target": ban.target,
        "reason": ban.reason,
        "until": None if ban.until is None else int(ban.until),
        "created_at": int(ban.created_at),
        "by": ban.by,
    }


def status_json(status: ReportStatus) -> dict[str, Any]:
    return {
        "state": status.state,
        "by": status.by,
        "at": int(status.at) if status.at else None,
        "action": status.action,
        "note": status.note,
        "autoban": status.autoban,
    }


def report_json(report: ReportRecord, status: ReportStatus | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "id": report.id,
        "reported_ip": report.reported_ip,
        "reported_account": report.reported_account,
        "reported": report.reported,
        "reporter": report.reporter,
        "reporter_ip": report.reporter_ip,
        "reason": report.reason,
        "at": int(report.at),
        "match_s": None if report.match_s is None else round(report.match_s, 1),
        "transcript": list(report.transcript),
    }
    if status is not None:
        answer["status"] = status_json(status)
    return answer


class AuthFailures:
    """Failed authentications per client in fixed windows, in a bounded table."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, tuple[float, int]] = {}  # client -> (window start, count)

    def retry_after(self, client: str) -> int | None:
        """Seconds until ``client`` may try again, or None if it may now."""
        start, count = self._failures.get(client, (0.0, 0))
        left = start + AUTH_WINDOW_S - self._clock()
        if count >= AUTH_FAILURES_ALLOWED and left > 0:
            return max(1, int(left + 0.999))
        return None

    def fail(self, client: str) -> None:
        now = self._clock()
        start, count = self._failures.pop(client, (now, 0))
        if now - start >= AUTH_WINDOW_S:
            start, count = now, 0
        self._failures[client] = (start, count + 1)  # re-inserted: newest last
        while len(self._failures) > AUTH_CLIENTS_TRACKED:
            del self._failures[next(iter(self._failures))]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the actor, and its console session's key and CSRF token
    (None for the bearer token)."""

    actor: Actor
    session_key: str | None = None
    csrf: str | None = None


class Gate:
    """Decides who a request to ``/admin`` comes from, or answers it with a refusal."""

    def __init__(self, ctx: ServerContext, client: Callable[[], str]) -> None:
        self.ctx = ctx
        self.client = client
        self.failures = AuthFailures()
        self.signing_in: set[str] = set()  # clients whose sign-in is being checked now

    def throttled(self) -> Response | None:
        """404 without an admin token; 429 for a client locked out; else None."""
        if not self.ctx.config.admin.token:
            return not_found()
        retry = self.failures.retry_after(self.client())
        if retry is None:
            return None
        response = json_error(
            HTTPStatus.TOO_MANY_REQUESTS,
            HttpError.RATE_LIMITED,
            "too many failed authentications",
            retry_after=retry,
        )
        response.headers["Retry-After"] = str(retry)
        return response

    async def caller(
        self, *, role: Literal["moderator", "admin"] = "moderator"
    ) -> Caller | Response:
        """The caller of this request, or the answer that refuses it."""
        if (refused := self.throttled()) is not None:
            return refused
        sent = request.headers.get("Authorization")
        if sent is not None:
            scheme, _, credential = sent.partition(" ")
            token = self.ctx.config.admin.token
            if scheme.lower() == "bearer" and hmac.compare_digest(
                credential.strip().encode(), token.encode()
            ):
                return Caller(TOKEN_ACTOR)
            self.failures.fail(self.client())
            return _unauthorized("a valid admin bearer token is required")
        caller = await self.session()
        if caller is None:
            return _unauthorized("sign in, or send the admin bearer token")
        if request.method not in ("GET", "HEAD"):
            sent_csrf = request.headers.get(CSRF_HEADER, "")
            if caller.csrf is None or not hmac.compare_digest(
                sent_csrf.encode("utf-8", "replace"), caller.csrf.encode()
            ):
                return json_error(
                    HTTPStatus.FORBIDDEN,
                    HttpError.FORBIDDEN,
                    f"a request that changes something needs the session's {CSRF_HEADER}",
                )
        if role == "admin" and not caller.actor.is_admin:
            return json_error(
                HTTPStatus.FORBIDDEN, HttpError.FORBIDDEN, "only an admin can do this"
            )
        return caller

    def cookie(self) -> str | None:
        value = request.cookies.get(COOKIE)
        if not value or len(value) > MAX_COOKIE_LENGTH:
            return None
        return value

    async def session(self) -> Caller | None:
        """The signed-in moderator, if the cookie names a live session of an account."""
        cookie = self.cookie()
        if cookie is None:
            return None
        key = accounts.session_key(cookie)
        idle_s = self.ctx.config.moderation.session_idle_s
        session = await self.ctx.backend.console_session(key, idle_s)
        if session is None:
            return None
        account = await self.ctx.backend.moderator(session.name)
        if account is None:  # removed since: its sessions end with it
            await self.ctx.backend.close_console_session(key)
            return None
        return Caller(Actor(account.name, account.role), key, session.csrf)

    def secure(self) -> bool:
        """Whether the request came over HTTPS (itself, or as a trusted proxy says)."""
        if request.scheme == "https":
            return True
        peer = request.remote_addr or ""
        forwarded = request.headers.get("X-Forwarded-Proto", "").strip().lower()
        return forwarded == "https" and in_networks(peer, self.ctx.trusted_proxies)


def _unauthorized(message: str) -> Response:
    response = json_error(HTTPStatus.UNAUTHORIZED, HttpError.UNAUTHORIZED, message)
    response.headers["WWW-Authenticate"] = 'Bearer realm="omiro-admin"'
    return response


def refusal(exc: Refused | NoSuchReport | ValueError) -> Response:
    """The answer for what the desk refused."""
    if isinstance(exc, NoSuchReport):
        return json_error(HTTPStatus.NOT_FOUND, HttpError.NOT_FOUND, "no such report")
    if isinstance(exc, Refused):
        if exc.conflict:
            return json_error(HTTPStatus.CONFLICT, HttpError.CONFLICT, str(exc))
        return json_error(HTTPStatus.FORBIDDEN, HttpError.FORBIDDEN, str(exc))
    return json_error(HTTPStatus.BAD_REQUEST, HttpError.BAD_REQUEST, str(exc))


Handler = Callable[..., Awaitable[Response]]


def register_admin(app: QuartTrio, ctx: ServerContext, gate: Gate) -> None:
    """Add the ``/admin`` bans and reports routes to ``app``."""
    desk = ctx.moderation

    @app.get("/admin/bans")
    async def list_bans() -> Response:
        """Bans in force, newest first; ``q`` keeps those whose target, reason or setter has it."""
        caller = await gate.caller()
        if isinstance(caller, Response):
            return caller
        search = request.args.get("q", "")[:MAX_REASON_LENGTH]
        return jsonify({"bans": [ban_json(b) for b in await desk.bans(search)]})

    @app.post("/admin/bans")
    async def add_ban() -> Response:
        caller = await gate.caller()
        if isinstance(caller, Response):
            return caller
        try:
            body = _ban_request.decode(await request.get_data(as_text=False))
        except msgspec.DecodeError as exc:
            return json_error(HTTPStatus.BAD_REQUEST, HttpError.BAD_REQUEST, f"invalid ban: {exc}")
        target = canonical_target(body.target)
        if target is None:
            return json_error(
                HTTPStatus.BAD_REQUEST,
                HttpError.BAD_REQUEST,
                "target must be an IP address, a CIDR network or account:KEY",
            )
        if len(body.reason) > MAX_REASON_LENGTH:
            return json_error(
                HTTPStatus.BAD_REQUEST,
                HttpError.BAD_REQUEST,
                f"reason is longer than {MAX_REASON_LENGTH}",
            )
        try:
            ban = await desk.ban(caller.actor, target, body.duration_s, body.reason)
        except (Refused, ValueError) as exc:
            return refusal(exc)
        response = jsonify(ban_json(ban))
        response.status_code = 201
        return response

    @app.delete("/admin/bans/<path:target>")
    async def remove_ban(target: str) -> Response:
        caller = await gate.caller()
        if isinstance(caller, Response):
            return caller
        canonical = canonical_target(unquote(target))
        try:
            lifted = canonical is not None and await desk.lift(caller.actor, canonical)
        except (Refused, ValueError) as exc:
            return refusal(exc)
        if not lifted:
            return json_error(HTTPStatus.NOT_FOUND, HttpError.NOT_FOUND, "no such ban")
        return Response("", status=204)

    @app.get("/admin/reports")
    async def list_reports() -> Response:
        """One page of reports, newest first; ``next_before`` asks for the next page."""
        caller = await gate.caller()
        if isinstance(caller, Response):
            return caller
        limit = int_arg("limit", REPORTS_PAGE, 1, MAX_REPORTS_PAGE)
        before = int_arg("before", None, 1, None)
        if isinstance(limit, Response):
            return limit
        if isinstance(before, Response):
            return before
        assert limit is not None
        page = await ctx.backend.reports(limit, before)
        statuses = await ctx.backend.report_statuses([r.id for r in page])
        next_before = page[-1].id if len(page) == limit else None
        return jsonify(
            {
                "reports": [report_json(r, s) for r, s in zip(page, statuses, strict=True)],
                "next_before": next_before,
            }
        )


def int_arg(name: str, default: int | None, low: int, high: int | None) -> int | Response | None:
    """A query parameter that must be an integer in ``[low, high]``, or a 400 answer."""
    text = request.args.get(name)
    if text is None:
        return default
    bound = f" and at most {high}" if high is not None else ""
    problem = json_error(
        HTTPStatus.BAD_REQUEST,
        HttpError.BAD_REQUEST,
        f"{name} must be an integer at least {low}{bound}",
    )
    if not text.isdigit() or len(text) > 18:
        return problem
    value = int(text)
    if value < low or (high is not None and value > high):
        return problem
    return value
