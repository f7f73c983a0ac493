"""Start-up benchmark: from process start to ``/readyz`` answering, and the memory held.

Each run starts a fresh `omiro serve` (memory backend, 127.0.0.1, port 0,
pinned to core 0 while this script runs on core 1 when there are two or more
cores), then measures:

1. ``ready_s``: from just before the process is started until ``/readyz``
   first answers 200 (polled every 2 ms, for at most 60 s);
2. ``cpu_s``: the server's CPU seconds by then; ``rss_ready_mb``: its VmRSS,
   and ``hwm_ready_mb``: the highest it has been (VmHWM);
3. ``filter_first_ms``: the nudity filter's files fetched all at once, as a
   page that turns the filter on does (brotli, as Chromium asks), on a
   server that never served them; ``filter_again_ms``: the same again;
   ``rss_filter_mb``: VmRSS after that;
4. on a second fresh server, every file under ``vendor/`` in every encoding
   (identity, gzip, brotli), 32 requests at a time: ``rss_every_peak_mb``,
   the highest VmRSS seen meanwhile (sampled every 5 ms), and
   ``rss_every_mb``, VmRSS after.

With several ``--build NAME=PYTHON`` the runs alternate between them (A, B,
A, B, ...), so a machine that gets busier during the runs weighs on every
build alike; PYTHON is an interpreter (or a wrapper script) that can run
``-m omiro_trio serve``. Prints every run and each build's medians as JSON.

    .venv/bin/python benchmarks/startup.py [--runs 5] [--build NAME=PYTHON ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time

import httpx
import trio

from omiro_bench.server import cpu_seconds, rss_kib, start_server
from omiro_trio.static import frontend_dir

# What the page fetches when the user turns the nudity filter on (page_load.py).
FILTER_FILES = [
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
READY_DEADLINE_S = 60.0


def hwm_kib(pid: int) -> int:
    """The process's highest resident set size so far (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def wait_ready(url: str, deadline: float) -> None:
    with httpx.Client(base_url=url, timeout=5) as http:
        while time.perf_counter() < deadline:
            try:
                if http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.002)
    raise RuntimeError("/readyz did not answer 200 in time")


async def fetch_filter(url: str) -> float:
    """Milliseconds to fetch every file of the filter at once; each must be 200."""

    async def fetch(http: httpx.AsyncClient, path: str) -> None:
        async with http.stream("GET", path, headers=CHROMIUM_ACCEPT) as response:
            assert response.status_code == 200, path
            async for _ in response.aiter_raw():
                pass

    with trio.fail_after(60):
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for path in FILTER_FILES:
                    nursery.start_soon(fetch, http, path)
            return (time.perf_counter() - start) * 1000


async def fetch_every_encoding(url: str) -> None:
    """Every vendored file in every encoding, 32 requests at a time; each must be 200."""
    root = frontend_dir()
    paths = sorted(
        "/" + path.relative_to(root).as_posix()
        for path in (root / "vendor").rglob("*")
        if path.is_file()
    )

    async def fetch(http: httpx.AsyncClient, path: str, accept: str) -> None:
        async with http.stream("GET", path, headers={"Accept-Encoding": accept}) as response:
            assert response.status_code == 200, path
            async for _ in response.aiter_raw():
                pass

    limits = httpx.Limits(max_connections=32)
    with trio.fail_after(60):
        async with (
            httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http,
            trio.open_nursery() as nursery,
        ):
            for path in paths:
                for accept in ("identity", "gzip", "br"):
                    nursery.start_soon(fetch, http, path, accept)


def one_run(python: str, pin: bool) -> dict[str, float]:
    command = [python, "-m", "omiro_trio", "serve", "--host", "127.0.0.1", "--port", "0"]
    start = time.perf_counter()
    server = start_server(pin, command=command)
    url, pid = server.url, server.pid
    try:
        wait_ready(url, start + READY_DEADLINE_S)
        ready_s = time.perf_counter() - start
        result = {
            "ready_s": ready_s,
            "cpu_s": cpu_seconds(pid),
            "rss_ready_mb": rss_kib(pid) / 1024,
            "hwm_ready_mb": hwm_kib(pid) / 1024,
        }
        result["filter_first_ms"] = trio.run(fetch_filter, url)
        result["filter_again_ms"] = trio.run(fetch_filter, url)
        result["rss_filter_mb"] = rss_kib(pid) / 1024
    finally:
        server.stop()
    server = start_server(pin, command=command)
    url, pid = server.url, server.pid
    try:
        wait_ready(url, time.perf_counter() + READY_DEADLINE_S)
        peak_kib = rss_kib(pid)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak_kib
            while not done.wait(0.005):
                peak_kib = max(peak_kib, rss_kib(pid))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            trio.run(fetch_every_encoding, url)
        finally:
            done.set()
            sampler.join()
        result["rss_every_peak_mb"] = peak_kib / 1024
        result["rss_every_mb"] = rss_kib(pid) / 1024
        return result
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each build")
    parser.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="NAME=PYTHON",
        help="a build to measure (repeat to alternate builds); default: this interpreter",
    )
    args = parser.parse_args()
    builds = dict(build.split("=", 1) for build in args.build) or {"this": sys.executable}
    pin = len(os.sched_getaffinity(0)) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in builds}
    for _ in range(args.runs):
        for name, python in builds.items():
            runs[name].append(one_run(python, pin))
    medians = {
        name: {key: statistics.median(run[key] for run in results) for key in results[0]}
        for name, results in runs.items()
    }
    load = os.getloadavg()
    print(
        json.dumps(
            {"runs": runs, "medians": medians, "pinned": pin, "load_average": load}, indent=2
        )
    )


if __name__ == "__main__":
    main()
