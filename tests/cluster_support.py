"""Real ``omiro serve`` processes sharing one real redis-server.

Each ``ServeProcess`` is a child process on 127.0.0.1, port 0 (or a given
port), whose log is read on a thread so it never blocks; clients connect
with tokens signed by the shared ``session.secret``, so any server accepts
them. Servers run with the default timers (heartbeat, dead-after, Redis
timeouts): the tests hold the bounds operators get.

For faults: ``BlackHole`` is a TCP proxy the test owns (in front of Redis:
at the fault its connections stay open and go silent, and new ones reach a
fresh Redis); ``Watched`` is a client whose every frame is logged as it
arrives; ``shared_state_faults`` checks Redis's own records.
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
from contextlib import suppress
from typing import Any

import coredis
import msgspec
import trio
from redis_support import RedisServer, new_prefix
from support import Client
from trio_websocket import ConnectionClosed, connect_websocket_url

from omiro_trio.tokens import TokenSigner

SECRET = "a secret every server of the test shares"
ADMIN_TOKEN = "an-admin-token-for-the-cluster-tests"
SERVE = [sys.executable, "-m", "omiro_trio", "serve", "--host", "127.0.0.1"]
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:(\d+))")
START_S = 60.0  # a wait bound only: a loaded machine has taken over 20 s to start one
STOP_S = 20.0
HEARTBEAT_S = 2.0  # the defaults (redis.heartbeat_s, redis.dead_after_s, redis.timeout_s)
DEAD_AFTER_S = 6.0
TIMEOUT_S = 1.0
SLACK_S = 4.0  # this machine is shared by several test suites: scheduling delays
# docs/operations.md: a dead server's partners are told within dead_after_s
# plus two heartbeats (the sweep's own period, and the dead server's last
# beat being up to one period old); plus a bus hop and the machine's slack.
DEATH_BOUND_S = DEAD_AFTER_S + 2 * HEARTBEAT_S + SLACK_S
# docs/operations.md: after Redis answers again (restarted empty, resumed, or
# a new one behind the same address), every server serves again and has put
# its sessions back within three Redis timeouts plus one heartbeat.
RECOVERY_BOUND_S = 3 * TIMEOUT_S + 1.0 + HEARTBEAT_S + SLACK_S


def cluster_env(redis: RedisServer, prefix: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMIRO_")}
    env.update(
        {
            "OMIRO_BACKEND_KIND": "redis",
            "OMIRO_REDIS_URL": redis.url,
            "OMIRO_REDIS_KEY_PREFIX": prefix or new_prefix(),
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


async def until(check: Any, wait_s: float, interval_s: float = 0.1) -> None:
    """Bounded polling of another process's state: ``await check()`` until it is true."""
    with trio.fail_after(wait_s):
        while not await check():  # noqa: ASYNC110 -- another process's state
            await trio.sleep(interval_s)


async def status_is(server: ServeProcess, path: str, expected: int) -> bool:
    status, _ = await server.aget(path)
    return status == expected


class Watched:
    """A client whose every frame is logged, with its arrival time, by a reader task.

    ``next(op)`` waits for the next frame of ``op`` after those already taken;
    ``seen(op)`` lists every frame of ``op`` so far.
    """

    def __init__(self, client: Client, server: str = "") -> None:
        self.client = client
        self.id = client.session_id
        self.server = server
        self.log: list[tuple[float, str, dict[str, Any]]] = []
        self.closed_code: int | None = None
        self.closed = trio.Event()
        self._changed = trio.Event()
        self._taken: dict[str, int] = {}

    @classmethod
    async def open(
        cls,
        nursery: trio.Nursery,
        server: ServeProcess,
        *,
        name: str = "",
        token_: str | None = None,
    ) -> Watched:
        watched = cls(await connect(nursery, server, token_=token_), name)
        nursery.start_soon(watched._read)
        return watched

    async def _read(self) -> None:
        try:
            while True:
                op, data = await self.client.recv(wait_s=3600)
                self.log.append((trio.current_time(), op, data))
                self._changed.set()
                self._changed = trio.Event()
        except ConnectionClosed as exc:
            self.closed_code = exc.reason.code if exc.reason is not None else None
        finally:
            self.closed.set()
            self._changed.set()

    async def send(self, op: str, data: dict[str, Any] | None = None) -> None:
        await self.client.send(op, data)

    def seen(self, op: str) -> list[dict[str, Any]]:
        return [data for _, got, data in self.log if got == op]

    async def next(self, op: str, wait_s: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(wait_s):
            while True:
                frames = self.seen(op)
                taken = self._taken.get(op, 0)
                if len(frames) > taken:
                    self._taken[op] = taken + 1
                    return frames[taken]
                if self.closed.is_set():
                    raise AssertionError(f"{self.id} closed ({self.closed_code}) before {op}")
                await self._changed.wait()

    def skip_seen(self, op: str) -> None:
        """Take every frame of ``op`` so far: ``next`` waits for a new one."""
        self._taken[op] = len(self.seen(op))


async def watched_pair(
    nursery: trio.Nursery, first_on: ServeProcess, second_on: ServeProcess, mode: str = "text"
) -> tuple[Watched, Watched]:
    """Two watched clients matched with each other; the first waited, so it calls."""
    first = await Watched.open(nursery, first_on)
    second = await Watched.open(nursery, second_on)
    await first.send("join_queue", {"mode": mode})
    await first.next("queued")
    await second.send("join_queue", {"mode": mode})
    found = await first.next("match_found")
    assert found["partner"] == second.id
    assert (await second.next("match_found"))["partner"] == first.id
    return first, second


async def chat_both_ways(first: Watched, second: Watched, text: str, wait_s: float = 10.0) -> None:
    """A chat each way arrives, from the partner, within ``wait_s``."""
    for sender, receiver in ((first, second), (second, first)):
        message = f"{text} from {sender.id}"
        await sender.send("chat", {"message": message})
        with trio.fail_after(wait_s):
            while True:
                got = await receiver.next("chat", wait_s)
                assert got["from"] == sender.id, f"{receiver.id} got a chat from {got['from']}"
                if got["message"] == message:
                    break


async def chats_again(first: Watched, second: Watched, wait_s: float, text: str = "back") -> None:
    """A chat each way gets through within ``wait_s``, sent again while refused or lost
    (the service is back: for a fault's bound)."""
    with trio.fail_after(wait_s):
        attempt = 0
        while True:
            attempt += 1
            try:
                await chat_both_ways(first, second, f"{text} {attempt}", wait_s=2.0)
                return
            except trio.TooSlowError:
                continue  # refused (unavailable) or lost while it was away: again


async def chatter(
    pairs: list[tuple[Watched, Watched]],
    stop: trio.Event,
    interval_s: float = 0.1,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Both sides of every pair send a chat every ``interval_s`` until ``stop``: users
    who keep talking through a fault (their frames may be refused with ``unavailable``)."""
    task_status.started()
    n = 0
    while not stop.is_set():
        n += 1
        for first, second in pairs:
            for client in (first, second):
                with suppress(ConnectionClosed):
                    await client.send("chat", {"message": f"chatter {n}"})
        with trio.move_on_after(interval_s):
            await stop.wait()


def assert_never_ended(*clients: Watched) -> None:
    """None of them was told its match ended, nor that it has no partner."""
    for client in clients:
        ended = client.seen("partner_disconnected")
        assert ended == [], f"{client.id} was told its partner left: {ended}"
        lost = [e for e in client.seen("error") if e.get("code") == "not_matched"]
        assert lost == [], f"{client.id} was told it has no partner: {lost}"
        assert not client.closed.is_set(), f"{client.id} was closed ({client.closed_code})"


SHARED_STATE_FAULTS = """
local P, bad = ARGV[1], {}
for _, key in ipairs(redis.call('KEYS', P .. 'm:*')) do
  local sid = string.sub(key, #P + 3)
  local m = redis.call('HMGET', key, 'id', 'caller', 'callee')
  local other = m[2] == sid and m[3] or m[2]
  if redis.call('HGET', P .. 'm:' .. other, 'id') ~= m[1] then
    bad[#bad + 1] = sid .. ' is in ' .. m[1] .. ' but ' .. other .. ' is not'
  end
  if redis.call('EXISTS', P .. 's:' .. sid) == 0 then
    bad[#bad + 1] = sid .. ' is matched but gone'
  end
  if redis.call('EXISTS', P .. 'w:' .. sid) == 1 then
    bad[#bad + 1] = sid .. ' is matched and waiting'
  end
end
for _, key in ipairs(redis.call('KEYS', P .. 'w:*')) do
  if redis.call('EXISTS', P .. 's:' .. string.sub(key, #P + 3)) == 0 then
    bad[#bad + 1] = key .. ' waits but is gone'
  end
end
return bad
"""
"""Checks Redis's own records atomically: every match symmetric, nobody matched
or waiting without a live session. Returns the faults found (ARGV[1]: the prefix)."""


async def shared_state_faults(url: str, prefix: str) -> list[str]:
    client: coredis.Redis[bytes] = coredis.Redis.from_url(url, stream_timeout=5)
    async with client:
        found = await client.eval(SHARED_STATE_FAULTS, keys=[], args=[prefix])
    return [item.decode() for item in found]  # type: ignore[union-attr]


class BlackHole:
    """A TCP proxy in front of Redis that the test controls.

    Until ``swallow`` it forwards each connection to ``target``. ``swallow``
    is the fault: every connection open at that moment stays open and goes
    silent both ways (as to a lost host, or a failover behind one address),
    and new connections go to ``new_target`` (a fresh Redis).
    """

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.generation = 0
        self._silenced: list[trio.SocketStream] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._serve, listeners)

    def swallow(self, new_target: int) -> None:
        self.generation += 1
        self.target = new_target

    async def _serve(self, downstream: trio.SocketStream) -> None:
        generation = self.generation
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
        except OSError:
            await downstream.aclose()
            return
        async with downstream, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, downstream, upstream, generation)
            nursery.start_soon(self._pump, upstream, downstream, generation)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, generation: int
    ) -> None:
        try:
            while generation == self.generation:
                data = await source.receive_some(65536)
                if not data or generation != self.generation:
                    break
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if generation != self.generation:
            # Swallowed: keep both sockets open, read nothing, send nothing.
            self._silenced.extend((source, sink))
            await trio.sleep_forever()
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await sink.send_eof()
