"""Fixtures for the call browser tests: a real coturn on loopback, /metrics.

coturn is Debian's ``turnserver`` with the flags ``../shared/TESTING.md``
found to work on loopback: ``--allow-loopback-peers`` (else CREATE_PERMISSION
answers 403) and a ``--realm`` (else endless 401s). Its pid file and database
go to the test's temporary directory; it is stopped by its pid.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TURNSERVER = Path("/usr/bin/turnserver")
START_S = 10.0
STOP_S = 5.0
REALM = "omiro.test"


@dataclass
class Turn:
    """A running coturn: where it listens and the secret it shares with Omiro."""

    port: int
    secret: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def omiro_env(
        self, *, secret: str | None = None, relay_only: str | None = "true"
    ) -> dict[str, str]:
        """``OMIRO_ICE_*`` settings for a server using this coturn.

        ``relay_only``: the value of ``OMIRO_ICE_RELAY_ONLY``, or ``None`` to
        leave it at its default (``"auto"``).
        """
        env = {
            "OMIRO_ICE_TURN_URLS": f'["{self.url}"]',
            "OMIRO_ICE_TURN_SECRET": self.secret if secret is None else secret,
        }
        if relay_only is not None:
            env["OMIRO_ICE_RELAY_ONLY"] = relay_only
        return env


def _free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (coturn takes no port 0)."""
    for _ in range(20):
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no port free for both TCP and UDP")


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Turn]:
    """coturn with ``use-auth-secret`` on 127.0.0.1, relaying on 127.0.0.1."""
    if not TURNSERVER.exists():
        _missing(f"{TURNSERVER} is not installed (apt-get install coturn)")
    port = _free_port()
    secret = os.urandom(16).hex()
    log = tmp_path / "turnserver.log"
    args = [
        str(TURNSERVER),
        "-n",
        "--verbose",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        "--use-auth-secret",
        f"--static-auth-secret={secret}",
        f"--realm={REALM}",
        "--allow-loopback-peers",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--log-file=stdout",
        f"--pidfile={tmp_path / 'turnserver.pid'}",
        f"--db={tmp_path / 'turndb.sqlite'}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    turn = Turn(port, secret, proc, log)
    try:
        deadline = time.monotonic() + START_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError("turnserver exited:\n" + log.read_text(errors="replace")[-3000:])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("turnserver never listened") from None
                time.sleep(0.05)  # bounded poll of an external process, with a deadline
        yield turn
    finally:
        proc.terminate()
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_S)


class Metrics:
    """Reads one server's /metrics samples by their exact name and labels."""

    CONNECTED_DIRECT = 'omiro_calls_total{outcome="connected",path="direct"}'
    CONNECTED_RELAY = 'omiro_calls_total{outcome="connected",path="relay"}'
    FAILED = 'omiro_calls_total{outcome="failed",path="none"}'

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, sample: str) -> float:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as response:
            text = response.read().decode()
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no sample {sample!r} in /metrics")

    def wait(self, sample: str, value: float, wait_s: float = 10.0) -> None:
        """Poll (bounded) until ``sample`` has ``value``."""
        deadline = time.monotonic() + wait_s
        while (got := self.get(sample)) != value:
            if time.monotonic() > deadline:
                raise AssertionError(f"{sample} is {got}, not {value}")
            time.sleep(0.05)  # bounded poll of another process, with a deadline


@pytest.fixture
def metrics() -> type[Metrics]:
    """``metrics(server.url)`` reads that server's samples."""
    return Metrics
