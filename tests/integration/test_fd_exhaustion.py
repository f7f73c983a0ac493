"""Out of file descriptors: a flood is refused or shed, and the server recovers.

A real ``omiro serve`` runs with ``RLIMIT_NOFILE`` of ``FD_LIMIT`` (set in the
child before it starts), so a flood of held-open connections exhausts its
descriptors and ``accept`` fails with ``EMFILE``. The accept loop must
survive that (trio's own would log a traceback on every retry), and an
ordinary client must get a session within a few seconds once the flood
stops. Loopback only; every wait bounded.
"""

from __future__ import annotations

import resource
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from support import ServeProcess
from trio_websocket import connect_websocket_url

FD_LIMIT = 64
FLOOD = 300
START_S = 20.0
RECOVER_S = 5.0


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


def start_server(tmp_path: Path) -> ServeProcess:
    return ServeProcess(
        tmp_path,
        # Let the flood reach the fd limit.
        {"OMIRO_SERVER_CONNECTIONS_PER_IP": "100000"},
        preexec_fn=_low_fd_limit,
        start_s=START_S,
    )


@pytest.fixture
def omiro(tmp_path: Path) -> Any:
    server = start_server(tmp_path)
    yield server
    server.kill()


async def ordinary_client(url: str) -> None:
    """What the page does: a token, then a socket that says hello."""
    async with httpx.AsyncClient(base_url=url, timeout=2) as http:
        token = (await http.get("/session/new")).json()["token"]
    ws_url = url.replace("http://", "ws://") + f"/ws?token={token}"
    async with trio.open_nursery() as nursery:
        ws = await connect_websocket_url(nursery, ws_url)
        assert '"hello"' in await ws.get_message()
        await ws.aclose()


async def test_fd_exhaustion_flood_then_an_ordinary_client_gets_a_session(
    omiro: ServeProcess,
) -> None:
    flood: list[trio.SocketStream] = []
    with trio.fail_after(30):
        for _ in range(FLOOD):
            try:
                flood.append(await trio.open_tcp_stream("127.0.0.1", omiro.port))
            except OSError:
                break  # the listen backlog is full too: refused, as it should be
        # The server is out of descriptors now: it cannot even answer.
        async with httpx.AsyncClient(base_url=omiro.url, timeout=1) as http:
            with pytest.raises(httpx.HTTPError):
                await http.get("/healthz")
        assert omiro.process.poll() is None, "".join(omiro.log)
        for stream in flood:
            await stream.aclose()
    started = time.monotonic()
    with trio.fail_after(RECOVER_S):
        while True:
            try:
                await ordinary_client(omiro.url)
                break
            except (OSError, httpx.HTTPError, trio.BrokenResourceError):
                await trio.sleep(0.1)
    recovered_s = time.monotonic() - started
    async with httpx.AsyncClient(base_url=omiro.url, timeout=2) as http:
        metrics = (await http.get("/metrics")).text
    accept_errors = [
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("omiro_accept_errors_total ")
    ]
    assert len(accept_errors) == 1, metrics
    assert accept_errors[0] > 0, metrics
    omiro.process.send_signal(signal.SIGTERM)
    assert omiro.process.wait(timeout=START_S) == 0
    log = "".join(omiro.log)
    assert "Traceback" not in log, log[-5000:]
    assert "cannot accept connections" in log
    assert recovered_s < RECOVER_S
