"""What the gate kinds' entry routes and ``GET /session/new`` share: answers and limits.

* ``refusal``: a gate's ``Refuse`` as the JSON answer docs/protocol.md
  gives (401 for ``required``, 403 for the rest), the same from the
  endpoint and from an entry route.
* ``Tries``: the tries of a phrase or a code per client, counted in the
  backend (service-wide on Redis) before anything is hashed or looked up.
* ``admitted``: the answer of an entry route that let a person in: 204 with
  the gate pass cookie.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

from quart import Response

from omiro_trio.backends.base import Backend
from omiro_trio.gate import Claims, Refuse, RefuseReason
from omiro_trio.gate.passes import COOKIE, GatePasses
from omiro_trio.http.answers import HttpError, JsonAnswer, error
from omiro_trio.responses import json_error, json_response

__all__ = ["TRIES_WINDOW_S", "Tries", "admitted", "bad_body", "refusal", "refused"]

TRIES_WINDOW_S: Final = 60.0


def refusal(refused: Refuse) -> JsonAnswer:
    """``{"error": "gate", "gate": kind, "reason": reason, "message": ...}``: 401 or 403."""
    status = (
        HTTPStatus.UNAUTHORIZED if refused.reason is RefuseReason.REQUIRED else HTTPStatus.FORBIDDEN
    )
    return error(
        status,
        HttpError.GATE,
        refused.message,
        headers=(("Cache-Control", "no-store"),),
        gate=refused.kind,
        reason=refused.reason.value,
    )


class Tries:
    """At most ``per_minute`` tries of a phrase or code per client (in the backend).

    Args:
        backend: counts the tries (service-wide on Redis).
        per_minute: ``[gate] tries_per_minute``.
    """

    __slots__ = ("_backend", "_per_minute")

    def __init__(self, backend: Backend, per_minute: int) -> None:
        self._backend = backend
        self._per_minute = per_minute

    async def refused(self, client: str) -> Response | None:
        """Count one try of ``client``: None if allowed, else the 429 answer.

        Raises:
            BackendUnavailable: the app answers 503.
        """
        retry = await self._backend.hit_rate_limit(
            f"gate:{client}", self._per_minute, TRIES_WINDOW_S
        )
        if retry is None:
            return None
        seconds = max(1, int(retry + 0.999))
        response = json_error(
            HTTPStatus.TOO_MANY_REQUESTS,
            HttpError.RATE_LIMITED,
            "too many tries; wait a minute",
            retry_after=seconds,
        )
        response.headers["Retry-After"] = str(seconds)
        return response


def admitted(passes: GatePasses, claims: Claims, now: float, *, secure: bool) -> Response:
    """204 with the gate pass for ``claims`` (``passes.py`` has the cookie's flags)."""
    response = Response("", status=HTTPStatus.NO_CONTENT)
    response.set_cookie(
        COOKIE,
        passes.issue(claims, now),
        max_age=passes.ttl_s,
        httponly=True,
        secure=secure,
        samesite="Strict",
        path="/",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def refused(refused: Refuse) -> Response:
    """An entry route's refusal (as ``refusal``) as a quart response."""
    return json_response(refusal(refused))


def bad_body(message: str) -> Response:
    return json_error(HTTPStatus.BAD_REQUEST, HttpError.BAD_REQUEST, message)
