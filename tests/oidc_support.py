"""A real OpenID Connect provider for the ``oidc`` gate's tests.

``running_provider()`` starts ``tests/oidc/provider.mjs`` (the certified
``oidc-provider`` package on Node) on a free port of 127.0.0.1, waits until
its discovery document answers (polling, within ``READY_S``), and stops it
by its pid. Its client ``omiro`` may be sent back to any loopback
``/gate/oidc/callback``; its test accounts are listed in provider.mjs.

``sign_in`` drives the provider's login form over HTTP as a browser would:
follow the provider's redirects to its login page, post the account, and
return the callback URL the provider sends the browser back to.

Without Node.js or ``npm ci --prefix tests/oidc`` the tests that need it
skip, unless ``CI`` is set: then they fail (CI installs both).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from redis_support import free_port

HERE = Path(__file__).resolve().parent / "oidc"
READY_S = 30.0
CLIENT_ID = "omiro"
CLIENT_SECRET = "omiro-test-secret"
HOPS = 8


def provider_missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


@dataclass(frozen=True)
class Provider:
    """A running test provider."""

    issuer: str

    def gate_config(self, **extra: Any) -> dict[str, Any]:
        """``start_server`` overrides (``table__key``) for an ``oidc`` gate at this provider."""
        return {
            "gate__kind": "oidc",
            "gate__oidc_issuer": self.issuer,
            "gate__oidc_client_id": CLIENT_ID,
            "gate__oidc_client_secret": CLIENT_SECRET,
            **extra,
        }


@contextmanager
def running_provider() -> Iterator[Provider]:
    node = shutil.which("node")
    if node is None:
        provider_missing("Node.js is not installed (apt-get install nodejs npm)")
    if not (HERE / "node_modules" / "oidc-provider").is_dir():
        provider_missing("oidc-provider is not installed (npm ci --prefix tests/oidc)")
    port = free_port()
    process = subprocess.Popen(
        [str(node), str(HERE / "provider.mjs"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    issuer = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_S
        while True:
            if process.poll() is not None:
                out = process.stdout.read().decode() if process.stdout else ""
                raise RuntimeError(f"the test provider exited {process.returncode}: {out}")
            try:
                found = httpx.get(issuer + "/.well-known/openid-configuration", timeout=2)
                if found.status_code == 200 and found.json()["issuer"] == issuer:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test provider did not answer within {READY_S} s")
            time.sleep(0.05)  # polling a child process's readiness, bounded by the deadline
        yield Provider(issuer)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def sign_in(client: httpx.Client, login_url: str, account: str) -> str:
    """Follow ``login_url`` (the server's ``/gate/oidc/login``) through the provider,
    sign in as ``account`` and return the callback URL (not yet opened).

    ``client`` keeps the cookies of both the server and the provider.
    """
    url = login_url
    for _ in range(HOPS):
        answer = client.get(url)
        if answer.is_redirect:
            url = urljoin(url, answer.headers["location"])
            if "/gate/oidc/callback" in url:
                return url  # the provider remembered this browser's sign-in
            continue
        assert answer.status_code == 200, answer.text
        assert "/interaction/" in url, url
        break
    else:
        raise AssertionError("too many redirects before the provider's login page")
    answer = client.post(url.rstrip("/") + "/login", data={"account": account})
    for _ in range(HOPS):
        assert answer.is_redirect, answer.text
        target = urljoin(str(answer.url), answer.headers["location"])
        if "/gate/oidc/callback" in target:
            return target
        answer = client.get(target)
    raise AssertionError("the provider never sent the browser back")
