"""Browser tests: the real frontend in headless Chromium against a real server.

Testing policy for this folder:

* Each test gets its own ``omiro serve`` process on 127.0.0.1, port 0,
  started from a temporary directory (so the *installed* package and its
  copy of the frontend are what is served), with ``OMIRO_ICE_URLS='[]'``:
  calls stay on loopback. Users of one test can never meet another test's.
* Chromium is Debian's ``/usr/bin/chromium`` with fake camera and
  microphone (``../shared/TESTING.md``); one browser per session, one browser
  context per simulated person, so they share nothing.
* Nothing sleeps: every wait is Playwright's ``wait_for_function`` / ``expect``
  with a deadline. Every page is instrumented before its scripts run
  (``PROBE_JS``) so tests count RTCPeerConnections and getUserMedia calls
  independently of the app's own bookkeeping.
* Uncaught page errors, the app's own ``omiro:`` console warnings and
  Content-Security-Policy refusals fail the test that caused them.
* Without Chromium the tests skip, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import CHROMIUM, LAUNCH_ARGS

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")
SERVER_START_S = 20.0
SERVER_STOP_S = 15.0
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# Runs before the page's own scripts: counts peer connections and device
# requests, and keeps the local tracks so a test can check they were stopped.
PROBE_JS = """
(() => {
  const probe = { pcCreated: 0, pcClosed: 0, gum: 0, refs: [], tracks: [] };
  const Native = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Native {
    constructor(...args) {
      super(...args);
      probe.pcCreated += 1;
      probe.refs.push(new WeakRef(this));
    }
    close() {
      if (this.signalingState !== "closed") probe.pcClosed += 1;
      return super.close();
    }
  };
  probe.live = () =>
    probe.refs
      .map((ref) => ref.deref())
      .filter((pc) => pc && pc.signalingState !== "closed").length;
  probe.liveTracks = () => probe.tracks.filter((track) => track.readyState === "live").length;
  const devices = navigator.mediaDevices;
  if (devices && devices.getUserMedia) {
    const original = devices.getUserMedia.bind(devices);
    devices.getUserMedia = async (constraints) => {
      probe.gum += 1;
      const stream = await original(constraints);
      probe.tracks.push(...stream.getTracks());
      return stream;
    };
  }
  Object.defineProperty(window, "__probe", { value: probe });
})();
"""

# What the remote <video> and the inbound RTP streams look like right now.
MEDIA_JS = """
async () => {
  const video = document.querySelector('[data-testid="remote-video"]');
  const pc = window.omiro.pc;
  const bytes = {};
  if (pc) {
    const stats = await pc.getStats();
    stats.forEach((r) => {
      if (r.type === "inbound-rtp") bytes[r.kind] = (bytes[r.kind] || 0) + r.bytesReceived;
    });
  }
  return {
    width: video.videoWidth,
    height: video.videoHeight,
    time: video.currentTime,
    paused: video.paused,
    bytes,
  };
}
"""


def _chromium_missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


class OmiroServer:
    """One ``omiro serve`` child process; stop() drains it with SIGTERM."""

    def __init__(self, workdir: Path, env: dict[str, str], port: int = 0) -> None:
        self.workdir = workdir
        self.env = env
        self.requested_port = port
        self.url = ""
        self.port = 0
        self.lines: list[str] = []
        self._ready = threading.Event()
        self.proc: subprocess.Popen[str] | None = None
        self.crashed = False

    def start(self) -> OmiroServer:
        self._ready.clear()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "omiro_trio",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.requested_port),
            ],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Drain stderr for the whole life of the process so it never blocks.
        threading.Thread(target=self._read_log, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(SERVER_START_S) or not self.url:
            self.kill()
            raise RuntimeError("omiro serve did not start:\n" + "".join(self.lines[-30:]))
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("omiro serve never answered /healthz")
            time.sleep(0.05)  # bounded poll of an external process, with a deadline

    def _read_log(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match and not self._ready.is_set():
                self.url, self.port = match.group(1), int(match.group(2))
                self._ready.set()
        self._ready.set()

    def stop(self) -> int:
        """SIGTERM, wait for the drain; returns the exit code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(SERVER_STOP_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError("omiro serve did not exit within the drain deadline") from None

    def crash(self) -> None:
        """SIGKILL: the server vanishes without a word to its clients."""
        self.crashed = True
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def get_json(self, path: str, *, body: Any = None, **kwargs: Any) -> Any:
        if body is not None:
            kwargs["data"] = json.dumps(body).encode()
            kwargs.setdefault("headers", {})["Content-Type"] = "application/json"
        request = urllib.request.Request(self.url + path, **kwargs)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            return {"status": err.code, **json.loads(err.read() or b"{}")}


def server_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMIRO_")}
    env.update(
        OMIRO_ICE_URLS="[]",
        OMIRO_SERVER_DRAIN_GRACE_S="2",
        OMIRO_MATCHMAKING_REMATCH_COOLDOWN_S="300",
        OMIRO_LOG_LEVEL="info",
    )
    env.update(overrides)
    return env


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., OmiroServer]]:
    """Factory: make_server(port=0, **OMIRO_env) starts a server; all are stopped after."""
    servers: list[OmiroServer] = []

    def make(port: int = 0, **overrides: str) -> OmiroServer:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        server = OmiroServer(workdir, server_env(**overrides), port).start()
        servers.append(server)
        return server

    yield make
    codes = {server.url: server.stop() for server in servers if not server.crashed}
    assert all(code == 0 for code in codes.values()), f"a server did not exit cleanly: {codes}"


@pytest.fixture
def server(make_server: Callable[..., OmiroServer]) -> OmiroServer:
    return make_server()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        _chromium_missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _chromium_missing("the playwright package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        yield browser
        browser.close()


class Person:
    """One stranger: a browser context with one page of Omiro."""

    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.name = name
        self.errors: list[str] = []
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on("console", self._on_console)

    def _on_console(self, message: Any) -> None:
        text = message.text
        # The app's own warnings (a failed negotiation step, a bad candidate)
        # and any Content-Security-Policy refusal are bugs.
        if text.startswith("omiro:") or "Content Security Policy" in text:
            self.errors.append(f"console.{message.type}: {text}")

    def testid(self, name: str) -> Any:
        return self.page.get_by_test_id(name)

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def wait(self, predicate: str, arg: Any = None, timeout_ms: int = 15_000) -> Any:
        return self.page.wait_for_function(predicate, arg=arg, timeout=timeout_ms, polling=100)

    def start(self, *, interests: str = "", text: bool = False) -> None:
        if interests:
            self.testid("interests").fill(interests)
        if text:
            from playwright.sync_api import Error as PlaywrightError

            # The hidden switch's box can move while a language's catalog is
            # applied: a click that landed beside it is made again.
            toggle = self.testid("text-mode")
            deadline = time.monotonic() + 15
            while True:
                try:
                    toggle.check(force=True, timeout=2_000)
                    break
                except PlaywrightError:
                    if time.monotonic() > deadline:
                        raise
        self.testid("start").click()

    def wait_state(self, state: str, timeout_ms: int = 15_000) -> None:
        self.wait("s => window.omiro.state === s", state, timeout_ms)

    @property
    def state(self) -> str:
        return self.js("() => window.omiro.state")

    @property
    def session_id(self) -> str:
        return self.js("() => window.omiro.sessionId")

    @property
    def partner_id(self) -> str | None:
        return self.js("() => window.omiro.partnerId")

    def wait_call_connected(self, timeout_ms: int = 15_000) -> None:
        self.wait(
            "() => window.omiro.pc && window.omiro.pc.connectionState === 'connected'",
            timeout_ms=timeout_ms,
        )

    def media(self) -> dict[str, Any]:
        return self.js(MEDIA_JS)

    def wait_media_flowing(self, timeout_ms: int = 15_000) -> None:
        """Remote video has frames and plays on; audio and video bytes both rise."""
        self.wait(
            "() => { const v = document.querySelector('[data-testid=remote-video]');"
            " return v.videoWidth > 0 && !v.paused; }",
            timeout_ms=timeout_ms,
        )
        self.wait(
            f"async () => {{ const m = await ({MEDIA_JS})();"
            " return m.bytes.audio > 0 && m.bytes.video > 0; }",
            timeout_ms=timeout_ms,
        )
        before = self.media()
        self.wait(
            f"async (b) => {{ const m = await ({MEDIA_JS})();"
            " return m.time > b.time + 0.3 && m.bytes.audio > b.bytes.audio"
            " && m.bytes.video > b.bytes.video; }",
            before,
            timeout_ms,
        )

    def wait_server_stats(self, online: int, waiting: int, timeout_ms: int = 10_000) -> None:
        """Poll GET /stats from the page until it says this."""
        self.wait(
            "async ([online, waiting]) => { const r = await fetch('stats', {cache: 'no-store'});"
            " const s = await r.json(); return s.online === online && s.waiting === waiting; }",
            [online, waiting],
            timeout_ms,
        )

    def probe(self) -> dict[str, int]:
        return self.js(
            "() => ({created: __probe.pcCreated, closed: __probe.pcClosed, live: __probe.live(),"
            " gum: __probe.gum, liveTracks: __probe.liveTracks(),"
            " appLive: window.omiro.peerConnections.live})"
        )

    def chat_entries(self) -> list[dict[str, str]]:
        return self.js(
            "() => [...document.querySelectorAll('[data-testid=chat-log] > li')].map(li => ({"
            " cls: li.className,"
            " author: li.querySelector('.msg-author')?.textContent ?? null,"
            " text: (li.querySelector('.msg-text') ?? li).textContent }))"
        )

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), animations="allow")
        return path


def notice_version(server: OmiroServer) -> str:
    """The version the server stamped on its first-visit notice."""
    with urllib.request.urlopen(server.url + "/", timeout=5) as response:
        page = response.read().decode()
    match = re.search(r'data-notice-version="([0-9a-f]+)"', page)
    assert match, "the page carries no notice version"
    return match.group(1)


@pytest.fixture
def people(browser: Any) -> Iterator[Callable[..., Person]]:
    """Factory: people(server, name, viewport=..., init_script=...) opens Omiro in a new context."""
    opened: list[tuple[Any, Person]] = []

    def open_person(
        server: OmiroServer,
        name: str,
        *,
        viewport: dict[str, int] | None = None,
        init_script: str | None = None,
        url: str | None = None,
        motion: bool = False,
        notice_accepted: bool = True,
        **context_options: Any,
    ) -> Person:
        # Headless Chromium composites in software: every animation frame
        # recomputes the glass panels' backdrop blur (about one core per
        # page). Tests that do not look at the page ask for reduced motion,
        # which the CSS honours; the screenshot test keeps it.
        context = browser.new_context(
            viewport=viewport or DESKTOP,
            reduced_motion="no-preference" if motion else "reduce",
            **context_options,
        )
        context.add_init_script(PROBE_JS)
        if notice_accepted:
            # This person accepted the first-visit notice on an earlier visit.
            context.add_init_script(
                f"localStorage.setItem('omiro.notice', {json.dumps(notice_version(server))})"
            )
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        person = Person(page, name)
        opened.append((context, person))
        page.goto(url or server.url + "/")
        page.wait_for_function("() => window.omiro !== undefined", timeout=10_000)
        return person

    yield open_person
    errors = {person.name: person.errors for _, person in opened if person.errors}
    for context, _ in opened:
        context.close()
    assert not errors, f"errors in the page: {errors}"


@pytest.fixture
def pair(people: Callable[..., Person]) -> Callable[..., tuple[Person, Person]]:
    """Factory: pair(server) opens alice and bob, presses Start on both and waits
    until they are matched and their call is connected."""

    def open_pair(server: OmiroServer) -> tuple[Person, Person]:
        alice = people(server, "alice")
        bob = people(server, "bob")
        alice.start()
        bob.start()
        for person in (alice, bob):
            person.wait_state("connected")
        for person in (alice, bob):
            person.wait_call_connected()
        return alice, bob

    return open_pair
