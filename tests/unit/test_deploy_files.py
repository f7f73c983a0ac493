"""Static checks of the deployment files: what they may reference and how they run Omiro.

The image and the stack are run for real by tests/containers; these checks
hold the rules that a run cannot show (only the four public images, the
systemd unit's validity and sandboxing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from omiro_trio.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ALLOWED_IMAGES = {
    "docker.io/library/debian:bookworm-slim",
    "docker.io/library/redis:7",
    "docker.io/coturn/coturn:4.6",
    "docker.io/library/caddy:2",
}


def test_dockerfile_builds_on_debian_and_runs_omiro_directly() -> None:
    text = (REPO / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert bases == ["debian:bookworm-slim", "debian:bookworm-slim"]
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    # Exec form: no shell between the runtime's SIGTERM and omiro.
    assert re.search(r'^ENTRYPOINT \["omiro"\]$', text, re.MULTILINE)
    assert re.search(r'^CMD \["serve"\]$', text, re.MULTILINE)
    assert "HEALTHCHECK" in text


def test_compose_references_only_the_four_public_images() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    images = set(re.findall(r"^\s+image:\s*(\S+)", text, re.MULTILINE))
    assert images - {"${OMIRO_IMAGE:-localhost/omiro:latest}"} <= ALLOWED_IMAGES
    assert {"omiro1: *omiro", "omiro2: *omiro"} <= {line.strip() for line in text.splitlines()}
    assert "OMIRO_BACKEND_KIND: redis" in text
    # One secret, two readers: coturn's static-auth-secret and Omiro's TURN credentials.
    assert text.count("${TURN_SECRET:?") == 2
    assert '--static-auth-secret="$$TURN_SECRET"' in text


def test_caddy_balances_without_sticky_sessions() -> None:
    text = (DEPLOY / "Caddyfile").read_text()
    assert "reverse_proxy omiro1:8080 omiro2:8080" in text
    policies = re.findall(r"lb_policy\s+(\S+)", text)
    assert policies == ["least_conn"]  # not ip_hash, cookie or header: any replica serves
    assert "header_up -CF-Connecting-IP" in text  # a client's own never reaches Omiro


def test_compose_trusts_only_caddy_as_a_proxy() -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    assert "OMIRO_SERVER_TRUSTED_PROXIES: ${CADDY_ADDRESS:-10.213.0.254}/32" in text
    assert "ipv4_address: ${CADDY_ADDRESS:-10.213.0.254}" in text


def test_env_example_names_every_required_variable() -> None:
    example = (DEPLOY / ".env.example").read_text()
    compose = (DEPLOY / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", compose))
    assert required == {"DOMAIN", "OMIRO_SESSION_SECRET", "TURN_SECRET"}
    for name in required:
        assert re.search(rf"^{name}=", example, re.MULTILINE), name


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        reason = "systemd-analyze is not installed (apt-get install systemd)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)
    return tool


def test_systemd_unit_is_valid_and_sandboxed(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    unit = (DEPLOY / "omiro.service").read_text()
    assert "ExecStart=/opt/omiro/bin/omiro serve" in unit
    assert "KillSignal=SIGTERM" in unit
    # Verify the unit as it would run here: the installed omiro instead of /opt/omiro.
    omiro = Path(sys.executable).parent / "omiro"
    assert omiro.exists()
    here = tmp_path / "omiro.service"
    here.write_text(unit.replace("/opt/omiro/bin/omiro", str(omiro)))
    verify = subprocess.run(
        [tool, "verify", str(here)], capture_output=True, text=True, timeout=60, check=False
    )
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(
        [tool, "security", "--offline=yes", "--threshold=20", "--no-pager", str(here)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert security.returncode == 0, security.stdout[-2000:]
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d)", security.stdout)
    assert exposure is not None, security.stdout[-500:]
    assert float(exposure.group(1)) <= 2.0  # "OK" on systemd's 0-10 scale


def test_grafana_dashboard_uses_only_metrics_that_exist() -> None:
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\b(omiro_[a-z_]+)", expr)}
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes[family.type]
    }
    assert used, exprs
    assert used <= exported, used - exported
    assert {"omiro_calls_total", "omiro_call_connect_seconds_bucket"} <= used
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
