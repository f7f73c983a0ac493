"""The compose stack (deploy/compose.yaml) up with podman-compose, proved through Caddy.

Caddy (least connections) spreads sockets over the two replicas; the test finds
one client on each, matches them (across replicas, through Redis), stops one
replica and shows the other keeps serving: health, new sessions, new matches,
and a real relay-only browser call whose media goes through the stack's
coturn with the credentials Omiro derived from the shared secret.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from container_support import Podman, missing, open_client, unique, wait_http
from playwright.sync_api import Page, sync_playwright
from support import CHROMIUM, LAUNCH_ARGS, Client

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
UP_S = 300.0
DOWN_S = 180.0
MAX_CLIENTS = 8  # bound on tries to get one socket on each replica
SELECTED_PAIR = """async () => {
  const stats = await window.omiro.pc.getStats();
  let pair = null;
  stats.forEach((r) => {
    if (r.type === "transport" && r.selectedCandidatePairId) {
      pair = stats.get(r.selectedCandidatePairId);
    }
  });
  return pair && [pair.localCandidateId, pair.remoteCandidateId].map(
    (id) => stats.get(id).candidateType);
}"""


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stack:
    """One compose project, by its unique name."""

    def __init__(self, podman: Podman, project: str, env: dict[str, str]) -> None:
        assert podman.compose is not None
        self.podman = podman
        self.project = project
        self.env = env
        self.http_port = int(env["HTTP_PORT"])
        self.base_url = f"http://127.0.0.1:{self.http_port}"

    def compose(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        assert self.podman.compose is not None
        result = subprocess.run(
            [self.podman.compose, "-p", self.project, "-f", str(COMPOSE_FILE), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"podman-compose {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def container(self, service: str) -> str:
        listed = self.podman.run(
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={self.project}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            "{{.Names}}",
        ).stdout.split()
        assert len(listed) == 1, (service, listed)
        return listed[0]

    def sample(self, service: str, sample: str) -> float:
        """One sample of the replica's own /metrics, read inside its container."""
        script = (
            "import urllib.request as u;"
            "print(u.urlopen('http://127.0.0.1:8080/metrics', timeout=5).read().decode())"
        )
        text = self.podman.run("exec", self.container(service), "python3", "-c", script).stdout
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no {sample} in {service}'s /metrics")

    def connections(self, service: str) -> float:
        return self.sample(service, "omiro_connections")

    def logs(self) -> str:
        out = []
        for service in ("caddy", "omiro1", "omiro2", "redis", "coturn"):
            try:
                result = self.podman.run("logs", self.container(service), check=False)
            except AssertionError as exc:
                out.append(f"--- {service}: {exc}")
                continue
            out.append(f"--- {service}\n{(result.stdout + result.stderr)[-2500:]}")
        return "\n".join(out)


def has_redis_backend(podman: Podman, image: str) -> bool:
    """Whether ``omiro serve`` in the image accepts ``backend.kind = "redis"``.

    A build without it exits 2 at once, saying so; one with it keeps trying
    to reach the (absent) Redis or fails later for that reason.
    """
    name = unique("omiro-redis-probe")
    podman.run(
        "run",
        "-d",
        "--name",
        name,
        "-e",
        "OMIRO_BACKEND_KIND=redis",
        "-e",
        "OMIRO_REDIS_URL=redis://127.0.0.1:9/0",
        image,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            state = json.loads(podman.run("inspect", name).stdout)[0]["State"]
            if state["Status"] == "exited":
                logs = podman.run("logs", name).stderr
                return not (state["ExitCode"] == 2 and "only the memory backend" in logs)
            time.sleep(0.2)  # bounded poll of a container, with a deadline
        return True
    finally:
        podman.run("rm", "-f", name, check=False)


@pytest.fixture
def stack(podman: Podman, image: str) -> Iterator[Stack]:
    if podman.compose is None:
        missing("podman-compose is not installed")
    if not has_redis_backend(podman, image):
        pytest.xfail("this build of Omiro has no Redis backend yet, and the stack runs on it")
    env = {k: v for k, v in podman.env.items() if not k.startswith("OMIRO_")}
    turn_port = free_port()
    subnet = f"10.213.{turn_port % 250}"  # one of its own, beside other runs
    relay_low = 40000 + (turn_port % 20) * 1000  # a small range of its own
    env.update(
        DOMAIN="localhost",
        OMIRO_SESSION_SECRET=os.urandom(32).hex(),
        TURN_SECRET=os.urandom(32).hex(),
        HTTP_PORT=str(free_port()),
        HTTPS_PORT=str(free_port()),
        TURN_PORT=str(turn_port),
        TURN_MIN_PORT=str(relay_low),
        TURN_MAX_PORT=str(relay_low + 20),
        OMIRO_IMAGE=image,
        STACK_SUBNET=f"{subnet}.0/24",
        CADDY_ADDRESS=f"{subnet}.254",  # above what podman hands out first
        OMIRO_ADMIN_TOKEN=os.urandom(16).hex(),
        # Every call through TURN, by the stack's default (relay_only "auto"
        # with coturn configured); both test browsers are on this machine, so
        # coturn must relay between loopback addresses, which it refuses by
        # default (and must, in production).
        TURN_EXTRA_ARGS="--listening-ip=127.0.0.1 --relay-ip=127.0.0.1"
        " --allow-loopback-peers --allowed-peer-ip=127.0.0.1",
    )
    stack = Stack(podman, unique("omiro-stack-test"), env)
    try:
        stack.compose("up", "-d", "--no-build", timeout=UP_S)
        yield stack
    finally:
        print(stack.logs())  # shown by pytest only when the test failed
        stack.compose("down", "-v", "-t", "30", timeout=DOWN_S)


async def client_on_each_replica(stack: Stack, nursery: trio.Nursery) -> dict[str, Client]:
    """Open sockets through Caddy until each replica holds one we know of."""
    found: dict[str, Client] = {}
    counts = {s: stack.connections(s) for s in ("omiro1", "omiro2")}
    for _ in range(MAX_CLIENTS):
        client = await open_client(nursery, stack.base_url)
        now = {s: await trio.to_thread.run_sync(stack.connections, s) for s in counts}
        (landed,) = [s for s in counts if now[s] == counts[s] + 1]
        counts = now
        found.setdefault(landed, client)
        if len(found) == 2:
            return found
    raise AssertionError(f"Caddy put {MAX_CLIENTS} sockets on one replica: {counts}")


async def chat(a: Client, b: Client, text: str) -> None:
    await a.send("chat", {"message": text})
    got = await b.expect("chat", 10)
    assert got == {"message": text, "from": a.session_id}


def test_compose_stack_serves_across_replicas_and_survives_one_stopping(stack: Stack) -> None:
    assert json.loads(wait_http(stack.base_url + "/healthz", wait_s=120)) == {"status": "ok"}
    wait_http(stack.base_url + "/readyz", wait_s=60)
    page = wait_http(stack.base_url + "/")
    assert b"<html" in page.lower()
    wait_http(stack.base_url + "/metrics", status=404)  # scraped per replica, not public

    # Redis keeps an append-only file on its volume.
    redis = stack.container("redis")
    appendonly = stack.podman.run("exec", redis, "redis-cli", "config", "get", "appendonly")
    assert appendonly.stdout.split() == ["appendonly", "yes"]
    # coturn listens on the host network, on the port .env chose.
    socket.create_connection(("127.0.0.1", int(stack.env["TURN_PORT"])), timeout=5).close()

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            on = await client_on_each_replica(stack, nursery)
            a, b = on["omiro1"], on["omiro2"]
            # The hello hands out TURN credentials for the stack's coturn.
            turn = [s for s in a.hello["ice_servers"] if "username" in s]
            assert turn
            assert turn[0]["urls"][0].startswith("turn:localhost:")
            await a.send("join_queue")
            await a.expect("queued", 10)
            await b.send("join_queue")
            found_a = await a.expect("match_found", 10)
            found_b = await b.expect("match_found", 10)
            assert found_a["partner"] == b.session_id
            assert found_b["partner"] == a.session_id
            await chat(a, b, "hello from replica one")
            await chat(b, a, "hello from replica two")

            # Stop replica one: it drains its sockets, replica two serves on.
            nursery.start_soon(
                trio.to_thread.run_sync,
                lambda: stack.podman.run("stop", "-t", "30", stack.container("omiro1")),
            )
            assert "reconnect_after_ms" in await a.expect("server_draining", 15)
            assert await a.expect_closed(30) in (1012, 1001)
            # A drain is not a wish to leave: b's match waits for a's seat.
            assert await b.expect("partner_away", 30) == {"grace_ms": 30000}

            for _ in range(4):  # some would go to omiro1 if Caddy still sent it any
                await trio.to_thread.run_sync(wait_http, stack.base_url + "/healthz")
            # a comes back through Caddy, lands on omiro2 (b's server) and
            # takes its seat back: the call goes on with the same roles.
            a2 = await open_client(nursery, stack.base_url)
            await a2.send("resume", {"ticket": found_a["ticket"]})
            back_a = await a2.expect("resumed", 10)
            back_b = await b.expect("resumed", 10)
            assert back_a["partner"] == b.session_id
            assert back_b["partner"] == a2.session_id
            assert back_a["resumed_from"] == back_b["resumed_from"] == found_a["match_id"]
            assert back_a["should_call"] == found_a["should_call"]
            await chat(a2, b, "back through replica two")
            await chat(b, a2, "welcome back")
            await a2.send("disconnect")
            assert await a2.expect_closed(10) == 1000
            assert await b.expect("partner_disconnected", 10) == {"reason": "left"}

            c = await open_client(nursery, stack.base_url)
            await c.send("join_queue")
            await c.expect("queued", 10)
            await b.send("join_queue")
            assert (await b.expect("match_found", 10))["partner"] == c.session_id
            assert (await c.expect("match_found", 10))["partner"] == b.session_id
            await chat(c, b, "still here")
            await chat(b, c, "me too")
            for client in (b, c):
                await client.send("disconnect")
                assert await client.expect_closed(10) == 1000

    trio.run(scenario)
    state = json.loads(stack.podman.run("inspect", stack.container("omiro1")).stdout)[0]["State"]
    assert state["ExitCode"] == 0  # drained and exited cleanly
    relay_only_browser_call(stack)
    client_address_comes_through_caddy(stack)


def relay_only_browser_call(stack: Stack) -> None:
    """Two Chromium pages at http://localhost (a secure context) call through coturn."""
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is not installed (apt-get install chromium)")
    url = f"http://localhost:{stack.http_port}/"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        try:
            pages: list[Page] = []
            for _ in range(2):
                page = browser.new_context(reduced_motion="reduce").new_page()
                page.goto(url)
                page.wait_for_function("() => window.omiro !== undefined", timeout=15_000)
                page.get_by_test_id("notice-accept").click()  # a first visit: the notice
                page.get_by_test_id("start").click()
                page.wait_for_function(
                    "() => window.omiro.state === 'waiting' || window.omiro.state === 'connected'",
                    timeout=15_000,
                )
                pages.append(page)
            for page in pages:
                page.wait_for_function(
                    "() => window.omiro.pc && window.omiro.pc.connectionState === 'connected'",
                    timeout=30_000,
                    polling=100,
                )
                page.wait_for_function(
                    "() => { const v = document.querySelector('[data-testid=remote-video]');"
                    " return v.videoWidth > 0 && v.currentTime > 0.5; }",
                    timeout=30_000,
                    polling=100,
                )
                assert page.evaluate(SELECTED_PAIR) == ["relay", "relay"]
                page.wait_for_function(
                    "() => window.omiro.call.outcome !== null", timeout=15_000, polling=100
                )
                outcome = page.evaluate("() => window.omiro.call.outcome")
                assert (outcome["outcome"], outcome["path"]) == ("connected", "relay")
        finally:
            browser.close()
    # Both sides' outcomes reached the one replica left serving.
    relayed = 'omiro_calls_total{outcome="connected",path="relay"}'
    deadline = time.monotonic() + 10
    while stack.sample("omiro2", relayed) != 2:
        assert time.monotonic() < deadline, stack.sample("omiro2", relayed)
        time.sleep(0.2)  # bounded poll of a container, with a deadline


def client_address_comes_through_caddy(stack: Stack) -> None:
    """Omiro sees the client's address (from Caddy's X-Forwarded-For), not Caddy's.

    Ban the addresses this test's requests can arrive from (loopback, or the
    network's gateway when the published port is forwarded through it); a
    replica that took Caddy's own address for the client would not refuse.
    """
    network = json.loads(stack.podman.run("network", "inspect", f"{stack.project}_default").stdout)
    gateway = network[0]["subnets"][0]["gateway"]
    admin = {"Authorization": f"Bearer {stack.env['OMIRO_ADMIN_TOKEN']}"}
    with httpx.Client(base_url=stack.base_url, headers=admin, timeout=10) as http:
        assert http.get("/session/new").status_code == 200
        # A client cannot name its own address with a header.
        forged = {"CF-Connecting-IP": "198.51.100.7"}
        ban = {"target": "198.51.100.7", "duration_s": 300, "reason": "compose test"}
        assert http.post("/admin/bans", json=ban).status_code == 201
        assert http.get("/session/new", headers=forged).status_code == 200
        for target in ("127.0.0.1", gateway):
            ban = {"target": target, "duration_s": 300, "reason": "compose test"}
            assert http.post("/admin/bans", json=ban).status_code == 201
        refused = http.get("/session/new")
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "banned"
