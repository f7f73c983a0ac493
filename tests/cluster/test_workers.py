"""``omiro serve --workers 2`` on Redis: one port, two supervised processes, one service."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
import trio
from cluster_support import ServeProcess, cluster_env, connect, token
from redis_support import RedisServer
from support import Client

MAX_CLIENTS = 64  # connections until both workers have one (all on one: p = 2**-63)
WAIT_S = 15.0
CONNECT_BOUND_S = 2.0  # a fresh connection while a worker restarts (it is ~10 ms normally)
REPLACED_BOUND_S = 3.0  # after the new worker listens, what the dead one held is freed
PID = re.compile(r"pid=(\d+)")


def _ss(*args: str) -> list[str]:
    if shutil.which("ss") is None:
        if os.environ.get("CI"):
            pytest.fail("ss (iproute2) is missing (CI is set, so this is a failure)")
        pytest.skip("ss (iproute2) is not installed")
    result = subprocess.run(["ss", "-Htnp", *args], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def listening_pids(port: int) -> set[int]:
    return {int(p) for line in _ss("-l", f"sport = :{port}") for p in PID.findall(line)}


def worker_of(client: Client, port: int) -> int:
    """The pid of the worker holding ``client``'s connection."""
    local_port = client.ws._stream.socket.getsockname()[1]  # type: ignore[attr-defined]
    lines = _ss("state", "established", f"( sport = :{port} and dport = :{local_port} )")
    pids = {int(p) for line in lines for p in PID.findall(line)}
    assert len(pids) == 1, lines
    return pids.pop()


async def test_two_workers_share_the_port_match_across_restart_and_drain(
    redis_server: RedisServer, nursery: trio.Nursery
) -> None:
    server = ServeProcess(cluster_env(redis_server), "--workers", "2")
    await trio.to_thread.run_sync(server.start)
    try:
        with trio.fail_after(WAIT_S):
            while len(listening_pids(server.port)) < 2:  # noqa: ASYNC110 -- another process
                await trio.sleep(0.05)
        workers = listening_pids(server.port)
        assert len(workers) == 2
        # Clients spread over the workers by the kernel; take one on each.
        on: dict[int, Client] = {}
        second_token_of: dict[str, str] = {}
        for _ in range(MAX_CLIENTS):
            minted = token()
            client = await connect(nursery, server, token_=minted)
            second_token_of[client.session_id] = minted
            on.setdefault(worker_of(client, server.port), client)
            if len(on) == 2:
                break
        assert set(on) == workers
        first, second = on.values()
        await first.send("join_queue")
        await first.expect("queued")
        await second.send("join_queue")
        assert (await first.expect("match_found"))["partner"] == second.session_id
        assert (await second.expect("match_found"))["partner"] == first.session_id
        await first.send("chat", {"message": "across workers"})
        assert (await second.expect("chat"))["message"] == "across workers"

        # A worker killed is restarted. Connections meanwhile go to the
        # workers that accept them (none waits on one still starting); the
        # new worker frees what the dead one held as soon as it is up: its
        # client's partner is told, and its client's token connects again.
        second_token = second_token_of[second.session_id]
        killed = worker_of(second, server.port)
        told = trio.Event()
        slowest = 0.0

        async def partner_hears() -> None:
            assert await first.expect("partner_disconnected", wait_s=WAIT_S) == {"reason": "left"}
            told.set()

        async def probe_connects(done: trio.Event) -> None:
            nonlocal slowest
            while not done.is_set():
                start = trio.current_time()
                async with trio.open_nursery() as probing:
                    probe = await connect(probing, server)
                    await probe.send("disconnect")
                    probing.cancel_scope.cancel()
                slowest = max(slowest, trio.current_time() - start)
                await trio.sleep(0.1)  # pacing the probes

        up = trio.Event()
        async with trio.open_nursery() as watching:
            watching.start_soon(partner_hears)
            watching.start_soon(probe_connects, up)
            os.kill(killed, signal.SIGKILL)
            with trio.fail_after(WAIT_S):
                while True:
                    pids = listening_pids(server.port)
                    if len(pids) == 2 and killed not in pids:
                        break
                    await trio.sleep(0.05)
            up_at = trio.current_time()
            up.set()
            with trio.fail_after(WAIT_S):
                await told.wait()
            assert trio.current_time() - up_at < REPLACED_BOUND_S
        assert slowest < CONNECT_BOUND_S, (
            f"a connection took {slowest:.2f} s while a worker restarted"
        )
        assert "restarting" in server.log()
        with trio.fail_after(REPLACED_BOUND_S):
            back = await connect(nursery, server, token_=second_token)
        assert back.session_id == second.session_id

        # SIGTERM drains every worker, and the supervisor exits 0.
        server.signal(signal.SIGTERM)
        assert (await first.expect("server_draining", wait_s=WAIT_S))["reconnect_after_ms"] > 0
        await first.expect_closed(wait_s=WAIT_S)
        assert server.proc is not None
        proc = server.proc
        assert await trio.to_thread.run_sync(lambda: proc.wait(WAIT_S)) == 0
        assert listening_pids(server.port) == set()
    finally:
        server.kill()


def test_several_workers_with_the_memory_backend_is_refused_with_the_reason() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMIRO_")}
    result = subprocess.run(
        [sys.executable, "-m", "omiro_trio", "serve", "--workers", "2", "--port", "0"],
        cwd=tempfile.gettempdir(),
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert result.returncode == 2
    assert 'needs backend.kind = "redis"' in result.stderr
    assert "could never meet" in result.stderr
