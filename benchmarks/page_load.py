"""Page-load benchmark: the page and its assets from a real `omiro serve`.

Starts the server as `omiro bench relay` does (pinned apart from this load generator),
then ROUNDS times fetches the page and every asset it loads, all at once as
a browser does, on fresh connections; then REQUESTS sequential requests for
one asset and for /healthz on a kept-alive connection, and a revalidation
(If-None-Match → 304). Loopback only, bounded in count and time.

"Every asset it loads" is read from the served index.html (its stylesheet,
module preloads, script, icon and manifest: every module the page imports at
start is preloaded there), and the English message catalog that boot.js
fetches at once. It also reports the bytes a first visit transfers (bodies
as Chromium gets them, brotli), each language's catalog (a visit fetches
only its own), and what the nudity filter adds when a user turns it on
(fetched only then).

    .venv/bin/python benchmarks/page_load.py [--rounds 20] [--requests 500]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time

import httpx
import trio

from omiro_bench.server import start_server

# What the page's head and body name: <link href>, <script src>.
ASSET_RE = re.compile(r'<(?:link|script)\b[^>]*\b(?:href|src)="([^"#:?]+)"')
# The languages boot.js lists: ["en", "English"], ...
LANGUAGE_RE = re.compile(r'\["([a-z]{2,3})", "')
# Fetched only when the user turns the nudity filter on.
FILTER_ASSETS = [
    "/js/nudity-filter.js",
    "/js/nudity-worker.js",
    "/vendor/nsfwjs-4.4.0/nsfwjs.min.js",
    "/vendor/nsfwjs-4.4.0/mobilenet_v2/model.json",
    "/vendor/nsfwjs-4.4.0/mobilenet_v2/group1-shard1of1.bin",
    "/vendor/tfjs-4.22.0/tf-core.min.js",
    "/vendor/tfjs-4.22.0/tf-backend-wasm.min.js",
    "/vendor/tfjs-4.22.0/tfjs-backend-wasm-simd.wasm",
]
CHROMIUM_ACCEPT = {"Accept-Encoding": "gzip, deflate, br, zstd"}


async def page_assets(http: httpx.AsyncClient) -> list[str]:
    """The page and every file its markup loads, as paths from the site root,
    with the message catalog an English visitor's boot.js fetches at once."""
    html = (await http.get("/")).text
    paths = ["/", *dict.fromkeys("/" + path.lstrip("./") for path in ASSET_RE.findall(html))]
    if "/js/boot.js" in paths:
        paths.append("/locales/en.json")
    return paths


async def catalogs(http: httpx.AsyncClient) -> list[str]:
    """Every language's catalog (one of them is fetched per visit), from boot.js's list."""
    response = await http.get("/js/boot.js")
    if response.status_code != 200:
        return []
    return [f"/locales/{code}.json" for code in LANGUAGE_RE.findall(response.text)]


async def wire_bytes(http: httpx.AsyncClient, paths: list[str]) -> int | None:
    """Bytes of the bodies as Chromium receives them; None if one is missing."""
    total = 0
    for path in paths:
        async with http.stream("GET", path, headers=CHROMIUM_ACCEPT) as response:
            if response.status_code != 200:
                return None
            total += sum([len(chunk) async for chunk in response.aiter_raw()])
    return total


async def run(args: argparse.Namespace, url: str, server_pid: int) -> dict[str, float]:
    results: dict[str, float] = {}
    with trio.fail_after(120):
        async with httpx.AsyncClient(base_url=url) as http:
            assets = await page_assets(http)
            results["page_files"] = len(assets)
            results["page_bytes_br"] = await wire_bytes(http, assets) or 0
            for path in await catalogs(http):
                code = path.rsplit("/", 1)[1].removesuffix(".json")
                results[f"catalog_{code}_bytes_br"] = await wire_bytes(http, [path]) or 0
            extra = await wire_bytes(http, FILTER_ASSETS)
            if extra is not None:
                results["filter_on_extra_bytes_br"] = extra
        page_ms: list[float] = []
        for _ in range(args.rounds):
            async with httpx.AsyncClient(base_url=url) as http:
                start = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for path in assets:
                        nursery.start_soon(http.get, path)
                page_ms.append((time.perf_counter() - start) * 1000)
        results["page_all_assets_ms_median"] = statistics.median(page_ms)
        async with httpx.AsyncClient(base_url=url) as http:
            for label, path, headers in [
                ("asset_ms", "/js/app.js", {}),
                ("healthz_ms", "/healthz", {}),
            ]:
                start = time.perf_counter()
                for _ in range(args.requests):
                    (await http.get(path, headers=headers)).raise_for_status()
                results[label] = (time.perf_counter() - start) / args.requests * 1000
            etag = (await http.get("/js/app.js")).headers["etag"]
            start = time.perf_counter()
            for _ in range(args.requests):
                revalidated = await http.get("/js/app.js", headers={"If-None-Match": etag})
                assert revalidated.status_code == 304
            results["revalidate_304_ms"] = (time.perf_counter() - start) / args.requests * 1000
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    # With two or more cores the server gets core 0 and this process core 1.
    pin = len(os.sched_getaffinity(0)) >= 2
    server = start_server(pin)
    try:
        if pin:
            os.sched_setaffinity(0, {1})
        results = trio.run(run, args, server.url, server.pid)
    finally:
        server.stop()
    print(json.dumps({"args": vars(args), "pinned": pin, **results}, indent=2))


if __name__ == "__main__":
    main()
