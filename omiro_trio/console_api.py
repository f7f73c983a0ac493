"""The ``/admin`` routes of the moderator console: signing in, the queue, actions,
the live view, accounts and the audit log (PROTOCOL.md "Admin API").

Who may call them is ``admin.Gate``'s to say; what each action may do is
``moderation.ModerationDesk``'s (the same desk the bans routes and the CLI
use). The console page itself is static (``frontend/console.html``).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Literal

import msgspec
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from omiro_trio import accounts
from omiro_trio.admin import (
    COOKIE,
    Gate,
    ban_json,
    int_arg,
    refusal,
    report_json,
    status_json,
)
from omiro_trio.backends.base import ConsoleSession, Moderator, Role
from omiro_trio.context import ServerContext
from omiro_trio.http.answers import HttpError
from omiro_trio.moderation import NoSuchReport, audit_csv, audit_jsonl
from omiro_trio.responses import json_error
from omiro_trio.triage import Refused, category

AUDIT_PAGE = 100
MAX_AUDIT_PAGE = 1000
MAX_PASSWORD_LENGTH = 200
COOKIE_PATH = "/admin"


class SignIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    password: str


class BanFromReport(msgspec.Struct, forbid_unknown_fields=True):
    duration_s: int | None  # required: null is a permanent ban (admins only)
    note: str = ""
    target: Literal["address", "account"] = "address"  # what of the reported to ban


class Note(msgspec.Struct, forbid_unknown_fields=True):
    note: str = ""


class NewModerator(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    role: Role = "moderator"


def _decode(kind: type[Any]) -> Any:
    """The request's JSON body as ``kind``, or a 400 answer."""

    async def read() -> Any:
        body = await request.get_data(as_text=False)
        try:
            return msgspec.json.decode(body or b"{}", type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return json_error(HTTPStatus.BAD_REQUEST, HttpError.BAD_REQUEST, f"invalid body: {exc}")

    return read()


def moderator_json(moderator: Moderator) -> dict[str, Any]:
    return {"name": moderator.name, "role": moderator.role, "created_at": int(moderator.created_at)}


def register_console_api(app: QuartTrio, ctx: ServerContext, gate: Gate) -> None:
    """Add the console's ``/admin`` routes to ``app``."""
    desk = ctx.moderation
    backend = ctx.backend
    idle_s = ctx.config.moderation.session_idle_s

    # -- signing in --------------------------------------------------------

    @app.post("/admin/session")
    async def sign_in() -> Response:
        """Check a name and password; on success set the session cookie."""
        if (refused := gate.throttled()) is not None:
            return refused
        if request.mimetype != "application/json":
            return json_error(
                HTTPStatus.BAD_REQUEST, HttpError.BAD_REQUEST, "send the sign-in as JSON"
            )
        body = await _decode(SignIn)
        if isinstance(body, Response):
            return body
        # One sign-in per client is checked at a time, so a client cannot start many
        # slow password checks at once before its failures count.
        who = gate.client()
        if who in gate.signing_in:
            busy = json_error(
                HTTPStatus.TOO_MANY_REQUESTS,
                HttpError.RATE_LIMITED,
                "a sign-in from you is already being checked",
                retry_after=1,
            )
            busy.headers["Retry-After"] = "1"
            return busy
        gate.signing_in.add(who)
        try:
            account = await backend.moderator(body.name) if len(body.name) <= 32 else None
            password = body.password[:MAX_PASSWORD_LENGTH]
            hashed = account.password_hash if account is not None else None
            right = await accounts.check_password(hashed, password)
        finally:
            gate.signing_in.discard(who)
        if account is None or not right:
            gate.failures.fail(who)
            return json_error(
                HTTPStatus.UNAUTHORIZED, HttpError.UNAUTHORIZED, "wrong name or password"
            )
        cookie, csrf = accounts.new_token(), accounts.new_token()
        session = ConsoleSession(account.name, csrf, ctx.wall())
        await backend.open_console_session(accounts.session_key(cookie), session, idle_s)
        response = jsonify({"name": account.name, "role": account.role, "csrf": csrf})
        response.set_cookie(
            COOKIE,
            cookie,
            httponly=True,
            secure=gate.secure(),
            samesite="Strict",
            path=COOKIE_PATH,
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/admin/session")
    async def whoami() -> Response:
        """Who is signed in, with the CSRF token for the requests that change things."""
        if (refused := gate.throttled()) is not None:
            return refused
        caller = await gate.session()
        if caller is None:
            return json_error(HTTPStatus.UNAUTHORIZED, HttpError.UNAUTHORIZED, "not signed in")
        response = jsonify(
            {
                "name": caller.actor.name,
                "role": caller.actor.role,
                "csrf": caller.csrf,
                "idle_s": idle_s,
                "moderator_max_ban_s": desk.policy.moderator_max_ban_s,
            }
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.delete("/admin/session")
    async def sign_out() -> Response:
        caller = await gate.caller()
        if isinstance(caller, Response):
            return caller
        if caller.session_key is not None:
            await backend.close_console_session(caller.session_key)
        response = Response("", status=204)
        response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="Strict")
        return response

    # -- the queue and a report's evidence -----------------------------------

    @app.get("/admin/queue")
    async def queue() -> Response:
        """The open reports, most urgent first."""
        caller = await gate.caller()
        if isinstance(caller, Response):
            return caller
        entries = await desk.queue()
        return jsonify(
            {
                "reports": [
                    {
                        **report_json(e.report, e.status),
                        "category": category(e.report.reason).label,
                        "reporters": e.reporters,
                    }
                    for e in entries
                ]
            }
        )

    @app.get("/admin/reports/<int:report_id>")
    async def evidence(report_id: int) -> Response:
        caller = await gate.caller()
        if isinstance(caller, Response):
            return caller
        try:
            found = await desk.evidence(report_id)
        except NoSuchReport as exc:
            return refusal(exc)
        return jsonify(
            {
                **report_json(found.report, found.status),
                "category": category(found.report.reason).label,
                "earlier_reports": [report_json(r) for r in found.earlier_reports],
                "bans": [ban_json(b) for b in found.bans],
                "ban_now": None if found.ban_now is None else ban_json(found.ban_now),
                "account_bans": [ban_json(b) for b in found.account_bans],
                "account_ban_now": None
                if found.account_ban_now is None
                else ban_json(found.account_ban_now),
            }
        )

    async def act(
        report_id: int, action: Literal["claim", "release", "dismiss", "lift"]
    ) -> Response:
        caller = await gate.caller()
        if isinstance(caller, Response):
            return caller
        body = await _decode(Note)
        if isinstance(body, Response):
            return body
        try:
            if action == "claim":
                status = await desk.claim(caller.actor, report_id)
            elif action == "release":
                status = await desk.release(caller.actor, report_id)
            elif action == "dismiss":
                status = await desk.dismiss(caller.actor, report_id, body.note)
            else:
                status = await desk.lift_from_report(caller.actor, report_id, body.note)
        except (Refused, NoSuchReport, ValueError) as exc:
            return refusal(exc)
        return jsonify({"id": report_id, "status": status_json(status)})

    @app.post("/admin/reports/<int:report_id>/claim")
    async def claim(report_id: int) -> Response:
        return await act(report_id, "claim")

    @app.post("/admin/reports/<int:report_id>/release")
    async def release(report_id: int) -> Response:
        return await act(report_id, "release")

    @app.post("/admin/reports/<int:report_id>/dismiss")
    async def dismiss(report_id: int) -> Response:
        return await act(report_id, "dismiss")

    @app.post("/admin/reports/<int:report_id>/lift")
    async def lift(report_id: int) -> Response:
        return await act(report_id, "lift")

    @app.post("/admin/reports/<int:report_id>/ban")
    async def ban(report_id: int) -> Response:
        caller = await gate.caller()
        if isinstance(caller, Response):
            return caller
        body = await _decode(BanFromReport)
        if isinstance(body, Response):
            return body
        try:
            placed, status = await desk.ban_from_report(
                caller.actor,
                report_id,
                body.duration_s,
                body.note,
                account=body.target == "account",
            )
        except (Refused, NoSuchReport, ValueError) as exc:
            return refusal(exc)
        return jsonify({"id": report_id, "status": status_json(status), "ban": ban_json(placed)})

    # -- the live view -----------------------------------------------------

    @app.get("/admin/live")
    async def live() -> Response:
        caller = await gate.caller()
        if isinstance(caller, Response):
            return caller
        now = await desk.live()
        response = jsonify(
            {
                "online": now.online,
                "waiting": now.waiting,
                "reports_last_hour": now.reports_last_hour,
                "open_reports": now.open_reports,
                "active_bans": now.active_bans,
                "matches_per_minute": now.matches_per_minute,
                "calls": now.calls,
                "call_success": now.call_success,
            }
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    # -- accounts and the audit log (admins) --------------------------------

    @app.get("/admin/moderators")
    async def list_moderators() -> Response:
        caller = await gate.caller(role="admin")
        if isinstance(caller, Response):
            return caller
        return jsonify(
            {"moderators": [moderator_json(m) for m in await desk.moderators(caller.actor)]}
        )

    @app.post("/admin/moderators")
    async def add_moderator() -> Response:
        """Make an account; the answer carries its password, the one time it is shown."""
        caller = await gate.caller(role="admin")
        if isinstance(caller, Response):
            return caller
        body = await _decode(NewModerator)
        if isinstance(body, Response):
            return body
        try:
            password = await desk.add_moderator(caller.actor, body.name, body.role)
        except (Refused, ValueError) as exc:
            return refusal(exc)
        response = jsonify({"name": body.name, "role": body.role, "password": password})
        response.status_code = 201
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.delete("/admin/moderators/<name>")
    async def remove_moderator(name: str) -> Response:
        caller = await gate.caller(role="admin")
        if isinstance(caller, Response):
            return caller
        if not await desk.remove_moderator(caller.actor, name):
            return json_error(HTTPStatus.NOT_FOUND, HttpError.NOT_FOUND, "no such account")
        return Response("", status=204)

    @app.get("/admin/audit")
    async def audit() -> Response:
        """A page of the audit log, newest first, as JSON, JSON Lines or CSV (``format``)."""
        caller = await gate.caller(role="admin")
        if isinstance(caller, Response):
            return caller
        limit = int_arg("limit", AUDIT_PAGE, 1, MAX_AUDIT_PAGE)
        before = int_arg("before", None, 1, None)
        if isinstance(limit, Response):
            return limit
        if isinstance(before, Response):
            return before
        assert limit is not None
        kind = request.args.get("format", "json")
        if kind not in ("json", "jsonl", "csv"):
            return json_error(
                HTTPStatus.BAD_REQUEST, HttpError.BAD_REQUEST, "format is json, jsonl or csv"
            )
        page = await desk.audit(caller.actor, limit, before)
        next_before = page[-1].id if len(page) == limit else None
        if kind == "jsonl":
            response = Response(audit_jsonl(page), content_type="application/jsonl")
        elif kind == "csv":
            response = Response(audit_csv(page), content_type="text/csv; charset=utf-8")
        else:
            entries = msgspec.to_builtins(page)
            return jsonify({"entries": entries, "next_before": next_before})
        if next_before is not None:
            response.headers["X-Next-Before"] = str(next_before)
        response.headers["Content-Disposition"] = f'attachment; filename="omiro-audit.{kind}"'
        return response
