"""The frontend, read once from the installed package and served from memory.

The files are small and fixed for the life of the process, so each request
costs a dict lookup instead of a file read in a worker thread. Every
response carries a strong ETag and ``Cache-Control: no-cache``: browsers
revalidate each load and get ``304 Not Modified`` while nothing changed, so
an upgrade is picked up at once.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import mimetypes
from dataclasses import dataclass
from pathlib import Path

MIME_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".svg": "image/svg+xml",
    ".webmanifest": "application/manifest+json",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # quoted, as sent in the ETag header


def frontend_dir() -> Path:
    """The frontend folder of the installed package."""
    path = Path(str(importlib.resources.files("omiro_trio") / "frontend"))
    if not (path / "index.html").is_file():
        raise RuntimeError(f"the frontend is missing from the installed package ({path})")
    return path


def load_assets(root: Path) -> dict[str, Asset]:
    """Every file under ``root`` by its URL path (``/`` is ``index.html``)."""
    assets: dict[str, Asset] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        body = path.read_bytes()
        content_type = MIME_TYPES.get(path.suffix) or (
            mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        )
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets["/" + path.relative_to(root).as_posix()] = Asset(body, content_type, etag)
    assets["/"] = assets["/index.html"]
    return assets


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (or is ``*``)."""
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags
