"""The admin API of the entry gate: invites and raid mode (docs/protocol.md, "Admin API").

Beside ``admin.py``'s routes, with the same ways in (the bearer token, or a
console session of an admin: these act on the whole service) and the same
errors. Each change is written to the audit log.

* ``POST /admin/invites`` ``{"uses": N, "expires_s": S, "note": ""}`` ->
  201 ``{"code": CODE, "invite": {...}}``: the code is shown this once.
* ``GET /admin/invites`` -> ``{"invites": [...]}``, newest first.
* ``DELETE /admin/invites/<id>`` -> 204, or 404.
* ``GET /admin/raid`` -> ``{"on": bool, "since", "by", "retry_after_s"}``.
* ``PUT /admin/raid`` ``{"on": bool, "retry_after_s": N, "pause": bool}`` -> the same
  (``pause`` false: newcomers are let in with proof of work at the raid difficulty).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Final, TypeVar

import msgspec
from quart import Response, jsonify, request
from quart_trio import QuartTrio

from omiro_trio.admin import Caller, Gate
from omiro_trio.backends.base import MAX_INVITES, AuditEntry, Invite, Raid
from omiro_trio.context import ServerContext
from omiro_trio.gate.invite import new_invite
from omiro_trio.gate.raid import MAX_RETRY_AFTER_S
from omiro_trio.http.answers import HttpError
from omiro_trio.responses import json_error

__all__ = ["MAX_INVITE_S", "MAX_INVITE_USES", "register_gate_admin"]

DAY_S: Final = 86_400
MAX_INVITE_USES: Final = 1_000_000
MAX_INVITE_S: Final = 365 * DAY_S
DEFAULT_INVITE_S: Final = 7 * DAY_S
MAX_NOTE_CHARS: Final = 200


class InviteRequest(msgspec.Struct, forbid_unknown_fields=True):
    uses: int = 1
    expires_s: int = DEFAULT_INVITE_S
    note: str = ""

    def problem(self) -> str | None:
        """What is wrong with the request (the 400's message), or None."""
        if not 1 <= self.uses <= MAX_INVITE_USES:
            return f"uses must be 1 to {MAX_INVITE_USES}"
        if not 60 <= self.expires_s <= MAX_INVITE_S:
            return f"expires_s must be 60 to {MAX_INVITE_S}"
        if len(self.note) > MAX_NOTE_CHARS:
            return f"note is longer than {MAX_NOTE_CHARS}"
        return None


class RaidRequest(msgspec.Struct, forbid_unknown_fields=True):
    on: bool
    retry_after_s: int = 300
    pause: bool = True  # false: let newcomers in with proof of work at the raid difficulty

    def problem(self) -> str | None:
        """What is wrong with the request (the 400's message), or None."""
        if not 1 <= self.retry_after_s <= MAX_RETRY_AFTER_S:
            return f"retry_after_s must be 1 to {MAX_RETRY_AFTER_S}"
        return None


_Body = TypeVar("_Body", InviteRequest, RaidRequest)


def invite_json(invite: Invite) -> dict[str, Any]:
    return {
        "id": invite.id,
        "uses": invite.uses,
        "left": invite.left,
        "expires_at": int(invite.expires_at),
        "created_at": int(invite.created_at),
        "by": invite.by,
        "note": invite.note,
    }


def raid_json(raid: Raid | None) -> dict[str, Any]:
    if raid is None:
        return {"on": False}
    since, by = int(raid.since), raid.by
    return {
        "on": True,
        "since": since,
        "by": by,
        "retry_after_s": raid.retry_after_s,
        "pause": raid.pause,
    }


def _bad(message: str) -> Response:
    return json_error(HTTPStatus.BAD_REQUEST, HttpError.BAD_REQUEST, message)


def register_gate_admin(app: QuartTrio, ctx: ServerContext, gate: Gate) -> None:
    """Add ``/admin/invites`` and ``/admin/raid`` to ``app``."""
    backend = ctx.backend

    async def audit(actor: str, action: str, target: str, note: str = "") -> None:
        await backend.append_audit(AuditEntry(ctx.wall(), actor, action, target, 0, note))

    async def admin_body(what: str, shape: type[_Body]) -> tuple[Caller, _Body] | Response:
        """An admin's request and its good body, or the answer that refuses it."""
        caller = await gate.caller(role="admin")
        if isinstance(caller, Response):
            return caller
        try:
            body = msgspec.json.decode(await request.get_data(as_text=False), type=shape)
        except msgspec.DecodeError as exc:
            return _bad(f"invalid {what}: {exc}")
        if (problem := body.problem()) is not None:
            return _bad(problem)
        return caller, body

    @app.post("/admin/invites")
    async def create_invite() -> Response:
        asked = await admin_body("invite", InviteRequest)
        if isinstance(asked, Response):
            return asked
        caller, body = asked
        now = ctx.wall()
        code, invite = new_invite(
            uses=body.uses,
            expires_at=now + body.expires_s,
            now=now,
            by=caller.actor.name,
            note=body.note,
        )
        if not await backend.add_invite(invite):
            return json_error(
                HTTPStatus.CONFLICT,
                HttpError.CONFLICT,
                f"{MAX_INVITES} invites are open already; revoke some first",
            )
        await audit(caller.actor.name, "add_invite", invite.id, f"uses={body.uses}")
        response = jsonify({"code": code, "invite": invite_json(invite)})
        response.status_code = HTTPStatus.CREATED
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/admin/invites")
    async def list_invites() -> Response:
        caller = await gate.caller(role="admin")
        if isinstance(caller, Response):
            return caller
        return jsonify({"invites": [invite_json(i) for i in await backend.invites()]})

    @app.delete("/admin/invites/<invite_id>")
    async def revoke_invite(invite_id: str) -> Response:
        caller = await gate.caller(role="admin")
        if isinstance(caller, Response):
            return caller
        if not await backend.revoke_invite(invite_id[:64]):
            return json_error(HTTPStatus.NOT_FOUND, HttpError.NOT_FOUND, "no such invite")
        await audit(caller.actor.name, "revoke_invite", invite_id[:64])
        return Response("", status=HTTPStatus.NO_CONTENT)

    @app.get("/admin/raid")
    async def raid_state() -> Response:
        caller = await gate.caller(role="admin")
        if isinstance(caller, Response):
            return caller
        return jsonify(raid_json(await backend.raid()))

    @app.put("/admin/raid")
    async def set_raid() -> Response:
        asked = await admin_body("raid switch", RaidRequest)
        if isinstance(asked, Response):
            return asked
        caller, body = asked
        raid = None
        if body.on:
            raid = Raid(ctx.wall(), caller.actor.name, body.retry_after_s, body.pause)
        if ctx.raid is not None:
            await ctx.raid.set(raid)
        else:
            await backend.set_raid(raid)
        await audit(caller.actor.name, "raid_on" if body.on else "raid_off", "")
        return jsonify(raid_json(raid))
