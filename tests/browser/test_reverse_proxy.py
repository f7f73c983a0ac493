"""Behind a real nginx (Debian's nginx-light) on a port that is not 80 or 443.

The README's configuration, as written there, in front of ``omiro serve``:
sessions, the WebSocket upgrade (the token in the URL, and in
``Sec-WebSocket-Protocol`` as the page sends it, which stays out of nginx's
access log) and a call between two Chromium pages all go through it.
``proxy_set_header Host $host`` (the README's old line) drops the port, so
the server's same-origin check refused every upgrade
(``origin_not_allowed``); ``$http_host`` keeps it. Both are shown.

nginx runs as this test's own process (``nginx -p DIR -c DIR/nginx.conf -g
'daemon off;'``), on a free port, stopped by its pid. Without nginx the test
skips, unless ``CI`` is set: then it fails.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

NGINX = Path("/usr/sbin/nginx")
README = Path(__file__).resolve().parents[2] / "README.md"
START_S = 10.0

CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 128; }}
http {{
  access_log {dir}/access.log;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  map $http_upgrade $connection_upgrade {{
    default upgrade;
    ''      close;
  }}
  server {{
    listen 127.0.0.1:{port};
    {location}
  }}
}}
"""


def readme_location(upstream: int, host_line: str | None = None) -> str:
    """The README's nginx ``location`` block, pointed at ``upstream``."""
    found = re.search(r"```nginx\n(location / \{.*?\n\})\n```", README.read_text(), re.S)
    assert found, "README.md has no nginx location block"
    block = found.group(1).replace("127.0.0.1:8080", f"127.0.0.1:{upstream}")
    if host_line is not None:
        block = re.sub(r"proxy_set_header Host [^;]+;", host_line, block)
    return block


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    def __init__(self, workdir: Path, location: str) -> None:
        self.dir = workdir
        workdir.mkdir()
        self.port = free_port()
        (workdir / "nginx.conf").write_text(
            CONF.format(dir=workdir, port=self.port, location=location)
        )
        self.proc = subprocess.Popen(
            [
                str(NGINX),
                "-p",
                str(workdir),
                "-c",
                str(workdir / "nginx.conf"),
                "-g",
                "daemon off;",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"nginx did not start: {err}") from None
                time.sleep(0.05)  # bounded poll of an external process, with a deadline

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(START_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[Any]:
    if not NGINX.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{NGINX} is not installed (CI is set, so this is a failure)")
        pytest.skip(f"{NGINX} is not installed (apt-get install nginx-light)")
    started: list[Nginx] = []

    def start(location: str) -> Nginx:
        proxy = Nginx(tmp_path / f"nginx{len(started)}", location)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def upgrade(url: str, *, in_header: bool = False) -> tuple[int, str, str]:
    """A WebSocket upgrade for a fresh session through ``url``: its status, its
    response head and the token. ``in_header``: the token goes as a subprotocol
    (what the page does), else in the URL."""
    import json
    import urllib.request

    with urllib.request.urlopen(url + "/session/new", timeout=5) as response:
        token = json.loads(response.read())["token"]
    host = url.removeprefix("http://")
    key = base64.b64encode(os.urandom(16)).decode()
    if in_header:
        target = "/ws"
        extra = f"Sec-WebSocket-Protocol: omiro, omiro.token.{token.replace(':', '.')}\r\n"
    else:
        target, extra = f"/ws?token={token}", ""
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nOrigin: {url}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    port = int(host.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode())
        head = sock.recv(4096).decode(errors="replace")
    return int(head.split(" ", 2)[1]), head, token


def upgrade_status(url: str) -> int:
    return upgrade(url)[0]


def test_a_call_through_nginx_on_a_non_default_port(make_server, people, nginx):
    server = make_server(OMIRO_SERVER_TRUSTED_PROXIES='["127.0.0.1/32"]')
    proxy = nginx(readme_location(server.port))
    assert proxy.port not in (80, 443)
    # Sessions and the upgrade, through nginx: the URL form, and the token in
    # Sec-WebSocket-Protocol, which nginx passes on, and "omiro" echoed back.
    assert upgrade_status(proxy.url) == 101
    status, head, token = upgrade(proxy.url, in_header=True)
    assert status == 101
    assert "\r\nSec-WebSocket-Protocol: omiro\r\n" in head
    secret = token.rsplit(":", 1)[1]  # the token's signature
    alice = people(server, "alice", url=proxy.url + "/")
    bob = people(server, "bob", url=proxy.url + "/")
    for person in (alice, bob):
        person.start()
    for person in (alice, bob):
        person.wait_state("connected")
    for person in (alice, bob):
        person.wait_call_connected()
    alice.wait_media_flowing()
    alice.testid("chat-input").fill("through the proxy")
    alice.page.keyboard.press("Enter")
    bob.wait("() => document.querySelectorAll('.msg-stranger').length === 1")
    # nginx really carried it: once the pages are gone, their upgrades are in
    # its access log (a WebSocket's line is written when it closes).
    for person in (alice, bob):
        person.page.context.close()
    deadline = time.monotonic() + START_S
    while (log := (proxy.dir / "access.log").read_text()).count('" 101 ') < 4:
        assert time.monotonic() < deadline, log
        time.sleep(0.05)  # bounded poll of an external process's file, with a deadline
    # Only the URL form left its token in the log: the pages (and the header
    # form above) sent theirs where nginx does not log.
    assert log.count("GET /ws?token=") == 1
    assert log.count('"GET /ws HTTP/1.1" 101 ') >= 3
    assert secret not in log


def test_host_without_the_port_is_refused_as_the_readme_warns(make_server, nginx):
    server = make_server(OMIRO_SERVER_TRUSTED_PROXIES='["127.0.0.1/32"]')
    proxy = nginx(readme_location(server.port, "proxy_set_header Host $host;"))
    assert upgrade_status(proxy.url) == 403  # origin_not_allowed: the port was dropped
