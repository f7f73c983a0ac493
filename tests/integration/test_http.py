"""HTTP endpoints through the real front door (hypercorn behind the /ws router)."""

from __future__ import annotations

import httpx
import pytest
import trio
from support import Harness, StartServer


@pytest.mark.rule("protocol/session-new")
async def test_session_new_issues_a_valid_token(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/session/new")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"token", "session_id", "expires_at"}
    assert server.ctx.signer.verify(body["token"], server.ctx.wall()) == body["session_id"]
    assert body["expires_at"] - server.ctx.wall() == pytest.approx(600, abs=2)
    client = await server.connect(body["token"])
    assert client.session_id == body["session_id"]


@pytest.mark.rule("protocol/session-new")
async def test_session_new_rate_limited_429(start_server: StartServer) -> None:
    server = await start_server(limits__sessions_per_ip_per_minute=3)
    async with httpx.AsyncClient(base_url=server.url) as http:
        for _ in range(3):
            assert (await http.get("/session/new")).status_code == 200
        response = await http.get("/session/new")
    assert response.status_code == 429
    body = response.json()
    assert body["error"] == "rate_limited"
    assert 1 <= body["retry_after"] <= 60
    assert response.headers["retry-after"] == str(body["retry_after"])


@pytest.mark.rule("protocol/session-new")
async def test_session_new_banned_403(server: Harness) -> None:
    from omiro_trio.backends.base import Ban

    await server.ctx.backend.add_ban(  # type: ignore[attr-defined]
        Ban("127.0.0.1", "spam", server.ctx.wall() + 60, server.ctx.wall())
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/session/new")
    assert response.status_code == 403
    body = response.json()
    assert body["error"] == "banned"
    assert body["until"] == pytest.approx(server.ctx.wall() + 60, abs=2)


async def test_forwarded_for_ignored_from_untrusted_peer(start_server: StartServer) -> None:
    server = await start_server(limits__sessions_per_ip_per_minute=1)
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/session/new", headers={"X-Forwarded-For": "1.1.1.1"})).is_success
        # A different claimed address does not reset the limit: the peer is not a proxy.
        again = await http.get("/session/new", headers={"X-Forwarded-For": "2.2.2.2"})
    assert again.status_code == 429


async def test_forwarded_for_believed_from_trusted_proxy(start_server: StartServer) -> None:
    server = await start_server(
        limits__sessions_per_ip_per_minute=1, server__trusted_proxies=["127.0.0.0/8"]
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        for address in ("1.1.1.1", "2.2.2.2"):
            response = await http.get("/session/new", headers={"X-Forwarded-For": address})
            assert response.status_code == 200
        spoofed = await http.get("/session/new", headers={"X-Forwarded-For": "2.2.2.2"})
    assert spoofed.status_code == 429


@pytest.mark.rule(
    "protocol/healthz", "protocol/readyz", "protocol/readyz-answers", "protocol/stats"
)
async def test_health_ready_and_stats(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/stats")).json() == {"online": 0, "waiting": 0}
        a, _b = await server.pair()
        waiting = await server.connect()
        await waiting.send("join_queue")
        await waiting.expect("queued")
        assert (await http.get("/stats")).json() == {"online": 3, "waiting": 1}
        metrics = (await http.get("/metrics")).text
        assert "omiro_matches_total 1.0" in metrics
        assert "omiro_online 3.0" in metrics
        await a.send("chat", {"message": "x"})
        await _b.expect("chat")
        metrics = (await http.get("/metrics")).text
        assert 'omiro_relayed_messages_total{op="chat"} 1.0' in metrics


@pytest.mark.rule("protocol/readyz", "protocol/readyz-answers")
async def test_readyz_503_while_draining(start_server: StartServer) -> None:
    server = await start_server(server__drain_grace_s=5)
    client = await server.connect()
    server.stop.set()
    await client.expect("server_draining")
    async with httpx.AsyncClient(base_url=server.url) as http:
        response = await http.get("/readyz")
    assert response.status_code == 503
    assert response.json()["error"] == "draining"
    await client.send("disconnect")
    with trio.fail_after(5):
        await server.stopped.wait()


@pytest.mark.rule("protocol/page")
async def test_page_served_from_package_with_security_headers(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "<html" in page.text.lower()
        script = await http.get("/js/app.js")
        assert script.status_code == 200
        assert "javascript" in script.headers["content-type"]


@pytest.mark.rule("protocol/page")
async def test_assets_revalidate_with_etags(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        for path, kind in [
            ("/", "text/html"),
            ("/index.html", "text/html"),
            ("/css/app.css", "text/css"),
            ("/js/call.js", "text/javascript"),
            ("/favicon.svg", "image/svg+xml"),
        ]:
            first = await http.get(path)
            assert first.status_code == 200, path
            assert first.headers["content-type"].startswith(kind), path
            assert first.headers["cache-control"] == "no-cache"
            etag = first.headers["etag"]
            again = await http.get(path, headers={"If-None-Match": etag})
            assert again.status_code == 304, path
            assert again.content == b""
            changed = await http.get(path, headers={"If-None-Match": '"stale"'})
            assert changed.status_code == 200
            assert changed.content == first.content
        assert (await http.get("/")).content == (await http.get("/index.html")).content


@pytest.mark.rule("protocol/http-errors")
async def test_unknown_path_and_traversal_are_json_404(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        for path in ("/nope", "/../pyproject.toml", "/%2e%2e/omiro_trio/config.py", "/ws"):
            response = await http.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"] == "not_found"
        wrong_method = await http.post("/session/new")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"


async def test_keep_alive_connection_serves_many_requests(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        responses = [await http.get("/healthz") for _ in range(5)]
    assert all(r.status_code == 200 for r in responses)


async def test_garbage_request_does_not_hurt_the_server(server: Harness) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.running.port)
    await stream.send_all(b"\x16\x03\x01 not http at all\r\n\r\n")
    with trio.fail_after(5):
        reply = await stream.receive_some(4096)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 400")
    await stream.aclose()
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/healthz")).status_code == 200
