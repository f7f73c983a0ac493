"""The frontend, served from memory: the page's own files read at start, vendored ones on demand.

The page's own files are small and fixed for the life of the process, so
they are read once, at start, and each compressible one is compressed once,
with gzip and brotli at their best settings (brotli quality 7, not 11,
above 128 KiB); each request then costs a dict lookup. A request gets the
smallest encoding its ``Accept-Encoding`` allows (never one it refuses with
``q=0``, and never a compressed body it did not ask for).

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
``immutable`` cache lifetime instead of ``no-cache``. They are most of the
frontend's bytes (the nudity filter's 6.3 MB) and only pages with the filter
on ask for them, so they cost nothing until asked for (``VendoredFile``):
at start only their paths, sizes and types are known. Each representation
of one (identity, brotli, gzip) is made when a request first chooses it,
in a worker thread (read, hash, compress: never on the trio thread), once
(requests arriving meanwhile wait for that work), and kept; what no request
chose is never made or held. Browsers all ask for brotli, so a server whose
users turn the filter on holds its brotli copies (2.6 MB), not the 12 MB of
every representation.

Invariants: a request path is only ever a key of the tables built at start
from a walk of the frontend folder, so no request can name a file outside
it; a representation, once made, is never made again; a representation's
ETag is the hash of the very file contents its body was made from.
"""

from __future__ import annotations

import ctypes
import functools
import gzip
import hashlib
import html
import importlib.resources
import logging
import mimetypes
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import brotli
import trio

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
# Brotli's best quality (11) costs about a second per few hundred kilobytes
# (the filter's vendored files) for a tenth less; above this size
# BROTLI_LARGE_QUALITY is used, a few hundred times faster.
BROTLI_BEST_MAX_BYTES = 128 * 1024
# On the filter's large files quality 7 is within 0.2 % of quality 9's bytes
# (5 KB of 2.6 MB) in half the time, with half the working memory (a 2.7 MB
# script: about 20 MB instead of 40 MB while it is compressed).
BROTLI_LARGE_QUALITY = 7
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

log = logging.getLogger(__name__)


def _brotli(body: bytes) -> bytes:
    quality = 11 if len(body) <= BROTLI_BEST_MAX_BYTES else BROTLI_LARGE_QUALITY
    packed: bytes = brotli.compress(body, quality=quality)
    return packed


def _gzip(body: bytes) -> bytes:
    return gzip.compress(body, compresslevel=9, mtime=0)


Codecs = Mapping[str, Callable[[bytes], bytes]]
CODECS: Codecs = {"br": _brotli, "gzip": _gzip}
"""Content-Encoding -> the function that makes it (both release the GIL while they work)."""


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


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:32]


def _asset(body: bytes, content_type: str, compressible: bool, codecs: Codecs) -> Asset:
    digest = _digest(body)
    encoded: dict[str, Representation] = {}
    if compressible and len(body) >= MIN_COMPRESS_BYTES:
        for coding in ENCODINGS:
            packed = codecs[coding](body)
            if len(packed) < len(body):
                encoded[coding] = Representation(packed, f'"{digest}-{coding}"')
    return Asset(body, content_type, f'"{digest}"', encoded)


class VendoredFile:
    """A file under ``vendor/``: known by its path at start, its bodies made when first asked for.

    Each representation (``None`` for the identity body, or a content
    coding) is made by the first request that chooses it: the file is read,
    hashed and, for a coding, compressed, all in a worker thread (at most
    one such thread per ``limiter``), and the result is kept for the life
    of the process. Requests that choose it while it is being made wait for
    that work instead of repeating it. A coding that does not make the body
    smaller is remembered as such (``None``) and never tried again.

    If the request that started the work is cancelled (its client went
    away), the thread still runs to its end and the result is kept, since
    ``trio.to_thread.run_sync`` does not abandon its thread. If the work
    fails (the file is gone from the installed package), nothing is kept
    and the next request tries again.

    Args:
        path: the file on disk.
        content_type: its ``Content-Type``.
        size: its size at start, in bytes.
        compressible: whether its type is worth compressing.
        codecs: how each content coding is made.
        limiter: bounds the worker threads making bodies at once.
    """

    def __init__(
        self,
        path: Path,
        content_type: str,
        size: int,
        *,
        compressible: bool,
        codecs: Codecs,
        limiter: trio.CapacityLimiter,
    ) -> None:
        self.path = path
        self.content_type = content_type
        # Whether the answer may depend on Accept-Encoding (as Asset.encoded).
        self.vary = compressible and size >= MIN_COMPRESS_BYTES
        self._codecs = codecs
        self._limiter = limiter
        self._made: dict[str | None, Representation | None] = {}
        self._making: dict[str | None, trio.Event] = {}

    @property
    def made(self) -> Mapping[str | None, Representation | None]:
        """The representations made so far: coding (``None``: identity) -> it, or ``None``
        for a coding that did not pay."""
        return dict(self._made)

    async def select(self, accept_encoding: str | None) -> tuple[str | None, Representation]:
        """The representation to send, as ``Asset.select``, made now if it never was.

        Raises:
            FileNotFoundError: the file is gone from disk (and was not read before).
        """
        if self.vary:
            accepted = accepted_encodings(accept_encoding)
            for coding in ENCODINGS:
                if coding in accepted:
                    chosen = await self._representation(coding)
                    if chosen is not None:
                        return coding, chosen
        identity = await self._representation(None)
        assert identity is not None
        return None, identity

    async def _representation(self, coding: str | None) -> Representation | None:
        while coding not in self._made:
            making = self._making.get(coding)
            if making is not None:
                await making.wait()
                continue  # made, or failed: then this request tries itself
            making = self._making[coding] = trio.Event()
            try:
                self._made[coding] = await trio.to_thread.run_sync(
                    self._make, coding, limiter=self._limiter
                )
            finally:
                del self._making[coding]
                making.set()
        return self._made[coding]

    def _make(self, coding: str | None) -> Representation | None:
        """Read, hash and compress (in a worker thread)."""
        body = self.path.read_bytes()
        digest = _digest(body)
        if coding is None:
            return Representation(body, f'"{digest}"')
        size = len(body)
        packed = self._codecs[coding](body)
        del body  # a coding's body is kept without the file's own bytes
        _release_free_heap()
        if len(packed) >= size:
            return None
        return Representation(packed, f'"{digest}-{coding}"')


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (musl)."""
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
    return trim


def _release_free_heap() -> None:
    """Give the free pages of every malloc arena back to the system (glibc; elsewhere nothing).

    Brotli's working memory for a large file (tens of megabytes) is freed
    when it returns, but glibc keeps much of it in the worker thread's
    arena: without this, a process that once served the filter held 14 MB
    more for 2.6 MB of bodies (BENCHMARKS.md). It takes well under a
    millisecond.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer to a ``GET`` (or ``HEAD``) of a frontend file."""

    status: int  # 200, or 304 Not Modified
    body: bytes
    content_type: str | None  # None for a 304
    headers: dict[str, str]


class Frontend:
    """Every file of the frontend by its URL path (``/`` is ``index.html``).

    ``assets``: the page's own files, read and compressed at start.
    ``vendored``: the files under ``vendor/``, made on demand (``VendoredFile``).
    """

    def __init__(self, assets: dict[str, Asset], vendored: dict[str, VendoredFile]) -> None:
        self.assets = assets
        self.vendored = vendored

    async def answer(
        self, path: str, accept_encoding: str | None, if_none_match: str | None
    ) -> Answer | None:
        """The answer for URL ``path``, or ``None`` if there is no such file (a 404).

        Args:
            path: the request's path, from ``/``.
            accept_encoding: the request's ``Accept-Encoding`` header, if any.
            if_none_match: the request's ``If-None-Match`` header, if any.
        """
        asset = self.assets.get(path)
        if asset is not None:
            coding, chosen = asset.select(accept_encoding)
            content_type, vary = asset.content_type, bool(asset.encoded)
        else:
            vendored = self.vendored.get(path)
            if vendored is None:
                return None
            try:
                coding, chosen = await vendored.select(accept_encoding)
            except FileNotFoundError:
                log.warning("%s is missing from the installed package", vendored.path)
                return None
            content_type, vary = vendored.content_type, vendored.vary
        headers = {"ETag": chosen.etag, "Cache-Control": cache_control(path)}
        if vary:
            headers["Vary"] = "Accept-Encoding"
        if etag_matches(if_none_match, chosen.etag):
            return Answer(304, b"", None, headers)
        if coding is not None:
            headers["Content-Encoding"] = coding
        return Answer(200, chosen.body, content_type, headers)


def load_assets(
    root: Path, page: PageConfig | None = None, *, relayed: bool = False, codecs: Codecs = CODECS
) -> Frontend:
    """Every file under ``root`` by its URL path; those under ``vendor/`` not read yet.

    Args:
        root: the frontend folder.
        page: the ``[page]`` configuration ``index.html`` is rendered with.
        relayed: whether calls are relayed (``render_page``).
        codecs: how each content coding is made.
    """
    page = page or PageConfig()
    assets: dict[str, Asset] = {}
    vendored: dict[str, VendoredFile] = {}
    # One worker thread at a time makes vendored bodies: the event loop keeps a core.
    limiter = trio.CapacityLimiter(1)
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        url = "/" + path.relative_to(root).as_posix()
        content_type = MIME_TYPES.get(path.suffix) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        compressible = path.suffix in COMPRESSIBLE_SUFFIXES
        if url.startswith(VENDOR_PREFIX):
            vendored[url] = VendoredFile(
                path,
                content_type,
                path.stat().st_size,
                compressible=compressible,
                codecs=codecs,
                limiter=limiter,
            )
            continue
        body = path.read_bytes()
        if url == "/index.html":
            body = render_page(body.decode("utf-8"), page, relayed=relayed).encode("utf-8")
        assets[url] = _asset(body, content_type, compressible, codecs)
    assets["/"] = assets["/index.html"]
    if "/console.html" in assets:  # the moderator console (docs/moderation.md)
        assets["/console"] = assets["/console.html"]
    return Frontend(assets, vendored)


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
