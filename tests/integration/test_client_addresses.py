"""Who the client is (``addresses.py``): forwarding headers believed only from trusted
proxies, IPv6 addresses of one prefix counted as one client.

Hostile clients, one raw socket at a time (``hostile.py`` says how).
"""

from __future__ import annotations

import httpx
import pytest
from hostile import (
    capture_logs,  # noqa: F401  (an autouse fixture)
)
from support import StartServer


async def test_cf_connecting_ip_is_ignored_unless_named(start_server: StartServer) -> None:
    """Item 7: behind a trusted proxy, a forged CF-Connecting-IP is not believed."""
    server = await start_server(
        server__trusted_proxies=["127.0.0.0/8"], limits__sessions_per_ip_per_minute=2
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        codes = [
            (
                await http.get("/session/new", headers={"CF-Connecting-IP": f"198.51.100.{n}"})
            ).status_code
            for n in range(3)
        ]
    assert codes == [200, 200, 429]


async def test_named_client_ip_header_is_believed_from_a_trusted_proxy(
    start_server: StartServer,
) -> None:
    server = await start_server(
        server__trusted_proxies=["127.0.0.0/8"],
        server__client_ip_header="CF-Connecting-IP",
        limits__sessions_per_ip_per_minute=1,
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        codes = [
            (
                await http.get("/session/new", headers={"CF-Connecting-IP": f"198.51.100.{n}"})
            ).status_code
            for n in range(3)
        ]
        again = await http.get("/session/new", headers={"CF-Connecting-IP": "198.51.100.0"})
    assert codes == [200, 200, 200]
    assert again.status_code == 429


@pytest.mark.rule("protocol/clients")
async def test_ipv6_addresses_of_one_prefix_share_their_limits(start_server: StartServer) -> None:
    server = await start_server(
        server__trusted_proxies=["127.0.0.0/8"], limits__sessions_per_ip_per_minute=2
    )
    async with httpx.AsyncClient(base_url=server.url) as http:
        codes = [
            (
                await http.get("/session/new", headers={"X-Forwarded-For": f"2001:db8:1:2::{n}"})
            ).status_code
            for n in range(1, 4)
        ]
        other = await http.get("/session/new", headers={"X-Forwarded-For": "2001:db8:1:3::1"})
    assert codes == [200, 200, 429]
    assert other.status_code == 200


@pytest.mark.rule("protocol/clients")
async def test_reporters_of_one_ipv6_prefix_count_once(start_server: StartServer) -> None:
    server = await start_server(
        server__trusted_proxies=["127.0.0.0/8"], reports__autoban_reporters=2
    )
    bad_ip = "203.0.113.66"
    bad = await server.connect(headers=[("X-Forwarded-For", bad_ip)])
    for n in (1, 2):
        reporter = await server.connect(headers=[("X-Forwarded-For", f"2001:db8:1:2::{n}")])
        await reporter.send("join_queue")
        await reporter.expect("queued")
        if n == 1:
            await bad.send("join_queue")
            await bad.expect("match_found")
            await reporter.expect("match_found")
            await reporter.send("report", {"reason": "spam"})
            await bad.expect("partner_disconnected")
        else:
            # The reporter's whole /64 is blocked from the reported address.
            await bad.send("join_queue")
            await bad.expect("queued")
    assert await server.ctx.backend.ban_for(bad_ip) is None
    reports = await server.ctx.backend.reports(10)
    assert [r.reporter_ip for r in reports] == ["2001:db8:1:2::/64"]
