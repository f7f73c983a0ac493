"""``/session/new`` (``sessions.py``) answers alike as a connection's first request
(read without h11, answered, closed) and as a later request of a kept-alive connection
(answered in place by the same endpoint, the connection kept open, as quart did)."""

from __future__ import annotations

import httpx
import pytest
from support import Harness, StartServer

IGNORED = {"date", "content-length", "connection", "server"}


def _shape(response: httpx.Response) -> tuple[int, dict[str, str], list[str]]:
    headers = {k: v for k, v in response.headers.items() if k not in IGNORED}
    return response.status_code, headers, sorted(response.json())


@pytest.mark.rule("protocol/session-new")
async def test_fast_and_quart_paths_answer_alike(start_server: StartServer) -> None:
    server: Harness = await start_server(limits__sessions_per_ip_per_minute=3)
    async with httpx.AsyncClient(base_url=server.url) as fresh:
        fast = await fresh.get("/session/new")  # a connection's first request: no h11
    assert fast.headers["connection"] == "close"
    async with httpx.AsyncClient(base_url=server.url) as kept:
        assert (await kept.get("/healthz")).status_code == 200
        slow = await kept.get("/session/new")  # same connection, later request: in place
        assert "close" not in slow.headers.get("connection", "")
        assert _shape(fast) == _shape(slow)
        assert server.ctx.signer.verify(fast.json()["token"], server.ctx.wall())
        assert server.ctx.signer.verify(slow.json()["token"], server.ctx.wall())
        await kept.get("/session/new")  # the third of three a minute
        slow_429 = await kept.get("/session/new")
    async with httpx.AsyncClient(base_url=server.url) as fresh:
        fast_429 = await fresh.get("/session/new")
    assert slow_429.status_code == fast_429.status_code == 429
    assert _shape(fast_429) == _shape(slow_429)
    assert fast_429.headers["retry-after"] == str(fast_429.json()["retry_after"])
    assert server.metric("omiro_sessions_issued_total") == 3
