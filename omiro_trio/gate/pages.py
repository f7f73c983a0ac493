"""The small pages the server renders itself for the gate (the ``oidc`` sign-in's end),
in the language the browser asks for.

The language is the first of the request's ``Accept-Language`` that the page
has a catalog for (``frontend/locales/<code>.json``: the words are the
page's own, under ``gate.page…`` keys), ``pt-BR`` served ``pt`` as the page
does, else English. The header is read bounded (``MAX_HEADER_CHARS``, at
most ``MAX_TAGS`` tags) by splitting, never by a regular expression. The
catalogs are read once per process.
"""

from __future__ import annotations

import functools
import html
import json
from http import HTTPStatus
from typing import Final

from quart import Response

from omiro_trio.static import frontend_dir

__all__ = ["LANGUAGES", "gate_page", "pick_language"]

LANGUAGES: Final = ("en", "es", "pt", "fr", "de", "ar")  # as frontend/js/boot.js lists them
RIGHT_TO_LEFT: Final = frozenset({"ar"})
MAX_HEADER_CHARS: Final = 512
MAX_TAGS: Final = 16


def pick_language(accept_language: str | None) -> str:
    """The catalog to answer in for an ``Accept-Language`` header (RFC 9110 12.5.4)."""
    if not accept_language:
        return "en"
    best, best_q = "en", 0.0
    for item in accept_language[:MAX_HEADER_CHARS].split(",")[:MAX_TAGS]:
        tag, _, params = item.partition(";")
        code = tag.strip().lower().partition("-")[0]
        if code not in LANGUAGES:
            continue
        q = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip() == "q":
            try:
                q = float(value.strip()[:5])
            except ValueError:
                continue
            if not 0.0 <= q <= 1.0:  # (nan fails both)
                continue
        if q > best_q:  # the first of equals wins
            best, best_q = code, q
    return best


@functools.cache
def _catalog(code: str) -> dict[str, object]:
    try:
        loaded = json.loads((frontend_dir() / "locales" / f"{code}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _message(code: str, key: str) -> str:
    for language in (code, "en"):
        message = _catalog(language).get(key)
        if isinstance(message, str):
            return message
    return key


def gate_page(
    status: HTTPStatus,
    title_key: str,
    text_key: str,
    *,
    reason: str = "",
    accept_language: str | None = None,
) -> Response:
    """A small page saying what ended a sign-in, with a way back to the start page.

    ``title_key`` and ``text_key`` name the catalogs' messages; ``reason`` is
    put on ``main`` as ``data-reason`` (what tests and styles look at).
    """
    code = pick_language(accept_language)
    title, text = _message(code, title_key), _message(code, text_key)
    back = _message(code, "gate.pageBack")
    direction = "rtl" if code in RIGHT_TO_LEFT else "ltr"
    body = (
        f'<!doctype html><html lang="{code}" dir="{direction}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · Omiro</title>"
        '<link rel="stylesheet" href="../../css/app.css"></head>'
        f'<body><main class="gate-page" data-reason="{html.escape(reason)}">'
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p>"
        f'<p><a href="../../">{html.escape(back)}</a></p></main></body></html>'
    )
    response = Response(body, status=status, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Vary"] = "Accept-Language"
    return response
