"""The moderator console's API and its CLI: accounts, sign-in, the queue, actions, audit.

A real server on 127.0.0.1 with real sockets; the reports come from real
clients in real matches. Security first: nothing without a session or the
token, CSRF on every change, roles, throttled sign-in, the cookie's flags.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from support import Client, Harness, StartServer

from omiro_trio import accounts
from omiro_trio.backends.base import ReportRecord

TOKEN = "s3cret-admin-token-of-at-least-32-bytes"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
OMIRO = str(Path(sys.executable).with_name("omiro"))
WEEK_S = 7 * 86400


@pytest.fixture
async def admin_server(start_server: StartServer) -> Harness:
    return await start_server(admin__token=TOKEN)


async def add_account(server: Harness, name: str, role: str = "moderator") -> str:
    async with httpx.AsyncClient(base_url=server.url, headers=AUTH) as http:
        made = await http.post("/admin/moderators", json={"name": name, "role": role})
    assert made.status_code == 201, made.text
    assert made.headers["cache-control"] == "no-store"
    return str(made.json()["password"])


class Console:
    """A signed-in console: an HTTP client holding the cookie, and the CSRF token."""

    def __init__(self, http: httpx.AsyncClient, csrf: str, name: str) -> None:
        self.http = http
        self.csrf = csrf
        self.name = name

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(path, **kwargs)

    async def post(self, path: str, body: Any = None) -> httpx.Response:
        return await self.http.post(path, json=body or {}, headers={"X-CSRF-Token": self.csrf})

    async def delete(self, path: str) -> httpx.Response:
        return await self.http.delete(path, headers={"X-CSRF-Token": self.csrf})

    async def put(self, path: str, body: Any = None) -> httpx.Response:
        return await self.http.put(path, json=body or {}, headers={"X-CSRF-Token": self.csrf})


@asynccontextmanager
async def signed_in(server: Harness, name: str, password: str) -> AsyncIterator[Console]:
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post("/admin/session", json={"name": name, "password": password})
        assert answer.status_code == 200, answer.text
        yield Console(http, answer.json()["csrf"], name)


async def reported_pair(server: Harness, reason: str, chat: str) -> tuple[Client, Client]:
    """A real match in which ``a`` reports ``b`` after ``b`` said ``chat``."""
    a, b = await server.pair()
    await b.send("chat", {"message": chat})
    await a.expect("chat")
    await a.send("chat", {"message": "please stop"})
    await b.expect("chat")
    await a.send("report", {"reason": reason})
    await b.expect("partner_disconnected")
    return a, b


async def one_report_id(console: Console) -> int:
    queue = (await console.get("/admin/queue")).json()["reports"]
    assert len(queue) == 1
    return int(queue[0]["id"])


# -- who may call -----------------------------------------------------------------

ROUTES = [
    ("GET", "/admin/queue"),
    ("GET", "/admin/reports"),
    ("GET", "/admin/reports/1"),
    ("POST", "/admin/reports/1/claim"),
    ("POST", "/admin/reports/1/release"),
    ("POST", "/admin/reports/1/ban"),
    ("POST", "/admin/reports/1/dismiss"),
    ("POST", "/admin/reports/1/lift"),
    ("GET", "/admin/bans"),
    ("POST", "/admin/bans"),
    ("DELETE", "/admin/bans/192.0.2.1"),
    ("GET", "/admin/live"),
    ("GET", "/admin/audit"),
    ("GET", "/admin/moderators"),
    ("POST", "/admin/moderators"),
    ("DELETE", "/admin/moderators/ana"),
    ("DELETE", "/admin/session"),
]


@pytest.mark.rule("protocol/console-auth")
async def test_no_console_or_api_action_without_a_session_or_the_token(
    admin_server: Harness,
) -> None:
    async with httpx.AsyncClient(base_url=admin_server.url) as http:
        for method, path in ROUTES:
            for cookies in ({}, {"omiro_console": "forged-session-value"}):
                http.cookies.clear()
                http.cookies.update(cookies)
                answer = await http.request(method, path, json={})
                assert answer.status_code == 401, (method, path, cookies)
                assert answer.json()["error"] == "unauthorized"
        assert (await http.get("/admin/session")).status_code == 401


async def test_the_console_api_is_404_without_a_configured_token(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post("/admin/session", json={"name": "ana", "password": "x"})
        assert answer.status_code == 404
        assert (await http.get("/admin/queue")).status_code == 404


@pytest.mark.rule("protocol/console-auth")
async def test_sign_in_sets_a_strict_http_only_cookie_and_sign_out_ends_it(
    admin_server: Harness,
) -> None:
    password = await add_account(admin_server, "ana")
    async with httpx.AsyncClient(base_url=admin_server.url) as http:
        answer = await http.post("/admin/session", json={"name": "ana", "password": password})
        assert answer.status_code == 200
        cookie = answer.headers["set-cookie"]
        flags = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path"} <= flags
        assert "samesite=strict" in cookie.lower()
        assert "path=/admin" in cookie.lower()
        assert "secure" not in flags  # plain HTTP: a Secure cookie would never come back
        assert answer.json()["role"] == "moderator"
        csrf = answer.json()["csrf"]
        me = (await http.get("/admin/session")).json()
        assert (me["name"], me["csrf"]) == ("ana", csrf)
        assert (await http.get("/admin/queue")).status_code == 200
        assert (
            await http.delete("/admin/session", headers={"X-CSRF-Token": csrf})
        ).status_code == 204
        assert (await http.get("/admin/queue")).status_code == 401
        # The old cookie, replayed, is no good either.
        http.cookies.set("omiro_console", answer.cookies["omiro_console"], path="/admin")
        assert (await http.get("/admin/queue")).status_code == 401


@pytest.mark.rule("protocol/console-auth")
async def test_the_cookie_is_secure_when_a_trusted_proxy_says_https(
    start_server: StartServer,
) -> None:
    server = await start_server(admin__token=TOKEN, server__trusted_proxies=["127.0.0.1/32"])
    password = await add_account(server, "ana")
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post(
            "/admin/session",
            json={"name": "ana", "password": password},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.9"},
        )
    assert answer.status_code == 200
    assert "secure" in answer.headers["set-cookie"].lower()


@pytest.mark.rule("protocol/console-auth")
async def test_every_change_needs_the_sessions_csrf_token(admin_server: Harness) -> None:
    _a, _b = await reported_pair(admin_server, "spam", "buy")
    password = await add_account(admin_server, "ana")
    async with signed_in(admin_server, "ana", password) as console:
        report_id = await one_report_id(console)
        http = console.http
        for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": ""}):
            for method, path in [
                ("POST", f"/admin/reports/{report_id}/claim"),
                ("POST", f"/admin/reports/{report_id}/dismiss"),
                ("POST", "/admin/bans"),
                ("DELETE", "/admin/session"),
            ]:
                answer = await http.request(
                    method, path, json={"target": "192.0.2.1", "duration_s": 60}, headers=headers
                )
                assert answer.status_code == 403, (method, path, headers)
                assert answer.json()["error"] == "forbidden"
        assert (await console.get("/admin/bans")).json()["bans"] == []
        assert (await console.post(f"/admin/reports/{report_id}/claim")).status_code == 200


@pytest.mark.rule("protocol/console-roles")
async def test_a_moderator_cannot_exceed_their_role(admin_server: Harness) -> None:
    password = await add_account(admin_server, "ana")
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as admin:
        forever = await admin.post("/admin/bans", json={"target": "192.0.2.50", "reason": "x"})
        assert forever.status_code == 201
    async with signed_in(admin_server, "ana", password) as console:
        refused = [
            await console.post("/admin/bans", {"target": "192.0.2.1", "duration_s": None}),
            await console.post("/admin/bans", {"target": "192.0.2.1", "duration_s": WEEK_S + 1}),
            await console.delete("/admin/bans/192.0.2.50"),
            await console.get("/admin/moderators"),
            await console.post("/admin/moderators", {"name": "eve", "role": "admin"}),
            await console.delete("/admin/moderators/ana"),
            await console.get("/admin/audit"),
        ]
        assert [r.status_code for r in refused] == [403] * len(refused)
        assert {r.json()["error"] for r in refused} == {"forbidden"}
        within = await console.post("/admin/bans", {"target": "192.0.2.1", "duration_s": WEEK_S})
        assert within.status_code == 201
        assert within.json()["by"] == "ana"
        assert (await console.delete("/admin/bans/192.0.2.1")).status_code == 204
        bans = (await console.get("/admin/bans")).json()["bans"]
        assert [b["target"] for b in bans] == ["192.0.2.50"]  # still there


@pytest.mark.rule("protocol/console-auth")
async def test_sign_in_is_throttled_like_the_admin_token(admin_server: Harness) -> None:
    password = await add_account(admin_server, "ana")
    async with httpx.AsyncClient(base_url=admin_server.url) as http:
        wrong = [
            await http.post("/admin/session", json={"name": name, "password": "guess"})
            for name in ["ana"] * 5 + ["nobody"] * 5
        ]
        # A wrong password and an unknown name read the same.
        assert {(r.status_code, r.json()["message"]) for r in wrong} == {
            (401, "wrong name or password")
        }
        locked = await http.post("/admin/session", json={"name": "ana", "password": password})
        assert locked.status_code == 429
        assert int(locked.headers["retry-after"]) > 0
        # The lockout is the client's, for the token too.
        assert (await http.get("/admin/bans", headers=AUTH)).status_code == 429


async def test_a_sign_in_flood_costs_a_bounded_number_of_password_checks_while_a_pair_chats(
    admin_server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = 0
    real_check = accounts.check_password

    async def counted(password_hash: str | None, password: str) -> bool:
        nonlocal checks
        checks += 1
        return await real_check(password_hash, password)

    monkeypatch.setattr(accounts, "check_password", counted)
    a, b = await admin_server.pair()
    statuses: list[int] = []
    round_trips: list[float] = []
    async with httpx.AsyncClient(base_url=admin_server.url) as http:

        async def guess(n: int) -> None:
            body = {"name": "ana", "password": f"guess {n}"}
            statuses.append((await http.post("/admin/session", json=body)).status_code)

        async with trio.open_nursery() as nursery:
            for n in range(40):  # all at once, from one client
                nursery.start_soon(guess, n)
            for n in range(20):
                start = trio.current_time()
                await a.send("chat", {"message": f"ping {n}"})
                await b.expect("chat")
                round_trips.append(trio.current_time() - start)
    assert set(statuses) <= {401, 429}
    assert checks <= 10  # one at a time, and 10 failures lock the client out
    assert statuses.count(401) == checks
    assert statistics.median(round_trips) < 0.1, round_trips
    assert max(round_trips) < 1.0, round_trips


async def test_a_removed_account_is_signed_out(admin_server: Harness) -> None:
    password = await add_account(admin_server, "ana")
    async with signed_in(admin_server, "ana", password) as console:
        assert (await console.get("/admin/queue")).status_code == 200
        async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as admin:
            assert (await admin.delete("/admin/moderators/ana")).status_code == 204
            assert (await admin.delete("/admin/moderators/ana")).status_code == 404
        assert (await console.get("/admin/queue")).status_code == 401


@pytest.mark.parametrize(
    "body",
    [
        {"name": "Ana", "role": "moderator"},
        {"name": "", "role": "moderator"},
        {"name": "a" * 33, "role": "moderator"},
        {"name": "ana", "role": "root"},
        {"name": "../x"},
    ],
)
async def test_bad_account_requests_are_400(admin_server: Harness, body: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as admin:
        answer = await admin.post("/admin/moderators", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"] == "bad_request"


# -- the work ---------------------------------------------------------------------


@pytest.mark.rule("protocol/console-reports")
async def test_a_report_from_a_real_match_is_banned_from_and_the_second_moderator_sees_it(
    admin_server: Harness,
) -> None:
    chat = '<script>alert("x")</script><b>hi</b>'
    _a, b = await reported_pair(admin_server, "harassment", chat)
    ana = await add_account(admin_server, "ana")
    bo = await add_account(admin_server, "bo")
    async with (
        signed_in(admin_server, "ana", ana) as first,
        signed_in(admin_server, "bo", bo) as second,
    ):
        queue = (await first.get("/admin/queue")).json()["reports"]
        assert len(queue) == 1
        entry = queue[0]
        assert entry["category"] == "harassment"
        assert entry["reporters"] == 1
        assert entry["status"]["state"] == "open"
        # The transcript is kept as it was typed: the page shows it as text.
        assert entry["transcript"] == [f"reported: {chat}", "reporter: please stop"]
        assert entry["match_s"] is not None
        assert 0 <= entry["match_s"] < 30
        report_id = entry["id"]
        evidence = (await second.get(f"/admin/reports/{report_id}")).json()
        assert evidence["earlier_reports"] == []
        assert evidence["bans"] == []
        assert evidence["ban_now"] is None

        claimed = await first.post(f"/admin/reports/{report_id}/claim")
        assert claimed.json()["status"]["by"] == "ana"
        taken = await second.post(f"/admin/reports/{report_id}/claim")
        assert taken.status_code == 409
        assert "ana" in taken.json()["message"]
        assert (await second.post(f"/admin/reports/{report_id}/dismiss")).status_code == 409

        banned = await first.post(
            f"/admin/reports/{report_id}/ban", {"duration_s": 3600, "note": "slurs"}
        )
        assert banned.status_code == 200, banned.text
        assert banned.json()["status"]["state"] == "actioned"
        assert banned.json()["ban"]["by"] == "ana"
        # The reported socket (and, same address here, the reporter's) is closed as banned.
        assert (await b.expect("error"))["code"] == "banned"
        assert await b.expect_closed() == 1008

        seen = (await second.get(f"/admin/reports/{report_id}")).json()
        assert seen["status"]["state"] == "actioned"
        assert seen["status"]["by"] == "ana"
        assert seen["status"]["action"] == "ban 3600 s"
        assert seen["status"]["note"] == "slurs"
        assert seen["ban_now"]["by"] == "ana"
        assert [ban["reason"] for ban in seen["bans"]] == ["slurs"]
        assert (await second.get("/admin/queue")).json()["reports"] == []
        again = await second.post(f"/admin/reports/{report_id}/ban", {"duration_s": 60})
        assert again.status_code == 409
        live = (await second.get("/admin/live")).json()
        assert live["reports_last_hour"] == 1
        assert live["active_bans"] == 1
        assert live["open_reports"] == 0
        assert live["matches_per_minute"] >= 0  # added every 10 s (test_moderation_records.py)
        assert "call_success" in live

    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as admin:
        entries = (await admin.get("/admin/audit")).json()["entries"]
        assert [(e["actor"], e["action"], e["report_id"]) for e in entries[:2]] == [
            ("ana", "ban", report_id),
            ("ana", "claim", report_id),
        ]
        assert entries[0]["target"] == "127.0.0.1"
        assert entries[0]["note"] == "3600 s; slurs"
        lines = (await admin.get("/admin/audit", params={"format": "jsonl"})).text.splitlines()
        assert json.loads(lines[0])["action"] == "ban"
        table = (await admin.get("/admin/audit", params={"format": "csv"})).text
        rows = list(csv.DictReader(io.StringIO(table)))
        assert rows[0]["actor"] == "ana"
        assert rows[0]["report_id"] == str(report_id)


@pytest.mark.rule("protocol/console-reports")
async def test_a_claim_is_released_and_the_report_dismissed_with_a_note(
    admin_server: Harness,
) -> None:
    """Claim, release (the other moderator may claim then), dismiss with a note: the
    report leaves the queue, nobody is banned, each step is in the audit log."""
    a, _b = await reported_pair(admin_server, "spam", "a joke")
    ana = await add_account(admin_server, "ana")
    bo = await add_account(admin_server, "bo")
    async with (
        signed_in(admin_server, "ana", ana) as first,
        signed_in(admin_server, "bo", bo) as second,
    ):
        report_id = await one_report_id(first)
        assert (await first.post(f"/admin/reports/{report_id}/claim")).status_code == 200
        refused = await second.post(f"/admin/reports/{report_id}/release")
        assert refused.status_code == 409
        released = await first.post(f"/admin/reports/{report_id}/release")
        assert released.status_code == 200, released.text
        assert (released.json()["status"]["state"], released.json()["status"]["by"]) == ("open", "")
        assert (await second.post(f"/admin/reports/{report_id}/claim")).status_code == 200
        dismissed = await second.post(
            f"/admin/reports/{report_id}/dismiss", {"note": "a joke between friends"}
        )
        assert dismissed.status_code == 200, dismissed.text
        status = dismissed.json()["status"]
        assert (status["state"], status["by"], status["note"]) == (
            "dismissed",
            "bo",
            "a joke between friends",
        )
        assert (await first.get("/admin/queue")).json()["reports"] == []
        seen = (await first.get(f"/admin/reports/{report_id}")).json()
        assert seen["status"]["state"] == "dismissed"
        assert seen["ban_now"] is None
        assert (await first.get("/admin/bans")).json()["bans"] == []
        final = await first.post(f"/admin/reports/{report_id}/claim")
        assert final.status_code == 409
        assert "dismissed by bo" in final.json()["message"]
    # Nobody was banned: the two may chat again.
    await a.send("join_queue")
    await a.expect("queued")
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as admin:
        entries = (await admin.get("/admin/audit")).json()["entries"]
    assert [(e["actor"], e["action"], e["report_id"], e["note"]) for e in entries[:4]] == [
        ("bo", "dismiss", report_id, "a joke between friends"),
        ("bo", "claim", report_id, ""),
        ("ana", "release", report_id, ""),
        ("ana", "claim", report_id, ""),
    ]


@pytest.mark.rule("protocol/console-reports")
async def test_the_queue_puts_possible_minors_first(admin_server: Harness) -> None:
    backend = admin_server.ctx.backend
    now = admin_server.ctx.wall()
    for n, (reason, reported) in enumerate(
        [
            ("spam", "192.0.2.1"),
            ("nudity", "192.0.2.2"),
            ("minor", "192.0.2.3"),
            ("other", "192.0.2.4"),
        ]
    ):
        await backend.record_report(
            ReportRecord(reported, f"bad{n}", f"good{n}", "198.51.100.1", reason, now, ())
        )
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as admin:
        queue = (await admin.get("/admin/queue")).json()["reports"]
    assert [r["category"] for r in queue] == ["minor", "nudity", "spam", "other"]


@pytest.mark.rule("protocol/console-reports")
async def test_an_automatic_ban_is_shown_on_its_report_and_lifted_from_it(
    admin_server: Harness,
) -> None:
    desk = admin_server.ctx.hub.reports
    now = admin_server.ctx.wall()
    for n in range(3):  # three distinct reporters: the default auto-ban
        record = ReportRecord("192.0.2.7", "bad", f"good{n}", f"198.51.100.{n}", "spam", now, ())
        assert await desk.file(record, now=now)
    password = await add_account(admin_server, "ana")
    async with signed_in(admin_server, "ana", password) as console:
        queue = (await console.get("/admin/queue")).json()["reports"]
        assert [r["status"]["autoban"] for r in queue] == [False, False, True]
        assert queue[0]["reporters"] == 3
        fired = queue[2]["id"]
        evidence = (await console.get(f"/admin/reports/{fired}")).json()
        assert evidence["ban_now"]["by"] == "auto"
        assert len(evidence["earlier_reports"]) == 2
        lifted = await console.post(f"/admin/reports/{fired}/lift", {"note": "one troll"})
        assert lifted.status_code == 200
        assert lifted.json()["status"]["state"] == "dismissed"
        assert (await console.get("/admin/bans")).json()["bans"] == []
        nothing = await console.post(f"/admin/reports/{queue[0]['id']}/lift")
        assert nothing.status_code == 409
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as admin:
        entries = (await admin.get("/admin/audit")).json()["entries"]
    assert [(e["actor"], e["action"]) for e in entries] == [
        ("ana", "lift_ban"),
        ("admin", "add_moderator"),
        ("auto", "ban"),
    ]


async def test_bans_are_searched_by_target_reason_and_setter(admin_server: Harness) -> None:
    async with httpx.AsyncClient(base_url=admin_server.url, headers=AUTH) as admin:
        for target, reason in [("192.0.2.1", "spam bot"), ("192.0.2.2", "slurs")]:
            await admin.post(
                "/admin/bans", json={"target": target, "duration_s": 60, "reason": reason}
            )

        async def search(q: str) -> list[str]:
            bans = (await admin.get("/admin/bans", params={"q": q})).json()["bans"]
            return [b["target"] for b in bans]

        assert await search("SPAM") == ["192.0.2.1"]
        assert await search("192.0.2.2") == ["192.0.2.2"]
        assert sorted(await search("admin")) == ["192.0.2.1", "192.0.2.2"]
        assert await search("nothing") == []


# -- the CLI does what the console does ------------------------------------------


@pytest.mark.rule(
    "protocol/console-roles", "protocol/console-auth", "protocol/gate", "protocol/raid"
)
async def test_an_admin_console_makes_and_revokes_invites_and_switches_raid_mode(
    start_server: StartServer,
) -> None:
    """Invites and raid mode from a console session: admins only, each change with the
    session's CSRF token, each in the audit log under the admin's name; a pair already
    chatting is left alone by raid mode."""
    server = await start_server(admin__token=TOKEN, gate__kind="invite")
    admin_password = await add_account(server, "ada", "admin")
    moderator_password = await add_account(server, "mo")

    async def visitor(code: str) -> tuple[int, int]:
        async with httpx.AsyncClient(base_url=server.url) as http:
            entered = await http.post("/gate/invite", json={"code": code})
            return entered.status_code, (await http.get("/session/new")).status_code

    async with signed_in(server, "mo", moderator_password) as moderator:
        for refused in (
            await moderator.get("/admin/invites"),
            await moderator.post("/admin/invites", {"uses": 1}),
            await moderator.get("/admin/raid"),
            await moderator.put("/admin/raid", {"on": True}),
        ):
            assert refused.status_code == 403, refused.text
            assert refused.json()["error"] == "forbidden"
    async with signed_in(server, "ada", admin_password) as console:
        # Without the session's CSRF token nothing changes.
        assert (await console.http.post("/admin/invites", json={})).status_code == 403
        assert (await console.http.put("/admin/raid", json={"on": True})).status_code == 403
        assert (await console.get("/admin/invites")).json()["invites"] == []
        made = await console.post("/admin/invites", {"uses": 2, "expires_s": 86400, "note": "club"})
        assert made.status_code == 201, made.text
        code, invite = made.json()["code"], made.json()["invite"]
        assert (invite["uses"], invite["left"], invite["by"], invite["note"]) == (
            2,
            2,
            "ada",
            "club",
        )
        listed = (await console.get("/admin/invites")).json()["invites"]
        assert [i["id"] for i in listed] == [invite["id"]]
        assert "code" not in listed[0]
        assert await visitor(code) == (204, 200)

        a, b = await server.pair()
        switched = await console.put("/admin/raid", {"on": True, "retry_after_s": 60})
        assert switched.status_code == 200, switched.text
        assert (switched.json()["on"], switched.json()["by"], switched.json()["pause"]) == (
            True,
            "ada",
            True,
        )
        assert (await console.get("/admin/raid")).json()["on"] is True
        assert await visitor(code) == (204, 503)  # let in by the gate, paused by the raid
        await a.send("chat", {"message": "still here"})
        assert (await b.expect("chat"))["message"] == "still here"
        off = await console.put("/admin/raid", {"on": False})
        assert off.json() == {"on": False}

        assert (await console.delete(f"/admin/invites/{invite['id']}")).status_code == 204
        assert (await console.delete(f"/admin/invites/{invite['id']}")).status_code == 404
        assert await visitor(code) == (403, 401)
        entries = (await console.get("/admin/audit")).json()["entries"]
    assert [(e["actor"], e["action"], e["target"]) for e in entries][:4] == [
        ("ada", "revoke_invite", invite["id"]),
        ("ada", "raid_off", ""),
        ("ada", "raid_on", ""),
        ("ada", "add_invite", invite["id"]),
    ]


async def _omiro(*args: str) -> subprocess.CompletedProcess[str]:
    done: subprocess.CompletedProcess[bytes] = await trio.run_process(
        [OMIRO, *args], capture_stdout=True, capture_stderr=True, check=False
    )
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


async def test_the_cli_manages_accounts_works_the_queue_and_exports_the_audit_log(
    admin_server: Harness, tmp_path: Path
) -> None:
    common = ("--url", admin_server.url, "--token", TOKEN)
    made = await _omiro("moderator", "add", "ana", "--role", "admin", *common)
    assert made.returncode == 0, made.stderr
    password = made.stdout.split("password: ")[1].split()[0]
    async with signed_in(admin_server, "ana", password) as console:
        me = (await console.get("/admin/session")).json()
    assert me["role"] == "admin"
    listed = await _omiro("moderator", "list", *common)
    assert listed.stdout.split("\t")[:2] == ["ana", "admin"]

    _a, b = await reported_pair(admin_server, "minor", "how old are you")
    queue = await _omiro("report", "queue", *common)
    assert queue.returncode == 0, queue.stderr
    report_id = queue.stdout.split("\t")[0].lstrip("#")
    assert "\tminor\t127.0.0.1\t" in queue.stdout
    shown = await _omiro("report", "show", report_id, *common)
    assert "reported: how old are you" in shown.stdout
    banned = await _omiro(
        "report", "ban", report_id, "--duration", "600", "--note", "=cmd", *common
    )
    assert banned.returncode == 0, banned.stderr
    assert "actioned (ban 600 s)" in banned.stdout
    assert await b.expect_closed() == 1008
    assert (await _omiro("report", "dismiss", report_id, *common)).returncode == 1

    out = tmp_path / "audit.csv"
    exported = await _omiro("audit", "export", "--format", "csv", "--output", str(out), *common)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["action"] for r in rows] == ["ban", "add_moderator"]
    assert rows[0]["note"] == "600 s; =cmd"  # not a formula: it does not start the cell
    jsonl = await _omiro("audit", "export", *common)
    assert [json.loads(line)["action"] for line in jsonl.stdout.splitlines()] == [
        "ban",
        "add_moderator",
    ]
    removed = await _omiro("moderator", "remove", "ana", *common)
    assert removed.returncode == 0, removed.stderr
