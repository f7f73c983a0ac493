"""The container image: what is in it, and one replica serving, then draining on SIGTERM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from container_support import Podman, open_client, unique, wait_http

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1200)]


def inspect(podman: Podman, image: str) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(podman.run("image", "inspect", image).stdout)
    return data[0]


def test_image_is_non_root_with_no_build_tools(podman: Podman, image: str) -> None:
    inspected = inspect(podman, image)
    config = inspected["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["omiro"]  # exec form: SIGTERM reaches omiro itself
    assert config["Cmd"] == ["serve"]
    assert config["StopSignal"] == "SIGTERM"
    assert "/healthz" in " ".join(inspected["Healthcheck"]["Test"])
    assert "OMIRO_SERVER_HOST=0.0.0.0" in config["Env"]
    probe = podman.run(
        "run",
        "--rm",
        "--entrypoint",
        "sh",
        image,
        "-c",
        "id -u; for t in gcc cc make pip pip3 python3-config; do command -v $t; done; true",
    )
    assert probe.stdout.split() == ["10001"], probe.stdout  # nothing but the uid
    version = podman.run("run", "--rm", image, "--version").stdout
    assert version.startswith("omiro")


def test_image_serves_reads_file_secrets_and_drains_on_sigterm(
    podman: Podman, image: str, tmp_path: Path
) -> None:
    secret = tmp_path / "session_secret"
    secret.write_text("a-secret-from-a-file-0123456789abcdef\n")
    secret.chmod(0o644)
    name = unique("omiro-image-test")
    podman.run(
        "run",
        "-d",
        "--name",
        name,
        "-p",
        "127.0.0.1::8080",
        "-v",
        f"{secret}:/run/secrets/session_secret:ro",
        "-e",
        "OMIRO_SESSION_SECRET_FILE=/run/secrets/session_secret",
        "-e",
        "OMIRO_SERVER_DRAIN_GRACE_S=3",
        "-e",
        "OMIRO_ICE_URLS=[]",
        image,
    )
    try:
        port = podman.run("port", name, "8080/tcp").stdout.strip().rsplit(":", 1)[1]
        base_url = f"http://127.0.0.1:{port}"
        assert json.loads(wait_http(base_url + "/healthz")) == {"status": "ok"}
        assert podman.run("healthcheck", "run", name, check=False).returncode == 0
        assert b"<html" in wait_http(base_url + "/").lower()

        async def call_then_drain() -> None:
            async with trio.open_nursery() as nursery:
                a = await open_client(nursery, base_url)
                b = await open_client(nursery, base_url)
                await a.send("join_queue")
                await a.expect("queued")
                await b.send("join_queue")
                await a.expect("match_found")
                await b.expect("match_found")
                await a.send("chat", {"message": "hello from the container"})
                assert (await b.expect("chat"))["message"] == "hello from the container"
                nursery.start_soon(
                    trio.to_thread.run_sync, lambda: podman.run("stop", "-t", "30", name)
                )
                for client in (a, b):
                    assert "reconnect_after_ms" in await client.expect("server_draining", 15)
                    assert await client.expect_closed(15) == 1012

        trio.run(call_then_drain)
        state = json.loads(podman.run("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0
        logs = podman.run("logs", name).stderr + podman.run("logs", name).stdout
        assert "SIGTERM: draining" in logs
        assert "closing 2 sockets that are still open" in logs
        assert "Omiro stopped" in logs
        assert "no session.secret configured" not in logs  # it came from the file
    finally:
        podman.run("rm", "-f", name, check=False)
