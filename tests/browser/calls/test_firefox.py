"""Firefox (Debian's firefox-esr, driven by puppeteer-core over WebDriver BiDi).

Firefox ends each media section's ICE gathering with a candidate whose
``candidate`` string is empty, before the final ``null``: it is no candidate
of ours. With relay-only calls and a TURN server that refuses us, the page
must count none and say "couldn't reach the relay server", as in Chromium
(``test_turn.py``).

Needs ``/usr/bin/firefox-esr``, Node.js and ``npm ci`` in
``tests/browser/firefox`` (the README's test command runs it); skips without
them, fails without them when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parents[1] / "firefox"
FIREFOX = Path("/usr/bin/firefox-esr")
NODE_DEADLINE_S = 60


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def notice_version(url: str) -> str:
    """The version the server stamped on its first-visit notice."""
    with urllib.request.urlopen(url, timeout=5) as response:
        found = re.search(r'data-notice-version="([0-9a-f]+)"', response.read().decode())
    assert found, "the page carries no notice version"
    return found.group(1)


def firefox_start(url: str, version: str) -> dict[str, object]:
    """Open the page in Firefox, press Start, and return what it shows once the call settled."""
    node = shutil.which("node")
    if not FIREFOX.exists():
        _missing(f"{FIREFOX} is not installed (apt-get install firefox-esr)")
    if node is None:
        _missing("Node.js is not installed (apt-get install nodejs npm)")
    if not (HERE / "node_modules" / "puppeteer-core").is_dir():
        _missing("puppeteer-core is not installed (npm ci --prefix tests/browser/firefox)")
    done = subprocess.run(
        [str(node), str(HERE / "start_page.mjs"), url, version],
        capture_output=True,
        text=True,
        timeout=NODE_DEADLINE_S,
        env={**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"},
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from Firefox (exit {done.returncode}): {done.stderr[-2000:]}"
    result: dict[str, object] = json.loads(lines[-1])
    assert result["ok"], result
    assert result["errors"] == [], result["errors"]
    return result


def test_firefox_says_the_relay_cannot_be_reached(make_server, people, coturn):
    server = make_server(**coturn.omiro_env(secret="not-the-secret-coturn-has"))
    bob = people(server, "bob")  # Chromium, waiting for someone
    bob.start()
    bob.wait_state("waiting")
    shown = firefox_start(server.url + "/", notice_version(server.url + "/"))
    assert "Firefox" in str(shown["userAgent"])
    assert shown["state"] == "connected"
    # No candidate of ours at all: the empty end-of-section ones are not counted.
    assert shown["localCandidates"] == 0, shown
    outcome = shown["outcome"]
    assert isinstance(outcome, dict), shown
    assert outcome["outcome"] == "failed", shown
    assert outcome["path"] is None, shown
    # Chromium hears coturn's 401 ("refused"); Firefox may declare ICE failed
    # first, with nothing gathered ("no-candidates"): the same words either way.
    assert outcome["reason"] in ("refused", "no-candidates"), shown
    assert "Couldn't reach the relay server" in str(shown["caption"]), shown
    assert shown["callState"] == "failed"
    assert any("relay server" in line for line in shown["chat"]), shown  # type: ignore[union-attr]
