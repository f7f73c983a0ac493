"""Helpers of the container tests (tests/containers): podman, polls, clients."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass

import httpx
import pytest
import trio
from support import Client
from trio_websocket import connect_websocket_url

COMMAND_S = 120.0


def missing(reason: str) -> None:
    """Skip, or fail when ``CI`` is set."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@dataclass
class Podman:
    """How to call podman (and podman-compose) on this machine."""

    env: dict[str, str]
    compose: str | None

    def run(
        self, *args: str, timeout: float = COMMAND_S, check: bool = True, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,  # type: ignore[call-overload]
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}"
            )
        return result


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_http(url: str, wait_s: float = 30.0, status: int = 200) -> bytes:
    """Poll ``url`` (bounded) until it answers ``status``; return the body."""
    deadline = time.monotonic() + wait_s
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=3) as response:
                if response.status == status:
                    return bytes(response.read())
                last = f"status {response.status}"
        except urllib.error.HTTPError as err:
            if err.code == status:
                return bytes(err.read())
            last = f"status {err.code}"
        except (urllib.error.URLError, OSError) as err:
            last = str(err)
        time.sleep(0.2)  # bounded poll of a container, with a deadline
    raise AssertionError(f"{url} never answered {status} within {wait_s} s ({last})")


async def open_client(nursery: trio.Nursery, base_url: str) -> Client:
    """A session from /session/new and its socket, as a browser would do it."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        token = (await http.get("/session/new")).raise_for_status().json()["token"]
    ws_url = base_url.replace("http://", "ws://") + f"/ws?token={token}"
    client = Client(await connect_websocket_url(nursery, ws_url, message_queue_size=64))
    client.hello = await client.expect("hello", 10)
    client.session_id = client.hello["session_id"]
    return client
