"""The frontend, read once from the installed package and served from memory.

The files are small and fixed for the life of the process, so each request
costs a dict lookup instead of a file read in a worker thread, and each
compressible file is compressed once, at start, with gzip and brotli at
their best settings (brotli quality 9, not 11, above 128 KiB). A
request gets the smallest encoding its ``Accept-Encoding`` allows (never
one it refuses with ``q=0``, and never a compressed body it did not ask
for).

Every representation has its own strong ETag (the identity body's hash, with
``-gzip`` or ``-br`` appended for the encodings), and the answer carries
``Vary: Accept-Encoding`` and ``Cache-Control: no-cache``: browsers revalidate
each load and get ``304 Not Modified`` while nothing changed, so an upgrade
is picked up at once.

``index.html`` is rendered once from the ``[page]`` configuration: the
operator's first-visit notice (plain text, HTML-escaped) and links to terms
and privacy pages replace the marked parts of the built-in page, and the
operator's safety defaults (blur, nudity filter) and whether calls are
relayed are stamped on ``<body>`` as ``data-`` attributes for the page's
scripts.

Files under ``vendor/`` (third-party libraries and models, their version in
their path) never change under one URL: they are served with a year-long
``immutable`` cache lifetime instead of ``no-cache``.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import importlib.resources
import mimetypes
import re
from dataclasses import dataclass, field
from pathlib import Path

import brotli

from omiro_trio.config import PageConfig

MIME_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".webmanifest": "application/manifest+json",
    ".json": "application/json",
    # Model weights (quantized to bytes): brotli saves about a fifth.
    ".bin": "application/octet-stream",
    ".wasm": "application/wasm",
}
COMPRESSIBLE_SUFFIXES = frozenset(MIME_TYPES)
# Below this a compressed body saves less than its headers cost.
MIN_COMPRESS_BYTES = 256
# Brotli's best quality (11) costs about a second at start per few hundred
# kilobytes (the filter's vendored files) for a tenth less; above this size
# quality 9 is used, a hundred times faster.
BROTLI_BEST_MAX_BYTES = 128 * 1024
# Preferred first when the client accepts several equally.
ENCODINGS = ("br", "gzip")

_NOTICE = re.compile(r"<!--notice-->.*?<!--/notice-->", re.S)
_LINKS = re.compile(r"<!--links-->.*?<!--/links-->", re.S)
_NOTICE_VERSION = 'data-notice-version=""'
# The page's switches as the template holds them, each with its built-in value.
_SWITCHES = {
    "blur_remote": 'data-blur-remote="true"',
    "nudity_filter": 'data-nudity-filter="false"',
    "relayed": 'data-relayed="false"',
}
VENDOR_PREFIX = "/vendor/"


@dataclass(frozen=True, slots=True)
class Representation:
    body: bytes
    etag: str  # quoted, as sent in the ETag header


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # quoted, as sent in the ETag header
    # Content-Encoding -> the compressed body; only encodings that are smaller.
    encoded: dict[str, Representation] = field(default_factory=dict)

    def select(self, accept_encoding: str | None) -> tuple[str | None, Representation]:
        """The representation to send: ``(Content-Encoding or None, body and ETag)``."""
        if self.encoded:
            accepted = accepted_encodings(accept_encoding)
            for coding in ENCODINGS:
                if coding in self.encoded and coding in accepted:
                    return coding, self.encoded[coding]
        return None, Representation(self.body, self.etag)


def accepted_encodings(header: str | None) -> frozenset[str]:
    """The content codings an ``Accept-Encoding`` header allows (q > 0).

    ``*`` stands for every coding not named otherwise; a malformed q-value
    counts as refusal, so garbage never earns a compressed body.
    """
    if not header:
        return frozenset()
    named: dict[str, float] = {}
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        named[coding] = quality
    wildcard = named.get("*", 0.0)
    return frozenset(coding for coding in ENCODINGS if named.get(coding, wildcard) > 0.0)


def frontend_dir() -> Path:
    """The frontend folder of the installed package."""
    path = Path(str(importlib.resources.files("omiro_trio") / "frontend"))
    if not (path / "index.html").is_file():
        raise RuntimeError(f"the frontend is missing from the installed package ({path})")
    return path


def render_page(template: str, page: PageConfig, *, relayed: bool = False) -> str:
    """``index.html`` with the operator's notice, links and switches, and the notice's version.

    The version (a hash of the notice as shown) lets the page show a changed
    notice again to people who dismissed the old one. ``relayed``: calls use
    TURN relays only (``IceConfig.relayed``), so the page can say that
    addresses are hidden.
    """
    values = {"blur_remote": page.blur_remote, "nudity_filter": page.nudity_filter}
    values["relayed"] = relayed
    for name, attribute in _SWITCHES.items():
        if attribute not in template:
            raise ValueError(f"the page template lacks {attribute}")
        value = "true" if values[name] else "false"
        template = template.replace(attribute, f'{attribute.split("=")[0]}="{value}"')
    if page.notice.strip():
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", page.notice.strip()) if p.strip()]
        text = "".join("<p>" + html.escape(p).replace("\n", "<br>") + "</p>" for p in paragraphs)
        template = _NOTICE.sub(lambda _: text, template)
    # The labels are the page's own words (translated in the browser); the
    # notice above, when the operator wrote one, is shown as written.
    links = [
        f'<a href="{html.escape(url, quote=True)}" rel="noopener" data-i18n="{key}">{label}</a>'
        for url, label, key in (
            (page.terms_url, "Terms of use", "welcome.terms"),
            (page.privacy_url, "Privacy", "welcome.privacy"),
        )
        if url
    ]
    template = _LINKS.sub(lambda _: "".join(links), template)
    notice = _NOTICE.search(template)
    shown = (notice.group(0) if notice else template) + "".join(links)
    version = hashlib.sha256(shown.encode()).hexdigest()[:12]
    return template.replace(_NOTICE_VERSION, f'data-notice-version="{version}"')


def _asset(body: bytes, content_type: str, compressible: bool) -> Asset:
    digest = hashlib.sha256(body).hexdigest()[:32]
    encoded: dict[str, Representation] = {}
    if compressible and len(body) >= MIN_COMPRESS_BYTES:
        for coding, packed in (
            ("br", brotli.compress(body, quality=11 if len(body) <= BROTLI_BEST_MAX_BYTES else 9)),
            ("gzip", gzip.compress(body, compresslevel=9, mtime=0)),
        ):
            if len(packed) < len(body):
                encoded[coding] = Representation(packed, f'"{digest}-{coding}"')
    return Asset(body, content_type, f'"{digest}"', encoded)


def load_assets(
    root: Path, page: PageConfig | None = None, *, relayed: bool = False
) -> dict[str, Asset]:
    """Every file under ``root`` by its URL path (``/`` is ``index.html``)."""
    page = page or PageConfig()
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        body = path.read_bytes()
        if path.relative_to(root).as_posix() == "index.html":
            body = render_page(body.decode("utf-8"), page, relayed=relayed).encode("utf-8")
        content_type = MIME_TYPES.get(path.suffix) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        compressible = path.suffix in COMPRESSIBLE_SUFFIXES
        assets["/" + path.relative_to(root).as_posix()] = _asset(body, content_type, compressible)
    assets["/"] = assets["/index.html"]
    return assets


def cache_control(path: str) -> str:
    """``Cache-Control`` for the asset at URL ``path``."""
    if path.startswith(VENDOR_PREFIX):
        return "public, max-age=31536000, immutable"
    return "no-cache"


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (or is ``*``)."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags
