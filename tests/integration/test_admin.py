"""The /admin API and `omiro ban`: bans that bite at once, reports for operators."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio
from support import Harness, StartServer, wait_until
from trio_websocket import ConnectionRejected, open_websocket_url

from omiro_trio.backends.base import ReportRecord

TOKEN = "s3cret-admin-token-of-at-least-32-bytes"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OMIRO = str(Path(sys.executable).with_name("omiro"))


@pytest.fixture
async def admin_server(start_server: StartServer) -> Harness:
    return await start_server(admin__token=TOKEN)


@pytest.mark.rule("protocol/admin")
async def test_admin_is_404_without_a_configured_token(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        for method, path in [
            ("GET", "/admin/bans"),
            ("POST", "/admin/bans"),
            ("GET", "/admin/reports"),
        ]:
            response = await http.request(method, path, headers=AUTH)
            assert response.status_code == 404, path
            assert response.json()["error"] == "not_found"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}],
)
@pytest.mark.rule("protocol/admin", "protocol/admin-bans")
async def test_admin_needs_the_bearer_token(admin_server: Harness, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=admin_server.url) as http:
        response = await http.get("/admin/bans", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.rule("protocol/admin-api", "protocol/admin-bans")
async def test_ban_add_list_remove(admin_server: Harness) -> None:
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as http:
        created = await http.post(
            "/admin/bans", json={"target": "198.51.100.7/24", "duration_s": 60, "reason": "spam"}
        )
        assert created.status_code == 201
        ban = created.json()
        assert ban["target"] == "198.51.100.0/24"  # canonical network
        assert ban["reason"] == "spam"
        assert ban["until"] - ban["created_at"] == 60
        permanent = await http.post("/admin/bans", json={"target": "2001:db8::1"})
        assert permanent.json()["until"] is None
        listed = (await http.get("/admin/bans")).json()["bans"]
        assert [b["target"] for b in listed] == ["2001:db8::1", "198.51.100.0/24"]
        assert (await http.delete("/admin/bans/198.51.100.0%2F24")).status_code == 204
        assert (await http.delete("/admin/bans/198.51.100.0%2F24")).status_code == 404
        assert [b["target"] for b in (await http.get("/admin/bans")).json()["bans"]] == [
            "2001:db8::1"
        ]


@pytest.mark.parametrize(
    "body",
    [
        {"target": "not an ip"},
        {"target": "300.1.1.1"},
        {"target": "account:"},
        {"target": "account:not/a/key"},
        {"target": "10.0.0.1", "duration_s": 0},
        {"target": "10.0.0.1", "duration_s": "soon"},
        {"target": "10.0.0.1", "reason": "x" * 501},
        {"reason": "no target"},
    ],
)
@pytest.mark.rule("protocol/admin-api", "protocol/http-errors")
async def test_bad_ban_is_400(admin_server: Harness, body: dict[str, object]) -> None:
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as http:
        response = await http.post("/admin/bans", json=body)
        assert response.status_code == 400
        assert response.json()["error"] == "bad_request"
        assert (await http.get("/admin/bans")).json()["bans"] == []


@pytest.mark.rule("protocol/admin-bans", "protocol/close-codes")
async def test_ban_closes_open_sockets_1008_and_refuses_new_ones(admin_server: Harness) -> None:
    a, b = await admin_server.pair()
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as http:
        response = await http.post("/admin/bans", json={"target": "127.0.0.1", "reason": "x"})
        assert response.status_code == 201
        for client in (a, b):
            assert (await client.expect("error"))["code"] == "banned"
            assert await client.expect_closed() == 1008
        await wait_until(lambda: not admin_server.ctx.hub.sessions)
        refused = await http.get("/session/new")
        assert refused.status_code == 403
        assert refused.json()["error"] == "banned"
        assert (await http.delete("/admin/bans/127.0.0.1")).status_code == 204
        assert (await http.get("/session/new")).status_code == 200


def account_token(server: Harness, account: str) -> str:
    """A session token carrying ``account`` as an ``oidc`` sign-in's would (the gate's
    own path through a real provider: ``test_gate_oidc.py``)."""
    return server.ctx.signer.issue(server.ctx.wall(), subject=account).token


@pytest.mark.rule("protocol/admin-bans", "protocol/admin-reports", "protocol/close-codes")
async def test_an_account_ban_closes_its_sockets_only_and_refuses_its_tokens(
    admin_server: Harness,
) -> None:
    # All on one address: only the account tells them apart.
    a = await admin_server.connect(account_token(admin_server, "acct-a"))
    b = await admin_server.connect(account_token(admin_server, "acct-b"))
    plain = await admin_server.connect()
    assert "acct" not in str(a.hello) + str(b.hello)  # the key is the server's only
    await a.send("join_queue")
    await a.expect("queued")
    await b.send("join_queue")
    found = await b.expect("match_found")
    assert "acct" not in str(found)
    await a.expect("match_found")
    await b.send("report", {"reason": "spam"})
    await a.expect("partner_disconnected")
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as http:
        (report,) = (await http.get("/admin/reports")).json()["reports"]
        assert (report["reported_ip"], report["reported_account"]) == ("127.0.0.1", "acct-a")
        banned = await http.post(
            f"/admin/reports/{report['id']}/ban",
            json={"duration_s": 600, "note": "spam", "target": "account"},
        )
        assert banned.status_code == 200, banned.text
        assert banned.json()["ban"]["target"] == "account:acct-a"
        error = await a.expect("error")
        assert (error["code"], error["message"]) == ("banned", "this account is banned")
        assert await a.expect_closed() == 1008
        # The others on the same address chat on.
        await b.send("join_queue")
        await b.expect("queued")
        await plain.send("join_queue")
        await plain.expect("match_found")
        # A new token of the account is refused at the upgrade; the address is not banned.
        url = f"{admin_server.ws_url}?token={account_token(admin_server, 'acct-a')}"
        with pytest.raises(ConnectionRejected) as rejected:
            async with open_websocket_url(url):
                pass
        assert rejected.value.status_code == 403
        assert b'"this account is banned"' in (rejected.value.body or b"")
        assert (await http.get("/session/new")).status_code == 200
        evidence = (await http.get(f"/admin/reports/{report['id']}")).json()
        assert evidence["account_ban_now"]["target"] == "account:acct-a"
        assert evidence["ban_now"] is None
        # The ban is listed and lifted like any other.
        listed = (await http.get("/admin/bans", params={"q": "acct-a"})).json()["bans"]
        assert [ban["target"] for ban in listed] == ["account:acct-a"]
        assert (await http.delete("/admin/bans/account%3Aacct-a")).status_code == 204
        again = await admin_server.connect(account_token(admin_server, "acct-a"))
        assert again.session_id


@pytest.mark.rule("protocol/admin-bans")
async def test_a_report_naming_no_account_cannot_ban_one(admin_server: Harness) -> None:
    a, b = await admin_server.pair()
    await a.send("report", {"reason": "spam"})
    await b.expect("partner_disconnected")
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as http:
        (report,) = (await http.get("/admin/reports")).json()["reports"]
        assert report["reported_account"] == ""
        refused = await http.post(
            f"/admin/reports/{report['id']}/ban", json={"duration_s": 600, "target": "account"}
        )
        assert refused.status_code == 403, refused.text
        assert "no account" in refused.json()["message"]
        assert (await http.get("/admin/bans")).json()["bans"] == []
    await b.send("join_queue")
    await b.expect("queued")


@pytest.mark.rule("protocol/admin-api")
async def test_reports_are_listed_newest_first(admin_server: Harness) -> None:
    a, b = await admin_server.pair()
    await b.send("chat", {"message": "buy my stuff"})
    await a.expect("chat")
    await a.send("report", {"reason": "spam"})
    await b.expect("partner_disconnected")
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as http:
        reports = (await http.get("/admin/reports")).json()["reports"]
    assert len(reports) == 1
    report = reports[0]
    assert report["reported_ip"] == "127.0.0.1"
    assert report["reporter"] == a.session_id
    assert report["reported"] == b.session_id
    assert report["reason"] == "spam"
    assert report["transcript"] == ["reported: buy my stuff"]
    assert abs(report["at"] - admin_server.ctx.wall()) < 5


@pytest.mark.rule("protocol/admin-reports")
async def test_reports_are_paginated(admin_server: Harness) -> None:
    backend = admin_server.ctx.backend
    now = admin_server.ctx.wall()
    for n in range(5):
        await backend.record_report(
            ReportRecord("192.0.2.1", f"bad{n}", f"good{n}", "192.0.2.2", "spam", now + n, ())
        )
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as http:
        first = (await http.get("/admin/reports", params={"limit": 2})).json()
        assert [r["reported"] for r in first["reports"]] == ["bad4", "bad3"]
        second = (
            await http.get("/admin/reports", params={"limit": 2, "before": first["next_before"]})
        ).json()
        assert [r["reported"] for r in second["reports"]] == ["bad2", "bad1"]
        third = (
            await http.get("/admin/reports", params={"limit": 2, "before": second["next_before"]})
        ).json()
        assert [r["reported"] for r in third["reports"]] == ["bad0"]
        assert third["next_before"] is None
        for bad in ({"limit": 0}, {"limit": 501}, {"limit": "x"}, {"before": "-1"}):
            refused = await http.get("/admin/reports", params=bad)
            assert refused.status_code == 400, bad
            assert refused.json()["error"] == "bad_request"


async def _omiro(*args: str) -> subprocess.CompletedProcess[str]:
    return await trio.run_process(
        [OMIRO, *args], capture_stdout=True, capture_stderr=True, check=False
    )  # type: ignore[return-value]


async def test_ban_cli_drives_the_api(admin_server: Harness) -> None:
    common = ("--url", admin_server.url, "--token", TOKEN)
    added = await _omiro(
        "ban", "add", "203.0.113.0/24", "--duration", "600", "--reason", "raid", *common
    )
    assert added.returncode == 0, added.stderr
    assert b"203.0.113.0/24" in added.stdout
    assert await admin_server.ctx.backend.ban_for("203.0.113.9") is not None
    listed = await _omiro("ban", "list", *common)
    assert listed.returncode == 0
    assert b"203.0.113.0/24\tuntil " in listed.stdout
    assert b"raid" in listed.stdout
    removed = await _omiro("ban", "remove", "203.0.113.0/24", *common)
    assert removed.returncode == 0, removed.stderr
    assert await admin_server.ctx.backend.ban_for("203.0.113.9") is None
    again = await _omiro("ban", "remove", "203.0.113.0/24", *common)
    assert again.returncode == 1
    assert b"no such ban" in again.stderr
    account = await _omiro("ban", "add", "account:acct-z", "--duration", "600", *common)
    assert account.returncode == 0, account.stderr
    assert await admin_server.ctx.backend.account_ban("acct-z") is not None
    assert (await _omiro("ban", "remove", "account:acct-z", *common)).returncode == 0
    assert await admin_server.ctx.backend.account_ban("acct-z") is None
    wrong = await _omiro("ban", "list", "--url", admin_server.url, "--token", "nope")
    assert wrong.returncode == 1
    assert b"401" in wrong.stderr


async def test_report_ban_cli_bans_the_reported_account(admin_server: Harness) -> None:
    reporter = await admin_server.connect()
    reported = await admin_server.connect(account_token(admin_server, "acct-cli"))
    await reporter.send("join_queue")
    await reporter.expect("queued")
    await reported.send("join_queue")
    await reporter.expect("match_found")
    await reported.expect("match_found")
    await reporter.send("report", {"reason": "spam"})
    await reported.expect("partner_disconnected")
    (report,) = await admin_server.ctx.backend.reports(10)
    common = ("--url", admin_server.url, "--token", TOKEN)
    shown = await _omiro("report", "show", str(report.id), *common)
    assert shown.returncode == 0, shown.stderr
    assert b"reported account: account:acct-cli" in shown.stdout
    banned = await _omiro(
        "report", "ban", str(report.id), "--account", "--duration", "600", *common
    )
    assert banned.returncode == 0, banned.stderr
    assert b"actioned (ban 600 s (account))" in banned.stdout
    assert (await reported.expect("error"))["message"] == "this account is banned"
    assert await admin_server.ctx.backend.account_ban("acct-cli") is not None
    assert await admin_server.ctx.backend.ban_for("127.0.0.1") is None
    await reporter.send("join_queue")
    await reporter.expect("queued")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.rule("protocol/front-door")
async def test_a_body_over_the_budget_is_413(admin_server: Harness, chunked: bool) -> None:
    """No route takes a body larger than a ban request: past MAX_BODY_BYTES it is refused
    (a body whose length is announced, or one that just keeps coming)."""
    ban = b'{"target": "192.0.2.80", "duration_s": 60, "reason": "' + b" " * 100_000 + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(ban), 8192):
            yield ban[start : start + 8192]

    async with httpx.AsyncClient(base_url=admin_server.url) as http:
        response = await http.post(
            "/admin/bans", headers=AUTH, content=chunks() if chunked else ban
        )
    assert response.status_code == 413
    assert await admin_server.ctx.backend.ban_for("192.0.2.80") is None
    assert admin_server.metric("omiro_budget_exceeded_total", budget="body") == 1


# -- a client guessing the token (issue "No client can take Omiro down", item 13) --

ADMIN_TOKEN = "an-admin-token-that-is-long-enough!"


@pytest.mark.rule("protocol/admin-auth-failures")
async def test_failed_admin_authentications_are_limited_per_address(
    start_server: StartServer,
) -> None:
    server = await start_server(admin__token=ADMIN_TOKEN)
    good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=server.url) as http:
        codes = [
            (
                await http.get("/admin/bans", headers={"Authorization": f"Bearer guess{n}"})
            ).status_code
            for n in range(10)
        ]
        assert codes == [401] * 10
        limited = await http.get("/admin/bans", headers={"Authorization": "Bearer guess"})
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        # Even the right token waits: a guess must not be confirmable.
        assert (await http.get("/admin/bans", headers=good)).status_code == 429
