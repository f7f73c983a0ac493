"""The ``omiro`` command as a user runs it: real processes, real signals."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

START_S = 20.0
OMIRO = str(Path(sys.executable).with_name("omiro"))  # the installed console script
LISTENING = re.compile(r"listening on (http://\S+)")


def omiro_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMIRO_")}
    env.update(OMIRO_ICE_URLS="[]", **extra)
    return env


def run_omiro(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``omiro`` console script to completion."""
    return subprocess.run(
        [OMIRO, *args],
        cwd=cwd,
        env=omiro_env(**env),
        capture_output=True,
        text=True,
        timeout=START_S,
    )


class ServerProcess:
    def __init__(self, process: subprocess.Popen[str], url: str, log: list[str]) -> None:
        self.process = process
        self.url = url
        self.log = log

    def stop(self, signum: int) -> tuple[int, str]:
        self.process.send_signal(signum)
        _, err = self.process.communicate(timeout=START_S)
        return self.process.returncode, "".join(self.log) + err


def start_serve(tmp_path: Path, **env: str) -> ServerProcess:
    """Start ``python -m omiro_trio serve`` on a free port; return once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-m", "omiro_trio", "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=tmp_path,  # never the source tree: the installed package runs
        env=omiro_env(**env),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    log: list[str] = []
    url = None
    for line in process.stderr:  # bounded by the pytest timeout and START_S below
        log.append(line)
        found = LISTENING.search(line)
        if found:
            url = found.group(1)
            break
    assert url is not None, "".join(log)
    return ServerProcess(process, url, log)


@pytest.fixture
def omiro_serve(tmp_path: Path) -> Iterator[ServerProcess]:
    server = start_serve(tmp_path)
    yield server
    if server.process.poll() is None:
        server.process.kill()
        server.process.communicate(timeout=START_S)


def test_serve_json_logs_are_one_object_a_line(tmp_path: Path) -> None:
    server = start_serve(tmp_path, OMIRO_LOG_FORMAT="json")
    code, log = server.stop(signal.SIGTERM)
    assert code == 0, log
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert len(entries) >= 3
    for entry in entries:
        assert set(entry) >= {"ts", "level", "logger", "message"}, entry
    assert any("listening on http://127.0.0.1:" in e["message"] for e in entries)
    assert entries[-1]["message"] == "Omiro stopped"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_stops_cleanly_on_signal(omiro_serve: ServerProcess, signum: int) -> None:
    assert httpx.get(f"{omiro_serve.url}/healthz", timeout=5).json() == {"status": "ok"}
    code, log = omiro_serve.stop(signum)
    assert code == 0, log
    assert "Traceback" not in log
    assert "draining" in log
    assert "Omiro stopped" in log


def test_serve_logs_random_secret_warning(omiro_serve: ServerProcess) -> None:
    assert any("no session.secret configured" in line for line in omiro_serve.log)
    omiro_serve.stop(signal.SIGTERM)


def test_serve_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "omiro_trio", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=omiro_env(),
            capture_output=True,
            text=True,
            timeout=START_S,
        )
    assert result.returncode == 1
    assert "could not start" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_unavailable_backend_exits_2(tmp_path: Path) -> None:
    result = run_omiro(tmp_path, "serve", "--port", "0", OMIRO_BACKEND_KIND="redis")
    assert result.returncode == 2
    assert "backend.kind = 'redis'" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_relay_runs_and_reports_json(tmp_path: Path) -> None:
    result = run_omiro(
        tmp_path,
        "bench", "relay", "--pairs", "2", "--idle", "3", "--messages", "20",
        "--window", "4", "--rate", "40", "--seconds", "0.5", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["args"]["pairs"] == 2
    assert report["throughput_msgs_per_s"] > 0
    assert report["latency_samples"] == 20  # 40 frames/s for 0.5 s, over 2 pairs
    assert report["rss_idle_kib"] >= report["rss_empty_kib"] > 0


def test_bench_relay_without_json_prints_one_line_a_result(tmp_path: Path) -> None:
    result = run_omiro(
        tmp_path,
        "bench", "relay", "--pairs", "2", "--idle", "0", "--messages", "20",
        "--window", "4", "--rate", "40", "--seconds", "0.5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert int(lines["throughput_msgs_per_s"]) > 0
    assert lines["latency_samples"] == "20"
    assert "args" not in lines  # the options are in the JSON report only


def test_bench_is_a_command_of_omiro(tmp_path: Path) -> None:
    listed = run_omiro(tmp_path, "--help")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^  bench +Measure a real", listed.stdout, re.MULTILINE)
    relay = run_omiro(tmp_path, "bench", "relay", "--help")
    assert relay.returncode == 0, relay.stderr
    assert "--pairs" in relay.stdout
    assert "--json" in relay.stdout
    unknown = run_omiro(tmp_path, "benchmark")
    assert unknown.returncode == 2
    assert "No such command 'benchmark'" in unknown.stderr


def _websocket_hello(url: str, token: str) -> bytes:
    """Upgrade ``/ws`` with ``token`` on a plain socket; returns what came until ``hello``."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=START_S) as sock:
        head = (
            f"GET /ws?token={token} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        sock.sendall(head.encode())
        received = b""
        while b'"op":"hello"' not in received:
            chunk = sock.recv(65536)  # each read bounded by the socket's timeout
            if not chunk:
                break
            received += chunk
    return received


def test_serve_imports_nothing_of_the_bench_lab(tmp_path: Path) -> None:
    """``omiro serve`` starting, answering HTTP and a WebSocket, and stopping."""
    server = start_serve(tmp_path, PYTHONPROFILEIMPORTTIME="1")
    try:
        assert httpx.get(f"{server.url}/", timeout=START_S).status_code == 200
        token = httpx.get(f"{server.url}/session/new", timeout=START_S).json()["token"]
        hello = _websocket_hello(server.url, token)
        assert hello.startswith(b"HTTP/1.1 101"), hello[:200]
        assert b'"op":"hello"' in hello
    finally:
        code, log = server.stop(signal.SIGTERM)
    assert code == 0, log
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in log.splitlines()
        if line.startswith("import time:")
    }
    assert {"omiro_trio.server", "omiro_trio.wsengine"} <= imported  # the profile saw serving
    assert {
        name for name in imported if name.split(".")[0] in ("omiro_bench", "trio_websocket")
    } == set()


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    config = tmp_path / "omiro.toml"
    config.write_text("[server]\nport = 9000\n[limits]\nmax_chat_length = 500\n")
    result = run_omiro(
        tmp_path,
        "check-config",
        "--config",
        str(config),
        OMIRO_SESSION_SECRET="hunter2" * 5,
        OMIRO_ADMIN_TOKEN="t0ken" * 7,
    )
    assert result.returncode == 0, result.stderr
    assert "port = 9000" in result.stdout
    assert "max_chat_length = 500" in result.stdout
    assert 'secret = "***"' in result.stdout
    assert "hunter2" not in result.stdout
    assert "t0ken" not in result.stdout


def test_check_config_names_the_bad_key_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "omiro.toml"
    config.write_text("[server]\nprot = 9000\n")
    result = run_omiro(tmp_path, "check-config", "--config", str(config))
    assert result.returncode == 2
    assert "server.prot" in result.stderr
    assert str(config) in result.stderr


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"OMIRO_SERVER_IDLE_TIMEOUT_S": "0"}, "server.idle_timeout_s"),
        ({"OMIRO_LIMITS_SOCKETS_PER_IP": "0"}, "limits.sockets_per_ip"),
        ({"OMIRO_SESSION_SECRET": "too-short"}, "session.secret"),
        ({"OMIRO_ADMIN_TOKEN": "too-short"}, "admin.token"),
    ],
)
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_out_of_range_values_exit_2_naming_the_key(
    tmp_path: Path, env: dict[str, str], key: str, command: str
) -> None:
    args = ("serve", "--port", "0") if command == "serve" else ("check-config",)
    result = run_omiro(tmp_path, *args, **env)
    assert result.returncode == 2, result.stderr
    assert key in result.stderr
    assert "too-short" not in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_reads_omiro_config_env(tmp_path: Path) -> None:
    config = tmp_path / "elsewhere.toml"
    config.write_text('[backend]\nkind = "memory"\n[matchmaking]\ninterest_timeout_s = 2.5\n')
    result = run_omiro(tmp_path, "check-config", OMIRO_CONFIG=str(config))
    assert result.returncode == 0, result.stderr
    assert "interest_timeout_s = 2.5" in result.stdout


def test_sample_config_is_valid(tmp_path: Path) -> None:
    sample = Path(__file__).parents[2] / "omiro.toml"
    result = run_omiro(tmp_path, "check-config", "--config", str(sample))
    assert result.returncode == 0, result.stderr
