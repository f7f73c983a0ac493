"""Reports: distinct reporters ban an address; one address cannot do it alone."""

from __future__ import annotations

import httpx
import pytest
from support import Client, Harness, StartServer

BAD = "203.0.113.66"


async def _from(server: Harness, ip: str) -> Client:
    """A client whose address, as a trusted proxy on 127.0.0.1 says, is ``ip``."""
    return await server.connect(headers=[("X-Forwarded-For", ip)])


async def _meet(a: Client, b: Client) -> None:
    await a.send("join_queue")
    await a.expect("queued")
    await b.send("join_queue")
    assert (await b.expect("match_found"))["partner"] == a.session_id
    await a.expect("match_found")


async def _proxied(start_server: StartServer, **overrides: object) -> Harness:
    return await start_server(
        server__trusted_proxies=["127.0.0.0/8"], reports__autoban_reporters=2, **overrides
    )


@pytest.mark.rule("protocol/reports")
async def test_distinct_reporters_ban_the_reported_address(start_server: StartServer) -> None:
    server = await _proxied(start_server)
    bad = await _from(server, BAD)
    for n, reporter_ip in enumerate(["198.51.100.1", "198.51.100.2"]):
        reporter = await _from(server, reporter_ip)
        await _meet(bad, reporter)
        await reporter.send("report", {"reason": f"report {n}"})
        assert await bad.expect("partner_disconnected") == {"reason": "reported"}
    assert (await bad.expect("error"))["code"] == "banned"
    assert await bad.expect_closed() == 1008
    ban = await server.ctx.backend.ban_for(BAD)
    assert ban is not None
    assert ban.reason == "reported by 2 people"
    assert ban.until is not None
    assert abs(ban.until - server.ctx.wall() - 86400) < 5
    async with httpx.AsyncClient(base_url=server.url) as http:
        refused = await http.get("/session/new", headers={"X-Forwarded-For": BAD})
        allowed = await http.get("/session/new", headers={"X-Forwarded-For": "198.51.100.1"})
    assert refused.status_code == 403
    assert allowed.status_code == 200
    assert server.metric("omiro_autobans_total") == 1


@pytest.mark.rule("protocol/clients")
async def test_a_report_blocks_the_pair_of_addresses_not_only_the_sessions(
    start_server: StartServer,
) -> None:
    """Fresh tokens on either side do not bring a reported pair together again."""
    server = await _proxied(start_server)
    bad = await _from(server, BAD)
    reporter = await _from(server, "198.51.100.1")
    await _meet(bad, reporter)
    await reporter.send("report", {"reason": "again"})
    await bad.expect("partner_disconnected")
    fresh_bad = await _from(server, BAD)
    fresh_reporter = await _from(server, "198.51.100.1")
    await fresh_bad.send("join_queue")
    await fresh_bad.expect("queued")
    await fresh_reporter.send("join_queue")
    await fresh_reporter.expect("queued")
    # Someone else still meets them.
    other = await _from(server, "198.51.100.2")
    await other.send("join_queue")
    assert (await other.expect("match_found"))["partner"] == fresh_bad.session_id
    assert await server.ctx.backend.ban_for(BAD) is None
    assert len(await server.ctx.backend.reports(100)) == 1


@pytest.mark.rule("protocol/reports")
async def test_an_address_cannot_report_itself_banned(start_server: StartServer) -> None:
    server = await start_server(reports__autoban_reporters=1)  # everyone is 127.0.0.1
    a, b = await server.pair()
    await a.send("report", {"reason": "two tabs"})
    await b.expect("partner_disconnected")
    assert await server.ctx.backend.ban_for("127.0.0.1") is None


@pytest.mark.rule("protocol/report-records")
async def test_reports_per_hour_limit_still_ends_the_match(start_server: StartServer) -> None:
    server = await start_server(limits__reports_per_hour=1)
    a, b = await server.pair()
    await a.send("report", {"reason": "first"})
    await b.expect("partner_disconnected")
    c = await server.connect()
    await _meet(a, c)
    await a.send("report", {"reason": "second"})
    assert await c.expect("partner_disconnected") == {"reason": "reported"}
    error = await a.expect("error")
    assert (error["code"], error["op"]) == ("rate_limited", "report")
    assert [r.reason for r in await server.ctx.backend.reports(100)] == ["first"]
