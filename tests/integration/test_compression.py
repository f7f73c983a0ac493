"""The page's assets, compressed when the client asks, over a real socket.

Raw bytes are read with ``aiter_raw`` (httpx would otherwise decode them),
then decompressed here, so the test sees exactly what went over the wire.
"""

from __future__ import annotations

import gzip
import hashlib
from typing import Any

import brotli
import httpx
import pytest
import trio
from support import Harness, StartServer

from omiro_trio import static
from omiro_trio.static import accepted_encodings

PATHS = ["/", "/index.html", "/css/app.css", "/js/app.js", "/js/constants.js", "/favicon.svg"]
DECODE = {"gzip": gzip.decompress, "br": brotli.decompress}
CHROMIUM = {"Accept-Encoding": "gzip, deflate, br, zstd"}


async def raw_get(
    http: httpx.AsyncClient, path: str, **headers: str
) -> tuple[httpx.Response, bytes]:
    async with http.stream("GET", path, headers=headers) as response:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    return response, body


async def test_assets_compressed_only_when_accepted(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        for path in PATHS:
            plain, identity = await raw_get(http, path, **{"Accept-Encoding": "identity"})
            assert plain.status_code == 200, path
            assert "content-encoding" not in plain.headers, path
            assert plain.headers["vary"] == "Accept-Encoding", path
            assert int(plain.headers["content-length"]) == len(identity)
            for coding, accept in [
                ("gzip", "gzip"),
                ("br", "br"),
                ("br", "gzip, deflate, br, zstd"),  # what Chromium sends
                ("gzip", "br;q=0, gzip"),
                ("gzip", "*;q=0.5, br;q=0"),
            ]:
                response, body = await raw_get(http, path, **{"Accept-Encoding": accept})
                assert response.status_code == 200, (path, accept)
                assert response.headers["content-encoding"] == coding, (path, accept)
                assert response.headers["vary"] == "Accept-Encoding"
                assert len(body) < len(identity), (path, coding)
                assert DECODE[coding](body) == identity, (path, coding)
                assert response.headers["content-type"] == plain.headers["content-type"]
                # Each representation has its own strong ETag.
                assert not response.headers["etag"].startswith("W/")
                assert response.headers["etag"] != plain.headers["etag"]
            for refused in ["", "deflate", "gzip;q=0, br;q=0", "*;q=0", "gzip;q=zero"]:
                response, body = await raw_get(http, path, **{"Accept-Encoding": refused})
                assert "content-encoding" not in response.headers, (path, refused)
                assert body == identity, (path, refused)


async def test_assets_revalidate_per_encoding(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        for path in PATHS:
            etags = {}
            for accept in ("identity", "gzip", "br"):
                first, _ = await raw_get(http, path, **{"Accept-Encoding": accept})
                etags[accept] = first.headers["etag"]
                again, body = await raw_get(
                    http, path, **{"Accept-Encoding": accept, "If-None-Match": etags[accept]}
                )
                assert again.status_code == 304, (path, accept)
                assert body == b""
                assert again.headers["etag"] == etags[accept]
                assert again.headers["vary"] == "Accept-Encoding"
            assert len(set(etags.values())) == 3, path
            # A gzip copy's tag does not validate the brotli representation.
            stale, body = await raw_get(
                http, path, **{"Accept-Encoding": "br", "If-None-Match": etags["gzip"]}
            )
            assert stale.status_code == 200
            assert stale.headers["content-encoding"] == "br"
            assert body


async def test_small_uncompressible_answers_unchanged(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        stats, _ = await raw_get(http, "/stats", **{"Accept-Encoding": "gzip, br"})
    assert "content-encoding" not in stats.headers


async def test_page_notice_and_links_from_config(start_server: StartServer) -> None:
    server = await start_server(
        page__notice="Be kind <b>here</b>.\n\nSecond & last rule.",
        page__terms_url="https://example.org/terms?a=1&b=2",
        page__privacy_url="privacy.html",
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        page = (await http.get("/", headers={"Accept-Encoding": "br"})).text
        default = await start_server()
        async with httpx.AsyncClient(base_url=default.url) as other:
            builtin = (await other.get("/")).text
    assert "<p>Be kind &lt;b&gt;here&lt;/b&gt;.</p><p>Second &amp; last rule.</p>" in page
    assert "<b>here</b>" not in page
    assert (
        '<a href="https://example.org/terms?a=1&amp;b=2" rel="noopener"'
        ' data-i18n="welcome.terms">Terms of use</a>'
    ) in page
    assert '<a href="privacy.html" rel="noopener" data-i18n="welcome.privacy">Privacy</a>' in page
    assert "18" in builtin
    assert "Be kind" not in builtin
    assert "Terms of use" not in builtin
    version = page.split('data-notice-version="', 1)[1].split('"', 1)[0]
    builtin_version = builtin.split('data-notice-version="', 1)[1].split('"', 1)[0]
    assert len(version) == 12
    assert len(builtin_version) == 12
    assert version != builtin_version


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, set()),
        ("gzip", {"gzip"}),
        ("GZIP;Q=1.0, Br", {"gzip", "br"}),
        ("*", {"gzip", "br"}),
        ("*, br;q=0", {"gzip"}),
        ("br;q=0.001", {"br"}),
        ("br;q=nan-ish", set()),
        (",,;q=1, identity", set()),
    ],
)
def test_accepted_encodings(header: str | None, expected: set[str]) -> None:
    assert accepted_encodings(header) == expected


VENDOR = "/vendor/nsfwjs-4.4.0/"


async def test_vendored_filter_files_are_served_immutable_and_compressed(server: Harness) -> None:
    """The nudity filter's library and model: from the package, cached for a year."""
    async with httpx.AsyncClient(base_url=server.url) as http:
        for path, content_type in [
            (VENDOR + "nsfwjs.min.js", "text/javascript; charset=utf-8"),
            (VENDOR + "mobilenet_v2/model.json", "application/json"),
            (VENDOR + "mobilenet_v2/group1-shard1of1.bin", "application/octet-stream"),
            ("/vendor/tfjs-4.22.0/tf-backend-wasm.min.js", "text/javascript; charset=utf-8"),
            ("/vendor/tfjs-4.22.0/tfjs-backend-wasm-simd.wasm", "application/wasm"),
        ]:
            plain, identity = await raw_get(http, path, **{"Accept-Encoding": "identity"})
            assert plain.status_code == 200, path
            assert plain.headers["content-type"] == content_type
            assert plain.headers["cache-control"] == "public, max-age=31536000, immutable"
            packed, body = await raw_get(http, path, **{"Accept-Encoding": "br"})
            assert packed.headers["content-encoding"] == "br", path
            assert packed.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert brotli.decompress(body) == identity
            assert len(body) < len(identity), path
        licence, _ = await raw_get(http, VENDOR + "LICENSE.tensorflow-tfjs")
        assert licence.status_code == 200
        # The page's own files keep being revalidated on every load.
        page, _ = await raw_get(http, "/js/nudity-filter.js")
        assert page.headers["cache-control"] == "no-cache"
        # The model is what the weights manifest names.
        manifest = (await http.get(VENDOR + "mobilenet_v2/model.json")).json()
        assert manifest["weightsManifest"][0]["paths"] == ["group1-shard1of1.bin"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, ('data-blur-remote="true"', 'data-nudity-filter="false"', 'data-relayed="false"')),
        (
            {"page__blur_remote": False, "page__nudity_filter": True},
            ('data-blur-remote="false"', 'data-nudity-filter="true"', 'data-relayed="false"'),
        ),
        (
            {"ice__turn_urls": ("turn:127.0.0.1:3478",), "ice__turn_secret": "s"},
            ('data-blur-remote="true"', 'data-nudity-filter="false"', 'data-relayed="true"'),
        ),
        (
            {
                "ice__turn_urls": ("turn:127.0.0.1:3478",),
                "ice__turn_secret": "s",
                "ice__relay_only": False,
            },
            ('data-blur-remote="true"', 'data-nudity-filter="false"', 'data-relayed="false"'),
        ),
    ],
)
async def test_page_safety_switches_from_config(
    start_server: StartServer, overrides: dict[str, object], expected: tuple[str, ...]
) -> None:
    server = await start_server(**overrides)
    async with httpx.AsyncClient(base_url=server.url) as http:
        page = (await http.get("/")).text
    body = page.split("<body", 1)[1].split(">", 1)[0]
    for attribute in expected:
        assert attribute in body


async def test_vendored_file_made_on_its_first_request_once_then_served_from_memory(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent first requests get one compression; later ones, GET, HEAD or 304, none."""
    made: list[tuple[str, int]] = []
    for coding, codec in list(static.CODECS.items()):

        def counted(body: bytes, coding: str = coding, codec: Any = codec) -> bytes:
            made.append((coding, len(body)))
            packed: bytes = codec(body)
            return packed

        monkeypatch.setitem(static.CODECS, coding, counted)
    path = VENDOR + "nsfwjs.min.js"
    on_disk = (static.frontend_dir() / "vendor/nsfwjs-4.4.0/nsfwjs.min.js").read_bytes()
    firsts: list[tuple[httpx.Response, bytes]] = []

    async def first_request() -> None:
        async with httpx.AsyncClient(base_url=server.url) as http:
            firsts.append(await raw_get(http, path, **CHROMIUM))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(first_request)
    assert made == [("br", len(on_disk))]
    assert {response.headers["etag"] for response, _ in firsts} == {
        f'"{hashlib.sha256(on_disk).hexdigest()[:32]}-br"'
    }
    assert {body for _, body in firsts} == {firsts[0][1]}
    assert brotli.decompress(firsts[0][1]) == on_disk
    async with httpx.AsyncClient(base_url=server.url) as http:
        for coding, accept in [("br", "br"), ("gzip", "gzip"), (None, "identity")]:
            response, body = await raw_get(http, path, **{"Accept-Encoding": accept})
            assert response.status_code == 200
            assert response.headers.get("content-encoding") == coding
            assert response.headers["vary"] == "Accept-Encoding"
            assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert (DECODE[coding](body) if coding else body) == on_disk
            head = await http.head(path, headers={"Accept-Encoding": accept})
            assert head.status_code == 200
            assert head.content == b""
            for name in ("etag", "content-length", "content-type", "vary", "cache-control"):
                assert head.headers[name] == response.headers[name], (accept, name)
            assert head.headers.get("content-encoding") == coding
            again, _ = await raw_get(
                http, path, **{"Accept-Encoding": accept, "If-None-Match": response.headers["etag"]}
            )
            assert again.status_code == 304
            assert again.headers["etag"] == response.headers["etag"]
    assert made == [("br", len(on_disk)), ("gzip", len(on_disk))]


@pytest.mark.parametrize(
    "target",
    [
        "/vendor/../static.py",
        "/../static.py",
        "/vendor/nsfwjs-4.4.0/../../../web.py",
        "/vendor/%2e%2e/%2e%2e/web.py",
        "/vendor/..%2f..%2fweb.py",
        "/vendor/nsfwjs-4.4.0/missing.js",
        "/vendor/nsfwjs-4.4.0/mobilenet_v2/",
        "/vendor/",
    ],
)
async def test_vendored_paths_name_only_files_of_the_folder(server: Harness, target: str) -> None:
    """Sent as is on a raw socket (an HTTP client would tidy the dots away)."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.running.port)
    async with stream:
        await stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
    assert b"import" not in answer
