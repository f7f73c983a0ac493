"""The HTTP layer's JSON answers as quart responses, for the ASGI app's routes.

The body is the ``JsonAnswer``'s own (``http/answers.py``): an error reads the
same whether the app or the HTTP layer sent it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from quart import Response

from omiro_trio.http.answers import HttpError, JsonAnswer, error

NOT_FOUND_MESSAGE = "The requested URL was not found on the server."


def json_response(answer: JsonAnswer) -> Response:
    """``answer`` as a quart response (the app adds the security headers)."""
    return Response(
        answer.encoded_body(),
        status=answer.status.value,
        content_type="application/json",
        headers=dict(answer.headers),
    )


def json_error(status: HTTPStatus, code: HttpError, message: str, **fields: Any) -> Response:
    """An error answer as PROTOCOL.md specifies, with any extra fields it names."""
    return json_response(error(status, code, message, **fields))


def not_found() -> Response:
    return json_error(HTTPStatus.NOT_FOUND, HttpError.NOT_FOUND, NOT_FOUND_MESSAGE)
