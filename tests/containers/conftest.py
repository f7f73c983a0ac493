"""Container tests: the image built from this checkout, run with podman.

Testing policy for this folder:

* Marked ``containers``. They need podman (and podman-compose for the
  stack) and network egress while the image builds (pip fetches the
  dependencies), so they run outside the loopback-only namespace of the
  other tests: ``pytest -m containers``.
* Offline machines: no registry can be reached, so a
  ``../shared/containers/standins.sh`` beside the clone (when present)
  installs podman and builds local stand-ins of the four public images the
  Dockerfile and ``deploy/compose.yaml`` name. The fixture runs it.
* The image is built once per session under a unique tag and removed at
  the end; every container and compose project has a unique name and is
  removed when its test ends. Ports are published on 127.0.0.1 only.
* No sleeps: waits are bounded polls of the running containers.
* Without podman the tests skip, unless ``CI`` is set: then they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from container_support import Podman, missing

REPO = Path(__file__).resolve().parents[2]
STANDINS = REPO.parent / "shared" / "containers" / "standins.sh"
PREPARE_S = 900.0  # a fresh machine: podman from apt, a debootstrap base, pip in the build
BUILD_S = 900.0


# Podman 4.3 picks CNI over netavark on a machine where it once ran before
# netavark was installed, and Debian ships no DNS plugin for CNI: compose
# services then cannot resolve each other's names. Name the backend.
NETAVARK = Path("/usr/lib/podman/netavark")


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    env = dict(os.environ)
    if STANDINS.exists():
        result = subprocess.run(
            ["bash", str(STANDINS)], capture_output=True, text=True, timeout=PREPARE_S, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{STANDINS.name} failed:\n{result.stderr[-4000:]}")
        for line in result.stdout.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            if value:
                env[name] = value
    if shutil.which("podman", path=env.get("PATH")) is None:
        missing("podman is not installed")
    if NETAVARK.exists():
        conf = tmp_path_factory.mktemp("podman") / "containers.conf"
        base = env.get("CONTAINERS_CONF")
        text = Path(base).read_text() if base else ""
        conf.write_text(text + '\n[network]\nnetwork_backend = "netavark"\n')
        env["CONTAINERS_CONF"] = str(conf)
    compose = env.get("PODMAN_COMPOSE") or shutil.which("podman-compose", path=env.get("PATH"))
    return Podman(env, compose)


@pytest.fixture(scope="session")
def image(podman: Podman) -> Iterator[str]:
    """The image built from this checkout's Dockerfile, under a unique tag."""
    tag = f"localhost/omiro:test-{uuid.uuid4().hex[:8]}"
    # Docker format: the OCI format has no HEALTHCHECK. The build needs only
    # egress (pip, apt), which the host's network gives whatever the bridge's
    # DNS and NAT are on this machine.
    podman.run(
        "build", "--network", "host", "--format", "docker", "-t", tag, str(REPO), timeout=BUILD_S
    )
    yield tag
    podman.run("rmi", "-f", tag, check=False)
