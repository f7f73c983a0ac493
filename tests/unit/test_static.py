"""The frontend's files: the page's own read at start, those under ``vendor/`` on demand.

The content codings are counted through ``load_assets``' ``codecs`` seam:
each wraps the real compressor and records the body it was given and the
thread it ran in, or holds the worker thread until the test releases it
(``trio.from_thread``), so "made once" and "off the trio thread" are
observed, not inferred from timings.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import brotli
import pytest
import trio
import trio.testing

from omiro_trio.static import (
    CODECS,
    Answer,
    Frontend,
    frontend_dir,
    load_assets,
)

IMMUTABLE = "public, max-age=31536000, immutable"
DECODE: dict[str | None, Callable[[bytes], bytes]] = {
    None: lambda body: body,
    "gzip": gzip.decompress,
    "br": brotli.decompress,
}
# The nudity filter's files, as the page asks for them when the filter is on.
FILTER_FILES = [
    "/vendor/nsfwjs-4.4.0/nsfwjs.min.js",
    "/vendor/nsfwjs-4.4.0/mobilenet_v2/model.json",
    "/vendor/nsfwjs-4.4.0/mobilenet_v2/group1-shard1of1.bin",
    "/vendor/tfjs-4.22.0/tf-core.min.js",
    "/vendor/tfjs-4.22.0/tf-backend-wasm.min.js",
    "/vendor/tfjs-4.22.0/tfjs-backend-wasm-simd.wasm",
]


@dataclass
class Counted:
    """The real codecs, each call recorded: (coding, input size, thread id)."""

    calls: list[tuple[str, int, int]] = field(default_factory=list)

    def codecs(self) -> dict[str, Callable[[bytes], bytes]]:
        def counted(coding: str) -> Callable[[bytes], bytes]:
            def compress(body: bytes) -> bytes:
                self.calls.append((coding, len(body), threading.get_ident()))
                return CODECS[coding](body)

            return compress

        return {coding: counted(coding) for coding in CODECS}

    def count(self, coding: str) -> int:
        return sum(1 for called, _, _ in self.calls if called == coding)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A frontend folder: the real page, and a small vendored library."""
    shutil.copy(frontend_dir() / "index.html", tmp_path / "index.html")
    library = tmp_path / "vendor" / "lib-1.0"
    library.mkdir(parents=True)
    source = "".join(f"export function f{i}(x) {{ return x * {i}; }}\n" for i in range(2000))
    (library / "lib.min.js").write_text(source)
    (library / "LICENSE").write_text("MIT License\n" * 20)
    (library / "noise.bin").write_bytes(os.urandom(4096))  # compression does not pay
    return tmp_path


def tag(body: bytes, coding: str | None = None) -> str:
    digest = hashlib.sha256(body).hexdigest()[:32]
    return f'"{digest}-{coding}"' if coding else f'"{digest}"'


async def get(
    frontend: Frontend, path: str, accept: str | None = None, if_none_match: str | None = None
) -> Answer:
    answer = await frontend.answer(path, accept, if_none_match)
    assert answer is not None, path
    return answer


def test_load_assets_reads_no_vendored_file_at_start() -> None:
    counted = Counted()
    frontend = load_assets(frontend_dir(), codecs=counted.codecs())
    assert set(FILTER_FILES) <= set(frontend.vendored)
    assert not [path for path in frontend.assets if path.startswith("/vendor/")]
    assert all(not vendored.made for vendored in frontend.vendored.values())
    on_disk = sum(vendored.path.stat().st_size for vendored in frontend.vendored.values())
    assert on_disk > 6_000_000  # what start-up used to read and compress
    # What start-up compressed and holds: the page's own files (about 350 KB,
    # its six message catalogs and the moderator console included, each
    # compressed twice), nothing more.
    assert sum(size for _, size, _ in counted.calls) < 900_000
    held = {
        id(asset): len(asset.body) + sum(len(r.body) for r in asset.encoded.values())
        for asset in frontend.assets.values()
    }
    assert sum(held.values()) < 650_000


async def test_vendored_file_made_on_first_request_per_encoding_then_reused(site: Path) -> None:
    counted = Counted()
    frontend = load_assets(site, codecs=counted.codecs())
    path = "/vendor/lib-1.0/lib.min.js"
    identity = (site / "vendor/lib-1.0/lib.min.js").read_bytes()
    counted.calls.clear()  # the page's own files, compressed at start
    seen: dict[str | None, Answer] = {}
    for coding, accept in [("br", "gzip, deflate, br, zstd"), ("gzip", "gzip"), (None, None)]:
        before = len(counted.calls)
        first = await get(frontend, path, accept)
        assert first.status == 200
        assert first.content_type == "text/javascript; charset=utf-8"
        assert first.headers.get("Content-Encoding") == coding
        assert first.headers["Vary"] == "Accept-Encoding"
        assert first.headers["Cache-Control"] == IMMUTABLE
        assert first.headers["ETag"] == tag(identity, coding)
        assert DECODE[coding](first.body) == identity
        if coding is not None:
            assert len(first.body) < len(identity)
            assert counted.calls[before:] == [(coding, len(identity), counted.calls[-1][2])]
        seen[coding] = first
    assert counted.count("br") == counted.count("gzip") == 1
    for coding, accept in [("br", "br"), ("gzip", "br;q=0, gzip"), (None, "identity")]:
        again = await get(frontend, path, accept)
        assert again.body is seen[coding].body  # kept, not made again
        assert again.headers == seen[coding].headers
        revalidated = await get(frontend, path, accept, seen[coding].headers["ETag"])
        assert revalidated.status == 304
        assert revalidated.body == b""
        assert revalidated.headers["ETag"] == seen[coding].headers["ETag"]
        assert revalidated.headers["Vary"] == "Accept-Encoding"
    assert counted.count("br") == counted.count("gzip") == 1
    # Another coding's tag does not validate this one.
    stale = await get(frontend, path, "br", seen["gzip"].headers["ETag"])
    assert stale.status == 200


async def test_only_the_chosen_representations_are_kept(site: Path) -> None:
    counted = Counted()
    frontend = load_assets(site, codecs=counted.codecs())
    vendored = frontend.vendored["/vendor/lib-1.0/lib.min.js"]
    counted.calls.clear()  # the page's own files, compressed at start
    await get(frontend, "/vendor/lib-1.0/lib.min.js", "gzip, deflate, br, zstd")
    assert set(vendored.made) == {"br"}  # no identity body held, no gzip made
    assert counted.count("gzip") == 0
    # A file compression does not shrink is sent as it is, and never compressed again.
    noise = (site / "vendor/lib-1.0/noise.bin").read_bytes()
    for _ in range(2):
        answer = await get(frontend, "/vendor/lib-1.0/noise.bin", "gzip, br")
        assert "Content-Encoding" not in answer.headers
        assert answer.body == noise
        assert answer.headers["ETag"] == tag(noise)
    assert frontend.vendored["/vendor/lib-1.0/noise.bin"].made.keys() == {"br", "gzip", None}
    assert frontend.vendored["/vendor/lib-1.0/noise.bin"].made["br"] is None
    assert counted.count("br") == 2  # lib.min.js and noise.bin, once each
    # A type not worth compressing is never compressed, and does not vary.
    licence = await get(frontend, "/vendor/lib-1.0/LICENSE", "br")
    assert "Content-Encoding" not in licence.headers
    assert "Vary" not in licence.headers
    assert licence.headers["Cache-Control"] == IMMUTABLE
    assert counted.count("br") == 2


async def test_vendored_bodies_are_made_off_the_trio_thread(site: Path) -> None:
    counted = Counted()
    frontend = load_assets(site, codecs=counted.codecs())
    counted.calls.clear()
    for accept in ("br", "gzip"):
        await get(frontend, "/vendor/lib-1.0/lib.min.js", accept)
    assert len(counted.calls) == 2
    assert threading.get_ident() not in {thread for _, _, thread in counted.calls}


class Held:
    """A brotli codec that, once armed (after start), holds its worker thread until released."""

    def __init__(self) -> None:
        self.armed = False
        self.calls = 0
        self.started = trio.Event()
        # A thread's event: a trio one, awaited through trio.from_thread, would be
        # cancelled with the request that started the work.
        self.release = threading.Event()

    def codecs(self) -> dict[str, Callable[[bytes], bytes]]:
        def compress(body: bytes) -> bytes:
            if not self.armed:
                return CODECS["br"](body)
            self.calls += 1
            trio.from_thread.run_sync(self.started.set)
            assert self.release.wait(10)
            return CODECS["br"](body)

        return {"br": compress, "gzip": CODECS["gzip"]}


async def test_concurrent_first_requests_make_the_body_once(site: Path) -> None:
    held = Held()
    frontend = load_assets(site, codecs=held.codecs())
    held.armed = True
    answers: list[Answer] = []

    async def request() -> None:
        answers.append(await get(frontend, "/vendor/lib-1.0/lib.min.js", "br"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(request)
            await held.started.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert held.calls == 1
            assert answers == []  # all ten wait for the one being made
            held.release.set()
    assert len(answers) == 10
    assert held.calls == 1
    assert len({id(answer.body) for answer in answers}) == 1
    assert {answer.headers["Content-Encoding"] for answer in answers} == {"br"}


async def test_first_request_cancelled_still_keeps_the_body(site: Path) -> None:
    held = Held()
    frontend = load_assets(site, codecs=held.codecs())
    held.armed = True
    first = trio.CancelScope()
    answers: list[Answer] = []

    async def first_request() -> None:
        with first:
            await get(frontend, "/vendor/lib-1.0/lib.min.js", "br")

    async def waiter() -> None:
        answers.append(await get(frontend, "/vendor/lib-1.0/lib.min.js", "br"))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first_request)
            await held.started.wait()  # the first request is making the body
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            first.cancel()  # its client went away
            await trio.testing.wait_all_tasks_blocked()
            assert answers == []
            held.release.set()
    assert len(answers) == 1
    assert held.calls == 1
    assert frontend.vendored["/vendor/lib-1.0/lib.min.js"].made["br"] is not None


async def test_vendored_file_gone_from_disk_is_404_and_tried_again(site: Path) -> None:
    frontend = load_assets(site)
    lib = site / "vendor/lib-1.0/lib.min.js"
    kept = lib.read_bytes()
    lib.unlink()  # after start: start-up never read it
    assert await frontend.answer("/vendor/lib-1.0/lib.min.js", "br", None) is None
    assert not frontend.vendored["/vendor/lib-1.0/lib.min.js"].made
    lib.write_bytes(kept)
    answer = await get(frontend, "/vendor/lib-1.0/lib.min.js", "br")
    assert brotli.decompress(answer.body) == kept


@pytest.mark.parametrize(
    "path",
    [
        "/vendor/lib-1.0/missing.js",
        "/vendor/lib-1.0",
        "/vendor/",
        "/vendor/lib-1.0/../../index.html",
        "/vendor/../index.html",
        "/vendor/lib-1.0/%2e%2e/LICENSE",
        "/vendor/lib-1.0//LICENSE",
        "/vendor/lib-1.0/LICENSE/",
        "/vendor/lib-1.0/../../../secret.js",
        "/../secret.js",
    ],
)
async def test_only_files_found_at_start_are_served(site: Path, path: str) -> None:
    frontend = load_assets(site)
    outside = site.parent / "secret.js"
    outside.write_text("secret")
    assert await frontend.answer(path, None, None) is None
