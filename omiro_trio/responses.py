"""JSON error answers of the HTTP API: ``{"error": CODE, "message": TEXT, ...}``."""

from __future__ import annotations

from typing import Any

from quart import Response, jsonify

NOT_FOUND_MESSAGE = "The requested URL was not found on the server."


def json_error(status: int, code: str, message: str, **extra: Any) -> Response:
    """An error answer as PROTOCOL.md specifies, with any extra fields it names."""
    response = jsonify({"error": code, "message": message, **extra})
    response.status_code = status
    return response


def not_found() -> Response:
    return json_error(404, "not_found", NOT_FOUND_MESSAGE)
