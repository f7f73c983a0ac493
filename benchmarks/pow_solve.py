"""How long the page takes to solve a proof-of-work challenge, in this machine's headless Chromium.

Starts `omiro serve` (the installed package) on 127.0.0.1 with proof of
work always on (``[gate] pow_mode = "always"``) at the default difficulty
(or ``--max-number``), opens the page once in headless Chromium and, SOLVES
times, has the page's own module (``js/pow.js``: a fresh challenge from
``gate/challenge``, the vendored ALTCHA solver in web workers) solve one,
timing it in the page (``performance.now()``, fetch included). Also
reported: the number each challenge asked for (the work done is that many
SHA-256 hashes, spread over the workers), and the workers used
(``navigator.hardwareConcurrency``, at most 4).

    .venv/bin/python benchmarks/pow_solve.py [--solves 20] [--max-number N]

Loopback only; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from omiro_trio.config import GateConfig

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic"]
START_S = 20.0

SOLVE_JS = """
async () => {
  const { ProofOfWork } = await import("./js/pow.js");
  const pow = new ProofOfWork();
  const started = performance.now();
  const payload = await pow.take();
  return { ms: performance.now() - started, payload };
}
"""


def start_server(workdir: Path, max_number: int) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMIRO_")}
    env.update(
        OMIRO_GATE_POW_MODE="always",
        OMIRO_GATE_POW_MAX_NUMBER=str(max_number),
        OMIRO_ICE_URLS="[]",
        OMIRO_LOG_LEVEL="info",
    )
    omiro = str(Path(sys.executable).with_name("omiro"))
    proc = subprocess.Popen(
        [omiro, "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + START_S
    assert proc.stderr is not None
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "listening on" in line:
            return proc, line.split("listening on ", 1)[1].split()[0]
    proc.kill()
    raise RuntimeError("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--solves", type=int, default=20)
    parser.add_argument("--max-number", type=int, default=GateConfig().pow_max_number)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(Path(tmp), args.max_number)
        try:
            with urllib.request.urlopen(url + "/gate/challenge", timeout=5) as answer:
                assert json.load(answer)["required"] is True
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS
                )
                page = browser.new_page()
                page.set_default_timeout(120_000)
                page.goto(url + "/")
                workers = min(4, page.evaluate("() => navigator.hardwareConcurrency || 1"))
                rows: list[dict[str, Any]] = []
                for _ in range(args.solves):
                    result = page.evaluate(SOLVE_JS)
                    document = json.loads(base64.b64decode(result["payload"]))
                    rows.append({"ms": result["ms"], "number": document["solution"]["counter"]})
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    times = sorted(row["ms"] for row in rows)
    numbers = [row["number"] for row in rows]
    hashes_per_s = sum(numbers) / (sum(times) / 1000)
    report = {
        "max_number": args.max_number,
        "solves": args.solves,
        "workers": workers,
        "load_average_1min": os.getloadavg()[0],
        "solve_ms_median": round(statistics.median(times), 1),
        "solve_ms_p90": round(times[int(0.9 * (len(times) - 1))], 1),
        "solve_ms_max": round(times[-1], 1),
        "number_mean": round(statistics.mean(numbers)),
        "hashes_per_s": round(hashes_per_s),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
