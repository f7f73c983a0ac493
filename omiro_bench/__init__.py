"""``omiro bench``: the load generator that measures a real ``omiro serve`` on loopback.

A package of its own beside the server (``omiro_trio`` imports nothing from
it); ``omiro bench`` reaches it through the ``omiro.commands`` entry point.
This module starts and samples the server under measurement; the scenarios
are in ``scenarios.py``, their client in ``client.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

LISTENING = re.compile(r"listening on (http://\S+)")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def start_server(
    pin: bool, extra_env: dict[str, str] | None = None, command: list[str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start ``omiro serve`` (or ``command``) on 127.0.0.1, port 0; returns it and its URL.

    The server must print ``listening on http://HOST:PORT`` on stderr. With
    ``pin`` it runs on core 0 only.
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
            # Keep reading its log, or a full pipe would stall the server.
            threading.Thread(target=_drain, args=(process.stderr,), daemon=True).start()
            return process, found.group(1)
    raise RuntimeError("the server did not start")


STALL_LINES: list[str] = []
"""The server's ``loop stall`` log lines (with ``OMIRO_DEBUG_STALLS_MS`` set; diagnostics.py)."""


def _drain(pipe: Any) -> None:
    for line in pipe:
        if "loop stall" in line and len(STALL_LINES) < 10_000:
            STALL_LINES.append(line.rstrip())


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
