"""The ``/admin`` API (PROTOCOL.md "Admin API"): bans and reports.

Every route needs ``Authorization: Bearer <admin.token>``, compared in
constant time. With no admin token configured the whole API answers 404, as
if it did not exist. A client (address group) that fails to authenticate
``AUTH_FAILURES_ALLOWED`` times within ``AUTH_WINDOW_S`` is answered 429 with
``Retry-After``, whatever it sends, until the window ends (counted per
server process). Banning an address also closes the sockets already open
from it (close code 1008, after an ``error`` with code ``banned``).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import msgspec
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from omiro_trio.backends.base import Ban, ReportRecord
from omiro_trio.context import ServerContext
from omiro_trio.http.answers import HttpError
from omiro_trio.responses import json_error, not_found

log = logging.getLogger(__name__)

MAX_REASON_LENGTH = 500
AUTH_FAILURES_ALLOWED = 10
AUTH_WINDOW_S = 60.0
AUTH_CLIENTS_TRACKED = 10_000  # the failure table's bound; the oldest entries go first
REPORTS_PAGE = 50  # GET /admin/reports without ``limit``
MAX_REPORTS_PAGE = 500


class BanRequest(msgspec.Struct, forbid_unknown_fields=False):
    target: str
    duration_s: int | None = None
    reason: str = ""


_ban_request = msgspec.json.Decoder(BanRequest)


def canonical_target(text: str) -> str | None:
    """An IP address or CIDR network in canonical form (an address stays bare)."""
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
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
    }


def report_json(report: ReportRecord) -> dict[str, Any]:
    return {
        "id": report.id,
        "reported_ip": report.reported_ip,
        "reported": report.reported,
        "reporter": report.reporter,
        "reason": report.reason,
        "at": int(report.at),
        "transcript": list(report.transcript),
    }


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


def register_admin(app: QuartTrio, ctx: ServerContext, client: Callable[[], str]) -> None:
    """Add the ``/admin`` routes to ``app``; ``client()`` names the request's client."""
    failures = AuthFailures()

    def refused() -> Response | None:
        token = ctx.config.admin.token
        if not token:
            return not_found()
        who = client()
        retry = failures.retry_after(who)
        if retry is not None:
            response = json_error(
                HTTPStatus.TOO_MANY_REQUESTS,
                HttpError.RATE_LIMITED,
                "too many failed authentications",
                retry_after=retry,
            )
            response.headers["Retry-After"] = str(retry)
            return response
        sent = request.headers.get("Authorization", "")
        scheme, _, credential = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), token.encode()
        ):
            failures.fail(who)
            response = json_error(
                HTTPStatus.UNAUTHORIZED,
                HttpError.UNAUTHORIZED,
                "a valid admin bearer token is required",
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="omiro-admin"'
            return response
        return None

    @app.get("/admin/bans")
    async def list_bans() -> Response:
        if (denied := refused()) is not None:
            return denied
        return jsonify({"bans": [ban_json(b) for b in await ctx.backend.bans()]})

    @app.post("/admin/bans")
    async def add_ban() -> Response:
        if (denied := refused()) is not None:
            return denied
        try:
            body = _ban_request.decode(await request.get_data(as_text=False))
        except msgspec.DecodeError as exc:
            return json_error(HTTPStatus.BAD_REQUEST, HttpError.BAD_REQUEST, f"invalid ban: {exc}")
        target = canonical_target(body.target)
        if target is None:
            return json_error(
                HTTPStatus.BAD_REQUEST,
                HttpError.BAD_REQUEST,
                "target must be an IP address or a CIDR network",
            )
        if body.duration_s is not None and body.duration_s <= 0:
            return json_error(
                HTTPStatus.BAD_REQUEST,
                HttpError.BAD_REQUEST,
                "duration_s must be a positive number or null",
            )
        if len(body.reason) > MAX_REASON_LENGTH:
            return json_error(
                HTTPStatus.BAD_REQUEST,
                HttpError.BAD_REQUEST,
                f"reason is longer than {MAX_REASON_LENGTH}",
            )
        now = ctx.wall()
        until = None if body.duration_s is None else now + body.duration_s
        ban = Ban(target=target, reason=body.reason.strip(), until=until, created_at=now)
        closed = await ctx.hub.ban(ban)
        log.info("banned %s (%s sockets closed)", target, closed)
        response = jsonify(ban_json(ban))
        response.status_code = 201
        return response

    @app.delete("/admin/bans/<path:target>")
    async def remove_ban(target: str) -> Response:
        if (denied := refused()) is not None:
            return denied
        canonical = canonical_target(unquote(target))
        if canonical is None or not await ctx.backend.remove_ban(canonical):
            return json_error(HTTPStatus.NOT_FOUND, HttpError.NOT_FOUND, "no such ban")
        log.info("lifted the ban of %s", canonical)
        return Response("", status=204)

    @app.get("/admin/reports")
    async def list_reports() -> Response:
        """One page of reports, newest first; ``next_before`` asks for the next page."""
        if (denied := refused()) is not None:
            return denied
        limit = _int_arg("limit", REPORTS_PAGE, 1, MAX_REPORTS_PAGE)
        before = _int_arg("before", None, 1, None)
        if isinstance(limit, Response):
            return limit
        if isinstance(before, Response):
            return before
        assert limit is not None
        page = await ctx.backend.reports(limit, before)
        next_before = page[-1].id if len(page) == limit else None
        return jsonify({"reports": [report_json(r) for r in page], "next_before": next_before})


def _int_arg(name: str, default: int | None, low: int, high: int | None) -> int | Response | None:
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
