"""The moderator console in real Chromium, from a report in a real call to the audit log.

Two strangers meet in a real video call; one reports the other from the
page. A moderator signs in and works the report with the keyboard only: it
shows with its transcript (a transcript holding HTML shows as text), the
moderator bans the reported address group from it, and the reported page
gets the banned notice. A second moderator, reading the same report, sees
it actioned; an admin sees the action in the audit log. The live view
counts a real call and its report without a reload; the bans list is
searched; an automatic ban is lifted from its report. axe checks every
state of the console, on a desk and on a 320 px phone.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from support import AXE_OPTIONS

pytestmark = pytest.mark.browser

ADMIN_TOKEN = "browser-test-admin-token-of-32-bytes!!"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HOSTILE = '<img src=x onerror="document.body.dataset.pwned=1"><b>hi</b>'
# Screenshots (docs/images/console-*.jpg are copies of these).
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TABS_ALLOWED = 60
ALICE = "192.0.2.10"
BOB = "192.0.2.11"


class Moderator:
    """One moderator's browser context on the console page."""

    def __init__(self, page: Any, name: str) -> None:
        self.page = page
        self.name = name
        self.errors: list[str] = []
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on(
            "console",
            lambda m: self.errors.append(m.text) if "Content Security Policy" in m.text else None,
        )

    def testid(self, name: str) -> Any:
        return self.page.get_by_test_id(name)

    def wait(self, predicate: str, arg: Any = None, timeout_ms: int = 15_000) -> Any:
        return self.page.wait_for_function(predicate, arg=arg, timeout=timeout_ms, polling=100)

    def tab_to(self, selector: str) -> None:
        """Press Tab until the element ``selector`` has the focus (keyboard only)."""
        for _ in range(TABS_ALLOWED):
            if self.page.evaluate("s => document.activeElement?.matches(s) ?? false", selector):
                return
            self.page.keyboard.press("Tab")
        raise AssertionError(f"{selector} never got the focus in {TABS_ALLOWED} tabs")

    def sign_in_with_keyboard(self, password: str) -> None:
        self.tab_to("#signin-name")
        self.page.keyboard.type(self.name)
        self.page.keyboard.press("Tab")
        self.page.keyboard.type(password)
        self.page.keyboard.press("Enter")
        self.wait("() => document.body.dataset.view === 'desk'")

    def axe(self, state: str) -> None:
        from axe_playwright_python.sync_playwright import Axe

        self.wait(
            "() => document.getAnimations().filter(a => a instanceof CSSTransition"
            " && a.playState === 'running').length === 0"
        )
        results = Axe().run(self.page, options=AXE_OPTIONS)
        violations = [
            {"id": v["id"], "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in results.response["violations"]
        ]
        assert violations == [], f"{self.name}, {state}: {violations}"

    def no_horizontal_scroll(self) -> None:
        """The page reflows: nothing but a table's own scrolling region is wider than the
        window (WCAG 1.4.10)."""
        width = self.page.evaluate("() => document.documentElement.scrollWidth")
        viewport = self.page.evaluate("() => window.innerWidth")
        assert width <= viewport, f"{self.name}: the page scrolls sideways ({width} > {viewport})"


@pytest.fixture
def moderators(browser: Any) -> Any:
    """Factory: moderators(server, name, width=..., height=...) opens ``server``'s console."""
    opened: list[tuple[Any, Moderator]] = []

    def open_console(server: Any, name: str, *, width: int = 1280, height: int = 900) -> Moderator:
        context = browser.new_context(
            viewport={"width": width, "height": height}, reduced_motion="reduce"
        )
        page = context.new_page()
        moderator = Moderator(page, name)
        opened.append((context, moderator))
        page.goto(server.url + "/console")
        page.wait_for_function("() => window.omiroConsole !== undefined", timeout=10_000)
        return moderator

    yield open_console
    errors = {m.name: m.errors for _, m in opened if m.errors}
    for context, _ in opened:
        context.close()
    assert not errors, f"errors in the console: {errors}"


@pytest.fixture
def server_for_console(make_server: Any) -> Any:
    return make_server(OMIRO_ADMIN_TOKEN=ADMIN_TOKEN)


def add_account(server: Any, name: str, role: str = "moderator") -> str:
    made = server.get_json(
        "/admin/moderators", method="POST", headers=dict(AUTH), body={"name": name, "role": role}
    )
    assert "password" in made, made
    return str(made["password"])


@pytest.mark.rule("protocol/console-page", "protocol/console-reports", "protocol/console-auth")
def test_a_report_from_a_real_call_is_banned_from_the_console_by_keyboard(
    server_for_console: Any, people: Any, moderators: Any
) -> None:
    server = server_for_console
    ana_password = add_account(server, "ana")
    bo_password = add_account(server, "bo")
    ada_password = add_account(server, "ada", "admin")

    alice = people(server, "alice")
    bob = people(server, "bob")
    for person in (alice, bob):
        person.start()
    for person in (alice, bob):
        person.wait_call_connected()
    bob.testid("chat-input").fill(HOSTILE)
    bob.testid("chat-input").press("Enter")
    alice.wait(
        "() => document.querySelector('[data-testid=chat-log]').textContent.includes('<b>hi')"
    )
    alice.testid("report").click()
    alice.page.locator("#report-dialog").get_by_label("Looks under age").check()
    alice.testid("report-confirm").click()
    bob.wait_state("waiting")

    ana = moderators(server, "ana")
    ana.axe("sign-in")
    ana.tab_to("#signin-name")
    ana.page.keyboard.type("ana")
    ana.page.keyboard.press("Tab")
    ana.page.keyboard.type("wrong password")
    ana.page.keyboard.press("Enter")
    ana.wait("() => document.querySelector('#signin-error').textContent.includes('Wrong')")
    ana.axe("sign-in refused")
    ana.page.locator("#signin-name").fill("")
    ana.sign_in_with_keyboard(ana_password)
    ana.wait("() => document.querySelectorAll('[data-testid=queue-item]').length === 1")
    ana.axe("desk")
    queue_text = ana.testid("queue-list").inner_text()
    assert "Possible minor" in queue_text
    assert "127.0.0.…" in queue_text  # the address group, truncated

    bo = moderators(server, "bo")
    bo.sign_in_with_keyboard(bo_password)
    bo.wait("() => document.querySelectorAll('[data-testid=queue-item]').length === 1")
    bo.tab_to("[data-testid=queue-item]")
    bo.page.keyboard.press("Enter")
    bo.wait("() => !document.querySelector('#evidence').hidden")

    # Ana opens the report with the keyboard and reads its evidence.
    ana.tab_to("[data-testid=queue-item]")
    ana.page.keyboard.press("Enter")
    ana.wait("() => !document.querySelector('#evidence').hidden")
    assert ana.page.evaluate("() => document.activeElement.id") == "evidence"
    lines = ana.testid("transcript").inner_text()
    assert HOSTILE in lines  # the HTML shows as the text it is
    assert ana.page.locator("#transcript img, #transcript b").count() == 0
    assert ana.page.evaluate("() => document.body.dataset.pwned") is None
    assert "Possible minor" in ana.page.locator("#evidence-title").inner_text()
    facts = ana.page.locator("#evidence-facts").inner_text()
    assert "minor" in facts
    assert "The match had lasted" in facts
    ana.axe("evidence")

    ana.tab_to("[data-testid=claim]")
    ana.page.keyboard.press("Enter")
    ana.wait(
        "() => document.querySelector('#evidence-state').textContent.includes('Claimed by ana')"
    )
    ana.tab_to("[data-testid=ban-duration]")
    ana.page.keyboard.press("ArrowUp")  # 1 day -> 1 hour
    assert ana.page.locator("#ban-duration").input_value() == "3600"
    ana.page.keyboard.press("Tab")
    ana.page.keyboard.type("asked a child's age")
    ana.tab_to("[data-testid=ban]")
    ana.page.keyboard.press("Enter")
    ana.wait(
        "() => document.querySelector('#evidence-state').textContent.includes('Actioned by ana')"
    )
    ana.axe("actioned")

    # The reported page is disconnected with the banned notice.
    bob.wait_state("blocked")
    assert "banned" in bob.testid("notice").inner_text()

    # The second moderator's open report turns actioned without a reload.
    bo.wait(
        "() => document.querySelector('#evidence-state').textContent.includes('Actioned by ana')"
    )
    assert bo.page.locator("#actions").is_hidden()
    assert bo.page.locator("[data-testid=queue-item]").count() == 0
    assert "asked a child's age" in bo.testid("bans-body").inner_text()

    ada = moderators(server, "ada")
    ada.sign_in_with_keyboard(ada_password)
    ada.wait("() => document.querySelector('#audit-body').textContent.includes('ban')")
    audit = ada.testid("audit-body").inner_text()
    assert "ana" in audit
    assert "3600 s; asked a child's age" in audit
    ada.axe("admin with the audit log")
    ARTIFACTS.mkdir(exist_ok=True)
    ada.page.screenshot(path=str(ARTIFACTS / "console-desk.jpg"), full_page=True, quality=80)
    bo.page.screenshot(path=str(ARTIFACTS / "console-report.jpg"), full_page=True, quality=80)

    # Sign out with the keyboard: back to the sign-in, and the session is gone.
    ana.tab_to("[data-testid=sign-out]")
    ana.page.keyboard.press("Enter")
    ana.wait("() => document.body.dataset.view === 'signin'")
    assert ana.page.evaluate("async () => (await fetch('admin/queue')).status") == 401


def test_the_console_fits_a_320_px_phone_in_every_state(
    server_for_console: Any, moderators: Any
) -> None:
    server = server_for_console
    password = add_account(server, "ana")
    server.get_json(
        "/admin/bans",
        method="POST",
        headers=dict(AUTH),
        body={"target": "2001:db8:1:2::/64", "duration_s": 600, "reason": "a long reason " * 8},
    )
    phone = moderators(server, "ana", width=320, height=640)
    phone.no_horizontal_scroll()
    phone.axe("phone sign-in")
    phone.sign_in_with_keyboard(password)
    phone.wait("() => document.querySelector('#bans-body').textContent.includes('2001:db8')")
    phone.no_horizontal_scroll()
    phone.axe("phone desk")
    phone.page.screenshot(path=str(ARTIFACTS / "console-phone.jpg"), full_page=True, quality=80)


def _enter_with(server: Any, code: str) -> tuple[int, int]:
    """A visitor brings ``code``: (the status of ``POST /gate/invite``, then of
    ``GET /session/new`` with the pass it set)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
    statuses = []
    for method, path, body in (
        ("POST", "/gate/invite", json.dumps({"code": code}).encode()),
        ("GET", "/session/new", None),
    ):
        request = urllib.request.Request(server.url + path, data=body, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with opener.open(request, timeout=5) as response:
                statuses.append(response.status)
        except urllib.error.HTTPError as err:
            statuses.append(err.code)
    return statuses[0], statuses[1]


@pytest.mark.rule("protocol/console-page", "protocol/console-roles", "protocol/gate")
def test_an_admin_makes_and_revokes_an_invite_and_switches_raid_mode_by_keyboard(
    make_server: Any, browser: Any
) -> None:
    server = make_server(OMIRO_ADMIN_TOKEN=ADMIN_TOKEN, OMIRO_GATE_KIND="invite")
    ada_password = add_account(server, "ada", "admin")
    mo_password = add_account(server, "mo")
    opened = []
    for name, width in (("mo", 1280), ("ada", 1280), ("ada", 320)):
        context = browser.new_context(
            viewport={"width": width, "height": 900}, reduced_motion="reduce"
        )
        page = context.new_page()
        opened.append((context, Moderator(page, name)))
        page.goto(server.url + "/console")
        page.wait_for_function("() => window.omiroConsole !== undefined", timeout=10_000)
    mo, ada, phone = (moderator for _, moderator in opened)
    try:
        # A moderator has no such section.
        mo.sign_in_with_keyboard(mo_password)
        assert mo.page.locator("#entry").is_hidden()

        ada.sign_in_with_keyboard(ada_password)
        ada.wait("() => document.querySelector('#invites-body').textContent.includes('No invites')")
        assert ada.testid("raid-state").inner_text() == "Off."
        ada.axe("who may come in")
        ada.tab_to("#invite-uses")
        ada.page.keyboard.press("Control+A")
        ada.page.keyboard.type("3")
        ada.tab_to("#invite-note")
        ada.page.keyboard.type("for the club")
        ada.page.keyboard.press("Enter")
        ada.wait("() => !document.querySelector('#invite-made').hidden")
        assert ada.page.evaluate("() => document.activeElement.id") == "invite-link"
        link = ada.page.locator("#invite-link").input_value()
        assert link.startswith(server.url + "/?invite=")
        code = parse_qs(urlsplit(link).query)["invite"][0]
        ada.wait("() => document.querySelector('#invites-body').textContent.includes('club')")
        assert "3 of 3" in ada.testid("invites-body").inner_text()
        ada.axe("an invite made")
        assert _enter_with(server, code) == (204, 200)

        # Raid mode on, with the keyboard: newcomers are paused, then let in again.
        ada.tab_to("[data-testid=raid-toggle]")
        ada.page.keyboard.press("Enter")
        ada.wait("() => document.querySelector('#raid-state').textContent.startsWith('On since')")
        assert "new chats are paused" in ada.testid("raid-state").inner_text()
        assert ada.testid("raid-toggle").inner_text() == "Turn raid mode off"
        ada.wait("() => document.querySelector('#announce').textContent === 'Raid mode is on.'")
        ada.axe("raid mode on")
        assert _enter_with(server, code) == (204, 503)
        ada.page.keyboard.press("Enter")  # the button keeps the focus
        ada.wait("() => document.querySelector('#raid-state').textContent === 'Off.'")

        # Revoke it (one use left): the code lets nobody in any more.
        ada.wait("() => document.querySelector('#invites-body').textContent.includes('1 of 3')")
        ada.tab_to("[data-invite]")
        ada.page.keyboard.press("Enter")
        ada.wait("() => document.querySelector('[data-invite]') === null")
        assert _enter_with(server, code) == (403, 401)
        ada.wait("() => document.querySelector('#audit-body').textContent.includes('revoke')")
        audit = ada.testid("audit-body").inner_text()
        for action in ("add invite", "raid on", "raid off", "revoke invite"):
            assert action in audit, audit

        phone.sign_in_with_keyboard(ada_password)
        phone.wait("() => document.querySelector('#invites-body').textContent.includes('No inv')")
        phone.no_horizontal_scroll()
        phone.axe("phone, who may come in")
    finally:
        errors = {m.name: m.errors for _, m in opened if m.errors}
        for context, _ in opened:
            context.close()
    assert not errors, f"errors in the console: {errors}"


def _session_status(server: Any, address: str) -> int:
    """The status of ``GET /session/new`` for a visitor at ``address`` (as the trusted
    proxy on 127.0.0.1 says)."""
    request = urllib.request.Request(
        server.url + "/session/new", headers={"X-Forwarded-For": address}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.rule("protocol/console-page", "protocol/console-reports")
def test_the_live_view_refreshes_and_an_automatic_ban_is_found_and_lifted_by_keyboard(
    make_server: Any, people: Any, moderators: Any
) -> None:
    """The live view counts a real call, its report and the ban it fired without a
    reload; the bans list shows each ban's expiry and who set it and is searched; the
    automatic ban is lifted from its report with the keyboard and lets the address in
    again."""
    # Each stranger comes from an address of their own, as a trusted proxy on 127.0.0.1
    # says (one address cannot report itself away); one reporter is enough for a ban.
    server = make_server(
        OMIRO_ADMIN_TOKEN=ADMIN_TOKEN,
        OMIRO_REPORTS_AUTOBAN_REPORTERS="1",
        OMIRO_SERVER_TRUSTED_PROXIES='["127.0.0.1/32"]',
    )
    password = add_account(server, "ana")
    server.get_json(
        "/admin/bans",
        method="POST",
        headers=dict(AUTH),
        body={"target": "192.0.2.77", "duration_s": 600, "reason": "spam bot"},
    )
    ana = moderators(server, "ana")
    ana.sign_in_with_keyboard(password)
    ana.wait("() => document.querySelector('#live-bans').textContent === '1'")
    assert ana.testid("live").locator("#live-reports").inner_text() == "0"
    assert ana.page.locator("#live-calls").inner_text() == "no calls"

    alice = people(server, "alice", extra_http_headers={"X-Forwarded-For": ALICE})
    bob = people(server, "bob", extra_http_headers={"X-Forwarded-For": BOB})
    for person in (alice, bob):
        person.start()
    for person in (alice, bob):
        person.wait_call_connected()
    # The page refreshes itself: two people online, then the match and the call counted
    # (matches and calls are added up every 10 s, over the last 5 minutes).
    ana.wait("() => document.querySelector('#live-online').textContent === '2'")
    ana.wait(
        "() => document.querySelector('#live-matches').textContent === '0.2'"
        " && document.querySelector('#live-calls').textContent === '100 %'",
        timeout_ms=30_000,
    )
    alice.testid("report").click()
    alice.page.locator("#report-dialog").get_by_label("Spam").check()
    alice.testid("report-confirm").click()
    bob.wait_state("blocked")  # the automatic ban fired and closed Bob's socket
    assert "banned" in bob.testid("notice").inner_text()
    assert _session_status(server, BOB) == 403
    assert _session_status(server, ALICE) == 200

    ana.wait(
        "() => document.querySelector('#live-reports').textContent === '1'"
        " && document.querySelector('#live-open').textContent === '1'"
        " && document.querySelector('#live-bans').textContent === '2'"
    )
    assert "auto-banned" in ana.testid("queue-list").inner_text()
    # Each ban with its expiry and who set it (the cells: target, until, reason, by).
    rows = ana.page.locator("#bans-body tr").evaluate_all(
        "rows => rows.map(r => [...r.cells].slice(0, 4).map(c => c.textContent))"
    )
    by_target = {row[0]: row for row in rows}
    assert set(by_target) == {BOB, "192.0.2.77"}, rows
    assert by_target[BOB][3] == "auto"
    assert by_target["192.0.2.77"][2:] == ["spam bot", "admin"]
    assert all(row[1] not in ("", "permanent") for row in rows), rows
    ana.axe("an automatic ban in the queue")

    # Search the bans with the keyboard: by who set it, then by reason.
    ana.tab_to("#bans-search")
    ana.page.keyboard.type("auto")
    ana.wait("() => !document.querySelector('#bans-body').textContent.includes('192.0.2.77')")
    assert BOB in ana.testid("bans-body").inner_text()
    ana.page.keyboard.press("Control+A")
    ana.page.keyboard.type("spam bot")
    ana.wait("b => !document.querySelector('#bans-body').textContent.includes(b)", BOB)
    assert "192.0.2.77" in ana.testid("bans-body").inner_text()
    ana.page.keyboard.press("Control+A")
    ana.page.keyboard.type("nobody")
    ana.wait("() => document.querySelector('#bans-body').textContent.includes('No ban matches')")
    ana.axe("bans searched")
    ana.page.keyboard.press("Control+A")
    ana.page.keyboard.press("Delete")
    ana.wait("() => document.querySelector('#bans-body').textContent.includes('192.0.2.77')")

    # The report shows the automatic ban; lifting it from there dismisses the report.
    ana.tab_to("[data-testid=queue-item]")
    ana.page.keyboard.press("Enter")
    ana.wait("() => !document.querySelector('#evidence').hidden")
    facts = ana.page.locator("#evidence-facts").inner_text()
    assert "fired on this report" in facts
    assert "by auto" in facts
    assert ana.testid("lift").is_visible()
    ana.tab_to("[data-testid=action-note]")
    ana.page.keyboard.type("a misunderstanding")
    ana.tab_to("[data-testid=lift]")
    ana.page.keyboard.press("Enter")
    ana.wait(
        "() => document.querySelector('#evidence-state').textContent.includes('Dismissed by ana')"
    )
    assert ana.page.locator("#actions").is_hidden()
    ana.wait(
        "() => document.querySelector('#live-bans').textContent === '1'"
        " && document.querySelector('#live-open').textContent === '0'"
    )
    assert BOB not in ana.testid("bans-body").inner_text()
    assert ana.page.locator("[data-testid=queue-item]").count() == 0
    ana.axe("the automatic ban lifted")
    assert _session_status(server, BOB) == 200  # the address may come in again

    audit = server.get_json("/admin/audit", headers=dict(AUTH))["entries"]
    assert [(e["actor"], e["action"], e["target"]) for e in audit[:2]] == [
        ("ana", "lift_ban", BOB),
        ("auto", "ban", BOB),
    ]
    assert audit[0]["note"] == "a misunderstanding"
