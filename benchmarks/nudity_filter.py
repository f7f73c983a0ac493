"""The on-device nudity filter's cost, in this machine's headless Chromium.

Starts `omiro serve` (the installed package) on 127.0.0.1 and two pages of
Chromium with the fake camera and microphone in one call: bob sends, alice
watches. Then, in the same call, ROUNDS times each, interleaved, for
WINDOW_S seconds: the filter OFF on alice's page, then ON (turned on and off
through the page's own setting, as a user would). For every window:

* remote_fps: frames of bob's video presented by alice's <video>
  (requestVideoFrameCallback), per second;
* decoded_fps: alice's inbound video framesDecoded per second (getStats);
* page_fps: alice's requestAnimationFrame callbacks per second (the page's
  own frame rate: the main thread's health);
* browser_cpu_s: CPU seconds (user + system) of every Chromium process of
  this run, per second of wall time;
* filter frames classified, and the worker's own time per frame.

"CPU per classified frame" is the browser's extra CPU with the filter on
(ON minus the mean of the OFF windows) divided by the frames it classified.
Also measured: the library and model (bytes on disk and as Chromium gets
them, brotli) and the filter's load time (import, library, model, first
prediction) on LOADS fresh pages.

    .venv/bin/python benchmarks/nudity_filter.py [--rounds 3] [--window 10] [--loads 3]

Loopback only; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
VENDOR = "/vendor/nsfwjs-4.4.0/"
FILES = [VENDOR + "nsfwjs.min.js", VENDOR + "mobilenet_v2/model.json"]
FILES.append(VENDOR + "mobilenet_v2/group1-shard1of1.bin")
FILES += ["/js/nudity-filter.js", "/js/nudity-worker.js"]
TFJS = "/vendor/tfjs-4.22.0/"
FILES += [TFJS + "tf-core.min.js", TFJS + "tf-backend-wasm.min.js"]
FILES.append(TFJS + "tfjs-backend-wasm-simd.wasm")
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")

# Counts over one window, in alice's page.
WINDOW_JS = """
async (seconds) => {
  const video = document.getElementById("remote-video");
  const decoded = async () => {
    let n = 0;
    (await window.omiro.pc.getStats()).forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") n = r.framesDecoded;
    });
    return n;
  };
  let presented = 0, rafs = 0, running = true;
  const onVideo = () => { presented += 1; if (running) video.requestVideoFrameCallback(onVideo); };
  const onFrame = () => { rafs += 1; if (running) requestAnimationFrame(onFrame); };
  video.requestVideoFrameCallback(onVideo);
  requestAnimationFrame(onFrame);
  const framesBefore = window.omiro.filter.frames;
  const decodedBefore = await decoded();
  const started = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  running = false;
  const elapsed = (performance.now() - started) / 1000;
  const filter = window.omiro.filter;
  return {
    elapsed,
    remote_fps: presented / elapsed,
    decoded_fps: ((await decoded()) - decodedBefore) / elapsed,
    page_fps: rafs / elapsed,
    filter_frames: filter.frames - framesBefore,
    model_ms: filter.modelMs.filter((m) => m !== null),
    classify_ms: filter.classifyMs,
  };
}
"""


def chromium_cpu_s() -> float:
    """CPU seconds (user + system) of every Chromium process descended from this one."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    stats: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        stats[int(entry)] = (name, (int(fields[11]) + int(fields[12])) / tick)
    me = os.getpid()

    def mine(pid: int) -> bool:
        for _ in range(64):
            if pid == me:
                return True
            pid = parents.get(pid, 0)
            if pid <= 1:
                return False
        return False

    return sum(cpu for pid, (name, cpu) in stats.items() if "chrom" in name and mine(pid))


def start_server(workdir: Path) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMIRO_")}
    env.update(OMIRO_ICE_URLS="[]", OMIRO_LOG_LEVEL="info")
    proc = subprocess.Popen(
        [sys.executable, "-m", "omiro_trio", "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            match = LISTENING.search(line)
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(30) or not found:
        proc.kill()
        raise RuntimeError("omiro serve did not start")
    return proc, found[0]


def file_sizes(url: str) -> dict[str, int]:
    sizes = {"identity_bytes": 0, "br_bytes": 0}
    for path in FILES:
        for coding, key in (("identity", "identity_bytes"), ("br", "br_bytes")):
            request = urllib.request.Request(url + path, headers={"Accept-Encoding": coding})
            with urllib.request.urlopen(request, timeout=10) as response:
                sizes[key] += len(response.read())
    return sizes


def open_page(browser: Any, url: str, *, filter_on: bool) -> Any:
    # Reduced motion, as the browser tests: without a GPU every frame of the
    # animated backdrop costs about a core, which would hide the filter.
    context = browser.new_context(viewport={"width": 1280, "height": 800}, reduced_motion="reduce")
    notice = (
        urllib.request.urlopen(url + "/", timeout=10).read().decode().split('data-notice-version="')
    )[1].split('"')[0]
    script = f"localStorage.setItem('omiro.notice', {json.dumps(notice)});"
    script += f"localStorage.setItem('omiro.nudity-filter', '{'on' if filter_on else 'off'}');"
    script += "localStorage.setItem('omiro.blur', 'off');"
    context.add_init_script(script)
    page = context.new_page()
    page.goto(url + "/")
    page.wait_for_function("() => window.omiro !== undefined", timeout=10_000)
    return page


def set_filter(page: Any, on: bool) -> None:
    page.evaluate("() => document.getElementById('open-notice').click()")
    box = page.get_by_test_id("filter-setting")
    box.check() if on else box.uncheck()
    page.get_by_test_id("notice-accept").click()


def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    results: dict[str, Any] = {"files": file_sizes(url)}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
        )
        loads = []
        for _ in range(args.loads):
            alice = open_page(browser, url, filter_on=True)
            bob = open_page(browser, url, filter_on=False)
            for page in (alice, bob):
                page.get_by_test_id("start").click()
            alice.wait_for_function(
                "() => window.omiro.filter.state === 'ready'", timeout=120_000, polling=100
            )
            loads.append(alice.evaluate("() => window.omiro.filter"))
            for page in (alice, bob):
                page.context.close()
        results["load_ms"] = [info["loadMs"] for info in loads]
        results["mode"] = loads[0]["mode"]
        results["backend"] = loads[0]["backend"]

        alice = open_page(browser, url, filter_on=True)
        bob = open_page(browser, url, filter_on=False)
        for page in (alice, bob):
            page.get_by_test_id("start").click()
        alice.wait_for_function(
            "() => window.omiro.pc && window.omiro.pc.connectionState === 'connected'"
            " && document.body.dataset.media === 'playing'"
            " && window.omiro.filter.state === 'ready' && window.omiro.filter.frames > 5",
            timeout=120_000,
            polling=100,
        )
        windows: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for state in ("off", "on"):
                set_filter(alice, state == "on")
                alice.wait_for_timeout(1_000)  # let the switch settle before counting
                cpu_before, wall_before = chromium_cpu_s(), time.monotonic()
                window = alice.evaluate(WINDOW_JS, args.window)
                cpu = chromium_cpu_s() - cpu_before
                window["browser_cpu_per_s"] = cpu / (time.monotonic() - wall_before)
                window["browser_cpu_s"] = cpu
                windows[state].append(window)
        browser.close()

    def median(state: str, key: str) -> float:
        return statistics.median(w[key] for w in windows[state])

    summary: dict[str, Any] = {}
    for key in ("remote_fps", "decoded_fps", "page_fps", "browser_cpu_per_s"):
        summary[key] = {state: round(median(state, key), 2) for state in ("off", "on")}
    frames = sum(w["filter_frames"] for w in windows["on"])
    seconds = sum(w["elapsed"] for w in windows["on"])
    off_cpu_rate = statistics.mean(w["browser_cpu_per_s"] for w in windows["off"])
    extra_cpu = sum(w["browser_cpu_s"] for w in windows["on"]) - off_cpu_rate * seconds
    summary["classified_per_s"] = round(frames / seconds, 2)
    summary["cpu_ms_per_classified_frame"] = round(extra_cpu / max(frames, 1) * 1000, 1)
    model_ms = [m for w in windows["on"] for m in w["model_ms"]]
    classify_ms = [m for w in windows["on"] for m in w["classify_ms"]]
    summary["worker_ms_per_frame_median"] = round(statistics.median(model_ms), 1)
    summary["bitmap_to_verdict_ms_median"] = round(statistics.median(classify_ms), 1)
    summary["off_windows_frames"] = [w["filter_frames"] for w in windows["off"]]
    results["summary"] = summary
    results["windows"] = {
        state: [
            {
                k: (round(v, 2) if isinstance(v, float) else v)
                for k, v in w.items()
                if k not in ("model_ms", "classify_ms")
            }
            for w in ws
        ]
        for state, ws in windows.items()
    }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--loads", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        proc, url = start_server(Path(workdir))
        try:
            results = measure(args, url)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(json.dumps({"args": vars(args), "load_average": os.getloadavg(), **results}, indent=2))


if __name__ == "__main__":
    main()
