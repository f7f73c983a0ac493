"""The entry gate over real sockets: one server, its page's requests as a browser sends them.

``GET /session/new`` with and without the gate pass, the entry routes
(``POST /gate/passphrase``, ``POST /gate/invite``), the admin API of
invites and raid mode, and a pair that keeps chatting while raid mode
refuses newcomers. Two servers on Redis: ``tests/cluster/test_gate_cluster.py``.
"""

from __future__ import annotations

import functools
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import argon2
import httpx
import pytest
import trio
from support import Harness, StartServer

from omiro_trio import accounts
from omiro_trio.config import GateConfig
from omiro_trio.gate.invite import new_invite
from omiro_trio.gate.passes import COOKIE

TRIES_PER_MINUTE = GateConfig().tries_per_minute
OMIRO = str(Path(sys.executable).with_name("omiro"))  # the installed console script

PHRASE = "the owl flies at midnight"
ADMIN_TOKEN = "an-admin-token-that-is-long-enough!"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@functools.cache
def phrase_hash() -> str:
    return argon2.PasswordHasher().hash(PHRASE)


async def passphrase_server(start_server: StartServer, **more: Any) -> Harness:
    return await start_server(
        gate__kind="passphrase",
        gate__passphrase_hash=phrase_hash(),
        admin__token=ADMIN_TOKEN,
        **more,
    )


@pytest.mark.rule("protocol/gate")
async def test_open_gate_is_the_default_and_sets_no_cookie(server: Harness) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.get("/session/new")
        assert answer.status_code == 200
        assert "set-cookie" not in answer.headers
        assert (await http.post("/gate/passphrase", json={"passphrase": "x"})).status_code in (
            404,
            405,
        )


@pytest.mark.rule("protocol/gate", "protocol/gate-entry")
async def test_passphrase_gate_refuses_then_admits_with_the_pass(
    start_server: StartServer,
) -> None:
    server = await passphrase_server(start_server)
    async with httpx.AsyncClient(base_url=server.url) as http:
        refused = await http.get("/session/new")
        assert refused.status_code == 401
        assert refused.json() == {
            "error": "gate",
            "gate": "passphrase",
            "reason": "required",
            "message": refused.json()["message"],
        }
        assert refused.headers["cache-control"] == "no-store"
        wrong = await http.post("/gate/passphrase", json={"passphrase": "the owl sleeps"})
        assert wrong.status_code == 403
        assert (wrong.json()["error"], wrong.json()["reason"]) == ("gate", "wrong")
        assert COOKIE not in http.cookies
        right = await http.post("/gate/passphrase", json={"passphrase": PHRASE})
        assert right.status_code == 204
        set_cookie = right.headers["set-cookie"]
        for flag in ("HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=2592000"):
            assert flag in set_cookie, set_cookie
        assert "Secure" not in set_cookie  # plain http on loopback
        admitted = await http.get("/session/new")
        assert admitted.status_code == 200
        assert server.ctx.signer.verify(admitted.json()["token"], server.ctx.wall())
        # Kept-alive connections (a later request, answered in place) alike.
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/session/new")).status_code == 200
    async with httpx.AsyncClient(base_url=server.url) as stranger:
        good = right.cookies[COOKIE]
        # Forged: its signature's last hex digit changed (to one it is not).
        stranger.cookies.set(COOKIE, good[:-1] + ("1" if good.endswith("0") else "0"))
        assert (await stranger.get("/session/new")).status_code == 401


@pytest.mark.rule("protocol/gate", "protocol/gate-entry")
async def test_passphrase_bad_bodies_get_clear_errors(start_server: StartServer) -> None:
    server = await passphrase_server(start_server)
    async with httpx.AsyncClient(base_url=server.url) as http:
        for body in (b"", b"{", b'{"phrase": "x"}', b'{"passphrase": 5}'):
            answer = await http.post("/gate/passphrase", content=body)
            assert answer.status_code == 400, body
            assert answer.json()["error"] == "bad_request"
        long = await http.post("/gate/passphrase", json={"passphrase": "x" * 257})
        assert long.status_code == 400
        huge = await http.post("/gate/passphrase", content=b"x" * 200_000)
        assert huge.status_code == 413


@pytest.mark.rule("protocol/gate", "protocol/gate-entry")
async def test_passphrase_tries_are_limited_per_client(start_server: StartServer) -> None:
    server = await passphrase_server(start_server, gate__tries_per_minute=3)
    async with httpx.AsyncClient(base_url=server.url) as http:
        statuses = [
            (await http.post("/gate/passphrase", json={"passphrase": f"guess {n}"})).status_code
            for n in range(3)
        ]
        assert statuses == [403, 403, 403]
        limited = await http.post("/gate/passphrase", json={"passphrase": PHRASE})
        assert limited.status_code == 429
        assert limited.headers["retry-after"] == str(limited.json()["retry_after"])
        assert COOKIE not in http.cookies  # even the right phrase waits out the minute


@pytest.mark.rule("protocol/gate")
async def test_a_new_phrase_ends_the_old_passes(start_server: StartServer) -> None:
    first = await passphrase_server(start_server, session__secret="s" * 32)
    async with httpx.AsyncClient(base_url=first.url) as http:
        assert (await http.post("/gate/passphrase", json={"passphrase": PHRASE})).status_code == 204
        kept = http.cookies[COOKIE]
    other_hash = argon2.PasswordHasher().hash("a new phrase")
    second = await start_server(
        gate__kind="passphrase", gate__passphrase_hash=other_hash, session__secret="s" * 32
    )
    same = await start_server(
        gate__kind="passphrase", gate__passphrase_hash=phrase_hash(), session__secret="s" * 32
    )
    for server, status in ((second, 401), (same, 200)):
        async with httpx.AsyncClient(base_url=server.url, cookies={COOKIE: kept}) as http:
            assert (await http.get("/session/new")).status_code == status


async def _invite(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    made = await http.post("/admin/invites", json=body, headers=ADMIN)
    assert made.status_code == 201, made.text
    payload: dict[str, Any] = made.json()
    return payload


@pytest.mark.rule("protocol/gate", "protocol/gate-entry")
async def test_invite_codes_let_people_in_until_used_up_or_revoked(
    start_server: StartServer,
) -> None:
    server = await start_server(gate__kind="invite", admin__token=ADMIN_TOKEN)
    async with httpx.AsyncClient(base_url=server.url) as admin:
        two = await _invite(admin, uses=2, expires_s=3600, note="for the club")
        one = await _invite(admin, uses=1)
        assert two["invite"]["left"] == 2
        assert len(two["code"]) >= 22
        listed = (await admin.get("/admin/invites", headers=ADMIN)).json()["invites"]
        assert [i["id"] for i in listed] == [one["invite"]["id"], two["invite"]["id"]]
        assert all("code" not in i and "key" not in i for i in listed)

    async def visitor(code: str) -> tuple[int, str, int]:
        async with httpx.AsyncClient(base_url=server.url) as http:
            before = await http.get("/session/new")
            entered = await http.post("/gate/invite", json={"code": code})
            after = await http.get("/session/new")
            reason = entered.json()["reason"] if entered.status_code == 403 else ""
            assert before.status_code == 401
            assert before.json()["gate"] == "invite"
            return entered.status_code, reason, after.status_code

    assert await visitor(two["code"]) == (204, "", 200)
    assert await visitor(two["code"]) == (204, "", 200)
    assert await visitor(two["code"]) == (403, "used_up", 401)
    assert await visitor("not-a-code-anyone-made") == (403, "unknown", 401)
    async with httpx.AsyncClient(base_url=server.url) as admin:
        gone = await admin.delete(f"/admin/invites/{one['invite']['id']}", headers=ADMIN)
        assert gone.status_code == 204
        again = await admin.delete(f"/admin/invites/{one['invite']['id']}", headers=ADMIN)
        assert again.status_code == 404
        left = (await admin.get("/admin/invites", headers=ADMIN)).json()["invites"]
        assert [(i["id"], i["left"]) for i in left] == [(two["invite"]["id"], 0)]
        audit = (await admin.get("/admin/audit", headers=ADMIN)).json()
        actions = [e["action"] for e in audit["entries"]]
        assert actions.count("add_invite") == 2
        assert "revoke_invite" in actions
    assert await visitor(one["code"]) == (403, "unknown", 401)


@pytest.mark.rule("protocol/gate")
async def test_invite_admin_api_refuses_bad_requests(start_server: StartServer) -> None:
    server = await start_server(gate__kind="invite", admin__token=ADMIN_TOKEN)
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.post("/admin/invites", json={"uses": 1})).status_code == 401
        for body in ({"uses": 0}, {"expires_s": 10}, {"note": "x" * 201}, {"color": "red"}):
            assert (await http.post("/admin/invites", json=body, headers=ADMIN)).status_code == 400


@pytest.mark.rule("protocol/raid")
async def test_raid_mode_refuses_newcomers_while_a_pair_keeps_chatting(
    start_server: StartServer,
) -> None:
    server = await start_server(admin__token=ADMIN_TOKEN)
    a, b = await server.pair()
    async with httpx.AsyncClient(base_url=server.url) as http:
        assert (await http.get("/admin/raid", headers=ADMIN)).json() == {"on": False}
        on = await http.put("/admin/raid", json={"on": True, "retry_after_s": 120}, headers=ADMIN)
        assert on.status_code == 200
        assert on.json()["on"] is True
        assert on.json()["by"] == "admin"
        paused = await http.get("/session/new")
        assert paused.status_code == 503
        assert paused.json()["error"] == "paused"
        assert paused.json()["retry_after"] == 120
        assert paused.headers["retry-after"] == "120"
        for n in range(5):  # the pair already chatting is left alone
            await a.send("chat", {"message": f"still here {n}"})
            assert (await b.expect("chat"))["message"] == f"still here {n}"
            await b.send("chat", {"message": f"me too {n}"})
            assert (await a.expect("chat"))["message"] == f"me too {n}"
        off = await http.put("/admin/raid", json={"on": False}, headers=ADMIN)
        assert off.json() == {"on": False}
        assert (await http.get("/session/new")).status_code == 200
        bad = await http.put("/admin/raid", json={"on": True, "retry_after_s": 0}, headers=ADMIN)
        assert bad.status_code == 400
        assert (await http.put("/admin/raid", json={"on": True})).status_code == 401
    with trio.fail_after(5):
        await a.send("chat", {"message": "after"})
        assert (await b.expect("chat"))["message"] == "after"


async def _flood_while_a_pair_chats(
    server: Harness, path: str, body: Callable[[int], dict[str, str]]
) -> tuple[list[int], list[float]]:
    """40 tries at once from one client while a matched pair chats 20 round trips."""
    a, b = await server.pair()
    statuses: list[int] = []
    round_trips: list[float] = []
    async with httpx.AsyncClient(base_url=server.url) as http:

        async def guess(n: int) -> None:
            statuses.append((await http.post(path, json=body(n))).status_code)

        async with trio.open_nursery() as nursery:
            for n in range(40):
                nursery.start_soon(guess, n)
            for n in range(20):
                start = trio.current_time()
                await a.send("chat", {"message": f"ping {n}"})
                assert (await b.expect("chat"))["message"] == f"ping {n}"
                round_trips.append(trio.current_time() - start)
    assert statistics.median(round_trips) < 0.1, round_trips
    assert max(round_trips) < 1.0, round_trips
    return statuses, round_trips


async def test_a_passphrase_flood_costs_a_bounded_number_of_hashes_while_a_pair_chats(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks = 0
    real_check = accounts.check_password

    async def counted(password_hash: str | None, password: str) -> bool:
        nonlocal checks
        checks += 1
        return await real_check(password_hash, password)

    monkeypatch.setattr(accounts, "check_password", counted)
    server = await passphrase_server(start_server)  # the default 5 tries a minute
    statuses, _ = await _flood_while_a_pair_chats(
        server, "/gate/passphrase", lambda n: {"passphrase": f"guess {n}"}
    )
    assert checks == TRIES_PER_MINUTE
    assert sorted(statuses) == [403] * TRIES_PER_MINUTE + [429] * (40 - TRIES_PER_MINUTE)


async def test_an_invite_code_flood_is_cut_at_the_tries_bound_while_a_pair_chats(
    start_server: StartServer,
) -> None:
    server = await start_server(gate__kind="invite")
    statuses, _ = await _flood_while_a_pair_chats(
        server, "/gate/invite", lambda n: {"code": f"guessed-code-{n}"}
    )
    assert sorted(statuses) == [403] * TRIES_PER_MINUTE + [429] * (40 - TRIES_PER_MINUTE)


async def _omiro(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [OMIRO, *args], capture_stdout=True, capture_stderr=True, check=False
    )


async def test_invite_and_raid_commands_drive_the_api(start_server: StartServer) -> None:
    server = await start_server(gate__kind="invite", admin__token=ADMIN_TOKEN)
    common = ("--url", server.url, "--token", ADMIN_TOKEN)
    made = await _omiro(
        "invite", "create", "--uses", "3", "--expires", "2d", "--note", "x", *common
    )
    assert made.returncode == 0, made.stderr
    lines = made.stdout.decode().splitlines()
    code = next(line for line in lines if line.startswith("code: ")).removeprefix("code: ")
    link = next(line for line in lines if line.startswith("link: ")).removeprefix("link: ")
    assert link == f"{server.url}/?invite={code}"
    (invite,) = await server.ctx.backend.invites()
    assert (invite.uses, invite.left, invite.note) == (3, 3, "x")
    assert 2 * 86400 - 60 < invite.expires_at - server.ctx.wall() <= 2 * 86400
    listed = await _omiro("invite", "list", *common)
    assert f"{invite.id}\t3/3 left" in listed.stdout.decode()
    assert code not in listed.stdout.decode()
    bad = await _omiro("invite", "create", "--expires", "soon", *common)
    assert bad.returncode == 2
    revoked = await _omiro("invite", "revoke", invite.id, *common)
    assert revoked.returncode == 0, revoked.stderr
    assert await server.ctx.backend.invites() == []
    again = await _omiro("invite", "revoke", invite.id, *common)
    assert again.returncode == 1
    assert b"no such invite" in again.stderr
    on = await _omiro("raid", "on", "--retry-after", "2m", *common)
    assert on.returncode == 0, on.stderr
    assert b"raid mode is on" in on.stdout
    raid = await server.ctx.backend.raid()
    assert raid is not None
    assert raid.retry_after_s == 120
    status = await _omiro("raid", "status", *common)
    assert b"retry after 120 s" in status.stdout
    off = await _omiro("raid", "off", *common)
    assert b"raid mode is off" in off.stdout
    assert await server.ctx.backend.raid() is None


@pytest.mark.rule("protocol/gate", "protocol/gate-entry")
async def test_an_expired_invite_is_refused_with_its_reason(start_server: StartServer) -> None:
    server = await start_server(gate__kind="invite")
    now = server.ctx.wall()
    code, invite = new_invite(uses=5, expires_at=now - 1, now=now - 3600, by="admin")
    assert await server.ctx.backend.add_invite(invite)
    async with httpx.AsyncClient(base_url=server.url) as http:
        answer = await http.post("/gate/invite", json={"code": code})
        assert answer.status_code == 403
        assert (answer.json()["gate"], answer.json()["reason"]) == ("invite", "expired")
        assert COOKIE not in http.cookies
        assert (await http.get("/session/new")).status_code == 401
