"""Real ``omiro serve`` processes sharing one real redis-server.

Each ``ServeProcess`` is a child process on 127.0.0.1, port 0 (or a given
port), whose log is read on a thread so it never blocks; clients connect
with tokens signed by the shared ``session.secret``, so any server accepts
them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import msgspec
import trio
from redis_support import RedisServer, new_prefix
from support import Client
from trio_websocket import connect_websocket_url

from omiro_trio.tokens import TokenSigner

SECRET = "a secret every server of the test shares"
ADMIN_TOKEN = "an-admin-token-for-the-cluster-tests"
SERVE = [sys.executable, "-m", "omiro_trio", "serve", "--host", "127.0.0.1"]
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")
START_S = 20.0
STOP_S = 20.0
HEARTBEAT_S = 0.5
DEAD_AFTER_S = 2.0
# A killed server's partners are told within dead_after_s plus one sweep
# interval (the heartbeat) plus a bus hop; this is the tests' deadline for it.
DEATH_BOUND_S = DEAD_AFTER_S + HEARTBEAT_S + 3.0


def cluster_env(redis: RedisServer, prefix: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMIRO_")}
    env.update(
        {
            "OMIRO_BACKEND_KIND": "redis",
            "OMIRO_REDIS_URL": redis.url,
            "OMIRO_REDIS_KEY_PREFIX": prefix or new_prefix(),
            "OMIRO_REDIS_HEARTBEAT_S": str(HEARTBEAT_S),
            "OMIRO_REDIS_DEAD_AFTER_S": str(DEAD_AFTER_S),
            # This machine is shared and loaded: a slow reply is not an outage here.
            "OMIRO_REDIS_TIMEOUT_S": "5",
            "OMIRO_SESSION_SECRET": SECRET,
            "OMIRO_ADMIN_TOKEN": ADMIN_TOKEN,
            "OMIRO_ICE_URLS": "[]",
            "OMIRO_SERVER_DRAIN_GRACE_S": "0.5",
            "OMIRO_SERVER_TRUSTED_PROXIES": '["127.0.0.1/32"]',
            "OMIRO_MATCHMAKING_INTEREST_TIMEOUT_S": "0.2",
            "OMIRO_LOG_LEVEL": "info",
        }
    )
    env.update(extra)
    return env


class ServeProcess:
    """One ``omiro serve`` child process."""

    def __init__(self, env: dict[str, str], *args: str, port: int = 0) -> None:
        self.env = env
        self.args = args
        self.port = port
        self.url = ""
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    def start(self) -> ServeProcess:
        self._ready.clear()
        self.url = ""
        self.proc = subprocess.Popen(
            [*SERVE, "--port", str(self.port), *self.args],
            cwd=tempfile.gettempdir(),  # the installed package, never the source tree
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_log, args=(self.proc,), daemon=True).start()
        if not self._ready.wait(START_S) or not self.url:
            self.kill()
            raise RuntimeError("omiro serve did not start:\n" + "".join(self.lines[-30:]))
        self.port = int(self.url.rsplit(":", 1)[1])
        deadline = time.monotonic() + START_S
        while self.get("/healthz")[0] != 200:
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("omiro serve never answered /healthz")
            time.sleep(0.05)  # bounded poll of an external process
        return self

    def _read_log(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match and not self._ready.is_set():
                self.url = match.group(1)
                self._ready.set()
        self._ready.set()

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def get(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        """One HTTP request; returns (status, JSON body or None)."""
        request = urllib.request.Request(self.url + path, **kwargs)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, msgspec.json.decode(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            body = exc.read()
            return exc.code, msgspec.json.decode(body) if body else None
        except (urllib.error.URLError, OSError):
            return 0, None

    async def aget(self, path: str, **kwargs: Any) -> tuple[int, Any]:
        return await trio.to_thread.run_sync(lambda: self.get(path, **kwargs))

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> int:
        """SIGTERM, wait for the drain; returns the exit code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else 0
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError("omiro serve did not exit within the drain deadline") from None

    def kill(self) -> None:
        """SIGKILL: the server vanishes without a word to anyone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return "".join(self.lines)


def token() -> str:
    """A fresh session's token, valid on every server of the test."""
    return TokenSigner(SECRET.encode(), 600).issue(time.time()).token


async def connect(
    nursery: trio.Nursery,
    server: ServeProcess,
    *,
    ip: str | None = None,
    token_: str | None = None,
) -> Client:
    """A client of ``server`` (from ``ip``, told through X-Forwarded-For)."""
    headers = [("X-Forwarded-For", ip)] if ip else None
    ws = await connect_websocket_url(
        nursery,
        f"{server.ws_url}?token={token_ or token()}",
        extra_headers=headers,
        message_queue_size=4096,
    )
    client = Client(ws)
    client.hello = await client.expect("hello")
    client.session_id = client.hello["session_id"]
    return client
