"""``omiro serve --workers N``: N server processes sharing one port, supervised.

The parent reserves the port (a bound, never listening ``SO_REUSEPORT``
socket, so port 0 picks one port for all), starts N workers that each listen
on it with ``SO_REUSEPORT`` (the kernel spreads connections over them), and
restarts a worker that exits without being asked to, after a short, growing
pause. SIGTERM or SIGINT is passed on to every worker, which drains; the
parent waits for them (``drain_grace_s`` plus a margin), kills the ones still
running, and exits.

The workers share state only through the backend, so N > 1 needs the Redis
backend: with the memory backend each worker would be a separate service.
Each worker gets its id in the backend's registry from the supervisor, and
a restarted worker names the one it replaces: that one is known to be dead,
so its users' partners are told and its sessions freed as soon as the new
worker is up, not after ``redis.dead_after_s``.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import trio

from omiro_trio.addresses import base_url
from omiro_trio.config import Config
from omiro_trio.errors import ConfigError

log = logging.getLogger("omiro.workers")

RESTART_PAUSES_S = (0.2, 0.5, 1.0, 2.0, 5.0)
STEADY_S = 30.0  # a worker that ran this long resets its restart pause
STOP_MARGIN_S = 10.0


def check_workers(config: Config, workers: int) -> None:
    """Raise ``ConfigError`` when ``workers`` cannot work with ``config``."""
    if workers < 1:
        raise ConfigError("--workers: must be at least 1")
    if workers > 1 and config.backend.kind == "memory":
        raise ConfigError(
            f'--workers {workers} needs backend.kind = "redis": with the memory backend '
            "each worker would keep its own queue, sessions and bans, and users on "
            "different workers could never meet"
        )


def _reserve_port(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


async def supervise(config: Config, workers: int, config_path: Path | None) -> None:
    """Run ``workers`` worker processes until SIGTERM/SIGINT, restarting any that die."""
    host = config.server.host
    reserved = _reserve_port(host, config.server.port)
    port = reserved.getsockname()[1]
    command = [sys.executable, "-m", "omiro_trio", "serve", "--host", host, "--port", str(port)]
    if config_path is not None:
        command += ["--config", str(config_path)]
    command.append("--reuse-port")
    stopping = False
    processes: dict[int, trio.Process] = {}
    run = uuid.uuid4().hex[:8]

    async def worker(number: int) -> None:
        failures = 0
        generation = 0
        replaces: list[str] = []
        while not stopping:
            started = trio.current_time()
            server_id = f"{run}w{number}g{generation}"
            generation += 1
            # Its own session: a terminal's Ctrl-C reaches the parent only,
            # which passes one SIGTERM on (a second signal stops a worker at once).
            process = await trio.lowlevel.open_process(
                [*command, "--server-id", server_id, *replaces],
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            replaces = ["--replaces", server_id]
            processes[number] = process
            log.info("worker %d started (pid %d)", number, process.pid)
            if stopping:
                process.send_signal(signal.SIGTERM)
            code = await process.wait()
            if stopping:
                log.info("worker %d stopped (exit %d)", number, code)
                return
            if trio.current_time() - started > STEADY_S:
                failures = 0
            pause = RESTART_PAUSES_S[min(failures, len(RESTART_PAUSES_S) - 1)]
            failures += 1
            log.warning(
                "worker %d (pid %d) exited with %d; restarting in %.1f s",
                number,
                process.pid,
                code,
                pause,
            )
            await trio.sleep(pause)

    try:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                for number in range(1, workers + 1):
                    nursery.start_soon(worker, number)
                log.info(
                    "Omiro supervising %d workers on %s (backend: %s)",
                    workers,
                    base_url(host, port),
                    config.backend.kind,
                )
                async for signum in signals:
                    log.info("%s: draining every worker", signal.Signals(signum).name)
                    stopping = True
                    for process in processes.values():
                        if process.returncode is None:
                            process.send_signal(signal.SIGTERM)
                    break
                with trio.move_on_after(config.server.drain_grace_s + STOP_MARGIN_S):
                    for process in processes.values():
                        await process.wait()
                for process in processes.values():
                    if process.returncode is None:
                        log.warning("worker pid %d did not stop in time: killing it", process.pid)
                        process.kill()
                nursery.cancel_scope.cancel()
    finally:
        reserved.close()
    log.info("Omiro stopped")
