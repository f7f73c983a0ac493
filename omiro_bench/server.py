"""The server under measurement: its own process, sampled from outside, then stopped.

``start_server`` runs ``omiro serve`` (memory backend; ``SERVER_ENV`` raises
the limits so that the load is not refused) on 127.0.0.1, port 0, on core 0
when asked to pin it. The rest reads such a process from outside: its CPU
time, RSS and run-queue wait from /proc (Linux), its ``/stats`` over HTTP,
and a memory snapshot by signal. Reading costs the server nothing it would
not spend anyway.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from typing import IO

import msgspec

from omiro_trio.diagnostics import TRACEMALLOC_ENV

LISTENING = re.compile(r"listening on (http://\S+)")
STOP_S = 30.0
STATS_TIMEOUT_S = 10.0
SNAPSHOT_WAIT_S = 120.0
MAX_STALL_LINES = 10_000

SERVER_ENV = {
    "OMIRO_ICE_URLS": "[]",
    "OMIRO_LOG_LEVEL": "info",
    "OMIRO_LIMITS_MESSAGES_PER_SECOND": "10000000",
    "OMIRO_LIMITS_MESSAGE_BURST": "10000000",
    "OMIRO_LIMITS_SOCKETS_PER_IP": "1000000",
    "OMIRO_SERVER_CONNECTIONS_PER_IP": "1000000",
    "OMIRO_LIMITS_SESSIONS_PER_IP_PER_MINUTE": "1000000",
}
"""A benchmark server's settings: no STUN, and limits raised so the load is not refused."""


class MeasuredServer:
    """A started server process, and the ``loop stall`` lines of its log.

    A thread reads the server's log for as long as it runs (a full pipe
    would stall it), keeping the stall lines (with ``OMIRO_DEBUG_STALLS_MS``
    set; omiro_trio/diagnostics.py) in ``stall_lines``, at most
    ``MAX_STALL_LINES``. ``stop`` ends the process.
    """

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url
        self.stall_lines: list[str] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def read_log(self, log: IO[str]) -> None:
        """Keep reading ``log`` in a thread of its own until the server closes it."""
        threading.Thread(target=self._keep_stalls, args=(log,), daemon=True).start()

    def _keep_stalls(self, log: IO[str]) -> None:
        for line in log:
            if "loop stall" in line and len(self.stall_lines) < MAX_STALL_LINES:
                self.stall_lines.append(line.rstrip())

    def stop(self) -> None:
        """Terminate the server and wait for it (at most ``STOP_S``)."""
        self.process.terminate()
        self.process.wait(timeout=STOP_S)


def start_server(
    pin: bool, extra_env: dict[str, str] | None = None, command: list[str] | None = None
) -> MeasuredServer:
    """Start ``omiro serve`` (or ``command``) on 127.0.0.1, port 0; returns once it listens.

    The server must print ``listening on http://HOST:PORT`` on stderr. With
    ``pin`` it runs on core 0 only. The caller stops it (``MeasuredServer.stop``).
    """
    env = dict(os.environ)
    env.update(SERVER_ENV)
    env.update(extra_env or {})
    if command is None:
        command = [sys.executable, "-m", "omiro_trio", "serve", "--host", "127.0.0.1"]
        command += ["--port", "0"]
    process = subprocess.Popen(
        command,
        env=env,
        cwd="/",
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if pin else None,
    )
    assert process.stderr is not None
    for line in process.stderr:
        found = LISTENING.search(line)
        if found:
            server = MeasuredServer(process, found.group(1))
            server.read_log(process.stderr)
            return server
    process.wait(timeout=STOP_S)
    raise RuntimeError("the server did not start")


def rss_kib(pid: int) -> int:
    """The resident set size of process ``pid``, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process ``pid`` has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def runqueue_wait_s(pid: int) -> float:
    """Seconds ``pid`` has spent runnable but not running (Linux schedstat; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/schedstat") as schedstat:
            return int(schedstat.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def server_stats(url: str) -> dict[str, float]:
    """The server's ``/stats`` numbers as ``stats_*`` (none from a server without it)."""
    try:
        with urllib.request.urlopen(f"{url}/stats", timeout=STATS_TIMEOUT_S) as response:
            stats = msgspec.json.decode(response.read())
    except (OSError, ValueError, msgspec.DecodeError):
        return {}
    return {f"stats_{k}": v for k, v in stats.items() if isinstance(v, int | float)}


def snapshot(pid: int) -> None:
    """Ask a server tracing allocations (``OMIRO_DEBUG_TRACEMALLOC``) for a snapshot, and wait."""
    directory = os.environ.get(TRACEMALLOC_ENV)
    if not directory:
        return
    before = _snapshots(directory)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + SNAPSHOT_WAIT_S
    while _snapshots(directory) == before:  # a large heap takes seconds; not measured
        if time.monotonic() > deadline:
            raise RuntimeError(f"no memory snapshot in {directory} after {SNAPSHOT_WAIT_S} s")
        time.sleep(0.05)


def _snapshots(directory: str) -> int:
    return sum(1 for name in os.listdir(directory) if name.endswith(".tracemalloc"))
